"""Several adapters on one base (smolmac.adapters.AdapterSet through smolmac.load and `smolmac
generate --adapter NAME=DIR --use NAME`) and combining adapters (smolmac.combining, `smolmac
adapters combine`) held to PEFT's add_weighted_adapter on the same PEFT exports (CPU torch,
float32). Adapters are made the way a run makes them, randomised so that they change the logits
(tests/test_export.py's make_run).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_export import IDS, hf_model, make_run, torch_logits

import smolmac
from smolmac.cli import main
from smolmac.errors import UserError

# name: (lora keys over rank 4, alpha 12; seed of the randomised weights)
RUNS = {
    "lora-all": ({"targets": "all-linear", "layers": "all", "dora": False}, 1),
    "dora-qv-last1-r8": ({"targets": ["q_proj", "v_proj"], "layers": 1, "dora": True, "rank": 8, "alpha": 16}, 2),
    "lora-mlp-r2": ({"targets": ["up_proj", "down_proj"], "layers": "all", "dora": False, "rank": 2, "alpha": 4}, 3),
    "dora-all": ({"targets": "all-linear", "layers": "all", "dora": True}, 4),
    "lora-qvo": ({"targets": ["q_proj", "v_proj", "o_proj"], "layers": "all", "dora": False}, 5),
    "lora-q-up": ({"targets": ["q_proj", "up_proj"], "layers": "all", "dora": False, "alpha": 5}, 6),
    "lora-qv-last1": ({"targets": ["q_proj", "v_proj"], "layers": 1, "dora": False}, 7),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    from smolmac.models import new_model

    return new_model({"preset": "nano", "initializer_range": 0.2}, tiny_tokenizer, tmp_path_factory.mktemp("base"), seed=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base):
    """{name: (run dir, logits of base + that adapter)}."""
    root = tmp_path_factory.mktemp("runs")
    return {name: make_run(root / name, base, lora, seed=seed) for name, (lora, seed) in RUNS.items()}


@pytest.fixture(scope="module")
def peft_dirs(tmp_path_factory, runs):
    from smolmac.export import export_run

    root = tmp_path_factory.mktemp("peft")
    return {name: export_run(run, "peft", root / name) for name, (run, _) in runs.items()}


def mlx_logits(model) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array(IDS)))


def alone(base, path) -> np.ndarray:
    """Logits of the base with one adapter attached the single-adapter way."""
    from smolmac.adapters import attach
    from smolmac.models import load_model

    model, *_ = load_model(str(base))
    attach(model, path)
    return mlx_logits(model)


# ---------------------------------------------------------------------------------------------
# Several adapters on one base


def test_switching_adapters_equals_loading_each_alone(base, runs, peft_dirs):
    from smolmac.models import load_model

    names = ["lora-all", "dora-qv-last1-r8", "lora-mlp-r2", "dora-all"]  # LoRA/DoRA, ranks 2/4/8, targets, layers
    m = smolmac.load(str(base), {**{n: runs[n][0] for n in names}, "dora-all-peft": peft_dirs["dora-all"]}, dtype="float32")
    assert m.active is None and list(m.adapters) == [*names, "dora-all-peft"]
    base_logits = mlx_logits(load_model(str(base))[0])
    assert np.array_equal(mlx_logits(m.model), base_logits)  # nothing active: the base
    single = {n: alone(base, runs[n][0]) for n in names}
    for name in [*names, *reversed(names), "dora-all-peft", None, "lora-mlp-r2", None]:
        m.use(name)
        got = mlx_logits(m.model)
        if name is None:
            assert np.array_equal(got, base_logits)  # the base layers' own forward, bit-exact
            continue
        key = "dora-all" if name == "dora-all-peft" else name
        assert np.abs(got - single[key]).max() <= 1e-5
        assert np.abs(got - runs[key][1]).max() <= 1e-5
    # a request's adapter= applies to that request only
    m.use("lora-all")
    text = m.generate("the cat sat", max_tokens=6, chat=False, adapter="dora-all")
    assert m.active == "lora-all" and np.abs(mlx_logits(m.model) - single["lora-all"]).max() <= 1e-5
    assert text == m.use("dora-all").generate("the cat sat", max_tokens=6, chat=False)


def test_memory_is_one_base_plus_the_adapters(base, runs):
    from mlx.utils import tree_flatten
    from safetensors.numpy import load_file

    from smolmac.models import load_model

    m = smolmac.load(str(base), dtype="float32")
    empty = m.inspect()
    ref = [v for _, v in tree_flatten(load_model(str(base))[0].parameters())]
    assert empty["base"]["params"] == sum(v.size for v in ref)
    assert empty["base"]["mb"] == pytest.approx(sum(v.nbytes for v in ref) / 1e6, abs=1e-3)
    for name in ("lora-all", "dora-qv-last1-r8", "lora-mlp-r2"):
        m.add(name, runs[name][0])
    info = m.use("lora-mlp-r2").inspect()
    assert info["base"] == empty["base"] and info["active"] == "lora-mlp-r2"
    for name in ("lora-all", "dora-qv-last1-r8", "lora-mlp-r2"):
        tensors = load_file(str(runs[name][0] / "adapter" / "adapters.safetensors"))
        assert info["adapters"][name]["params"] == sum(t.size for t in tensors.values())
        assert info["adapters"][name]["mb"] == pytest.approx(sum(t.nbytes for t in tensors.values()) / 1e6, abs=1e-3)
    assert info["adapters"]["dora-qv-last1-r8"]["dora"] and info["adapters"]["lora-mlp-r2"]["rank"] == 2


def test_an_adapter_for_another_base_is_refused_naming_it_and_the_module(tmp_path, tiny_tokenizer, base, runs):
    from smolmac.models import new_model

    other = new_model({"preset": "nano", "hidden_size": 32, "initializer_range": 0.2}, tiny_tokenizer, tmp_path / "other", seed=0)
    run, _ = make_run(tmp_path / "run", other, {"targets": ["q_proj"], "layers": "all", "dora": False})
    base_run = runs["lora-qv-last1"][0]  # last block only: the recorded depth tells
    m = smolmac.load(str(base), dtype="float32")
    with pytest.raises(UserError, match=r"^adapter 'small' \(.*run\): 'model\.layers\.0\.self_attn\.q_proj\.lora_a' has shape \(32, 4\), the model needs \(64, 4\)"):
        m.add("small", run)
    assert m.adapters == {} and m.active is None
    deeper = new_model({"preset": "nano", "num_hidden_layers": 3, "initializer_range": 0.2}, tiny_tokenizer, tmp_path / "deeper", seed=0)
    with pytest.raises(UserError, match=r"^adapter 'two' \(.*\): the adapter was trained on a base model with 2 blocks and this one has 3"):
        smolmac.load(str(deeper), {"two": base_run}, dtype="float32")
    with pytest.raises(UserError, match="adapter 'nope' is not loaded"):
        m.use("nope")
    with pytest.raises(UserError, match="'none' is reserved"):
        smolmac.load(str(base), ["none=" + str(run)])
    with pytest.raises(UserError, match="used twice"):
        smolmac.load(str(base), [f"a={run}", f"a={run}"])


def test_cli_generate_with_named_adapters(base, runs, capsys):
    a, b = runs["lora-all"][0], runs["dora-qv-last1-r8"][0]
    m = smolmac.load(str(base), {"math": a, "style": b}, dtype="float32")
    args = ["generate", "--model", str(base), "--adapter", f"math={a}", "--adapter", f"style={b}", "--prompt", "the cat", "--max-tokens", "6", "--raw"]
    for use, expected in (("style", "style"), ("math", "math"), ("none", None)):
        assert main([*args, "--use", use]) == 0
        out = capsys.readouterr()
        assert out.out == m.generate("the cat", max_tokens=6, chat=False, adapter=expected) + "\n"
        assert "base 0.48 MB; adapters math 0.04 MB, style 0.01 MB" in out.err
    assert main(args) == 2
    assert "--use: 2 adapters are loaded (math, style)" in capsys.readouterr().err
    assert main([*args, "--use", "maths"]) == 2
    assert "did you mean 'math'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Combining: PEFT's add_weighted_adapter


def peft_combination(base, dirs, weights, method, rank=None) -> np.ndarray:
    """Logits of PEFT's own combination of the PEFT adapter dirs."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(hf_model(base), str(dirs[0]), adapter_name="a0")
    for i, d in enumerate(dirs[1:], 1):
        model.load_adapter(str(d), adapter_name=f"a{i}")
    model.add_weighted_adapter([f"a{i}" for i in range(len(dirs))], weights, "combined", combination_type=method, svd_rank=rank)
    model.set_adapter("combined")
    return torch_logits(model)


# (adapters, weights, method, rank): equal ranks for linear; different ranks and targets for cat and svd
COMBINATIONS = {
    "linear": (["lora-qvo", "lora-q-up"], [0.7, 0.3], "linear", None),
    "linear-negative": (["lora-qvo", "lora-q-up", "lora-all"], [-0.5, 0.8, 0.4], "linear", None),
    "cat": (["lora-all", "lora-mlp-r2"], [0.7, 0.3], "cat", None),
    "svd-full-rank": (["lora-qvo", "lora-mlp-r2"], [0.7, 0.3], "svd", 6),
    "svd-truncated": (["lora-qvo", "lora-q-up"], [0.6, 0.6], "svd", 3),
}


@pytest.mark.parametrize("case", list(COMBINATIONS))
def test_combination_matches_peft_add_weighted_adapter(case, base, peft_dirs, tmp_path, capsys):
    from peft import PeftModel

    names, weights, method, rank = COMBINATIONS[case]
    dirs = [peft_dirs[n] for n in names]
    theirs = peft_combination(base, dirs, weights, method, rank)
    out = tmp_path / "combined"
    args = ["adapters", "combine", *[f"{n}={d}" for n, d in zip(names, dirs)], f"--weights={','.join(map(str, weights))}", "--method", method, "--to", str(out)]
    assert main(args + (["--rank", str(rank)] if rank else [])) == 0
    assert "combined" in capsys.readouterr().out
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == {"linear": 4, "cat": 6, "svd": rank}[method] and not cfg["use_dora"]
    m = smolmac.load(str(base), {"combined": out}, dtype="float32").use("combined")
    assert np.abs(mlx_logits(m.model) - theirs).max() <= 1e-4
    assert np.abs(torch_logits(PeftModel.from_pretrained(hf_model(base), str(out))) - theirs).max() <= 1e-4
    assert np.abs(theirs - mlx_logits(m.use(None).model)).max() > 0.05  # the combination matters
    info = json.loads((out / "smolmac.json").read_text())
    assert info["combined"] == {"method": method, "adapters": names, "weights": weights, "rank": cfg["r"]}
    assert "Combined from" in (out / "README.md").read_text()


def delta(ad, module) -> np.ndarray:
    """ΔWᵀ (in, out) = scale · lora_a @ lora_b of one module, float64."""
    return ad.scale * np.array(ad.weights[f"{module}.lora_a"], np.float64) @ np.array(ad.weights[f"{module}.lora_b"], np.float64)


@pytest.mark.parametrize("method", ["svd", "cat"])
def test_full_rank_svd_and_cat_are_the_weighted_sum_of_updates(method, runs):
    """Also for adapters of different blocks: the combination covers the union of their modules
    (PEFT's would keep only the first adapter's blocks)."""
    from smolmac.adapters import read_adapter
    from smolmac.combining import combine

    names = ["lora-qv-last1", "lora-all", "lora-mlp-r2"]  # ranks 4 + 4 + 2; blocks [1], all, all
    ads = {n: read_adapter(runs[n][0]) for n in names}
    weights = [0.5, -0.25, 1.5]
    mixed = combine(ads, weights, method, rank=10 if method == "svd" else None)
    assert mixed.rank == 10 and mixed.scale == 1.0 and mixed.modules() == ads["lora-all"].modules()
    for module in mixed.modules():
        want = sum(w * delta(ad, module) for w, ad in zip(weights, ads.values()) if f"{module}.lora_a" in ad.weights)
        assert np.abs(delta(mixed, module) - want).max() <= 1e-4


def test_combined_adapter_loads_in_mlx_lm_and_exports_fused(base, runs, tmp_path):
    import mlx.core as mx
    from mlx_lm import load

    a, c = runs["lora-all"][0], runs["lora-mlp-r2"][0]
    mlx_out = smolmac.combine([a, c], [0.7, 0.3], method="cat", to=tmp_path / "mlx", format="mlx")
    peft_out = smolmac.combine({"a": a, "c": c}, "0.7,0.3", method="cat", to=tmp_path / "peft")
    ours = mlx_logits(smolmac.load(str(base), {"x": peft_out}, dtype="float32").use("x").model)
    model, _ = load(str(base), adapter_path=str(mlx_out))
    assert np.abs(np.array(model(mx.array(IDS))) - ours).max() <= 1e-5
    fused = smolmac.export(peft_out, format="hf", to=tmp_path / "hf")
    assert np.abs(torch_logits(hf_model(fused)) - ours).max() <= 2e-5


def test_handle_combine_and_export(base, runs, tmp_path):
    m = smolmac.load(str(base), {"a": runs["lora-qvo"][0], "b": runs["lora-q-up"][0]}, dtype="float32")
    name = m.combine(["a", "b"], [0.7, 0.3], method="linear")
    assert name == "a+b" and m.adapters[name].rank == 4 and m.active is None
    reply = m.generate("the cat", max_tokens=5, chat=False, adapter="a+b")
    out = smolmac.export(m.use("a+b"), format="peft", to=tmp_path / "ab")
    again = smolmac.load(str(base), {"ab": out}, dtype="float32")
    assert again.generate("the cat", max_tokens=5, chat=False, adapter="ab") == reply
    with pytest.raises(UserError, match="no active adapter"):
        smolmac.export(m.use(None), format="peft", to=tmp_path / "none")


def _bad_cases(runs, other_run):
    a, b, r2 = (str(runs[n][0]) for n in ("lora-qvo", "lora-q-up", "lora-mlp-r2"))
    return {
        "different bases": ([a, str(other_run), "--weights", "1,1", "--method", "cat"], "trained on different base models"),
        "linear unequal ranks": ([a, r2, "--weights", "1,1", "--method", "linear"], "--method linear: the adapters have different ranks (lora-qvo 4, lora-mlp-r2 2)"),
        "weights count": ([a, b, "--weights", "0.7,0.2,0.1", "--method", "cat"], "--weights: 3 weight(s) for 2 adapters"),
        "bad weight": ([a, b, "--weights", "0.7,x", "--method", "cat"], "--weights: 'x' is not a number"),
        "missing dir": ([a, a + "-missing", "--weights", "1,1"], "no such adapter directory"),
        "duplicate name": ([f"x={a}", f"x={b}", "--weights", "1,1"], "the name 'x' is used twice"),
        "same dir twice": ([a, f"again={a}", "--weights", "1,1"], "is given twice"),
        "dora": ([a, str(runs["dora-all"][0]), "--weights", "1,1", "--method", "cat"], "'dora-all' is a DoRA adapter"),
        "rank without svd": ([a, b, "--weights", "1,1", "--method", "cat", "--rank", "4"], "--rank: only --method svd takes a rank"),
        "rank too large": ([a, b, "--weights", "1,1", "--method", "svd", "--rank", "40"], "--rank: 40 is larger than"),
        "one adapter": ([a, "--weights", "1"], "give two adapters or more"),
    }


def test_bad_combinations_exit_2_with_one_sentence_and_write_nothing(tmp_path, tiny_tokenizer, runs, capsys):
    from smolmac.models import new_model

    other = new_model({"preset": "nano", "initializer_range": 0.2, "intermediate_size": 96}, tiny_tokenizer, tmp_path / "other", seed=0)
    other_run, _ = make_run(tmp_path / "other-run", other, {"targets": ["q_proj", "up_proj"], "layers": "all", "dora": False})
    for case, (args, message) in _bad_cases(runs, other_run).items():
        out = tmp_path / "out" / case.replace(" ", "-")
        assert main(["adapters", "combine", *args, "--to", str(out)]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (case, err)
        assert not out.exists(), case
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no temp dirs left
    # without recorded bases, the shapes tell: up_proj is 64->192 in one and 64->96 in the other
    from smolmac.adapters import read_adapter
    from smolmac.combining import combine

    x, y = read_adapter(runs["lora-q-up"][0]), read_adapter(other_run)
    for ad in (x, y):
        ad.base = ad.base_path = None
    with pytest.raises(UserError, match=r"'model\.layers\.0\.mlp\.up_proj' is 64->192 in 'x' but 64->96 in 'y'"):
        combine({"x": x, "y": y}, [1, 1], "cat")
