"""The stages of a pipeline as an editable list (New run's Stages tab): add, remove and reorder
stages; each is a method plus the recipe keys it overrides (a YAML mapping), checked as a recipe
file's stages are (smolmac.config.check_stages, then the chain as the pipeline resolves it).
"""

from __future__ import annotations

import yaml
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select, Static

from smolmac.methods import METHODS
from smolmac.tui.i18n import t

TEMPLATES = {  # what a new stage of each method starts with (the keys a stage usually sets)
    "tokenizer": {},
    "pretrain": {"data": {"valid": 0.02}, "train": {"steps": 400, "lr": 3.0e-3}},
    "sft": {"train": {"steps": 100, "lr": 1.0e-4}},
    "dpo": {"train": {"steps": 100, "lr": 5.0e-6}},
    "orpo": {"train": {"steps": 100, "lr": 5.0e-6}},
}


def overrides_text(stage: dict) -> str:
    """The keys a stage sets besides name and method, as one line of YAML."""
    keys = {k: v for k, v in stage.items() if k not in ("name", "method")}
    return yaml.safe_dump(keys, default_flow_style=True, width=10_000, sort_keys=False).strip() if keys else ""


class StageTable(DataTable):
    """The list of stages; keys to add, remove and move them while it has the focus."""

    BINDINGS = [
        Binding("a", "add", t("Add stage")),
        Binding("x", "remove", t("Remove")),
        Binding("shift+up", "move(-1)", t("Move"), key_display="⇧↑↓"),
        Binding("shift+down", "move(1)", t("Move"), show=False),
    ]

    def action_add(self) -> None:
        self.parent.add_stage()

    def action_remove(self) -> None:
        self.parent.remove_stage()

    def action_move(self, by: int) -> None:
        self.parent.move_stage(by)


class StagesEditor(Vertical):
    """Stages of a pipeline; posts `StagesEditor.Changed` with the new list after every edit."""

    DEFAULT_CSS = """
    StagesEditor { height: auto; }
    StagesEditor StageTable { height: auto; max-height: 10; }
    StagesEditor .stage-row { height: auto; }
    StagesEditor .stage-row > Label { width: 22; color: $text-muted; padding-right: 1; }
    StagesEditor .stage-row > Input, StagesEditor .stage-row > Select { width: 1fr; }
    StagesEditor #stage-problem { height: auto; }
    StagesEditor .hint { color: $text-muted; }
    """

    class Changed(Message):
        def __init__(self, stages: list[dict]):
            super().__init__()
            self.stages = stages

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stages: list[dict] = []
        self.problem: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(t("A pipeline runs its stages in order, each from the previous one's model. With the list focused: a adds a stage, x removes it, Shift+↑/↓ moves it; edit the selected stage below. No stages: one run."), classes="hint")
        yield StageTable(id="stage-table", cursor_type="row")
        with Horizontal(classes="stage-row"):
            yield Label(t("stage name"))
            yield Input(id="stage-name", compact=True, placeholder=t("default: the method"))
        with Horizontal(classes="stage-row"):
            yield Label(t("method"))
            yield Select([(m, m) for m in METHODS], id="stage-method", allow_blank=False, compact=True)
        with Horizontal(classes="stage-row"):
            yield Label(t("keys it sets"))
            yield Input(id="stage-keys", compact=True, placeholder="{train: {steps: 100}, data: {train: chats.jsonl}}")
        yield Static(id="stage-problem")

    def on_mount(self) -> None:
        table = self.query_one(StageTable)
        for key, label in (("i", "#"), ("name", t("Stage")), ("method", t("Method")), ("keys", t("Keys it sets"))):
            table.add_column(label, key=key)
        self._show()

    # -- the list ---------------------------------------------------------------------------

    def set_stages(self, stages: list[dict]) -> None:
        """Show `stages` (from a recipe); editing changes copies."""
        self.stages = [dict(s) if isinstance(s, dict) else s for s in stages or []]
        self._show()

    def selected(self) -> int | None:
        row = self.query_one(StageTable).cursor_row
        return row if self.stages and row is not None and row < len(self.stages) else None

    def _show(self, cursor: int | None = None) -> None:
        table = self.query_one(StageTable)
        cursor = table.cursor_row if cursor is None else cursor
        table.clear()
        for i, stage in enumerate(self.stages, 1):
            if isinstance(stage, dict):
                table.add_row(str(i), str(stage.get("name") or stage.get("method") or "?"), str(stage.get("method") or "?"), overrides_text(stage))
            else:
                table.add_row(str(i), "?", "?", repr(stage))
        if self.stages:
            table.move_cursor(row=min(cursor or 0, len(self.stages) - 1))
        self._fill_editor()

    def _fill_editor(self) -> None:
        i = self.selected()
        stage = self.stages[i] if i is not None and isinstance(self.stages[i], dict) else {}
        for widget in self.query(".stage-row > Input, .stage-row > Select"):
            widget.disabled = i is None
        with self.prevent(Input.Changed, Select.Changed):
            self.query_one("#stage-name", Input).value = str(stage.get("name") or "")
            method = stage.get("method")
            self.query_one("#stage-method", Select).value = method if method in METHODS else "sft"
            self.query_one("#stage-keys", Input).value = overrides_text(stage)

    def _changed(self) -> None:
        self.post_message(self.Changed([dict(s) if isinstance(s, dict) else s for s in self.stages]))

    def add_stage(self) -> None:
        i = self.selected()
        at = len(self.stages) if i is None else i + 1
        previous = self.stages[i].get("method") if i is not None and isinstance(self.stages[i], dict) else None
        method = {"tokenizer": "pretrain", "pretrain": "sft", "sft": "orpo"}.get(previous, "sft")
        self.stages.insert(at, {"name": method, "method": method, **yaml.safe_load(yaml.safe_dump(TEMPLATES[method]))})
        self._show(cursor=at)
        self._changed()

    def remove_stage(self) -> None:
        i = self.selected()
        if i is None:
            return
        del self.stages[i]
        self._show(cursor=max(0, i - 1))
        self._changed()

    def move_stage(self, by: int) -> None:
        i = self.selected()
        if i is None or not 0 <= i + by < len(self.stages):
            return
        self.stages[i], self.stages[i + by] = self.stages[i + by], self.stages[i]
        self._show(cursor=i + by)
        self._changed()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._fill_editor()

    # -- editing the selected stage ---------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._edit()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._edit()

    def _edit(self) -> None:
        i = self.selected()
        if i is None:
            return
        name = self.query_one("#stage-name", Input).value.strip()
        method = self.query_one("#stage-method", Select).value
        text = self.query_one("#stage-keys", Input).value.strip()
        try:
            keys = yaml.safe_load(text) if text else {}
        except yaml.YAMLError as e:
            self.show_problem(t("stages[{i}]: the keys are not valid YAML ({problem}); write a mapping such as {{train: {{steps: 100}}}}.", i=i + 1, problem=getattr(e, "problem", None) or "?"), i)
            return
        if not isinstance(keys, dict):
            self.show_problem(t("stages[{i}]: the keys must be a YAML mapping such as {{train: {{steps: 100}}}}, not {value!r}.", i=i + 1, value=keys), i)
            return
        stage = {"name": name, "method": method} if name else {"method": method}
        stage.update({k: v for k, v in keys.items() if k not in ("name", "method")})
        self.stages[i] = stage
        table = self.query_one(StageTable)
        table.update_cell_at((i, 1), name or method)
        table.update_cell_at((i, 2), method)
        table.update_cell_at((i, 3), overrides_text(stage))
        self._changed()

    def show_problem(self, message: str | None, index: int | None = None) -> None:
        """Show the first problem of the stages (None: they are fine) under the editor."""
        self.problem = message
        widget = self.query_one("#stage-problem", Static)
        if message:
            widget.update(Text.assemble(("✗ ", "bold red"), (message, "red")))
        elif self.stages:
            widget.update(Text.assemble(("✓ ", "bold green"), (t("{n} stages, each checked", n=len(self.stages)), "green")))
        else:
            widget.update(Text(t("No stages: the recipe is one run."), style="dim"))
