"""LoRA/DoRA adapters through mlx-lm's layers, with PEFT semantics (scaling = alpha / rank).

Saved in mlx-lm's adapter layout (`adapters.safetensors` + `adapter_config.json`), so
`mlx_lm.generate --adapter-path DIR/adapter` loads it; `rank` and `alpha` are recorded too.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from smolmac.errors import UserError
from smolmac.models import blocks

LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear)


def target_keys(model: nn.Module, targets) -> list[str]:
    """Block-relative paths (e.g. 'self_attn.q_proj') of the linear layers to adapt.

    `all-linear` takes every Linear in the blocks (PEFT's all-linear also excludes lm_head);
    a list takes the leaves whose last name is listed.
    """
    block = blocks(model)[0]
    linear = [name for name, m in block.named_modules() if isinstance(m, LINEAR_TYPES)]
    if targets == "all-linear":
        return sorted(linear)
    leaves = {k.rsplit(".", 1)[-1] for k in linear}
    unknown = [t for t in targets if t not in leaves]
    if unknown:
        raise UserError(f"lora.targets: {', '.join(unknown)} is not a linear layer of this model; choose from {', '.join(sorted(leaves))}.")
    return sorted(k for k in linear if k.rsplit(".", 1)[-1] in targets)


def num_layers(model: nn.Module, layers) -> int:
    total = len(blocks(model))
    if layers == "all":
        return total
    if not 1 <= int(layers) <= total:
        raise UserError(f"lora.layers: {layers} is outside 1..{total}, the number of blocks of this model.")
    return int(layers)


def lora_parameters(model: nn.Module, lora) -> dict:
    """mlx-lm's `lora_parameters` for a LoraConfig (scale = alpha / rank)."""
    return {"rank": lora.rank, "scale": lora.alpha / lora.rank, "dropout": lora.dropout, "keys": target_keys(model, lora.targets)}


def apply_lora(model: nn.Module, lora, seed: int = 0) -> dict:
    """Freeze the model and insert LoRA/DoRA layers; returns the mlx-lm adapter config."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(seed)
    model.freeze()
    params = lora_parameters(model, lora)
    n = num_layers(model, lora.layers)
    linear_to_lora_layers(model, n, params, use_dora=lora.dora)
    return {
        "fine_tune_type": "dora" if lora.dora else "lora",
        "num_layers": n,
        "lora_parameters": params,
        "rank": lora.rank,
        "alpha": lora.alpha,
    }


def adapter_config_for_full() -> dict:
    return {"fine_tune_type": "full"}


def trainable_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def save_adapter(model: nn.Module, adapter_config: dict, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write `adapters.safetensors` + `adapter_config.json` (mlx-lm layout)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    (out / "adapter_config.json").write_text(json.dumps({**adapter_config, **(extra or {})}, indent=2))
    return out
