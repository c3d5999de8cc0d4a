"""Starting a data-parallel group with `mlx.launch`, and checking the hosts first.

    smolmac train RECIPE --nproc 2                                  # 2 processes on this machine
    smolmac train RECIPE --hostfile hosts.json [--backend ring]     # one process per host
    smolmac launch-check --hostfile hosts.json RECIPE               # can every host run it?

The hostfile is mlx.launch's: `[{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, ...]` or
`{"backend": "ring", "hosts": [...]}`; the first host is process 0, which writes the run dir, so
it must be this machine. This process (the launcher) writes config.yaml, starts
`mlx.launch ... -- python -m smolmac.cli train --run-dir DIR` (smolmac/distributed.py is what
each process does), shows process 0's events as they come, forwards Ctrl-C (every process
checkpoints, then stops) and turns the group's end into one exit status and, if process 0 could
not, one `error` event.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from smolmac.errors import UserError

BACKENDS = ("ring", "jaccl", "mpi")
LOCAL = "127.0.0.1"  # mlx.launch runs this host without ssh
# mlx.launch itself, from its console-script entry point (so the same Python runs it)
MLX_LAUNCH = ("import sys; from importlib.metadata import entry_points; sys.argv[0] = 'mlx.launch'; "
              "sys.exit(next(iter(entry_points(group='console_scripts', name='mlx.launch'))).load()())")
_NODE = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")
_NOISE = re.compile(r"^\[ring\] (Socket \d+ was closed by the peer|Too many send/recv errors)")


def read_hostfile(path: str | Path) -> tuple[list[dict], str | None]:
    """Hosts (each `ssh`, `ips`, `rdma`) and the backend named in an mlx.launch hostfile."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise UserError(f"--hostfile: cannot read {path} ({e.strerror}); give mlx.launch's JSON hostfile.") from None
    except ValueError as e:
        raise UserError(f"--hostfile: {path} is not valid JSON ({e}); see the hostfile in README 'Training on two Macs'.") from None
    backend = data.get("backend") or None if isinstance(data, dict) else None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts:
        raise UserError(f"--hostfile: {path} lists no hosts; write [{{\"ssh\": \"mac1.local\", \"ips\": [\"10.0.0.1\"]}}, ...] or {{\"hosts\": [...]}}.")
    for i, h in enumerate(hosts):
        if not isinstance(h, dict) or not isinstance(h.get("ssh"), str) or not h["ssh"]:
            raise UserError(f"--hostfile: {path}: hosts[{i}] needs an \"ssh\" name (the host to ssh into, {LOCAL} for this machine).")
    return [{"ssh": h["ssh"], "ips": list(h.get("ips") or []), "rdma": list(h.get("rdma") or [])} for h in hosts], backend


def _local_names() -> set[str]:
    names = {LOCAL, "localhost", socket.gethostname(), socket.getfqdn()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return names


def _free_ports(n: int) -> int:
    """A base port with n consecutive free ports on this machine (the ring listens on them)."""
    import random

    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((LOCAL, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise UserError("--nproc: found no free local ports for the ring backend; close other distributed runs and retry.")


def plan(cfg, nproc: int | None, hostfile: str | None, backend: str | None) -> tuple[int, list[str]]:
    """Check a group run before anything starts; returns (processes, mlx.launch arguments)."""
    from smolmac.methods import method

    if (nproc is None) == (hostfile is None):
        raise UserError("train: give either --nproc N (processes on this machine) or --hostfile HOSTS, not both.")
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc: {nproc} is not a number of processes; give 2 or more (1 is an ordinary run).")
    if cfg.stages:
        raise UserError("stages: a pipeline runs in one process; train its stages one by one with --nproc/--hostfile, or drop --nproc/--hostfile.")
    if not method(cfg.method).trains:
        raise UserError(f"method: {cfg.method} trains no model, so there is nothing to run data-parallel; drop --nproc/--hostfile.")
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend: '{backend}' is not one of {', '.join(BACKENDS)}.")
    hosts: list[dict] = []
    if nproc:
        if backend not in (None, "ring"):
            raise UserError(f"--backend: --nproc runs on this machine with the ring backend, not {backend}; use --hostfile for {backend}.")
        n, args = nproc, ["--backend", "ring", "--hosts", LOCAL, "-n", str(nproc), "--starting-port", str(_free_ports(nproc))]
    else:
        hosts, named = read_hostfile(hostfile)
        backend = backend or named or "ring"
        if len(hosts) == 1:
            raise UserError(f"--hostfile: {hostfile} lists one host; data parallel needs two or more (drop --hostfile to train on this machine).")
        if backend not in BACKENDS:
            raise UserError(f"--hostfile: its backend '{backend}' is not one of {', '.join(BACKENDS)}.")
        if hosts[0]["ssh"] not in _local_names():
            raise UserError(f"--hostfile: the first host ({hosts[0]['ssh']}) is process 0, which writes the run dir; run smolmac on it, or list this machine first.")
        if backend == "ring" and any(not h["ips"] for h in hosts):
            i = next(i for i, h in enumerate(hosts) if not h["ips"])
            raise UserError(f"--hostfile: hosts[{i}] ({hosts[i]['ssh']}) has no \"ips\"; the ring backend connects to IP addresses (e.g. the Thunderbolt bridge's).")
        n, args = len(hosts), ["--backend", backend, "--hostfile", str(hostfile)]
        if backend == "ring" and all(set(h["ips"]) <= {LOCAL} for h in hosts):
            args += ["--starting-port", str(_free_ports(sum(len(h["ips"]) for h in hosts)))]
    if nproc or all(h["ssh"] == LOCAL for h in hosts):
        # N processes on one machine share its cores: OpenBLAS threads that spin-wait for work
        # would oversubscribe them (measured: a step 10-30x slower on 2 cores with 2 processes).
        threads = os.environ.get("OPENBLAS_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
        args += ["--env", f"OPENBLAS_NUM_THREADS={threads}"]
    if cfg.train.batch_size == "auto":
        raise UserError("train.batch_size: auto chooses for one process; give train.batch_size a number to train data-parallel.")
    if cfg.train.batch_size % n:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} rows cannot be split evenly over {n} processes; use a multiple of {n}, e.g. {n * max(1, round(cfg.train.batch_size / n))}.")
    return n, args + ["--env", f"SMOLMAC_DISTRIBUTED={backend or 'ring'}"]


def train_group(cfg, run_dir: Path, resume: bool = False, *, nproc: int | None = None, hostfile: str | None = None,
                backend: str | None = None, on_event=None, stop=None, overrides: dict | None = None):
    """Train `cfg` data-parallel in `run_dir` (see the module docstring); returns the `Run`.

    Args:
        nproc: processes on this machine (ring backend), or
        hostfile: an mlx.launch hostfile (one process per entry) with `backend`.
        on_event: receives process 0's events as they come.
        stop: a threading.Event; when set, every process checkpoints and stops.
        overrides: `--set` keys on resume (runs.SAFE_ON_RESUME), applied and recorded here.
    Raises:
        UserError: with the group's error (the run dir keeps its last checkpoint).
    """
    from smolmac import events as ev
    from smolmac.runs import Run, last_checkpoint_step, open_run_dir
    from smolmac.storage import run_lock
    from smolmac.trainer import list_checkpoints

    n, launch_args = plan(cfg, nproc, hostfile, backend)
    run_dir = Path(run_dir).resolve()
    # The lock is held while the recipe is written, then process 0 holds it while it trains.
    with run_lock(run_dir, create=not resume):
        cfg, changes = open_run_dir(cfg, run_dir, resume, overrides)
        if changes:
            with ev.EventLog(run_dir / "events.jsonl") as log:
                log(ev.ConfigChange(step=last_checkpoint_step(run_dir), changes=changes))
    rank_cmd = [sys.executable, "-m", "smolmac.cli", "train", "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    seen, statuses = _launch([sys.executable, "-c", MLX_LAUNCH, *launch_args, "--", *rank_cmd], on_event, stop)
    last = seen[-1] if seen else None
    failed = {r: c for r, c in statuses.items() if c != 0}
    if last and last["type"] == "done" and not failed:
        return Run(run_dir, cfg, ev.read_events(run_dir / "events.jsonl"), stopped=bool(last.get("stopped")),
                   adapter_path=run_dir / "adapter" if (run_dir / "adapter").is_dir() else None,
                   model_path=run_dir / "model" if (run_dir / "model").is_dir() else None)
    # killed processes first, then those that exited with an error, then those mlx.launch stopped
    order = sorted(failed.items(), key=lambda rc: (0 if rc[1] is not None and rc[1] < 0 and rc[1] != -15 else 1 if rc[1] is not None and rc[1] > 0 else 2, rc[0]))
    how = ", ".join(f"process {r} {_status(c)}" for r, c in order) or "the group ended early"
    if last and last["type"] == "error":
        message = last["message"]
    else:  # process 0 could not write it: it died, or the group ended without a word
        message = f"the group of {n} processes stopped: {how}"
        with ev.EventLog(run_dir / "events.jsonl") as log:
            log(ev.Error(step=(last or {}).get("step", 0), message=message))
    ckpts = list_checkpoints(run_dir / "checkpoints")
    how_to = f"--nproc {nproc}" if nproc else f"--hostfile {hostfile}"
    kept = (f"; continue from its last checkpoint (step {int(ckpts[-1].name.split('-')[-1])}) with smolmac train --resume {run_dir} {how_to}" if ckpts else
            f"; it wrote no checkpoint yet: smolmac train --resume {run_dir} {how_to} starts it again")
    raise UserError(message.rstrip(".") + (f" ({how})" if failed and how not in message else "") + kept + ".")


def _status(code: int | None) -> str:
    if code is None:
        return "was stopped by mlx.launch"
    if code < 0:
        try:
            return f"was killed ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed (signal {-code})"
    return f"exited with code {code}"


def _launch(cmd: list[str], on_event, stop) -> tuple[list[dict], dict]:
    """Run mlx.launch; returns (process 0's events seen, {rank: exit code or None if killed})."""
    previous = None
    try:  # mlx.launch and the ranks inherit an ignored SIGINT: Ctrl-C reaches them only through
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # us (see _forward), once
    except ValueError:  # not the main thread: nothing to ignore, stop comes through `stop`
        pass
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    seen: list[dict] = []
    statuses: dict[int, int | None] = {}
    forwarded = 0

    def forward():
        nonlocal forwarded
        forwarded += 1
        sig = signal.SIGINT if forwarded <= 2 else signal.SIGKILL  # checkpoint; then abort; then kill
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    partial = {"out": b"", "err": b""}
    open_pipes = 2
    while open_pipes:
        try:
            ready = sel.select(timeout=0.5)
            if stop is not None and stop.is_set() and forwarded == 0:
                forward()
            for key, _ in ready:
                data = os.read(key.fileobj.fileno(), 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
                    data, partial[key.data] = partial[key.data] + b"\n", b""
                lines = (partial[key.data] + data).split(b"\n")
                partial[key.data] = lines.pop()
                for raw in lines:
                    _line(raw.decode("utf-8", "replace"), key.data, seen, statuses, on_event)
        except KeyboardInterrupt:  # our SIGINT handler raised (a second Ctrl-C)
            forward()
    proc.wait()
    proc.stdin.close()
    return seen, statuses


def _line(line: str, stream: str, seen: list, statuses: dict, on_event):
    if stream == "out":
        if line.startswith("{"):
            try:
                e = json.loads(line)
            except ValueError:
                e = None
            if isinstance(e, dict) and "type" in e:
                seen.append(e)
                if on_event:
                    on_event(e)
                return
        if line.strip():
            print(line, flush=True)
        return
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    m = _NODE.search(plain)
    if m:
        statuses[int(m.group(1))] = int(m.group(2)) if m.group(2) is not None else None
        return
    if not plain or _NOISE.match(plain) or plain.startswith("error: "):
        return  # the group's one error is reported at the end (and is in events.jsonl)
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# launch-check: can every host run the recipe?

# Runs on each host with the interpreter the group would use; prints one JSON line.
PROBE = r"""
import json, os, socket, sys
out = {"host": socket.gethostname(), "python": sys.version.split()[0], "cwd": os.getcwd()}
for mod, name in (("smolmac", "smolmac"), ("mlx.core", "mlx")):
    try:
        out[name] = getattr(__import__(mod, fromlist=["_"]), "__version__", "?")
    except Exception as e:
        out[name + "_error"] = f"{type(e).__name__}: {e}"
paths, repos = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out["paths"] = {p: os.path.exists(os.path.expanduser(p)) for p in paths}
try:
    from huggingface_hub import try_to_load_from_cache
    out["repos"] = {r: isinstance(try_to_load_from_cache(r, "config.json"), str) for r in repos}
except Exception:
    out["repos"] = {r: False for r in repos}
print("SMOLMAC-PROBE " + json.dumps(out))
"""


def recipe_inputs(cfg) -> tuple[dict, list[str], list[str]]:
    """What every host must see: ({recipe key: local path}, [Hub model ids], [notes])."""
    from smolmac.data import is_local
    from smolmac.quickstart import resolve

    paths, repos, notes = {}, [], []
    if isinstance(cfg.model, str):
        if is_local(cfg.model) or Path(cfg.model).expanduser().exists():
            paths["model"] = cfg.model
        else:
            repos.append(cfg.model)
    for key in ("data.train", "data.valid", "tokenizer.path", "tokenizer.data", "eval.exact_match", "eval.preference"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not isinstance(value, str) or not value:
            continue
        value = resolve(value)
        if is_local(value):
            paths[key] = value
        elif key != "tokenizer.path":
            notes.append(f"{key} '{value}' is a Hub dataset: every host loads it from the Hub (or its own cache)")
    return paths, repos, notes


def _probe(host: str, paths: list[str], repos: list[str], timeout: float = 120) -> dict:
    """Run PROBE on `host` (ssh unless it is 127.0.0.1, as mlx.launch does) from this directory."""
    args = [json.dumps(paths), json.dumps(repos)]
    if host == LOCAL:
        cmd = [sys.executable, "-c", PROBE, *args]
    else:
        remote = f"cd {shlex.quote(os.getcwd())} 2>/dev/null; {shlex.quote(sys.executable)} -c {shlex.quote(PROBE)} {' '.join(map(shlex.quote, args))}"
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", host, remote]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return {"error": "ssh is not installed here; install OpenSSH (macOS has it: enable Remote Login)"}
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s"}
    for line in r.stdout.splitlines():
        if line.startswith("SMOLMAC-PROBE "):
            return json.loads(line[len("SMOLMAC-PROBE "):])
    last = (r.stderr.strip().splitlines() or ["no output"])[-1]
    if r.returncode == 255 and host != LOCAL:  # ssh itself failed
        return {"error": f"cannot ssh into it ({last}); set up key-based ssh (ssh-copy-id {host}) and check the name"}
    return {"error": f"{sys.executable} did not run there ({last}); install the same Python environment at the same path"}


def launch_check(hostfile: str, recipe=None, backend: str | None = None, on_message=print) -> int:
    """Check that every host of `hostfile` can run `recipe` data-parallel; prints one line per
    host and one per problem with what to fix. Returns the number of problems.

    Checks: the hostfile (ips for ring, rdma for jaccl, mpirun for mpi), that the first host is
    this machine, that each host answers (ssh), runs the same Python, smolmac and mlx versions as
    here, and sees the recipe's model and data paths (from the same working directory).
    """
    import mlx.core as mx

    from smolmac._version import __version__
    from smolmac.config import load_recipe

    hosts, named = read_hostfile(hostfile)
    backend = backend or named or "ring"
    problems: list[str] = []
    if backend not in BACKENDS:
        problems.append(f"backend '{backend}' is not one of {', '.join(BACKENDS)}: set \"backend\" in {hostfile} or pass --backend")
    if hosts[0]["ssh"] not in _local_names():
        problems.append(f"the first host ({hosts[0]['ssh']}) is process 0, which writes the run dir: list this machine first, or run smolmac on {hosts[0]['ssh']}")
    for i, h in enumerate(hosts):
        if backend == "ring" and not h["ips"]:
            problems.append(f"hosts[{i}] ({h['ssh']}) has no \"ips\": the ring backend needs the address the others reach it at (its Thunderbolt bridge IP)")
        if backend == "jaccl" and (len(h["rdma"]) != len(hosts) or h["rdma"][i] is not None):
            problems.append(f"hosts[{i}] ({h['ssh']}) needs \"rdma\": a list of {len(hosts)} RDMA devices, null at its own position (mlx.distributed_config writes it)")
    if backend == "mpi" and not shutil.which("mpirun"):
        problems.append("the mpi backend needs mpirun on this machine (brew install open-mpi), or use the ring backend")
    cfg = load_recipe(recipe) if recipe else None
    paths, repos, notes = recipe_inputs(cfg) if cfg else ({}, [], [])
    if cfg is not None and cfg.stages:
        problems.append("the recipe is a pipeline (stages:), which runs in one process: train its stages one by one with --hostfile")
    if cfg is not None and cfg.train.batch_size == "auto":
        problems.append("train.batch_size: auto chooses for one process: give it a number to train data-parallel")
    elif cfg is not None and cfg.train.batch_size % len(hosts):
        problems.append(f"train.batch_size {cfg.train.batch_size} cannot be split over {len(hosts)} processes: use a multiple of {len(hosts)}")
    want = {"smolmac": __version__, "mlx": mx.__version__, "python": ".".join(map(str, sys.version_info[:2]))}
    answers: dict[str, dict] = {}
    for i, h in enumerate(hosts):
        name = h["ssh"]
        if name not in answers:
            answers[name] = _probe(name, list(paths.values()), repos)
        a = answers[name]
        label = f"host {i} {name}" + (" (process 0)" if i == 0 else "")
        if "error" in a:
            problems.append(f"{label}: {a['error']}")
            on_message(f"{label}: unreachable")
            continue
        versions = f"Python {a['python']}, smolmac {a.get('smolmac', '-')}, mlx {a.get('mlx', '-')}"
        missing = [k for k, p in paths.items() if not a["paths"].get(p)]
        uncached = [r for r in repos if not a["repos"].get(r)]
        on_message(f"{label}: {versions}; {len(paths) - len(missing)}/{len(paths)} paths found" + (f", {len(repos) - len(uncached)}/{len(repos)} Hub models cached" if repos else ""))
        for mod in ("smolmac", "mlx"):
            if f"{mod}_error" in a:
                problems.append(f"{label}: cannot import {mod} ({a[mod + '_error']}): pip install {mod}=={want[mod]} in {sys.executable}'s environment there")
            elif a.get(mod) != want[mod]:
                problems.append(f"{label}: {mod} {a.get(mod)} differs from {want[mod]} here: pip install {mod}=={want[mod]} there")
        if not a["python"].startswith(want["python"] + "."):
            problems.append(f"{label}: Python {a['python']} differs from {want['python']} here: use the same Python there")
        for key in missing:
            problems.append(f"{label}: {key} '{paths[key]}' is not there (looked from {a['cwd']}): copy it to the same path")
        for repo in uncached:
            problems.append(f"{label}: model {repo} is not in its Hugging Face cache: run `hf download {repo}` there (or it downloads at start)")
    for note in notes:
        on_message(f"note: {note}")
    for p in problems:
        on_message(f"fix: {p}")
    if not problems:
        on_message(f"all {len(hosts)} hosts are ready: smolmac train {recipe or 'RECIPE'} --hostfile {hostfile}" + (f" --backend {backend}" if backend != (named or "ring") else ""))
    return len(problems)

