"""PEFT adapter directory: adapter_config.json + adapter_model.safetensors exactly as PEFT's
save_pretrained writes them (keys `base_model.model.<module>.lora_A.weight`, `lora_alpha`,
`target_modules`, `layers_to_transform`, `use_dora` with `lora_magnitude_vector`)."""

from __future__ import annotations

import json
import re
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


def write(src, out: Path, dtype: str | None, say) -> Path:
    return write_adapter(src.adapter, out, dtype)


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
