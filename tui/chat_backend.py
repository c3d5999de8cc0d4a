"""Chat generation through smolmac.generate. Every call runs on the chat worker's thread, which
creates and uses its own MLX arrays (MLX arrays belong to the thread that made them)."""

from __future__ import annotations

from smolmac.errors import UserError
from smolmac.tui.i18n import t


class MLXChatBackend:
    """`load(model, adapter) -> handle`; `stream(handle, messages, ...)` yields text pieces."""

    def load(self, model: str, adapter: str | None = None):
        from smolmac.generate import load_for_generation

        if not model and not adapter:
            raise UserError(t("chat: choose a model (a Hub id or a folder) or a run first."))
        return load_for_generation(model, adapter)

    def stream(self, handle, messages: list[dict], max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0):
        from smolmac.data import hf_tokenizer
        from smolmac.generate import stream

        model, tokenizer = handle
        # Base models without a chat template get the last user message as plain text.
        prompt = messages if getattr(hf_tokenizer(tokenizer), "chat_template", None) else messages[-1]["content"]
        yield from stream(model, tokenizer, prompt, max_tokens=max_tokens, temp=temp, top_p=top_p)
