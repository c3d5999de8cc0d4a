"""What a path holds for export: an adapter (a run's adapter/, an unfinished run's last checkpoint,
an mlx-lm or PEFT adapter dir), full weights (a model dir, or a checkpoint over its base), or a
pipeline whose last trained stage is exported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from smolmac.adapters import Adapter, read_mlx_adapter, read_peft_adapter
from smolmac.errors import UserError


@dataclass
class Source:
    """What a path holds: an adapter, or full weights (a model dir, or a checkpoint over a base)."""

    path: Path
    run_dir: Path | None = None
    adapter: Adapter | None = None
    model_dir: Path | None = None  # finished full fine-tune (HF layout)
    full_weights: Path | None = None  # unfinished full fine-tune: checkpoint weights
    base: str | None = None
    step: int | None = None  # checkpoint step of an unfinished run
    best: dict | None = None  # --pick best: {"step", "metric", "value"} of the weights exported


def _run_base(run_dir: Path, cfg) -> str | None:
    """The model the run loaded: its start event records the built model dir of `{new: ...}`."""
    from smolmac.events import read_events

    start = next((e for e in read_events(run_dir / "events.jsonl") if e["type"] == "start"), None)
    return (start or {}).get("model") or (cfg.model if isinstance(cfg.model, str) else None)


def _pipeline_stages(path: Path) -> list[Path]:
    """Stage run dirs `<i>-<name>/` of a pipeline dir that hold an adapter, a model or a checkpoint."""
    found = []
    for d in path.iterdir():
        if d.is_dir() and re.match(r"^\d+-", d.name) and (d / "config.yaml").is_file():
            if (d / "adapter").is_dir() or (d / "model").is_dir() or any(d.glob("checkpoints/step-*/weights.safetensors")):
                found.append(d)
    return sorted(found, key=lambda d: int(d.name.split("-")[0]))


def _best_event(run_dir: Path) -> dict | None:
    from smolmac.events import current, read_events

    e = next((e for e in reversed(current(read_events(run_dir / "events.jsonl"))) if e["type"] == "best"), None)
    return {"step": e["step"], "metric": e["metric"], "value": e["value"]} if e else None


def _open_best(path: Path, say) -> Source:
    """`--pick best`: the weights of the run's best evaluation (save.best)."""
    if (path / "adapter-best" / "adapter_config.json").is_file():
        src = Source(path, run_dir=path, adapter=read_mlx_adapter(path / "adapter-best"), best=_best_event(path))
    elif (path / "model-best" / "config.json").is_file():
        src = Source(path, run_dir=path, model_dir=path / "model-best", best=_best_event(path))
    else:
        stages = _pipeline_stages(path)
        if stages:
            say(f"{path} is a pipeline: exporting the best weights of its last trained stage, {stages[-1].name}.")
            return _open_best(stages[-1], say)
        raise UserError(f"--pick best: {path} has no adapter-best/ or model-best/; set save.best (e.g. val_loss) in the recipe to keep the best weights, or export the last ones (--pick last).")
    if src.best:
        say(f"exporting the best weights: step {src.best['step']}, {src.best['metric']} {src.best['value']:.4g}.")
    return src


def open_source(path: str | Path, say=None, pick: str = "last") -> Source:
    """Find what to export in a run dir, an mlx-lm adapter dir or a PEFT adapter dir.

    Args:
        pick: "last" (the run's last weights, or its last checkpoint when unfinished) or "best"
            (adapter-best/ or model-best/, written by save.best).
    """
    import yaml

    from smolmac.config import load_recipe

    say = say or (lambda _m: None)
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; pass a run directory (runs/...) or an adapter directory.")
    if pick == "best":
        return _open_best(path, say)
    if (path / "adapter" / "adapter_config.json").is_file():
        return Source(path, run_dir=path, adapter=read_mlx_adapter(path / "adapter"))
    if (path / "model" / "config.json").is_file():
        return Source(path, run_dir=path, model_dir=path / "model")
    parent_run = path.parent if (path.parent / "config.yaml").is_file() else None
    if (path / "adapter_model.safetensors").is_file():
        return Source(path, run_dir=parent_run, adapter=read_peft_adapter(path))
    if (path / "adapters.safetensors").is_file() and (path / "adapter_config.json").is_file():
        return Source(path, run_dir=parent_run, adapter=read_mlx_adapter(path))
    stages = _pipeline_stages(path)
    if stages:  # a pipeline (smolmac/pipeline.py): its last stage that has something to export
        say(f"{path} is a pipeline: exporting its last trained stage, {stages[-1].name}.")
        return open_source(stages[-1], say)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path}: this is neither a run directory nor an adapter directory (no config.yaml, adapter/, model/ or adapter files).")
    ckpts = sorted(path.glob("checkpoints/step-*/weights.safetensors"))
    if not ckpts:
        raise UserError(f"{path}: the run has no adapter, model or checkpoint yet; let it reach a checkpoint (save.every) or finish, then export.")
    cfg = load_recipe(yaml.safe_load((path / "config.yaml").read_text()))
    weights, step = ckpts[-1], int(ckpts[-1].parent.name.split("-")[1])
    say(f"{path} has not finished: exporting its last checkpoint ({ckpts[-1].parent.name}, step {step}).")
    base = _run_base(path, cfg)
    if cfg.full or cfg.method == "pretrain":
        return Source(path, run_dir=path, full_weights=weights, base=base, step=step)
    lp = {"rank": cfg.lora.rank, "scale": cfg.lora.alpha / cfg.lora.rank, "dropout": cfg.lora.dropout}
    config = {"fine_tune_type": "dora" if cfg.lora.dora else "lora", "lora_parameters": lp,
              "alpha": cfg.lora.alpha, "model": base, "method": cfg.method}
    return Source(path, run_dir=path, adapter=read_mlx_adapter(path, weights, config), base=base, step=step)


def load_base(spec_candidates, what: str):
    from smolmac.models import load_model

    for spec in spec_candidates:
        if spec and Path(str(spec)).expanduser().is_dir():
            return load_model(str(spec), "float32")
    spec = next((s for s in spec_candidates if s), None)
    if spec is None:
        raise UserError(f"{what}: the base model is not recorded; export from the run directory, or re-save the adapter with its base model.")
    return load_model(str(spec), "float32")


def _model_dir(spec) -> Path | None:
    """A model's local directory: a path, or a Hub id already in the HF cache (no download)."""
    if not spec:
        return None
    path = Path(str(spec)).expanduser()
    if (path / "config.json").is_file():
        return path
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(str(spec), "config.json")
    except HFValidationError:
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def quantized_base(ad: Adapter, src: Source) -> tuple[str, str | None] | None:
    """(the base, its unquantised original or None) when the adapter's base is an MLX-quantised
    model (QLoRA); None for a float base. The original is the `base_model` of the folder's model
    card, which `mlx_lm.convert` writes when it quantises a Hub model."""
    import json

    from huggingface_hub.repocard import metadata_load

    for spec in (ad.base_path, ad.base, src.base):
        folder = _model_dir(spec)
        if folder is None:
            continue
        config = json.loads((folder / "config.json").read_text())
        if not (config.get("quantization") or config.get("quantization_config")):
            return None
        original = None
        if (folder / "README.md").is_file():
            found = (metadata_load(folder / "README.md") or {}).get("base_model")
            original = (found[0] if isinstance(found, list) and found else found) or None
        return ad.base or str(spec), original
    return None
