"""Chat with a base model and any number of adapters side by side on the same prompt: one column
for the base and one per adapter (runs, mlx-lm or PEFT adapter dirs, `NAME=DIR` to name them).
Opened on a run or a pipeline (`open_chat`), it offers that run's models to pick from (the
untrained, pretrained, fine-tuned and aligned models, a LoRA stage as base + adapter): the same
prompt goes to each, and a pretrained-only model continues plain text (its title says so).

The base model is loaded once and the adapters are attached to it by name (switched per reply,
no weights reloaded). Generation runs in ONE long-lived thread worker (`generator`): it loads the
model and streams replies on its own thread, so every MLX array it makes is created and used
there; the UI sends it jobs through a queue and it answers with ChatPiece/ChatFinished messages.
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
from textual.containers import Horizontal, HorizontalScroll, VerticalScroll
from textual.screen import Screen
from textual.widgets import Checkbox, Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from smolmac.errors import UserError
from smolmac.tui.i18n import t
from smolmac.tui.messages import ChatFinished, ChatPiece, ChatStatus

MODES = ("base", "adapter", "both")


@dataclass
class Job:
    model: str  # the base model ("" = the base the first adapter records)
    adapters: dict  # name -> run or adapter dir: the adapter columns
    targets: list  # [(side, adapter name or None for the base)]
    messages: dict  # side -> message list
    max_tokens: int
    temp: float
    top_p: float
    plain: frozenset = frozenset()  # columns (adapter names, "base") prompted as plain text


MAX_PICKED = 4  # columns of models picked from a run or pipeline


def column_name(ref) -> str:
    """A picked model's column name: its stage, or "untrained" / "base"."""
    return {"init": "untrained", "base": "base"}.get(ref.kind, ref.stage or ref.label)


def chat_setup(refs: list) -> dict:
    """The chat's fields for models picked from a run or pipeline (smolmac.pipeline.ModelRef):
    `model` (the base a LoRA stage's adapter attaches to), `adapters` ("NAME=DIR, ..."), `mode`,
    pane `titles` and the `plain` columns (no chat template: pretrained-only or untrained).

    The first picked model is the base pane when it is that base, or the model the run started
    from (loaded once); every other model is a column: an adapter on the base, or a model of its
    own (a full stage, `init/`, the `fused/` model of a LoRA stage whose base is another one).
    """
    lora = [r for r in refs if r.adapter]
    base = lora[0].model if lora else (refs[0].model if refs and refs[0].kind == "base" else "")
    columns, titles, plain = [], {}, set()
    use_base = bool(refs) and not refs[0].adapter and refs[0].model == base
    for i, r in enumerate(refs):
        title = r.label + (" · " + t("plain text") if not r.chat else "")  # no chat template
        name = "base" if i == 0 and use_base else column_name(r)
        if name != "base" or not use_base:
            if r.adapter and r.model != base:
                fused = Path(r.adapter).parent / "fused"
                path = str(fused if (fused / "config.json").is_file() else r.adapter)
            else:
                path = r.adapter or r.model
            columns.append(f"{name}={path}")
        titles[name] = title
        if not r.chat:
            plain.add(name)
    return {"model": base, "adapters": ", ".join(columns), "mode": "both" if use_base else "adapter", "titles": titles, "plain": plain}


def adapter_columns(text: str) -> list[tuple[str, str, str]]:
    """The adapter columns of the adapters field ("runs/a, style=runs/b"): [(side, name, path)].

    Sides are the pane ids: "adapter" for the first column, then "adapter-2", ...
    """
    from smolmac.adapters import parse_adapter_specs

    items = [x.strip() for x in text.split(",") if x.strip()]
    specs = parse_adapter_specs(items, t("adapters"))
    return [("adapter" if i == 0 else f"adapter-{i + 1}", name, path) for i, (name, path) in enumerate(specs.items())]


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
    """Prompt at the bottom, one transcript per column (the base, each adapter) above, model,
    adapters and sampling settings at the top."""

    BINDINGS = [
        Binding("escape", "back", t("Back")),
        Binding("ctrl+x", "cancel", t("Stop reply"), priority=True),
        Binding("ctrl+l", "clear", t("Clear"), priority=True),
        Binding("ctrl+o", "mode", t("Base / adapter / both"), priority=True),
    ]

    def __init__(self, model: str | None = None, run_dir: str | None = None, choices: list | None = None, picked: list | None = None):
        """Args: model: the base model; run_dir: one run or adapter dir, or several comma-separated
        (each optionally NAME=DIR), one column each; choices: the models of a run or pipeline
        (ModelRef) to pick 2-4 from, `picked` (their indices) first."""
        super().__init__()
        self.model, self.run_dir = model, run_dir
        self.jobs: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self.pending = 0
        self.columns: list[tuple[str, str, str]] = []  # (side, adapter name, path), shown now
        self.choices = choices or []
        self.picked = list(picked or [])
        self.titles: dict[str, str] = {}  # pane titles of picked models (adapter name or "base")
        self.plain: set[str] = set()
        self.initial_mode = None
        if self.choices:
            self._apply_setup(chat_setup([self.choices[i] for i in self.picked]))

    def _apply_setup(self, setup: dict) -> None:
        self.model, self.run_dir, self.initial_mode = setup["model"], setup["adapters"], setup["mode"]
        self.titles, self.plain = setup["titles"], setup["plain"]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-settings"):
            yield Label(t("model"))
            yield Input(self.model or "", id="chat-model", compact=True, placeholder=t("Hub id or folder"))
            yield Label(t("adapters"))
            yield Input(self.run_dir or "", id="chat-run", compact=True, placeholder=t("run dirs or NAME=DIR, comma-separated (optional)"))
        with Horizontal(id="chat-sampling"):
            yield Label(t("mode"))
            mode = self.initial_mode or ("both" if self.run_dir and self.model else ("adapter" if self.run_dir else "base"))
            yield Select([(t(m), m) for m in MODES], value=mode, allow_blank=False, id="chat-mode", compact=True)
            yield Label(t("temperature"))
            yield Input("0.0", id="chat-temp", compact=True)
            yield Label("top-p")
            yield Input("1.0", id="chat-top-p", compact=True)
            yield Label(t("max tokens"))
            yield Input("256", id="chat-max", compact=True)
        if self.choices:
            with HorizontalScroll(id="chat-pick"):
                yield Label(t("models"))
                for i, ref in enumerate(self.choices):
                    yield Checkbox(column_name(ref), i in self.picked, id=f"pick-{i}", compact=True, tooltip=ref.label)
        with Horizontal(id="chat-panes"):
            yield Transcript("base", self.titles.get("base", t("base model")), id="pane-base")
            try:
                self.columns = adapter_columns(self.run_dir or "")
            except UserError:  # a bad field shows its error when a message is sent
                self.columns = []
            yield from self._adapter_panes()
        yield Static(id="chat-status", classes="hint")
        yield Input(id="chat-prompt", placeholder=t("Type a message and press Enter"))
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._show_panes()
        self.generator()
        self.query_one("#chat-prompt", Input).focus()
        if self.choices:
            self._warm()

    def _warm(self) -> None:
        """Load the picked models while the user types (a job with no reply to give)."""
        try:
            adapters = {name: path for _, name, path in adapter_columns(self.run_dir or "")}
        except Exception:  # a bad field says why when a message is sent
            return
        self.jobs.put(Job(self.model or "", adapters, [], {}, 1, 0.0, 1.0))

    def on_unmount(self) -> None:
        self.cancel.set()
        self.jobs.put(None)

    def mode(self) -> str:
        return self.query_one("#chat-mode", Select).value

    def _title(self, name: str) -> str:
        if name in self.titles:
            return self.titles[name]
        single = len(self.columns) == 1 and "=" not in (self.run_dir or "")
        return t("with the run's adapter") if single else t("adapter {name}", name=name)

    def _adapter_panes(self) -> list[Transcript]:
        return [Transcript(side, self._title(name), id=f"pane-{side}") for side, name, _ in self.columns]

    async def _sync_columns(self, columns: list) -> None:
        """One pane per adapter of the field: a column whose adapter is unchanged keeps its
        conversation, a changed one starts afresh, extra ones go."""
        old, self.columns = self.columns, columns
        panes = self.query_one("#chat-panes")
        for i, (side, name, path) in enumerate(columns):
            if i < len(old) and old[i] == (side, name, path):
                self.query_one(f"#pane-{side}", Transcript).border_title = self._title(name)
                continue
            if i < len(old):
                await self.query_one(f"#pane-{side}").remove()
            await panes.mount(Transcript(side, self._title(name), id=f"pane-{side}"), after=i)
        for side, _, _ in old[len(columns):]:
            await self.query_one(f"#pane-{side}").remove()
        self._show_panes()

    def _show_panes(self) -> None:
        mode = self.mode()
        for pane in self.query(Transcript):
            pane.display = mode in ("base", "both") if pane.side == "base" else mode in ("adapter", "both")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "chat-mode":
            self._show_panes()

    async def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        """Pick 2-4 of the run's models: the fields and the columns follow."""
        i = int(event.checkbox.id.removeprefix("pick-"))
        picked = [j for j in self.picked if j != i] + ([i] if event.value else [])
        if len(picked) > MAX_PICKED:
            with event.checkbox.prevent(Checkbox.Changed):
                event.checkbox.value = False
            self.notify(t("Pick at most {n} models; untick one first.", n=MAX_PICKED), severity="warning")
            return
        self.picked = sorted(picked)
        if not self.picked:
            return
        self._apply_setup(chat_setup([self.choices[j] for j in self.picked]))
        self.query_one("#chat-model", Input).value = self.model
        self.query_one("#chat-run", Input).value = self.run_dir
        with self.prevent(Select.Changed):
            self.query_one("#chat-mode", Select).value = self.initial_mode
        self.query_one("#pane-base", Transcript).border_title = self.titles.get("base", t("base model"))
        await self._sync_columns(adapter_columns(self.run_dir))
        self._warm()

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

    async def on_input_submitted(self, event: Input.Submitted) -> None:
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
        self.run_dir = self.query_one("#chat-run", Input).value.strip()
        try:
            columns = adapter_columns(self.run_dir)
        except UserError as e:
            self.app.show_error(str(e))
            return
        mode = self.mode()
        if mode != "base" and not columns:
            self.app.show_error(t("chat: the adapter side needs a run dir (a finished run, or one with an adapter/ folder)."))
            return
        if mode != "adapter" and not model:
            self.app.show_error(t("chat: the base side needs a model (a Hub id or a folder)."))
            return
        await self._sync_columns(columns)
        targets = [("base", None)] if mode in ("base", "both") else []
        if mode in ("adapter", "both"):
            targets += [(side, name) for side, name, _ in columns]
        text = event.value.strip()
        event.input.value = ""
        messages = {}
        for side, _ in targets:
            pane = self.query_one(f"#pane-{side}", Transcript)
            pane.add_user(text)
            messages[side] = list(pane.messages)
        self.cancel.clear()
        self.pending = len(targets)
        self.jobs.put(Job(model, {name: path for _, name, path in columns}, targets, messages, max_tokens, temp, top_p, frozenset(self.plain)))

    # -- the worker -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="chat", exit_on_error=False)
    def generator(self) -> None:
        """Loads the base once, attaches the columns' adapters and streams replies for queued
        jobs, all on this one thread."""
        from smolmac.tui.dialogs.error import describe_error

        worker = get_current_worker()
        backend = self.app.chat_backend
        handle, base, attached = None, None, {}  # attached: name -> path
        while not worker.is_cancelled:
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if job is None:
                return
            failed: dict = {}  # side or adapter name -> error shown in that column
            try:
                if handle is None or base != job.model:
                    handle, attached = None, {}  # let the old model go before loading the next
                    self.post_message(ChatStatus(t("loading {what}…", what=job.model or next(iter(job.adapters.values()), ""))))
                    handle, base = backend.load(job.model, job.adapters), job.model
                for name in [n for n in attached if job.adapters.get(n) != attached[n]]:
                    backend.detach(handle, name)
                    del attached[name]
                for name, path in job.adapters.items():
                    if name not in attached:
                        self.post_message(ChatStatus(t("loading {what}…", what=path)))
                        try:
                            backend.attach(handle, name, path)
                            attached[name] = path
                        except Exception as e:  # only this adapter's column fails
                            failed[name] = describe_error(e)
                info = backend.inspect(handle)
                sizes = [f"{n} {mb:.2f} MB" for n, mb in info["adapters"].items()]
                if info["base_mb"] or not sizes:  # no base loaded when every column is a model of its own
                    sizes.insert(0, t("base {mb} MB", mb=f"{info['base_mb']:.2f}"))
                self.post_message(ChatStatus(" · ".join(sizes)))
            except Exception as e:  # the base did not load: every column says why
                handle = None
                self.post_message(ChatStatus(""))
                for side, _ in job.targets:
                    self.post_message(ChatFinished(side, describe_error(e)))
                continue
            for side, name in job.targets:
                if name in failed:
                    self.post_message(ChatFinished(side, failed[name]))
                    continue
                try:
                    plain = {"chat": False} if (name or "base") in job.plain else {}  # no chat template
                    for piece in backend.stream(handle, job.messages[side], adapter=name, max_tokens=job.max_tokens, temp=job.temp, top_p=job.top_p, **plain):
                        if self.cancel.is_set() or worker.is_cancelled:
                            break
                        self.post_message(ChatPiece(side, piece))
                except Exception as e:  # shown in the transcript; the worker keeps serving
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
    """Open the chat on a run or a pipeline with its models to pick from: a run's base and trained
    model; a pipeline's last three models, or a stage with the model it started from."""
    from smolmac.pipeline import run_models
    from smolmac.tui.dialogs.error import describe_error

    if run_dir is None or not Path(run_dir).is_dir():
        app.push_screen(ChatScreen())
        return
    try:
        refs = run_models(run_dir)
    except Exception as e:  # an unreadable run dir: say why, open an empty chat
        app.show_error(describe_error(e))
        return
    if not refs:
        app.notify(t("{name} has no model to chat with yet.", name=Path(run_dir).name), severity="warning")
        app.push_screen(ChatScreen())
        return
    at = next((i for i, r in enumerate(refs) if r.stage == stage and r.kind == "trained"), None) if stage else None
    picked = [max(0, at - 1), at] if at is not None else list(range(max(0, len(refs) - 3), len(refs)))
    app.push_screen(ChatScreen(choices=refs, picked=sorted(set(picked))))
