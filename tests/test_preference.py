"""DPO and ORPO: losses by hand, log-probs vs transformers, learning, resume, bad input, recipes."""

import json
import math
import random
import threading
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import write_jsonl
from mlx.utils import tree_flatten, tree_unflatten

import smolmac
from smolmac import bench, losses
from smolmac.config import LoraConfig, load_recipe
from smolmac.errors import UserError
from smolmac.evaluation import evaluate_loss
from smolmac.lora import apply_lora
from smolmac.methods import METHODS, preference
from smolmac.methods.sft import load_split_rows
from smolmac.models import load_model

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# Losses against numbers worked out by hand


def test_dpo_losses_by_hand():
    pc, pr, rc, rr = mx.array([-10.0, -4.0]), mx.array([-12.0, -3.0]), mx.array([-11.0, -4.0]), mx.array([-11.0, -4.0])
    # pair 0: Δ+ = 1, Δ- = -1, z = 2;  pair 1: Δ+ = 0, Δ- = 1, z = -1
    losses_, rch, rrej = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    np.testing.assert_allclose(np.array(losses_), [-math.log(sigmoid(1.0)), -math.log(sigmoid(-0.5))], rtol=1e-6)
    np.testing.assert_allclose(np.array(rch), [0.5, 0.0])
    np.testing.assert_allclose(np.array(rrej), [-0.5, 0.5])
    # cDPO: -(1-ε) log σ(βz) - ε log σ(-βz), ε = 0.2
    smooth, _, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    want = [-0.8 * math.log(sigmoid(b)) - 0.2 * math.log(sigmoid(-b)) for b in (1.0, -0.5)]
    np.testing.assert_allclose(np.array(smooth), want, rtol=1e-6)
    hinge, _, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.25, loss_type="hinge")
    np.testing.assert_allclose(np.array(hinge), [0.5, 1.25])  # relu(1 - βz)
    # ipo: z̄ = Δ+/n+ - Δ-/n-; pair 0 n = (2, 4): 0.5 + 0.25 = 0.75; pair 1 n = (1, 2): 0 - 0.5
    ipo, _, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo",
                                chosen_tokens=mx.array([2.0, 1.0]), rejected_tokens=mx.array([4.0, 2.0]))
    np.testing.assert_allclose(np.array(ipo), [(0.75 - 1.0) ** 2, (-0.5 - 1.0) ** 2], rtol=1e-6)
    # extreme log-probs stay finite (log σ via softplus, not log(σ))
    big, _, _ = losses.dpo_loss(mx.array([-1e4]), mx.array([0.0]), mx.array([0.0]), mx.array([0.0]), beta=1.0)
    assert big.item() == pytest.approx(1e4)


def test_log1mexp_is_stable_at_both_ends():
    x = mx.array([-1e-20, -1e-7, -0.5, -math.log(2), -1.0, -30.0, -100.0])
    got = np.array(losses.log1mexp(x))
    want = [math.log(1e-20), math.log(-math.expm1(-1e-7)), math.log(1 - math.exp(-0.5)), math.log(0.5),
            math.log(1 - math.exp(-1.0)), math.log1p(-math.exp(-30.0)), 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[5] < 0  # -9.36e-14: the naive log(-expm1(x)) rounds this to exactly 0
    # gradients are finite on both branches
    g = mx.grad(lambda v: losses.log1mexp(v).sum())(x)
    assert np.isfinite(np.array(g)).all()


def test_orpo_loss_by_hand():
    lc, lr_ = -0.1, -2.0  # average completion log-probs
    log_odds = (lc - lr_) - (math.log(1 - math.exp(lc)) - math.log(1 - math.exp(lr_)))
    loss, lo, ratio = losses.orpo_loss(mx.array([lc]), mx.array([lr_]), mx.array(1.5), beta=0.1)
    assert lo.item() == pytest.approx(log_odds, rel=1e-5)
    assert loss.item() == pytest.approx(1.5 - 0.1 * math.log(sigmoid(log_odds)), rel=1e-5)
    assert ratio.item() == pytest.approx(math.log(sigmoid(log_odds)), rel=1e-5)
    # near-certain chosen (l -> 0) and hopeless rejected: finite, log odds = l+ - log(-expm1(l+)) - l- + log1p(-e^l-)
    loss, lo, _ = losses.orpo_loss(mx.array([-1e-6]), mx.array([-50.0]), mx.array(0.0), beta=1.0)
    want = (-1e-6 + 50.0) - (math.log(-math.expm1(-1e-6)) - math.log1p(-math.exp(-50.0)))
    assert lo.item() == pytest.approx(want, rel=1e-5)
    assert loss.item() == pytest.approx(-math.log(sigmoid(want)), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Data: formats, masks, bad input


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Toy preferences: the chosen reply starts 'yes', the rejected one 'no', same words after."""
    rng = random.Random(seed)
    words = "the cat sat on a mat and dog ran to park".split()
    rows = []
    for _ in range(n):
        w = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": f"say: {w}", "chosen": f"yes {w}", "rejected": f"no {w}"})
    return rows


def test_formats_and_masks(tiny_model):
    _, tok, _, _ = load_model(str(tiny_model))
    hf = tok._tokenizer
    user = {"role": "user", "content": "hi"}
    rows = [
        {"prompt": "hi", "chosen": "the cat", "rejected": "a dog"},  # standard, rendered as chat
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "the cat"}], "rejected": [{"role": "assistant", "content": "a dog"}]},
        {"chosen": [user, {"role": "assistant", "content": "the cat"}], "rejected": [user, {"role": "assistant", "content": "a dog"}]},
        {"prompt": "hi", "chosen": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "the cat"}],
         "rejected": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a dog"}]},  # H4 style: implicit
    ]
    pairs, counts = preference.tokenize_pairs(tok, rows, 64)
    assert counts == {"identical": 0, "long_prompt": 0, "truncated": 0}
    for c, r in pairs:
        assert hf.decode(c.tokens) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nthe cat<|im_end|>"
        assert hf.decode(c.tokens[c.mask]) == "the cat<|im_end|>"  # completion incl. end of turn, nothing else
        assert hf.decode(r.tokens[r.mask]) == "a dog<|im_end|>"
    assert preference.split_row({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"}) == ("Q: hi A:", " yes", " no", False)


def test_plain_strings_without_chat_template(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tok.chat_template = None
    (c, r), = preference.tokenize_pairs(tok, [{"prompt": "the cat", "chosen": " sat", "rejected": " ran"}], 64)[0]
    assert tok.decode(c.tokens) == "the cat sat<|im_end|>" and tok.decode(c.tokens[c.mask]) == " sat<|im_end|>"
    assert c.tokens[-1] == tok.eos_token_id


def test_bad_input(tiny_model):
    _, tok, _, _ = load_model(str(tiny_model))
    good = pair_rows(3)
    same = {"prompt": "x", "chosen": "the cat", "rejected": "the cat"}
    long_prompt = {"prompt": "the cat sat " * 40, "chosen": "yes", "rejected": "no"}
    long_reply = {"prompt": "hi", "chosen": "the cat sat " * 40, "rejected": "no"}
    pairs, counts = preference.tokenize_pairs(tok, good + [same, long_prompt, long_reply], 48)
    assert len(pairs) == 4 and counts == {"identical": 1, "long_prompt": 1, "truncated": 1}
    c, r = pairs[-1]
    assert len(c.tokens) == 49 and c.mask.sum() > 0 and not c.mask[:5].any()  # prompt start kept, reply cut
    bad_role = {"prompt": "hi", "chosen": [{"role": "user", "content": "x"}], "rejected": "y", "__where__": "p.jsonl:7"}
    with pytest.raises(UserError, match=r"p.jsonl:7: 'chosen' must hold only the assistant reply"):
        preference.tokenize_pairs(tok, [bad_role], 32)
    with pytest.raises(UserError, match="'rejected' is empty"):
        preference.tokenize_pairs(tok, [{"prompt": "a", "chosen": "b", "rejected": None}], 32)


def test_unusable_input_fails_in_one_sentence(tiny_model, tmp_path):
    base = {"model": str(tiny_model), "method": "dpo", "train": {"steps": 1, "max_seq_len": 32}}
    missing = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(UserError, match=r"m.jsonl:1: the row has 'chosen' but no 'rejected'"):
        smolmac.train({**base, "data": {"train": str(missing)}}, run_dir=tmp_path / "r1")
    same = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}] * 3)
    with pytest.raises(UserError, match=r"no usable preference pairs: 3 of 3 rows have identical"):
        smolmac.train({**base, "data": {"train": str(same)}}, run_dir=tmp_path / "r2")
    sft = write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat"}])
    with pytest.raises(UserError, match="needs preference rows"):
        smolmac.train({**base, "data": {"train": str(sft)}}, run_dir=tmp_path / "r3")


# ---------------------------------------------------------------------------------------------
# Log-probs and the reference model


def test_summed_completion_logps_match_transformers(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    model, tok, _, _ = load_model(str(tiny_model))
    long = {"prompt": "say: a long one", "chosen": "the cat sat on a mat " * 30, "rejected": "no"}
    pairs, _ = preference.tokenize_pairs(tok, pair_rows(6, seed=3) + [long], 256)
    assert max(len(c.tokens) for c, _ in pairs) > 129  # a long row next to short ones (padding)
    batches = preference.PairBatches(pairs, 4, 256, 0)
    ours = preference.reference_logps(model, batches)  # no adapters: the model itself
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    for i, (c, r) in enumerate(pairs):
        for j, e in enumerate((c, r)):
            ids = torch.tensor(e.tokens[None].astype(np.int64))
            with torch.no_grad():
                logp = torch.log_softmax(hf(ids).logits[0, :-1].float(), -1)
            per_token = logp.gather(-1, ids[0, 1:, None])[:, 0].numpy()
            assert ours[i, j] == pytest.approx(float(per_token[e.mask[1:]].sum()), abs=1e-3)


@pytest.mark.parametrize("dora", [False, True])
def test_adapters_disabled_is_the_base_model(tiny_model, dora):
    model, *_ = load_model(str(tiny_model))
    x = mx.array([[5, 17, 42, 99, 3]])
    base = model(x)
    apply_lora(model, LoraConfig(rank=4, alpha=8, dora=dora), seed=0)
    # a trained-looking adapter: nonzero B and, for DoRA, a moved magnitude
    params = tree_flatten(model.trainable_parameters())
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.5 + (1.0 if k.endswith(".m") else 0.0)) for k, v in params]))
    assert not mx.allclose(model(x), base, atol=1e-3)
    with preference.adapters_disabled(model):
        assert mx.array_equal(model(x), base)
    assert not mx.allclose(model(x), base, atol=1e-3)  # adapters are back
    assert len(tree_flatten(model.trainable_parameters())) > 0


# ---------------------------------------------------------------------------------------------
# Training: learning, every parameter moves, resume


def recipe(model, train_file, valid_file, method, **train):
    return {
        "model": str(model), "method": method,
        "data": {"train": str(train_file), "valid": str(valid_file)},
        "lora": {"rank": 4, "alpha": 8},
        "dpo": {"beta": 0.5}, "orpo": {"beta": 0.5},
        "train": {"steps": 40, "lr": 1e-2, "batch_size": 8, "max_seq_len": 64, "report_every": 1, "warmup": 2, **train},
    }


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    return write_jsonl(d / "train.jsonl", pair_rows(64, seed=1)), write_jsonl(d / "valid.jsonl", pair_rows(16, seed=2))


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_accuracy_rises_and_every_parameter_changes(tiny_model, pair_files, tmp_path, method):
    run = smolmac.train(recipe(tiny_model, *pair_files, method), run_dir=tmp_path / method)
    trains = [e for e in run.events if e["type"] == "train"]
    names = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]
    names += ["nll_loss", "log_odds_ratio", "log_odds_chosen"] if method == "orpo" else []
    assert all(k in trains[-1] for k in names)
    final = run.last("eval")
    assert all(f"eval_{k}" in final for k in names)
    assert final["eval_rewards/accuracies"] > 0.9, final
    # the same, pair by pair, from the saved adapter
    model, tok, _, _ = load_model(str(tiny_model))
    from smolmac.adapters import attach as load_adapter

    load_adapter(model, run.adapter_path)
    cfg = load_recipe(recipe(tiny_model, *pair_files, method))
    valid, _ = preference.build_pairs(tok, load_split_rows(cfg, method)[2], cfg)
    if method == "dpo":
        valid.ref = np.load(run.dir / "ref_logps-valid.npz")["logps"]
    _, metrics = evaluate_loss(model, valid, METHODS[method].load().loss(cfg))
    assert metrics["rewards/accuracies"] == pytest.approx(final["eval_rewards/accuracies"], abs=1e-5)
    assert trains[0]["rewards/accuracies"] < 0.9
    if method == "dpo":  # at step 1 the policy is the reference: every reward is exactly 0
        assert trains[0]["rewards/chosen"] == pytest.approx(0, abs=1e-5)
        assert trains[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert run.last("start")["ref_logps"] == "computed"
        assert (run.dir / "ref_logps-train.npz").is_file() and (run.dir / "ref_logps-valid.npz").is_file()
    trained = mx.load(str(run.adapter_path / "adapters.safetensors"))
    init_model, *_ = load_model(str(tiny_model))
    apply_lora(init_model, LoraConfig(rank=4, alpha=8), seed=0)
    init = dict(tree_flatten(init_model.trainable_parameters()))
    assert set(trained) == set(init)
    for k in trained:
        assert not mx.array_equal(trained[k], init[k]), k
    assert json.loads((run.adapter_path / "adapter_config.json").read_text())["method"] == method


def test_resume_reproduces_trajectory_and_reuses_reference(tiny_model, pair_files, tmp_path, monkeypatch):
    rec = recipe(tiny_model, *pair_files, "dpo", steps=6, grad_accum=2, batch_size=4)
    full = smolmac.train(rec, run_dir=tmp_path / "a")
    stop = threading.Event()
    first = smolmac.train(rec, run_dir=tmp_path / "b", stop=stop,
                          on_event=lambda e: e["type"] == "train" and e["step"] == 3 and stop.set())
    assert first.stopped
    cache = (tmp_path / "b" / "ref_logps-train.npz").stat().st_mtime_ns

    def no_recompute(*a, **k):
        raise AssertionError("reference log-probs recomputed on resume")

    monkeypatch.setattr(preference, "reference_logps", no_recompute)
    resumed = smolmac.train(run_dir=tmp_path / "b", resume=True)
    assert resumed.last("start")["ref_logps"] == "reused"
    assert (tmp_path / "b" / "ref_logps-train.npz").stat().st_mtime_ns == cache
    a = [e["loss"] for e in full.events if e["type"] == "train"]
    b = [e["loss"] for e in resumed.events if e["type"] == "train"]
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("rewards/margins", "logps/chosen"):
        np.testing.assert_allclose([e[key] for e in full.events if e["type"] == "train"],
                                   [e[key] for e in resumed.events if e["type"] == "train"], atol=1e-4)


def test_full_fine_tuning_uses_the_initial_weights_as_reference(tiny_model, pair_files, tmp_path):
    rec = {**recipe(tiny_model, *pair_files, "dpo", steps=3, batch_size=4), "full": True}
    run = smolmac.train(rec, run_dir=tmp_path / "full")
    assert run.model_path is not None and run.last("start")["ref_logps"] == "computed"
    first = [e for e in run.events if e["type"] == "train"][0]
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-5)  # step 1: policy == initial weights
    model, tok, _, _ = load_model(str(tiny_model))
    cfg = load_recipe(rec)
    batches, _ = preference.build_pairs(tok, load_split_rows(cfg, "dpo")[1], cfg)
    with np.load(run.dir / "ref_logps-train.npz") as f:
        np.testing.assert_allclose(f["logps"], preference.reference_logps(model, batches), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Recipes


@pytest.mark.parametrize("name,method", [("dpo-lora-smollm2-135m", "dpo"), ("orpo-lora-smollm2-135m", "orpo")])
def test_recipes_validate(name, method):
    path = RECIPES / f"{name}.yaml"
    cfg = load_recipe(path)
    assert cfg.method == method and not cfg.full and cfg.data.train
    assert f"smolmac train recipes/{name}.yaml" in path.read_text().splitlines()[0] + path.read_text().splitlines()[1]


def test_bench_dpo_reports_ratios(tiny_model):
    lines = []
    res = bench.bench_dpo(model=str(tiny_model), steps=2, warmup=1, rounds=1, batch_size=2, max_seq_len=64, on_message=lines.append)
    assert res["pairs_per_batch"] == 2 and res["seq_len"] == 64
    for key in ("sft", "sft_chosen", "dpo"):
        assert res[f"{key}_step_s"] > 0 and res[f"{key}_peak_gb"] > 0
    # a DPO step runs the same (2B, L) rows as the SFT step: same order of time and memory
    assert 0.3 < res["time_ratio"] < 5 and 0.5 < res["memory_ratio"] < 3
    assert any("target <= 2.2" in line for line in lines)
