"""Messages that worker threads post back to the UI thread (post_message is thread-safe)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class ChatPiece(Message):
    """A streamed piece of a reply in one column ("base", "adapter", "adapter-2", ...)."""

    def __init__(self, side: str, text: str):
        super().__init__()
        self.side, self.text = side, text


class ChatFinished(Message):
    """A reply is complete (or failed with `error`)."""

    def __init__(self, side: str, error: str | None = None):
        super().__init__()
        self.side, self.error = side, error


class ChatStatus(Message):
    """Progress of the chat worker ("loading model ...", "ready")."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text


class JobLog(Message):
    """A line of progress from an export or upload job."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text


class JobDone(Message):
    """An export/upload job finished; `result` is what the engine returned."""

    def __init__(self, job: str, result: Any):
        super().__init__()
        self.job, self.result = job, result


class PreviewReady(Message):
    """The data preview (rows, format, rendered example) for the New run form."""

    def __init__(self, preview: dict):
        super().__init__()
        self.preview = preview


class MemoryReady(Message):
    """A memory estimate (or None with a note) for the New run form."""

    def __init__(self, estimate: Any, note: str = ""):
        super().__init__()
        self.estimate, self.note = estimate, note


class ModelsListed(Message):
    """Models found in the Hugging Face cache."""

    def __init__(self, models: list[str]):
        super().__init__()
        self.models = models


class InspectReady(Message):
    """What Look inside loaded for a model: tokenizer, anatomy, training shares, embeddings
    (numpy, so the UI thread may use them), or `error`."""

    def __init__(self, data: dict | None, error: str | None = None):
        super().__init__()
        self.data, self.error = data, error
