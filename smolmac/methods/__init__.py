"""Training methods: each is one module here with `build_task(cfg, model, tokenizer, run_dir)`
returning a `smolmac.trainer.Task` (its batches and its loss), plus one `Method` entry below.

Recipe validation, runs, the memory verdict, model cards, the app's New-run form and the CLI all
read this table; none of them names a method. Adding one (say KTO) is `methods/kto.py` with
`build_task` (pairs and reference log-probs come from methods/preference.py, the loss from
smolmac/losses.py), its recipe section in config.py, and an entry here.

This module imports nothing heavy: `import smolmac.config` reads it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from smolmac.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Method:
    """What the rest of smolmac needs to know about a training method."""

    name: str
    help: str  # one line for --help-keys, the app and the README
    module: str  # smolmac.methods.<module> with build_task (tokenizer: train_stage)
    data: str  # the rows it reads: "chat" (SFT formats), "preference" or "corpus" (text)
    section: str | None = None  # its own recipe section (dpo, orpo, tokenizer)
    rows_per_example: int = 1  # sequences through the model per example: 2 for chosen + rejected
    full: bool = False  # always trains every parameter (pretraining)
    reference: bool = False  # needs reference log-probs (computed once, cached in the run dir)
    trains: bool = True  # False: no model is trained (tokenizer)
    card: tuple = ()  # (recipe key, model-card hyperparameter name) pairs

    def load(self):
        return importlib.import_module(f"smolmac.methods.{self.module}")


METHODS = {m.name: m for m in (
    Method("sft", "supervised fine-tuning: loss on the assistant turns of chats, prompt/completion or text rows",
           "sft", "chat"),
    Method("pretrain", "next-token prediction on a text corpus, every parameter trained (from scratch with {new: ...})",
           "pretrain", "corpus", full=True),
    Method("dpo", "Direct Preference Optimization (TRL's losses): chosen over rejected against a frozen reference",
           "dpo", "preference", section="dpo", rows_per_example=2, reference=True,
           card=(("dpo.beta", "dpo_beta"), ("dpo.loss", "dpo_loss"))),
    Method("orpo", "Odds Ratio Preference Optimization: SFT on chosen plus an odds-ratio penalty, no reference",
           "orpo", "preference", section="orpo", rows_per_example=2,
           card=(("orpo.beta", "orpo_beta"), ("orpo.nll", "orpo_nll"))),
    Method("tokenizer", "train a byte-level BPE/Unigram tokenizer on a corpus (no model)",
           "tokenizer", "corpus", section="tokenizer", trains=False),
)}


def method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"method: '{name}' is not a method{did_you_mean(name, METHODS)}; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def build_task(cfg, model, tokenizer, run_dir):
    """The `Task` (batches, loss, what to report) of `cfg.method`."""
    return method(cfg.method).load().build_task(cfg, model, tokenizer, run_dir)
