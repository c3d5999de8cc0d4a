"""Exporters, side by side: each format is one module here with `write(src, out, dtype, say,
**options)`, `usage(...)` (the model card's snippet) and optionally `check(kind, dtype, **options)`
(validation before any weights are read), and one `Exporter` entry in registry.py. The CLI's
choices, the model card, the app's Export screen and upload all read this registry.

    smolmac export runs/x --format peft --to out/x-peft   # PEFT LoRA/DoRA adapter (transformers)
    smolmac export runs/x --format hf   --to out/x-hf     # adapter fused into the base, HF layout
    smolmac export runs/x --format mlx  --to out/x-mlx    # mlx-lm adapter (--adapter-path)
    smolmac export runs/x --format gguf --to out/x.gguf   # llama.cpp / LM Studio / Ollama (fused)
    smolmac export runs/x --format ollama --to out/x-ollama      # GGUF + Modelfile
    smolmac export runs/x --format gguf-lora --to out/x-lora.gguf  # llama.cpp LoRA adapter
    smolmac export runs/x --format mlx-q4 --to out/x-q4   # fused, 4-bit mlx-lm folder

What to export is found by `sources.open_source` (a run, a pipeline, an adapter dir); the output is
written beside `--to` (a directory, or one .gguf file) under a temporary name and renamed into
place at the end, so nothing partial is ever left at `--to`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from smolmac.errors import UserError
from smolmac.export.registry import (  # noqa: F401
    DTYPES,
    EXPORTERS,
    GGUF_DTYPES,
    OPTIONS,
    Exporter,
    detect,
    exporter,
)


def check_out(out: Path, src_path: Path, overwrite: bool, kind: Exporter):
    """UserError unless `out` may be written in `kind`'s form (a directory or one file): new,
    empty, or `overwrite` and not holding `src_path`."""
    if kind.suffix is not None:  # one file
        if out.suffix.lower() != kind.suffix:
            raise UserError(f"--to: --format {kind.name} writes one file; give a path ending in {kind.suffix}, such as {out.parent / (out.stem + kind.suffix)}.")
        if out.is_dir():
            raise UserError(f"--to: {out} is a directory; give a file path ending in {kind.suffix}.")
        if out.exists() and not overwrite:
            raise UserError(f"--to: {out} exists; choose another file name or pass --overwrite.")
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--to: {out} is a file; give a directory path.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--to: {out} exists and is not empty; choose another directory or pass --overwrite.")
        here, src = out.resolve(), src_path.resolve()
        if here == src or here in src.parents or here in (Path.cwd().resolve(), Path.home().resolve()):
            raise UserError(f"--to: {out} contains the run (or is the current or home directory); --overwrite would delete it, so choose a new directory.")


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _options(kind: Exporter, out: Path, quantize, group_size, with_base) -> dict:
    """The options `kind`'s writer takes; UserError for one given to a format that ignores it."""
    given = {"quantize": quantize, "group_size": group_size, "with_base": with_base or None}
    for key, value in given.items():
        if value is not None and key not in kind.options:
            takes = [e.name for e in EXPORTERS.values() if key in e.options]
            raise UserError(f"{OPTIONS[key]}: applies to --format {' and '.join(takes)} only, not {kind.name}.")
    options = {**dict(kind.params), **{k: v for k, v in given.items() if k in kind.options}}
    if "with_base" in options:  # where the dequantised base will live once the export is in place
        options["with_base"] = (out / "base").resolve() if with_base else None
    return options


def export_run(run_dir, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None,
               quantize: str | None = None, group_size: int | None = None, with_base: bool = False) -> Path:
    """Export a run (or an adapter dir) in one of the EXPORTERS' formats.

    Args:
        run_dir: run dir (adapter/, model/ or, unfinished, its last checkpoint), a pipeline dir
            (its last trained stage), or an mlx-lm or PEFT adapter dir.
        fmt: a key of EXPORTERS ("peft", "hf", "mlx", "gguf", "ollama", "gguf-lora", "mlx-q4", "mlx-q8").
        out: output directory (written atomically, with README.md model card and smolmac.json), or
            for single-file formats (gguf, gguf-lora) the file, e.g. out/model.gguf.
        dtype: float32, float16 or bfloat16; for GGUF formats f32, f16, bf16 or q8_0 (default: as
            trained / the base model's).
        overwrite: replace an existing `out`.
        on_message: callable receiving progress sentences (e.g. print).
        quantize: GGUF formats: a GGUF type the `gguf` package can write (q4_0, q5_0, q8_0, ...).
        group_size: mlx-q4/mlx-q8: quantisation group size (default 64, mlx-lm's).
        with_base: peft: for a quantised base whose original is unknown, also write the
            dequantised base into `out/base` and point the adapter at it.
    """
    from smolmac.export.sources import open_source

    say = on_message or (lambda _m: None)
    kind = exporter(fmt)
    dtype = kind.dtype(dtype)
    out = Path(out)
    options = _options(kind, out, quantize, group_size, with_base)
    writer = kind.writer()
    if hasattr(writer, "check"):  # cheap checks of the options before any weights are read
        writer.check(kind, dtype, **options)
    check_out(out, Path(run_dir), overwrite, kind)
    src = open_source(run_dir, say)
    if src.adapter is None and kind.adapter:
        raise UserError(f"--format {fmt}: {run_dir} is a full fine-tune with no adapter to export; use --format hf for a transformers model directory (mlx-lm loads it too) or --format gguf for llama.cpp.")
    return write_export(src, fmt, out, dtype, overwrite, say, quantize=quantize, group_size=group_size, with_base=with_base)


def write_export(src, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None,
                 info: dict | None = None, quantize: str | None = None, group_size: int | None = None,
                 with_base: bool = False) -> Path:
    """Write a `Source` (see sources.py) in format `fmt` at `out`, with smolmac.json and the model
    card, under a temporary name renamed into place (nothing is left at `out` on failure). What
    `export_run` does once it found the source; `smolmac adapters combine` and
    `smolmac.export(loaded_model)` write the adapters they made through it.

    Args:
        src: what to write (an adapter, a model dir or full weights).
        fmt, out, dtype, overwrite, on_message, quantize, group_size, with_base: as in `export_run`.
        info: extra smolmac.json entries (e.g. how a combined adapter was made).
    """
    from smolmac.export.card import card_info, model_card
    from smolmac.export.sizes import human_size, on_disk

    say = on_message or (lambda _m: None)
    kind = exporter(fmt)
    dtype = kind.dtype(dtype)
    out = Path(out)
    options = _options(kind, out, quantize, group_size, with_base)
    writer = kind.writer()
    if hasattr(writer, "check"):
        writer.check(kind, dtype, **options)
    check_out(out, src.path, overwrite, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    _remove(tmp)
    if kind.suffix is None:
        tmp.mkdir()
    try:
        writer.write(src, tmp, dtype, say, **options)
        if kind.suffix is None:
            info = {**card_info(src, fmt, options.get("quantize") or dtype), "name": out.name, **(info or {})}
            (tmp / "smolmac.json").write_text(json.dumps(info, indent=2) + "\n")
            (tmp / "README.md").write_text(model_card(info))
        if out.exists() and kind.suffix is None:
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    say(f"{out}: {human_size(on_disk(out))} written.")
    return out
