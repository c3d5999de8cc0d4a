"""Compare runs or pipeline stages: their loss curves on one chart (v: validation) and the recipe
keys on which they differ (only those)."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from smolmac.config import recipe_diff
from smolmac.events import read_events
from smolmac.runs import read_run
from smolmac.tui.i18n import t
from smolmac.tui.view import RunView, model_label, shorten
from smolmac.tui.widgets.loss_chart import LossChart


def run_label(run_dir: Path) -> str:
    """`name` for a run, `pipeline/<i>-<stage>` for a stage of a pipeline."""
    parent = run_dir.parent
    if (parent / "config.yaml").is_file() and (parent / "events.jsonl").is_file():
        return f"{parent.name}/{run_dir.name}"
    return run_dir.name


def show_value(value) -> str:
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return "-" if value is None else str(value)


class CompareScreen(Screen):
    """Loss curves of several runs or stages, and the keys where their recipes differ."""

    BINDINGS = [Binding("escape", "app.pop_screen", t("Back")), Binding("v", "toggle_valid", t("Validation"))]

    def __init__(self, run_dirs: list[str]):
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        self.views: dict[str, RunView] = {}
        self.show_valid = False
        self.diff: list[tuple[str, list]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(t("Compare runs"), classes="screen-title")
        yield Static(id="compare-table")
        yield LossChart(t("training loss"), id="compare-chart")
        with VerticalScroll(id="compare-diff-scroll"):
            yield Static(id="compare-diff")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = Table(t("Run"), t("Method"), t("Model"), t("Step"), t("Loss"), t("Val loss"), box=None, padding=(0, 2))
        recipes = []
        for d in self.run_dirs:
            view = RunView()
            for e in read_events(d / "events.jsonl"):
                view.add(e)
            label = run_label(d)
            self.views[label] = view
            info = read_run(d)
            last_val = f"{view.valid[-1][1]:.4f}" if view.valid else "-"
            table.add_row(label, str(info.get("method") or "-"), model_label(info.get("model")), str(view.step), f"{info['loss']:.4f}" if info.get("loss") is not None else "-", last_val)
            recipes.append(yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {})
        self.query_one("#compare-table", Static).update(table)
        self.diff = [(k, v) for k, v in recipe_diff(recipes) if k != "name"]
        diff = Table(t("Recipe key"), *[shorten(label, 24) for label in self.views], box=None, padding=(0, 2), title=t("Recipe differences (only the keys that differ)"), title_justify="left")
        for key, values in self.diff:
            diff.add_row(key, *[shorten(show_value(v), 40) for v in values])
        self.query_one("#compare-diff", Static).update(diff if self.diff else Text(t("The recipes are the same (apart from the name)."), style="dim"))
        self.draw()

    def draw(self) -> None:
        chart = self.query_one(LossChart)
        chart.title = t("validation loss") if self.show_valid else t("training loss")
        chart.set_series({name: (v.valid if self.show_valid else v.train) for name, v in self.views.items()})

    def action_toggle_valid(self) -> None:
        self.show_valid = not self.show_valid
        self.draw()
