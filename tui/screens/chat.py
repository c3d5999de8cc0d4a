"""Chat with a base model, a run's adapter, or both side by side on the same prompt.

Generation runs in ONE long-lived thread worker (`generator`): it loads the models and streams
replies on its own thread, so every MLX array it makes is created and used there; the UI sends
it jobs through a queue and it answers with ChatPiece/ChatFinished messages.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from smolmac.tui.i18n import t
from smolmac.tui.messages import ChatFinished, ChatPiece, ChatStatus

MODES = ("base", "adapter", "both")


@dataclass
class Job:
    targets: list  # [(side, model, adapter)]
    messages: dict  # side -> message list
    max_tokens: int
    temp: float
    top_p: float


class Transcript(VerticalScroll):
    """One side's conversation; the last assistant message grows as pieces arrive."""

    DEFAULT_CSS = """
    Transcript { border: round $primary 40%; padding: 0 1; height: 1fr; }
    Transcript > .user { color: $text-accent; margin-top: 1; }
    Transcript > .assistant { margin-bottom: 0; }
    """

    def __init__(self, side: str, title: str, **kwargs):
        super().__init__(**kwargs)
        self.side = side
        self.border_title = title
        self.messages: list[dict] = []
        self._reply: Static | None = None
        self._text = ""

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        self.mount(Static(Text("› " + text), classes="user"))
        self._text = ""
        self._reply = Static(Text("…", style="dim"), classes="assistant")
        self.mount(self._reply)
        self.scroll_end(animate=False)

    def add_piece(self, piece: str) -> None:
        self._text += piece
        if self._reply is not None:
            self._reply.update(Text(self._text))
            self.scroll_end(animate=False)

    def finish(self, error: str | None = None) -> None:
        if error and self._reply is not None:
            self._reply.update(Text(self._text + ("\n" if self._text else "") + "✗ " + error, style="red"))
        self.messages.append({"role": "assistant", "content": self._text})
        self._reply = None

    def clear(self) -> None:
        self.messages = []
        self.remove_children()


class ChatScreen(Screen):
    """Prompt at the bottom, one or two transcripts above, sampling settings at the top."""

    BINDINGS = [
        Binding("escape", "back", t("Back")),
        Binding("ctrl+x", "cancel", t("Stop reply"), priority=True),
        Binding("ctrl+l", "clear", t("Clear"), priority=True),
        Binding("ctrl+o", "mode", t("Base / adapter / both"), priority=True),
    ]

    def __init__(self, model: str | None = None, run_dir: str | None = None):
        super().__init__()
        self.model, self.run_dir = model, run_dir
        self.jobs: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self.pending = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-settings"):
            yield Label(t("model"))
            yield Input(self.model or "", id="chat-model", compact=True, placeholder=t("Hub id or folder"))
            yield Label(t("run"))
            yield Input(self.run_dir or "", id="chat-run", compact=True, placeholder=t("run dir (optional)"))
        with Horizontal(id="chat-sampling"):
            yield Label(t("mode"))
            mode = "both" if self.run_dir and self.model else ("adapter" if self.run_dir else "base")
            yield Select([(t(m), m) for m in MODES], value=mode, allow_blank=False, id="chat-mode", compact=True)
            yield Label(t("temperature"))
            yield Input("0.0", id="chat-temp", compact=True)
            yield Label("top-p")
            yield Input("1.0", id="chat-top-p", compact=True)
            yield Label(t("max tokens"))
            yield Input("256", id="chat-max", compact=True)
        with Horizontal(id="chat-panes"):
            yield Transcript("base", t("base model"), id="pane-base")
            yield Transcript("adapter", t("with the run's adapter"), id="pane-adapter")
        yield Static(id="chat-status", classes="hint")
        yield Input(id="chat-prompt", placeholder=t("Type a message and press Enter"))
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._show_panes()
        self.generator()
        self.query_one("#chat-prompt", Input).focus()

    def on_unmount(self) -> None:
        self.cancel.set()
        self.jobs.put(None)

    def mode(self) -> str:
        return self.query_one("#chat-mode", Select).value

    def _show_panes(self) -> None:
        mode = self.mode()
        self.query_one("#pane-base").display = mode in ("base", "both")
        self.query_one("#pane-adapter").display = mode in ("adapter", "both")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "chat-mode":
            self._show_panes()

    # -- sending ----------------------------------------------------------------------------

    def _number(self, widget_id: str, kind, low, high):
        text = self.query_one(widget_id, Input).value.strip()
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(t("{name} must be a number between {low} and {high}, not {value!r}.", name=widget_id.removeprefix("#chat-"), low=low, high=high, value=text))
        return value

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "chat-prompt" or not event.value.strip():
            return
        if self.pending:
            self.notify(t("Wait for the reply (or stop it with Ctrl+X)."), severity="warning")
            return
        try:
            temp = self._number("#chat-temp", float, 0.0, 5.0)
            top_p = self._number("#chat-top-p", float, 0.0, 1.0)
            max_tokens = self._number("#chat-max", int, 1, 100_000)
        except ValueError as e:
            self.app.show_error(str(e))
            return
        model = self.query_one("#chat-model", Input).value.strip()
        run = self.query_one("#chat-run", Input).value.strip() or None
        mode = self.mode()
        if mode != "base" and not run:
            self.app.show_error(t("chat: the adapter side needs a run dir (a finished run, or one with an adapter/ folder)."))
            return
        if mode != "adapter" and not model:
            self.app.show_error(t("chat: the base side needs a model (a Hub id or a folder)."))
            return
        targets = []
        if mode in ("base", "both"):
            targets.append(("base", model, None))
        if mode in ("adapter", "both"):
            targets.append(("adapter", model, run))
        text = event.value.strip()
        event.input.value = ""
        messages = {}
        for side, _, _ in targets:
            pane = self.query_one(f"#pane-{side}", Transcript)
            pane.add_user(text)
            messages[side] = list(pane.messages)
        self.cancel.clear()
        self.pending = len(targets)
        self.jobs.put(Job(targets, messages, max_tokens, temp, top_p))

    # -- the worker -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="chat", exit_on_error=False)
    def generator(self) -> None:
        """Loads models and streams replies for queued jobs, all on this one thread."""
        worker = get_current_worker()
        backend = self.app.chat_backend
        loaded: dict = {}
        while not worker.is_cancelled:
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if job is None:
                return
            wanted = {(model, adapter) for _, model, adapter in job.targets}
            for key in [k for k in loaded if k not in wanted]:  # keep at most the models in use
                del loaded[key]
            for side, model, adapter in job.targets:
                try:
                    key = (model, adapter)
                    if key not in loaded:
                        self.post_message(ChatStatus(t("loading {what}…", what=adapter or model)))
                        loaded[key] = backend.load(model, adapter)
                        self.post_message(ChatStatus(""))
                    for piece in backend.stream(loaded[key], job.messages[side], max_tokens=job.max_tokens, temp=job.temp, top_p=job.top_p):
                        if self.cancel.is_set() or worker.is_cancelled:
                            break
                        self.post_message(ChatPiece(side, piece))
                except Exception as e:  # shown in the transcript; the worker keeps serving
                    from smolmac.tui.dialogs.error import describe_error

                    self.post_message(ChatStatus(""))
                    self.post_message(ChatFinished(side, describe_error(e)))
                    continue
                self.post_message(ChatFinished(side))

    def on_chat_piece(self, message: ChatPiece) -> None:
        self.query_one(f"#pane-{message.side}", Transcript).add_piece(message.text)

    def on_chat_finished(self, message: ChatFinished) -> None:
        self.query_one(f"#pane-{message.side}", Transcript).finish(message.error)
        self.pending = max(0, self.pending - 1)

    def on_chat_status(self, message: ChatStatus) -> None:
        self.query_one("#chat-status", Static).update(Text(message.text, style="dim"))

    # -- actions ----------------------------------------------------------------------------

    def action_cancel(self) -> None:
        self.cancel.set()

    def action_clear(self) -> None:
        if self.pending:
            return
        for pane in self.query(Transcript):
            pane.clear()

    def action_mode(self) -> None:
        select = self.query_one("#chat-mode", Select)
        select.value = MODES[(MODES.index(select.value) + 1) % len(MODES)]

    def action_back(self) -> None:
        self.cancel.set()
        self.app.pop_screen()



def open_chat(app, run_dir: str | Path | None, stage: str | None = None) -> None:
    """Open the chat on a run (its base and its trained model) or a pipeline stage."""
    from smolmac.pipeline import run_models

    if run_dir is None:
        app.push_screen(ChatScreen())
        return
    refs = [r for r in run_models(run_dir) if stage is None or r.stage == stage] if Path(run_dir).is_dir() else []
    trained = next((r for r in reversed(refs) if r.kind == "trained"), None)
    base = refs[0].model if refs else None
    if trained is None:
        app.push_screen(ChatScreen(model=base))
        return
    where = Path(run_dir) / stage if stage else Path(run_dir)
    app.push_screen(ChatScreen(model=trained.model if trained.adapter else base, run_dir=str(where)))
