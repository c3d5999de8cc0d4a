"""Dashboard of a pipeline: what each stage learned (the CLI's closing table: stage, method, time,
what was learned, what it kept of the retain set), the live loss chart of the running stage (or
of the stage under the cursor), the example answers the stage's evaluation gave, and each stage's own dashboard on enter.

The screen reads the pipeline's summary (smolmac.launcher.run_summary: cached until a file
changes) and tails the chosen stage's events.jsonl twice a second.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from smolmac.events import EventTail
from smolmac.launcher import CRASHED, run_summary
from smolmac.pipeline import kept_text, learned_parts, stage_rows
from smolmac.tui.i18n import t
from smolmac.tui.view import RunView, fmt_duration, status_text
from smolmac.tui.widgets.loss_chart import LossChart


class PipelineScreen(Screen):
    """Stages of one pipeline, live."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", t("Back")),
        Binding("enter", "open", t("Open stage"), priority=True),
        Binding("s", "stop", t("Stop")),
        Binding("r", "resume", t("Resume")),
        Binding("s", "explain('stop')", show=False, system=True),  # when it does not apply: why
        Binding("r", "explain('resume')", show=False, system=True),
        Binding("t", "chat", t("Chat")),
        Binding("c", "compare", t("Compare")),
        Binding("e", "export", t("Export")),
        Binding("i", "inspect", t("Inside")),
    ]
    AUTO_FOCUS = "#pipe-stages"

    def __init__(self, run_dir: str | Path, poll_s: float = 0.5):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.poll_s = poll_s
        self.info: dict = {}
        self.followed: str | None = None  # the stage whose curve is drawn
        self.follow_current = True  # until the user moves the cursor: follow the running stage
        self.view = RunView()
        self.tail: EventTail | None = None
        self._shown: list | None = None
        self._drawn: str | None = "-"  # the stage last drawn ("-": nothing drawn yet)
        self._state: tuple = ()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="pipe-title", classes="screen-title")
        yield Static(id="pipe-stats")
        yield DataTable(id="pipe-stages", cursor_type="row", zebra_stripes=True)
        yield LossChart(t("loss"), id="pipe-chart")
        yield Static(id="pipe-examples")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#pipe-title", Static).update(Text.assemble((self.run_dir.name, "bold"), ("  " + t("pipeline") + "  " + str(self.run_dir), "dim")))
        table = self.query_one(DataTable)
        for key, label in (("stage", t("Stage")), ("method", t("Method")), ("status", t("Status")), ("step", t("Step")),
                           ("time", t("Time")), ("learned", t("What was learned"))):
            table.add_column(label, key=key)
        self.poll()
        self.set_interval(self.poll_s, self.poll)

    # -- data -------------------------------------------------------------------------------

    @property
    def stages(self) -> list[dict]:
        return self.info.get("stages") or []

    def poll(self) -> None:
        self.info = run_summary(self.run_dir, self.app.launcher)
        times = {r["stage"]: r["time_s"] for r in stage_rows(_events(self.run_dir))}
        rows = []
        for s in self.stages:
            elapsed = times.get(s["label"])
            time_text = f"{elapsed:.0f}s" if elapsed is not None else "-"
            step = "-" if s["status"] == "pending" or not s.get("total_steps") else f"{s['step']}/{s['total_steps']}"
            rows.append((s["label"], s.get("method") or "-", status_text(s["status"]), step, time_text, ", ".join(learned_parts(s.get("metrics"))) or "-",
                         kept_text(s.get("metrics")) or "-"))
        table = self.query_one(DataTable)
        # "kept": the retain perplexity before -> after, as in the CLI's table only once a stage measured it
        if "kept" not in table.columns and any(r[-1] != "-" for r in rows):
            table.add_column(t("Kept (retain ppl)"), key="kept")
        if "kept" not in table.columns:
            rows = [r[:-1] for r in rows]
        if rows != self._shown:
            self._shown = rows
            cursor = table.cursor_row
            table.clear()
            for s, row in zip(self.stages, rows):
                table.add_row(*row, key=s["label"])
            if self.follow_current and self.info.get("current"):
                cursor = [s["label"] for s in self.stages].index(self.info["current"])
            if cursor is not None and rows:
                table.move_cursor(row=min(cursor, len(rows) - 1))
        self._render_stats()
        self._follow()
        state = (self.info.get("status"), self.info.get("alive"))
        if state != self._state:  # the footer's stop/resume follow the process
            self._state = state
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Stop shows while the pipeline trains, resume once it stopped or failed."""
        if action == "stop":
            return bool(self.info.get("alive"))
        if action == "resume":
            return self.info.get("status") in ("stopped", "failed")
        return True

    def action_explain(self, action: str) -> None:
        getattr(self, f"action_{action}")()

    def _render_stats(self) -> None:
        info = self.info
        status = info.get("status", "new")
        cells = [t("stage {i}/{n} finished", i=info.get("step", 0), n=info.get("total_steps") or len(self.stages))]
        if info.get("current") and status != "finished":
            cells.append(t("now: {stage}", stage=info["current"]))
        if status == "finished":
            cells.append(t("total {time}", time=fmt_duration(sum(s.get("elapsed_s") or 0 for s in self.stages))))
        stats = Text.assemble(status_text(status), "   ", "   ".join(cells))
        if info.get("error") and status == "failed":
            stats.append("\n" + t("Error") + ": ", style="bold red")
            stats.append(t(CRASHED) if info["error"] == CRASHED else info["error"])
        self.query_one("#pipe-stats", Static).update(stats)

    def selected(self) -> dict | None:
        table = self.query_one(DataTable)
        if not self.stages or table.cursor_row is None or table.cursor_row >= len(self.stages):
            return None
        return self.stages[table.cursor_row]

    def _follow(self) -> None:
        """Draw the chart of the stage under the cursor (tailing its events) and its answers."""
        stage = self.selected()
        label = stage["label"] if stage else None
        if label != self.followed:
            self.followed = label
            self.view = RunView()
            self.tail = EventTail(self.run_dir / label / "events.jsonl") if label else None
        changed = label != self._drawn
        for e in self.tail.poll() if self.tail else []:
            self.view.add(e)
            changed = True
        if not changed:
            return
        self._drawn = label
        chart = self.query_one("#pipe-chart", LossChart)
        method = (stage or {}).get("method")
        chart.title = f"{label} · {t('loss')}" if label else t("loss")
        if method == "tokenizer":
            chart.title = f"{label} · " + t("a tokenizer stage trains no weights: no loss curve")
        chart.set_series({t("train"): self.view.train, t("valid"): self.view.valid})
        self._render_examples(stage)

    def _render_examples(self, stage: dict | None) -> None:
        events = _events(self.run_dir)
        metrics = next((e for e in reversed(events) if e["type"] == "metrics" and stage and f"{e['stage']}-{e['name']}" == stage["label"]), None)
        widget = self.query_one("#pipe-examples", Static)
        if not metrics or not metrics.get("examples"):
            widget.update(Text(t("Answers to held-out questions appear here after a stage with eval.exact_match."), style="dim"))
            return
        out = Text.assemble((t("Answers after {stage}", stage=stage["label"]) + ": ", "bold"))
        for ex in metrics["examples"][:3]:
            right = ex["answer"].strip() == ex["expected"].strip()
            out.append(f"  {ex['prompt']} → ")
            out.append(repr(ex["answer"].strip()), style="green" if right else "red")
        widget.update(out)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.stages and event.cursor_row is not None and event.cursor_row < len(self.stages):
            self.follow_current = self.stages[event.cursor_row]["label"] == self.info.get("current")
        self._follow()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    # -- actions ----------------------------------------------------------------------------

    def action_open(self) -> None:
        stage = self.selected()
        if stage is None:
            return
        if stage["status"] == "pending":
            self.notify(t("{name} has not started yet.", name=stage["label"]), severity="warning")
            return
        from smolmac.tui.screens.dashboard import DashboardScreen

        self.app.push_screen(DashboardScreen(self.run_dir / stage["label"], pipeline_dir=self.run_dir))

    def action_stop(self) -> None:
        self.app.stop_run(self.run_dir, self.run_dir.name)

    def action_resume(self) -> None:
        if not self.app.resume_run(self.run_dir, self.run_dir.name, self.info.get("status")):
            return
        self.follow_current = True
        self.notify(t("resuming from the last checkpoint…"))

    def action_chat(self) -> None:
        from smolmac.tui.screens.chat import open_chat

        stage = self.selected()
        open_chat(self.app, self.run_dir, stage=stage["label"] if stage else None)

    def action_compare(self) -> None:
        trained = [s["dir"] for s in self.stages if s.get("method") != "tokenizer" and s["status"] != "pending"]
        if len(trained) < 2:
            self.app.show_error(t("compare: this pipeline has fewer than two stages with a loss curve yet."))
            return
        from smolmac.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen([str(self.run_dir / Path(d).name) for d in trained]))

    def action_export(self) -> None:
        from smolmac.tui.screens.export import ExportScreen

        stage = self.selected()
        self.app.push_screen(ExportScreen(str(self.run_dir / stage["label"]) if stage else str(self.run_dir)))

    def action_inspect(self) -> None:
        from smolmac.tui.screens.inspect import InspectScreen

        stage = self.selected()
        self.app.push_screen(InspectScreen(self.run_dir, model=stage["label"] if stage else None))


def _events(run_dir: Path) -> list[dict]:
    from smolmac.events import read_events

    return read_events(run_dir / "events.jsonl")
