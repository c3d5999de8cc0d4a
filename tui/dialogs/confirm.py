"""Yes/no confirmation modal (delete a run, quit with runs training, upload)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from smolmac.tui.i18n import t


class ConfirmDialog(ModalScreen[bool]):
    """Asks `question`; dismisses with True (y / the yes button) or False (n / Escape)."""

    BINDINGS = [Binding("y", "answer(True)", t("Yes")), Binding("n,escape", "answer(False)", t("No"))]
    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical {
        width: 64; max-width: 90%; height: auto; border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmDialog .title { text-style: bold; margin-bottom: 1; }
    ConfirmDialog Horizontal { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmDialog Button { margin-left: 2; }
    """

    def __init__(self, title: str, question: str, yes: str | None = None, danger: bool = False):
        super().__init__()
        self.title_text, self.question = title, question
        self.yes, self.danger = yes or t("Yes"), danger

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield Static(self.question, markup=False)
            with Horizontal():
                yield Button(t("No") + " (n)", id="no", compact=True)
                yield Button(self.yes + " (y)", id="yes", variant="error" if self.danger else "primary", compact=True)

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
