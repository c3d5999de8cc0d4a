"""Will it fit? The peak-memory estimate of a training step and the one verdict on it, used by
`smolmac train` before training and by the app's New-run form.

    peak ≈ weights + AdamW (grads, m, v of the trainable parameters)
         + activations kept for the backward pass
           per token and block: (A_D·hidden + A_I·intermediate) values
           per row, head and block: A_S·L² attention values
           per token: A_V·vocab logit values
         with gradient checkpointing only each block's input is kept, plus one block's activations.

The A_* coefficients were fitted to MLX's measured peak memory (`mx.get_peak_memory`) of
smolmac's compiled step over presets nano..smollm2-135m, vocabularies 2k-49k, batch 2-16,
sequence 128-1024, LoRA and full, with and without checkpointing (benchmarks/memory_table.py
re-measures and prints predicted vs measured).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

GB = 1e9
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PARTS = ("weights", "optimizer state", "activations")
# Suggestions are sentences with {placeholders}: the CLI formats them, the app translates them first.
SMALLER_BATCH = "lower train.batch_size to {b} (and raise train.grad_accum to {a} to keep the effective batch)"
GRAD_CHECKPOINT = "set train.grad_checkpoint: true"
USE_LORA = "use LoRA instead of full fine-tuning"
QLORA = "use QLoRA: a 4-bit base (e.g. an mlx-community ...-4bit model) with LoRA"
SHORTER = "lower train.max_seq_len"
SUGGESTIONS = (SMALLER_BATCH, GRAD_CHECKPOINT, USE_LORA, QLORA, SHORTER)

# Fitted activation coefficients (values kept per unit; see the module docstring), by least
# squares on the relative error over 23 measured points (benchmarks/memory_table.py): max 14.3%,
# mean 3.4%, in-sample. The presets' intermediate/hidden ratios (3 and 2.67) barely separate
# A_D from A_I; the fit puts it all on A_I.
A_D, A_I, A_S, A_V, A_CKPT, A_S_CKPT = 0.0, 8.82, 1.23, 4.07, 0.26, 4.69


def shape_of(config: dict) -> dict:
    """The numbers the estimate needs from a Hugging Face config dict."""
    text = config.get("text_config", config)
    hidden = text["hidden_size"]
    heads = text["num_attention_heads"]
    return {
        "hidden": hidden,
        "layers": text["num_hidden_layers"],
        "heads": heads,
        "kv_heads": text.get("num_key_value_heads") or heads,
        "head_dim": text.get("head_dim") or hidden // heads,
        "intermediate": text["intermediate_size"],
        "vocab": text["vocab_size"],
        "tied": text.get("tie_word_embeddings", True),
        "bits": (config.get("quantization") or config.get("quantization_config") or {}).get("bits"),
    }


def param_counts(s: dict, lora_rank: int | None, lora_layers: int | None = None) -> tuple[int, int]:
    """(total parameters, trainable parameters) for LoRA on every linear layer, or full."""
    d, i, q, kv = s["hidden"], s["intermediate"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    linears = [(d, q), (d, kv), (d, kv), (q, d), (d, i), (d, i), (i, d)]
    block = sum(a * b for a, b in linears) + 2 * d
    total = s["vocab"] * d * (1 if s["tied"] else 2) + s["layers"] * block + d
    if lora_rank is None:
        return total, total
    n = s["layers"] if lora_layers is None else min(lora_layers, s["layers"])
    return total, n * sum(lora_rank * (a + b) for a, b in linears)


def estimate(config: dict, batch_size: int, seq_len: int, lora_rank: int | None = 8, lora_layers: int | None = None,
             grad_checkpoint: bool = False, dtype_bytes: int = 4) -> dict:
    """Predicted peak memory (GB) of one training step, with its parts.

    Args:
        config: the model's config.json as a dict.
        batch_size: rows through the model per step (2 per pair for DPO/ORPO).
        lora_rank: None for full fine-tuning / pretraining.
        dtype_bytes: 4 for float32, 2 for bfloat16/float16.
    """
    s = shape_of(config)
    total, trainable = param_counts(s, lora_rank, lora_layers)
    weight_bytes = total * (s["bits"] / 8 + 0.0625 if s["bits"] else dtype_bytes)
    optimizer = trainable * 4 * 3  # gradient, Adam m and v (float32)
    tokens = batch_size * seq_len
    per_block = tokens * (A_D * s["hidden"] + A_I * s["intermediate"])
    scores = batch_size * s["heads"] * seq_len**2  # one block's attention matrix
    if grad_checkpoint:
        # each block's input is kept; one block is recomputed at a time, scores and their
        # gradients alive together
        activations = s["layers"] * tokens * A_CKPT * s["hidden"] + per_block + A_S_CKPT * scores
    else:
        activations = s["layers"] * (per_block + A_S * scores)
    logits = tokens * A_V * s["vocab"]
    act_bytes = (activations + logits) * dtype_bytes
    return {
        "params": total, "trainable": trainable,
        "weights_gb": weight_bytes / GB, "optimizer_gb": optimizer / GB, "activations_gb": act_bytes / GB,
        "total_gb": (weight_bytes + optimizer + act_bytes) / GB,
    }


def budget_gb() -> float:
    """Memory a run may use: Metal's recommended working set on a Mac, 80% of RAM elsewhere."""
    size = None
    try:
        import mlx.core as mx

        info = getattr(mx, "device_info", None) or mx.metal.device_info  # older MLX: mx.metal
        size = info().get("max_recommended_working_set_size")
    except (ImportError, AttributeError, RuntimeError):  # no MLX or no device info: use RAM
        size = None
    if size:
        return size / GB
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0.0
    return 0.8 * ram / GB


def model_config(cfg, vocab_size: int | None = None) -> dict | None:
    """The HF config dict of a recipe's model without downloading weights: a `{new: ...}`
    preset (vocab from `vocab_size` or tokenizer.vocab_size), a local folder, or a Hub id in the
    HF cache. None when it is not available yet."""
    model = cfg.model
    if isinstance(model, dict):
        from smolmac.models import preset_config

        return preset_config(dict(model.get("new") or {}), vocab_size or cfg.tokenizer.vocab_size, None, None, None)
    if not model:
        return None
    path = Path(os.path.expanduser(str(model)))
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model), "config.json")
    except Exception:  # invalid repo ids and cache errors both mean "unknown"
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


@dataclass
class Verdict:
    """The estimate of a recipe against a memory budget, with what to change when it won't fit."""

    total_gb: float
    budget_gb: float
    params: int = 0
    trainable: int = 0
    parts: dict = field(default_factory=dict)  # PARTS name -> GB
    suggestions: list = field(default_factory=list)  # (sentence, values) pairs
    plan: Plan | None = None  # what train.batch_size: auto chose (the estimate is of that)

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.budget_gb

    def advice(self) -> str:
        """The suggestions as one English sentence part (the CLI's; the app translates each)."""
        return "; ".join(s.format(**v) for s, v in self.suggestions)


def _estimate_recipe(cfg, mc: dict, seq_len: int | None) -> dict:
    from smolmac.methods import method
    from smolmac.models import resolve_dtype

    t = cfg.train
    m = method(cfg.method)
    full = cfg.full or m.full
    layers = None if cfg.lora.layers == "all" else int(cfg.lora.layers)
    return estimate(mc, m.rows_per_example * t.batch_size, seq_len or t.max_seq_len, None if full else cfg.lora.rank,
                    layers, t.grad_checkpoint, BYTES.get(resolve_dtype(t.dtype), 4))


def verdict(cfg, mc: dict | None = None, budget: float | None = None, seq_len: int | None = None) -> Verdict | None:
    """Will training `cfg` fit? The estimate at `seq_len` (default train.max_seq_len) against
    `budget` GB (default `budget_gb()`), with suggestions when it will not.

    Args:
        cfg: a smolmac Config.
        mc: the model's config.json as a dict (default: `model_config(cfg)`; None if unknown).
    """
    mc = mc if mc is not None else model_config(cfg)
    if mc is None:
        return None
    budget = cfg.train.memory_budget_gb or (budget_gb() if budget is None else budget)
    p = None
    if cfg.train.batch_size == "auto":  # the planner's choice is what will run
        p = plan(cfg, mc, budget, seq_len)
        cfg = replace(cfg, train=replace(cfg.train, batch_size=p.batch_size, grad_accum=p.grad_accum,
                                         grad_checkpoint=p.grad_checkpoint))
    r = _estimate_recipe(cfg, mc, seq_len)
    parts = dict(zip(PARTS, (r["weights_gb"], r["optimizer_gb"], r["activations_gb"])))
    out = Verdict(r["total_gb"], budget, r["params"], r["trainable"], parts, plan=p)
    if not out.fits:
        out.suggestions = _suggest(cfg, mc, budget, seq_len)
    return out


def _suggest(cfg, mc: dict, budget: float, seq_len: int | None) -> list[tuple[str, dict]]:
    """Changes that bring the estimate under budget: (sentence, values) pairs."""
    from smolmac.methods import method

    out = []
    t = cfg.train
    # the largest smaller batch that fits (with checkpointing if it takes that), else batch 1
    trials = [(b, ckpt) for ckpt in dict.fromkeys((t.grad_checkpoint, True)) for b in range(t.batch_size - 1, 0, -1)]
    fits = (b for b, ckpt in trials if _estimate_recipe(
        replace(cfg, train=replace(t, batch_size=b, grad_checkpoint=ckpt)), mc, seq_len)["total_gb"] <= budget)
    b = next(fits, 1)
    if b < t.batch_size:
        out.append((SMALLER_BATCH, {"b": b, "a": t.grad_accum * -(-t.batch_size // b)}))
    if not t.grad_checkpoint:
        out.append((GRAD_CHECKPOINT, {}))
    if cfg.full and not method(cfg.method).full:
        out.append((USE_LORA, {}))
    elif not cfg.full and not shape_of(mc)["bits"] and not method(cfg.method).full:
        out.append((QLORA, {}))
    if t.max_seq_len > 512:
        out.append((SHORTER, {}))
    return out



# ---------------------------------------------------------------------------------------------
# `train.batch_size: auto`: the fastest (micro-batch, checkpointing, accumulation) that fits.

# (a sentence with placeholders, like SUGGESTIONS: the app translates it)
AUTO_PLAN = ("batch_size auto: {b} rows per micro-batch x {a} accumulated, gradient checkpointing {ckpt}; "
             "predicted peak {gb:.3g} GB of {budget:.3g} GB, about {tps:,.0f} tokens/s at full-length rows")
MARGIN = 0.15  # the estimate must fit with this much to spare (its worst in-sample error: 14.3%)
DEFAULT_EFFECTIVE_BATCH = 16
# The step-time model: seconds = MICRO_OVERHEAD_S per micro-batch + model FLOPs / (measured
# matmul peak * STEP_MFU); checkpointing recomputes the forward pass (2N of the 4N FLOPs per
# token with LoRA, of 6N when training every weight). Fitted by `python benchmarks/auto_batch.py`
# (micro preset, 16 rows of 256 tokens in micro-batches of 1-16, with and without checkpointing)
# on a busy 2-core Linux CPU, MLX CPU backend + OpenBLAS, matmul peak 61 GFLOP/s at the time:
# predicted tokens/s within -17%..+32% of measured. It ranks settings (larger micro-batches and no
# recomputation are faster); its absolute tokens/s is this machine's.
STEP_MFU, MICRO_OVERHEAD_S = 0.054, 0.69


@dataclass
class Plan:
    """What `train.batch_size: auto` chose, its predicted peak memory and speed."""

    batch_size: int
    grad_accum: int
    grad_checkpoint: bool
    estimate_gb: float
    budget_gb: float
    tokens_per_second: float
    fits: bool = True

    def values(self) -> dict:
        """AUTO_PLAN's placeholders."""
        return {"b": self.batch_size, "a": self.grad_accum, "ckpt": "on" if self.grad_checkpoint else "off",
                "gb": self.estimate_gb, "budget": self.budget_gb, "tps": self.tokens_per_second}

    def sentence(self) -> str:
        return AUTO_PLAN.format(**self.values())


def predicted_tokens_per_second(mc: dict, effective: int, micro: int, seq_len: int, ckpt: bool, full: bool,
                                peak: float) -> float:
    """The step-time model above for `effective` rows of `seq_len` tokens in micro-batches of `micro`.

    Args:
        peak: the measured matmul peak in FLOP/s (smolmac.flops.peak_flops).
    """
    from smolmac.flops import flops_per_token

    fpt = flops_per_token(mc.get("text_config", mc), seq_len, 1.0 if full else 0.0)
    fpt *= 1 + (2 / 6 if full else 2 / 4) * ckpt
    tokens = effective * seq_len
    seconds = (effective // micro) * MICRO_OVERHEAD_S + tokens * fpt / (peak * STEP_MFU)
    return tokens / seconds


def plan(cfg, mc: dict, budget: float | None = None, seq_len: int | None = None, peak: float | None = None) -> Plan:
    """Choose micro-batch, gradient checkpointing and accumulation for `train.batch_size: auto`:
    every (micro, checkpointing) whose micro-batches add up to the effective batch
    (train.effective_batch, default 16) exactly, whose estimate plus MARGIN fits `budget`, the
    fastest by `predicted_tokens_per_second`. `fits` is False when nothing does (then: 1 row,
    checkpointing).

    Args:
        cfg: a Config (train.batch_size may be a number: the effective batch is then ignored).
        mc: the model's config.json as a dict.
        budget: GB (default train.memory_budget_gb, else `budget_gb()`).
        seq_len: tokens per row (default train.max_seq_len).
    """
    from smolmac.flops import peak_flops
    from smolmac.methods import method

    t = cfg.train
    budget = budget or t.memory_budget_gb or budget_gb()
    seq = seq_len or t.max_seq_len
    effective = t.effective_batch or DEFAULT_EFFECTIVE_BATCH
    full = cfg.full or method(cfg.method).full
    peak = peak or peak_flops("float32")
    options = []
    for ckpt in (False, True) if not t.grad_checkpoint else (True,):
        for micro in (b for b in range(effective, 0, -1) if effective % b == 0):
            trial = replace(cfg, train=replace(t, batch_size=micro, grad_accum=effective // micro, grad_checkpoint=ckpt))
            gb = _estimate_recipe(trial, mc, seq)["total_gb"]
            speed = predicted_tokens_per_second(mc, effective, micro, seq, ckpt, full, peak)
            options.append(Plan(micro, effective // micro, ckpt, gb, budget, speed, gb * (1 + MARGIN) <= budget))
    fitting = [o for o in options if o.fits]
    if fitting:
        return max(fitting, key=lambda o: o.tokens_per_second)
    return min(options, key=lambda o: o.estimate_gb)
