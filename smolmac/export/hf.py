"""A transformers model directory (config.json, model.safetensors with {"format": "pt"},
tokenizer files): a full fine-tune as is, or an adapter fused into its base by the one fuse of
smolmac (`smolmac.adapters.fuse`, dequantising a quantised base first)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import mlx.core as mx

from smolmac.adapters import apply_adapter, fuse

NATIVE = ("float32", "float16", "bfloat16")


def _native_dtype(config: dict) -> str:
    dtype = config.get("torch_dtype") or config.get("dtype")
    return dtype if dtype in NATIVE else "float32"


def fused_model(src, say):
    """(model, tokenizer, config) of a Source with its fine-tune applied, in float32."""
    from smolmac.export.sources import load_base
    from smolmac.models import is_quantized, load_model

    if src.model_dir is not None:
        return load_model(str(src.model_dir), "float32")[:3]
    if src.full_weights is not None:
        model, tok, config, _ = load_base([src.base], str(src.path))
        model.load_weights(str(src.full_weights), strict=False)
        return model, tok, config
    # fuse in float32 whatever the training dtype (PEFT merges in fp32 too)
    ad = replace(src.adapter, weights=src.adapter.weights_as("float32"))
    model, tok, config, _ = load_base([ad.base_path, ad.base, src.base], str(src.path))
    if is_quantized(model):
        say("the base model is quantised: dequantising it before fusing so the fine-tune is kept.")
    fuse(apply_adapter(model, ad, str(src.path)))
    return model, tok, config


def write(src, out: Path, dtype: str | None, say) -> Path:
    from smolmac.models import save_model_dir

    if src.model_dir is not None and dtype is None:
        shutil.copytree(src.model_dir, out, dirs_exist_ok=True)
        return out
    model, tok, config = fused_model(src, say)
    mx.eval(model.parameters())
    save_model_dir(model, tok, config, out, dtype=dtype or _native_dtype(config))
    return out


def usage(info: dict, ref: str, base: str, local: str, fetch: str) -> str:
    return f"""### transformers

```python
from transformers import pipeline

pipe = pipeline("text-generation", model="{ref}")
messages = [{{"role": "user", "content": "Hello!"}}]
print(pipe(messages, max_new_tokens=64)[0]["generated_text"][-1]["content"])
```

### mlx-lm

```bash
mlx_lm.generate --model {ref} --prompt "Hello!"
```
"""
