"""Chat generation through smolmac.generate: one base model loaded once, with the adapters of the
chat's columns attached to it by name (smolmac.adapters.AdapterSet). Every call runs on the chat
worker's thread, which creates and uses its own MLX arrays (MLX arrays belong to the thread that
made them)."""

from __future__ import annotations

from pathlib import Path

from smolmac.errors import UserError
from smolmac.tui.i18n import t


def _full_model(path: str) -> Path | None:
    """The model/ folder of a full fine-tune run, or a model folder itself (a pipeline's untrained
    `init/` or a LoRA stage's `fused/`): chatted with as a model of its own."""
    model = Path(path) / "model"
    if (model / "config.json").is_file():
        return model
    return Path(path) if (Path(path) / "config.json").is_file() else None


class Handle:
    """The base model with its adapters, and the models of full fine-tune runs by column name."""

    def __init__(self, base, full: dict | None = None):
        self.base, self.full = base, full or {}


class MLXChatBackend:
    """The chat screen's engine calls, all made on the chat worker's thread:

    `load(model, adapters) -> handle` loads the base once (`model`, or the base the first adapter
    records when it is empty); `attach(handle, name, path)` / `detach(handle, name)` add and drop
    adapter columns; `stream(handle, messages, adapter=name | None, ...)` yields text pieces;
    `inspect(handle)` gives {"base_mb", "adapters": {name: mb}} for the status line.
    """

    def load(self, model: str, adapters: dict):
        from smolmac.generate import base_of, load

        if not model and not adapters:
            raise UserError(t("chat: choose a model (a Hub id or a folder) or a run first."))
        lora = [p for p in adapters.values() if not _full_model(p)]
        if not model and not lora:
            return Handle(None)  # only full fine-tunes: each is loaded as a model of its own
        model = model or base_of(lora[0])
        if not model:
            raise UserError(t("chat: the base side needs a model (a Hub id or a folder)."))
        return Handle(load(model))

    def attach(self, handle, name: str, path: str) -> None:
        from smolmac.generate import load

        if _full_model(path):
            handle.full[name] = load(str(_full_model(path)))
        elif handle.base is None:
            raise UserError(t("chat: the base side needs a model (a Hub id or a folder)."))
        else:
            handle.base.add(name, path)

    def detach(self, handle, name: str) -> None:
        if handle.full.pop(name, None) is None and handle.base is not None and name in handle.base.adapters:
            handle.base.remove(name)

    def inspect(self, handle) -> dict:
        info = handle.base.inspect() if handle.base else {"base": {"mb": 0.0}, "adapters": {}}
        sizes = {n: a["mb"] for n, a in info["adapters"].items()}
        sizes.update({n: h.inspect()["base"]["mb"] for n, h in handle.full.items()})
        return {"base_mb": info["base"]["mb"], "adapters": sizes}

    def stream(self, handle, messages: list[dict], adapter: str | None = None, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0,
               chat: bool | None = None):
        """`chat=False`: the last user message continues as plain text, template or not (a
        pretrained-only model has not learned the template's turns)."""
        from smolmac.data import hf_tokenizer

        target, adapter = (handle.full[adapter], None) if adapter in handle.full else (handle.base, adapter)
        if target is None:
            raise UserError(t("chat: the base side needs a model (a Hub id or a folder)."))
        # Base models without a chat template get the last user message as plain text.
        templated = chat is not False and getattr(hf_tokenizer(target.tokenizer), "chat_template", None)
        prompt = messages if templated else messages[-1]["content"]
        yield from target.stream(prompt, max_tokens=max_tokens, temp=temp, top_p=top_p, adapter=adapter, chat=None if templated else False)
