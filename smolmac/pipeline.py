"""Pipelines: a recipe with `stages:` runs them in order, each from the previous one's output,
and reports after each stage what was learned (a table the CLI prints).

    smolmac train recipes/quickstart.yaml          # tokenizer -> pretrain -> sft -> orpo

Each stage is a partial recipe applied over the top-level keys (the shared defaults). Layout:

    DIR/config.yaml, DIR/events.jsonl      the pipeline: start, stage, metrics, done events
    DIR/<i>-<name>/                        one ordinary run dir per stage (see smolmac/runs.py)

Chaining: a tokenizer stage's `tokenizer/` becomes the next stages' `tokenizer.path`; a
pretrain or full fine-tuning stage's `model/` becomes the next `model`; a LoRA stage's adapter is
fused into `<i>-<name>/fused/` for the next stage; a pretrain stage's validation text
(`tokens/valid.jsonl`) becomes the later stages' `eval.retain` unless the recipe sets one, so the
table says how much of it each later stage kept. Resume (`--resume`) skips finished stages and
continues the unfinished one from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from smolmac import events as ev
from smolmac.config import Config, apply_mapping, validate
from smolmac.errors import UserError
from smolmac.quickstart import resolve as resolve_path
from smolmac.runs import Run, open_run_dir, read_run, run_training


@dataclass
class StageEvent(ev.Event):
    """A stage started, finished, was skipped (already finished: resume) or stopped."""

    stage: int
    name: str
    method: str
    dir: str
    status: str
    output: str | None = None
    elapsed_s: float = 0.0
    type = "stage"


@dataclass
class Metrics(ev.Event):
    """What a stage learned: `{metric: {"before": x, "after": y}}` plus a few example answers."""

    stage: int
    name: str
    method: str
    metrics: dict
    elapsed_s: float = 0.0
    examples: list = field(default_factory=list)
    type = "metrics"


# ---------------------------------------------------------------------------------------------
# The table of what each stage learned


def _fmt(key: str, value) -> str:
    if value is None:
        return "?"
    if key in ("exact_match", "preference_accuracy"):
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
    return str(value)


LABELS = {"val_ppl": "val perplexity", "exact_match": "exact match", "preference_accuracy": "preference accuracy",
          "preference_margin": "margin (nats)",
          "vocab_size": "vocab", "chars_per_token": "chars/token"}


def stage_rows(events: list[dict]) -> list[dict]:
    """One row per stage from pipeline events: stage, method, time, learned (text), kept (the
    retain perplexity before -> after, "" when the stage measured none)."""
    rows: dict[int, dict] = {}
    for e in events:
        if e["type"] not in ("stage", "metrics"):
            continue
        row = rows.setdefault(e["stage"], {"stage": f"{e['stage']}-{e['name']}", "method": e["method"], "time_s": None, "learned": "", "kept": ""})
        if e["type"] == "stage":
            if e["status"] == "finished":
                row["time_s"] = e["elapsed_s"]
        else:
            row["learned"] = ", ".join(learned_parts(e["metrics"]))
            row["kept"] = kept_text(e["metrics"])
    return [rows[k] for k in sorted(rows)]


def learned_parts(metrics: dict | None) -> list[str]:
    """What a stage learned as short phrases, e.g. ["exact match 0% -> 45%"] (most telling first)."""
    parts = []
    for key, m in (metrics or {}).items():
        label = LABELS.get(key, key.replace("_", " "))
        if key == "retain_ppl":  # what was kept, not learned: its own column (kept_text)
            continue
        if isinstance(m, dict):
            parts.append(f"{label} {_fmt(key, m.get('before'))} -> {_fmt(key, m.get('after'))}")
        else:
            parts.append(f"{label} {_fmt(key, m)}")
    return parts


def kept_text(metrics: dict | None) -> str:
    """What a stage kept of its retain set: "2.57 -> 13.8 (+437%)" (retain perplexity before ->
    after), "" when it measured none."""
    from smolmac.evaluation import retain_text

    m = (metrics or {}).get("retain_ppl")
    if isinstance(m, dict) and m.get("before") and m.get("after") is not None:
        return retain_text(m["before"], m["after"], label="", arrow="->")
    return ""


def headline(summary: dict) -> str:
    """One metric for a run or stage summary (`smolmac.runs.read_run`): the first thing a stage
    learned, else the last validation loss, else ''."""
    parts = learned_parts(summary.get("metrics"))
    if parts:
        return parts[0]
    return f"val loss {summary['val_loss']:.3f}" if summary.get("val_loss") is not None else ""


def format_stage_table(events_or_dir) -> str:
    """Plain-text table of what each stage learned, from pipeline events or a pipeline run dir."""
    events = events_or_dir if isinstance(events_or_dir, list) else ev.read_events(Path(events_or_dir) / "events.jsonl")
    rows = stage_rows(events)
    if not rows:
        return ""
    w = max(len(r["stage"]) for r in rows)
    kept = any(r["kept"] for r in rows)  # "kept": retain perplexity before -> after (eval.retain)
    lw = max(len("what was learned"), *(len(r["learned"]) for r in rows))
    lines = [f"{'stage':<{w}}  {'method':<9}  {'time':>7}  " + (f"{'what was learned':<{lw}}  kept (retain ppl)" if kept else "what was learned")]
    for r in rows:
        t = f"{r['time_s']:.0f}s" if r["time_s"] is not None else "-"
        lines.append(f"{r['stage']:<{w}}  {r['method']:<9}  {t:>7}  " + (f"{r['learned']:<{lw}}  {r['kept'] or '-'}" if kept else r["learned"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The models a run or pipeline holds (to chat with, compare and look inside)


@dataclass
class ModelRef:
    """One model of a run or pipeline: what to load (`model`, plus `adapter` on top) and how to
    prompt it (`chat`: with the chat template; False for a pretrained-only or untrained model,
    which continues plain text)."""

    label: str  # e.g. "2-pretrain", "3-sft · adapter", "base"
    model: str  # a model directory or Hub id
    adapter: str | None = None
    chat: bool = True
    stage: str | None = None  # the stage (or run) it belongs to
    kind: str = "trained"  # "init" (random), "base" (what the run started from), "trained"


def _local(path, run_dir: Path):
    """A model path recorded by a run, found inside the pipeline it belongs to, wherever the run
    was started from and wherever the pipeline was moved since: `runs/x/2-pretrain/model` written
    by a pipeline now in `<run_dir>` is `<run_dir>/2-pretrain/model`. Other paths stay as recorded."""
    if not isinstance(path, str) or not path:
        return path
    parts = Path(path).parts
    for j, part in enumerate(parts[:-1]):
        candidate = run_dir.joinpath(*parts[j:])
        if re.fullmatch(r"\d+-[^/]+", part) and (run_dir / part).is_dir() and candidate.exists():
            return str(candidate)
    return path


def _started_from(run_dir: Path, top: Path) -> str | None:
    """The model a run loaded (its start event; a `{new: ...}` model is its built `init/` dir)."""
    start = next((e for e in ev.read_events(run_dir / "events.jsonl") if e["type"] == "start"), None)
    if start and start.get("model"):
        return _local(start["model"], top)
    return str(run_dir / "init") if (run_dir / "init" / "config.json").is_file() else None


def _pretrained_only(model: str) -> bool:
    """Whether a model dir is the output of a pretraining run (no chat training yet)."""
    cfg = Path(model).parent / "config.yaml"
    try:
        return Path(model).name in ("model", "init") and (yaml.safe_load(cfg.read_text()) or {}).get("method") == "pretrain"
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def _outputs(run_dir: Path, info: dict, top: Path, label: str) -> list[ModelRef]:
    """What one run (or stage) trained: its model/, or its adapter/ (on the model it started
    from), or the fused/ model of a LoRA stage whose adapter is gone."""
    chat = info.get("method") != "pretrain"
    if (run_dir / "model" / "config.json").is_file():
        return [ModelRef(label, str(run_dir / "model"), None, chat, label)]
    base = _started_from(run_dir, top)
    if (run_dir / "adapter" / "adapter_config.json").is_file() and base:
        return [ModelRef(f"{label} · adapter", base, str(run_dir / "adapter"), chat, label)]
    if (run_dir / "fused" / "config.json").is_file():
        return [ModelRef(f"{label} · fused", str(run_dir / "fused"), None, chat, label)]
    return []


def run_models(run_dir: str | Path) -> list[ModelRef]:
    """Every model of a run or pipeline, oldest first: what it started from (a base model, or the
    untrained `{new: ...}` model), then each trained output. A pipeline lists each stage's output
    once (the next stage starts from it); a LoRA stage is its base plus its adapter."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    stages = info.get("stages") or [{**info, "dir": str(run_dir), "label": run_dir.name}]
    refs: list[ModelRef] = []
    for stage in stages:
        sub = Path(stage["dir"]) if info.get("stages") is None else run_dir / stage["label"]
        if stage.get("method") == "tokenizer" or not (sub / "events.jsonl").is_file():
            continue
        if not refs:  # the first model: what the first trained stage started from
            base = _started_from(sub, run_dir)
            if base:
                built = Path(base).name == "init" and Path(base).parent == sub
                name = "untrained" if built else "base"
                label = f"{stage['label']} · {name}" if info.get("stages") else name
                chat = not built and not _pretrained_only(base)
                refs.append(ModelRef(label, base, None, chat, stage["label"], "init" if built else "base"))
        refs += _outputs(sub, stage, run_dir, stage["label"])
    return refs


# ---------------------------------------------------------------------------------------------
# Running


def stage_config(base: dict, stage, index: int, model, tokenizer_path: str | None, retain: str | None = None) -> Config:
    """The recipe of stage `index`: top-level keys, then the stage's keys, then the chain inputs
    (model, tokenizer, and `retain`: the retain set when the recipe names none)."""
    if not isinstance(stage, dict) or "method" not in stage:
        raise UserError(f"stages[{index}]: each stage must be a mapping with at least 'method', e.g. {{method: sft, train: {{steps: 100}}}}.")
    if "stages" in stage:
        raise UserError(f"stages[{index}]: a stage cannot have its own 'stages'.")
    cfg = apply_mapping(Config(), {k: v for k, v in base.items() if k != "stages"}, "recipe")
    apply_mapping(cfg, stage, f"stages[{index}]")
    if "model" not in stage and model is not None:
        cfg.model = model
    if tokenizer_path and "path" not in (stage.get("tokenizer") or {}):
        cfg.tokenizer.path = tokenizer_path
    if retain and cfg.eval.retain is None:
        cfg.eval.retain = retain
    for section, key in (("data", "train"), ("data", "valid"), ("tokenizer", "data"), ("eval", "exact_match"), ("eval", "preference"), ("eval", "retain")):
        obj = getattr(cfg, section)
        setattr(obj, key, resolve_path(getattr(obj, key)))
    cfg.stages = []
    validate(cfg, f"stages[{index}]")
    return cfg


def _finished(sub: Path) -> dict | None:
    events = ev.read_events(sub / "events.jsonl")
    last = events[-1] if events else None
    if last and last["type"] == "done" and not last.get("stopped") and Path(last["output"]).exists():
        return last
    return None


def _prepare_resume(sub: Path) -> bool:
    """Resume a stage from its checkpoint; a stage that failed before any is started afresh
    (its log kept as events.failed-N.jsonl; caches such as tokens/ and init/ are reused)."""
    from smolmac.trainer import list_checkpoints

    if list_checkpoints(sub / "checkpoints"):
        return True
    log = sub / "events.jsonl"
    if log.exists():
        n = len(list(sub.glob("events.failed-*.jsonl"))) + 1
        log.rename(sub / f"events.failed-{n}.jsonl")
    (sub / "config.yaml").unlink(missing_ok=True)
    return False


def fuse_stage(sub: Path) -> Path:
    """A LoRA stage's adapter fused into its base as `<stage>/fused/` (an HF model directory),
    written by the hf exporter: the one fuse of smolmac, which dequantises a quantised base."""
    from smolmac.export import export_run

    out = sub / "fused"
    if not (out / "config.json").is_file():
        export_run(sub, "hf", out, overwrite=True)
    return out


def _before_after(before: dict, after: dict) -> dict:
    return {k: {"before": _round(before.get(k)), "after": _round(after.get(k))} for k in after}


def _round(x):
    return round(x, 4) if isinstance(x, float) else x


def run_pipeline(cfg: Config, run_dir: Path, resume: bool = False, on_event=None, stop=None):
    """Run `cfg.stages` in order in sub-run dirs of `run_dir` (see module docstring).

    Args:
        resume: skip finished stages, continue the unfinished one from its checkpoint.
        on_event: receives the pipeline's events and every stage's events, the latter with
            `stage` (1-based index) and `stage_name` added.
        stop: a threading.Event; the running stage checkpoints and the pipeline stops.
    """
    run_dir = Path(run_dir)
    cfg = open_run_dir(cfg, run_dir, resume)
    previous = ev.read_events(run_dir / "events.jsonl")
    known = {(e["stage"], e["name"]): e for e in previous if e["type"] == "metrics"}
    base = cfg.to_dict()
    with ev.EventLog(run_dir / "events.jsonl", on_event) as log:  # failures become error events
        tic = time.perf_counter()
        log(ev.Start(step=0, total_steps=len(cfg.stages), method="pipeline", model=json.dumps(cfg.model) if isinstance(cfg.model, dict) else str(cfg.model),
                     trainable_params=0, total_params=0, train_rows=0, valid_rows=0, resumed_from=0 if resume else None,
                     extra={"stages": [s.get("name") or s.get("method") if isinstance(s, dict) else None for s in cfg.stages]}))
        for i, stage in enumerate(cfg.stages, 1):  # every stage's keys checked before anything trains
            stage_config(base, stage, i, cfg.model if cfg.model is not None else "<previous stage>", None)
        model, tokenizer_path, adapter, cache, retain = cfg.model, None, None, {}, None
        run = Run(run_dir, cfg)
        for i, stage in enumerate(cfg.stages, 1):
            scfg = stage_config(base, stage, i, model, tokenizer_path, retain)
            name = stage.get("name") or scfg.method
            sub = run_dir / f"{i}-{name}"
            done = _finished(sub)
            if done is None:
                if stop is not None and stop.is_set():
                    return _stopped(run, log, i, name, scfg, sub, tic)
                before = _metrics_before(scfg, model, cache, i, name, known)
                log(StageEvent(step=0, stage=i, name=name, method=scfg.method, dir=str(sub), status="started"))
                t0 = time.perf_counter()

                def forward(e, i=i, name=name):
                    if on_event:
                        on_event({**e, "stage": i, "stage_name": name})

                resume_stage = sub.exists() and _prepare_resume(sub)
                result = run_training(scfg, sub, resume=resume_stage, on_event=forward, stop=stop)
                if result.stopped:
                    return _stopped(run, log, i, name, scfg, sub, tic)
                elapsed = round(time.perf_counter() - t0, 2)
                done = _finished(sub)
                model, tokenizer_path, adapter = _next_inputs(scfg, sub, done, model, tokenizer_path)
                after, examples = _metrics_after(scfg, sub, model, adapter, cache)
                log(Metrics(step=0, stage=i, name=name, method=scfg.method, metrics=_combine(scfg, sub, before, after), elapsed_s=elapsed, examples=examples))
                log(StageEvent(step=0, stage=i, name=name, method=scfg.method, dir=str(sub), status="finished", output=done["output"], elapsed_s=elapsed))
            else:
                model, tokenizer_path, adapter = _next_inputs(scfg, sub, done, model, tokenizer_path)
                if (i, name) in known:
                    cache[str(model)] = {k: v["after"] for k, v in known[(i, name)]["metrics"].items() if isinstance(v, dict)}
                log(StageEvent(step=0, stage=i, name=name, method=scfg.method, dir=str(sub), status="skipped", output=done["output"]))
            if scfg.method == "pretrain" and (sub / "tokens" / "valid.jsonl").is_file():
                retain = str(sub / "tokens" / "valid.jsonl")  # its validation text: what later stages should keep
        run.model_path = Path(model) if isinstance(model, str) and adapter is None else None
        run.adapter_path = Path(adapter) if adapter else None
        log(ev.Done(step=len(cfg.stages), output=str(run.adapter_path or run.model_path or tokenizer_path), elapsed_s=round(time.perf_counter() - tic, 2)))
    run.events = ev.read_events(run_dir / "events.jsonl")
    return run


def _stopped(run, log, i, name, scfg, sub, tic):
    log(StageEvent(step=0, stage=i, name=name, method=scfg.method, dir=str(sub), status="stopped"))
    log(ev.Done(step=i - 1, output=str(sub), stopped=True, elapsed_s=round(time.perf_counter() - tic, 2)))
    run.stopped = True
    run.events = ev.read_events(run.dir / "events.jsonl")
    return run


def _next_inputs(scfg: Config, sub: Path, done: dict, model, tokenizer_path):
    """(model, tokenizer path, adapter) that the next stage starts from."""
    if scfg.method == "tokenizer":
        return model, str(sub / "tokenizer"), None
    if scfg.method == "pretrain" or scfg.full:
        return str(sub / "model"), tokenizer_path, None
    return str(fuse_stage(sub)), tokenizer_path, str(sub / "adapter")


def _metrics_before(scfg: Config, model, cache: dict, i: int, name: str, known: dict) -> dict:
    from smolmac.evaluation import stage_metrics

    if scfg.method in ("tokenizer", "pretrain") or not isinstance(model, str):
        return {}
    if str(model) not in cache:
        cache[str(model)] = stage_metrics(scfg, model)[0]
    return cache[str(model)]


def _metrics_after(scfg: Config, sub: Path, model, adapter, cache: dict) -> tuple[dict, list]:
    from smolmac.evaluation import stage_metrics

    if scfg.method == "tokenizer":
        return {}, []
    if scfg.method == "pretrain" and not scfg.eval.exact_match:
        return {}, []
    # A LoRA stage's fused dir gives the same answers as base + adapter (fuse is exact in fp32).
    metrics, examples = stage_metrics(scfg, str(model))
    cache[str(model)] = metrics
    return metrics, examples


def _combine(scfg: Config, sub: Path, before: dict, after: dict) -> dict:
    """Per-method rows of the table: tokenizer (vocab, chars/token), pretrain (val perplexity
    before -> after), sft (exact match), dpo/orpo (preference accuracy and margin, exact match), and
    for sft/dpo/orpo the retain perplexity before -> after (the "kept" column)."""
    from smolmac.evaluation import retain_change

    events = ev.read_events(sub / "events.jsonl")
    done = events[-1] if events else {}
    if scfg.method == "tokenizer":
        return {"vocab_size": done.get("vocab_size"), "chars_per_token": done.get("chars_per_token")}
    out = {}
    if scfg.method == "pretrain":
        start = next((e for e in events if e["type"] == "start" and e.get("init_val_ppl") is not None), {})
        last = next((e for e in reversed(events) if e["type"] == "eval"), {})
        out["val_ppl"] = {"before": start.get("init_val_ppl"), "after": last.get("val_ppl")}
        if last.get("mfu") is not None:
            out["mfu"] = last["mfu"]
        if "exact_match" in after:  # a pretrained model is not expected to answer yet
            out["exact_match"] = after["exact_match"]
        return out
    keys = [k for k in ("preference_accuracy", "preference_margin", "exact_match") if k in after]
    if scfg.method == "sft":
        keys = ["exact_match"] if "exact_match" in after else []
    out.update(_before_after(before, {k: after[k] for k in keys}))
    change = retain_change(events)
    if change:
        out["retain_ppl"] = {"before": change[0], "after": change[1]}
    if not out or list(out) == ["retain_ppl"]:
        last = next((e for e in reversed(events) if e["type"] == "eval" and e.get("val_loss") is not None), {})
        if last:
            out["val_loss"] = last["val_loss"]
    return {k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v) for k, v in out.items()}
