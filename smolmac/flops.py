"""Compute: training FLOPs per token, this machine's measured matmul peak, and model FLOPs
utilisation (MFU), for pretraining reports and benchmarks.

FLOPs per token ≈ 6N + 12·L·H·Q·T for full training (nanoGPT's `estimate_mfu`, the PaLM paper);
with LoRA the frozen weights get no weight gradients: ≈ 4N.
"""

from __future__ import annotations

import time

_PEAK: dict = {}


def flops_per_token(config: dict, seq_len: int, trainable_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6N + 12*L*H*Q*T (nanoGPT/PaLM); LoRA drops weight grads (4N)."""
    from smolmac.models import count_params

    n = count_params(config)
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    q = config.get("head_dim") or config["hidden_size"] // heads
    dense = 6 * n if trainable_fraction >= 1.0 else 4 * n
    return float(dense + 12 * layers * heads * q * seq_len)


def peak_flops(dtype: str = "float32", size: int = 1024) -> float:
    """Measured matmul throughput of this machine (FLOP/s): best of a few size² matmuls."""
    if dtype not in _PEAK:
        import mlx.core as mx

        from smolmac.models import DTYPES

        a = mx.random.normal((size, size)).astype(DTYPES[dtype])
        mx.eval(a @ a)  # warm-up (kernel compilation)
        best = float("inf")
        for _ in range(5):
            tic = time.perf_counter()
            mx.eval(a @ a)
            best = min(best, time.perf_counter() - tic)
        _PEAK[dtype] = 2 * size**3 / best
    return _PEAK[dtype]


def mfu(tokens_per_second: float, flops_token: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the measured matmul peak."""
    return tokens_per_second * flops_token / max(peak, 1.0)


def model_dims(model) -> dict | None:
    """HF-style dims of an mlx-lm Llama-like model (for FLOPs), or None if unknown."""
    args = getattr(model, "args", None)
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")
    if args is None or not all(hasattr(args, k) for k in needed):
        return None
    config = {k: getattr(args, k) for k in needed}
    config["head_dim"] = getattr(args, "head_dim", None) or config["hidden_size"] // config["num_attention_heads"]
    config["tie_word_embeddings"] = getattr(args, "tie_word_embeddings", True)
    config["max_position_embeddings"] = getattr(args, "max_position_embeddings", None) or 2048
    return config
