"""Look inside ("Smontiamo un Transformer"): the tokenizer (type text, see its tokens; the chat
template with the trained tokens highlighted), the anatomy (parameters per part, how much a run
trained, adapter vs model size on disk) and the embeddings (nearest tokens to a token, in the
base and in each trained model). The numbers are smolmac.inspection's, as in `smolmac inspect`.

A thread worker loads the chosen model(s) and hands back numpy arrays and the tokenizer (plain
Python objects), so typing and searching run on the UI thread without touching MLX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select, Static, TabbedContent, TabPane

from smolmac.tui.i18n import t
from smolmac.tui.messages import InspectReady

TOKEN_COLOURS = ("on #264f78", "on #4e3a6e", "on #2f5d3a", "on #6e4a2a", "on #5a2f4e", "on #2a5a5a")
DEFAULT_TEXT = "What is 7 + 5? Ciao, come stai?"
PART_NAMES = {"embedding": "embedding", "attention": "attention", "mlp": "MLP", "norms": "norms", "head": "head", "other": "other"}


def token_text(texts: list[str], ids: list[int] | None = None) -> Text:
    """Tokens side by side, one background colour each (ids under them when given)."""
    out = Text()
    for i, piece in enumerate(texts):
        out.append(piece.replace("\n", "↵") or "∅", style=TOKEN_COLOURS[i % len(TOKEN_COLOURS)])
    if ids is not None:
        out.append("\n")
        for i, tid in enumerate(ids):
            out.append(f"{tid} ", style=TOKEN_COLOURS[i % len(TOKEN_COLOURS)].replace("on ", ""))
    return out


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


class InspectScreen(Screen):
    """Tokenizer, Anatomy and Embeddings tabs for a model, a run or a pipeline."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", t("Back")),
        Binding("ctrl+t", "next_tab", t("Next tab"), priority=True),
    ]

    def __init__(self, target: str | Path | None = None, model: str | None = None):
        super().__init__()
        self.target = str(target) if target else ""
        self.wanted = model  # a stage or model label to open first
        self.refs: list = []
        self.data: dict | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(t("Look inside a Transformer"), classes="screen-title")
        with Horizontal(id="inspect-choose"):
            yield Label(t("model"))
            yield Select([], id="inspect-model", compact=True, prompt=t("choose a model"))
            yield Input(self.target, id="inspect-target", compact=True, placeholder=t("a run, a pipeline, a model folder or Hub id"))
        yield Static(id="inspect-status", classes="hint")
        with TabbedContent(id="inspect-tabs"):
            with TabPane(t("Tokenizer"), id="tab-tokens"), VerticalScroll():
                yield Input(DEFAULT_TEXT, id="inspect-text", compact=True, placeholder=t("type some text"))
                yield Static(id="inspect-tokens")
                yield Static(id="inspect-chat")
            with TabPane(t("Anatomy"), id="tab-anatomy"), VerticalScroll():
                yield Static(id="inspect-anatomy")
            with TabPane(t("Embeddings"), id="tab-embeddings"), VerticalScroll():
                yield Input("7", id="inspect-token", compact=True, placeholder=t("a token, e.g. cat"))
                yield Static(id="inspect-neighbours")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        if self.target:
            self.open_target(self.target)
        else:
            self._status(t("Type a run, a pipeline, a model folder or a Hub id above and press Enter."))

    def _status(self, text: str, style: str = "dim") -> None:
        self.query_one("#inspect-status", Static).update(Text(text, style=style))

    # -- choosing and loading ---------------------------------------------------------------

    def open_target(self, target: str) -> None:
        from smolmac.inspection import model_refs
        from smolmac.tui.dialogs.error import describe_error

        try:
            self.refs = model_refs(target)
        except Exception as e:  # a UserError naming the target, or an unreadable run dir
            self._status("✗ " + describe_error(e), "red")
            return
        self.target = target
        select = self.query_one("#inspect-model", Select)
        choice = next((r for r in self.refs if self.wanted and (r.label == self.wanted or r.stage == self.wanted) and r.kind == "trained"), self.refs[-1])
        with self.prevent(Select.Changed):
            select.set_options([(r.label, r.label) for r in self.refs])
            select.value = choice.label
        self.load(choice.label)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "inspect-target" and event.value.strip():
            self.wanted = None
            self.open_target(event.value.strip())
        elif event.input.id == "inspect-token":
            self.show_neighbours()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "inspect-text":
            self.show_tokens()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "inspect-model" and event.value is not Select.NULL:
            self.load(event.value)

    def load(self, label: str) -> None:
        self.data = None
        self._status(t("loading {what}…", what=label))
        self.load_model(self.refs, label)

    @work(thread=True, exclusive=True, group="inspect", exit_on_error=False)
    def load_model(self, refs: list, label: str) -> None:
        """Everything the tabs need, computed on this thread (MLX arrays stay here)."""
        from mlx.utils import tree_flatten

        from smolmac import inspection
        from smolmac.tui.dialogs.error import describe_error

        try:
            ref = next(r for r in refs if r.label == label)
            model, tokenizer, config, _path = inspection.load(ref)
            anatomy = inspection.anatomy(model, config)
            matrices, totals, shares = {}, {ref.model: anatomy["total"]}, []
            matrices[ref.model] = inspection.embedding_matrix(model)
            del model
            for r in refs:  # the other models' embeddings and sizes (each model loaded once)
                if r.model not in matrices:
                    other = inspection.load(r)[0]
                    matrices[r.model] = inspection.embedding_matrix(other)
                    totals[r.model] = sum(v.size for _, v in tree_flatten(other.parameters()))
                    del other
                share = inspection.training_share(r, totals[r.model])
                if share is not None:
                    shares.append(share)
            chat = inspection.chat_preview(tokenizer)
        except Exception as e:  # shown in the status line; the screen stays usable
            self.post_message(InspectReady(None, describe_error(e)))
            return
        self.post_message(InspectReady({"ref": ref, "tokenizer": tokenizer, "anatomy": anatomy, "training": shares,
                                        "matrices": matrices, "chat": chat}))

    def on_inspect_ready(self, message: InspectReady) -> None:
        if message.error:
            self._status("✗ " + message.error, "red")
            return
        self.data = message.data
        ref = self.data["ref"]
        how = t("chat template") if ref.chat else t("plain text (no chat training yet)")
        self._status(f"{ref.label}: {ref.model}" + (f" + {ref.adapter}" if ref.adapter else "") + f"  ·  {how}")
        self.show_tokens()
        self.show_anatomy()
        self.show_neighbours()

    # -- the tabs ---------------------------------------------------------------------------

    def show_tokens(self) -> None:
        if self.data is None:
            return
        from smolmac import inspection
        from smolmac.data import Example
        from smolmac.tui.preview import render_example

        text = self.query_one("#inspect-text", Input).value
        tok = self.data["tokenizer"]
        widget = self.query_one("#inspect-tokens", Static)
        if not text:
            widget.update(Text(t("Type some text to see its tokens."), style="dim"))
        else:
            r = inspection.tokenize(tok, text)
            head = Text.assemble((t("{n} tokens", n=r["count"]), "bold"), "  ·  ", t("{c} characters per token", c=r["chars_per_token"]), "\n")
            widget.update(head + token_text(r["texts"], r["ids"]))
        chat = self.data["chat"]
        chat_widget = self.query_one("#inspect-chat", Static)
        if chat is None:
            chat_widget.update(Text("\n" + t("This tokenizer has no chat template: the model only continues plain text."), style="dim"))
            return
        legend = Text.assemble("\n", (t("Chat template, a two-turn chat") + ": ", "bold"), (t("trained"), "bold black on #5fd75f"), " ", (t("masked"), "dim"),
                               "  ·  " + t("{n} tokens, {m} trained", n=chat["count"], m=chat["trained_count"]) + "\n")
        chat_widget.update(legend + render_example(tok, Example(np.array(chat["ids"]), np.array(chat["trained"]))))

    def show_anatomy(self) -> None:
        a = self.data["anatomy"]
        head = Text(f"{a['architecture']} · {t('{n} blocks', n=a['layers'])} · hidden {a['hidden']} · {a['heads']} heads ({a['kv_heads']} kv) · "
                    f"vocab {a['vocab']} · context {a['context']}" + (" · " + t("tied embeddings") if a["tied_embeddings"] else "") + (" · " + t("quantised") if a["quantized"] else ""), style="bold")
        table = Table(t("part"), t("parameters"), t("share"), t("one block"), box=None, padding=(0, 2))
        for part, n in a["parts"].items():
            if part in a["per_block"]:
                note = f"{a['per_block'][part]:,} × {a['layers']}"
            else:
                note = t("tied to the embedding") if part == "head" and not n else ""
            table.add_row(t(PART_NAMES[part]), f"{n:,}", f"{n / a['total']:.1%}", note)
        table.add_row(Text(t("total"), style="bold"), Text(f"{a['total']:,}", style="bold"), "100%", "")
        trained = Text()
        for s in self.data["training"]:
            trained.append(f"\n{s['model']}: ", style="bold")
            trained.append(t("{n} parameters trained ({share} of the model)", n=f"{s['trainable']:,}", share=f"{s['share']:.1%}"), style="green")
            if "adapter_bytes" in s:
                trained.append("  ·  " + t("adapter {a} on disk vs model {m}", a=_size(s["adapter_bytes"]), m=_size(s["model_bytes"])))
        if not self.data["training"]:
            trained.append("\n" + t("Nothing trained here yet: a base model."), style="dim")
        self.query_one("#inspect-anatomy", Static).update(Group(head, table, trained))

    def show_neighbours(self) -> None:
        if self.data is None:
            return
        from smolmac import inspection
        from smolmac.tui.dialogs.error import describe_error

        token = self.query_one("#inspect-token", Input).value.strip()
        widget = self.query_one("#inspect-neighbours", Static)
        if not token:
            widget.update(Text(t("Type a token and press Enter."), style="dim"))
            return
        tok = self.data["tokenizer"]
        columns, rows, seen = [], [], {}
        try:
            for ref in self.refs:
                if ref.model in seen:
                    continue
                seen[ref.model] = ref.label
                near = inspection.nearest(self.data["matrices"][ref.model], tok, token, top=8)
                columns.append(ref.label)
                rows.append([f"{x['text']!r} {x['cosine']:.2f}" for x in near["nearest"]])
        except Exception as e:  # a token that is several tokens: the sentence says which
            widget.update(Text("✗ " + describe_error(e), style="red"))
            return
        table = Table(*columns, box=None, padding=(0, 2), title=t("nearest tokens to {token!r} (cosine similarity of input embeddings)", token=near["token"]), title_justify="left")
        for i in range(len(rows[0]) if rows else 0):
            table.add_row(*[r[i] for r in rows])
        note = Text(t("An adapter leaves the embedding as it was: LoRA stages share their base's column."), style="dim") if any(r.adapter for r in self.refs) else Text()
        widget.update(Group(table, note))

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        order = ["tab-tokens", "tab-anatomy", "tab-embeddings"]
        tabs.active = order[(order.index(tabs.active) + 1) % len(order)]

