"""mlx-lm adapter directory (adapters.safetensors + adapter_config.json): what
`mlx_lm.generate --adapter-path` and `mlx_lm.load(..., adapter_path=)` read."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from smolmac.adapters import Adapter
from smolmac.errors import UserError


def write_adapter(ad: Adapter, out: Path, dtype: str | None = None) -> Path:
    """mlx-lm's adapter layout; it can only express 'the same modules in the last N blocks'."""
    layout = ad.layout()
    if layout is None:
        raise UserError("--format mlx: this adapter adapts different modules in different blocks, which mlx-lm's layout cannot express; export with --format peft or hf.")
    layers = layout[0]
    if ad.n_blocks is None or layers != list(range(ad.n_blocks - len(layers), ad.n_blocks)):
        raise UserError(f"--format mlx: mlx-lm adapters cover the last N blocks, but this adapter covers blocks {layers}; export with --format peft or hf.")
    mx.save_safetensors(str(out / "adapters.safetensors"), ad.weights_as(dtype))
    (out / "adapter_config.json").write_text(json.dumps(ad.mlx_config(), indent=2) + "\n")
    return out


def write(src, out: Path, dtype: str | None, say) -> Path:
    return write_adapter(src.adapter, out, dtype)


def usage(info: dict, ref: str, base: str, local: str, fetch: str) -> str:
    return f"""### mlx-lm

```bash
{fetch}mlx_lm.generate --model {base} --adapter-path {local} --prompt "Hello!"
```

```python
from mlx_lm import generate, load

model, tokenizer = load("{base}", adapter_path="{local}")
messages = [{{"role": "user", "content": "Hello!"}}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(generate(model, tokenizer, prompt=prompt, max_tokens=64))
```
"""
