"""The New run form's memory estimate against this machine's memory, with suggestions.

The peak itself comes from the engine (smolmac.memory.estimate, fitted to MLX's measured peak
memory); this module finds the model's config.json without downloading weights, compares the
peak with the memory the machine gives a run, and proposes changes (a smaller batch that fits,
gradient checkpointing, QLoRA, shorter sequences) when it will not fit.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

GB = 1e9
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PARTS = ("weights", "optimizer state", "activations")
# Suggestions are UI sentences (translated by the screen): (text, values) pairs.
SMALLER_BATCH = "lower train.batch_size to {b} (and raise train.grad_accum to {a} to keep the effective batch)"
GRAD_CHECKPOINT = "set train.grad_checkpoint: true"
QLORA = "use QLoRA: a 4-bit base (e.g. an mlx-community ...-4bit model) with LoRA"
SHORTER = "lower train.max_seq_len"
SUGGESTIONS = (SMALLER_BATCH, GRAD_CHECKPOINT, QLORA, SHORTER)


@dataclass
class Estimate:
    total_gb: float
    budget_gb: float
    parts: dict = field(default_factory=dict)  # name -> GB
    suggestions: list = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.budget_gb


def machine_memory_gb() -> float:
    """Memory this machine gives a run: on a Mac MLX can wire about 3/4 of RAM for the GPU."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        return 0.0
    return total * (0.75 if sys.platform == "darwin" else 0.9)


def model_config(cfg) -> dict | None:
    """The HF config dict of the recipe's model without downloading weights (None if unknown)."""
    model = cfg.model
    if isinstance(model, dict):
        from smolmac.models import preset_config

        spec = model.get("new") or {}
        return preset_config(dict(spec), cfg.tokenizer.vocab_size, None, None, None)
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


def estimate_memory(cfg, mc: dict, budget_gb: float) -> Estimate:
    """Peak memory of training `cfg` on a model with HF config `mc`, with suggestions if over.

    The number is the engine's fitted estimate (smolmac.memory.estimate); this adds the budget
    and the changes that would make it fit.

    Args:
        cfg: a smolmac Config.
        mc: the model's config.json as a dict.
        budget_gb: memory available to the run.
    """
    from smolmac.memory import estimate as engine_estimate

    t = cfg.train
    full = cfg.full or cfg.method == "pretrain"
    rows = t.batch_size * (2 if cfg.method in ("dpo", "orpo") else 1)  # chosen + rejected
    layers = None if cfg.lora.layers == "all" else int(cfg.lora.layers)
    r = engine_estimate(mc, rows, t.max_seq_len, None if full else cfg.lora.rank, layers, t.grad_checkpoint, BYTES.get(t.dtype, 4))
    parts = dict(zip(PARTS, (r["weights_gb"], r["optimizer_gb"], r["activations_gb"])))
    est = Estimate(round(r["total_gb"], 2), round(budget_gb, 1), {k: round(v, 3) for k, v in parts.items()})
    if not est.fits:
        est.suggestions = _suggest(cfg, mc, budget_gb)
    return est


def _suggest(cfg, mc, budget_gb) -> list[tuple[str, dict]]:
    """Changes that bring the estimate under budget: (message, values) pairs."""
    out = []
    t = cfg.train
    for b in range(t.batch_size - 1, 0, -1):
        trial = replace(cfg, train=replace(t, batch_size=b, grad_accum=t.grad_accum * -(-t.batch_size // b)))
        if estimate_memory(trial, mc, budget_gb).fits:
            out.append((SMALLER_BATCH, {"b": b, "a": trial.train.grad_accum}))
            break
    if not t.grad_checkpoint:
        out.append((GRAD_CHECKPOINT, {}))
    if not (mc.get("quantization") or mc.get("quantization_config")):
        out.append((QLORA, {}))
    if t.max_seq_len > 512:
        out.append((SHORTER, {}))
    return out


def estimate(cfg, budget_gb: float | None = None) -> Estimate | None:
    """The estimate for `cfg` (None when the model's config is not available yet)."""
    mc = model_config(cfg)
    if mc is None:
        return None
    return estimate_memory(cfg, mc, machine_memory_gb() if budget_gb is None else budget_gb)
