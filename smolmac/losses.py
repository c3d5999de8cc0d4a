"""Losses: pure functions of arrays. Each returns (loss, weight, metrics) where `loss` is a mean
over `weight` units (tokens for LM losses, pairs for preference losses), so gradient
accumulation can weight micro-batches exactly.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from smolmac.errors import UserError

# Architectures whose forward we can re-run with our own attention mask (packing).
MASKABLE = {"llama", "qwen2", "qwen3", "mistral"}


def segment_mask(segments: mx.array) -> mx.array:
    """(B, L) row ids -> (B, 1, L, L) boolean mask: causal and within the same packed row."""
    L = segments.shape[1]
    causal = mx.tril(mx.ones((L, L), dtype=mx.bool_))
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


def forward(model, inputs: mx.array, segments: mx.array | None = None) -> mx.array:
    """Logits (B, L, V). With `segments`, packed rows attend only to themselves."""
    if segments is None:
        return model(inputs)
    if getattr(model, "model_type", None) not in MASKABLE:
        raise UserError(f"train.packing: not supported for model_type '{getattr(model, 'model_type', '?')}'; set train.packing: false.")
    inner = model.model
    mask = segment_mask(segments)
    h = inner.embed_tokens(inputs)
    for layer in inner.layers:
        h = layer(h, mask, cache=None)
    h = inner.norm(h)
    if hasattr(model, "lm_head"):
        return model.lm_head(h)
    return inner.embed_tokens.as_linear(h)


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) per position: (B, L, V), (B, L) -> (B, L), in float32."""
    logits = logits.astype(mx.float32)
    return -nn.losses.cross_entropy(logits, targets, reduction="none")


def lm_loss(model, inputs, targets, mask, segments=None):
    """Token-mean cross-entropy over positions with mask 1 (SFT and pretraining)."""
    logps = token_logps(forward(model, inputs, segments), targets)
    ntoks = mask.sum()
    loss = -(logps * mask).sum() / mx.maximum(ntoks, 1)
    return loss, ntoks, {}
