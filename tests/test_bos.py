"""BOS as the tokenizer defines it, the same in SFT, DPO/ORPO, pretraining and generation.

Two BOS-adding tokenizers are built here (no downloads): a `tokenizers` BPE with a
TemplateProcessing post-processor ("<s> $A", as Llama-2/Mistral/Gemma tokenizer.json files
have) wrapped in PreTrainedTokenizerFast, whose `add_bos_token` attribute says False although it
adds BOS; and transformers' LlamaTokenizer with `add_bos_token=True`. Each comes with a Llama-2
style chat template that writes `{{ bos_token }}` itself, and without a template. The tokens
training puts before a completion must equal the tokens generation gives the model, with exactly
one BOS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import corpus

from smolmac.data import bos_ids, tokenize_chat, tokenize_prompt_completion, tokenize_text
from smolmac.generate import prompt_ids
from smolmac.methods.preference import encode_side

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def _bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus() + ["[INST] [/INST]"] * 20, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


@pytest.fixture(scope="module", params=["template-processing", "llama-add-bos"])
def bos_dirs(request, tmp_path_factory) -> dict[str, Path]:
    """{"chat": tokenizer dir with a BOS-writing template, "plain": the same without template}."""
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("bos")
    kw = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    if request.param == "template-processing":
        hf = PreTrainedTokenizerFast(tokenizer_object=_bpe(), **kw)
    else:
        hf = LlamaTokenizer(tokenizer_object=_bpe(), add_bos_token=True, add_eos_token=False, **kw)
    hf.save_pretrained(root / "plain")
    hf.chat_template = LLAMA2_TEMPLATE
    hf.save_pretrained(root / "chat")
    for d in ("plain", "chat"):  # no template file may linger in the plain copy
        cfg = json.loads((root / d / "tokenizer_config.json").read_text())
        if d == "plain":
            cfg.pop("chat_template", None)
            for f in (root / d).glob("chat_template.*"):
                f.unlink()
            (root / d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return {"chat": root / "chat", "plain": root / "plain"}


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _prompt_part(ex) -> list[int]:
    first = int(np.argmax(ex.mask))
    return ex.tokens[:first].tolist()


def test_bos_is_read_from_what_the_tokenizer_does(bos_dirs, tiny_tokenizer):
    tok = _tok(bos_dirs["plain"])
    assert bos_ids(tok) == [tok.bos_token_id]
    assert bos_ids(_tok(tiny_tokenizer)) == []  # GPT-2/SmolLM style: no BOS added


@pytest.mark.parametrize("prompt", ["the cat sat", "<s>the cat sat"])
def test_plain_prompts_train_on_the_tokens_generation_sends(bos_dirs, prompt):
    tok = _tok(bos_dirs["plain"])
    bos = tok.bos_token_id
    sent = prompt_ids(tok, prompt)
    assert sent[0] == bos and sent.count(bos) == 1  # a prompt that starts with "<s>" gets no second one
    sft = tokenize_prompt_completion(tok, prompt, " on a mat", "t")
    assert _prompt_part(sft) == sent
    for completion in (" on a mat", " in the park"):  # DPO/ORPO: both sides share the prompt tokens
        side = encode_side(tok, prompt, completion, conversational=False)
        assert _prompt_part(side) == sent
    text = tokenize_text(tok, prompt + " on a mat", "t")
    assert text.tokens[0] == bos and text.tokens.tolist().count(bos) == 1
    assert text.tokens.tolist()[: len(sent)] == sent


def test_a_template_that_writes_bos_gets_no_second_one(bos_dirs):
    tok = _tok(bos_dirs["chat"])
    bos = tok.bos_token_id
    sent = prompt_ids(tok, "the cat sat")
    assert sent[0] == bos and sent.count(bos) == 1
    assert tok.decode(sent).startswith("<s>[INST] the cat sat [/INST]")
    sft = tokenize_prompt_completion(tok, "the cat sat", "on a mat", "t")
    assert _prompt_part(sft) == sent
    chat = tokenize_chat(tok, [{"role": "user", "content": "the cat sat"}, {"role": "assistant", "content": "on a mat"}], "t")
    assert _prompt_part(chat) == sent and chat.tokens.tolist().count(bos) == 1
    side = encode_side(tok, [{"role": "user", "content": "the cat sat"}], [{"role": "assistant", "content": "on a mat"}], conversational=True)
    assert _prompt_part(side) == sent
    raw = prompt_ids(tok, "the cat sat", chat=False)  # --raw: plain text, the tokenizer's BOS once
    assert raw[0] == bos and raw.count(bos) == 1


def test_pretraining_documents_start_with_bos_like_a_plain_prompt(bos_dirs, tmp_path):
    from smolmac.config import load_recipe
    from smolmac.methods.pretrain import token_cache

    tok = _tok(bos_dirs["plain"])
    docs = ["the cat sat on a mat", "a dog ran to the park"]
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    cfg = load_recipe({"model": "x", "method": "pretrain", "data": {"train": str(tmp_path / "c.txt")}})
    train, _valid, _meta = token_cache(cfg, tok, tmp_path / "run")
    sep = tok.eos_token_id
    expected = []
    for d in docs:
        expected += prompt_ids(tok, d) + [sep]
    assert np.asarray(train).tolist() == expected


def test_generation_and_greedy_evaluation_send_the_same_tokens(bos_dirs, tmp_path):
    """Through mlx-lm (its TokenizerWrapper): a model built on each tokenizer generates the same
    greedy answer in `generate` and in the batched `greedy_answers` of the evaluation."""
    from smolmac.evaluation import greedy_answers
    from smolmac.generate import generate
    from smolmac.models import load_model, new_model

    for kind in ("chat", "plain"):
        tok_dir = tmp_path / f"tok-{kind}"
        shutil.copytree(bos_dirs[kind], tok_dir)
        model_dir = new_model({"preset": "nano", "initializer_range": 0.1}, tok_dir, tmp_path / f"m-{kind}", seed=0)
        model, wrapper, *_ = load_model(str(model_dir))
        assert prompt_ids(wrapper, "the cat") == prompt_ids(_tok(tok_dir), "the cat")
        for p in ("the cat", "a dog ran"):
            assert greedy_answers(model, wrapper, [p], max_tokens=6) == [generate(model, wrapper, p, max_tokens=6)]
