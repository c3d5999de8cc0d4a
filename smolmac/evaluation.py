"""Evaluation: every metric smolmac reports, in one place. Runs call `evaluator` at each eval
step (val loss and perplexity, retain loss and perplexity, method metrics, samples); pipelines
call `stage_metrics` before and after each stage (exact match, preference accuracy); the app
reads what they wrote.

Forgetting is measured on a retain set (`eval.retain`: general text or chats the user wants the
model to keep knowing): its loss and perplexity at the start of an SFT/DPO/ORPO run (the base:
LoRA starts at zero) and at every evaluation, so "retain ppl 12.1 -> 12.6 (+4%)" says what a run
cost. MLX is imported inside the functions that compute, so the app can format without it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from smolmac import events as ev
from smolmac.errors import UserError
from smolmac.quickstart import resolve as resolve_path

# ---------------------------------------------------------------------------------------------
# During a run


def evaluate_loss(model, batches, loss_fn, max_batches: int = -1) -> tuple[float, dict]:
    """Weighted mean loss and metrics over the validation batches (no gradients)."""
    import mlx.core as mx

    model.eval()
    total, weight, sums, count = 0.0, 0.0, {}, 0
    for i, (arrays, _ntok) in enumerate(batches.once()):
        if max_batches >= 0 and i >= max_batches:
            break
        loss, w, metrics = loss_fn(model, *[mx.array(a) for a in arrays])
        mx.eval(loss, w, metrics)
        total += loss.item() * w.item()
        weight += w.item()
        count += 1
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v.item()
    return total / max(weight, 1e-9), {k: v / max(count, 1) for k, v in sums.items()}


def _ppl(loss: float) -> float:
    return round(math.exp(min(loss, 50)), 4)


def evaluator(cfg, model, tokenizer, task, retain=None):
    """`evaluate(step) -> [Event]` for the training loop: an eval event (val loss, perplexity
    when the loss is a token cross-entropy, the method's metrics as eval_* (DPO/ORPO:
    eval_rewards/accuracies, eval_rewards/margins, ...), the task's extras, retain loss and
    perplexity, exact match) and greedy samples of eval.prompts.

    Args:
        retain: the retain set's batches (`retain_batches`), built once; None: not measured.
    """
    from smolmac.generate import generate

    # held-out answers (eval.exact_match) scored at every eval of a run that teaches answers
    answers = load_eval_rows(cfg.eval.exact_match, "answers") if cfg.eval.exact_match and _changes_knowledge(cfg) else None

    def evaluate(step: int) -> list:
        out = []
        val_loss, extra = None, {}
        if task.valid is not None:
            val_loss, metrics = evaluate_loss(model, task.valid, task.loss_fn, cfg.eval.batches)
            extra = {f"eval_{k}": round(v, 6) for k, v in metrics.items()}
            if task.evaluate_extra:
                extra.update(task.evaluate_extra(model))
        if retain is not None:
            extra.update(retain_metrics(model, retain))
        if answers is not None:
            extra["exact_match"] = round(exact_match(model, tokenizer, answers), 4)
        if extra or task.valid is not None:
            ppl = _ppl(val_loss) if val_loss is not None and task.perplexity else None
            out.append(ev.Eval(step=step, val_loss=None if val_loss is None else round(val_loss, 6), val_ppl=ppl, extra=extra))
        model.eval()
        out.extend(ev.Sample(step=step, prompt=p, completion=generate(model, tokenizer, p, max_tokens=cfg.eval.max_tokens))
                   for p in cfg.eval.prompts)
        return out

    return evaluate


# ---------------------------------------------------------------------------------------------
# Forgetting: loss and perplexity on the retain set (eval.retain)

RETAIN_HELP = "give text or chat rows (text, messages or prompt + completion columns) in a .jsonl, .json, .csv, .parquet or .txt file, a folder of them, or a Hub dataset id"


def _retain_rows(spec: str, limit: int) -> list[dict]:
    """The first `limit` rows of a local file/folder or a Hub dataset (streamed, split train)."""
    from smolmac.data import FILE_TYPES, load_rows

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() not in FILE_TYPES:
        raise UserError(f"eval.retain: {spec} is a '{path.suffix or 'no extension'}' file; {RETAIN_HELP}.")
    if path.exists():
        return load_rows(str(path))[:limit]
    if spec.startswith((".", "/", "~")) or path.suffix.lower() in FILE_TYPES:
        raise UserError(f"eval.retain: {spec} does not exist; check the path ({RETAIN_HELP}).")
    import datasets

    datasets.disable_progress_bars()
    try:  # streamed: only the rows scored are read
        ds = datasets.load_dataset(spec, split="train", streaming=True)
        return [{**row} for _, row in zip(range(limit), ds)]
    except Exception as e:  # datasets raises many types for a missing or private dataset
        raise UserError(f"eval.retain: '{spec}' is neither a file here nor a Hub dataset that loads ({str(e).splitlines()[0]}); {RETAIN_HELP}.") from None


def _windows(tokens: np.ndarray, max_len: int) -> list[np.ndarray]:
    """A long text cut into pieces of max_len + 1 tokens that overlap by one, so every token
    after the first is a target exactly once (instead of truncating it)."""
    return [tokens[i : i + max_len + 1] for i in range(0, max(len(tokens) - 1, 1), max_len) if len(tokens[i : i + max_len + 1]) > 1]


def _changes_knowledge(cfg) -> bool:
    """sft, dpo and orpo runs (not pretraining, not the tokenizer)."""
    from smolmac.methods import method

    m = method(cfg.method)
    return m.trains and m.data != "corpus"


def measures_retain(cfg) -> bool:
    """Retain metrics are for runs that change what a model knows: sft, dpo, orpo (not pretrain)."""
    return bool(cfg.eval.retain) and _changes_knowledge(cfg)


def retain_batches(cfg, tokenizer):
    """The retain set of `eval.retain`, tokenised once into evaluation batches (or None).

    Text rows are scored on every token (long ones cut into max_seq_len windows); chat and
    prompt-completion rows on their assistant/completion tokens, as SFT trains them. At most
    `eval.retain_rows` rows are read.
    """
    from smolmac.batches import Batches
    from smolmac.data import WHERE, Example, tokenize_rows, tokenize_text
    from smolmac.methods.sft import pad_id

    if not measures_retain(cfg):
        return None
    spec = resolve_path(cfg.eval.retain)
    rows = _retain_rows(spec, cfg.eval.retain_rows)
    if not rows:
        raise UserError(f"eval.retain: {spec} has no rows; {RETAIN_HELP}.")
    keys = set(rows[0]) - {WHERE}
    if isinstance(rows[0].get("text"), str):
        kind = "text"
    elif "messages" in keys or "conversations" in keys:
        kind = "messages"
        for row in rows:
            row.setdefault("messages", row.pop("conversations", None))
    elif {"prompt", "completion"} <= keys:
        kind = "prompt_completion"
    else:
        raise UserError(f"eval.retain: {rows[0].get(WHERE, spec)} has the columns {sorted(keys)}; {RETAIN_HELP}.")
    t = cfg.train
    if kind == "text":
        examples = [Example(w, np.ones(len(w), bool))
                    for row in rows if isinstance(row.get("text"), str) and row["text"].strip()
                    for w in _windows(tokenize_text(tokenizer, row["text"], row.get(WHERE, spec)).tokens, t.max_seq_len)]
    else:
        examples = tokenize_rows(tokenizer, kind, rows)
    if not examples:
        raise UserError(f"eval.retain: {spec} has no text to score; {RETAIN_HELP}.")
    return Batches(examples, t.batch_size, t.max_seq_len, t.seed, False, pad_id(tokenizer))


def retain_metrics(model, batches) -> dict:
    """`{"retain_loss", "retain_ppl"}`: token-mean loss of the model (adapters included) on the
    retain set, and its perplexity."""
    from smolmac.losses import lm_loss

    loss, _ = evaluate_loss(model, batches, lm_loss)
    return {"retain_loss": round(loss, 6), "retain_ppl": _ppl(loss)}


def first_retain(events: list[dict]) -> dict | None:
    """The "before" of a run: retain metrics of its first start event that has them (a resumed
    run reads them here instead of measuring its trained weights again)."""
    start = next((e for e in events if e["type"] == "start" and e.get("retain_loss") is not None), None)
    return {"retain_loss": start["retain_loss"], "retain_ppl": start["retain_ppl"]} if start else None


def retain_change(events: list[dict]) -> tuple[float, float] | None:
    """(retain ppl before, after) of a run's events: its first start event and last eval."""
    before = first_retain(events)
    after = next((e["retain_ppl"] for e in reversed(events) if e["type"] == "eval" and e.get("retain_ppl") is not None), None)
    return (before["retain_ppl"], after) if before and after is not None else None


def _num(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def retain_text(before: float, after: float, label: str = "retain ppl ", arrow: str = "→") -> str:
    """"retain ppl 12.1 → 12.6 (+4%)": the retain perplexity before and after a run."""
    return f"{label}{_num(before)} {arrow} {_num(after)} ({100 * (after / before - 1):+.0f}%)"


# ---------------------------------------------------------------------------------------------
# Held-out metrics (pipelines measure them before and after each stage)


def load_eval_rows(spec: str, kind: str) -> list[dict]:
    """Held-out rows: `prompt` + `completion` (kind "answers") or + `chosen`/`rejected`."""
    from smolmac.data import WHERE, load_rows

    keys = ("prompt", "completion") if kind == "answers" else ("prompt", "chosen", "rejected")
    rows = load_rows(resolve_path(spec))
    for row in rows:
        missing = [k for k in keys if not isinstance(row.get(k), str)]
        if missing:
            raise UserError(f"{row.get(WHERE, spec)}: an evaluation row needs string columns {', '.join(keys)}; '{missing[0]}' is missing.")
    if not rows:
        raise UserError(f"{spec}: no evaluation rows; give a jsonl file with {', '.join(keys)}.")
    return rows


def greedy_tokens(model, prompts: list[list[int]], max_tokens, stop_ids: set[int], batch_size: int = 64, done=None) -> list[list[int]]:
    """Greedy continuations of token prompts, batched: prompts of equal length share one KV cache
    (no padding, so every row computes exactly what it would alone).

    Args:
        prompts: token id lists.
        max_tokens: tokens to generate at most, one int or one per prompt.
        stop_ids: a row ends at any of these tokens (not included in its continuation).
        done: optional `(index, tokens so far) -> bool`, asked after each new token (e.g. a stop
            string appeared); True ends that row (the tokens so far are kept).
    Returns:
        the continuation of each prompt.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(i)
    model.eval()
    for group in by_len.values():
        for j in range(0, len(group), batch_size):
            idx = group[j : j + batch_size]
            cache = make_prompt_cache(model)
            logits = model(mx.array([prompts[i] for i in idx]), cache=cache)[:, -1]  # (B, V)
            finished = [limits[i] <= 0 for i in idx]
            while not all(finished):
                nxt = mx.argmax(logits, axis=-1)
                for b, (i, t) in enumerate(zip(idx, nxt.tolist())):
                    if finished[b]:
                        continue
                    if t in stop_ids:
                        finished[b] = True
                        continue
                    out[i].append(t)
                    finished[b] = len(out[i]) >= limits[i] or bool(done and done(i, out[i]))
                if all(finished):
                    break
                logits = model(nxt[:, None], cache=cache)[:, -1]
    return out


def greedy_answers(model, tokenizer, prompts: list[str], max_tokens: int = 16, batch_size: int = 64) -> list[str]:
    """Greedy chat completions, batched: prompts of equal token length share one KV cache.

    Same tokens as `smolmac.generate.generate(..., temp=0)` (argmax each step, stop at EOS).
    """
    from smolmac.data import end_of_turn_ids, hf_tokenizer
    from smolmac.generate import prompt_ids

    hf = hf_tokenizer(tokenizer)
    stop = set(getattr(tokenizer, "eos_token_ids", None) or []) or end_of_turn_ids(tokenizer)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    return [hf.decode(seq) for seq in greedy_tokens(model, encoded, max_tokens, stop, batch_size)]


def exact_match(model, tokenizer, rows: list[dict], max_tokens: int = 16, return_answers: bool = False):
    """Fraction of rows whose greedy answer equals the `completion` (both stripped).

    Args:
        rows: `{"prompt": str, "completion": str}` dicts (see `load_eval_rows`).
        return_answers: also return the generated answers.
    """
    answers = greedy_answers(model, tokenizer, [r["prompt"] for r in rows], max_tokens)
    score = sum(a.strip() == r["completion"].strip() for a, r in zip(answers, rows)) / max(len(rows), 1)
    return (score, answers) if return_answers else score


def preference_scores(model, tokenizer, rows: list[dict]) -> dict:
    """How much the model prefers the chosen answers of held-out pairs, reference-free (comparable
    before and after alignment): `preference_accuracy`, the fraction of pairs whose chosen answer
    has the higher summed log-prob, and `preference_margin`, the mean of chosen minus rejected
    summed log-probs in nats (continuous: it moves even when few pairs change side).
    """
    import mlx.core as mx

    from smolmac.data import tokenize_chat
    from smolmac.losses import token_logps

    model.eval()
    gaps = []
    for row in rows:
        exs = [tokenize_chat(tokenizer, [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[k]}], "eval")
               for k in ("chosen", "rejected")]
        width = max(len(e.tokens) for e in exs)
        toks = np.zeros((2, width), np.int32)
        mask = np.zeros((2, width - 1), np.float32)
        for b, e in enumerate(exs):
            toks[b, : len(e.tokens)] = e.tokens
            mask[b, : len(e.tokens) - 1] = e.mask[1:]
        logps = token_logps(model(mx.array(toks[:, :-1])), mx.array(toks[:, 1:]))  # (2, L)
        chosen, rejected = (logps * mx.array(mask)).sum(axis=1).tolist()
        gaps.append(chosen - rejected)
    n = max(len(gaps), 1)
    return {"preference_accuracy": sum(g > 0 for g in gaps) / n, "preference_margin": sum(gaps) / n}


def stage_metrics(cfg, model_ref: str, adapter: str | None = None) -> tuple[dict, list]:
    """Exact match (eval.exact_match), preference accuracy and margin (eval.preference) of a model."""
    from smolmac.generate import load_for_generation

    if not (cfg.eval.exact_match or cfg.eval.preference):
        return {}, []
    model, tokenizer = load_for_generation(model_ref, adapter, cfg.train.dtype)
    out, examples = {}, []
    if cfg.eval.exact_match:
        rows = load_eval_rows(cfg.eval.exact_match, "answers")
        out["exact_match"], answers = exact_match(model, tokenizer, rows, return_answers=True)
        examples = [{"prompt": r["prompt"], "answer": a, "expected": r["completion"]} for r, a in list(zip(rows, answers))[:4]]
    if cfg.eval.preference:
        out.update(preference_scores(model, tokenizer, load_eval_rows(cfg.eval.preference, "pairs")))
    return out, examples
