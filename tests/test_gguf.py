"""GGUF exports judged by the real client: llama.cpp itself (through llama-cpp-python) loads each
file, and its logits and tokens are compared with smolmac's fused MLX model and the Hugging Face
tokenizer on the same text. Tiny models (hidden 64, 2 layers) built here, no downloads.

Tests that need llama.cpp skip without llama-cpp-python (`pip install -e ".[test-gguf]"`; CI
installs it); the Modelfile, quantised-MLX and bad-input tests run everywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import smolmac  # noqa: F401  (BLAS before mlx)
from smolmac.errors import UserError

TEXT = ("the cat sat on a mat and a dog ran to the park while birds sang in tall green trees; "
        "numbers like 12 and 345 add up quickly, caffè perché città naïve 🙂 def f(x): return x + 1")
STRINGS = [
    "the cat sat on a mat", "caffè perché città naïve", "Crème brûlée à la carte, señor!",
    "numbers 12 345 6789 and 3.14159", "7 + 5 = 12", "x  12 and\t\t7 and \n\n 3", "tabs\tand\nnewlines\n\n42",
    "emoji 🙂 🚀 👍🏽", "中文 and 日本語", "def f(x):\n    return x + 1", "  leading and trailing  ",
    "don't won't I'm they've 'S", "Ünïcödé ÀÉÎÕÜ ßøå", "1234567890", "a1b2c3 d4e5",
    "email@example.com http://x.y/z?q=1", "....!!!???---===", "Ελληνικά русский עברית العربية",
    "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>text<|pad|> ok<|im_end|>",
]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[test-gguf]'); CI installs it")


def load_gguf(llama_cpp, path, lora=None):
    """llama.cpp with an f32 KV cache (its default f16 cache alone moves logits by ~1e-3)."""
    kw = {"lora_path": str(lora)} if lora else {}
    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, **kw)


def cpp_logits(llama_cpp, path, ids, lora=None) -> np.ndarray:
    llm = load_gguf(llama_cpp, path, lora)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def mlx_logits(model, ids) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array([ids]))[0])


@pytest.fixture(scope="module")
def base(tiny_model):
    """The nano Llama (init std 0.1: logits within ±5, so 16-bit rounding stays small)."""
    return tiny_model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base):
    """A LoRA run on the nano Llama and its fused float32 MLX model (smolmac's reference)."""
    from test_export import make_run

    from smolmac.export.hf import fused_model
    from smolmac.export.sources import open_source

    root = tmp_path_factory.mktemp("run")
    run, _ = make_run(root / "run", base, {"targets": "all-linear", "layers": "all", "dora": False})
    model, tok, config = fused_model(open_source(run), lambda _m: None)
    ids = tok.encode(TEXT)
    assert len(ids) >= 64
    return {"run": run, "model": model, "tok": tok, "ids": ids[:64], "root": root}


# ---------------------------------------------------------------------------------------------
# Logits and tokens through llama.cpp


@pytest.mark.parametrize("dtype,tol", [("f32", 1e-3), ("f16", 5e-2), ("bf16", 5e-2)])
def test_gguf_logits_match_the_fused_model(llama_cpp, lora_run, dtype, tol):
    from smolmac.export import export_run

    out = export_run(lora_run["run"], "gguf", lora_run["root"] / f"m-{dtype}.gguf", dtype=dtype)
    ids = lora_run["ids"]
    ours, theirs = mlx_logits(lora_run["model"], ids), cpp_logits(llama_cpp, out, ids)
    diff = np.abs(ours[-1] - theirs[-1]).max()
    assert diff <= tol, f"{dtype}: last-position max |Δlogit| {diff:.3g} > {tol}"
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.95


def test_gguf_q8_0_keeps_greedy_choices(llama_cpp, lora_run):
    import gguf

    from smolmac.export import export_run

    out = export_run(lora_run["run"], "gguf", lora_run["root"] / "m-q8_0.gguf", dtype="q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    ids = lora_run["ids"]
    agree = (mlx_logits(lora_run["model"], ids).argmax(-1) == cpp_logits(llama_cpp, out, ids).argmax(-1)).mean()
    assert agree >= 0.95, f"q8_0 greedy agreement {agree:.2%} on {len(ids)} positions"


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q5_0", "q5_1"])
def test_gguf_quantize_writes_what_llama_cpp_runs(llama_cpp, lora_run, qtype):
    import gguf

    from smolmac.export import export_run

    out = export_run(lora_run["run"], "gguf", lora_run["root"] / f"m-{qtype}.gguf", quantize=qtype)
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == qtype.upper() and types["token_embd.weight"] == "Q8_0"
    ids = lora_run["ids"]
    ours, theirs = mlx_logits(lora_run["model"], ids), cpp_logits(llama_cpp, out, ids)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9  # 4/5-bit, yet the same function


def test_llama_cpp_tokenises_like_the_hf_tokenizer(llama_cpp, lora_run):
    from smolmac.data import hf_tokenizer
    from smolmac.export import export_run

    out = lora_run["root"] / "m-f32.gguf"
    if not out.exists():
        export_run(lora_run["run"], "gguf", out, dtype="f32")
    hf = hf_tokenizer(lora_run["tok"])
    chat = hf.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ciao! 7 + 5?"}],
                                  tokenize=False, add_generation_prompt=True)
    llm = load_gguf(llama_cpp, out)
    try:
        for text in STRINGS + [chat]:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf(text)["input_ids"], repr(text)
    finally:
        llm.close()


def _train(tmp_path, pre_tokenizer, texts=None, vocab=320, ignore_merges=False):
    """A byte-level BPE tokenizer with the given pre-tokenizer, saved like smolmac's own."""
    from conftest import corpus
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from smolmac.tokenizer import BOS, CHATML_TEMPLATE, EOS, IM_START, PAD, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts or corpus(), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, additional_special_tokens=[IM_START],
                            chat_template=CHATML_TEMPLATE).save_pretrained(tmp_path)
    return tmp_path


LLAMA3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
QWEN2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"


@pytest.mark.parametrize("name,pre", [("smollm", "smollm"), ("llama-bpe", "llama-bpe"), ("qwen2", "qwen2"), ("gpt-2", "gpt-2")])
def test_each_mapped_pre_tokenizer_tokenises_identically_in_llama_cpp(llama_cpp, tmp_path, name, pre):
    """SmolLM2's, Llama 3's, Qwen2's and GPT-2's pre-tokenizers, each on a BPE vocabulary trained
    with it: the GGUF names llama.cpp's built-in equivalent and llama.cpp splits like HF."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    from smolmac.export.gguf_file import write_gguf
    from smolmac.models import load_model, new_model

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pres = {
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "gpt-2": byte_level,
    }
    tok_dir = _train(tmp_path / "tok", pres[name], [s * 3 for s in STRINGS] + [TEXT] * 5, vocab=400, ignore_merges=name == "llama-bpe")
    model, tok, config, _ = load_model(str(new_model({"preset": "nano"}, tok_dir, tmp_path / "model")))
    info = write_gguf(model, tok, config, tmp_path / "m.gguf", "f32", lambda _m: None)
    assert info["pre"] == pre
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    llm = load_gguf(llama_cpp, tmp_path / "m.gguf")
    try:
        for text in STRINGS:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf(text)["input_ids"], (name, text)
    finally:
        llm.close()


def test_digits_then_byte_level_with_whitespace_merges_is_refused(tmp_path):
    """smolmac's pre-tokenizer maps to llama.cpp's gpt-2 only without multi-whitespace tokens."""
    from tokenizers import pre_tokenizers

    from smolmac.export.gguf_vocab import bpe_pre

    ours = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok_dir = _train(tmp_path, ours, ["a  b\n\n  c   12\n\n" * 20] * 20)
    tj = json.loads((tok_dir / "tokenizer.json").read_text())
    with pytest.raises(UserError, match="whitespace tokens such as 'Ġ"):
        bpe_pre(tj, "tokenizer")


def _tiny_arch(tmp_path, tokenizer, model_type: str, **extra):
    """A random tiny model of another architecture (mlx-lm's class) saved in HF layout."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import _get_classes
    from transformers import AutoTokenizer

    from smolmac.models import init_weights, save_model_dir

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    cfg = {"model_type": model_type, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "intermediate_size": 128, "vocab_size": len(tok), "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256,
           "tie_word_embeddings": False, "head_dim": 16, "torch_dtype": "float32", **extra}
    model_class, args_class = _get_classes(cfg)
    model = model_class(args_class.from_dict(cfg))
    init_weights(model, {**cfg, "initializer_range": 0.2}, seed=1)
    mx.random.seed(2)  # biases and norms away from 0/1, so a wrong mapping shows
    model.update(tree_unflatten([(k, v + 0.1 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.parameters()) if k.endswith(("bias", "norm.weight"))]))
    return save_model_dir(model, tok, cfg, tmp_path)


@pytest.mark.parametrize("model_type,extra", [("qwen2", {}), ("qwen3", {}), ("mistral", {}), ("llama", {"attention_bias": True})])
def test_other_architectures_match_in_llama_cpp(llama_cpp, tmp_path, tiny_tokenizer, model_type, extra):
    from smolmac.export.gguf_file import write_gguf
    from smolmac.models import load_model

    path = _tiny_arch(tmp_path / "model", tiny_tokenizer, model_type, **extra)
    model, tok, config, _ = load_model(str(path))
    info = write_gguf(model, tok, config, tmp_path / "m.gguf", "f32", lambda _m: None)
    ids = tok.encode(TEXT)[:48]
    diff = np.abs(mlx_logits(model, ids) - cpp_logits(llama_cpp, tmp_path / "m.gguf", ids)).max()
    assert diff <= 1e-3, f"{model_type} ({info['arch']}): max |Δlogit| {diff:.3g}"


# ---------------------------------------------------------------------------------------------
# GGUF LoRA adapter


def test_gguf_lora_on_the_base_equals_the_fused_gguf(llama_cpp, lora_run, base):
    import gguf

    from smolmac.export import export_run
    from smolmac.export.gguf_file import write_gguf
    from smolmac.models import load_model

    root = lora_run["root"]
    fused = export_run(lora_run["run"], "gguf", root / "fused.gguf", dtype="f32")
    lora = export_run(lora_run["run"], "gguf-lora", root / "adapter.gguf")
    model, tok, config, _ = load_model(str(base))
    write_gguf(model, tok, config, root / "base.gguf", "f32", lambda _m: None)
    reader = gguf.GGUFReader(str(lora))
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "adapter"
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == pytest.approx(12.0)
    assert lora.stat().st_size < fused.stat().st_size / 5
    ids = lora_run["ids"]
    with_lora, merged = cpp_logits(llama_cpp, root / "base.gguf", ids, lora=lora), cpp_logits(llama_cpp, fused, ids)
    assert np.abs(with_lora[-1] - merged[-1]).max() <= 1e-3
    assert np.abs(with_lora[-1] - mlx_logits(lora_run["model"], ids)[-1]).max() <= 1e-3


def test_gguf_lora_refuses_dora(tmp_path, base):
    from test_export import make_run

    from smolmac.export import export_run

    run, _ = make_run(tmp_path / "run", base, {"targets": ["q_proj"], "layers": "all", "dora": True})
    with pytest.raises(UserError, match="no DoRA"):
        export_run(run, "gguf-lora", tmp_path / "a.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".a.gguf*"))


# ---------------------------------------------------------------------------------------------
# Ollama


def test_ollama_folder_has_the_gguf_and_a_modelfile(tmp_path, lora_run):
    from smolmac.export import export_run

    out = export_run(lora_run["run"], "ollama", tmp_path / "ol", dtype="f16")
    text = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 256" in text
    assert '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n' in text
    assert (out / "model.gguf").stat().st_size > 100_000 and "ollama create" in (out / "README.md").read_text()


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_chat_templates_translate_to_ollama_only_when_they_render_identically(tiny_tokenizer):
    from transformers import AutoTokenizer

    from smolmac.export.ollama import go_render, translate

    hf = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    assert translate(hf)["style"] == "chatml" and translate(hf)["system"] is None
    hf.chat_template = QWEN_TEMPLATE
    qwen = translate(hf)
    assert qwen["style"] == "chatml" and qwen["system"] == "You are Qwen, a helpful assistant."
    assert go_render("chatml", qwen["system"], [("user", "hi")]).startswith("<|im_start|>system\nYou are Qwen")
    hf.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    hf.chat_template = LLAMA3_TEMPLATE
    llama3 = translate(hf)
    assert llama3["style"] == "llama3" and llama3["stop"] == ["<|eot_id|>", "<|start_header_id|>"]
    assert llama3["template"].startswith("<|endoftext|>{{ if .System }}")  # the BOS this tokenizer does not add
    hf.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}### assistant:"
    with pytest.raises(UserError, match="neither ChatML nor Llama 3"):
        translate(hf)
    hf.chat_template = QWEN_TEMPLATE.replace("m['content']", "m['content'] | lower")
    with pytest.raises(UserError, match="renders a user conversation as"):
        translate(hf)


# ---------------------------------------------------------------------------------------------
# Quantised MLX


@pytest.mark.parametrize("fmt,floor", [("mlx-q8", 0.9), ("mlx-q4", 0.5)])
def test_mlx_quantised_folder_loads_in_mlx_lm(tmp_path, lora_run, fmt, floor):
    from mlx_lm import generate, load

    from smolmac.export import export_run

    out = export_run(lora_run["run"], fmt, tmp_path / fmt, group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": int(fmt[-1]), "mode": "affine"}
    model, tok = load(str(out))
    ids = lora_run["ids"]
    agree = (mlx_logits(model, ids).argmax(-1) == mlx_logits(lora_run["model"], ids).argmax(-1)).mean()
    assert agree >= floor, f"{fmt}: greedy agreement with float32 {agree:.2%}"
    assert generate(model, tok, prompt="the cat", max_tokens=8)


# ---------------------------------------------------------------------------------------------
# Bad input: one sentence, exit code 2, nothing at --to


def test_bad_input_is_one_sentence_and_leaves_nothing(tmp_path, lora_run, capsys):
    from smolmac.cli import main
    from smolmac.export import export_run

    run, out = str(lora_run["run"]), tmp_path / "m.gguf"
    cases = [
        (["--quantize", "q4_k_m"], "cannot write q4_k_m, only llama.cpp's llama-quantize makes it; choose q4_0, q4_1, q5_0, q5_1, q8_0"),
        (["--quantize", "q3"], "is not a GGUF type"),
        (["--dtype", "q4_0"], "not supported by --format gguf; choose f32, f16, bf16 or q8_0"),
        (["--group-size", "32"], "--group-size: applies to --format mlx-q4 and mlx-q8 only"),
    ]
    for flags, message in cases:
        assert main(["export", run, "--format", "gguf", "--to", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["export", run, "--format", "hf", "--to", str(tmp_path / "hf"), "--dtype", "q8_0"]) == 2
    assert "not supported by --format hf; choose float32, float16 or bfloat16" in capsys.readouterr().err
    assert main(["export", run, "--format", "gguf", "--to", str(tmp_path / "dir")]) == 2
    assert "ending in .gguf" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    out.write_text("mine")
    with pytest.raises(UserError, match="exists; choose another file name or pass --overwrite"):
        export_run(run, "gguf", out)
    with pytest.raises(UserError, match="is not a GGUF file, so --overwrite will not replace it"):
        export_run(run, "gguf", out, overwrite=True)  # the user's own file is never replaced
    assert out.read_text() == "mine"
    out.unlink()
    export_run(run, "gguf", out, dtype="f32")
    export_run(run, "gguf", out, overwrite=True, dtype="f16")  # an earlier export is
    assert out.read_bytes()[:4] == b"GGUF" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text((lora_run["run"] / "config.yaml").read_text())
    assert main(["export", str(empty), "--format", "gguf", "--to", str(tmp_path / "e.gguf")]) == 2
    assert "no adapter, model or checkpoint yet" in capsys.readouterr().err


def test_unsupported_architecture_is_refused_before_anything_is_written(tmp_path, tiny_tokenizer):
    """A phi3 model (mlx-lm loads it, llama.cpp would too, but smolmac has no GGUF mapping)."""
    from smolmac import load_recipe
    from smolmac.export import export_run

    run = tmp_path / "run"
    run.mkdir()
    _tiny_arch(run / "model", tiny_tokenizer, "phi3", num_key_value_heads=4)
    (run / "config.yaml").write_text(load_recipe({"model": str(run / "model"), "full": True}).to_yaml())
    with pytest.raises(UserError, match="model_type 'phi3' has no GGUF mapping in smolmac"):
        export_run(run, "gguf", tmp_path / "x.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_size_estimates_are_close_to_what_is_written(tmp_path, lora_run):
    from smolmac.export import export_run
    from smolmac.export.sizes import estimate, on_disk

    for fmt, kw in [("gguf", {"quantize": "q8_0"}), ("gguf-lora", {}), ("mlx-q4", {}), ("peft", {})]:
        want = estimate(lora_run["run"], fmt, **kw)
        got = on_disk(export_run(lora_run["run"], fmt, tmp_path / (fmt + ("-" + "-".join(kw.values()) if kw else "") + (".gguf" if fmt.startswith("gguf") else "")), **kw))
        assert abs(want - got) <= 0.35 * got, (fmt, kw, want, got)


def test_sentencepiece_tokenizer_goes_to_gguf_as_llama_spm(llama_cpp, tmp_path):
    """A Llama-2-style SentencePiece BPE (byte fallback): tokenizer.model's pieces and scores, as
    convert_hf_to_gguf.py writes them; transformers 5 no longer saves tokenizer.model, so the
    export takes it from the model's folder."""
    import shutil

    import sentencepiece as spm
    from conftest import corpus
    from transformers import AutoTokenizer

    from smolmac import load_recipe
    from smolmac.export import export_run
    from smolmac.models import load_model, new_model

    (tmp_path / "corpus.txt").write_text("\n".join(corpus() + STRINGS * 3))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=400, model_type="bpe",
                                   byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (tmp_path / "tok").mkdir()
    shutil.copy(tmp_path / "sp.model", tmp_path / "tok" / "tokenizer.model")
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": False}))
    run = tmp_path / "run"
    new_model({"preset": "nano", "initializer_range": 0.1}, tmp_path / "tok", run / "model")
    shutil.copy(tmp_path / "sp.model", run / "model" / "tokenizer.model")  # as Hub models ship it
    (run / "config.yaml").write_text(load_recipe({"model": str(run / "model"), "full": True}).to_yaml())
    messages = []
    out = export_run(run, "gguf", tmp_path / "m.gguf", dtype="f32", on_message=messages.append)
    assert any("tokenizer llama" in m for m in messages)
    hf = AutoTokenizer.from_pretrained(str(run / "model"))
    model, *_ = load_model(str(run / "model"))
    ids = hf(TEXT)["input_ids"][:48]
    assert np.abs(mlx_logits(model, ids) - cpp_logits(llama_cpp, out, ids)).max() <= 1e-3
    llm = load_gguf(llama_cpp, out)
    try:
        # llama.cpp always prepends the SentencePiece space (like sentencepiece's add_dummy_prefix);
        # HF's Metaspace skips it when the text already starts with a space: those strings differ
        for text in [s for s in STRINGS if not s[:1].isspace()]:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf(text)["input_ids"], repr(text)
    finally:
        llm.close()
