"""Pretraining from scratch: token cache and packing, bad input, estimates, a tiny run whose
output loads in transformers with the same greedy continuation, and the tokenizer round trip."""

import json
import os

import numpy as np
import pytest
from conftest import corpus

import smolmac
from smolmac.batches import PackedBatches
from smolmac.config import load_recipe
from smolmac.errors import UserError
from smolmac.flops import flops_per_token
from smolmac.memory import estimate, model_config
from smolmac.methods.pretrain import build_new_model, token_cache
from smolmac.models import PRESETS, count_params, preset_config

VARIED = [
    "Perché la città è così bella? Caffè, naïve, età, più.",
    "Emoji 🙂🚀 and flags 🇮🇹 mixed with text.",
    "def f(x):\n    return x + 1  # code\n\tindent\r\n",
    "  leading and trailing spaces   ",
    "numbers 12 345 6789 and 3.14, x1 v2.0",
    "日本語のテキスト 和 中文",
    "",
]


def write_corpus(path, n=300, seed=0):
    path.write_text("\n\n".join(corpus(n, seed)) + "\n", encoding="utf-8")
    return path


def pretrain_recipe(corpus_file, tmp_path, **train):
    return {
        "model": {"new": {"preset": "nano"}},
        "method": "pretrain",
        "tokenizer": {"vocab_size": 320},
        "data": {"train": str(corpus_file), "valid": 0.1},
        "train": {"steps": 40, "lr": 1e-2, "batch_size": 8, "max_seq_len": 64, "warmup": 4, "report_every": 10,
                  "betas": [0.9, 0.99], **train},
    }


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    cfile = write_corpus(tmp / "corpus.txt")
    run = smolmac.train(pretrain_recipe(cfile, tmp), run_dir=tmp / "run")
    return run


def test_token_cache_packs_documents_and_is_reused(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    docs = corpus(60)
    cfile = tmp_path / "c.txt"
    cfile.write_text("\n\n".join(docs), encoding="utf-8")
    cfg = load_recipe({"model": "x", "method": "pretrain", "data": {"train": str(cfile), "valid": 0.1}, "train": {"max_seq_len": 16}})
    train, valid, meta = token_cache(cfg, tok, tmp_path / "run")
    assert train.dtype == np.uint16 and meta["train_docs"] + meta["valid_docs"] == 60
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    assert int((np.asarray(train) == sep).sum()) == meta["train_docs"]  # one separator per document
    assert len(train) + len(valid) == sum(len(tok.encode(d, add_special_tokens=False)) + 1 for d in docs)
    mtime = os.path.getmtime(tmp_path / "run" / "tokens" / "train.bin")
    train2, _, _ = token_cache(cfg, tok, tmp_path / "run")  # a re-run reuses the cache
    assert os.path.getmtime(tmp_path / "run" / "tokens" / "train.bin") == mtime
    assert np.array_equal(train, train2)

    batches = PackedBatches(train, 16, 4, seed=0)
    (x, y, m), n = next(batches.stream())
    assert x.shape == y.shape == m.shape == (4, 16) and n == 64
    assert np.array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    whole = np.asarray(train)
    for row_x, row_y in zip(x, y):  # every sequence is a contiguous slice of the stream
        i = next(i for i in range(batches.n_seq) if np.array_equal(whole[i * 16 : i * 16 + 16], row_x))
        assert np.array_equal(whole[i * 16 + 1 : i * 16 + 17], row_y)
    first = [a[0] for a, _ in zip((b for b, _ in batches.stream(0)), range(7))]
    resumed = next(batches.stream(5))[0][0]
    assert np.array_equal(first[5], resumed)  # resume at micro-batch k == k-th batch of a fresh stream
    epoch0 = sorted(tuple(r) for (a, _), _ in zip(batches.stream(0), range(len(batches))) for r in a[0])
    assert len(set(epoch0)) == len(epoch0)  # no sequence twice within an epoch


@pytest.mark.parametrize("case", ["empty", "binary", "short", "vocab", "preset", "context"])
def test_bad_input_is_one_sentence(case, tmp_path):
    cfile = write_corpus(tmp_path / "c.txt", n=200)
    rec = pretrain_recipe(cfile, tmp_path)
    expect = {"empty": "empty", "binary": "UTF-8", "short": "fewer than one sequence", "vocab": "supports only",
              "preset": "unknown preset", "context": "above the model's context"}[case]
    if case == "empty":
        cfile.write_text("\n\n  \n", encoding="utf-8")
    elif case == "binary":
        cfile.write_bytes(b"\xff\xfe\x00bad \xc3\x28 text")
    elif case == "short":
        cfile.write_text("a few words only", encoding="utf-8")
        rec["tokenizer"]["vocab_size"] = 262
        rec["data"]["valid"] = None
    elif case == "vocab":
        rec["tokenizer"]["vocab_size"] = 20000
    elif case == "preset":
        rec["model"]["new"]["preset"] = "nanoo"
    else:
        rec["train"]["max_seq_len"] = PRESETS["nano"][5] + 1
    with pytest.raises(UserError) as e:
        smolmac.train(rec, run_dir=tmp_path / "run")
    msg = str(e.value)
    assert expect in msg and "\n" not in msg, msg
    if case == "preset":
        assert "did you mean 'nano'" in msg


def test_estimate_and_preset_table():
    for name in PRESETS:
        cfg = preset_config({"preset": name}, 49152, 0, 1, 2)
        est = estimate(cfg, 1, 128, lora_rank=None)
        assert est["params"] == count_params(cfg) and est["total_gb"] > 0
    assert 130e6 < count_params(preset_config({"preset": "smollm2-135m"}, 49152, 0, 1, 2)) < 140e6
    rec = load_recipe({"model": {"new": {"preset": "micro"}}, "method": "pretrain", "tokenizer": {"vocab_size": 416}, "train": {"batch_size": 16, "max_seq_len": 128}})
    mc = model_config(rec)
    est = estimate(mc, 16, 128, lora_rank=None)
    assert est["params"] == count_params(preset_config({"preset": "micro"}, 416, 0, 1, 2))
    # 6N + 12 L H Q T (nanoGPT): micro has 4 layers, 4 heads of 32, T = 128
    assert flops_per_token(mc, 128) == 6 * est["params"] + 12 * 4 * 4 * 32 * 128
    assert estimate(mc, 64, 128, lora_rank=None)["total_gb"] > est["total_gb"]


def test_build_new_model_reuses_tokenizer_and_init(tmp_path, tiny_tokenizer):
    cfg = load_recipe({"model": {"new": {"preset": "nano", "layers": 1}}, "method": "pretrain", "tokenizer": {"path": str(tiny_tokenizer)}, "train": {"max_seq_len": 64}})
    path = build_new_model(cfg, tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["vocab_size"] == 320 and config["model_type"] == "llama"
    mtime = os.path.getmtime(path / "model.safetensors")
    assert build_new_model(cfg, tmp_path) == path and os.path.getmtime(path / "model.safetensors") == mtime


def test_pretraining_learns_and_reports(pretrained):
    start = pretrained.last("start")
    for key in ("total_params", "memory_estimate_gb", "flops_per_token", "peak_tflops", "train_tokens", "init_val_ppl"):
        assert key in start, key
    ev = pretrained.last("eval")
    assert ev["val_ppl"] < start["init_val_ppl"] / 3  # learned well beyond the uniform guess
    assert 0 < ev["mfu"] < 1 and ev["tokens_per_second"] > 0
    out = pretrained.model_path
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}


def test_transformers_greedy_equals_smolmac(pretrained):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smolmac.generate import generate
    from smolmac.models import load_model

    out = str(pretrained.model_path)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    model, mtok, _, _ = load_model(out)
    for prompt in ("the cat sat on", "numbers like one two"):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            gen = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
        theirs = tok.decode(gen[0, ids.shape[1] :])
        ours = generate(model, mtok, prompt, max_tokens=12, chat=False)
        assert len(ours) > 0 and theirs.startswith(ours), (prompt, theirs, ours)


def test_tokenizer_round_trip_in_transformers_and_mlx_lm(pretrained):
    from mlx_lm.tokenizer_utils import load as mlx_load_tokenizer
    from transformers import AutoTokenizer

    out = pretrained.model_path
    tok = AutoTokenizer.from_pretrained(str(out))
    mlx_tok = mlx_load_tokenizer(out)
    for text in VARIED:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
        assert mlx_tok.decode(mlx_tok.encode(text, add_special_tokens=False)) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "ciao 🙂"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nciao 🙂<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(tok.encode("<|im_start|><|im_end|><|endoftext|>", add_special_tokens=False)) == ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
