"""Pretraining from scratch: documents, `{new: {preset: ...}}` models, a token cache of packed
sequences, and the task (next-token prediction, full parameters, MFU reported at each eval).

    smolmac train recipes/quickstart.yaml          # tokenizer -> pretrain -> sft -> orpo
    smolmac train recipe.yaml --set method=pretrain --set model.new.preset=micro

Text is tokenised once into `DIR/tokens/{train,valid}.bin` (numpy memmaps, uint16 when the vocab
fits) with documents joined by the end-of-text token, then cut into fixed sequences of
`train.max_seq_len + 1` tokens; a re-run or resume reuses the cache. As in nanoGPT and SmolLM,
attention crosses document boundaries inside a sequence; the separator tells the model where
one document ends. The validation documents are also kept as text rows, `DIR/tokens/valid.jsonl`:
the retain set (eval.retain) of a pipeline's later stages.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from smolmac.batches import PackedBatches, pace
from smolmac.data import is_local, load_documents
from smolmac.errors import UserError
from smolmac.quickstart import resolve as resolve_path

# ---------------------------------------------------------------------------------------------
# New models


def check_context(cfg, model_config: dict):
    ctx = model_config["max_position_embeddings"]
    if cfg.train.max_seq_len > ctx:
        raise UserError(f"train.max_seq_len: {cfg.train.max_seq_len} is above the model's context of {ctx} tokens; lower train.max_seq_len or set model.new.context.")


def build_new_model(cfg, run_dir: Path) -> Path:
    """Build `model: {new: ...}` in `run_dir/init` (reused when it exists, so resume is exact).

    The tokenizer comes from `tokenizer.path` (a directory or Hub id, copied into the run) or is
    trained on `tokenizer.data` / `data.train` into `run_dir/tokenizer`.
    """
    from smolmac.models import new_model, preset_config

    run_dir = Path(run_dir)
    spec = dict((cfg.model or {}).get("new") or {})
    check_context(cfg, preset_config(spec, 256, None, None, None))  # unknown preset / context first
    init = run_dir / "init"
    if (init / "config.json").is_file() and list(init.glob("model*.safetensors")):
        return init
    tok_dir = run_dir / "tokenizer"
    if cfg.tokenizer.path:
        src = resolve_path(cfg.tokenizer.path)
        if Path(src).expanduser().is_dir():
            tok_dir = Path(src).expanduser()
        elif not (tok_dir / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            try:
                AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code).save_pretrained(str(tok_dir))
            except OSError as e:
                raise UserError(f"tokenizer.path: cannot load a tokenizer from '{src}' ({str(e).splitlines()[0]}); give a tokenizer directory or a Hub id.") from None
    elif not (tok_dir / "tokenizer.json").is_file():
        from smolmac.methods.tokenizer import train_tokenizer_from

        train_tokenizer_from(cfg, tok_dir)
    return new_model(spec, tok_dir, init, seed=cfg.train.seed)


# ---------------------------------------------------------------------------------------------
# Token cache and packed batches


def _sep_id(hf) -> int:
    """Document separator: <|endoftext|> when the vocab has it (GPT-2/SmolLM style), else EOS."""
    tid = hf.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(tid, int) and tid >= 0 and tid != hf.unk_token_id:
        return tid
    if hf.eos_token_id is None:
        raise UserError("tokenizer: it has neither <|endoftext|> nor an EOS token to separate documents; use a tokenizer with one.")
    return int(hf.eos_token_id)


def _write_tokens(docs, hf, sep: int, path: Path, dtype, bos: list[int] = ()) -> tuple[int, int]:
    """Tokenise documents in chunks (the Rust tokenizer batches in parallel) into a flat file:
    each document as `encode_plain` gives it (the tokenizer's BOS, if any, then its tokens, as
    generation encodes an untemplated prompt), then the separator."""
    tmp = path.with_suffix(".tmp")
    n_tokens = n_docs = 0
    with tmp.open("wb") as f:
        chunk: list[str] = []

        def flush():
            nonlocal n_tokens
            for ids in hf(chunk, add_special_tokens=False)["input_ids"]:
                ids = ids if not bos or ids[: len(bos)] == list(bos) else [*bos, *ids]
                arr = np.asarray(ids + [sep], dtype=dtype)
                arr.tofile(f)
                n_tokens += len(arr)
            chunk.clear()

        for text in docs:
            if text and text.strip():
                chunk.append(text)
                n_docs += 1
            if len(chunk) >= 1000:
                flush()
        if chunk:
            flush()
    tmp.replace(path)
    return n_tokens, n_docs


def token_cache(cfg, tokenizer, run_dir: Path) -> tuple[np.memmap, np.memmap | None, dict]:
    """Tokenise train/valid text once into `run_dir/tokens/`; reuse it when nothing changed.

    Returns (train tokens, valid tokens or None, meta).
    """
    from smolmac import data as data_mod
    from smolmac.data import bos_ids, hf_tokenizer

    d = cfg.data
    if not d.train:
        raise UserError("data.train: no corpus given; set data.train to a text file, folder or Hub dataset id (method pretrain).")
    hf = hf_tokenizer(tokenizer)
    vocab = len(hf)
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    tok_json = json.dumps(hf.get_vocab(), sort_keys=True).encode()
    key = {
        "train": str(d.train), "valid": d.valid, "config": d.config, "split": d.split, "valid_split": d.valid_split,
        "max_rows": d.max_rows, "columns": d.columns, "seed": cfg.train.seed, "budget": None,
        "tokenizer": hashlib.sha1(tok_json).hexdigest(), "dtype": np.dtype(dtype).name,
    }
    bos = bos_ids(tokenizer)
    if bos:  # a BOS-adding tokenizer starts every document with it (older caches had no key)
        key["bos"] = bos
    train_spec = resolve_path(d.train)
    streamed = not is_local(train_spec)
    if streamed and cfg.train.steps:  # stream only as many tokens as the steps will consume
        key["budget"] = cfg.train.steps * cfg.train.grad_accum * cfg.train.batch_size * cfg.train.max_seq_len + 1
    out = Path(run_dir) / "tokens"
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return _open(out / "train.bin", dtype), (_open(out / "valid.bin", dtype) if meta["valid_tokens"] else None), meta
    out.mkdir(parents=True, exist_ok=True)
    sep = _sep_id(hf)
    if streamed:
        docs = _budgeted(load_documents(train_spec, d, d.split, tokenizer, d.max_rows), hf, key["budget"])
        if isinstance(d.valid, float):
            docs, valid_docs = _stream_split(docs, d.valid, cfg.train.seed)
        else:
            valid_docs = None
    else:
        rows = list(load_documents(train_spec, d, d.split, tokenizer, d.max_rows))
        valid_docs = None
        if isinstance(d.valid, float):
            rows, valid_docs = data_mod.split_valid(rows, d.valid, cfg.train.seed)
        docs = rows
    if isinstance(d.valid, str):
        valid_docs = load_documents(d.valid, d, d.valid_split or d.split, tokenizer)
    elif d.valid_split and valid_docs is None:
        valid_docs = load_documents(d.train, d, d.valid_split, tokenizer)
    n_train, docs_train = _write_tokens(docs, hf, sep, out / "train.bin", dtype, bos)
    n_valid = docs_valid = 0
    if valid_docs is not None:
        # the validation documents are also kept as text rows: a pipeline's later stages measure
        # forgetting on them (their eval.retain, see smolmac/pipeline.py)
        n_valid, docs_valid = _write_tokens(_kept_as_rows(valid_docs, out / "valid.jsonl"), hf, sep, out / "valid.bin", dtype, bos)
    meta = {"key": key, "train_tokens": n_train, "valid_tokens": n_valid, "train_docs": docs_train, "valid_docs": docs_valid, "sep_id": sep}
    meta_path.write_text(json.dumps(meta, indent=2))
    return _open(out / "train.bin", dtype), (_open(out / "valid.bin", dtype) if n_valid else None), meta


def _kept_as_rows(docs, path: Path):
    """Yield `docs` while writing them to `path` as {"text": ...} rows (renamed into place once
    every document has passed)."""
    tmp = path.with_suffix(".tmp-rows")
    with tmp.open("w", encoding="utf-8") as f:
        for text in docs:
            if text and text.strip():
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            yield text
    tmp.replace(path)


def _open(path: Path, dtype):
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _budgeted(docs, hf, budget: int | None):
    """Stop a streamed corpus once it has given about `budget` tokens (5% slack for the split)."""
    total = 0
    for text in docs:
        yield text
        if budget is not None:
            total += len(hf(text, add_special_tokens=False)["input_ids"]) + 1
            if total >= budget * 1.05:
                return


def _stream_split(docs, fraction: float, seed: int):
    """Split a streamed corpus into train/valid by a seeded coin per document. The validation
    list fills while the train part is consumed (it is written first), so it is read after."""
    rng = np.random.default_rng(seed)
    valid: list[str] = []

    def train_part():
        for text in docs:
            if rng.random() < fraction:
                valid.append(text)
            else:
                yield text

    return train_part(), valid


# ---------------------------------------------------------------------------------------------
# The task


def build_task(cfg, model, tokenizer, run_dir):
    """`method: pretrain`: packed next-token prediction on a text corpus (full parameters)."""
    from smolmac.evaluation import evaluate_loss
    from smolmac.flops import flops_per_token, mfu, model_dims, peak_flops
    from smolmac.losses import lm_loss
    from smolmac.trainer import Task, list_checkpoints

    t = cfg.train
    train_tokens, valid_tokens, meta = token_cache(cfg, tokenizer, Path(run_dir))
    need = t.max_seq_len + 1
    if len(train_tokens) < need:
        raise UserError(f"data.train: the corpus has {len(train_tokens)} tokens, fewer than one sequence of train.max_seq_len + 1 = {need}; add text or lower train.max_seq_len.")
    if valid_tokens is not None and len(valid_tokens) < need:
        raise UserError(f"data.valid: the validation text has {len(valid_tokens)} tokens, fewer than one sequence of {need}; use a larger data.valid fraction or lower train.max_seq_len.")
    train = PackedBatches(train_tokens, t.max_seq_len, t.batch_size, t.seed)
    valid = PackedBatches(valid_tokens, t.max_seq_len, t.batch_size, t.seed) if valid_tokens is not None else None
    config = model_dims(model)
    notes = {"train_tokens": int(meta["train_tokens"]), "valid_tokens": int(meta["valid_tokens"]),
             "sequences": train.n_seq, "documents": int(meta["train_docs"])}
    flops_token = None
    if config:
        flops_token = flops_per_token(config, t.max_seq_len)
        notes.update(flops_per_token=flops_token, peak_tflops=round(peak_flops() / 1e12, 4))
    from smolmac.distributed import current

    if valid is not None and current().main and not list_checkpoints(Path(run_dir) / "checkpoints"):
        # Val loss of the untrained model: the "before" of what pretraining learned (process 0
        # of a group reports it; the others skip it).
        loss, _ = evaluate_loss(model, valid, lm_loss, cfg.eval.batches)
        notes.update(init_val_loss=round(loss, 6), init_val_ppl=round(math.exp(min(loss, 50)), 4))
    clock = {"since": time.perf_counter()}

    def extra(_model) -> dict:
        tps = pace(train, clock["since"])
        clock["since"] = time.perf_counter()
        if tps is None or flops_token is None:
            return {}
        return {"tokens_per_second": round(tps, 1), "mfu": round(mfu(tps, flops_token, peak_flops()), 4)}

    valid_rows = int(meta["valid_docs"]) if valid is not None else 0
    return Task(train, valid, lm_loss, int(meta["train_docs"]), valid_rows, 0, notes=notes, evaluate_extra=extra)


