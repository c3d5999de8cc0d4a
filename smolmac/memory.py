"""Peak-memory estimate of a training step, used by the CLI before training and the TUI's form.

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
from pathlib import Path

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
    gb = 1e9
    return {
        "params": total, "trainable": trainable,
        "weights_gb": weight_bytes / gb, "optimizer_gb": optimizer / gb, "activations_gb": act_bytes / gb,
        "total_gb": (weight_bytes + optimizer + act_bytes) / gb,
    }


def machine_memory_gb() -> float:
    """Memory MLX may use: the GPU's recommended working set on Metal, else physical RAM."""
    import mlx.core as mx

    info = mx.device_info()
    size = info.get("max_recommended_working_set_size") or info.get("memory_size")
    if not size:
        import os

        size = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return size / 1e9


def estimate_recipe(cfg, model_config: dict, seq_len: int | None = None) -> dict:
    """The estimate for a recipe's batch, LoRA/full and checkpointing at `seq_len` (default
    train.max_seq_len), plus the machine's memory and a suggestion when it will not fit."""
    t = cfg.train
    full = cfg.full or cfg.method == "pretrain"
    layers = None if cfg.lora.layers == "all" else int(cfg.lora.layers)
    rows = 2 * t.batch_size if cfg.method in ("dpo", "orpo") else t.batch_size  # chosen + rejected
    est = estimate(model_config, rows, seq_len or t.max_seq_len, None if full else cfg.lora.rank, layers, t.grad_checkpoint,
                   2 if t.dtype in ("bfloat16", "float16") else 4)
    est["machine_gb"] = machine_memory_gb()
    est["fits"] = est["total_gb"] < 0.85 * est["machine_gb"]
    if not est["fits"]:
        tips = []
        if not t.grad_checkpoint:
            tips.append("set train.grad_checkpoint: true")
        if t.batch_size > 1:
            tips.append(f"lower train.batch_size (e.g. {max(1, t.batch_size // 2)}) and raise train.grad_accum")
        if full:
            tips.append("use LoRA instead of full fine-tuning")
        elif not shape_of(model_config)["bits"]:
            tips.append("use a 4-bit base (QLoRA)")
        est["suggestion"] = "; ".join(tips)
    return est


def read_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
