"""The New run form's data preview: first rows, detected format, and one training example with
trained tokens highlighted and masked tokens dimmed (runs in a worker thread; no textual here).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from smolmac import data
from smolmac.errors import UserError
from smolmac.tui.i18n import t

TRAINED = ("bold black on #5fd75f", "bold black on #afffaf")  # alternate: token boundaries show
MASKED = "dim"
MAX_TOKENS = 400


def load_tokenizer(model: str):
    """The model's tokenizer only (mlx-lm downloads tokenizer files, never weights)."""
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    path = Path(model).expanduser()
    try:
        return mlx_load_tokenizer(path if path.exists() else model)
    except Exception as e:  # offline, unknown repo, broken files: all mean "no example"
        raise UserError(f"model: could not load the tokenizer of {model} ({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from None


def tokenizer_source(cfg) -> str | None:
    """Where the run's tokenizer comes from (None when the run trains its own)."""
    if isinstance(cfg.model, dict) or cfg.method == "tokenizer":
        return cfg.tokenizer.path
    return cfg.model or None


def render_example(tokenizer, example: data.Example, max_tokens: int = MAX_TOKENS) -> Text:
    """Token-by-token text: trained tokens highlighted, masked (prompt) tokens dimmed."""
    hf = data.hf_tokenizer(tokenizer)
    ids = [int(i) for i in example.tokens[:max_tokens]]
    text = Text()
    previous = ""
    for i, trained in enumerate(example.mask[:max_tokens]):
        # Decoding growing prefixes keeps multi-byte characters split across tokens intact.
        current = hf.decode(ids[: i + 1], skip_special_tokens=False)
        piece, previous = current[len(previous):], current
        piece = piece.replace("\n", "↵\n")
        text.append(piece, style=TRAINED[i % 2] if trained else MASKED)
    if len(example.tokens) > max_tokens:
        text.append(" " + t("… ({n} more tokens)", n=len(example.tokens) - max_tokens), style="italic")
    return text


def example_for(tokenizer, kind: str, row: dict) -> data.Example:
    """The tokenised training example of one row (for preference rows: prompt + chosen)."""
    if kind != "preference":
        return data.tokenize_rows(tokenizer, kind, [row])[0]
    where = row.get(data.WHERE, "data")
    chosen, prompt = row["chosen"], row.get("prompt")
    if prompt is not None:
        return data.tokenize_prompt_completion(tokenizer, prompt, chosen, where)
    if isinstance(chosen, list):
        return data.tokenize_chat(tokenizer, data.normalise_messages(chosen, where), where)
    return data.tokenize_text(tokenizer, chosen, where)


def load_preview(cfg, get_tokenizer=load_tokenizer, n_rows: int = 3) -> dict:
    """Rows, format and one rendered example for `cfg.data.train`.

    Returns a dict: source, rows (count), kind, head (first rows without bookkeeping keys),
    example (rich Text or None), tokens, trained (counts), note (why there is no example).
    """
    d = cfg.data
    rows = data.load_rows(d.train, d.config, d.split)
    kind, head = data.prepare_rows(rows[:50], d, d.train)
    out = {
        "source": d.train, "rows": len(rows), "kind": kind, "example": None, "tokens": 0, "trained": 0, "note": "",
        "head": [{k: v for k, v in r.items() if k != data.WHERE} for r in head[:n_rows]],
    }
    source = tokenizer_source(cfg)
    if not source:
        out["note"] = t("the tokenizer is trained when the run starts, so there is no example yet") if isinstance(cfg.model, dict) else t("choose a model to see a tokenised example")
        return out
    try:
        tokenizer = get_tokenizer(str(source))
        example = example_for(tokenizer, kind, head[0])
    except UserError as e:
        out["note"] = str(e)
        return out
    out["example"] = render_example(tokenizer, example)
    out["tokens"], out["trained"] = int(len(example.tokens)), int(example.mask.sum())
    if len(example.tokens) > cfg.train.max_seq_len + 1:
        out["note"] = t("this row is longer than train.max_seq_len and will be cut")
    return out
