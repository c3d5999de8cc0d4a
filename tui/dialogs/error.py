"""The error modal: one sentence (a UserError's message), dismissed with Enter or Escape."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from smolmac.errors import UserError
from smolmac.tui.i18n import t


def describe_error(error: BaseException) -> str:
    """The one sentence a modal shows for an exception."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, ImportError) and getattr(error, "name", "") and error.name.startswith("smolmac"):
        return t("{module} is not available in this installation; update smolmac.", module=error.name)
    return f"{type(error).__name__}: {error}"


class ErrorDialog(ModalScreen[None]):
    """Shows `message` until dismissed."""

    BINDINGS = [Binding("escape,enter", "dismiss", t("Close"))]
    DEFAULT_CSS = """
    ErrorDialog { align: center middle; }
    ErrorDialog > Vertical {
        width: 72; max-width: 90%; height: auto; max-height: 80%;
        border: thick $error; background: $surface; padding: 1 2;
    }
    ErrorDialog .title { text-style: bold; color: $error; margin-bottom: 1; }
    ErrorDialog #message { height: auto; max-height: 16; overflow-y: auto; }
    ErrorDialog Button { margin-top: 1; }
    """

    def __init__(self, message: str, title: str | None = None):
        super().__init__()
        self.message = message
        self.title_text = title or t("Something went wrong")

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield Static(self.message, id="message", markup=False)
            yield Button(t("OK"), variant="error", id="ok", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)
