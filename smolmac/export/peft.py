"""PEFT adapter directory: adapter_config.json + adapter_model.safetensors exactly as PEFT's
save_pretrained writes them (keys `base_model.model.<module>.lora_A.weight`, `lora_alpha`,
`target_modules`, `layers_to_transform`, `use_dora` with `lora_magnitude_vector`)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import mlx.core as mx

from smolmac.adapters import PEFT_PREFIX, PEFT_SUFFIX, Adapter
from smolmac.config import number


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
        "r": ad.rank, "lora_alpha": number(ad.alpha), "lora_dropout": ad.dropout,
        "target_modules": targets, "layers_to_transform": to_transform, "layers_pattern": None,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": ad.rslora, "use_dora": ad.dora,
        "modules_to_save": None, "inference_mode": True, "init_lora_weights": True,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }
    return dict(sorted(cfg.items()))


def write_adapter(ad: Adapter, out: Path, dtype: str | None = None) -> Path:
    """Write `ad` as a PEFT adapter directory `out`."""
    tensors = {}
    for key, value in ad.weights_as(dtype).items():
        module, leaf = key.rsplit(".", 1)
        tensors[f"{PEFT_PREFIX}{module}.{PEFT_SUFFIX[leaf]}"] = value if leaf == "m" else value.T
    mx.save_safetensors(str(out / "adapter_model.safetensors"), tensors, metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(peft_config(ad), indent=2, sort_keys=True) + "\n")
    return out


def write(src, out: Path, dtype: str | None, say, with_base: Path | None = None) -> Path:
    """The adapter; for a quantised (QLoRA) base, `base_model_name_or_path` names a base that
    transformers loads: the unquantised original when known, else (with_base) the dequantised
    base written to `out/base`, else the quantised one with a warning."""
    from smolmac.export.sources import quantized_base

    ad = src.adapter
    found = quantized_base(ad, src)
    if found is None:
        if with_base:
            say("--with-base: the base model is not quantised, so PEFT loads it as it is; no base written.")
        return write_adapter(ad, out, dtype)
    base, original = found
    if original:
        say(f"the base {base} is quantised (MLX), which transformers cannot load: the adapter names its unquantised original, {original}.")
        return write_adapter(replace(ad, base=original), out, dtype)
    if with_base is None:
        say(f"the base {base} is quantised (MLX) and its unquantised original is not recorded, so PEFT cannot load it: pass --with-base to write the dequantised base next to the adapter, or set base_model_name_or_path to the original.")
        return write_adapter(ad, out, dtype)
    _write_base(src, ad, out / "base", say)
    say(f"wrote the dequantised base to {with_base}; the adapter points there.")
    return write_adapter(replace(ad, base=str(with_base)), out, dtype)


def _write_base(src, ad: Adapter, folder: Path, say):
    from mlx_lm.utils import dequantize_model

    from smolmac.export.hf import _native_dtype
    from smolmac.export.sources import load_base
    from smolmac.models import save_model_dir

    model, tok, config, _ = load_base([ad.base_path, ad.base, src.base], str(src.path))
    dequantize_model(model)
    save_model_dir(model, tok, config, folder, dtype=_native_dtype(config))


def usage(info: dict, ref: str, base: str, local: str, fetch: str) -> str:
    """The model card's "Use it" snippet."""
    return f"""### transformers + PEFT

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{ref}")  # loads {base} and applies the adapter
tokenizer = AutoTokenizer.from_pretrained("{base}")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
# model = model.merge_and_unload()  # a plain transformers model with the adapter merged
```

### MLX (smolmac)

```bash
{fetch}smolmac generate --model {base} --adapter {local} --prompt "Hello!"
```
"""
