"""Events: what a run reports, one JSON object per line in `events.jsonl`.

Every event has `type` and `step`. The trainer emits them and never prints; the CLI renders
them with a progress bar, the TUI as charts, tests assert on them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Event:
    step: int

    type = "event"

    def to_dict(self) -> dict:
        d = {"type": self.type, **asdict(self)}
        d.update(d.pop("extra", None) or {})
        d["time"] = round(time.time(), 3)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass
class Start(Event):
    total_steps: int
    method: str
    model: str
    trainable_params: int
    total_params: int
    train_rows: int
    valid_rows: int
    truncated_rows: int = 0
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)
    type = "start"


@dataclass
class Train(Event):
    loss: float
    lr: float
    tokens_per_second: float
    trained_tokens: int
    peak_memory_gb: float
    elapsed_s: float
    eta_s: float
    extra: dict = field(default_factory=dict)
    type = "train"


@dataclass
class Eval(Event):
    """Validation: `val_loss` (the method's loss; absent without validation data), `val_ppl` for
    language-modelling losses only (absent for DPO/ORPO, whose eval_rewards/* metrics say how the
    preference is learned), and retain_loss / retain_ppl when the run measures forgetting
    (eval.retain)."""

    val_loss: float | None = None
    val_ppl: float | None = None
    extra: dict = field(default_factory=dict)
    type = "eval"

    def to_dict(self) -> dict:
        return {k: v for k, v in super().to_dict().items() if v is not None or k not in ("val_loss", "val_ppl")}


@dataclass
class Sample(Event):
    prompt: str
    completion: str
    type = "sample"


@dataclass
class Checkpoint(Event):
    path: str
    type = "checkpoint"


@dataclass
class Done(Event):
    output: str
    stopped: bool = False
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)
    type = "done"


@dataclass
class Warning(Event):
    """Something the user should know that does not stop the run, in one line.

    `kind` names the check for tools and tests: "truncated", "untrained_rows", "small_data",
    "stuck_loss", ...; the CLI prints `message`, the app's dashboard shows it.
    """

    message: str
    kind: str = "warning"
    type = "warning"


@dataclass
class Error(Event):
    message: str
    type = "error"


class EventLog:
    """Appends events to `events.jsonl` (flushed per line) and forwards them to a callback."""

    def __init__(self, path: str | Path | None, callback=None):
        self.path = Path(path) if path else None
        self.callback = callback
        self.events: list[dict] = []
        self._f = self.path.open("a", encoding="utf-8") if self.path else None

    def __call__(self, event: Event):
        d = event.to_dict()
        self.events.append(d)
        if self._f:
            self._f.write(json.dumps(d, ensure_ascii=False) + "\n")
            self._f.flush()
        if self.callback:
            self.callback(d)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """Record a failure as an error event (so the TUI shows a failed run), then re-raise."""
        if exc_type is not None:
            from smolmac.errors import UserError

            if issubclass(exc_type, KeyboardInterrupt):
                message = "interrupted"
            elif isinstance(exc, UserError):
                message = str(exc)
            else:
                message = f"{exc_type.__name__}: {exc}"
            self(Error(step=0, message=message))
        self.close()
        return False

    def close(self):
        if self._f:
            self._f.close()
            self._f = None


def read_events(path: str | Path) -> list[dict]:
    """Parse an events.jsonl; a partly written last line (run in progress) is ignored."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class EventTail:
    """Reads the complete lines appended to an events.jsonl since the last call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.partial = b""

    def poll(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # the file was replaced: start over
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next poll
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
