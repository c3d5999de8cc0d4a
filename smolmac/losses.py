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


def _maskable(model) -> bool:
    return getattr(model, "model_type", None) in MASKABLE


def hidden_states(model, inputs: mx.array, segments: mx.array | None = None) -> mx.array:
    """Final-normed hidden states (B, L, D) of a llama-like mlx-lm model.

    With `segments`, packed rows attend only to themselves (block-diagonal causal mask).
    """
    inner = model.model
    mask = "causal" if segments is None else segment_mask(segments)
    h = inner.embed_tokens(inputs)
    for layer in inner.layers:
        h = layer(h, mask, cache=None)
    return inner.norm(h)


def forward(model, inputs: mx.array, segments: mx.array | None = None) -> mx.array:
    """Logits (B, L, V). With `segments`, packed rows attend only to themselves."""
    if segments is None:
        return model(inputs)
    if not _maskable(model):
        raise UserError(f"train.packing: not supported for model_type '{getattr(model, 'model_type', '?')}'; set train.packing: false.")
    h = hidden_states(model, inputs, segments)
    if hasattr(model, "lm_head"):
        return model.lm_head(h)
    return model.model.embed_tokens.as_linear(h)


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) per position: (B, L, V), (B, L) -> (B, L), in float32."""
    logits = logits.astype(mx.float32)
    return -nn.losses.cross_entropy(logits, targets, reduction="none")


def sequence_logps(model, inputs, targets, segments=None) -> mx.array:
    """log p(target) per position (B, L) for a batch of token rows.

    The full (B, L, V) logits are built: computing them in checkpointed chunks was measured to
    raise peak memory on MLX (+31% on the CPU backend; the lazy graph keeps every chunk alive).
    """
    return token_logps(forward(model, inputs, segments), targets)


def lm_loss(model, inputs, targets, mask, segments=None):
    """Token-mean cross-entropy over positions with mask 1 (SFT and pretraining)."""
    logps = sequence_logps(model, inputs, targets, segments)
    ntoks = mask.sum()
    loss = -(logps * mask).sum() / mx.maximum(ntoks, 1)
    return loss, ntoks, {}


# ---------------------------------------------------------------------------------------------
# Preference losses (TRL's definitions: trl/trainer/dpo_trainer.py, trl/experimental/orpo). Batches hold chosen rows then rejected rows
# along the batch axis, (2B, L), so both go through the model in one forward pass.

LN2 = 0.6931471805599453


def completion_logps(model, inputs, targets, mask) -> tuple[mx.array, mx.array]:
    """Summed log-probs and token counts of each row's completion: (2B, L) -> (2B,), (2B,)."""
    logps = sequence_logps(model, inputs, targets)  # (2B, L)
    return (logps * mask).sum(-1), mask.sum(-1)


def log1mexp(x: mx.array) -> mx.array:
    """log(1 - exp(x)) for x < 0 without cancellation (Mächler 2012; TRL's ORPO).

    Near 0, 1 - exp(x) cancels, so use log(-expm1(x)) for x > -ln 2; below, exp(x) is small
    against 1, so use log1p(-exp(x)). Each branch only sees inputs from its own side: for x
    within 6e-8 of 0, exp(x) rounds to 1 and the unused log1p branch would be -inf with an
    infinite gradient, which `where` would turn into NaN.
    """
    near = x > -LN2
    small = mx.log(-mx.expm1(mx.where(near, x, -1.0)))
    large = mx.log1p(-mx.exp(mx.where(near, -1.0, x)))
    return mx.where(near, small, large)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_tokens=None, rejected_tokens=None):
    """Per-pair DPO losses and implicit rewards (TRL `DPOTrainer`).

    Args:
        policy_*_logps, ref_*_logps: (B,) log-probs summed over completion tokens.
        beta: temperature; rewards are beta * (log pi - log pi_ref).
        loss_type: "sigmoid" (with optional cDPO label smoothing), "ipo" or "hinge".
        label_smoothing: epsilon, the assumed probability that a label is flipped (sigmoid only).
        chosen_tokens, rejected_tokens: (B,) completion lengths; IPO averages per token.
    Returns:
        (losses (B,), chosen_rewards (B,), rejected_rewards (B,)).
    """
    chosen_ratio = policy_chosen_logps - ref_chosen_logps  # Δ+
    rejected_ratio = policy_rejected_logps - ref_rejected_logps  # Δ-
    z = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * nn.log_sigmoid(beta * z) - label_smoothing * nn.log_sigmoid(-beta * z)
    elif loss_type == "hinge":
        losses = mx.maximum(1 - beta * z, 0.0)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs chosen_tokens and rejected_tokens")
        z_bar = chosen_ratio / mx.maximum(chosen_tokens, 1) - rejected_ratio / mx.maximum(rejected_tokens, 1)
        losses = (z_bar - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    return losses, beta * chosen_ratio, beta * rejected_ratio


def orpo_loss(chosen_avg_logps, rejected_avg_logps, chosen_nll, beta: float = 0.1):
    """ORPO (Hong et al. 2024; TRL `odds_ratio_loss`): NLL - beta * mean log sigmoid(log odds ratio).

    Args:
        chosen_avg_logps, rejected_avg_logps: (B,) log-probs averaged over completion tokens (< 0).
        chosen_nll: scalar token-mean cross-entropy of the chosen sequences.
        beta: weight lambda of the odds-ratio term.
    Returns:
        (loss scalar, log_odds (B,), mean log sigmoid(log_odds) scalar), like TRL.
    """
    # log odds(y) = l - log(1 - e^l); their difference is the log odds ratio.
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (log1mexp(chosen_avg_logps) - log1mexp(rejected_avg_logps))
    ratio = nn.log_sigmoid(log_odds).mean()
    return chosen_nll - beta * ratio, log_odds, ratio


def _reward_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict:
    """TRL's metric names; accuracy is strict (a tie counts as wrong)."""
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(mx.float32).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.mean(),
        "logps/rejected": rejected_logps.mean(),
    }


def dpo_batch_loss(model, inputs, targets, mask, valid, ref_logps, *, beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
    """DPO over a (2B, L) batch of chosen then rejected rows; `ref_logps` (2B,) precomputed.

    `valid` (non-padding targets) is unused here; it is part of the shared pair-batch layout.
    Returns (mean loss over pairs, number of pairs, TRL metrics).
    """
    sums, counts = completion_logps(model, inputs, targets, mask)
    b = inputs.shape[0] // 2
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        sums[:b], sums[b:], ref_logps[:b], ref_logps[b:], beta, loss_type, label_smoothing, counts[:b], counts[b:])
    metrics = _reward_metrics(mx.stop_gradient(chosen_rewards), mx.stop_gradient(rejected_rewards),
                              mx.stop_gradient(sums[:b]), mx.stop_gradient(sums[b:]))
    return losses.mean(), mx.array(b, dtype=mx.float32), metrics


def orpo_batch_loss(model, inputs, targets, mask, valid, *, beta=0.1, nll="completion"):
    """ORPO over a (2B, L) batch of chosen then rejected rows; no reference model.

    The NLL is the token-mean cross-entropy of the chosen completions (`nll="completion"`), or of
    every non-padding token of the chosen sequences, prompt included, like TRL (`nll="full"`).
    Returns (loss, number of pairs, TRL metrics incl. nll_loss, log_odds_ratio, log_odds_chosen).
    """
    logps = sequence_logps(model, inputs, targets)  # (2B, L)
    b = inputs.shape[0] // 2
    avg = (logps * mask).sum(-1) / mx.maximum(mask.sum(-1), 1)  # (2B,) average completion log-prob
    nll_mask = (mask if nll == "completion" else valid)[:b]
    chosen_nll = -(logps[:b] * nll_mask).sum() / mx.maximum(nll_mask.sum(), 1)
    loss, log_odds, ratio = orpo_loss(avg[:b], avg[b:], chosen_nll, beta)
    chosen_avg, rejected_avg = mx.stop_gradient(avg[:b]), mx.stop_gradient(avg[b:])
    metrics = _reward_metrics(beta * chosen_avg, beta * rejected_avg, chosen_avg, rejected_avg)
    # Reuse `ratio` rather than recompute it: a metric that repeats an expression of the loss
    # makes mlx 0.32's compiled value_and_grad fail (IndexError _Map_base::at).
    metrics.update({
        "nll_loss": mx.stop_gradient(chosen_nll),
        "log_odds_ratio": mx.stop_gradient(ratio),
        "log_odds_chosen": mx.stop_gradient(log_odds).mean(),
    })
    return loss, mx.array(b, dtype=mx.float32), metrics
