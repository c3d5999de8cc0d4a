"""Generation through mlx-lm: load a base model with an optional adapter (mlx-lm or PEFT
layout) and stream a completion for a prompt (chat-templated when the tokenizer has one).

A prompt becomes exactly the tokens training puts before a completion (`prompt_ids`): the chat
template's output as is (the template writes BOS when the model has one), or, untemplated, the
tokenizer's BOS (if it adds one) and the text.
"""

from __future__ import annotations

from pathlib import Path

from smolmac.data import encode_plain, encode_templated, hf_tokenizer
from smolmac.errors import UserError


def load_for_generation(model: str, adapter: str | None = None, dtype: str = "float32"):
    """(model, tokenizer) with the adapter applied: an mlx-lm adapter dir, a PEFT adapter dir,
    or a run dir (its adapter/, or its model/ for a full fine-tune)."""
    from smolmac.models import load_model

    if adapter and (Path(adapter) / "model" / "config.json").is_file():
        return load_model(str(Path(adapter) / "model"), dtype)[:2]
    if adapter and not Path(adapter).is_dir():
        what = "is a file" if Path(adapter).exists() else "does not exist"
        raise UserError(f"--adapter: {adapter} {what}; point at a run dir or an adapter folder.")
    m, tok, _config, _path = load_model(model, dtype)
    if adapter:
        from smolmac.adapters import attach

        attach(m, adapter)
        m.eval()
    return m, tok


def format_prompt(tokenizer, prompt: str | list, chat: bool | None = None) -> str:
    """Chat-template a user prompt (or a message list) when the tokenizer has a template."""
    hf = hf_tokenizer(tokenizer)
    has_template = bool(getattr(hf, "chat_template", None))
    if chat is False or not has_template:
        if isinstance(prompt, list):
            raise UserError("generate: a message list needs a tokenizer with a chat template.")
        return prompt
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: str | list, chat: bool | None = None) -> list[int]:
    """The tokens the model is given for a prompt: the same tokens training puts before a
    completion (smolmac.data: `encode_templated` for chat-templated text, `encode_plain` else).

    Args:
        prompt: a user prompt, or a message list (needs a chat template).
        chat: None = use the chat template when the tokenizer has one; False = raw text.
    """
    text = format_prompt(tokenizer, prompt, chat)
    templated = chat is not False and bool(getattr(hf_tokenizer(tokenizer), "chat_template", None))
    return encode_templated(tokenizer, text) if templated else encode_plain(tokenizer, text)


def stream(model, tokenizer, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, chat: bool | None = None):
    """Yield text pieces of a completion (greedy when temp == 0)."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    ids = prompt_ids(tokenizer, prompt, chat)
    sampler = make_sampler(temp=temp, top_p=top_p)
    for response in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
        yield response.text


def generate(model, tokenizer, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, chat: bool | None = None) -> str:
    return "".join(stream(model, tokenizer, prompt, max_tokens=max_tokens, temp=temp, chat=chat))
