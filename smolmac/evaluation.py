"""Evaluation: every metric smolmac reports, in one place. Runs call `evaluator` at each eval
step (val loss and perplexity, method metrics, samples); pipelines call `stage_metrics` before and
after each stage (exact match, preference accuracy); the app reads what they wrote.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from smolmac import events as ev
from smolmac.errors import UserError
from smolmac.quickstart import resolve as resolve_path

# ---------------------------------------------------------------------------------------------
# During a run


def evaluate_loss(model, batches, loss_fn, max_batches: int = -1) -> tuple[float, dict]:
    """Weighted mean loss and metrics over the validation batches (no gradients)."""
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


def evaluator(cfg, model, tokenizer, task):
    """`evaluate(step) -> [Event]` for the training loop: an eval event (val loss, perplexity
    when the loss is a token cross-entropy, the method's metrics as eval_* (DPO/ORPO:
    eval_rewards/accuracies, eval_rewards/margins, ...), the task's extras) and greedy samples
    of eval.prompts."""
    from smolmac.generate import generate

    def evaluate(step: int) -> list:
        out = []
        if task.valid is not None:
            loss, metrics = evaluate_loss(model, task.valid, task.loss_fn, cfg.eval.batches)
            extra = {f"eval_{k}": round(v, 6) for k, v in metrics.items()}
            if task.evaluate_extra:
                extra.update(task.evaluate_extra(model))
            ppl = round(math.exp(min(loss, 50)), 4) if task.perplexity else None
            out.append(ev.Eval(step=step, val_loss=round(loss, 6), val_ppl=ppl, extra=extra))
        model.eval()
        out.extend(ev.Sample(step=step, prompt=p, completion=generate(model, tokenizer, p, max_tokens=cfg.eval.max_tokens))
                   for p in cfg.eval.prompts)
        return out

    return evaluate


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


def greedy_answers(model, tokenizer, prompts: list[str], max_tokens: int = 16, batch_size: int = 64) -> list[str]:
    """Greedy chat completions, batched: prompts of equal token length share one KV cache.

    Same tokens as `smolmac.generate.generate(..., temp=0)` (argmax each step, stop at EOS).
    """
    from mlx_lm.models.cache import make_prompt_cache

    from smolmac.data import end_of_turn_ids, hf_tokenizer
    from smolmac.generate import prompt_ids

    hf = hf_tokenizer(tokenizer)
    stop = set(getattr(tokenizer, "eos_token_ids", None) or []) or end_of_turn_ids(tokenizer)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    out: list[str | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    model.eval()
    for group in by_len.values():
        for j in range(0, len(group), batch_size):
            idx = group[j : j + batch_size]
            cache = make_prompt_cache(model)
            logits = model(mx.array([encoded[i] for i in idx]), cache=cache)[:, -1]  # (B, V)
            tokens, finished = [], [False] * len(idx)
            for _ in range(max_tokens):
                nxt = mx.argmax(logits, axis=-1)
                ids = nxt.tolist()
                tokens.append(ids)
                finished = [f or t in stop for f, t in zip(finished, ids)]
                if all(finished):
                    break
                logits = model(nxt[:, None], cache=cache)[:, -1]
            for b, i in enumerate(idx):
                seq = []
                for step in tokens:
                    if step[b] in stop:
                        break
                    seq.append(step[b])
                out[i] = hf.decode(seq)
    return out  # type: ignore[return-value]


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
