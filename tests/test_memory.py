"""The memory estimate: close to MLX's measured peak, and it suggests what to change."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smolmac import memory
from smolmac.config import load_recipe
from smolmac.models import preset_config

TABLE = Path(__file__).parent.parent / "benchmarks" / "memory_table.py"


@pytest.mark.parametrize("point", ["micro 2048 4 256 lora 0", pytest.param("mini 4096 2 512 full 1", marks=pytest.mark.slow)])
def test_estimate_within_15_percent_of_measured(point):
    out = subprocess.run([sys.executable, str(TABLE), *point.split()], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_gb"]
    preset, vocab, b, seq, mode, ckpt = point.split()
    cfg = preset_config({"preset": preset}, int(vocab), 0, 1, 2)
    predicted = memory.estimate(cfg, int(b), int(seq), None if mode == "full" else 8, grad_checkpoint=ckpt == "1")["total_gb"]
    assert abs(predicted / measured - 1) < 0.15, (predicted, measured)


def test_parts_and_suggestions(monkeypatch):
    cfg = preset_config({"preset": "smollm2-135m"}, 49152, 0, 1, 2)
    lora = memory.estimate(cfg, 8, 1024, 8)
    full = memory.estimate(cfg, 8, 1024, None)
    ckpt = memory.estimate(cfg, 8, 1024, 8, grad_checkpoint=True)
    assert lora["params"] == 134_515_008
    assert full["optimizer_gb"] > 10 * lora["optimizer_gb"]
    assert ckpt["activations_gb"] < 0.5 * lora["activations_gb"]
    recipe = load_recipe({"model": "m", "train": {"batch_size": 8, "max_seq_len": 1024}})
    est = memory.verdict(recipe, cfg, budget=4.0)
    assert not est.fits
    assert "grad_checkpoint" in est.advice() and "batch_size" in est.advice() and "QLoRA" in est.advice()


def test_memory_estimate_suggests_the_largest_batch_that_fits(tiny_model):
    from smolmac.memory import GRAD_CHECKPOINT, SMALLER_BATCH, model_config, verdict

    cfg = load_recipe({"model": str(tiny_model), "train": {"batch_size": 8, "max_seq_len": 4096}})
    mc = model_config(cfg)
    assert mc["hidden_size"] == 64  # read from the local folder, nothing downloaded
    peak = {b: verdict(load_recipe(cfg, {"train": {"batch_size": b}}), mc, 1e9).total_gb for b in (3, 4, 8)}
    assert peak[3] < peak[4] < peak[8]
    est = verdict(cfg, budget=(peak[3] + peak[4]) / 2)
    assert not est.fits and est.total_gb == peak[8]
    assert (SMALLER_BATCH, {"b": 3, "a": 3}) in est.suggestions and (GRAD_CHECKPOINT, {}) in est.suggestions
    assert verdict(cfg, budget=peak[8] + 0.01).suggestions == []
    assert verdict(load_recipe({"model": "nobody/not-in-the-cache"})) is None
