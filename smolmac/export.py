"""Export a run for the rest of the ecosystem, and import PEFT adapters back.

    smolmac export runs/x --format peft --to out/x-peft   # PEFT LoRA/DoRA adapter (transformers)
    smolmac export runs/x --format hf   --to out/x-hf     # adapter fused into the base, HF layout
    smolmac export runs/x --format mlx  --to out/x-mlx    # mlx-lm adapter (--adapter-path)

Every source (a run's adapter/, the last checkpoint of an unfinished run, an mlx-lm adapter dir,
a PEFT adapter dir) becomes one `Adapter` held in mlx-lm orientation, which is then written in
any layout. Key names and shapes follow ../shared/SPECS.md §1-3: PEFT `lora_A.weight` is mlx-lm's
`lora_a.T` (r, in), `lora_B.weight` is `lora_b.T` (out, r), and DoRA's `lora_magnitude_vector` is
mlx-lm's `m` unchanged (both compute `m / ||W + scale·BA||_row ⊙ (W x + scale·B A x)`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from smolmac.errors import UserError
from smolmac.models import DTYPES

FORMATS = ("peft", "hf", "mlx")
PEFT_PREFIX = "base_model.model."
# mlx-lm leaf -> PEFT suffix
PEFT_SUFFIX = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight", "m": "lora_magnitude_vector"}
_BLOCK = re.compile(r"^(?P<prefix>(?:.*?\.)?)(?P<idx>\d+)\.(?P<rel>.+)$")


@dataclass
class Adapter:
    """A LoRA/DoRA adapter independent of its file layout.

    `weights` use mlx-lm keys: `<module>.lora_a` (in, r), `<module>.lora_b` (r, out), `<module>.m`
    (out,) for DoRA, where <module> is the model path shared by mlx-lm and transformers
    (e.g. `model.layers.3.self_attn.q_proj`).
    """

    weights: dict
    rank: int
    alpha: float
    scale: float
    dropout: float = 0.0
    dora: bool = False
    rslora: bool = False
    base: str | None = None  # the model string it was trained on (Hub id or path)
    base_path: str | None = None  # where that model was loaded from
    method: str | None = None
    n_blocks: int | None = None  # transformer blocks of the base, when known

    def modules(self) -> list[str]:
        return sorted({k.rsplit(".", 1)[0] for k in self.weights})

    def layout(self) -> tuple[list[int], list[str]] | None:
        """(block indices, block-relative paths) when the adapted modules are the same in every
        adapted block (what PEFT's target_modules + layers_to_transform and mlx-lm express)."""
        parts = [_BLOCK.match(m) for m in self.modules()]
        if not parts or not all(parts) or len({p["prefix"] for p in parts}) != 1:
            return None
        layers = sorted({int(p["idx"]) for p in parts})
        rel = sorted({p["rel"] for p in parts})
        if len(parts) != len(layers) * len(rel):
            return None
        return layers, rel

    def mlx_config(self) -> dict:
        """mlx-lm's adapter_config.json (plus smolmac's rank/alpha/model records)."""
        layout = self.layout()
        layers, rel = layout if layout else ([], [])
        cfg = {
            "fine_tune_type": "dora" if self.dora else "lora",
            "num_layers": len(layers),
            "lora_parameters": {"rank": self.rank, "scale": self.scale, "dropout": self.dropout, "keys": rel},
            "rank": self.rank,
            "alpha": self.alpha,
            "model": self.base,
            "base_model_path": self.base_path,
            "method": self.method,
            "num_blocks": self.n_blocks,
        }
        if self.rslora:
            cfg["use_rslora"] = True
        return cfg


def _number(x):
    return int(x) if float(x).is_integer() else float(x)


def _cast(a: mx.array, dtype: str | None) -> mx.array:
    return a.astype(DTYPES[dtype]) if dtype else a


# ---------------------------------------------------------------------------------------------
# Reading


def _base_blocks(*candidates) -> int | None:
    """num_hidden_layers from a locally available config.json (a directory or the HF cache)."""
    for spec in candidates:
        if not spec:
            continue
        path = Path(str(spec)).expanduser() / "config.json"
        if not path.is_file():
            from huggingface_hub import try_to_load_from_cache
            from huggingface_hub.errors import HFValidationError

            try:
                cached = try_to_load_from_cache(str(spec), "config.json")
            except HFValidationError:  # a path that does not exist, not a Hub id
                cached = None
            path = Path(cached) if isinstance(cached, str) else None
        if path and path.is_file():
            cfg = json.loads(path.read_text())
            n = cfg.get("num_hidden_layers") or (cfg.get("text_config") or {}).get("num_hidden_layers")
            if n:
                return int(n)
    return None


def read_mlx_adapter(adapter_dir: str | Path, weights_file: str | Path | None = None, config: dict | None = None) -> Adapter:
    """An mlx-lm adapter dir (adapter_config.json + adapters.safetensors) as an Adapter."""
    adapter_dir = Path(adapter_dir)
    if config is None:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("fine_tune_type") == "full":
        raise UserError(f"{adapter_dir}: this mlx-lm adapter holds full weights, not LoRA; export the run's model/ with --format hf.")
    weights = mx.load(str(weights_file or adapter_dir / "adapters.safetensors"))
    a = next((v for k, v in sorted(weights.items()) if k.endswith(".lora_a")), None)
    if a is None:
        raise UserError(f"{adapter_dir}: the adapter has no lora_a tensors; it is not a LoRA/DoRA adapter.")
    lp = config.get("lora_parameters") or {}
    rank = int(a.shape[1])
    scale = float(lp.get("scale", 20.0))
    rslora = bool(config.get("use_rslora", False))
    alpha = config.get("alpha", scale * (math.sqrt(rank) if rslora else rank))
    idx = [int(m["idx"]) for m in map(_BLOCK.match, weights) if m]
    # mlx-lm adapts the last `num_layers` blocks, so the last adapted block is the model's last
    n_blocks = config.get("num_blocks") or (max(idx) + 1 if idx else None)
    return Adapter(
        weights=weights, rank=rank, alpha=alpha, scale=scale, dropout=float(lp.get("dropout", 0.0)),
        dora=config.get("fine_tune_type") == "dora", rslora=rslora, base=config.get("model"),
        base_path=config.get("base_model_path"), method=config.get("method"), n_blocks=n_blocks,
    )


_PEFT_UNSUPPORTED = {"modules_to_save": (None, []), "rank_pattern": (None, {}), "alpha_pattern": (None, {}),
                     "fan_in_fan_out": (False, None), "bias": ("none", None), "target_parameters": (None, []),
                     "layer_replication": (None, []), "lora_bias": (False, None), "use_qalora": (False, None)}


def read_peft_adapter(adapter_dir: str | Path) -> Adapter:
    """A PEFT LoRA/DoRA adapter dir (adapter_config.json + adapter_model.safetensors) as an Adapter."""
    adapter_dir = Path(adapter_dir)
    cfg_path, st = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not st.is_file():
        raise UserError(f"{adapter_dir}: a PEFT adapter needs adapter_config.json and adapter_model.safetensors; re-save it with save_pretrained(safe_serialization=True).")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{cfg_path}: peft_type is {cfg.get('peft_type')}; smolmac reads LoRA/DoRA adapters only.")
    for key, allowed in _PEFT_UNSUPPORTED.items():
        if cfg.get(key, allowed[0]) not in allowed:
            raise UserError(f"{cfg_path}: '{key}' = {cfg[key]!r} is not supported by smolmac; merge the adapter in PEFT (merge_and_unload) and use the merged model instead.")
    weights = {}
    for key, t in mx.load(str(st)).items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else None
        ours = next((o for o, s in PEFT_SUFFIX.items() if name and (name.endswith("." + s) or name.endswith(f".{s}.weight"))), None)
        if ours is None:
            raise UserError(f"{st}: tensor '{key}' is not a LoRA/DoRA weight of a linear layer; smolmac cannot load this adapter.")
        module = name[: name.rindex("." + PEFT_SUFFIX[ours])]
        weights[f"{module}.{ours}"] = t if ours == "m" else t.T
    r, rslora = int(cfg.get("r", 8)), bool(cfg.get("use_rslora", False))
    alpha = cfg.get("lora_alpha", 8)
    base = cfg.get("base_model_name_or_path")
    n_blocks = _base_blocks(base)
    idx = [int(m["idx"]) for m in map(_BLOCK.match, weights) if m]
    if n_blocks is None and idx and cfg.get("layers_to_transform") is None and isinstance(cfg.get("target_modules"), list):
        n_blocks = max(idx) + 1  # leaf-name targets without a layer list adapt every block
    return Adapter(
        weights=weights, rank=r, alpha=alpha, scale=alpha / (math.sqrt(r) if rslora else r),
        dropout=float(cfg.get("lora_dropout", 0.0)), dora=bool(cfg.get("use_dora", False)),
        rslora=rslora, base=base, n_blocks=n_blocks,
    )


# ---------------------------------------------------------------------------------------------
# Writing


def peft_config(ad: Adapter) -> dict:
    """PEFT's adapter_config.json for an Adapter (sorted keys, as PEFT writes them)."""
    layout = ad.layout()
    if layout:
        layers, rel = layout
        targets = sorted({r.rsplit(".", 1)[-1] for r in rel})
        every = ad.n_blocks is not None and layers == list(range(ad.n_blocks))
        to_transform = None if every else layers
    else:  # irregular: PEFT full-matches a string target against each module path
        targets = "^(" + "|".join(re.escape(m) for m in ad.modules()) + ")$"
        to_transform = None
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": ad.base,
        "r": ad.rank, "lora_alpha": _number(ad.alpha), "lora_dropout": ad.dropout,
        "target_modules": targets, "layers_to_transform": to_transform, "layers_pattern": None,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": ad.rslora, "use_dora": ad.dora,
        "modules_to_save": None, "inference_mode": True, "init_lora_weights": True,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }
    return dict(sorted(cfg.items()))


def write_peft(ad: Adapter, out: Path, dtype: str | None = None) -> Path:
    """adapter_config.json + adapter_model.safetensors exactly as PEFT's save_pretrained writes."""
    tensors = {}
    for key, value in ad.weights.items():
        module, leaf = key.rsplit(".", 1)
        tensors[f"{PEFT_PREFIX}{module}.{PEFT_SUFFIX[leaf]}"] = _cast(value if leaf == "m" else value.T, dtype)
    mx.save_safetensors(str(out / "adapter_model.safetensors"), tensors, metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(peft_config(ad), indent=2, sort_keys=True) + "\n")
    return out


def write_mlx(ad: Adapter, out: Path, dtype: str | None = None) -> Path:
    """mlx-lm's adapter layout; it can only express 'the same modules in the last N blocks'."""
    layout = ad.layout()
    if layout is None:
        raise UserError("--format mlx: this adapter adapts different modules in different blocks, which mlx-lm's layout cannot express; export with --format peft or hf.")
    layers = layout[0]
    if ad.n_blocks is None or layers != list(range(ad.n_blocks - len(layers), ad.n_blocks)):
        raise UserError(f"--format mlx: mlx-lm adapters cover the last N blocks, but this adapter covers blocks {layers}; export with --format peft or hf.")
    mx.save_safetensors(str(out / "adapters.safetensors"), {k: _cast(v, dtype) for k, v in ad.weights.items()})
    (out / "adapter_config.json").write_text(json.dumps(ad.mlx_config(), indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------------------
# Applying to an mlx-lm model


def apply_adapter(model: nn.Module, ad: Adapter, source: str = "adapter") -> nn.Module:
    """Freeze `model` and wrap the adapted linears in mlx-lm LoRA/DoRA layers holding the weights."""
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    model.freeze()
    modules = dict(model.named_modules())
    cls = DoRALinear if ad.dora else LoRALinear
    new = []
    for name in ad.modules():
        base = modules.get(name)
        if not isinstance(base, (nn.Linear, nn.QuantizedLinear)):
            raise UserError(f"{source}: the adapter targets '{name}', which is not a linear layer of this model; load it on the base model it was trained on ({ad.base}).")
        layer = cls.from_base(base, r=ad.rank, dropout=ad.dropout, scale=ad.scale)
        for leaf in ("lora_a", "lora_b", "m") if ad.dora else ("lora_a", "lora_b"):
            value = ad.weights.get(f"{name}.{leaf}")
            if value is None or value.shape != getattr(layer, leaf).shape:
                got = None if value is None else tuple(value.shape)
                raise UserError(f"{source}: '{name}.{leaf}' has shape {got}, the model needs {tuple(getattr(layer, leaf).shape)}; load the adapter on the base model it was trained on ({ad.base}).")
            setattr(layer, leaf, value)
        new.append((name, layer))
    model.update_modules(tree_unflatten(new))
    mx.eval(model.parameters())
    return model


def load_peft_adapter(model: nn.Module, adapter_dir: str | Path) -> dict:
    """Apply a PEFT LoRA/DoRA adapter dir to an mlx-lm model, to generate, evaluate or continue
    training (the LoRA weights are trainable, the base frozen).

    Args:
        model: an mlx-lm model of the adapter's base.
        adapter_dir: directory with adapter_config.json + adapter_model.safetensors.

    Returns:
        The mlx-lm adapter config, ready for `smolmac.lora.save_adapter(model, config, dir)`.
    """
    from smolmac.models import blocks

    ad = read_peft_adapter(adapter_dir)
    ad.n_blocks = len(blocks(model))
    apply_adapter(model, ad, str(adapter_dir))
    return ad.mlx_config()


def fuse(model: nn.Module) -> nn.Module:
    """Merge every LoRA/DoRA layer into a plain Linear (W + scale·BA; DoRA renormalised)."""
    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return model


# ---------------------------------------------------------------------------------------------
# Sources and export_run


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


def open_source(path: str | Path, say=None) -> Source:
    """Find what to export in a run dir, an mlx-lm adapter dir or a PEFT adapter dir."""
    import yaml

    from smolmac.config import load_recipe

    say = say or (lambda _m: None)
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; pass a run directory (runs/...) or an adapter directory.")
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


def _load_base(spec_candidates, what: str):
    from smolmac.models import load_model

    for spec in spec_candidates:
        if spec and Path(str(spec)).expanduser().is_dir():
            return load_model(str(spec), "float32")
    spec = next((s for s in spec_candidates if s), None)
    if spec is None:
        raise UserError(f"{what}: the base model is not recorded; export from the run directory, or re-save the adapter with its base model.")
    return load_model(str(spec), "float32")


def _native_dtype(config: dict) -> str:
    dtype = config.get("torch_dtype") or config.get("dtype")
    return dtype if dtype in DTYPES else "float32"


def write_hf(src: Source, out: Path, dtype: str | None, say) -> Path:
    """A transformers model directory: the adapter fused into a (dequantised) float32 base."""
    from mlx_lm.utils import dequantize_model

    from smolmac.models import is_quantized, load_model, save_model_dir

    if src.model_dir is not None:
        if dtype is None:
            shutil.copytree(src.model_dir, out, dirs_exist_ok=True)
            return out
        model, tok, config, _ = load_model(str(src.model_dir), "float32")
    elif src.full_weights is not None:
        model, tok, config, _ = _load_base([src.base], str(src.path))
        model.load_weights(str(src.full_weights), strict=False)
    else:
        # fuse in float32 whatever the training dtype (PEFT merges in fp32 too)
        ad = replace(src.adapter, weights={k: v.astype(mx.float32) for k, v in src.adapter.weights.items()})
        model, tok, config, _ = _load_base([ad.base_path, ad.base, src.base], str(src.path))
        if is_quantized(model):
            # mlx-lm#1172: fusing into a quantised base rounds the update away; fuse in float
            say("the base model is quantised: dequantising it before fusing so the fine-tune is kept.")
            dequantize_model(model)
        fuse(apply_adapter(model, ad, str(src.path)))
    mx.eval(model.parameters())
    save_model_dir(model, tok, config, out, dtype=dtype or _native_dtype(config))
    return out


def _check_out(out: Path, src_path: Path, overwrite: bool):
    if out.exists() and not out.is_dir():
        raise UserError(f"--to: {out} is a file; give a directory path.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--to: {out} exists and is not empty; choose another directory or pass --overwrite.")
        here, src = out.resolve(), src_path.resolve()
        if here == src or here in src.parents or here in (Path.cwd().resolve(), Path.home().resolve()):
            raise UserError(f"--to: {out} contains the run (or is the current or home directory); --overwrite would delete it, so choose a new directory.")


def export_run(run_dir, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None) -> Path:
    """Export a run (or an adapter dir) as a PEFT adapter, a fused HF model or an mlx-lm adapter.

    Args:
        run_dir: run dir (adapter/, model/ or, unfinished, its last checkpoint), or an mlx-lm or
            PEFT adapter dir.
        fmt: "peft", "hf" or "mlx".
        out: output directory (written atomically, with README.md model card and smolmac.json).
        dtype: float32, float16 or bfloat16 (default: as trained / the base model's).
        overwrite: replace a non-empty `out`.
        on_message: callable receiving progress sentences (e.g. print).
    """
    from smolmac.hub import card_info, model_card

    say = on_message or (lambda _m: None)
    if fmt not in FORMATS:
        raise UserError(f"--format: '{fmt}' is not a format; choose peft, hf or mlx.")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype: '{dtype}' is not supported; choose float32, float16 or bfloat16.")
    out = Path(out)
    _check_out(out, Path(run_dir), overwrite)
    src = open_source(run_dir, say)
    if src.adapter is None and fmt != "hf":
        raise UserError(f"--format {fmt}: {run_dir} is a full fine-tune with no adapter to export; use --format hf for a transformers model directory (mlx-lm loads it too).")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if fmt == "peft":
            write_peft(src.adapter, tmp, dtype)
        elif fmt == "mlx":
            write_mlx(src.adapter, tmp, dtype)
        else:
            write_hf(src, tmp, dtype, say)
        info = {**card_info(src, fmt, dtype), "name": out.name}
        (tmp / "smolmac.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(info))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
