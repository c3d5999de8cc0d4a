"""Supervised fine-tuning: chat / prompt-completion / text rows, loss on assistant tokens."""

from __future__ import annotations

from smolmac import data
from smolmac.batches import Batches
from smolmac.data import hf_tokenizer
from smolmac.errors import UserError
from smolmac.losses import lm_loss
from smolmac.trainer import Task


def load_split_rows(cfg, method: str) -> tuple[str, list[dict], list[dict]]:
    """Train and validation rows (format-checked) for a recipe's data section."""
    d = cfg.data
    if not d.train:
        raise UserError(f"data.train: no training data given; set data.train to a file, folder or Hub dataset id (method {method}).")
    kind, rows = data.prepare_rows(data.load_rows(d.train, d.config, d.split), d, d.train)
    if d.max_rows:
        rows = rows[: d.max_rows]
    valid: list[dict] = []
    if isinstance(d.valid, float):
        rows, valid = data.split_valid(rows, d.valid, cfg.train.seed)
    elif isinstance(d.valid, str):
        _, valid = data.prepare_rows(data.load_rows(d.valid, d.config, d.valid_split or d.split), d, d.valid)
    elif d.valid_split:
        _, valid = data.prepare_rows(data.load_rows(d.train, d.config, d.valid_split), d, d.train)
    return kind, rows, valid


def pad_id(tokenizer) -> int:
    hf = hf_tokenizer(tokenizer)
    for tid in (hf.pad_token_id, hf.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def build_task(cfg, model, tokenizer, run_dir) -> Task:
    kind, rows, valid_rows = load_split_rows(cfg, "sft")
    if kind == "preference":
        raise UserError(f"{cfg.data.train}: preference rows (chosen/rejected) need method dpo or orpo, not sft.")
    t = cfg.train
    if kind != "text":
        data.check_room(tokenizer, t.max_seq_len)
    train_ex = data.tokenize_rows(tokenizer, kind, rows)
    train = Batches(train_ex, t.batch_size, t.max_seq_len, t.seed, t.packing, pad_id(tokenizer))
    valid = None
    if valid_rows:
        valid = Batches(data.tokenize_rows(tokenizer, kind, valid_rows), t.batch_size, t.max_seq_len, t.seed, False, pad_id(tokenizer))
    return Task(train, valid, lm_loss, len(rows), len(valid_rows), train.truncated, notes={"format": kind})
