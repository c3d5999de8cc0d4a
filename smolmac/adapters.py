"""Adapters: one place that reads, attaches and fuses LoRA/DoRA adapters, whatever their layout.

Every source (a run's adapter/, the last checkpoint of an unfinished run, an mlx-lm adapter dir,
a PEFT adapter dir) becomes one `Adapter` held in mlx-lm orientation; exporters
(smolmac/export/) write it in any layout, `attach` puts it on a loaded model, `fuse` merges it.
PEFT `lora_A.weight` is mlx-lm's `lora_a.T` (r, in), `lora_B.weight` is `lora_b.T` (out, r), and
DoRA's `lora_magnitude_vector` is mlx-lm's `m` unchanged (both compute
`m / ||W + scale·BA||_row ⊙ (W x + scale·B A x)`).

    from smolmac.adapters import attach
    model, tokenizer, *_ = smolmac.models.load_model("base")
    attach(model, "runs/x")          # a run dir, an mlx-lm adapter dir or a PEFT adapter dir
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from smolmac.errors import UserError

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

    def weights_as(self, dtype: str | None = None) -> dict:
        """The weights, cast to `dtype` (float32, float16, bfloat16) when given."""
        from smolmac.models import DTYPES

        return {k: v.astype(DTYPES[dtype]) for k, v in self.weights.items()} if dtype else dict(self.weights)

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


def adapter_dir(path: str | Path) -> Path:
    """The adapter folder a path points to: a run dir's adapter/, or the folder itself."""
    path = Path(path)
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    return path


def read_adapter(path: str | Path) -> Adapter:
    """A run dir, an mlx-lm adapter dir or a PEFT adapter dir as an Adapter."""
    path = adapter_dir(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such adapter directory; point at a run dir, an mlx-lm adapter folder or a PEFT adapter folder.")
    if (path / "adapter_model.safetensors").is_file():
        return read_peft_adapter(path)
    if (path / "adapters.safetensors").is_file() and (path / "adapter_config.json").is_file():
        return read_mlx_adapter(path)
    raise UserError(f"{path}: no adapter here (adapter_config.json with adapters.safetensors or adapter_model.safetensors); point at a run dir or an adapter folder.")


def attach(model: nn.Module, path: str | Path) -> dict:
    """Apply an adapter (run dir, mlx-lm or PEFT adapter dir) to an mlx-lm model, to generate,
    evaluate or continue training (the LoRA weights are trainable, the base frozen).

    Returns:
        The mlx-lm adapter config, ready for `smolmac.lora.save_adapter(model, config, dir)`.
    """
    from smolmac.models import blocks

    ad = read_adapter(path)
    ad.n_blocks = ad.n_blocks or len(blocks(model))
    apply_adapter(model, ad, str(path))
    return ad.mlx_config()


def load_peft_adapter(model: nn.Module, path: str | Path) -> dict:
    """`attach` for a PEFT adapter dir (kept for scripts written against v0.1)."""
    return attach(model, path)


def fuse(model: nn.Module) -> nn.Module:
    """Merge every LoRA/DoRA layer into its base layer: W + scale·BA (DoRA renormalised).

    The one fuse of smolmac (pipelines and export): a quantised base is dequantised first
    (mlx-lm#1172: fusing into 4-bit weights rounds the update away), so the result is a plain
    float model that transformers, the next pipeline stage and the exporters can load.
    """
    from mlx_lm.utils import dequantize_model

    from smolmac.models import is_quantized

    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if is_quantized(model):  # the layers no adapter touched (embeddings, other linears)
        dequantize_model(model)
    return model
