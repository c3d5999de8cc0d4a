"""EleutherAI's lm-evaluation-harness on MLX, with adapters: `smolmac eval`.

    smolmac eval BASE --adapter math=runs/a --adapter style=runs/b --tasks arc_easy,hellaswag --limit 100
    smolmac eval BASE --tasks my_task --include-path tasks/       # a task of your own (lm-eval YAML)

The base is loaded once (`smolmac.load`); the tasks run for the base and then for each adapter,
switched on that one model, and one table says task x (base, adapters). `SmolmacLM` is the model
class lm-eval calls (registered as "smolmac": `lm_eval.simple_evaluate(model="smolmac",
model_args="pretrained=BASE,adapter=runs/a")` after `import smolmac.harness`); it follows lm-eval's
Hugging Face backend (`HFLM`) request by request, so the same weights give the same scores:

- tokens: the tokenizer's own special tokens (BOS where it adds one), a context's trailing spaces
  moved to the continuation, an empty context conditioned on BOS (else EOS): lm-eval's `TemplateLM`;
- loglikelihood: context + continuation left-truncated to the model's context, continuation
  log-probs summed, greedy when every continuation token is the argmax; requests sorted by
  length (longest first) into batches of `batch_size`, right-padded (causal: padding after a
  row cannot change it);
- loglikelihood_rolling: lm-eval's disjoint rolling windows of the model's context length;
- generate_until: greedy, stopped at EOS, at `max_gen_toks` or once a stop string appears, cut at
  the first stop string; prompts of equal length are batched on one KV cache (no padding).
  Sampling (`do_sample`, temperature > 0) is refused: scores would not be reproducible.

This module imports lm_eval (the optional extra `smolmac[eval]`); `smolmac.api.evaluate` checks it
is installed first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from smolmac.errors import UserError, did_you_mean

DEFAULT_MAX_LENGTH = 2048  # lm-eval's HFLM default when the config names no context


@register_model("smolmac")
class SmolmacLM(TemplateLM):
    """An lm-eval model over a smolmac-loaded MLX model (and its active adapter).

    Args:
        pretrained: base model (Hub id or folder), when no `handle` is given.
        adapter: a run dir, an mlx-lm or a PEFT adapter dir to apply (with `pretrained`).
        handle: a `smolmac.generate.LoadedModel`; its active adapter answers.
        dtype: "auto", "float32", "float16" or "bfloat16" (with `pretrained`).
        batch_size: rows per forward pass (scoring) and per generation batch.
        max_length: context length (default: the config's max_position_embeddings, else 2048).
        max_gen_toks: tokens generated when a task does not say.
    """

    def __init__(self, pretrained: str | None = None, adapter: str | None = None, handle=None, dtype: str = "auto",
                 batch_size: int | str = 8, max_length: int | None = None, max_gen_toks: int = 256, **_ignored):
        super().__init__()
        if handle is None:
            from smolmac.generate import load

            handle = load(pretrained, {"adapter": adapter} if adapter else None, dtype)
            handle.use("adapter" if adapter else None)
        from smolmac.data import hf_tokenizer

        self.handle = handle
        self.model = handle.model
        self.tokenizer = hf_tokenizer(handle.tokenizer)
        self._batch_size = max(int(batch_size), 1)
        self._max_length = max_length
        self._max_gen_toks = max_gen_toks

    # -- what lm-eval asks of a model ------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        args = getattr(self.model, "args", None)
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(args, key, None)
            if value:
                return int(value)
        return DEFAULT_MAX_LENGTH

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs) -> list[int]:
        """HFLM's: the tokenizer's own special tokens unless told, none when `string` already
        starts with the BOS text."""
        from lm_eval.models.utils import has_bos_prefix

        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            options["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **options)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -- scoring ---------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is greedy) per (key, context, continuation)."""
        import mlx.core as mx
        from lm_eval.models.utils import Collator

        self.model.eval()
        order = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        out = []
        for chunk in order.get_batched(n=self.batch_size):
            # each row: context + continuation, left-truncated to max_length + 1, minus its last token
            seqs = [(ctx + cont)[-(self.max_length + 1):] for _, ctx, cont in chunk]
            width = max(len(s) for s in seqs) - 1
            inputs = np.zeros((len(seqs), width), np.int32)
            targets = np.zeros((len(seqs), width), np.int32)
            for b, s in enumerate(seqs):
                inputs[b, : len(s) - 1], targets[b, : len(s) - 1] = s[:-1], s[1:]
            logits = self.model(mx.array(inputs)).astype(mx.float32)  # (B, L, V)
            tgt = mx.array(targets)
            logps = mx.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0] - mx.logsumexp(logits, axis=-1)  # (B, L)
            greedy = mx.argmax(logits, axis=-1) == tgt  # (B, L)
            mx.eval(logps, greedy)
            logps, greedy = np.array(logps), np.array(greedy)
            for b, (key, _ctx, cont) in enumerate(chunk):
                n, k = len(seqs[b]) - 1, len(cont)
                answer = (float(logps[b, n - k : n].sum()), bool(greedy[b, n - k : n].all()))
                out.append(answer)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
        return order.get_original(out)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of the context (lm-eval's windows)."""
        from lm_eval import utils

        windows, counts = [], []
        for (text,) in [r.args for r in requests]:
            tokens = self.tok_encode(text)
            ws = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]
            windows += [(None, *w) for w in ws]
            counts.append(len(ws))
        scores = self._loglikelihood_tokens(windows)
        out, at = [], 0
        for req, n in zip(requests, counts):
            total = sum(score for score, _ in scores[at : at + n])
            at += n
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, each cut at its first stop string (see the module docstring)."""
        from lm_eval.models.utils import (
            handle_stop_sequences,
            normalize_gen_kwargs,
            postprocess_generated_text,
        )

        from smolmac.evaluation import greedy_tokens

        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        prompts, limits, stops = [], [], []
        for context, gen_kwargs in [r.args for r in requests]:
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0:
                raise UserError(f"--tasks: a task asks for sampled generation ({ {k: kwargs[k] for k in ('do_sample', 'temperature') if k in kwargs} }); smolmac eval generates greedily, so choose a task with do_sample: false.")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            prompts.append(self.tok_encode(context, left_truncate_len=max(self.max_length - max_gen, 1)))
            limits.append(max_gen)
            stops.append([s for s in until if s])

        def done(i: int, tokens: list[int]) -> bool:
            text = self.tok_decode(tokens)
            return any(s in text for s in stops[i])

        conts = greedy_tokens(self.model, prompts, limits, {self.eot_token_id}, self.batch_size, done)
        out = []
        for req, tokens, until in zip(requests, conts, stops):
            text = postprocess_generated_text(generation=self.tok_decode(tokens), stop=until, think_end_token=None)
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out


# ---------------------------------------------------------------------------------------------
# `smolmac eval`: the base and every adapter on one loaded base, one table


def task_manager(tasks: list[str], include_path: str | None = None):
    """lm-eval's TaskManager: only the include path's tasks when they are all there (indexing the
    built-in tasks takes a while), else the built-in tasks as well; unknown names refused."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).exists():
        raise UserError(f"--include-path: {include_path} does not exist; give the folder (or YAML file) of your lm-eval task.")
    manager = None
    if include_path:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if not all(manager.match_tasks([t]) for t in tasks):
            manager = None
    manager = manager or TaskManager(include_path=str(include_path) if include_path else None)
    for name in tasks:
        if not manager.match_tasks([name]):
            raise UserError(f"--tasks: lm-eval has no task '{name}'{did_you_mean(name, manager.all_tasks)}; see `lm_eval ls tasks`, or point --include-path at your task's YAML folder.")
    return manager


def _metrics(results: dict) -> dict:
    """{task: {metric: value}} from lm-eval's results (stderr and aliases left out)."""
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filt = key.split(",", 1)
            out.setdefault(task, {})[metric if filt == "none" else f"{metric} ({filt})"] = value
    return out


def format_table(scores: dict, columns: list[str]) -> str:
    """One plain-text table: a row per task and metric, a column per model (base, adapters)."""
    rows = [(task, metric, [values.get(c) for c in columns]) for task, metrics in scores.items() for metric, values in metrics.items()]
    wt = max([len("task")] + [len(r[0]) for r in rows])
    wm = max([len("metric")] + [len(r[1]) for r in rows])
    wc = [max(len(c), 8) for c in columns]
    lines = [f"{'task':<{wt}}  {'metric':<{wm}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, wc))]
    for task, metric, values in rows:
        cells = "  ".join(f"{'-' if v is None else f'{v:.4f}':>{w}}" for v, w in zip(values, wc))
        lines.append(f"{task:<{wt}}  {metric:<{wm}}  {cells}")
    return "\n".join(lines)


def evaluate_adapters(base: str | None, adapters: dict, tasks: list[str], limit=None, include_path: str | None = None,
                      batch_size: int = 8, dtype: str = "auto", num_fewshot: int | None = None, chat_template: bool = False,
                      seed: int = 0, on_message=None) -> dict:
    """Run lm-eval tasks on a base and on each adapter, loaded once (see `smolmac.api.evaluate`)."""
    import lm_eval
    from lm_eval.tasks import get_task_dict

    from smolmac.generate import load

    say = on_message or (lambda _m: None)
    if "base" in adapters:
        raise UserError("--adapter: 'base' names the base model's column; give that adapter another name (NAME=DIR).")
    manager = task_manager(tasks, include_path)
    try:  # the tasks' datasets first: a Hub dataset that is not cached offline fails here, not mid-run
        get_task_dict(list(tasks), manager)
    except Exception as e:  # datasets and lm-eval raise many types for a dataset that does not load
        raise UserError(f"--tasks: {', '.join(tasks)} could not be loaded ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); check that the task's dataset is cached or reachable, or use a local dataset_path.") from None
    handle = load(base, adapters, dtype)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-request INFO lines drown the table
    raw, scores, columns = {}, {}, ["base", *handle.adapters]
    for column in columns:
        handle.use(None if column == "base" else column)
        say(f"evaluating {column} on {', '.join(tasks)} ...")
        out = lm_eval.simple_evaluate(model=SmolmacLM(handle=handle, batch_size=batch_size), tasks=list(tasks), limit=limit,
                                      num_fewshot=num_fewshot, task_manager=manager, apply_chat_template=chat_template,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=None, fewshot_random_seed=seed)
        raw[column] = out["results"]
        for task, metrics in _metrics(out["results"]).items():
            for metric, value in metrics.items():
                scores.setdefault(task, {}).setdefault(metric, {})[column] = value
    handle.use(None)
    table = format_table(scores, columns)
    say(table)
    return {"scores": scores, "columns": columns, "table": table, "results": json.loads(json.dumps(raw, default=str))}
