"""DPO (Rafailov et al. 2023) with TRL's definitions: summed completion log-probs against a
reference that is the same weights with the adapters taken out (or the initial weights for full
fine-tuning), computed once per pair and cached in the run dir.

    smolmac train recipes/dpo-lora-smollm2-135m.yaml
"""

from __future__ import annotations

from functools import partial

from smolmac.errors import UserError
from smolmac.losses import dpo_batch_loss
from smolmac.methods.preference import build_pair_task


def loss(cfg):
    """The batch loss `(model, inputs, targets, mask, valid, ref_logps) -> (loss, pairs, metrics)`."""
    d = cfg.dpo
    if d.beta <= 0:
        raise UserError(f"dpo.beta: must be positive, not {d.beta}; 0.1 is the usual value.")
    if not 0 <= d.label_smoothing < 0.5:
        raise UserError(f"dpo.label_smoothing: must be in [0, 0.5), not {d.label_smoothing}.")
    if d.label_smoothing and d.loss != "sigmoid":
        raise UserError(f"dpo.label_smoothing: applies only to dpo.loss: sigmoid, not {d.loss}; set it to 0.")
    return partial(dpo_batch_loss, beta=d.beta, loss_type=d.loss, label_smoothing=d.label_smoothing)


def build_task(cfg, model, tokenizer, run_dir):
    return build_pair_task(cfg, model, tokenizer, run_dir, loss(cfg), reference=True)
