"""The exporter registry: one `Exporter` entry per format (see smolmac/export/__init__.py)."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from smolmac.errors import UserError, did_you_mean

DTYPES = ("float32", "float16", "bfloat16")
# GGUF tensor types for --dtype (llama.cpp convert_hf_to_gguf.py's --outtype); the MLX names are
# accepted as aliases. More types (q4_0, q5_0, ...) through --quantize, see export/gguf_file.py.
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
DTYPE_ALIASES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
# options a format's write() may take besides (src, out, dtype, say), as CLI flags
OPTIONS = {"quantize": "--quantize", "group_size": "--group-size", "with_base": "--with-base"}


@dataclass(frozen=True)
class Exporter:
    """A format: where its writer lives, what it accepts and what the model card says about it."""

    name: str
    help: str  # one line for `--help` and the app
    module: str  # smolmac.export.<module>: write(src, out, dtype, say, **options), usage(info, ref, base, local, fetch)
    adapter: bool  # writes an adapter: a full fine-tune cannot be exported this way
    library: str  # model card `library_name`
    relation: str  # model card `base_model_relation`
    layout: str  # "exported as ..." in the card
    files: tuple = ()  # glob patterns that all match in an export of this format (upload checks)
    dtypes: tuple = DTYPES  # what --dtype accepts
    options: tuple = ()  # keys of OPTIONS that write() takes
    suffix: str | None = None  # a single file ending in this suffix instead of a directory
    params: tuple = ()  # fixed (key, value) arguments of write(), e.g. (("bits", 4),)

    def writer(self):
        return importlib.import_module(f"smolmac.export.{self.module}")

    def dtype(self, dtype: str | None) -> str | None:
        """`dtype` in this format's spelling; UserError if the format cannot write it."""
        if dtype is None:
            return None
        if self.dtypes == GGUF_DTYPES:
            dtype = DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in self.dtypes:
            more = ", or --quantize for the other GGUF types" if "quantize" in self.options else ""
            raise UserError(f"--dtype: '{dtype}' is not supported by --format {self.name}; choose {', '.join(self.dtypes[:-1])} or {self.dtypes[-1]}{more}.")
        return dtype


_GGUF_MODEL = dict(dtypes=GGUF_DTYPES, options=("quantize",))
EXPORTERS = {e.name: e for e in (
    Exporter("peft", "PEFT LoRA/DoRA adapter (transformers + peft)", "peft", True, "peft", "adapter",
             "a PEFT adapter", ("adapter_config.json", "adapter_model.safetensors"), options=("with_base",)),
    Exporter("hf", "adapter fused into the base: a transformers model directory", "hf", False, "transformers",
             "finetune", "a transformers model directory", ("config.json", "model*.safetensors")),
    Exporter("mlx", "mlx-lm adapter (mlx_lm.generate --adapter-path)", "mlx", True, "mlx", "adapter",
             "an mlx-lm adapter", ("adapter_config.json", "adapters.safetensors")),
    Exporter("gguf", "one GGUF file for llama.cpp, LM Studio and Ollama (fused)", "gguf_file", False, "gguf",
             "finetune", "a GGUF file", ("*.gguf",), suffix=".gguf", **_GGUF_MODEL),
    Exporter("ollama", "GGUF + Modelfile: ollama create NAME -f DIR/Modelfile", "ollama", False, "gguf",
             "finetune", "a GGUF file with an Ollama Modelfile", ("Modelfile", "*.gguf"), **_GGUF_MODEL),
    Exporter("gguf-lora", "the adapter alone as a llama.cpp GGUF LoRA (--lora, Ollama ADAPTER)", "gguf_lora", True,
             "gguf", "adapter", "a llama.cpp GGUF LoRA adapter", ("*.gguf",), dtypes=GGUF_DTYPES, suffix=".gguf"),
    Exporter("mlx-q4", "fused and quantised to 4 bits: an mlx-lm model folder (LM Studio MLX)", "mlx_quant", False,
             "mlx", "finetune", "a 4-bit mlx-lm model folder", ("config.json", "model*.safetensors"), options=("group_size",),
             params=(("bits", 4),)),
    Exporter("mlx-q8", "fused and quantised to 8 bits: an mlx-lm model folder (LM Studio MLX)", "mlx_quant", False,
             "mlx", "finetune", "an 8-bit mlx-lm model folder", ("config.json", "model*.safetensors"), options=("group_size",),
             params=(("bits", 8),)),
)}


def exporter(name: str) -> Exporter:
    if name not in EXPORTERS:
        raise UserError(f"--format: '{name}' is not a format{did_you_mean(name, EXPORTERS)}; choose {', '.join(EXPORTERS)}.")
    return EXPORTERS[name]


def detect(folder: Path) -> Exporter | None:
    """The format of an export directory (its smolmac.json, else its files), or None."""
    info = folder / "smolmac.json"
    if info.is_file():
        fmt = json.loads(info.read_text()).get("format")
        if fmt in EXPORTERS:
            return EXPORTERS[fmt]
    candidates = [e for e in EXPORTERS.values() if e.suffix is None]
    return next((e for e in candidates if e.files and all(any(folder.glob(p)) for p in e.files)), None)
