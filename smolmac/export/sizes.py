"""How big an export will be, before it is written (the app shows it next to the format), and how
big it is on disk after.

The estimate builds the model's mlx-lm class from config.json without reading weights (MLX arrays
are lazy, so only shapes exist) and prices every tensor the way the format stores it: dtype bytes,
GGUF block sizes (q8_0: 34 bytes per 32 weights), MLX affine quantisation (bits per weight plus a
scale and a bias per group).
"""

from __future__ import annotations

import json
from pathlib import Path

# bytes per weight of a GGUF type: block bytes / block size (ggml's GGML_QUANT_SIZES)
GGUF_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
              "q4_1": 20 / 32, "q4_0": 18 / 32}
FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def human_size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _shapes(config: dict) -> dict[str, tuple]:
    """Parameter name -> shape of the float model `config` describes, without any weights."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes  # mlx-lm's own config -> (Model, ModelArgs)

    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))  # lazy arrays: nothing is computed
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def _base_config(src) -> dict | None:
    from smolmac.export.sources import _model_dir

    if src.model_dir is not None:
        return json.loads((src.model_dir / "config.json").read_text())
    ad = src.adapter
    for spec in ((ad.base_path, ad.base) if ad else ()) + (src.base,):
        folder = _model_dir(spec)
        if folder is not None:
            return json.loads((folder / "config.json").read_text())
    return None


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def estimate(run_dir, fmt: str, dtype: str | None = None, quantize: str | None = None, group_size: int | None = None) -> int | None:
    """Approximate bytes `export_run(run_dir, fmt, ...)` will write; None when the base model is
    not available locally.

    Args:
        run_dir: what export_run takes (a run, a pipeline, an adapter dir).
        fmt: a key of EXPORTERS.
        dtype, quantize, group_size: as for export_run.
    """
    from smolmac.export.registry import exporter
    from smolmac.export.sources import open_source

    kind = exporter(fmt)
    dtype = kind.dtype(dtype)
    src = open_source(run_dir)
    if kind.adapter:
        if src.adapter is None:
            return None
        weights = src.adapter.weights
        per = (lambda v: GGUF_BYTES[dtype or "f32"]) if kind.suffix else (lambda v: FLOAT_BYTES[dtype] if dtype else v.dtype.size)
        return int(sum(v.size * per(v) for v in weights.values())) + 4096
    config = _base_config(src)
    if config is None:
        return None
    shapes = _shapes(config)
    native = config.get("torch_dtype") if config.get("torch_dtype") in FLOAT_BYTES else "float32"
    total = 0.0
    if fmt in ("gguf", "ollama"):
        from smolmac.export.gguf_file import NATIVE

        qtype = (quantize or dtype or NATIVE[native]).lower()
        for name, shape in shapes.items():
            low = qtype in ("q4_0", "q4_1", "q5_0", "q5_1") and ("embed_tokens" in name or "lm_head" in name)
            per = 4.0 if len(shape) == 1 else GGUF_BYTES["q8_0" if low else qtype]
            total += _count(shape) * per
        total += 24 * config.get("vocab_size", 0)  # tokens, types and merges
    elif kind.params and dict(kind.params).get("bits"):
        bits, group = dict(kind.params)["bits"], group_size or 64
        fbytes = FLOAT_BYTES[dtype or native]
        for name, shape in shapes.items():
            if len(shape) == 2 and shape[-1] % group == 0 and name.endswith("weight") and "norm" not in name:
                total += _count(shape) * bits / 8 + 2 * _count(shape) / group * fbytes
            else:
                total += _count(shape) * fbytes
    else:
        total = sum(_count(s) for s in shapes.values()) * FLOAT_BYTES[dtype or native]
    return int(total) + 16_384
