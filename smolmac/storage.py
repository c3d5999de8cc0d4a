"""Files on disk, safely: atomic writes, directory swaps, the run-dir lock, leftovers, and one
sentence for a full disk or any other write error.

    with storage.run_lock(run_dir):          # one training process per run dir (kernel lock)
        storage.atomic_write_text(run_dir / "config.yaml", text)
        with storage.writing(path, need=nbytes, then="free some space, then resume"):
            ...                              # ENOSPC and friends become a UserError

The lock is an `fcntl.flock` on `DIR/lock`: the kernel releases it when the process ends, so a
SIGKILL or an out-of-memory kill never leaves a stale lock. The file holds the owner's PID, which
the refusal names. Platforms without `fcntl` (Windows) get no lock: smolmac targets macOS and Linux.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from smolmac.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_FILE = "lock"
FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


# ---------------------------------------------------------------------------------------------
# Write errors


def human(nbytes: float | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, like Finder and df -H)."""
    if nbytes is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def free_bytes(path: str | Path) -> int | None:
    """Free space on the file system holding `path` (its nearest existing ancestor)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


# What the disk or the file system refuses (not a program's own mistake, such as FileExistsError).
WRITE_ERRNOS = {*FULL, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def is_write_failure(exc: BaseException) -> bool:
    """Whether `exc` is the disk or file system refusing a write (not a program's mistake)."""
    if isinstance(exc, OSError):
        return exc.errno in WRITE_ERRNOS or exc.errno is None  # None: numpy's short write
    # MLX reports a failed write as RuntimeError("[write] Unable to write N bytes to file.")
    return isinstance(exc, RuntimeError) and bool(re.search(r"\[write\]|unable to write|no space", str(exc), re.I))


def write_error(path: str | Path, exc: BaseException, need: int | None = None, then: str = "then run the command again") -> UserError:
    """One sentence for a failed write: the path, and for a full disk the free and needed space.

    Args:
        path: what was being written.
        exc: the OSError (or MLX RuntimeError) raised by the write.
        need: bytes the write needs in all, when known.
        then: what to do after making room, e.g. "then resume with smolmac train --resume DIR".
    """
    code = getattr(exc, "errno", None)
    free = free_bytes(path)
    # numpy and MLX report a short write without an errno: a nearly full disk is the cause.
    full = code in FULL or (code is None and free is not None and free < max(need or 0, 1 << 20))
    if full:
        needed = f", about {human(need)} needed" if need else ""
        return UserError(f"{path}: the disk is full ({human(free)} free{needed}); free some space or move the folder to a larger disk, {then}.")
    reason = os.strerror(code) if code else str(exc).strip().rstrip(".")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{path}: cannot write here ({reason.lower()}); choose a folder you can write to, {then}.")
    return UserError(f"{path}: writing failed ({reason}); check the disk, {then}.")


@contextmanager
def writing(path: str | Path, need: int | None = None, then: str = "then run the command again"):
    """Turn a failed write inside the block into `write_error`'s one sentence (a UserError)."""
    try:
        yield
    except UserError:
        raise
    except (OSError, RuntimeError) as e:
        if not is_write_failure(e):
            raise
        raise write_error(path, e, need, then) from None


# ---------------------------------------------------------------------------------------------
# Names that become folders


def component(name: str, what: str, under: str = "its folder") -> str:
    """`name` as exactly one folder name: a path (absolute, with '/' or '\\', '.', '..', or
    starting with '~') is refused; characters other than letters, digits and `._+-` become '-'.

    Args:
        what: the key named in the error, e.g. "name" or "stages[2].name".
        under: where the folder goes, for the error.
    """
    text = str(name)
    if (not text.strip() or text.strip() in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or text.startswith("~") or os.path.isabs(text)):
        raise UserError(f"{what}: {text!r} must be a plain name, not a path (no '/', '..' or '~'); the folder is made under {under}.")
    cleaned = re.sub(r"[^\w.+-]+", "-", text).strip("-.")
    if not cleaned:
        raise UserError(f"{what}: {text!r} has no letters or digits to name a folder with; use a name such as my-run.")
    return cleaned


# ---------------------------------------------------------------------------------------------
# Atomic writes


def tmp_name(path: Path) -> Path:
    """A unique temporary sibling of `path` (`.NAME.tmp-PID-RANDOM`): two writers never collide."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, write, nbytes: int, then: str = "then run the command again") -> Path:
    """Call `write(f)` on a temporary sibling opened for binary writing, fsync it, and rename it
    over `path`; `nbytes` is the space it needs (named if the disk fills up)."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with writing(path, nbytes, then):
            with tmp.open("wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str, then: str = "then run the command again") -> Path:
    """Write `text` (UTF-8) to a temporary sibling, fsync it, and rename it over `path`."""
    data = text.encode()
    return atomic_write(path, lambda f: f.write(data), len(data), then)


def swap_dir(new: Path, final: Path) -> Path:
    """Put the finished directory `new` at `final`; an existing `final` is moved aside first and
    deleted only once `new` is in place, so a failure leaves the old one intact."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def dir_size(path: Path) -> int:
    """Bytes of every file under `path`."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


_TMP = re.compile(r"^\.(?:.+\.)?(?:tmp|old)-(\d+)(?:-[0-9a-f]+)?$|^\.tmp-step-\d+-(\d+)$")


def remove_leftovers(*folders: Path, only_dead: bool = False, prefix: str = "") -> list[Path]:
    """Delete temporary files and folders (`.X.tmp-PID-…`, `.X.old-PID-…`, `.tmp-step-N-PID`)
    that an interrupted write left in `folders`.

    Args:
        only_dead: keep those whose PID is still running (for folders no lock protects).
        prefix: only names starting with it (e.g. `.NAME.` beside an export in a user's folder).
    """
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TMP.match(p.name)
            if not m or not p.name.startswith(prefix):
                continue
            if only_dead and pid_running(int(m.group(1) or m.group(2))):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def pid_running(pid: int) -> bool:
    """Whether a process with this PID exists (it may be a zombie, or another program)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# The run-dir lock


class RunLocked(UserError):
    """Another live process trains this run dir."""


def lock_owner(run_dir: str | Path) -> int | None:
    """The PID of the live process that holds `run_dir`'s lock, or None when nobody holds it
    (0 when it is held but the PID cannot be read). Always None without fcntl."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_supported() -> bool:
    return fcntl is not None


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


@contextmanager
def run_lock(run_dir: str | Path, create: bool = True):
    """Hold `run_dir`'s lock for the block; refuse with one sentence naming the owner's PID.

    Args:
        create: create `run_dir` when missing (a fresh start); a resume needs it to exist.
    """
    run_dir = Path(run_dir)
    blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"--run-dir: {blocker} is a file, so {run_dir} cannot be a run directory; choose another --run-dir.")
    if fcntl is None:
        yield
        return
    if create:
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise UserError(f"--resume: {run_dir} does not exist; give the folder of a run (see `smolmac runs`).")
    path = run_dir / LOCK_FILE
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            who = f"process {pid}" if pid else "another process"
            raise RunLocked(f"{run_dir}: {who} is training this run right now; wait for it to finish or stop it (Ctrl-C in its terminal, or s in the app), then resume it.") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only the PID is not shown
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
