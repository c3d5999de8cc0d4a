"""Trackers: mirror a run's events to TensorBoard, trackio and/or Weights & Biases, where people
already look at metrics. `events.jsonl` stays the record; a tracker gets a copy of each event.

    report_to: [tensorboard, trackio, wandb]      # recipe key, off by default
    pip install 'smolmac[tensorboard]'            # each tracker is an optional extra

What goes where (a run dir RUN, the run's name NAME = RUN's folder name, `PIPELINE/STAGE` for a
pipeline stage):
- `start`: the resolved recipe and the start event's fields, as the tracker's run config
  (TensorBoard: a `config` text).
- `train`, `eval` and any other event with numbers: each number as a scalar `<type>/<key>` at the
  event's step (`train/loss`, `train/rewards/margins`, `eval/val_loss`; the `eval_` of preference
  eval keys is dropped: `eval/rewards/accuracies`).
- `sample`: TensorBoard text `sample` (prompt and completion); the others keep them in events.jsonl.
- `done` / `error`: the numbers as a summary (W&B) or scalars at the last step, the error message
  as text; the tracker's run is finished (W&B with exit code 1 after an error).

TensorBoard writes `RUN/tensorboard/` (`tensorboard --logdir runs`); trackio writes its local
SQLite database (project `smolmac`, or $TRACKIO_PROJECT; `trackio show`); W&B follows its own
settings (`wandb login`, or WANDB_MODE=offline to write `RUN/wandb/` and `wandb sync` later),
project `smolmac` or $WANDB_PROJECT. A resumed run continues the same tracker run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import secrets
import time
from pathlib import Path

import yaml

from smolmac.errors import UserError

TRACKERS = ("tensorboard", "trackio", "wandb")  # recipe values; each is the pip extra of its name


def require(names) -> None:
    """Refuse, in one sentence, a tracker whose package is not installed (nothing is imported)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"report_to: {name} is not installed; pip install 'smolmac[{name}]', or remove {name} from report_to.")


def numbers(event: dict) -> dict[str, float]:
    """The event's numbers as `<type>/<key>` scalars (not step, time, flags or text)."""
    kind = event["type"]
    out = {}
    for key, value in event.items():
        if key in ("type", "step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if kind == "eval" and key.startswith("eval_"):
            key = key[len("eval_"):]
        out[f"{kind}/{key}"] = float(value)
    return out


def run_name(run_dir: Path) -> str:
    """The run dir's folder name; `PIPELINE/STAGE` for a stage (its parent holds a recipe)."""
    run_dir = Path(run_dir).resolve()
    return f"{run_dir.parent.name}/{run_dir.name}" if (run_dir.parent / "config.yaml").is_file() else run_dir.name


# ---------------------------------------------------------------------------------------------
# One class per tracker: log(scalars, step), text(tag, text, step), finish(summary, step, error)


class TensorBoard:
    """Event files in RUN/tensorboard/, written with TensorBoard's own writer (no TensorFlow or
    torch): scalars as `simple_value`s, texts with the text plugin."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.dir = Path(run_dir) / "tensorboard"
        self.writer = EventFileWriter(str(self.dir))
        self.text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", int(config.get("start", {}).get("step", 0)))

    def _write(self, summary, step: int):
        from tensorboard.compat.proto.event_pb2 import Event

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()  # a live run shows up at once, not after the writer's 2-minute flush

    def log(self, scalars: dict, step: int):
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]), step)

    def text(self, tag: str, text: str, step: int):
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._write(text_pb(tag, text), step)

    def finish(self, summary: dict, step: int, error: str | None):
        if summary:
            self.log(summary, step)
        if error:
            self.text("error", error, step)
        self.writer.close()


class Trackio:
    """A trackio run in its local database (or wherever TRACKIO_* settings point), resumed by name."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        import os

        import trackio

        self.trackio = trackio
        with contextlib.redirect_stdout(io.StringIO()):  # its banner would cut through the CLI's progress
            self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "smolmac"), name=name,
                                    config=config, resume="allow", embed=False)

    def log(self, scalars: dict, step: int):
        self.run.log(scalars, step=step)

    def text(self, tag: str, text: str, step: int):
        pass  # trackio has no text panel; samples and errors stay in events.jsonl

    def finish(self, summary: dict, step: int, error: str | None):
        if summary:
            self.run.log(summary, step=step)
        with contextlib.redirect_stdout(io.StringIO()):
            self.trackio.finish()  # flushes the batched writes; clears trackio's current run


class WandB:
    """A W&B run with the run dir as its `dir`; its id is kept in RUN/wandb-id so a resumed run
    continues it."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        import os

        import wandb

        id_file = Path(run_dir) / "wandb-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)  # W&B ids: [a-z0-9]
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "smolmac"), name=name, id=run_id,
                                  resume="allow", dir=str(run_dir), config=config,
                                  group=name.split("/")[0] if "/" in name else None,
                                  settings=wandb.Settings(console="off"))  # leave stdout/stderr to smolmac
        except Exception as e:  # not logged in, no network, a bad setting: W&B's own words
            raise UserError(f"report_to: wandb could not start a run ({_first_line(e)}); run `wandb login`, or set WANDB_MODE=offline to write {run_dir}/wandb and `wandb sync` it later.") from None
        if not id_file.is_file():
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(run_id)
            tmp.replace(id_file)

    def log(self, scalars: dict, step: int):
        self.run.log(scalars, step=step)

    def text(self, tag: str, text: str, step: int):
        pass  # samples and errors stay in events.jsonl (the error also goes to the summary)

    def finish(self, summary: dict, step: int, error: str | None):
        self.run.summary.update({**summary, **({"error": error} if error else {})})
        self.run.finish(exit_code=1 if error else 0)


BACKENDS = {"tensorboard": TensorBoard, "trackio": Trackio, "wandb": WandB}


# ---------------------------------------------------------------------------------------------
# The sink: a callable taking each event dict, composed with the run's EventLog (runs.py)


class Mirror:
    """Forwards each event of one run to the trackers in `names`.

    The trackers' runs open at the `start` event (so a run that fails while loading makes no
    tracker run) and finish at `done` or `error`, or at `close()`.
    """

    def __init__(self, names: list[str], config: dict, run_dir: Path):
        require(names)
        self.names, self.config, self.run_dir = list(names), config, Path(run_dir)
        self.backends: dict = {}
        self.step = 0

    def __call__(self, event: dict):
        kind, step = event["type"], int(event.get("step") or 0)
        self.step = max(self.step, step)
        if kind == "start" and not self.backends:
            start = {k: v for k, v in event.items() if k not in ("type", "time")}
            config = {**self.config, "start": json.loads(json.dumps(start, default=str))}
            name = run_name(self.run_dir)
            for n in self.names:
                try:
                    self.backends[n] = BACKENDS[n](self.run_dir, name, config)
                except UserError:
                    raise
                except Exception as e:
                    raise UserError(f"report_to: {n} could not start a run ({_first_line(e)}); check its settings or remove {n} from report_to.") from None
            return
        if not self.backends:
            return
        if kind in ("done", "error"):
            self.close(numbers(event), event.get("message") if kind == "error" else None)
        elif kind == "sample":
            self._each(lambda b: b.text("sample", f"**{event.get('prompt', '')}**\n\n{event.get('completion', '')}", step), step)
        else:
            scalars = numbers(event)
            if scalars:
                self._each(lambda b: b.log(scalars, step), step)

    def _each(self, call, step: int):
        for n, b in self.backends.items():
            try:
                call(b)
            except Exception as e:  # the run stops here (checkpoint kept); events.jsonl has it all
                raise UserError(f"report_to: {n} failed at step {step} ({_first_line(e)}); fix it or remove {n} from report_to, then resume the run.") from None

    def close(self, summary: dict | None = None, error: str | None = None):
        """Finish every tracker run still open (idempotent)."""
        backends, self.backends = self.backends, {}
        failed = []
        for n, b in backends.items():
            try:
                b.finish(summary or {}, self.step, error)
            except Exception as e:
                failed.append(f"{n} ({_first_line(e)})")
        # After a run error, that error is what the user must see; a tracker that also failed to
        # finish is then left out rather than raised over it.
        if failed and not error:
            raise UserError(f"report_to: could not finish {', '.join(failed)}; events.jsonl holds every event of the run.")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def mirror(cfg, run_dir: Path) -> Mirror | None:
    """The sink for `cfg.report_to` (None when empty); a missing package fails here, in one
    sentence, before anything is written."""
    return Mirror(cfg.report_to, cfg.to_dict(), run_dir) if cfg.report_to else None


def compose(*sinks):
    """One callback calling each sink (None skipped) in order with the same event."""
    sinks = [s for s in sinks if s is not None]

    def call(event: dict):
        for s in sinks:
            s(event)

    return call
