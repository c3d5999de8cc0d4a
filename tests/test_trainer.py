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



def test_keep_the_best_and_stop_when_it_stops_improving(tiny_model, chat_file, tmp_path):
    """save.best writes adapter-best/ at each new best eval; early stopping (min_delta so large that
    nothing after the first eval counts as better) ends the run cleanly after `patience` evals."""
    from smolmac.export import export_run
    from smolmac.generate import load_for_generation

    rec = recipe(tiny_model, chat_file, steps=40, early_stopping={"metric": "val_loss", "patience": 2, "min_delta": 100.0})
    # best_mode max on a falling val loss: the best weights are an early step's, not the last ones
    rec.update(eval={"every": 3}, save={"best": "val_loss", "best_mode": "max"})
    run = smolmac.train(rec, run_dir=tmp_path / "run")
    done = run.last("done")
    assert not run.stopped and done["stopped"] is False and done["step"] == 9
    evals = {e["step"]: e["val_loss"] for e in run.events if e["type"] == "eval"}
    assert done["reason"] == f"early stopping: val_loss did not improve by more than 100 for 2 evaluations (best {evals[3]:.6g})"
    assert sorted(evals) == [3, 6, 9]
    bests = [(e["step"], e["value"]) for e in run.events if e["type"] == "best"]
    expected, best = [], None
    for step in sorted(evals):
        if best is None or evals[step] > best:
            best = evals[step]
            expected.append((step, evals[step]))
    assert bests == expected and done["best_step"] == expected[-1][0]
    assert run.adapter_path == tmp_path / "run" / "adapter" and run.best_path == tmp_path / "run" / "adapter-best"
    assert json.loads((run.best_path / "adapter_config.json").read_text())["best"]["step"] == expected[-1][0]
    assert expected[-1][0] != 9  # the best and the last weights differ
    a = mx.load(str(run.best_path / "adapters.safetensors"))
    b = mx.load(str(run.adapter_path / "adapters.safetensors"))
    assert any(not mx.array_equal(a[k], b[k]) for k in a)
    # export and chat pick best or last
    out = export_run(tmp_path / "run", "mlx", tmp_path / "best", pick="best")
    exported, kept = mx.load(str(out / "adapters.safetensors")), mx.load(str(run.best_path / "adapters.safetensors"))
    assert all(mx.array_equal(exported[k], kept[k]) for k in kept)
    assert f"best evaluation (step {expected[-1][0]}" in (out / "README.md").read_text()
    m_best, _ = load_for_generation(str(tiny_model), str(tmp_path / "run"), pick="best")
    m_ref, _ = load_for_generation(str(tiny_model), str(run.best_path))
    m_last, _ = load_for_generation(str(tiny_model), str(tmp_path / "run"))
    ids = mx.array([[5, 9, 20, 33]])
    assert mx.array_equal(m_best(ids), m_ref(ids)) and not mx.array_equal(m_best(ids), m_last(ids))
    with pytest.raises(smolmac.errors.UserError, match="--pick best: .* has no adapter-best/"):
        export_run(tmp_path / "run" / "adapter", "mlx", tmp_path / "x", pick="best")


def test_watch_directions_and_recipe_checks():
    from smolmac.config import load_recipe
    from smolmac.errors import UserError
    from smolmac.trainer import Watch, watch_mode

    assert watch_mode("val_loss") == "min" and watch_mode("val_ppl") == "min"
    assert watch_mode("eval_rewards/accuracies") == "max" and watch_mode("exact_match", "min") == "min"
    w = Watch("acc", "max", min_delta=0.1)
    assert w.improved(0.5, None) and w.improved(0.61, 0.5) and not w.improved(0.6, 0.5)
    with pytest.raises(UserError, match="the eval events have no metric 'nope'; choose one of val_loss, val_ppl"):
        Watch("nope").value({"type": "eval", "step": 1, "val_loss": 1.0, "val_ppl": 2.7, "time": 1.0}, "save.best")
    base = {"model": "m", "eval": {"every": 10}}
    for es, msg in (({"patience": 0}, "'train.early_stopping' needs patience: a whole number of evaluations >= 1, not 0"),
                    ({"metric": "val_loss"}, "'train.early_stopping' needs patience: a whole number"),
                    ({"patience": 2, "min_delat": 0.1}, r"'train.early_stopping' has an unknown key 'min_delat' \(did you mean 'min_delta'"),
                    ({"patience": 2, "mode": "up"}, "'train.early_stopping' needs mode: auto, min or max, not 'up'")):
        with pytest.raises(UserError, match=msg):
            load_recipe({**base, "train": {"early_stopping": es}})
    with pytest.raises(UserError, match="needs evaluations during the run; set eval.every"):
        load_recipe({"model": "m", "train": {"early_stopping": {"patience": 2}}})
    with pytest.raises(UserError, match="'save.best_mode' must be one of auto, min, max"):
        load_recipe({"model": "m", "save": {"best": "val_loss", "best_mode": "down"}})
