"""Preference data for DPO, ORPO and any pairwise method: rows to (chosen, rejected) token pairs,
pair batches, and reference log-probs; methods/dpo.py and methods/orpo.py add their losses.

Rows are `{prompt, chosen, rejected}` (strings or message lists) or the implicit
`{chosen, rejected}` (the prompt is their longest common prefix). A pair is two token rows that
share the prompt; the loss masks cover the completion only, end-of-turn token included.

The DPO reference is the same weights with the adapters taken out (or, for full fine-tuning,
the initial weights): its summed completion log-probs are computed once per pair before
training and cached in the run directory, so resuming never recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from smolmac import data
from smolmac.adapters import adapters_disabled
from smolmac.batches import Batches, pad_to
from smolmac.data import WHERE, Example, hf_tokenizer
from smolmac.errors import UserError
from smolmac.losses import completion_logps
from smolmac.methods.sft import load_split_rows, pad_id
from smolmac.trainer import Task

# ---------------------------------------------------------------------------------------------
# Rows -> (prompt messages, chosen messages, rejected messages)


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _as_messages(value, role: str, key: str, where: str) -> list[dict]:
    """A string (one `role` message; "" = none) or a message list, as normalised messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}] if value else []
    if isinstance(value, list):
        return data.normalise_messages(value, where) if value else []
    raise UserError(f"{where}: '{key}' must be a string or a list of messages, not {type(value).__name__}.")


def split_row(row: dict) -> tuple[list[dict] | str, list[dict] | str, list[dict] | str, bool]:
    """(prompt, chosen, rejected, conversational) of one preference row.

    The implicit form (no prompt, or a string prompt next to full conversations, as in
    HuggingFaceH4/ultrafeedback_binarized) takes the longest common prefix as the prompt, like
    TRL's `maybe_extract_prompt`.
    """
    where = row.get(WHERE, "data")
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None or (isinstance(value, (str, list)) and not value):
            raise UserError(f"{where}: '{key}' is empty; every preference row needs a chosen and a rejected reply.")
    if isinstance(chosen, str) and isinstance(rejected, str) and not isinstance(prompt, list):
        if prompt is None:  # implicit: character prefix, the separating space goes to the completions
            k = _common_prefix(chosen, rejected)
            if 0 < k < len(chosen) and chosen[k - 1] == " ":
                k -= 1
            prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        return prompt, chosen, rejected, False
    c = _as_messages(chosen, "assistant", "chosen", where)
    r = _as_messages(rejected, "assistant", "rejected", where)
    implicit = prompt is None or (not isinstance(prompt, list) and c[0]["role"] != "assistant")
    if implicit:
        k = _common_prefix(c, r)
        p, c, r = c[:k], c[k:], r[k:]
    else:
        p = _as_messages(prompt, "user", "prompt", where)
    for key, msgs in (("chosen", c), ("rejected", r)):
        wrong = [m["role"] for m in msgs if m["role"] != "assistant"]
        if wrong:
            raise UserError(f"{where}: '{key}' must hold only the assistant reply after the prompt, but has a '{wrong[0]}' message; move earlier turns into 'prompt'.")
        if not msgs and c != r:
            raise UserError(f"{where}: '{key}' has no assistant reply after the shared prompt; each side needs one.")
    return p, c, r, True


# ---------------------------------------------------------------------------------------------
# Tokenisation


def _encode(hf, text: str) -> list[int]:
    return list(hf(text, add_special_tokens=False)["input_ids"])


def encode_side(tokenizer, prompt, completion, conversational: bool, tools=None) -> Example:
    """Prompt + one completion as tokens, with the mask on the completion tokens.

    Chat: the prompt is rendered with the generation prompt; the completion is where the tokens
    of the whole conversation leave the prompt's (TRL's `common_prefix_length`), up to and
    including the last end-of-turn token (a template's trailing newline is not trained, as in SFT).
    Plain strings without a chat template: prompt tokens + completion tokens + EOS.
    """
    hf = hf_tokenizer(tokenizer)
    if conversational:
        prompt_ids = _encode(hf, data.render(tokenizer, prompt, add_generation_prompt=True, tools=tools))
        full_ids = _encode(hf, data.render(tokenizer, prompt + completion, tools=tools))
        p = _common_prefix(prompt_ids, full_ids)
        comp = full_ids[p:]
        eot = data.end_of_turn_ids(tokenizer)
        ends = [i for i, t in enumerate(comp) if t in eot]
        if ends:
            comp = comp[: ends[-1] + 1]
        ids = full_ids[:p] + comp
    else:
        ids = _encode(hf, prompt)
        p = len(ids)
        comp = _encode(hf, completion) + ([hf.eos_token_id] if hf.eos_token_id is not None else [])
        ids = ids + comp
    mask = np.zeros(len(ids), dtype=bool)
    mask[p:] = True
    return Example(np.asarray(ids, dtype=np.int32), mask)


def tokenize_pairs(tokenizer, rows: list[dict], max_len: int) -> tuple[list[tuple[Example, Example]], dict]:
    """Tokenise preference rows into (chosen, rejected) examples of at most max_len + 1 tokens.

    Identical pairs are skipped and prompts of more than max_len tokens dropped (both counted);
    longer completions are cut at the end, keeping the prompt's start (counted as truncated).
    Returns (pairs, counts).
    """
    hf = hf_tokenizer(tokenizer)
    has_template = bool(getattr(hf, "chat_template", None))
    pairs, counts = [], {"identical": 0, "long_prompt": 0, "truncated": 0}
    for row in rows:
        where = row.get(WHERE, "data")
        prompt, chosen, rejected, conversational = split_row(row)
        if not conversational and has_template:  # strings become a user turn and an assistant turn, as in SFT
            prompt = [{"role": "user", "content": prompt}] if prompt else []
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
            conversational = True
        if conversational:
            data.require_chat_template(tokenizer, where)
        if chosen == rejected:
            counts["identical"] += 1
            continue
        c = encode_side(tokenizer, prompt, chosen, conversational, row.get("tools"))
        r = encode_side(tokenizer, prompt, rejected, conversational, row.get("tools"))
        if not (c.mask.any() and r.mask.any()):
            raise UserError(f"{where}: a reply renders to no tokens after the prompt; check the chat template or drop the row.")
        n_prompt = min(int(np.argmax(c.mask)), int(np.argmax(r.mask)))
        if n_prompt > max_len:
            counts["long_prompt"] += 1
            continue
        if len(c.tokens) == len(r.tokens) and np.array_equal(c.tokens, r.tokens):
            counts["identical"] += 1
            continue
        if max(len(c.tokens), len(r.tokens)) > max_len + 1:
            counts["truncated"] += 1
            c = Example(c.tokens[: max_len + 1], c.mask[: max_len + 1])
            r = Example(r.tokens[: max_len + 1], r.mask[: max_len + 1])
        pairs.append((c, r))
    return pairs, counts


# ---------------------------------------------------------------------------------------------
# Batches: chosen and rejected rows stacked on the batch axis, one forward pass per pair batch


class PairBatches(Batches):
    """Length-bucketed, resumable micro-batches of preference pairs.

    Same ordering and interface as `Batches` (shared `stream`, `once`, `__len__`): groups of
    `batch_size` pairs of similar length, their order shuffled per epoch with a seed, so position
    k of the stream is the same on every run. Each micro-batch is
    (inputs (2B, L) int32, targets (2B, L) int32, completion mask (2B, L) float32,
    valid = non-padding targets (2B, L) float32[, reference log-probs (2B,) float32]),
    rows 0..B-1 chosen and B..2B-1 rejected; `ref` (N, 2) is set for DPO.
    """

    def __init__(self, pairs: list[tuple[Example, Example]], batch_size: int, max_len: int, seed: int, pad_id: int = 0, truncated: int = 0):
        if not pairs:
            raise UserError("data: no preference pairs are left after tokenisation.")
        self.pairs, self.batch_size, self.max_len, self.seed, self.pad_id = pairs, batch_size, max_len, seed, pad_id
        self.truncated = truncated
        self.ref: np.ndarray | None = None
        order = sorted(range(len(pairs)), key=lambda i: max(len(pairs[i][0].tokens), len(pairs[i][1].tokens)))
        self.groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def make(self, group: list[int], with_ref: bool = True):
        rows = [self.pairs[i][0] for i in group] + [self.pairs[i][1] for i in group]
        width = pad_to(max(len(e.tokens) for e in rows) - 1, cap=self.max_len)
        inputs = np.full((len(rows), width), self.pad_id, np.int32)
        targets = np.full((len(rows), width), self.pad_id, np.int32)
        mask = np.zeros((len(rows), width), np.float32)
        valid = np.zeros((len(rows), width), np.float32)
        for j, e in enumerate(rows):
            n = len(e.tokens) - 1
            inputs[j, :n], targets[j, :n], mask[j, :n], valid[j, :n] = e.tokens[:-1], e.tokens[1:], e.mask[1:], 1.0
        arrays = (inputs, targets, mask, valid)
        if with_ref and self.ref is not None:
            arrays += (np.concatenate([self.ref[group, 0], self.ref[group, 1]]).astype(np.float32),)
        return arrays, int(valid.sum())


# ---------------------------------------------------------------------------------------------
# Reference log-probs: the same weights with adapters disabled, computed once, cached


def reference_logps(model, batches: PairBatches) -> np.ndarray:
    """Summed completion log-probs (N, 2) [chosen, rejected] of every pair under the reference.

    Runs the training batches' exact arrays, so at step 0 the policy's and the reference's
    numbers agree (up to compiled-kernel rounding) and every reward starts at 0.
    """
    out = np.zeros((len(batches.pairs), 2), np.float32)
    with adapters_disabled(model):
        for group in batches.groups:
            (inputs, targets, mask, _valid), _ = batches.make(group, with_ref=False)
            sums, _ = completion_logps(model, mx.array(inputs), mx.array(targets), mx.array(mask))
            sums = np.array(sums)
            out[group, 0], out[group, 1] = sums[: len(group)], sums[len(group) :]
    return out


def data_key(batches: PairBatches, model_id: str) -> str:
    """Hash of everything the reference numbers depend on: tokens, masks, grouping, model, dtype."""
    h = hashlib.sha256(json.dumps([model_id, batches.batch_size, batches.max_len]).encode())
    for c, r in batches.pairs:
        for e in (c, r):
            h.update(e.tokens.tobytes())
            h.update(e.mask.tobytes())
    return h.hexdigest()


def cached_reference(model, batches: PairBatches, path: Path, model_id: str) -> tuple[np.ndarray, bool]:
    """Reference log-probs from `path` (.npz) when its key matches the data, else computed and
    saved atomically. Returns (logps (N, 2), reused)."""
    key = data_key(batches, model_id)
    if path.is_file():
        with np.load(path) as f:
            if str(f["key"]) == key:
                return f["logps"], True
    logps = reference_logps(model, batches)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.tmp.npz")
    np.savez(tmp, key=np.array(key), logps=logps)
    os.replace(tmp, path)
    return logps, False


# ---------------------------------------------------------------------------------------------
# The task (methods/dpo.py and methods/orpo.py give the loss)


def build_pairs(tokenizer, rows: list[dict], cfg) -> tuple[PairBatches | None, dict]:
    """Pair batches of `rows` with the recipe's batch size, length and seed (None if no pair is
    usable), and the counts of skipped, dropped and truncated rows."""
    t = cfg.train
    pairs, counts = tokenize_pairs(tokenizer, rows, t.max_seq_len)
    if not pairs:
        return None, counts
    return PairBatches(pairs, t.batch_size, t.max_seq_len, t.seed, pad_id(tokenizer), counts["truncated"]), counts


def build_pair_task(cfg, model, tokenizer, run_dir, loss_fn, reference: bool = False) -> Task:
    """A preference method's `Task`: pair batches of the recipe's data and `loss_fn`.

    Args:
        loss_fn: `(model, inputs, targets, mask, valid[, ref_logps]) -> (loss, pairs, metrics)`.
        reference: compute the reference log-probs (the weights with adapters taken out, or the
            initial weights for full fine-tuning) once, cached as run_dir/ref_logps-*.npz.
    """
    kind, rows, valid_rows = load_split_rows(cfg, cfg.method)
    if kind != "preference":
        raise UserError(f"{cfg.data.train}: method {cfg.method} needs preference rows with chosen and rejected columns (and optionally prompt), but the data is {kind}; map yours with data.columns.")
    train, counts = build_pairs(tokenizer, rows, cfg)
    if train is None:
        raise UserError(
            f"{cfg.data.train}: no usable preference pairs: {counts['identical']} of {len(rows)} rows have identical chosen and "
            f"rejected replies and {counts['long_prompt']} have prompts longer than train.max_seq_len={cfg.train.max_seq_len}; "
            "fix the data or raise train.max_seq_len.")
    valid, valid_counts = build_pairs(tokenizer, valid_rows, cfg) if valid_rows else (None, {})
    notes = {"format": kind, "pairs_skipped_identical": counts["identical"], "pairs_dropped_long_prompt": counts["long_prompt"]}
    if valid_rows:
        notes["valid_pairs_skipped"] = valid_counts["identical"] + valid_counts["long_prompt"]
    if reference:
        model_id = json.dumps([cfg.model, cfg.train.dtype, cfg.full], sort_keys=True, default=str)
        tic, reused = time.perf_counter(), []
        for split, batches in (("train", train), ("valid", valid)):
            if batches is not None:
                batches.ref, hit = cached_reference(model, batches, Path(run_dir) / f"ref_logps-{split}.npz", model_id)
                reused.append(hit)
        notes["ref_logps"] = "reused" if all(reused) else "computed"
        notes["ref_logps_s"] = round(time.perf_counter() - tic, 2)
    return Task(train, valid, loss_fn, len(train.pairs), len(valid.pairs) if valid else 0, train.truncated, notes)
