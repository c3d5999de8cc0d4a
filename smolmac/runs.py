"""Runs: a recipe becomes a run directory (a contract the TUI and other tools rely on):

    DIR/config.yaml      the resolved recipe
    DIR/events.jsonl     one JSON event per line (see smolmac/events.py)
    DIR/checkpoints/     step-NNNNNNN/ with full training state (atomic)
    DIR/adapter/         LoRA/DoRA in mlx-lm's layout   (or DIR/model/ for full fine-tuning)
    DIR/adapter-best/    with save.best: the weights of the best evaluation (or DIR/model-best/)
    DIR/lock             held (flock) by the process training the run; it holds that PID

A run dir is trained by one process at a time (smolmac/storage.py `run_lock`); outputs are
written to temporary names and renamed into place.

One stage only: pipelines (smolmac/pipeline.py) run each of their stages through
`run_training`, and `smolmac.api.train` chooses between the two.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from smolmac import events as ev
from smolmac import storage, trackers
from smolmac.config import Config, load_recipe, recipe_diff
from smolmac.errors import UserError


@dataclass
class Run:
    """A finished (or stopped) run: where it is and what it reported."""

    dir: Path
    config: Config
    events: list = field(default_factory=list)
    adapter_path: Path | None = None
    model_path: Path | None = None
    stopped: bool = False
    early_stopped: str | None = None  # why early stopping ended it (a finished run)
    best_path: Path | None = None  # adapter-best/ or model-best/ (save.best)

    def last(self, type_: str) -> dict | None:
        return next((e for e in reversed(self.events) if e["type"] == type_), None)


def read_config(run_dir: str | Path, overrides=None) -> Config:
    """The resolved recipe a run dir was started with (its config.yaml), validated."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume: {run_dir} has no config.yaml; it is not a run directory.")
    return load_recipe(yaml.safe_load(path.read_text()), overrides)


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    """`runs/<name>-<timestamp>`, created here (mkdir is atomic: two runs started in the same
    second get two folders). The name must be one plain folder name."""
    name = storage.component(cfg.name or cfg.method, "name", f"{root}/")
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while True:
        try:
            with storage.writing(path):
                path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


# Keys `--set` may change on `--resume`: they change how long and how often, not what the
# checkpoints hold (model, data, method, adapter shape, optimizer).
SAFE_ON_RESUME = ("train.lr", "train.steps", "train.epochs", "train.report_every", "train.early_stopping",
                  "eval.every", "eval.batches", "save.every", "save.keep", "report_to")


def has_progress(run_dir: Path) -> bool:
    """Whether a run dir holds anything training produced: a checkpoint, an output, or a
    pipeline stage with one. A dir with only a config (and maybe a failed attempt's events) has none."""
    from smolmac.trainer import list_checkpoints

    if list_checkpoints(run_dir / "checkpoints"):
        return True
    if any((run_dir / d).is_dir() for d in ("adapter", "model", "adapter-best", "model-best")):
        return True
    if (run_dir / "tokenizer" / "tokenizer.json").is_file():
        return True
    return any(p.is_dir() and p.name.split("-")[0].isdigit() and has_progress(p) for p in run_dir.iterdir()) if run_dir.is_dir() else False


def open_run_dir(cfg: Config, run_dir: Path, resume: bool, overrides: dict | None = None) -> tuple[Config, dict]:
    """Create or reopen a run dir (one run or a pipeline); returns (recipe to run, changes).

    Resuming uses the saved recipe, with `overrides` (`--set`) applied when every changed key is
    in SAFE_ON_RESUME; `changes` is `{key: [old, new]}`. Starting in a dir whose training made
    progress, or another recipe's events, is refused (nothing a run wrote is ever overwritten);
    a dir with no progress (a run that failed or was stopped before its first checkpoint, or only
    a config) can be started again.
    Call with the run's lock held.
    """
    saved = run_dir / "config.yaml"
    then = f"then run the command again for {run_dir}"
    if resume:
        old = read_config(run_dir)
        if not overrides:
            return old, {}
        new = load_recipe(old, overrides)
        changes = dict(recipe_diff([old.to_dict(), new.to_dict()]))  # {key: [old, new]}
        for key, (was, _) in changes.items():
            if key not in SAFE_ON_RESUME:
                raise UserError(f"--set {key}: cannot be changed when resuming (this run was trained with {was!r}); only {', '.join(SAFE_ON_RESUME)} can, so start a new run (another --run-dir) to change it.")
        if changes:
            storage.atomic_write_text(saved, new.to_yaml(), then)
        return new, changes
    cfg = resolve_auto(cfg)
    same = not saved.is_file() or _read_yaml(saved) == cfg.to_dict()
    # events.jsonl is a run's record: another recipe's attempts are never mixed into it
    if saved.is_file() and (has_progress(run_dir) or (not same and (run_dir / "events.jsonl").exists())):
        raise UserError(f"--run-dir: {run_dir} already holds {'a different' if not same else 'this'} run; pass --resume to continue it or choose another --run-dir.")
    with storage.writing(run_dir, then=then):
        run_dir.mkdir(parents=True, exist_ok=True)
    storage.atomic_write_text(saved, cfg.to_yaml(), then)
    return cfg, {}


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):  # a torn config.yaml is not this recipe
        return None


def resolve_auto(cfg: Config) -> Config:
    """The recipe with `train.dtype: auto` replaced by this device's dtype (smolmac.models.
    resolve_dtype), as it is saved in the run's config.yaml: a resume, an export or a copy of the
    run on another machine uses the precision it was trained in."""
    if cfg.train.dtype != "auto":
        return cfg
    from smolmac.models import resolve_dtype

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dtype=resolve_dtype("auto")))


def data_warnings(cfg: Config, task) -> list[ev.Warning]:
    """One-line warnings about the training data as the run will see it: many rows cut by
    train.max_seq_len, rows (or pairs) that train no token, less data than one optimizer step."""
    t, train, out = cfg.train, task.train, []
    rows = task.train_rows
    if rows and task.truncated > 0.1 * rows:
        out.append(ev.Warning(0, f"{task.truncated} of {rows} training rows ({100 * task.truncated / rows:.0f}%) are longer than train.max_seq_len={t.max_seq_len} tokens and were cut; raise train.max_seq_len or shorten the rows so the model sees their ends.", "truncated"))
    untrained = getattr(train, "untrained", 0)
    if untrained:
        out.append(ev.Warning(0, f"{untrained} of {rows} training rows have no trained token within train.max_seq_len={t.max_seq_len} (their prompt fills it), so they cost time and teach nothing; raise train.max_seq_len or drop them.", "untrained_rows"))
    dropped = (task.notes or {}).get("pairs_dropped_long_prompt", 0)
    if dropped:
        out.append(ev.Warning(0, f"{dropped} preference rows were dropped because their prompt alone is longer than train.max_seq_len={t.max_seq_len}, leaving no reply to train on; raise train.max_seq_len to keep them.", "untrained_rows"))
    per_step = t.batch_size * t.grad_accum
    n = getattr(train, "sequences", rows)
    if n < per_step:
        unit = {"pretrain": "sequences of train.max_seq_len tokens", "dpo": "pairs", "orpo": "pairs"}.get(cfg.method, "packed sequences" if t.packing else "rows")
        out.append(ev.Warning(0, f"the training data has {n} {unit}, fewer than one optimizer step takes (train.batch_size x train.grad_accum = {per_step}), so every step repeats the same data; add data or lower train.batch_size.", "small_data"))
    return out


def materialize_model(cfg: Config, run_dir: Path) -> str:
    """The model directory or Hub id to load: `{new: ...}` is built (tokenizer included) first."""
    if isinstance(cfg.model, dict):
        from smolmac.methods.pretrain import build_new_model

        return str(build_new_model(cfg, run_dir))
    return cfg.model


def _memory_plan(cfg: Config, model_config: dict, seq_len: int) -> dict:
    """Predicted peak memory at the longest batch; turns on gradient checkpointing when the
    step would not fit (smolmac.memory's verdict)."""
    from smolmac.memory import verdict

    try:
        v = verdict(cfg, model_config, seq_len=seq_len)
    except KeyError:  # a config without the usual Llama-style keys: no estimate
        return {}
    plan = {"params": v.params, "memory_estimate_gb": round(v.total_gb, 3), "memory_budget_gb": round(v.budget_gb, 3)}
    if not v.fits and not cfg.train.grad_checkpoint:
        cfg.train.grad_checkpoint = True
        checkpointed = verdict(cfg, model_config, seq_len=seq_len)
        cfg.train.grad_checkpoint = False
        plan.update(auto_checkpoint=True, memory_estimate_gb=round(checkpointed.total_gb, 3))
    if v.suggestions:
        plan["memory_suggestion"] = v.advice()
    return plan


def _choose_batch(cfg: Config, model_config: dict, run_dir: Path) -> dict:
    """Resolve `train.batch_size: auto` in place (smolmac.memory.plan, at train.max_seq_len, the
    longest a row can be) and save the resolved recipe as the run's config.yaml, so a resume
    trains the same micro-batches whatever memory the resuming machine has. Returns the Start
    event's fields."""
    from smolmac import distributed
    from smolmac.memory import MARGIN, plan

    if distributed.current().size > 1:
        raise UserError("train.batch_size: auto chooses for one process; give train.batch_size a number to train data-parallel.")
    p = plan(cfg, model_config)
    if not p.fits:
        raise UserError(f"train.batch_size: auto: even 1 row per micro-batch with gradient checkpointing needs about {p.estimate_gb:.2f} GB "
                        f"(with a {MARGIN:.0%} margin), over the {p.budget_gb:.1f} GB budget; lower train.max_seq_len, use a 4-bit (QLoRA) base, or raise train.memory_budget_gb.")
    t = cfg.train
    t.batch_size, t.grad_accum, t.grad_checkpoint, t.effective_batch = p.batch_size, p.grad_accum, p.grad_checkpoint, None
    saved = run_dir / "config.yaml"
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(cfg.to_yaml())
    tmp.replace(saved)
    return {"batch_plan": p.sentence(), "predicted_tokens_per_second": round(p.tokens_per_second, 1)}


def out_of_memory_advice(cfg: Config, error) -> str:
    """One sentence for a step that ran out of memory: where the last good state is, and the
    smaller setting to start again with (half the micro-batch, twice the accumulation: the same
    rows per step; at 1 row, checkpointing; then shorter rows)."""
    t = cfg.train
    saved = f"the state before it is saved in {error.checkpoint}" if error.checkpoint else "nothing was lost"
    if t.batch_size > 1:
        b = t.batch_size // 2
        fix = (f"set train.batch_size: {b} and train.grad_accum: {t.grad_accum * -(-t.batch_size // b)} "
               f"(the same {t.batch_size * t.grad_accum} rows per step)")
    elif not t.grad_checkpoint:
        fix = "set train.grad_checkpoint: true"
    else:
        fix = f"lower train.max_seq_len below {t.max_seq_len} or use a 4-bit (QLoRA) base"
    return (f"train: out of memory in step {error.step} ({error.detail}); {saved}; {fix}"
            f" (or train.batch_size: auto with a smaller train.memory_budget_gb) and start a new run.")


def _per_process(cfg: Config, size: int) -> Config:
    """The recipe one process of a group of `size` trains: batch_size / size rows per step
    (what its memory has to hold)."""
    if size == 1:
        return cfg
    import copy

    one = copy.deepcopy(cfg)
    one.train.batch_size = max(1, cfg.train.batch_size // size)
    return one


def run_training(cfg: Config, run_dir: Path, resume: bool = False, on_event=None, stop: threading.Event | None = None,
                 overrides: dict | None = None) -> Run:
    """Train one stage described by `cfg` in `run_dir`. See module docstring for the layout.

    Args:
        resume: continue from the last checkpoint (from step 0 with the saved recipe when there
            is none yet).
        overrides: `--set` keys applied on resume (only SAFE_ON_RESUME ones; recorded as a
            `config` event).
    """
    from smolmac.methods import method

    run_dir = Path(run_dir)
    m = method(cfg.method)
    if not m.trains and resume and m.load().finished(run_dir) and not overrides:
        return Run(run_dir, cfg, ev.current(ev.read_events(run_dir / "events.jsonl")))  # nothing to redo
    trackers.require(cfg.report_to)  # a missing tracker package fails before anything is written
    with storage.run_lock(run_dir, create=not resume):
        # Whatever an interrupted write left is stale now that this process holds the lock.
        storage.remove_leftovers(run_dir, run_dir / "checkpoints", run_dir / "tokens")
        cfg, changes = open_run_dir(cfg, run_dir, resume, overrides)
        log_path = run_dir / "events.jsonl"
        again = log_path.is_file() and log_path.stat().st_size > 0  # an earlier attempt reported
        # report_to of the recipe the run uses (the saved one on resume); in a data-parallel group
        # only process 0 reports (the others' run dir is a scratch dir)
        from smolmac.distributed import current

        mirror = trackers.mirror(cfg, run_dir) if current().main else None
        try:
            # events.jsonl first, then the caller's callback, then the trackers (report_to)
            with ev.EventLog(log_path, trackers.compose(on_event, mirror)) as log:  # a failure becomes an error event
                if changes:
                    log(ev.ConfigChange(step=last_checkpoint_step(run_dir), changes=changes))
                if not m.trains:
                    m.load().train_stage(cfg, run_dir, log)
                    return Run(run_dir, cfg, ev.current(ev.read_events(log_path)))
                return _run(cfg, run_dir, resume, log, stop, again)
        finally:
            if mirror is not None:
                mirror.close()


def last_checkpoint_step(run_dir: Path) -> int:
    from smolmac.trainer import list_checkpoints

    ckpts = list_checkpoints(run_dir / "checkpoints")
    return int(ckpts[-1].name.split("-")[1]) if ckpts else 0


def write_output(path: Path, write, need: int, run_dir: Path) -> Path:
    """Write an output folder (adapter/, model/, adapter-best/...) under a temporary name with
    `write(tmp)`, then swap it into place: a kill or a full disk never leaves half of one."""
    tmp = storage.tmp_name(path)
    try:
        with storage.writing(path, need, f"then finish it with `smolmac train --resume {run_dir}`"):
            write(tmp)
            storage.swap_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _watches(cfg: Config, task):
    """The trainer's Watch for save.best and for train.early_stopping (None when off)."""
    from smolmac.ranges import EARLY_STOPPING_KEYS
    from smolmac.trainer import Watch, watch_mode

    keep = Watch(cfg.save.best, watch_mode(cfg.save.best, cfg.save.best_mode)) if cfg.save.best else None
    es = {**EARLY_STOPPING_KEYS, **cfg.train.early_stopping} if cfg.train.early_stopping else None
    stop = Watch(es["metric"], watch_mode(es["metric"], es["mode"]), float(es["min_delta"]), int(es["patience"])) if es else None
    for key, w in (("save.best", keep), ("train.early_stopping", stop)):
        if w is not None and task.valid is None:
            raise UserError(f"{key}: {w.metric} is measured on validation data and this run has none; set data.valid (a file, or a fraction such as 0.05).")
    return keep, stop


LM_METHODS = ("sft", "pretrain", "orpo")  # losses that start near ln(vocab)


def _run(cfg: Config, run_dir: Path, resume: bool, log, stop, again: bool = False) -> Run:
    from mlx.utils import tree_flatten

    from smolmac import distributed
    from smolmac import lora as lora_mod
    from smolmac.evaluation import evaluator, first_retain, retain_batches, retain_metrics
    from smolmac.methods import build_task, method
    from smolmac.models import count_params, is_quantized, load_model, save_model_dir
    from smolmac.trainer import (
        OutOfMemory,
        Position,
        build_optimizer,
        list_checkpoints,
        load_checkpoint,
        save_checkpoint,
        seed_everything,
    )
    from smolmac.trainer import train as train_loop

    t = cfg.train
    group = distributed.current()  # one process, or process `rank` of a data-parallel group
    if t.batch_size != "auto" and t.batch_size % group.size:
        raise UserError(f"train.batch_size: {t.batch_size} rows cannot be split evenly over {group.size} processes; use a multiple of {group.size}, e.g. {group.size * max(1, round(t.batch_size / group.size))}.")
    seed_everything(t.seed)
    from mlx_lm.utils import maybe_set_recommended_wired_limit

    maybe_set_recommended_wired_limit()  # Metal only; returns at once on CPU/CUDA
    with storage.writing(run_dir, then=f"then resume with `smolmac train --resume {run_dir}`"):
        model_ref = materialize_model(cfg, run_dir)  # a new model's tokenizer and init/ are written here
    model, tokenizer, model_config, model_path = load_model(model_ref, t.dtype, cfg.trust_remote_code)
    batch_plan = _choose_batch(cfg, model_config, run_dir) if t.batch_size == "auto" else {}
    full = cfg.full or method(cfg.method).full
    if full:
        if is_quantized(model):
            raise UserError("full: a quantised base cannot be fully fine-tuned; use LoRA (QLoRA) on it, or a 16-bit base.")
        model.unfreeze()
        adapter_config = lora_mod.adapter_config_for_full()
    else:
        adapter_config = lora_mod.apply_lora(model, cfg.lora, seed=t.seed)
    task = build_task(cfg, model, tokenizer, run_dir)
    keep_best, early = _watches(cfg, task)

    memory = _memory_plan(_per_process(cfg, group.size), model_config, getattr(task.train, "longest", t.max_seq_len))
    if t.grad_checkpoint or memory.get("auto_checkpoint"):
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])

    per_epoch = max(len(task.train) // t.grad_accum, 1)
    total_steps = t.steps or max(1, math.ceil(t.epochs * per_epoch))
    optimizer = build_optimizer(model, t, total_steps)
    optimizer.init(model.trainable_parameters())
    start = None
    checkpoints = list_checkpoints(run_dir / "checkpoints") if resume else []
    if checkpoints:
        start = load_checkpoint(checkpoints[-1], model, optimizer)
    elif resume or again:  # stopped or failed before its first checkpoint: its recipe from step 0
        task.notes = {**(task.notes or {}), "resume": "no checkpoint yet: started again from step 0"}
    if group.size > 1:  # every process starts from process 0's weights (and checkpoint), same data
        shared = group.share_state(model, optimizer, start.state() if start else None)
        start = Position(**shared) if shared else None
        group.check_same(model, task.train, model_config)
        task.notes = {**(task.notes or {}), "world_size": group.size, "hosts": group.hosts,
                      "gradient_bytes_per_step": distributed.gradient_bytes(model)}
    trainable = lora_mod.trainable_count(model)
    # resumed_from marks the steps an earlier attempt reported past it as superseded (events.current)
    resumed_from = start.step if start else (0 if (resume or again) else None)
    # eval.retain, tokenised once for every evaluation (by every process, so a bad file stops all)
    retain = retain_batches(cfg, tokenizer)
    before = {}  # the "before": the base (LoRA starts at zero), or the first start's on resume
    if retain is not None and group.main:  # process 0 alone evaluates and logs
        before = (first_retain(ev.read_events(run_dir / "events.jsonl")) if start else retain_metrics(model, retain)) or {}
    log(ev.Start(
        step=start.step if start else 0, total_steps=total_steps, method=cfg.method, model=str(model_ref),
        trainable_params=trainable, total_params=memory.get("params") or count_params(model_config),
        train_rows=task.train_rows, valid_rows=task.valid_rows, truncated_rows=task.truncated,
        resumed_from=resumed_from,
        extra={"dtype": t.dtype, **(task.notes or {}), **before, **{k: v for k, v in memory.items() if k != "params"}, **batch_plan},
    ))
    for warning in data_warnings(cfg, task):
        log(dataclasses.replace(warning, step=start.step if start else 0))

    def save(pos):
        return save_checkpoint(run_dir / "checkpoints", model, optimizer, pos, cfg.save.keep)

    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.trainable_parameters() if not full else model.parameters()))
    extra = {"model": str(model_ref), "base_model_path": str(model_path), "method": cfg.method}

    def write_weights(path: Path, more: dict | None = None) -> Path:
        if full:
            return write_output(path, lambda tmp: save_model_dir(model, tokenizer, model_config, tmp), weight_bytes, run_dir)
        return write_output(path, lambda tmp: lora_mod.save_adapter(model, adapter_config, tmp, {**extra, **(more or {})}), weight_bytes, run_dir)

    def save_best(pos):
        return write_weights(run_dir / ("model-best" if full else "adapter-best"),
                             {"best": {"step": pos.step, "metric": cfg.save.best, "value": pos.best}})

    vocab = model_config.get("vocab_size") or (model_config.get("text_config") or {}).get("vocab_size")
    try:
        pos = train_loop(
            model, optimizer, task.train, task.loss_fn, total_steps=total_steps, on_event=log,
            grad_accum=t.grad_accum, grad_clip=t.grad_clip, stop=stop,
            evaluate=evaluator(cfg, model, tokenizer, task, retain) if group.main else None, eval_every=cfg.eval.every,
            save=save if group.main else None, save_every=cfg.save.every, report_every=t.report_every, start=start,
            seed=t.seed, group=group, keep_best=keep_best, save_best=save_best, early_stopping=early,
            stuck_loss=math.log(vocab) if vocab and cfg.method in LM_METHODS else None,
        )
    except OutOfMemory as e:
        raise UserError(out_of_memory_advice(cfg, e)) from None
    stopped = pos.step < total_steps and pos.early_stopped is None
    run = Run(run_dir, cfg, stopped=stopped, early_stopped=pos.early_stopped)
    if not group.main:  # the others' weights are process 0's: it alone writes the outputs
        return run
    if not stopped:
        path = write_weights(run_dir / ("model" if full else "adapter"))
        run.model_path, run.adapter_path = (path, None) if full else (None, path)
    best_dir = run_dir / ("model-best" if full else "adapter-best")
    run.best_path = best_dir if keep_best and best_dir.is_dir() else None
    output = run.model_path or run.adapter_path or (run_dir / "checkpoints")
    done = {"reason": pos.early_stopped} if pos.early_stopped else {}
    if keep_best and pos.best_step is not None:
        done.update(best_step=pos.best_step, best_metric=keep_best.metric, best_value=round(pos.best, 6), best_output=str(best_dir))
    log(ev.Done(step=pos.step, output=str(output), stopped=stopped, elapsed_s=round(pos.elapsed_s, 2), extra=done))
    run.events = ev.current(ev.read_events(run_dir / "events.jsonl"))
    return run


def read_run(run_dir: str | Path) -> dict:
    """Summary of a run dir for listings (CLI `runs`, TUI): status, method, model, steps, loss.

    Steps that a resume redid are dropped (events.current); the last start event gives the total.
    A pipeline (a config with `stages:`) is summarised as method "pipeline" with `stages`, one
    summary per stage (its own run dir `<i>-<name>/`, or status "pending" before it starts) plus
    the stage's `metrics` (what it learned); `step`/`total_steps` count finished stages, and
    `current` names the stage that runs now (or stopped/failed), whose last loss is `loss`.
    """
    run_dir = Path(run_dir)
    raw = ev.read_events(run_dir / "events.jsonl")
    events = ev.current(raw)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    start = next((e for e in reversed(events) if e["type"] == "start"), None)
    last_train = next((e for e in reversed(events) if e["type"] == "train"), None)
    last_eval = next((e for e in reversed(events) if e["type"] == "eval"), None)
    last = next((e for e in reversed(events) if e["type"] not in ("warning", "config")), None)
    if last is None:
        status = "new"
    elif last["type"] == "done":
        status = "stopped" if last.get("stopped") else "finished"
    elif last["type"] == "error":
        status = "failed"
    else:
        status = "running"
    info = {
        "dir": str(run_dir), "status": status, "method": cfg.get("method"), "model": cfg.get("model"),
        "full": bool(cfg.get("full")), "step": (last_train or {}).get("step", 0), "total_steps": (start or {}).get("total_steps"),
        "loss": (last_train or {}).get("loss"), "val_loss": (last_eval or {}).get("val_loss"),
        "started": (raw[0]["time"] if raw else None),
        "error": last.get("message") if last and last["type"] == "error" else None,
    }
    if cfg.get("stages") or (start or {}).get("method") == "pipeline":
        own_error = info["error"]
        info.update(_read_pipeline(run_dir, cfg, events, status))
        info["error"] = own_error or info["error"]
    return info


def stage_names(stages: list) -> list[str]:
    """The names of a recipe's stages (`name`, else the method), as the pipeline names its dirs."""
    return [str(s.get("name") or s.get("method")) if isinstance(s, dict) else "?" for s in stages or []]


def _read_pipeline(run_dir: Path, cfg: dict, events: list[dict], status: str) -> dict:
    """The pipeline part of `read_run`: its stages, the current one, finished stages as steps."""
    names = stage_names(cfg.get("stages")) or next((e.get("stages") or [] for e in events if e["type"] == "start"), [])
    metrics = {e["stage"]: e for e in events if e["type"] == "metrics"}
    stages = []
    for i, name in enumerate(names, 1):
        sub = run_dir / f"{i}-{name}"
        if (sub / "events.jsonl").is_file():
            stage = read_run(sub)
        else:
            method = (cfg.get("stages")[i - 1] or {}).get("method") if cfg.get("stages") else None
            stage = {"dir": str(sub), "status": "pending", "method": method, "model": None, "step": 0, "total_steps": None,
                     "loss": None, "val_loss": None, "started": None, "error": None}
        m = metrics.get(i)
        stage.update(index=i, name=name, label=f"{i}-{name}", metrics=(m or {}).get("metrics"), elapsed_s=(m or {}).get("elapsed_s"))
        if stage["status"] == "running" and status in ("failed", "stopped", "finished"):
            stage["status"] = status  # the pipeline ended while this stage was unfinished
        stages.append(stage)
    done = sum(s["status"] == "finished" for s in stages)
    current = next((s for s in stages if s["status"] != "finished"), stages[-1] if stages else None)
    return {
        "method": "pipeline", "stages": stages, "current": current["label"] if current else None,
        "step": done, "total_steps": len(stages), "loss": (current or {}).get("loss"),
        "error": next((s["error"] for s in stages if s.get("error")), None) if status == "failed" else None,
    }
