"""Runs as child processes: start, resume, stop, liveness, and the list of runs with their
process status. The app calls this; it never starts or signals processes itself.

A run is `python -m smolmac.cli train RECIPE --run-dir DIR` in its own session, so it survives
the app closing and a crash or out-of-memory kill cannot take the UI down. What the run writes is
all there is to read: `DIR/events.jsonl` (smolmac/events.py), `DIR/lock` (held by whichever
process trains the run, from the CLI or from here: smolmac/storage.py), `DIR/pid` (written here at
launch) and `DIR/train.log` (the child's stdout and stderr, whose last line is the error of a run
that died without reporting one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from smolmac.errors import UserError
from smolmac.runs import read_run
from smolmac.storage import lock_owner, lock_supported, pid_running

PID_FILE = "pid"
LOG_FILE = "train.log"
RECIPE_FILE = "recipe.yaml"
CRASHED = "the training process ended without reporting (crashed, or killed for lack of memory)"


class Launcher:
    """Starts, resumes and stops runs as child processes (`smolmac train` in its own session).

    Args:
        command: the command that runs the CLI; by default this interpreter with `-m smolmac.cli`,
            so it works without `smolmac` on PATH.
    """

    def __init__(self, command: list[str] | None = None):
        self.command = command or [sys.executable, "-m", "smolmac.cli"]
        self._procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, run_dir: Path, args: list[str]) -> int:
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                [*self.command, "train", *args, "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd(),
            )
        self._procs[str(run_dir.resolve())] = proc
        (run_dir / PID_FILE).write_text(str(proc.pid))
        return proc.pid

    def start(self, recipe: str | Path, run_dir: str | Path) -> int:
        """Start `smolmac train RECIPE --run-dir DIR`; returns the child's pid."""
        _refuse_if_locked(run_dir)
        return self._spawn(Path(run_dir), [str(recipe), "--run-dir", str(run_dir)])

    def resume(self, run_dir: str | Path) -> int:
        """Start `smolmac train --resume DIR`; returns the child's pid."""
        _refuse_if_locked(run_dir)
        if self.alive(run_dir):
            raise UserError(f"{run_dir}: its process is still running (training, or saving its checkpoint after a stop); wait until it has exited, then resume.")
        return self._spawn(Path(run_dir), ["--resume", str(run_dir)])

    def stop(self, run_dir: str | Path) -> bool:
        """Ask a run to checkpoint and stop (SIGINT, which the CLI turns into a clean stop)."""
        proc = self._procs.get(str(Path(run_dir).resolve()))
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            return True
        for pid in (read_pid(run_dir), lock_owner(run_dir)):  # launched here, or by `smolmac train`
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGINT)
                return True
        return False

    def alive(self, run_dir: str | Path) -> bool | None:
        """Whether a process trains the run: True when one holds its lock (started from anywhere)
        or our child / its pid file's process is still starting; False when none does; None only
        where runs cannot be locked (no fcntl) and no pid file says."""
        if lock_owner(run_dir) is not None:
            return True
        proc = self._procs.get(str(Path(run_dir).resolve()))
        if proc is not None:
            return proc.poll() is None  # poll() also reaps our exited child (no zombie)
        pid = read_pid(run_dir)
        if pid is not None:
            return pid_alive(pid)
        return False if lock_supported() else None


def _refuse_if_locked(run_dir: str | Path):
    pid = lock_owner(run_dir)
    if pid is not None:
        who = f"process {pid}" if pid else "another process"
        raise UserError(f"{run_dir}: {who} is training this run right now; wait for it to finish or stop it first.")


def read_pid(run_dir: str | Path) -> int | None:
    try:
        return int((Path(run_dir) / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process that looks like a smolmac run."""
    if not pid_running(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():  # Linux: also rule out zombies and a pid reused by another program
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return b"smolmac" in proc.joinpath("cmdline").read_bytes()
        except (OSError, IndexError):
            return True
    return True


def last_log_line(run_dir: str | Path, limit: int = 8192) -> str | None:
    """The last non-empty line of the child's output (its error when it died)."""
    path = Path(run_dir) / LOG_FILE
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else None


_SUMMARIES: dict[str, tuple[tuple, dict]] = {}  # run dir -> (file stamps, read_run result)


def _stamp(run_dir: Path) -> tuple:
    out = []
    # A pipeline's stages write their own events: their files are part of its stamp.
    for path in [run_dir / name for name in ("events.jsonl", "config.yaml", RECIPE_FILE)] + sorted(run_dir.glob("*/events.jsonl")):
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def run_summary(run_dir: str | Path, launcher: Launcher | None = None) -> dict:
    """`smolmac.runs.read_run` plus what the process says: a run whose process is gone without a
    done/error event is failed, with the child's last output line as its error."""
    run_dir = Path(run_dir)
    stamp = _stamp(run_dir)
    cached = _SUMMARIES.get(str(run_dir))
    if cached and cached[0] == stamp:  # unchanged files: skip re-reading a long events.jsonl
        info = dict(cached[1])
    else:
        info = read_run(run_dir)
        if not (run_dir / "config.yaml").is_file() and (run_dir / RECIPE_FILE).is_file():
            try:  # still starting: the CLI has not written config.yaml yet
                recipe = yaml.safe_load((run_dir / RECIPE_FILE).read_text()) or {}
                info.update(method="pipeline" if recipe.get("stages") else recipe.get("method", "sft"), model=recipe.get("model"))
            except (OSError, yaml.YAMLError):
                pass
        _SUMMARIES[str(run_dir)] = (stamp, dict(info))
    info["name"] = run_dir.name
    alive = launcher.alive(run_dir) if launcher else None
    info["alive"] = bool(alive)
    info["pid"] = lock_owner(run_dir)
    if "stages" in info:  # copies: the cached summary stays as read from disk
        info["stages"] = [dict(s) for s in info["stages"]]
    if alive and info["status"] in ("stopped", "failed", "finished"):
        info["status"], info["error"] = "running", None  # resumed (elsewhere too): not reported yet
    elif info["status"] in ("running", "new") and alive is False:
        info["status"] = "failed"
        info["error"] = last_log_line(run_dir) or CRASHED
        for stage in info.get("stages", []):  # a pipeline: its running stage died with it
            if stage["status"] == "running":
                stage.update(status="failed", error=info["error"])
    elif info["status"] == "new" and alive:
        info["status"] = "starting"
    return info


def list_runs(runs_dir: str | Path, launcher: Launcher | None = None) -> list[dict]:
    """Summaries of every run dir (a folder with config.yaml or events.jsonl), newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and ((p / "config.yaml").is_file() or (p / "events.jsonl").is_file() or (p / PID_FILE).is_file())]
    out = [run_summary(d, launcher) for d in dirs]
    return sorted(out, key=lambda r: (r["started"] or (Path(r["dir"]).stat().st_mtime), r["name"]), reverse=True)
