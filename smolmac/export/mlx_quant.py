"""--format mlx-q4 / mlx-q8: the fine-tune fused into its base (smolmac.adapters.fuse), then
quantised by mlx-lm's own `quantize_model` and saved as mlx-lm saves a converted model
(`save_model`, `save_config`, the tokenizer): a folder that `mlx_lm.load`, `mlx_lm.generate` and
LM Studio's MLX engine load.

    smolmac export runs/x --format mlx-q4 --to out/x-q4 [--group-size 32|64|128] [--dtype bfloat16]
    mlx_lm.generate --model out/x-q4 --prompt "Hello!"

The linears and the embedding are quantised (affine, `bits` per weight, one scale and bias per
`group_size` inputs); a layer whose input size the group size does not divide stays in float, as
mlx-lm leaves it. Norms stay in --dtype (default: the model's).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from smolmac.errors import UserError

GROUP_SIZES = (32, 64, 128)  # what mx.quantize accepts in affine mode


def check(kind, dtype: str | None, group_size: int | None = None, bits: int = 4):
    if group_size is not None and group_size not in GROUP_SIZES:
        raise UserError(f"--group-size: {group_size} is not a group size MLX quantises with; choose 32, 64 or 128.")


def write(src, out: Path, dtype: str | None, say, group_size: int | None = None, bits: int = 4) -> Path:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import quantize_model, save_config, save_model

    from smolmac.export.hf import _native_dtype, fused_model
    from smolmac.models import cast_floating, save_tokenizer

    model, tok, config = fused_model(src, say)
    dtype = dtype or _native_dtype(config)
    cast_floating(model, dtype)
    group_size = group_size or 64
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # mlx-lm prints its bits-per-weight line
        model, qconfig = quantize_model(model, config, group_size=group_size, bits=bits)
    mx.eval(model.parameters())
    left = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    say(f"quantised to {bits} bits, group size {group_size}" + (f"; {len(left)} layers whose size {group_size} does not divide stay {dtype} ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''})" if left else "") + f"; {log.getvalue().strip().removeprefix('[INFO] ')}")
    qconfig["torch_dtype"] = dtype
    save_model(out, model)
    save_config(qconfig, config_path=out / "config.json")
    save_tokenizer(tok, qconfig, out)
    return out


def usage(info: dict, ref: str, base: str, local: str, fetch: str) -> str:
    return f"""### mlx-lm

```bash
mlx_lm.generate --model {ref} --prompt "Hello!"
```

```python
from mlx_lm import generate, load

model, tokenizer = load("{ref}")
messages = [{{"role": "user", "content": "Hello!"}}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(generate(model, tokenizer, prompt=prompt, max_tokens=64))
```

LM Studio (MLX engine, Apple Silicon): copy the folder to ~/.lmstudio/models/<you>/<name>/.
"""
