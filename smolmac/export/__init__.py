"""Exporters, side by side: each format is one module here with `write(src, out, dtype, say)` and
`usage(...)` (the model card's snippet), and one `Exporter` entry below. The CLI's choices, the
model card, the app's Export screen and upload all read this registry.

    smolmac export runs/x --format peft --to out/x-peft   # PEFT LoRA/DoRA adapter (transformers)
    smolmac export runs/x --format hf   --to out/x-hf     # adapter fused into the base, HF layout
    smolmac export runs/x --format mlx  --to out/x-mlx    # mlx-lm adapter (--adapter-path)

What to export is found by `sources.open_source` (a run, a pipeline, an adapter dir); the output is
written beside `--to` under a temporary name and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from smolmac.errors import UserError
from smolmac.export.registry import DTYPES, EXPORTERS, Exporter, detect, exporter  # noqa: F401


def check_out(out: Path, src_path: Path, overwrite: bool):
    """UserError unless `out` may be written: new, empty, or `overwrite` and not holding `src_path`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--to: {out} is a file; give a directory path.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--to: {out} exists and is not empty; choose another directory or pass --overwrite.")
        here, src = out.resolve(), src_path.resolve()
        if here == src or here in src.parents or here in (Path.cwd().resolve(), Path.home().resolve()):
            raise UserError(f"--to: {out} contains the run (or is the current or home directory); --overwrite would delete it, so choose a new directory.")


def _check_dtype(dtype: str | None):
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype: '{dtype}' is not supported; choose float32, float16 or bfloat16.")


def export_run(run_dir, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None) -> Path:
    """Export a run (or an adapter dir) in one of the EXPORTERS' formats.

    Args:
        run_dir: run dir (adapter/, model/ or, unfinished, its last checkpoint), a pipeline dir
            (its last trained stage), or an mlx-lm or PEFT adapter dir.
        fmt: a key of EXPORTERS ("peft", "hf", "mlx", ...).
        out: output directory (written atomically, with README.md model card and smolmac.json).
        dtype: float32, float16 or bfloat16 (default: as trained / the base model's).
        overwrite: replace a non-empty `out`.
        on_message: callable receiving progress sentences (e.g. print).
    """
    from smolmac.export.sources import open_source

    say = on_message or (lambda _m: None)
    kind = exporter(fmt)
    _check_dtype(dtype)
    out = Path(out)
    check_out(out, Path(run_dir), overwrite)
    src = open_source(run_dir, say)
    if src.adapter is None and kind.adapter:
        raise UserError(f"--format {fmt}: {run_dir} is a full fine-tune with no adapter to export; use --format hf for a transformers model directory (mlx-lm loads it too).")
    return write_export(src, fmt, out, dtype, overwrite, say)


def write_export(src, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None,
                 info: dict | None = None) -> Path:
    """Write a `Source` (see sources.py) in format `fmt` at `out`, with smolmac.json and the model
    card, under a temporary name renamed into place (nothing is left at `out` on failure).

    Args:
        src: what to write (an adapter, a model dir or full weights).
        fmt, out, dtype, overwrite, on_message: as in `export_run`.
        info: extra smolmac.json entries (e.g. how a combined adapter was made).
    """
    from smolmac.export.card import card_info, model_card

    say = on_message or (lambda _m: None)
    kind = exporter(fmt)
    _check_dtype(dtype)
    out = Path(out)
    check_out(out, src.path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        kind.writer().write(src, tmp, dtype, say)
        info = {**card_info(src, fmt, dtype), "name": out.name, **(info or {})}
        (tmp / "smolmac.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(info))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
