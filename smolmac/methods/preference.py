"""Preference data for DPO, ORPO and any pairwise method: rows to (chosen, rejected) token pairs,
pair batches, and reference log-probs; methods/dpo.py and methods/orpo.py add their losses.

Rows are `{prompt, chosen, rejected}` (strings or message lists) or the implicit
`{chosen, rejected}` (the prompt is their longest common prefix). A pair is two token rows that
share the prompt; the loss masks cover the completion only: up to and including the end-of-turn
token (`tokenization: smolmac`), or exactly TRL's completion tokens (`tokenization: trl`).

The DPO reference is the same weights with the adapters taken out (or, for full fine-tuning,
the initial weights): its summed completion log-probs are computed once per pair before
training and cached in the run directory, so resuming never recomputes them.
"""

from __future__ import annotations

import hashlib
import json
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
    raise UserError(f"{where}: '{key}' must be a string or a list of messages, not {data.json_type(value)}.")


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
    for key, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if value is not None and not isinstance(value, (str, list)):
            raise UserError(f"{where}: '{key}' must be a string or a list of messages, not {data.json_type(value)}.")
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
# Tokenisation: `smolmac` (our own) or `trl` (TRL 1.16's exact tokens), per dpo/orpo.tokenization

TOKENIZATIONS = ("smolmac", "trl")


def _encode(hf, text: str) -> list[int]:
    return list(hf(text, add_special_tokens=False)["input_ids"])


def encode_side(tokenizer, prompt, completion, conversational: bool, tools=None, where: str = "data") -> Example:
    """Prompt + one completion as tokens, with the mask on the completion tokens.

    Chat: the prompt is rendered with the generation prompt; the completion is where the tokens
    of the whole conversation leave the prompt's (TRL's `common_prefix_length`), up to and
    including the last end-of-turn token (a template's trailing newline is not trained, as in SFT).
    Plain strings without a chat template: the tokenizer's BOS (if it adds one) + prompt tokens
    + completion tokens + EOS, the prompt encoded exactly as generation encodes it.
    """
    hf = hf_tokenizer(tokenizer)
    if conversational:
        prompt_ids = data.encode_templated(tokenizer, data.render(tokenizer, prompt, add_generation_prompt=True, tools=tools, where=where))
        full_ids = data.encode_templated(tokenizer, data.render(tokenizer, prompt + completion, tools=tools, where=where))
        p = _common_prefix(prompt_ids, full_ids)
        comp = full_ids[p:]
        eot = data.end_of_turn_ids(tokenizer)
        ends = [i for i, t in enumerate(comp) if t in eot]
        if ends:
            comp = comp[: ends[-1] + 1]
        ids = full_ids[:p] + comp
    else:
        ids = data.encode_plain(tokenizer, prompt)
        p = len(ids)
        comp = list(hf.encode(completion, add_special_tokens=False)) + ([hf.eos_token_id] if hf.eos_token_id is not None else [])
        ids = ids + comp
    mask = np.zeros(len(ids), dtype=bool)
    mask[p:] = True
    return Example(np.asarray(ids, dtype=np.int32), mask)


def _example(ids: list[int], n_prompt: int) -> Example:
    mask = np.zeros(len(ids), dtype=bool)
    mask[n_prompt:] = True
    return Example(np.asarray(ids, dtype=np.int32), mask)


def encode_pair_trl_dpo(tokenizer, prompt, chosen, rejected, conversational: bool, tools=None) -> tuple[Example, Example]:
    """(chosen, rejected) exactly as TRL 1.16's `DPOTrainer._prepare_dataset` tokenises them.

    Chat: the prompt (with the generation prompt) and prompt + reply are rendered and tokenised
    without special tokens; everything after the prompt is trained, the template's trailing
    newline included. Plain strings: EOS is appended to each reply as text (unless already
    there), then prompt and prompt + reply are tokenised with the tokenizer's own special tokens
    (a BOS where the tokenizer adds one). The prompt is the longest token prefix shared with
    both sides (TRL's `common_prefix_length`), so both masks start at the same position.
    """
    hf = hf_tokenizer(tokenizer)
    if conversational:
        def enc(msgs, gen=False):
            return _encode(hf, data.render(tokenizer, msgs, add_generation_prompt=gen, tools=tools))

        p, pc, pr = enc(prompt, True), enc(prompt + chosen), enc(prompt + rejected)
    else:
        eos = hf.eos_token or ""
        chosen, rejected = (s if s.endswith(eos) else s + eos for s in (chosen, rejected))

        def enc(text):
            return list(hf(text)["input_ids"])

        p, pc, pr = enc(prompt), enc(prompt + chosen), enc(prompt + rejected)
    n = min(_common_prefix(p, pc), _common_prefix(p, pr))
    return _example(pc, n), _example(pr, n)


def _trl_chat_text(tokenizer, prompt, chosen, rejected, tools=None) -> tuple[str, str, str]:
    """TRL's `maybe_apply_chat_template` for a preference row: (prompt, chosen, rejected) text.

    The prompt ends with the generation prompt (or continues a final assistant message); each
    reply is the rest of the rendered conversation, the template's trailing newline included.
    """
    hf = hf_tokenizer(tokenizer)
    last = prompt[-1]["role"] if prompt else "user"
    p = hf.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=last != "assistant",
                               continue_final_message=last == "assistant")
    pc, pr = data.render(tokenizer, prompt + chosen, tools=tools), data.render(tokenizer, prompt + rejected, tools=tools)
    p = p[: _common_prefix(p, pc)]
    p = p[: _common_prefix(p, pr)]
    return p, pc[len(p):], pr[len(p):]


def encode_pair_trl_orpo(tokenizer, prompt, chosen, rejected, conversational: bool, tools=None) -> tuple[Example, Example]:
    """(chosen, rejected) exactly as TRL 1.16's `ORPOTrainer.tokenize_row` tokenises them.

    Chat rows become text first (`_trl_chat_text`). Prompt and prompt + reply are tokenised
    without special tokens; the reply starts after the prompt's tokens (one earlier when the
    last prompt token merged with the reply). BOS is prepended when the tokenizer has one and
    the sequence does not start with it, and EOS appended when the reply does not end with it
    (a ChatML reply thus ends `<|im_end|>`, newline, `<|im_end|>`).
    """
    hf = hf_tokenizer(tokenizer)
    if conversational:
        prompt, chosen, rejected = _trl_chat_text(tokenizer, prompt, chosen, rejected, tools)
    p = _encode(hf, prompt)
    bos, eos = hf.bos_token_id, hf.eos_token_id
    out = []
    for reply in (chosen, rejected):
        full = _encode(hf, prompt + reply)
        start = len(p) if full[: len(p)] == p else len(p) - 1
        head, tail = full[:start], full[start:]
        if bos is not None and (not head or head[0] != bos):
            head = [bos] + head
        if eos is not None and (not tail or tail[-1] != eos):
            tail = tail + [eos]
        out.append(_example(head + tail, len(head)))
    return out[0], out[1]


def tokenize_pairs(tokenizer, rows: list[dict], max_len: int, tokenization: str = "smolmac",
                   method: str = "dpo") -> tuple[list[tuple[Example, Example]], dict]:
    """Tokenise preference rows into (chosen, rejected) examples.

    Args:
        tokenization: "smolmac" (`encode_side`; plain strings become a user and an assistant
            turn when the tokenizer has a chat template) or "trl" (TRL's tokens for `method`:
            `encode_pair_trl_dpo` or `encode_pair_trl_orpo`; plain strings stay plain).
        method: "dpo" or "orpo" (only used by "trl").
    Identical pairs are skipped and prompts of more than max_len tokens dropped (both counted).
    Longer sequences are cut at the end, keeping the prompt's start (counted as truncated), to
    max_len + 1 tokens (max_len inputs) or, for "trl", to max_len tokens like TRL's max_length
    (which also drops prompts of max_len tokens). Returns (pairs, counts).
    """
    if tokenization not in TOKENIZATIONS:
        raise UserError(f"{method}.tokenization: must be one of {', '.join(TOKENIZATIONS)}, not {tokenization!r}.")
    hf = hf_tokenizer(tokenizer)
    has_template = bool(getattr(hf, "chat_template", None))
    trl = tokenization == "trl"
    limit = max_len if trl else max_len + 1
    pairs, counts = [], {"identical": 0, "long_prompt": 0, "truncated": 0}
    for row in rows:
        where = row.get(WHERE, "data")
        prompt, chosen, rejected, conversational = split_row(row)
        if not trl and not conversational and has_template:  # strings become a user turn and an assistant turn, as in SFT
            prompt = [{"role": "user", "content": prompt}] if prompt else []
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
            conversational = True
        if conversational:
            data.require_chat_template(tokenizer, where)
        if chosen == rejected:
            counts["identical"] += 1
            continue
        tools = row.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise UserError(f"{where}: 'tools' must be a list of tool definitions, not {data.json_type(tools)}.")
        if trl:
            encode = encode_pair_trl_orpo if method == "orpo" else encode_pair_trl_dpo
            c, r = encode(tokenizer, prompt, chosen, rejected, conversational, tools)
        else:
            c = encode_side(tokenizer, prompt, chosen, conversational, tools, where)
            r = encode_side(tokenizer, prompt, rejected, conversational, tools, where)
        if not (c.mask.any() and r.mask.any()):
            raise UserError(f"{where}: a reply renders to no tokens after the prompt; check the chat template or drop the row.")
        n_prompt = min(int(np.argmax(c.mask)), int(np.argmax(r.mask)))
        if n_prompt > limit - 1:
            counts["long_prompt"] += 1
            continue
        if len(c.tokens) == len(r.tokens) and np.array_equal(c.tokens, r.tokens):
            counts["identical"] += 1
            continue
        if max(len(c.tokens), len(r.tokens)) > limit:
            counts["truncated"] += 1
            c = Example(c.tokens[:limit], c.mask[:limit])
            r = Example(r.tokens[:limit], r.mask[:limit])
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
        self.sequences, self.untrained = len(pairs), 0
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

    def fingerprint(self) -> str:
        return data_key(self, "")


# ---------------------------------------------------------------------------------------------
# Reference log-probs: the same weights with adapters disabled, computed once, cached


def reference_logps(model, batches: PairBatches, groups: list | None = None) -> np.ndarray:
    """Summed completion log-probs (N, 2) [chosen, rejected] of every pair under the reference.

    Runs the training batches' exact arrays, so at step 0 the policy's and the reference's
    numbers agree (up to compiled-kernel rounding) and every reward starts at 0.

    Args:
        groups: only these micro-batches (the others' rows stay 0); default all of them.
    """
    out = np.zeros((len(batches.pairs), 2), np.float32)
    with adapters_disabled(model):
        for group in batches.groups if groups is None else groups:
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
    saved atomically. Returns (logps (N, 2), reused).

    In a group (smolmac/distributed.py) process 0 reads the cache and sends it to the others;
    otherwise each process computes every size-th micro-batch and the parts are summed (each
    pair is in exactly one micro-batch, so the result is what one process computes).
    """
    from smolmac.distributed import current

    group = current()
    key = data_key(batches, model_id)
    cached = None
    if group.main and path.is_file():
        with np.load(path) as f:
            if str(f["key"]) == key:
                cached = f["logps"]
    if group.broadcast_json(cached is not None):
        if group.size == 1:
            return cached, True
        return np.array(group.broadcast_arrays({"logps": mx.array(cached)} if group.main else None)["logps"]), True
    logps = group.sum_numpy(reference_logps(model, batches, batches.groups[group.rank :: group.size]))
    if not group.main:
        return logps, False
    from smolmac.storage import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, key=np.array(key), logps=logps), logps.nbytes + 4096,
                 f"then resume with `smolmac train --resume {path.parent}`")
    return logps, False


# ---------------------------------------------------------------------------------------------
# The task (methods/dpo.py and methods/orpo.py give the loss)


def build_pairs(tokenizer, rows: list[dict], cfg) -> tuple[PairBatches | None, dict]:
    """Pair batches of `rows` with the recipe's batch size, length, seed and the method's
    tokenization (None if no pair is usable), and the counts of skipped, dropped and truncated rows."""
    t = cfg.train
    tokenization = getattr(getattr(cfg, cfg.method, None), "tokenization", "smolmac")  # dpo/orpo.tokenization
    pairs, counts = tokenize_pairs(tokenizer, rows, t.max_seq_len, tokenization, cfg.method)
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
    data.check_room(tokenizer, cfg.train.max_seq_len)
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
    return Task(train, valid, loss_fn, len(train.pairs), len(valid.pairs) if valid else 0, train.truncated, notes, perplexity=False)
