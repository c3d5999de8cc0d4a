"""The training loop: one `train()` for every method. A method supplies (a) batches and (b) a loss
function `loss_fn(model, *arrays) -> (loss, weight, metrics)`; the loop does the rest (compiled
step, AdamW + schedule, clipping, token-weighted accumulation, events, checkpoints, stop).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from smolmac import events as ev
from smolmac.distributed import SINGLE
from smolmac.errors import UserError


def build_schedule(tcfg, total_steps: int):
    """Linear warmup from 0, then cosine/linear decay to lr * min_lr_ratio, or constant."""
    lr, warmup = tcfg.lr, min(tcfg.warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = lr * tcfg.min_lr_ratio
    if tcfg.schedule == "cosine":
        main = optim.cosine_decay(lr, decay_steps, end)
    elif tcfg.schedule == "linear":
        main = optim.linear_schedule(lr, end, decay_steps)
    else:
        main = lambda step: mx.array(lr, dtype=mx.float32)  # noqa: E731
    if warmup == 0:
        return main
    return optim.join_schedules([optim.linear_schedule(0.0, lr, warmup), main], [warmup])


def _no_decay(path: str, _weight) -> bool:
    return path.endswith("bias") or "norm" in path or "embed" in path or path.endswith(".m")


def build_optimizer(model: nn.Module, tcfg, total_steps: int) -> optim.Optimizer:
    """AdamW; no weight decay on norms, biases, embeddings and DoRA magnitudes."""
    schedule = build_schedule(tcfg, total_steps)
    betas = list(tcfg.betas)
    if tcfg.weight_decay == 0:
        return optim.AdamW(learning_rate=schedule, betas=betas, weight_decay=0.0)
    decayed = optim.AdamW(learning_rate=schedule, betas=betas, weight_decay=tcfg.weight_decay)
    plain = optim.AdamW(learning_rate=schedule, betas=betas, weight_decay=0.0)
    return optim.MultiOptimizer([plain, decayed], [_no_decay])


# ---------------------------------------------------------------------------------------------
# Checkpoints: trainable weights, optimizer state, step and data position, written atomically.
# The RNG needs no saving: it is reseeded from the data position before every micro-batch.


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches consumed from the data stream
    trained_tokens: int = 0
    elapsed_s: float = 0.0
    best: float | None = None  # save.best: best value so far and its step
    best_step: int | None = None
    watch_best: float | None = None  # train.early_stopping: best value and evaluations since
    watch_bad: int = 0
    early_stopped: str | None = None  # why early stopping ended the run (not saved)

    def state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "early_stopped"}


def _fault(kind: str, step: int):
    """Test hook: `SMOLMAC_FAULT=KIND:STEP` SIGKILLs this process at that point (`step:N` after
    optimizer step N, `checkpoint-write:N` half-way through writing checkpoint N)."""
    spec = os.environ.get("SMOLMAC_FAULT")
    if spec and spec == f"{kind}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _all_finite(tree) -> bool:
    flags = [mx.all(mx.isfinite(v)) for _, v in tree_flatten(tree) if mx.issubdtype(v.dtype, mx.inexact)]
    return not flags or bool(mx.all(mx.stack(flags)).item())


def save_checkpoint(ckpt_dir: Path, model: nn.Module, optimizer: optim.Optimizer, pos: Position, keep: int = 2) -> Path:
    """Write checkpoints/step-NNNNNNN/ via a temp dir + rename; keep the newest `keep`.

    Weights that are not finite are never written (so never replace a good checkpoint), and the
    oldest checkpoints are pruned only once the new one is in place.
    """
    from smolmac.storage import writing

    final = ckpt_dir / f"step-{pos.step:07d}"
    weights = dict(tree_flatten(model.trainable_parameters()))
    if not _all_finite(weights):
        raise UserError(f"train: the weights became NaN or infinite at step {pos.step} (the loss was still finite), so no checkpoint was written; lower train.lr or set train.grad_clip (e.g. 1.0), then resume from the last checkpoint with `smolmac train --resume {ckpt_dir.parent} --set train.lr=...`.")
    if (final / "state.json").is_file():
        # This step was saved before a kill: a resumed run computes the same state (bit-exact).
        return final
    opt_state = dict(tree_flatten(optimizer.state))
    need = sum(v.nbytes for v in weights.values()) + sum(v.nbytes for v in opt_state.values()) + 4096
    tmp = ckpt_dir / f".tmp-step-{pos.step:07d}-{os.getpid()}"
    then = f"then continue with `smolmac train --resume {ckpt_dir.parent}`"
    try:
        with writing(final, need, then):
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            mx.save_safetensors(str(tmp / "weights.safetensors"), weights)
            _fault("checkpoint-write", pos.step)
            mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
            (tmp / "state.json").write_text(json.dumps(pos.state()))
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.json").is_file())


def load_checkpoint(path: Path, model: nn.Module, optimizer: optim.Optimizer) -> Position:
    """Restore weights, optimizer state and RNG from a checkpoint written by save_checkpoint."""
    model.load_weights(str(path / "weights.safetensors"), strict=False)
    state = mx.load(str(path / "optimizer.safetensors"))
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_unflatten(list(state.items()))
    mx.eval(model.parameters(), optimizer.state)
    saved = json.loads((path / "state.json").read_text())
    fields = Position.__dataclass_fields__
    return Position(**{k: v for k, v in saved.items() if k in fields and k != "early_stopped"})


# ---------------------------------------------------------------------------------------------
# Watching an eval metric: keep the best (save.best), stop when it stops improving
# (train.early_stopping). Improvement is strict and by more than min_delta, like HF's
# EarlyStoppingCallback; patience counts evaluations.


def watch_mode(metric: str, mode: str = "auto") -> str:
    """min or max for an eval metric: `auto` is min for losses and perplexities, else max."""
    if mode != "auto":
        return mode
    return "min" if any(s in metric for s in ("loss", "ppl", "perplexity")) else "max"


@dataclass
class Watch:
    """An eval-event metric to watch and its direction."""

    metric: str
    mode: str = "min"  # "min" or "max"
    min_delta: float = 0.0
    patience: int = 0

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta

    def value(self, eval_event: dict, what: str) -> float:
        v = eval_event.get(self.metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            names = sorted(k for k, x in eval_event.items() if isinstance(x, (int, float)) and not isinstance(x, bool) and k not in ("step", "time"))
            raise UserError(f"{what}: the eval events have no metric '{self.metric}'; choose one of {', '.join(names)}.")
        return float(v)


def _watch(pos: Position, evals: list, keep_best: Watch | None, save_best, early_stopping: Watch | None, on_event):
    """Update the best value (writing the best weights) and the early-stopping count."""
    e = next((x.to_dict() for x in evals if isinstance(x, ev.Eval)), None)
    if e is None:
        return
    if keep_best is not None:
        value = keep_best.value(e, "save.best")
        if math.isfinite(value) and keep_best.improved(value, pos.best):
            pos.best, pos.best_step = value, pos.step
            on_event(ev.Best(step=pos.step, metric=keep_best.metric, value=round(value, 6), path=str(save_best(pos))))
    if early_stopping is not None:
        value = early_stopping.value(e, "train.early_stopping")
        if math.isfinite(value) and early_stopping.improved(value, pos.watch_best):
            pos.watch_best, pos.watch_bad = value, 0
        else:
            pos.watch_bad += 1
        if pos.watch_bad >= early_stopping.patience:
            pos.early_stopped = (f"early stopping: {early_stopping.metric} did not improve by more than {early_stopping.min_delta:g} "
                                 f"for {pos.watch_bad} evaluations (best {pos.watch_best:.6g})")


# ---------------------------------------------------------------------------------------------
# The loop

STUCK_STEPS, STUCK_BAND = 50, 0.1


def _memory_gb() -> float:
    return mx.get_peak_memory() / 1e9


# What MLX's allocators raise when an allocation fails: RuntimeError("[malloc] Unable to allocate
# N bytes.") (mlx/allocator.cpp), "[metal::malloc] Unable to allocate ..." on Metal. (On the CPU
# backend a failed allocation inside an evaluation ends the process instead: measured, mlx 0.32.)
OOM_MARKERS = ("Unable to allocate", "[malloc]", "[metal::malloc]")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is MLX failing to allocate memory."""
    return isinstance(error, RuntimeError) and any(m in str(error) for m in OOM_MARKERS)


class OutOfMemory(UserError):
    """MLX could not allocate memory during step `step`; the state before that step is in
    `checkpoint` (None without a `save` callback). `smolmac.runs` adds which setting to use."""

    def __init__(self, step: int, checkpoint, detail: str):
        self.step, self.checkpoint, self.detail = step, checkpoint, detail
        saved = f"the last good state is saved in {checkpoint}" if checkpoint else "nothing was saved"
        super().__init__(f"train: out of memory in step {step} ({detail}); {saved}; lower train.batch_size "
                         "(raising train.grad_accum keeps the effective batch) or set train.grad_checkpoint: true.")


def train(
    model: nn.Module,
    optimizer: optim.Optimizer,
    batches,
    loss_fn,
    *,
    total_steps: int,
    on_event,
    grad_accum: int = 1,
    grad_clip: float = 1.0,
    stop=None,
    evaluate=None,
    eval_every: int = 0,
    save=None,
    save_every: int = 0,
    report_every: int = 10,
    start: Position | None = None,
    seed: int = 0,
    keep_best: Watch | None = None,
    save_best=None,
    early_stopping: Watch | None = None,
    stuck_loss: float | None = None,
    group=SINGLE,
) -> Position:
    """Run optimizer steps until `total_steps`, `stop` is set, or early stopping ends the run.

    Args:
        batches: has `stream(start_micro)` yielding `(arrays, n_real_tokens)` forever.
        loss_fn: `(model, *arrays) -> (loss, weight, metrics)`; `loss` is a mean over `weight`.
        on_event: receives `smolmac.events.Event`s.
        stop: a `threading.Event`; checked after each step, then a checkpoint is saved.
        evaluate: `(step) -> list[Event]`, called every `eval_every` steps and at the end.
        save: `(Position) -> path`, called every `save_every` steps, on stop and at the end.
        start: where to resume (step, data position, counters).
        seed: the RNG (dropout) is reseeded from (seed, micro-batch number) before every
            micro-batch, so a resumed run draws exactly what the uninterrupted run drew.
        keep_best: the eval metric whose best value `save_best(pos) -> path` writes.
        early_stopping: the eval metric that ends the run after `patience` evaluations without
            improvement (`pos.early_stopped` then says why).
        stuck_loss: ln(vocab); a warning event when the loss stays within 0.1 of it for 50 steps.
        group: a `smolmac.distributed.Group` of N processes: each reads its shard of every
            micro-batch, gradients and reported numbers are summed over the group (token- or
            pair-weighted, equal to one process with the same global batch); `stop` on any
            process stops all of them. Only process 0 should get `evaluate` and `save`.

    A non-finite loss stops the run at once, before any evaluation or checkpoint of that step.
    """
    pos = start or Position()
    optimizer.init(model.trainable_parameters())  # no-op for state already there (resume)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state, mx.random.state]

    def clip(grads):
        return optim.clip_grad_norm(grads, grad_clip)[0] if grad_clip > 0 else grads

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*arrays):
        (loss, weight, metrics), grads = loss_and_grad(model, *arrays)
        optimizer.update(model, clip(grads))
        return loss, weight, metrics

    @partial(mx.compile, inputs=state, outputs=state)
    def accumulate(acc, live, *arrays):
        # Sum of weight * grad over micro-batches; divided by the total weight in `apply`, so
        # every token (or pair) counts the same whatever micro-batch (or process) it landed in.
        # `live` is 0 for a process whose shard of a short micro-batch is empty (it ran a
        # stand-in row), else 1.
        (loss, weight, metrics), grads = loss_and_grad(model, *arrays)
        weight = weight * live
        grads = tree_map(lambda g: g * weight, grads)
        if acc is not None:
            grads = tree_map(mx.add, grads, acc)
        return loss, weight, metrics, grads

    @partial(mx.compile, inputs=state, outputs=state)
    def apply(acc, total_weight):
        acc = group.sum_gradients(acc)  # all-reduce over the group; total_weight is the group's
        optimizer.update(model, clip(tree_map(lambda g: g / total_weight, acc)))

    model.train()
    world = group.size
    one_step = grad_accum == 1 and world == 1
    live = (mx.array(0.0), mx.array(1.0))
    stream = batches.stream(pos.micro, (group.rank, world)) if world > 1 else batches.stream(pos.micro)
    window_loss, window_weight, window_tokens, window_time, window_metrics = 0.0, 0.0, 0, 0.0, {}
    window_steps = 0
    stuck, warned = 0, False
    shapes: set = set()  # distinct micro-batch shapes: each costs one compilation of the step
    stopped = False
    while pos.step < total_steps:
        tic = time.perf_counter()
        # The state before this step (evaluated, immutable arrays: no copy): what an
        # out-of-memory failure inside the step goes back to and saves.
        good = (model.trainable_parameters(), tree_map(lambda x: x, optimizer.state), pos.micro)
        try:
            losses, weights, metrics_list, acc = [], [], [], None
            tokens = 0
            for _ in range(grad_accum):
                arrays, ntok = next(stream)
                mx.random.seed((seed * 1_000_003 + pos.micro) * world + group.rank)
                arrays = [mx.array(a) for a in arrays]
                shapes.add(tuple(a.shape for a in arrays))
                if one_step:
                    loss, weight, metrics = step(*arrays)
                else:
                    loss, weight, metrics, acc = accumulate(acc, live[ntok > 0 or world == 1], *arrays)
                    # one micro-batch at a time: left lazy, MLX ran every micro-batch's forward
                    # pass before any backward (measured: 4 x 4 rows peaked at 2.6x one 4-row
                    # micro-batch, 0.65x of 16 rows at once), so accumulation saved little memory
                    mx.eval(acc, loss, weight, metrics)
                losses.append(loss * weight)
                weights.append(weight)
                metrics_list.append(metrics)
                tokens += ntok
                pos.micro += 1  # global micro-batches: a checkpoint resumes on any number of processes
            stopping = False
            if world > 1:  # this process's part, then the group's numbers (one process fails: all stop)
                stopping = group.settle((acc, losses, weights, metrics_list), stop)
                tokens, losses, weights, metrics_list = group.pool(tokens, losses, weights, metrics_list)
            if not one_step:
                apply(acc, sum(weights))
            (group.eval if world > 1 else mx.eval)(state, losses, weights, metrics_list)
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            model.update(good[0])
            optimizer.state = good[1]
            pos.micro = good[2]
            path = save(pos) if save else None
            if path is not None:
                on_event(ev.Checkpoint(step=pos.step, path=str(path)))
            raise OutOfMemory(pos.step + 1, path, str(e).strip().rstrip(".")) from None
        dt = time.perf_counter() - tic
        # The step's loss is read on the host every step anyway (no extra sync): check it here,
        # before anything of this step is evaluated or saved.
        w = sum(x.item() for x in weights)
        step_loss_sum = sum(x.item() for x in losses)
        step_loss = step_loss_sum / max(w, 1e-9)
        if not math.isfinite(step_loss):
            raise UserError(f"train: the loss became {step_loss} at step {pos.step + 1}, so the run stopped before evaluating or saving that step (every checkpoint on disk is from an earlier step with finite weights); lower train.lr (resume with --set train.lr=...) or raise train.warmup (start again).")
        pos.step += 1
        _fault("step", pos.step)
        pos.trained_tokens += tokens
        pos.elapsed_s += dt
        window_time += dt
        window_tokens += tokens
        window_steps += 1
        window_loss += step_loss_sum
        window_weight += w
        for m in metrics_list:
            for k, v in m.items():
                window_metrics[k] = window_metrics.get(k, 0.0) + v.item() / (grad_accum)
        if stuck_loss is not None and not warned:
            stuck = stuck + 1 if abs(step_loss - stuck_loss) <= STUCK_BAND else 0
            if stuck >= STUCK_STEPS:
                warned = True
                on_event(ev.Warning(step=pos.step, message=f"the loss has stayed at ln(vocab) = {stuck_loss:.2f} (±{STUCK_BAND}) for {STUCK_STEPS} steps: the model still guesses uniformly; raise train.lr or train.steps, or check that the data has trained tokens.", kind="stuck_loss"))
        done = pos.step >= total_steps
        if world == 1:  # one process: the flag as it is now (a group agreed on it in settle)
            stopping = stop is not None and stop.is_set()
        if pos.step % report_every == 0 or done or pos.step == 1 or stopping:
            loss_value = window_loss / max(window_weight, 1e-9)
            lr = optimizer.learning_rate if not isinstance(optimizer, optim.MultiOptimizer) else optimizer.optimizers[0].learning_rate
            per_step = pos.elapsed_s / max(pos.step - (start.step if start else 0), 1)
            on_event(ev.Train(
                step=pos.step, loss=round(loss_value, 6), lr=float(lr.item() if hasattr(lr, "item") else lr),
                tokens_per_second=round(window_tokens / max(window_time, 1e-9), 1),
                trained_tokens=pos.trained_tokens, peak_memory_gb=round(_memory_gb(), 4),
                elapsed_s=round(pos.elapsed_s, 2), eta_s=round(per_step * (total_steps - pos.step), 1),
                extra={**{k: round(v / window_steps, 6) for k, v in window_metrics.items()}, "world_size": world,
                       "batch_shapes": len(shapes)},
            ))
            window_loss, window_weight, window_tokens, window_time, window_metrics, window_steps = 0.0, 0.0, 0, 0.0, {}, 0
        if world == 1:  # (the report may have asked for it)
            stopping = stop is not None and stop.is_set()
        stopped = stopping and not done

        if (eval_every and pos.step % eval_every == 0) or done:
            evals = evaluate(pos.step) if evaluate else []
            for e in evals:
                on_event(e)
            _watch(pos, evals, keep_best, save_best, early_stopping, on_event)  # process 0 evaluates
            model.train()
            stopped = group.agree(stopped)  # a decision taken after process 0's evaluation
            if early_stopping is not None and group.agree(pos.early_stopped is not None) and pos.early_stopped is None:
                pos.early_stopped = "early stopping (decided by process 0)"
        finished = done or pos.early_stopped is not None
        if save and (finished or stopped or (save_every and pos.step % save_every == 0)):
            on_event(ev.Checkpoint(step=pos.step, path=str(save(pos))))
        if stopped or pos.early_stopped:
            break
    return pos


def seed_everything(seed: int):
    mx.random.seed(seed)
    np.random.seed(seed)


@dataclass
class Task:
    """What a method gives the loop: batches, a loss, and what to report.

    `evaluate_extra(model) -> dict` may add method-specific eval metrics (e.g. exact match).
    `perplexity`: the loss is a per-token cross-entropy, so exp(val loss) is a perplexity
    (False for preference losses).
    """

    train: object
    valid: object | None
    loss_fn: object
    train_rows: int
    valid_rows: int
    truncated: int = 0
    notes: dict | None = None
    evaluate_extra: object | None = None
    perplexity: bool = True
