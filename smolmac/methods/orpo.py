"""ORPO (Hong et al. 2024) with TRL's definitions: NLL on the chosen reply minus beta times the
mean log-sigmoid of the log odds ratio of chosen over rejected; no reference model.

    smolmac train recipes/orpo-lora-smollm2-135m.yaml
"""

from __future__ import annotations

from functools import partial

from smolmac.errors import UserError
from smolmac.losses import orpo_batch_loss
from smolmac.methods.preference import build_pair_task


def loss(cfg):
    """The batch loss `(model, inputs, targets, mask, valid) -> (loss, pairs, metrics)`."""
    if cfg.orpo.beta < 0:
        raise UserError(f"orpo.beta: must not be negative, not {cfg.orpo.beta}; 0.1 is the usual value.")
    return partial(orpo_batch_loss, beta=cfg.orpo.beta, nll=cfg.orpo.nll)


def build_task(cfg, model, tokenizer, run_dir):
    return build_pair_task(cfg, model, tokenizer, run_dir, loss(cfg))
