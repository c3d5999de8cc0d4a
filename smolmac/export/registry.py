"""The exporter registry: one `Exporter` entry per format (see smolmac/export/__init__.py)."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from smolmac.errors import UserError, did_you_mean

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Exporter:
    """A format: where its writer lives and what the model card says about it."""

    name: str
    help: str  # one line for `--help` and the app
    module: str  # smolmac.export.<module>: write(src, out, dtype, say), usage(info, ref, base, local, fetch)
    adapter: bool  # writes an adapter: a full fine-tune cannot be exported this way
    library: str  # model card `library_name`
    relation: str  # model card `base_model_relation`
    layout: str  # "exported as ..." in the card
    files: tuple = ()  # glob patterns that all match in an export of this format (upload checks)

    def writer(self):
        return importlib.import_module(f"smolmac.export.{self.module}")


EXPORTERS = {e.name: e for e in (
    Exporter("peft", "PEFT LoRA/DoRA adapter (transformers + peft)", "peft", True, "peft", "adapter",
             "a PEFT adapter", ("adapter_config.json", "adapter_model.safetensors")),
    Exporter("hf", "adapter fused into the base: a transformers model directory", "hf", False, "transformers",
             "finetune", "a transformers model directory", ("config.json", "model*.safetensors")),
    Exporter("mlx", "mlx-lm adapter (mlx_lm.generate --adapter-path)", "mlx", True, "mlx", "adapter",
             "an mlx-lm adapter", ("adapter_config.json", "adapters.safetensors")),
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
    return next((e for e in EXPORTERS.values() if e.files and all(any(folder.glob(p)) for p in e.files)), None)
