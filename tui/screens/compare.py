"""Compare two runs: their training (and validation) loss curves on one chart."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from smolmac.events import read_events
from smolmac.runs import read_run
from smolmac.tui.i18n import t
from smolmac.tui.view import RunView, model_label
from smolmac.tui.widgets.loss_chart import LossChart


class CompareScreen(Screen):
    """Loss curves of several runs (two, from the Runs screen) side by side."""

    BINDINGS = [Binding("escape", "app.pop_screen", t("Back")), Binding("v", "toggle_valid", t("Validation"))]

    def __init__(self, run_dirs: list[str]):
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        self.views: dict[str, RunView] = {}
        self.show_valid = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(t("Compare runs"), classes="screen-title")
        yield Static(id="compare-table")
        yield LossChart(t("training loss"), id="compare-chart")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = Table(t("Run"), t("Method"), t("Model"), t("Step"), t("Loss"), t("Val loss"), box=None, padding=(0, 2))
        for d in self.run_dirs:
            view = RunView()
            for e in read_events(d / "events.jsonl"):
                view.add(e)
            self.views[d.name] = view
            info = read_run(d)
            last_val = f"{view.valid[-1][1]:.4f}" if view.valid else "-"
            table.add_row(d.name, str(info.get("method") or "-"), model_label(info.get("model")), str(view.step), f"{info['loss']:.4f}" if info.get("loss") is not None else "-", last_val)
        self.query_one("#compare-table", Static).update(table)
        self.draw()

    def draw(self) -> None:
        chart = self.query_one(LossChart)
        chart.title = t("validation loss") if self.show_valid else t("training loss")
        chart.set_series({name: (v.valid if self.show_valid else v.train) for name, v in self.views.items()})

    def action_toggle_valid(self) -> None:
        self.show_valid = not self.show_valid
        self.draw()
