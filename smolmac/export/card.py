"""Model cards (README.md with Hub front matter) for exports: rendered from `smolmac.json`, which
`smolmac export` writes next to the weights: base model and relation, method, datasets, key
hyperparameters, the run's final metrics and copy-paste snippets (each format's `usage`).
Cards never carry local paths or tokens.
"""

from __future__ import annotations

import re
from pathlib import Path

from smolmac.config import number
from smolmac.export.registry import exporter
from smolmac.methods import method


def hub_id(spec) -> str | None:
    """`spec` when it names a Hub repository rather than a local path, else None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(spec, str) or re.match(r"^(\.|/|~)", spec) or Path(spec).expanduser().exists():
        return None
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return None
    return spec


def _display(spec) -> str | None:
    """A Hub id as is; a local path by its last component (cards never carry local paths)."""
    if not spec:
        return None
    return hub_id(spec) or Path(str(spec).rstrip("/")).name


def _base_license(*specs) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.repocard import metadata_load

    for spec in specs:
        if not spec:
            continue
        readme = Path(str(spec)).expanduser() / "README.md"
        if not readme.is_file() and hub_id(spec):
            cached = try_to_load_from_cache(spec, "README.md")
            readme = Path(cached) if isinstance(cached, str) else readme
        if readme.is_file():
            license_ = (metadata_load(readme) or {}).get("license")
            if license_:
                return license_
    return None


def run_metrics(events: list[dict]) -> dict:
    """Final metrics of a run from its events: last train loss, last eval (val loss/ppl and
    method metrics such as DPO reward accuracy), steps, tokens, time."""
    from smolmac.events import current

    events = current(events)  # steps redone after a resume count once
    train = next((e for e in reversed(events) if e["type"] == "train"), None)
    evals = next((e for e in reversed(events) if e["type"] == "eval"), None)
    done = next((e for e in reversed(events) if e["type"] == "done"), None)
    out = {}
    if train:
        out.update(train_loss=train.get("loss"), trained_tokens=train.get("trained_tokens"), steps=train.get("step"))
    if evals:
        skip = {"type", "step", "time"}
        out.update({k: v for k, v in evals.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if done:
        out.update(steps=done.get("step"), train_time_s=done.get("elapsed_s"))
    return {k: v for k, v in out.items() if v is not None}


def _hyperparameters(cfg) -> dict:
    t = cfg.train
    hp = {"method": cfg.method, "learning_rate": t.lr, "schedule": t.schedule, "warmup_steps": t.warmup}
    hp.update({"steps": t.steps} if t.steps else {"epochs": t.epochs})
    hp.update(batch_size=t.batch_size, grad_accum=t.grad_accum, max_seq_len=t.max_seq_len, packing=t.packing,
              weight_decay=t.weight_decay, dtype=t.dtype, seed=t.seed)
    for key, name in method(cfg.method).card:
        section, field = key.split(".")
        hp[name] = getattr(getattr(cfg, section), field)
    return hp


def card_info(src, fmt: str, dtype: str | None = None) -> dict:
    """What the model card says about an export (stored as smolmac.json; no local paths, no token).

    Args:
        src: a `smolmac.export.Source` (run dir and/or adapter).
        fmt: a key of smolmac.export.EXPORTERS ("peft", "hf", "mlx", "ollama", ...).
        dtype: the export dtype, if one was forced.
    """

    from smolmac._version import __version__
    from smolmac.events import read_events
    from smolmac.runs import read_config

    cfg, events = None, []
    if src.run_dir is not None and (src.run_dir / "config.yaml").is_file():
        cfg = read_config(src.run_dir)
        events = read_events(src.run_dir / "events.jsonl")
    ad = src.adapter
    from_scratch = cfg is not None and isinstance(cfg.model, dict)
    base = None if from_scratch else (cfg.model if cfg is not None else (ad.base if ad else src.base))
    info = {
        "format": fmt, "smolmac_version": __version__,
        "base_model": _display(base), "base_model_on_hub": hub_id(base) is not None, "from_scratch": from_scratch,
        "fine_tune": ("dora" if ad.dora else "lora") if ad else ("pretrain" if from_scratch else "full"),
        "method": cfg.method if cfg else (ad.method if ad else None),
        "dtype": dtype, "checkpoint_step": src.step, "best": getattr(src, "best", None),
        "license": None if from_scratch else _base_license(*(([ad.base_path] if ad else []) + [base])),
    }
    if ad:
        layout = ad.layout()
        info["adapter"] = {
            "rank": ad.rank, "alpha": number(ad.alpha), "dropout": ad.dropout, "use_dora": ad.dora,
            "targets": sorted({r.rsplit(".", 1)[-1] for r in layout[1]}) if layout else ad.modules(),
            "layers": "all" if layout and ad.n_blocks and len(layout[0]) == ad.n_blocks else (layout[0] if layout else "mixed"),
        }
    if cfg is not None:
        data = [cfg.data.train] + ([cfg.data.valid] if isinstance(cfg.data.valid, str) else [])
        info["datasets"] = [d for d in (_display(x) for x in data) if d]
        info["datasets_on_hub"] = [d for d in data if hub_id(d) and not Path(d).suffix]
        info["hyperparameters"] = _hyperparameters(cfg)
        info["metrics"] = run_metrics(events)
    return info


# ---------------------------------------------------------------------------------------------
# The card


def _snippets(info: dict, ref: str, on_hub: bool) -> str:
    name = info.get("base_model") or "base-model"
    base = name if info.get("base_model_on_hub") else f"path/to/{name}"
    # mlx-lm's --adapter-path and smolmac's --adapter read local folders: download first
    local = ref.split("/")[-1] if on_hub else ref
    fetch = f"hf download {ref} --local-dir {local}\n" if on_hub else ""
    return exporter(info["format"]).writer().usage(info, ref, base, local, fetch)


def _table(rows: dict, head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    for k, v in rows.items():
        v = f"{v:.4g}" if isinstance(v, float) else v
        lines.append(f"| {k} | {v} |")
    return "\n".join(lines)


def model_card(info: dict, repo_id: str | None = None) -> str:
    """README.md for an export: the Hub's model-card front matter, description, usage, training, results.

    Args:
        info: the export's smolmac.json (see `card_info`).
        repo_id: the Hub repository the snippets load from (default: a local folder path).
    """
    from huggingface_hub import ModelCardData

    fmt, ft = info["format"], info["fine_tune"]
    kind = exporter(fmt)
    base = info.get("base_model") if info.get("base_model_on_hub") else None
    method = info.get("method")
    tags = ([ft] if ft in ("lora", "dora") else []) + ([method] if method else []) + ["mlx", "smolmac"]
    meta = ModelCardData(
        base_model=base, base_model_relation=kind.relation if base else None, library_name=kind.library,
        pipeline_tag="text-generation", tags=tags, datasets=info.get("datasets_on_hub") or None,
        license=info.get("license"),
    )
    ref = repo_id or f"path/to/{info.get('name') or 'this-folder'}"
    base_name = info.get("base_model")
    on = f" [{base_name}](https://huggingface.co/{base_name})" if base else (f" the local model `{base_name}`" if base_name else " its base model")
    adapter = {"lora": "LoRA", "dora": "DoRA"}.get(ft)
    if ft == "pretrain":
        what = "A language model pretrained from scratch"
    elif adapter is None:
        what = f"A full fine-tune of{on}"
    elif not kind.adapter:
        what = f"A fine-tune of{on} with its {adapter} adapter merged into the weights"
    else:
        what = f"A {adapter} adapter for{on}"
    layout = kind.layout
    title = repo_id.split("/")[-1] if repo_id else (info.get("name") or f"{base_name or 'smolmac'}-{method or ft}")
    parts = [f"---\n{meta.to_yaml()}\n---\n", f"# {title}\n",
             f"{what}, trained with smolmac ({(method or ft).upper()}) on Apple MLX and exported as {layout}.\n"]
    if info.get("checkpoint_step") is not None:
        parts.append(f"> Exported from an unfinished run: the checkpoint at step {info['checkpoint_step']}.\n")
    if info.get("best"):
        b = info["best"]
        parts.append(f"> The weights of the run's best evaluation (step {b['step']}, {b['metric']} {b['value']:.4g}), not of its last step.\n")
    parts.append("## Use it\n\n" + _snippets(info, ref, repo_id is not None))
    train = []
    if base_name:
        train.append(f"- Base model: {base_name}" + ("" if base else " (local)"))
    if info.get("datasets"):
        train.append(f"- Datasets: {', '.join(info['datasets'])}")
    if info.get("adapter"):
        a = info["adapter"]
        train.append(f"- Adapter: {'DoRA' if a['use_dora'] else 'LoRA'} r={a['rank']}, alpha={a['alpha']}, dropout={a['dropout']}, targets {', '.join(a['targets'])}, layers {a['layers']}")
    if info.get("combined"):
        c = info["combined"]
        parts_ = ", ".join(f"{n} (weight {w:g})" for n, w in zip(c["adapters"], c["weights"]))
        train.append(f"- Combined from {parts_} with PEFT's add_weighted_adapter method `{c['method']}` (rank {c['rank']})")
    if info.get("dtype"):
        train.append(f"- Exported in {info['dtype']}")
    if train or info.get("hyperparameters"):
        parts.append("## Training\n\n" + "\n".join(train) + "\n")
        if info.get("hyperparameters"):
            parts.append(_table(info["hyperparameters"], ("hyperparameter", "value")) + "\n")
    if info.get("metrics"):
        parts.append("## Results (final values of the run)\n\n" + _table(info["metrics"], ("metric", "value")) + "\n")
    parts.append(f"Exported with smolmac {info.get('smolmac_version', '')} (`smolmac export --format {fmt}`).\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Upload
