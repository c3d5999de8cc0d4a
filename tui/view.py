"""What the app shows of a run: `RunView` folds events into dashboard state (pure), plus the
formatting helpers the screens share. Process control is the engine's (smolmac/launcher.py).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from smolmac.evaluation import retain_text
from smolmac.tui.i18n import t

STATUS_STYLE = {"running": "bold cyan", "starting": "cyan", "finished": "green", "stopped": "yellow", "failed": "bold red", "new": "dim", "pending": "dim"}


def status_text(status: str) -> Text:
    return Text(t(status), style=STATUS_STYLE.get(status, ""))



@dataclass
class RunView:
    """What the dashboard shows, folded from events (pure; the screen only renders it)."""

    total_steps: int | None = None
    step: int = 0
    train: list = field(default_factory=list)  # (step, loss)
    valid: list = field(default_factory=list)  # (step, val_loss)
    last_train: dict | None = None
    last_eval: dict | None = None
    start: dict | None = None
    done: dict | None = None
    error: str | None = None
    warnings: list = field(default_factory=list)  # messages of warning events
    samples: deque = field(default_factory=lambda: deque(maxlen=6))
    retain_before: float | None = None  # retain ppl at the start (the first start event's)
    retain_after: float | None = None  # retain ppl at the last eval

    def add(self, e: dict) -> str | None:
        """Fold one event in; returns its one-line description for the event log (or None)."""
        kind, step = e.get("type"), e.get("step", 0)
        if kind == "start":
            self.start, self.total_steps, self.done, self.error = e, e.get("total_steps"), None, None
            if self.retain_before is None:
                self.retain_before = e.get("retain_ppl")
            self.warnings = []
            # A resumed run re-reports from its checkpoint: drop points past it.
            self.train = [p for p in self.train if p[0] <= step]
            self.valid = [p for p in self.valid if p[0] <= step]
            self.step = step
            resumed = f" (resumed at step {e['resumed_from']})" if e.get("resumed_from") else ""
            return f"start {e.get('method')} {e.get('model')}: {e.get('trainable_params', 0):,} trainable, {e.get('train_rows')} train / {e.get('valid_rows')} valid rows{resumed}"
        if kind == "train":
            self.last_train, self.step = e, step
            self.train.append((step, e["loss"]))
            return None
        if kind == "eval":
            self.last_eval = e
            parts = []
            if e.get("val_loss") is not None:
                self.valid.append((step, e["val_loss"]))
                parts.append(f"val loss {e['val_loss']:.4f}" + (f", ppl {e['val_ppl']:.2f}" if e.get("val_ppl") is not None else ""))
                acc = e.get("eval_rewards/accuracies")  # DPO/ORPO: no perplexity, preference metrics
                margin = e.get("eval_rewards/margins")
                if acc is not None:
                    parts.append(f"{t('preference accuracy')} {acc:.0%}")
                if margin is not None:
                    parts.append(f"margin {margin:.3f}")
            if e.get("retain_ppl") is not None:
                self.retain_after = e["retain_ppl"]
                parts.append(f"{t('retain ppl')} {e['retain_ppl']:.4g}")
            return f"step {step}: {', '.join(parts)}" if parts else None
        if kind == "warning":
            if e.get("message") not in self.warnings:
                self.warnings.append(e.get("message"))
            return f"{t('warning')}: {e.get('message')}"
        if kind == "sample":
            self.samples.append(e)
            return None
        if kind == "checkpoint":
            return f"step {step}: checkpoint {Path(e.get('path', '')).name}"
        if kind == "done":
            self.done, self.step = e, step
            return f"step {step}: {'stopped' if e.get('stopped') else 'finished'} → {e.get('output')}"
        if kind == "error":
            self.error = e.get("message")
            return f"error: {self.error}"
        return None

    @property
    def retain(self) -> str | None:
        """"retain ppl 12.1 → 12.6 (+4%)" once the run has measured its retain set twice."""
        if self.retain_before is None or self.retain_after is None:
            return None
        return retain_text(self.retain_before, self.retain_after, label=t("retain ppl") + " ")

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        if self.done:
            return "stopped" if self.done.get("stopped") else "finished"
        return "running" if self.start else "starting"


def group_label(start: dict | None) -> str | None:
    """'2 processes on 1 host' for a data-parallel run (its start event), else None."""
    n = (start or {}).get("world_size", 1)
    if n <= 1:
        return None
    hosts = start.get("hosts", 1)
    return t("{n} processes on 1 host", n=n) if hosts == 1 else t("{n} processes on {hosts} hosts", n=n, hosts=hosts)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_time(timestamp: float | None, now: float | None = None) -> str:
    """Local time of an event: the year only when it is not this year."""
    if not timestamp:
        return "-"
    when, today = time.localtime(timestamp), time.localtime(now)
    return time.strftime("%m-%d %H:%M" if when.tm_year == today.tm_year else "%Y-%m-%d %H:%M", when)


def shorten(text: str, width: int) -> str:
    """`text` cut in the middle with an ellipsis when longer than `width`."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def model_label(model) -> str:
    """A short label for a recipe's model (a repo or folder name, or `new <preset>`)."""
    if isinstance(model, dict):
        spec = model.get("new") or {}
        return f"new {spec.get('preset', 'nano')}" if isinstance(spec, dict) else "new"
    if not model:
        return "-"
    return Path(str(model)).name  # the folder's name, or the repo name of a Hub id
