"""Generation through mlx-lm: load a base model with an optional adapter (mlx-lm or PEFT
layout) and stream a completion for a prompt (chat-templated when the tokenizer has one).
"""

from __future__ import annotations

from pathlib import Path

from smolmac.data import hf_tokenizer
from smolmac.errors import UserError


def load_for_generation(model: str, adapter: str | None = None, dtype: str = "float32", pick: str = "last"):
    """(model, tokenizer) with the adapter applied: an mlx-lm adapter dir, a PEFT adapter dir,
    or a run dir (its adapter/, or its model/ for a full fine-tune).

    Args:
        pick: with a run dir, "last" (adapter/, model/) or "best" (adapter-best/, model-best/:
            the weights of its best evaluation, written by save.best).
    """
    from smolmac.models import load_model

    if pick not in ("last", "best"):
        raise UserError(f"--pick: '{pick}' is not a choice; use last or best.")
    if pick == "best":
        run = Path(adapter) if adapter else None
        if run is not None and (run / "model-best" / "config.json").is_file():
            return load_model(str(run / "model-best"), dtype)[:2]
        if run is None or not (run / "adapter-best" / "adapter_config.json").is_file():
            raise UserError(f"--pick best: {adapter or '--adapter'} is not a run dir with adapter-best/ or model-best/; set save.best (e.g. val_loss) in its recipe, or use --pick last.")
        adapter = str(run / "adapter-best")
    if adapter and (Path(adapter) / "model" / "config.json").is_file():
        return load_model(str(Path(adapter) / "model"), dtype)[:2]
    if adapter and not Path(adapter).is_dir():
        raise UserError(f"--adapter: {adapter} does not exist; point at a run dir or an adapter folder.")
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


def stream(model, tokenizer, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, chat: bool | None = None):
    """Yield text pieces of a completion (greedy when temp == 0)."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    text = format_prompt(tokenizer, prompt, chat)
    hf = hf_tokenizer(tokenizer)
    ids = hf.encode(text, add_special_tokens=not getattr(hf, "chat_template", None) or chat is False)
    sampler = make_sampler(temp=temp, top_p=top_p)
    for response in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
        yield response.text


def generate(model, tokenizer, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, chat: bool | None = None) -> str:
    return "".join(stream(model, tokenizer, prompt, max_tokens=max_tokens, temp=temp, chat=chat))
