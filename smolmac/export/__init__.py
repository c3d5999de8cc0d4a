"""Exporters, side by side: each format is one module here with `write(src, out, dtype, say)` and
`usage(...)` (the model card's snippet), and one `Exporter` entry below. The CLI's choices, the
model card, the app's Export screen and upload all read this registry.

    smolmac export runs/x --format peft --to out/x-peft   # PEFT LoRA/DoRA adapter (transformers)
    smolmac export runs/x --format hf   --to out/x-hf     # adapter fused into the base, HF layout
    smolmac export runs/x --format mlx  --to out/x-mlx    # mlx-lm adapter (--adapter-path)

What to export is found by `sources.open_source` (a run, a pipeline, an adapter dir); the output is
written beside `--to` under a temporary name and renamed into place at the end. `--overwrite`
replaces only an earlier export: its `smolmac.json` (the marker) lists every file it wrote, and a
folder holding anything else, or holding the run, the working or the home directory, is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from smolmac.errors import UserError
from smolmac.export.registry import DTYPES, EXPORTERS, Exporter, detect, exporter  # noqa: F401

MARKER = "smolmac.json"  # every export holds it: its model card data and the files it wrote
IGNORED = {".DS_Store"}  # written by Finder, not by the user


def _written_by_export(out: Path) -> list[str] | None:
    """The files an earlier `smolmac export` wrote into `out` (from its smolmac.json), or None
    when `out` is not an export."""
    try:
        info = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = info.get("files") if isinstance(info, dict) and info.get("written_by") == "smolmac export" else None
    return files if isinstance(files, list) else None


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if (p.is_file() or p.is_symlink()) and p.name not in IGNORED)


def _check_out(out: Path, src_path: Path, overwrite: bool):
    """Refuse an output that would delete anything the user owns: `--overwrite` replaces only an
    earlier export (its smolmac.json lists every file it wrote, and nothing else is there), never
    a folder that is or holds the run, the working directory or the home directory."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--to: {out} is a file; give a directory path.")
    if not out.exists():
        return
    here = out.resolve()
    for what, p in (("the run being exported", src_path.resolve()), ("the current directory", Path.cwd().resolve()), ("your home directory", Path.home().resolve())):
        if here == p or here in p.parents:
            raise UserError(f"--to: {out} is or contains {what} ({p}), so it cannot receive an export; choose a new folder such as {out / 'export'}.")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--to: {out} exists and is not empty; choose another directory, or pass --overwrite to replace an earlier export there.")
    written = _written_by_export(out)
    if written is None:
        raise UserError(f"--to: {out} was not written by `smolmac export` (no {MARKER} listing its files), so --overwrite will not delete it; choose a new folder.")
    extra = [f for f in _files(out) if f not in set(written)]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UserError(f"--to: {out} holds {extra[0]}{more}, which `smolmac export` did not write, so --overwrite will not delete it; move it out or choose a new folder.")


def _need_bytes(src, kind) -> int | None:
    """About how many bytes the export writes (for the disk-full sentence)."""
    from smolmac.storage import dir_size

    if src.adapter is not None and kind.adapter:
        return sum(v.nbytes for v in src.adapter.weights.values())
    for d in (src.model_dir, getattr(src.adapter, "base_path", None), src.base):
        if d and Path(str(d)).is_dir():
            return sum(p.stat().st_size for p in Path(str(d)).glob("*.safetensors")) or dir_size(Path(str(d)))
    return None


def export_run(run_dir, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None, pick: str = "last") -> Path:
    """Export a run (or an adapter dir) in one of the EXPORTERS' formats.

    Args:
        run_dir: run dir (adapter/, model/ or, unfinished, its last checkpoint), a pipeline dir
            (its last trained stage), or an mlx-lm or PEFT adapter dir.
        fmt: a key of EXPORTERS ("peft", "hf", "mlx", ...).
        out: output directory (written beside itself under a temporary name, then renamed into
            place; with README.md, the model card, and smolmac.json, which lists the files).
        dtype: float32, float16 or bfloat16 (default: as trained / the base model's).
        overwrite: replace an earlier export in `out` (nothing else is ever deleted).
        on_message: callable receiving progress sentences (e.g. print).
        pick: "last" (the run's last weights) or "best" (adapter-best/ or model-best/ of save.best).
    """
    from smolmac import storage
    from smolmac.export.card import card_info, model_card
    from smolmac.export.sources import open_source

    say = on_message or (lambda _m: None)
    kind = exporter(fmt)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype: '{dtype}' is not supported; choose float32, float16 or bfloat16.")
    if pick not in ("last", "best"):
        raise UserError(f"--pick: '{pick}' is not a choice; use last or best.")
    out = Path(out)
    _check_out(out, Path(run_dir), overwrite)
    src = open_source(run_dir, say, pick=pick)
    if src.adapter is None and kind.adapter:
        raise UserError(f"--format {fmt}: {run_dir} is a full fine-tune with no adapter to export; use --format hf for a transformers model directory (mlx-lm loads it too).")
    storage.remove_leftovers(out.parent, prefix=f".{out.name}.", only_dead=True)
    tmp = storage.tmp_name(out)
    try:
        with storage.writing(out, _need_bytes(src, kind), "then export again"):
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            kind.writer().write(src, tmp, dtype, say)
            info = {**card_info(src, fmt, dtype), "name": out.name}
            (tmp / "README.md").write_text(model_card(info))
            files = _files(tmp)
            info.update(written_by="smolmac export", files=sorted({*files, MARKER}))
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            storage.swap_dir(tmp, out)  # the old export is deleted only once the new one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
