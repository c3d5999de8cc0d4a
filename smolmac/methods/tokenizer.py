"""`method: tokenizer`: train a byte-level tokenizer on a corpus into `RUN_DIR/tokenizer/` (the
first stage of a from-scratch pipeline; smolmac/tokenizer.py does the training itself).

    smolmac train recipes/quickstart.yaml      # stage 1 of 4
"""

from __future__ import annotations

import time
from pathlib import Path

from smolmac import events as ev
from smolmac.data import is_local, load_documents
from smolmac.errors import UserError
from smolmac.quickstart import resolve as resolve_path

TOKENIZER_DOC_CAP = 200_000  # documents read from a streamed Hub dataset to train a tokenizer


def tokenizer_corpus(cfg) -> str:
    spec = cfg.tokenizer.data or cfg.data.train
    if not spec:
        raise UserError("tokenizer.data: no corpus to train the tokenizer on; set tokenizer.data or data.train (or reuse one with tokenizer.path).")
    return spec


def train_tokenizer_from(cfg, out_dir: Path) -> dict:
    """Train `cfg.tokenizer` on its corpus into `out_dir`; returns what was learned."""
    from smolmac.tokenizer import train_tokenizer

    spec = tokenizer_corpus(cfg)
    limit = cfg.data.max_rows or (None if is_local(resolve_path(spec)) else TOKENIZER_DOC_CAP)
    texts = list(load_documents(spec, cfg.data, cfg.data.split, limit=limit))
    train_tokenizer(texts, out_dir, cfg.tokenizer.vocab_size, cfg.tokenizer.type, source=str(spec))
    return {"vocab_size": _vocab_size(out_dir), "documents": len(texts), "chars_per_token": chars_per_token(out_dir, texts)}


def _vocab_size(tok_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tok_dir)))


def chars_per_token(tok_dir: Path, texts: list[str], sample: int = 2000) -> float:
    """Compression of the tokenizer on (a sample of) the corpus: characters per token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    texts = texts[:sample]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return round(sum(map(len, texts)) / max(sum(map(len, ids)), 1), 3)


def finished(run_dir: Path) -> bool:
    """A tokenizer stage whose tokenizer is written and whose last event is `done`."""
    events = ev.read_events(Path(run_dir) / "events.jsonl")
    return bool(events) and events[-1]["type"] == "done" and (Path(run_dir) / "tokenizer" / "tokenizer.json").is_file()


def train_stage(cfg, run_dir: Path, log) -> Path:
    """Train the tokenizer into `run_dir/tokenizer`, reporting start and done events to `log`."""
    out = Path(run_dir) / "tokenizer"
    tic = time.perf_counter()
    log(ev.Start(step=0, total_steps=0, method="tokenizer", model="", trainable_params=0, total_params=0,
                 train_rows=0, valid_rows=0, extra={"vocab_size": cfg.tokenizer.vocab_size, "tokenizer_type": cfg.tokenizer.type}))
    learned = train_tokenizer_from(cfg, out)
    log(ev.Done(step=0, output=str(out), elapsed_s=round(time.perf_counter() - tic, 2), extra=learned))
    return out
