"""The loop: learning, trainable parameters, resume equality, stop, accumulation, mlx-lm adapters."""

import json
import threading

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import smolmac
from smolmac.config import LoraConfig
from smolmac.lora import apply_lora
from smolmac.models import load_model


def recipe(model, train_file, **train):
    return {
        "model": str(model),
        "data": {"train": str(train_file), "valid": 0.1},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.1},
        "train": {"steps": 10, "lr": 5e-3, "batch_size": 4, "report_every": 1, "warmup": 2, **train},
    }


def test_trainable_parameter_count_is_exact(tiny_model):
    model, *_ = load_model(str(tiny_model))
    apply_lora(model, LoraConfig(rank=4, targets=["q_proj", "v_proj"], layers=1))
    n = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    # last block only: q_proj 64->64 and v_proj 64->32 (2 kv heads x 16): r * (in + out) each
    assert n == 4 * (64 + 64) + 4 * (64 + 32)


def test_loss_falls_and_every_trainable_parameter_changes(tiny_model, chat_file, tmp_path):
    model, *_ = load_model(str(tiny_model))
    run = smolmac.train(recipe(tiny_model, chat_file, steps=40, lr=1e-2), run_dir=tmp_path / "run")
    losses = [e["loss"] for e in run.events if e["type"] == "train"]
    assert np.mean(losses[-5:]) < losses[0] - 0.5
    ev = run.last("train")
    for key in ("loss", "lr", "tokens_per_second", "trained_tokens", "peak_memory_gb", "elapsed_s", "eta_s"):
        assert key in ev
    assert ev["tokens_per_second"] > 0
    evals = [e for e in run.events if e["type"] == "eval"]
    assert evals and evals[-1]["val_ppl"] == pytest.approx(np.exp(evals[-1]["val_loss"]), rel=1e-3)
    trained = mx.load(str(run.adapter_path / "adapters.safetensors"))
    init_model, *_ = load_model(str(tiny_model))
    apply_lora(init_model, LoraConfig(rank=4, alpha=8, dropout=0.1), seed=0)
    init = dict(tree_flatten(init_model.trainable_parameters()))
    assert set(trained) == set(init)
    for k in trained:
        assert not mx.array_equal(trained[k], init[k]), k
    cfg = json.loads((run.adapter_path / "adapter_config.json").read_text())
    assert cfg["lora_parameters"]["scale"] == 2.0 and cfg["rank"] == 4 and cfg["alpha"] == 8
    # mlx-lm loads our adapter as-is
    from mlx_lm.utils import load

    m2, _ = load(str(tiny_model), adapter_path=str(run.adapter_path))
    assert len([k for k, _ in tree_flatten(m2.parameters()) if k.endswith("lora_a")]) == 14


def test_resume_equals_uninterrupted(tiny_model, chat_file, tmp_path):
    rec = recipe(tiny_model, chat_file, steps=8, grad_accum=2)
    full = smolmac.train(rec, run_dir=tmp_path / "a")
    stop = threading.Event()
    first = smolmac.train(rec, run_dir=tmp_path / "b", stop=stop,
                          on_event=lambda e: e["type"] == "train" and e["step"] == 4 and stop.set())
    assert first.stopped and first.adapter_path is None
    assert (tmp_path / "b" / "checkpoints" / "step-0000004" / "state.json").is_file()
    resumed = smolmac.train(run_dir=tmp_path / "b", resume=True)
    a = [e["loss"] for e in full.events if e["type"] == "train"]
    b = [e["loss"] for e in resumed.events if e["type"] == "train"]
    assert len(a) == len(b) == 8
    assert a == b  # bit-exact, as the README says
    wa = mx.load(str(full.adapter_path / "adapters.safetensors"))
    wb = mx.load(str(resumed.adapter_path / "adapters.safetensors"))
    for k in wa:
        assert mx.array_equal(wa[k], wb[k]), k


def test_grad_accumulation_weights_tokens(tiny_model):
    """Two micro-batches with different token counts equal one step on both (token-weighted)."""
    import mlx.optimizers as optim

    from smolmac.losses import lm_loss
    from smolmac.trainer import Position, train

    rng = np.random.default_rng(0)
    inputs = rng.integers(4, 300, (4, 16)).astype(np.int32)
    targets = rng.integers(4, 300, (4, 16)).astype(np.int32)
    mask = np.zeros((4, 16), np.float32)
    mask[0, :3] = mask[1, :5] = mask[2, :16] = mask[3, :11] = 1  # 8 tokens vs 27 tokens

    class Two:
        def stream(self, start):
            while True:
                yield (inputs[:2], targets[:2], mask[:2]), 8
                yield (inputs[2:], targets[2:], mask[2:]), 27

    class One:
        def stream(self, start):
            while True:
                yield (inputs, targets, mask), 35

    results = []
    for batches, accum in ((Two(), 2), (One(), 1)):
        model, *_ = load_model(str(tiny_model))
        apply_lora(model, LoraConfig(rank=4), seed=0)
        train(model, optim.SGD(learning_rate=1.0), batches, lm_loss, total_steps=1, on_event=lambda e: None,
              grad_accum=accum, grad_clip=0, start=Position())
        results.append(dict(tree_flatten(model.trainable_parameters())))
    for k in results[0]:
        np.testing.assert_allclose(np.array(results[0][k]), np.array(results[1][k]), atol=1e-5)


def test_full_finetune_writes_hf_model(tiny_model, chat_file, tmp_path):
    run = smolmac.train({**recipe(tiny_model, chat_file, steps=3), "full": True}, run_dir=tmp_path / "full")
    assert (run.model_path / "config.json").is_file() and (run.model_path / "tokenizer.json").is_file()
    from safetensors import safe_open

    with safe_open(str(run.model_path / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}

