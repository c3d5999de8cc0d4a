"""A one-line text prompt modal (e.g. where to save a recipe)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from smolmac.tui.i18n import t


class PromptDialog(ModalScreen[str | None]):
    """Asks for a value; Enter returns it, Escape returns None."""

    BINDINGS = [Binding("escape", "cancel", t("Cancel"))]
    DEFAULT_CSS = """
    PromptDialog { align: center middle; }
    PromptDialog > Vertical { width: 72; max-width: 90%; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
    PromptDialog .title { text-style: bold; margin-bottom: 1; }
    PromptDialog .hint { color: $text-muted; }
    """

    def __init__(self, title: str, value: str = "", hint: str = ""):
        super().__init__()
        self.title_text, self.value, self.hint = title, value, hint

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield Input(self.value, id="value")
            if self.hint:
                yield Label(self.hint, classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
