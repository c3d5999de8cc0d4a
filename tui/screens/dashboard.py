"""Dashboard of one run (or one stage of a pipeline): live loss chart, lr, tok/s (of the whole
group for a data-parallel run, with its processes and hosts), memory, progress and ETA, samples,
events.

The screen tails DIR/events.jsonl twice a second; a run whose process is gone without a final
event is shown as failed with the last line it printed. A stage's process is its pipeline's, so
stop, resume and chat act on the pipeline.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, RichLog, Static

from smolmac.events import EventTail
from smolmac.launcher import CRASHED, last_log_line
from smolmac.storage import lock_owner
from smolmac.tui.i18n import t
from smolmac.tui.view import RunView, fmt_duration, group_label, status_text
from smolmac.tui.widgets.loss_chart import LossChart


class DashboardScreen(Screen):
    """Everything about one run, live."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", t("Back")),
        Binding("s", "stop", t("Stop")),
        Binding("r", "resume", t("Resume")),
        Binding("s", "explain('stop')", show=False, system=True),  # when it does not apply: why
        Binding("r", "explain('resume')", show=False, system=True),
        Binding("t", "chat", t("Chat")),
        Binding("e", "export", t("Export")),
        Binding("i", "inspect", t("Inside")),
    ]

    def __init__(self, run_dir: str | Path, poll_s: float = 0.5, pipeline_dir: str | Path | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.process_dir = Path(pipeline_dir) if pipeline_dir else self.run_dir  # whose process trains it
        self.poll_s = poll_s
        self.view = RunView()
        self.tail = EventTail(self.run_dir / "events.jsonl")
        self.crashed: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="dash-title", classes="screen-title")
        yield Static(id="dash-stats")
        yield ProgressBar(id="dash-progress", show_eta=False)
        with Horizontal(id="dash-main"):
            yield LossChart(t("loss"), id="dash-chart")
            with Vertical(id="dash-side"):
                yield Static(t("Samples"), classes="section-title")
                with VerticalScroll(id="dash-samples-scroll"):
                    yield Static(id="dash-samples")
        yield RichLog(id="dash-log", max_lines=500, wrap=True, markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        name = f"{self.process_dir.name} › {self.run_dir.name}" if self.process_dir != self.run_dir else self.run_dir.name
        self.query_one("#dash-title", Static).update(Text.assemble((name, "bold"), ("  " + str(self.run_dir), "dim")))
        self.poll()
        self.render_view()
        self.set_interval(self.poll_s, self.poll)

    # -- tailing ----------------------------------------------------------------------------

    def poll(self) -> None:
        events = self.tail.poll()
        changed = bool(events)
        log = self.query_one("#dash-log", RichLog)
        for e in events:
            line = self.view.add(e)
            if e.get("type") == "start":
                self.crashed = None
            if line:
                log.write(line)
        if self.view.status in ("running", "starting") and self.crashed is None and self.app.launcher.alive(self.process_dir) is False:
            # Read once more: the process may have written its last events just before exiting.
            for e in self.tail.poll():
                line = self.view.add(e)
                if line:
                    log.write(line)
            if self.view.status in ("running", "starting"):
                self.crashed = last_log_line(self.process_dir) or t(CRASHED)
                log.write(f"error: {self.crashed}")
            changed = True
        if changed:
            self.render_view()

    @property
    def status(self) -> str:
        status = "failed" if self.crashed else self.view.status
        if status in ("stopped", "failed") and lock_owner(self.run_dir) is not None:
            return "running"  # resumed (from the CLI too) and not reported yet
        return status

    def render_view(self) -> None:
        v = self.view
        last = v.last_train or {}
        total = v.total_steps
        step = f"{t('step')} {v.step}/{total}" if total else f"{t('step')} {v.step}"
        cells = [step]
        group = group_label(v.start)  # data parallel: smolmac train --nproc/--hostfile
        if group:
            cells.append(group)
        if last:
            cells.append(f"{t('loss')} {last['loss']:.4f}")
        if v.last_eval and v.last_eval.get("val_loss") is not None:
            cells.append(f"{t('val')} {v.last_eval['val_loss']:.4f}")
        if v.retain:
            cells.append(v.retain)
        if last:
            cells += [f"lr {last['lr']:.2e}", f"{last['tokens_per_second']:,.0f} tok/s", f"{last['peak_memory_gb']:.2f} GB",
                      f"{t('elapsed')} {fmt_duration(last.get('elapsed_s'))}"]
            if self.status == "running":
                cells.append(f"ETA {fmt_duration(last.get('eta_s'))}")
        stats = Text.assemble(status_text(self.status), "   ", "   ".join(cells))
        error = v.error or self.crashed
        if error:
            stats.append("\n" + t("Error") + ": ", style="bold red")
            stats.append(error)
        elif v.done:
            stats.append("\n" + t("Output") + f": {v.done.get('output')}", style="yellow" if v.done.get("stopped") else "green")
        for warning in v.warnings[-2:]:  # the latest; the event log below has them all
            stats.append("\n" + t("warning") + ": ", style="bold yellow")
            stats.append(warning, style="yellow")
        self.query_one("#dash-stats", Static).update(stats)
        bar = self.query_one("#dash-progress", ProgressBar)
        bar.update(total=total or None, progress=v.step)
        self.query_one("#dash-chart", LossChart).set_series({t("train"): v.train, t("valid"): v.valid})
        samples = Text()
        for s in reversed(v.samples):
            samples.append(f"{t('step')} {s['step']} ", style="dim")
            samples.append(s["prompt"].strip() + "\n", style="bold")
            samples.append("→ " + s["completion"].strip() + "\n\n")
        self.query_one("#dash-samples", Static).update(samples if v.samples else Text(t("Samples appear at each evaluation (eval.prompts)."), style="dim"))
        self.refresh_bindings()  # stop / resume follow the status

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Stop shows while the run trains, resume once it stopped or failed."""
        if action == "stop":
            return self.status in ("running", "starting")
        if action == "resume":
            return self.status in ("stopped", "failed")
        return True

    def action_explain(self, action: str) -> None:
        getattr(self, f"action_{action}")()

    # -- actions ----------------------------------------------------------------------------

    def action_stop(self) -> None:
        self.app.stop_run(self.process_dir, self.process_dir.name)

    def action_resume(self) -> None:
        if not self.app.resume_run(self.process_dir, self.run_dir.name, self.status):
            return
        # Running again until the new child reports: a crash before its start event then shows.
        self.crashed = self.view.done = self.view.error = None
        self.query_one("#dash-log", RichLog).write(t("resuming from the last checkpoint…"))
        self.render_view()

    def action_chat(self) -> None:
        from smolmac.tui.screens.chat import open_chat

        open_chat(self.app, self.process_dir, stage=self.run_dir.name if self.process_dir != self.run_dir else None)

    def action_export(self) -> None:
        from smolmac.tui.screens.export import ExportScreen

        self.app.push_screen(ExportScreen(str(self.run_dir)))

    def action_inspect(self) -> None:
        from smolmac.tui.screens.inspect import InspectScreen

        stage = self.run_dir.name if self.process_dir != self.run_dir else None
        self.app.push_screen(InspectScreen(self.process_dir, model=stage))
