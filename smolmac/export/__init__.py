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
place at the end, so nothing partial is ever left at `--to` and a failure leaves an earlier export
intact. `--overwrite` replaces only an earlier export: a folder whose `smolmac.json` (the marker)
lists every file in it, or a GGUF file; a folder holding anything else, or holding the run, the
working or the home directory, is refused.
"""

from __future__ import annotations

import json
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

MARKER = "smolmac.json"  # every folder export holds it: its model card data and the files it wrote
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


def check_out(out: Path, src_path: Path, overwrite: bool, kind: Exporter):
    """Refuse an output that would delete anything the user owns: `--overwrite` replaces only an
    earlier export (a folder whose smolmac.json lists every file in it, or a GGUF file), never a
    folder that is or holds `src_path` (the run), the working directory or the home directory."""
    if kind.suffix is not None:  # one file
        if out.suffix.lower() != kind.suffix:
            raise UserError(f"--to: --format {kind.name} writes one file; give a path ending in {kind.suffix}, such as {out.parent / (out.stem + kind.suffix)}.")
        if out.is_dir():
            raise UserError(f"--to: {out} is a directory; give a file path ending in {kind.suffix}.")
        if out.exists() and not overwrite:
            raise UserError(f"--to: {out} exists; choose another file name or pass --overwrite.")
        if out.exists() and kind.suffix == ".gguf" and _magic(out) != b"GGUF":
            raise UserError(f"--to: {out} is not a GGUF file, so --overwrite will not replace it; choose another file name.")
        return
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


def _magic(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(4)
    except OSError:
        return b""


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


def _need(run_dir, fmt: str, dtype, options: dict) -> int | None:
    """About how many bytes the export writes (for the disk-full sentence)."""
    from smolmac.export.sizes import estimate

    try:
        return estimate(run_dir, fmt, dtype, options.get("quantize"), options.get("group_size"))
    except Exception:  # noqa: BLE001 - only an estimate for an error message
        return None


def export_run(run_dir, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None,
               quantize: str | None = None, group_size: int | None = None, with_base: bool = False, pick: str = "last") -> Path:
    """Export a run (or an adapter dir) in one of the EXPORTERS' formats.

    Args:
        run_dir: run dir (adapter/, model/ or, unfinished, its last checkpoint), a pipeline dir
            (its last trained stage), or an mlx-lm or PEFT adapter dir.
        fmt: a key of EXPORTERS ("peft", "hf", "mlx", "gguf", "ollama", "gguf-lora", "mlx-q4", "mlx-q8").
        out: output directory (written beside itself under a temporary name, then swapped in by
            rename; with README.md, the model card, and smolmac.json, which lists its files), or
            for single-file formats (gguf, gguf-lora) the file, e.g. out/model.gguf.
        dtype: float32, float16 or bfloat16; for GGUF formats f32, f16, bf16 or q8_0 (default: as
            trained / the base model's).
        overwrite: replace an earlier export at `out` (nothing else is ever deleted).
        on_message: callable receiving progress sentences (e.g. print).
        quantize: GGUF formats: a GGUF type the `gguf` package can write (q4_0, q5_0, q8_0, ...).
        group_size: mlx-q4/mlx-q8: quantisation group size (default 64, mlx-lm's).
        with_base: peft: for a quantised base whose original is unknown, also write the
            dequantised base into `out/base` and point the adapter at it.
        pick: "last" (the run's last weights) or "best" (adapter-best/ or model-best/ of save.best).
    """
    from smolmac.export.sources import open_source

    say = on_message or (lambda _m: None)
    kind = exporter(fmt)
    dtype = kind.dtype(dtype)
    if pick not in ("last", "best"):
        raise UserError(f"--pick: '{pick}' is not a choice; use last or best.")
    out = Path(out)
    options = _options(kind, out, quantize, group_size, with_base)
    writer = kind.writer()
    if hasattr(writer, "check"):  # cheap checks of the options before any weights are read
        writer.check(kind, dtype, **options)
    check_out(out, Path(run_dir), overwrite, kind)
    src = open_source(run_dir, say, pick=pick)
    if src.adapter is None and kind.adapter:
        raise UserError(f"--format {fmt}: {run_dir} is a full fine-tune with no adapter to export; use --format hf for a transformers model directory (mlx-lm loads it too) or --format gguf for llama.cpp.")
    return write_export(src, fmt, out, dtype, overwrite, say, quantize=quantize, group_size=group_size, with_base=with_base)


def write_export(src, fmt: str, out, dtype: str | None = None, overwrite: bool = False, on_message=None,
                 info: dict | None = None, quantize: str | None = None, group_size: int | None = None,
                 with_base: bool = False) -> Path:
    """Write a `Source` (see sources.py) in format `fmt` at `out`, with smolmac.json and the model
    card, under a temporary name swapped into place by rename (a failure leaves nothing at `out`,
    or the earlier export there intact). What `export_run` does once it found the source;
    `smolmac adapters combine` and `smolmac.export(loaded_model)` write the adapters they made
    through it.

    Args:
        src: what to write (an adapter, a model dir or full weights).
        fmt, out, dtype, overwrite, on_message, quantize, group_size, with_base: as in `export_run`.
        info: extra smolmac.json entries (e.g. how a combined adapter was made).
    """
    from smolmac import storage
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
    storage.remove_leftovers(out.parent, prefix=f".{out.name}.", only_dead=True)
    tmp = storage.tmp_name(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if kind.suffix is None:
            tmp.mkdir()
        writer.write(src, tmp, dtype, say, **options)
        if kind.suffix is None:
            info = {**card_info(src, fmt, options.get("quantize") or dtype), "name": out.name, **(info or {})}
            (tmp / "README.md").write_text(model_card(info))
            info.update(written_by="smolmac export", files=sorted({*_files(tmp), MARKER}))
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            storage.swap_dir(tmp, out)  # the old export is deleted only once the new one is in place
        else:
            tmp.replace(out)  # one file: the rename replaces the old one atomically
    except (OSError, RuntimeError) as e:
        if not storage.is_write_failure(e):
            raise
        raise storage.write_error(out, e, _need(src.path, fmt, dtype, options), "then export again") from None
    finally:
        _remove(tmp)
    say(f"{out}: {human_size(on_disk(out))} written.")
    return out
