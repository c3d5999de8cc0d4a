"""Data parallel on MLX's own engine: the process group, sharding, collective reductions and
rank-0-only I/O. Processes are started by `mlx.launch` (smolmac/hosts.py does that):

    smolmac train RECIPE --nproc 2                        # 2 local processes, ring backend
    smolmac train RECIPE --hostfile hosts.json            # one process per host (mlx.launch's format)

Every process runs the same recipe on the same data in the same seeded order; at each step
process r takes its contiguous slice of the rows of every micro-batch (batches.py `shard`), so
N processes x batch_size/N rows see exactly what 1 process x batch_size sees. Gradients are
summed as `weight * grad` (weight = tokens or pairs) and divided by the group's total weight:
the group-wide token-weighted mean, the same number a single process computes.

Process 0 writes everything (events, checkpoints, adapter, run dir); the others work in a
scratch dir of their own. Every collective starts with `Group.sync`, a tiny all-sum of
(failed, stop) flags: a process whose work raised takes part in the next sync with its message,
so process 0 writes one `error` event naming it and the whole group stops; a process that dies
closes its sockets, and the others' next collective raises `GroupError` at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from smolmac.errors import UserError

ENV = "SMOLMAC_DISTRIBUTED"  # set by smolmac/hosts.py for the processes it launches: the backend
MESSAGE_BYTES = 1024  # room for one failure message per process in a sync


class GroupError(UserError):
    """The group cannot go on: a process failed (its message says which) or was lost."""


def is_worker() -> bool:
    """Whether this process was started by `smolmac train --nproc/--hostfile` (mlx.launch)."""
    return bool(os.environ.get(ENV))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, UserError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Group:
    """This process's place in the group, and the collectives smolmac uses.

    With one process (`Group()`) every method is the identity, so code paths are shared.

    Args:
        group: an `mx.distributed.Group`, or None for a single process.
    """

    def __init__(self, group=None):
        self.group = group
        self.rank = group.rank() if group is not None else 0
        self.size = group.size() if group is not None else 1
        self.hostnames = [socket.gethostname()]
        self.failed = False

    @property
    def main(self) -> bool:
        """Process 0: the only one that writes the run dir."""
        return self.rank == 0

    @property
    def hosts(self) -> int:
        return len(set(self.hostnames))

    # -- the sync every collective starts with ---------------------------------------------

    def eval(self, *arrays):
        """`mx.eval` of arrays holding collectives; a lost peer raises `GroupError`."""
        try:
            mx.eval(*arrays)
        except RuntimeError as e:  # the backend lost a peer: it died or its host went away
            self.failed = True
            raise GroupError(f"the group of {self.size} processes lost one of them ({e}); the checkpoints already written are kept.") from None
        return arrays[0] if len(arrays) == 1 else arrays

    def _sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group, stream=mx.cpu)

    def sync(self, failure: BaseException | None = None, stop: bool = False) -> bool:
        """Agree on failures and stop requests; returns whether any process asked to stop.

        Raises `GroupError` on every process, naming the failed ones, when any process passes a
        `failure` (their messages are all-gathered, so process 0 can write them).
        """
        if self.size == 1:
            if failure is not None:
                raise failure
            return stop
        flags = self.eval(self._sum(mx.array([float(failure is not None), float(stop)])))
        if flags[0].item() > 0:
            self.failed = True
            text = f"{socket.gethostname()}: {_describe(failure)}" if failure is not None else ""
            buf = np.zeros((1, MESSAGE_BYTES), np.uint8)
            raw = text.encode("utf-8", "replace")[:MESSAGE_BYTES]
            buf[0, : len(raw)] = np.frombuffer(raw, np.uint8)
            everyone = np.array(self.eval(mx.distributed.all_gather(mx.array(buf), group=self.group, stream=mx.cpu)))
            failed = [(r, bytes(row).rstrip(b"\0").decode("utf-8", "replace")) for r, row in enumerate(everyone) if row.any()]
            detail = "; ".join(f"process {r} ({msg.split(': ', 1)[0]}) failed: {msg.split(': ', 1)[-1]}" for r, msg in failed)
            raise GroupError(f"{detail} (the group of {self.size} stopped; checkpoints already written are kept)")
        return flags[1].item() > 0

    def fail(self, exc: BaseException):
        """Report this process's failure to the others (through their next sync), once."""
        if self.size == 1 or self.failed or isinstance(exc, GroupError):
            return
        try:
            self.sync(failure=exc)
        except GroupError:
            pass

    # -- broadcasting from process 0 -------------------------------------------------------

    def broadcast_json(self, obj=None):
        """Process 0's JSON-able `obj` on every process."""
        if self.size == 1:
            return obj
        self.sync()
        data = json.dumps(obj).encode() if self.main else b""
        n = int(self.eval(self._sum(mx.array([len(data)], dtype=mx.int32))).item())
        buf = np.frombuffer(data, np.uint8) if self.main else np.zeros(n, np.uint8)
        return json.loads(bytes(np.array(self.eval(self._sum(mx.array(buf))))).decode())

    def broadcast_arrays(self, arrays: dict[str, mx.array] | None) -> dict[str, mx.array]:
        """Process 0's named arrays on every process (bit-exact: the others add zeros), one
        all-sum per dtype over the concatenated arrays."""
        if self.size == 1:
            return arrays
        meta = self.broadcast_json([(k, list(v.shape), str(v.dtype).split(".")[-1]) for k, v in arrays.items()] if self.main else None)
        out: dict[str, mx.array] = {}
        for dtype in sorted({d for _, _, d in meta}):
            items = [(k, shape) for k, shape, d in meta if d == dtype]
            dt = getattr(mx, dtype)
            if self.main:
                flat = mx.concatenate([arrays[k].reshape(-1) for k, _ in items])
            else:
                flat = mx.zeros((sum(int(np.prod(s)) for _, s in items),), dtype=dt)
            flat = self.eval(self._sum(flat))
            offsets = np.cumsum([0] + [int(np.prod(s)) for _, s in items])
            for (k, shape), lo, hi in zip(items, offsets[:-1], offsets[1:]):
                out[k] = flat[int(lo) : int(hi)].reshape(shape)
        mx.eval(out)
        return out

    def sum_numpy(self, x: np.ndarray) -> np.ndarray:
        """Elementwise sum over the group (gathers disjoint parts that are zero elsewhere)."""
        if self.size == 1:
            return x
        self.sync()
        return np.array(self.eval(self._sum(mx.array(x))))

    def gather_strings(self, text: str) -> list[str]:
        """Every process's `text` (up to MESSAGE_BYTES), in rank order."""
        if self.size == 1:
            return [text]
        self.sync()
        buf = np.zeros((1, MESSAGE_BYTES), np.uint8)
        raw = text.encode()[:MESSAGE_BYTES]
        buf[0, : len(raw)] = np.frombuffer(raw, np.uint8)
        rows = np.array(self.eval(mx.distributed.all_gather(mx.array(buf), group=self.group, stream=mx.cpu)))
        return [bytes(r).rstrip(b"\0").decode() for r in rows]

    # -- the training step -----------------------------------------------------------------

    def settle(self, local, stop) -> bool:
        """Evaluate this process's part of a step (`local`: its micro-batches' gradients, losses,
        weights, metrics), then sync: a failure anywhere raises `GroupError` everywhere.
        Returns the group's stop flag (`stop` set on any process)."""
        failure = None
        try:
            mx.eval(local)
        except Exception as e:
            failure = e
        return self.sync(failure=failure, stop=stop is not None and stop.is_set())

    def pool(self, tokens: int, losses: list, weights: list, metrics: list) -> tuple[int, list, list, list]:
        """Group-wide step numbers from this process's micro-batches.

        Args:
            losses: per micro-batch `loss * weight` (scalars); weights: per micro-batch weight;
                metrics: per micro-batch dicts of weight-averaged metrics (means over pairs).
        Returns:
            (tokens, losses, weights, metrics) summed over the group, metrics re-averaged with
            the group's weights, as the single-process loop would have computed them.
        """
        if self.size == 1:
            return tokens, losses, weights, metrics
        k = len(losses)
        names = sorted(metrics[0]) if metrics else []
        parts = [mx.array([float(tokens)]), mx.stack(losses).reshape(-1), mx.stack(weights).reshape(-1)]
        parts += [mx.stack([m[n] * w for m, w in zip(metrics, weights)]).reshape(-1) for n in names]
        total = np.array(self.eval(self._sum(mx.concatenate(parts).astype(mx.float32))))
        w = total[1 + k : 1 + 2 * k]
        pooled = [{n: mx.array(float(total[1 + (2 + j) * k + i]) / max(float(w[i]), 1e-12)) for j, n in enumerate(names)} for i in range(k)]
        return int(round(float(total[0]))), [mx.array(float(x)) for x in total[1 : 1 + k]], [mx.array(float(x)) for x in w], pooled

    def sum_gradients(self, grads):
        """All-reduce (sum) a gradient tree; inside the compiled step. MLX's
        `nn.average_gradients` does the bucketing (one all-sum per 32 MiB); times N undoes
        its mean (N is a power of two in practice, where that is exact)."""
        if self.size == 1:
            return grads
        return tree_map(lambda g: g * self.size, nn.average_gradients(grads, group=self.group))

    def agree(self, flag: bool) -> bool:
        """True on every process when it is True on any (e.g. a stop decided by process 0)."""
        return self.sync(stop=flag) if self.size > 1 else flag

    # -- setup -----------------------------------------------------------------------------

    def share_state(self, model, optimizer, position: dict | None) -> dict | None:
        """Process 0's trainable weights on every process, and, when it resumed from a
        checkpoint, its optimizer state and data position (in global micro-batches, so a
        checkpoint written by any number of processes resumes on any other)."""
        if self.size == 1:
            return position
        position = self.broadcast_json(position if self.main else None)
        weights = self.broadcast_arrays(dict(tree_flatten(model.trainable_parameters())) if self.main else None)
        if not self.main:
            model.load_weights(list(weights.items()), strict=False)
        if position is not None:
            state = self.broadcast_arrays(dict(tree_flatten(optimizer.state)) if self.main else None)
            if not self.main:
                optimizer.state = tree_unflatten(list(state.items()))
        mx.eval(model.parameters(), optimizer.state)
        return position

    def check_same(self, model, batches, model_config: dict):
        """Refuse to train when a process reads other data or another model than process 0:
        compares a hash of the tokenised training data and the logits of a fixed input."""
        if self.size == 1:
            return
        self.hostnames = self.gather_strings(socket.gethostname())
        mine = json.dumps({"data": batches.fingerprint(), "config": hashlib.sha1(json.dumps(model_config, sort_keys=True, default=str).encode()).hexdigest()})
        everyone = self.gather_strings(mine)
        for r, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                what = "training data (after tokenisation)" if json.loads(theirs)["data"] != json.loads(everyone[0])["data"] else "model configuration"
                raise GroupError(f"process {r} on {self.hostnames[r]} reads different {what} than process 0 on {self.hostnames[0]}; give every host the same files and tokenizer (smolmac launch-check --hostfile HOSTS RECIPE shows what each host sees).")
        was_training = model.training
        model.eval()
        probe = model(mx.arange(8, dtype=mx.int32)[None] % max(model_config.get("vocab_size", 8), 1))
        model.train(was_training)
        mine = np.array(probe[0, :, :16].astype(mx.float32)).reshape(1, -1)
        self.sync()
        everyone = np.array(self.eval(mx.distributed.all_gather(mx.array(mine), group=self.group, stream=mx.cpu)))
        for r in range(self.size):
            if not np.allclose(everyone[r], everyone[0], rtol=1e-3, atol=1e-3):
                raise GroupError(f"process {r} on {self.hostnames[r]} loads a different model than process 0 on {self.hostnames[0]} (its logits differ); give every host the same model files (smolmac launch-check --hostfile HOSTS RECIPE).")


SINGLE = Group()
_current = SINGLE


def current() -> Group:
    """The group of this process (a single-process group unless started by mlx.launch)."""
    return _current


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a micro-batch of n rows that process `rank` of `size` takes:
    contiguous, sizes differing by at most one (the last micro-batch of an epoch may be short)."""
    return n * rank // size, n * (rank + 1) // size


# ---------------------------------------------------------------------------------------------
# A process of the group (started by mlx.launch through smolmac/hosts.py)


def join() -> Group:
    """Join the group mlx.launch started (backend from the launcher's environment)."""
    global _current
    backend = os.environ.get(ENV, "ring")
    try:
        _current = Group(mx.distributed.init(strict=True, backend=backend))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--nproc/--hostfile: this process could not join the {backend} group ({e}); start it with smolmac train --nproc N or --hostfile HOSTS, not by hand.") from None
    return _current


def run_worker(resolve, run, stop) -> int:
    """One process of a group: join, take process 0's recipe and run dir, train, clean up.

    Args:
        resolve: `() -> (cfg, run_dir, resume)`, called on process 0 only (the others may not
            even have the recipe file).
        run: `(cfg, run_dir, resume, main) -> None`, trains (`smolmac.api.run`).
        stop: the threading.Event the signal handlers set; SIGTERM (sent by mlx.launch to the
            survivors when a process dies) also sets it, so process 0 can still write its
            error event instead of being killed mid-write.
    """
    from smolmac.config import load_recipe

    group = join()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scratch = None
    try:
        payload = None
        if group.main:
            try:
                cfg, run_dir, resume = resolve()
            except BaseException as e:
                group.fail(e)
                raise
            payload = {"config": cfg.to_dict(), "run_dir": str(run_dir), "resume": bool(resume)}
        payload = group.broadcast_json(payload)
        cfg = load_recipe(payload["config"])
        if group.main:
            run_dir = payload["run_dir"]
        else:  # a private dir for caches (tokens, a new model's init); never the run dir. Named
            # after the run dir, so what a killed process left is cleared by the next attempt.
            scratch = scratch_dir(payload["run_dir"], group.rank)
            shutil.rmtree(scratch, ignore_errors=True)
            os.makedirs(scratch)
            run_dir = scratch
        run(cfg, run_dir, payload["resume"] and group.main, group.main)
    except BaseException as e:
        group.fail(e)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def scratch_dir(run_dir: str, rank: int) -> str:
    """Where process `rank` (> 0) of a group training `run_dir` keeps its caches."""
    key = hashlib.sha1(str(run_dir).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"smolmac-{key}-process{rank}")


def gradient_bytes(model) -> int:
    """Bytes one process contributes to the all-reduce of each step: the trainable gradients."""
    return sum(v.nbytes for _, v in tree_flatten(model.trainable_parameters()))


def ring_traffic(payload: int, size: int) -> int:
    """Bytes each process sends per all-reduce of `payload` bytes on a ring (reduce-scatter +
    all-gather): 2 (N - 1) / N x payload."""
    return 0 if size <= 1 else 2 * (size - 1) * payload // size


__all__ = ["Group", "GroupError", "SINGLE", "current", "join", "run_worker", "shard_bounds", "is_worker", "scratch_dir",
           "gradient_bytes", "ring_traffic"]
