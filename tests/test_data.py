"""Data: formats, multi-turn masks token by token, bucketing, packing isolation, truncation."""

import numpy as np
import pytest

from smolmac import batches, data
from smolmac.config import DataConfig
from smolmac.errors import UserError


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


def test_three_turn_mask_covers_every_assistant_turn(tok):
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "a dog"},
        {"role": "user", "content": "one two"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "park"},
        {"role": "assistant", "content": "trees"},
    ]
    ex = data.tokenize_chat(tok, msgs, "test")
    # Expected, built independently: ChatML pieces tokenised one by one.
    expected_ids, expected_mask = [], []
    for m in msgs:
        head = tok.encode(f"<|im_start|>{m['role']}\n", add_special_tokens=False)
        body = tok.encode(m["content"], add_special_tokens=False)
        end = tok.encode("<|im_end|>", add_special_tokens=False)
        nl = tok.encode("\n", add_special_tokens=False)
        trained = m["role"] == "assistant"
        expected_ids += head + body + end + nl
        expected_mask += [False] * len(head) + [trained] * (len(body) + len(end)) + [False] * len(nl)
    assert ex.tokens.tolist() == expected_ids
    assert ex.mask.tolist() == expected_mask
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # three assistant turns, each ending with a trained end-of-turn token
    assert sum(1 for t, m in zip(ex.tokens, ex.mask) if t == im_end and m) == 3
    assert sum(1 for t, m in zip(ex.tokens, ex.mask) if t == im_end and not m) == 4


def test_formats_detected_and_sharegpt_mapped():
    assert data.detect_format({"text": "x"}) == "text"
    assert data.detect_format({"messages": []}) == "messages"
    assert data.detect_format({"prompt": "a", "completion": "b"}) == "prompt_completion"
    assert data.detect_format({"prompt": "a", "chosen": "b", "rejected": "c"}) == "preference"
    assert data.detect_format({"chosen": "b", "rejected": "c"}) == "preference"
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], data.WHERE: "f:1"}]
    kind, rows = data.prepare_rows(rows, DataConfig(), "f")
    assert kind == "messages"
    assert data.normalise_messages(rows[0]["messages"], "f:1") == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    kind, rows = data.prepare_rows([{"q": "a", "a": "b"}], DataConfig(columns={"prompt": "q", "completion": "a"}), "f")
    assert kind == "prompt_completion" and rows[0]["prompt"] == "a"


def test_unknown_role_and_missing_column_name_the_row():
    with pytest.raises(UserError, match="f:7: unknown role 'wizard'"):
        data.normalise_messages([{"role": "wizard", "content": "x"}], "f:7")
    with pytest.raises(UserError, match="f:2: missing column 'completion'"):
        data.prepare_rows([{"prompt": "a", "completion": "b", data.WHERE: "f:1"}, {"prompt": "a", data.WHERE: "f:2"}], DataConfig(format="prompt_completion"), "f")


def test_prompt_completion_masks_prompt(tok):
    ex = data.tokenize_prompt_completion(tok, "the cat", "a dog", "t")
    text = tok.decode(ex.tokens[ex.mask].tolist())
    assert text == "a dog<|im_end|>"


def test_bucketing_sorts_by_length_and_pads_to_few_shapes():
    rng = np.random.default_rng(0)
    exs = [data.Example(np.arange(n, dtype=np.int32), np.ones(n, bool)) for n in rng.integers(5, 300, 64)]
    b = batches.Batches(exs, 8, 512, seed=0)
    widths, pad = set(), 0
    for arrays, ntok in b.once():
        inputs, _, mask = arrays
        widths.add(inputs.shape[1])
        pad += mask.size - mask.sum()
        assert ntok == int(mask.sum())  # every token is trained in these rows
    # unsorted batches of the same rows (what a no-op sort gives) pad far more
    lengths = [len(e.tokens) - 1 for e in exs]
    unsorted_pad = sum(8 * batches.pad_to(max(lengths[i:i + 8])) - sum(lengths[i:i + 8]) for i in range(0, 64, 8))
    assert pad < 0.4 * unsorted_pad
    assert len(widths) <= 12
    # the stream is reproducible from any position (resume)
    first = [a[0].tolist() for a, _ in zip((x for x, _ in b.stream(0)), range(12))]
    again = [a[0].tolist() for a, _ in zip((x for x, _ in b.stream(5)), range(7))]
    assert first[5:] == again


def test_truncation_is_counted():
    exs = [data.Example(np.arange(50, dtype=np.int32), np.ones(50, bool)), data.Example(np.arange(5, dtype=np.int32), np.ones(5, bool))]
    b = batches.Batches(exs, 2, 16, seed=0)
    assert b.truncated == 1


def test_packing_isolates_rows(tiny_model):
    import mlx.core as mx

    from smolmac.losses import forward
    from smolmac.models import load_model

    model, *_ = load_model(str(tiny_model))
    a = np.array([5, 9, 12, 40, 41], np.int32)
    b_ = np.array([7, 8, 100, 3], np.int32)
    packed = batches.pack([data.Example(a, np.ones(5, bool)), data.Example(b_, np.ones(4, bool))], 16, seed=0)
    assert len(packed) == 1
    tokens, mask, seg = packed[0]
    logits = forward(model, mx.array(tokens[None]), mx.array(seg[None]))
    for row in (a, b_):
        start = next(i for i in range(len(tokens)) if tokens[i:i + len(row)].tolist() == row.tolist())
        alone = model(mx.array(row[None]))
        assert mx.abs(logits[0, start:start + len(row)] - alone[0]).max().item() < 1e-4
    # the first token of each packed row is never a target of the previous row
    assert mask.sum() == 5 + 4 - 2


def test_loading_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        data.load_rows(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        data.load_rows(str(tmp_path / "nope.jsonl"))
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,completion\nhi,yo\n")
    assert data.load_rows(str(csv))[0]["prompt"] == "hi"
