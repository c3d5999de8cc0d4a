"""`dpo/orpo.tokenization: trl` against TRL 1.16 itself: the same tokens as TRL's own
DPOTrainer/ORPOTrainer preprocessing, and the same step-0 metrics as TRL's trainers on the same
weights and data (float32, CPU; transformers loads the tiny model's safetensors as is).

`tokenization: smolmac` is documented and tested in tests/test_preference.py.
"""

import random
import shutil
import warnings

import pytest
from conftest import write_jsonl

import smolmac
from smolmac.methods import preference

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5's renames, inside TRL

WORDS = "the cat sat on a mat and dog ran to park".split()
TOL = 1e-4  # the README quotes this tolerance


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def rows(fmt: str, n: int = 6, seed: int = 3) -> list[dict]:
    """Preference rows of one format (TRL's datasets hold one format per dataset)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        v = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        if fmt == "chat":
            out.append({"prompt": user(f"say: {w}"), "chosen": assistant(f"yes {w}"), "rejected": assistant(f"no {v}")})
        elif fmt == "plain":
            out.append({"prompt": f"say: {w}", "chosen": f" yes {w}", "rejected": f" no {v}"})
        elif fmt == "implicit_chat":
            out.append({"chosen": user(f"say: {w}") + assistant(f"yes {w}"), "rejected": user(f"say: {w}") + assistant(f"no {v}")})
        else:  # implicit plain: the prompt is the longest common prefix
            out.append({"chosen": f"Q: {w} A: yes {w}", "rejected": f"Q: {w} A: no {v}"})
    return out


@pytest.fixture(scope="module")
def bos_model(tiny_model, tmp_path_factory):
    """The tiny model with a tokenizer that adds BOS (Llama-2/Mistral/Gemma style)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("bos-model")
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tiny_model), add_bos_token=True)
    tok.save_pretrained(str(out))
    assert tok("the cat")["input_ids"][0] == tok.bos_token_id
    return out


def trl_trainer(method: str, model_dir, data: list[dict], out_dir, **args):
    """TRL's own trainer on `data`, full fine-tuning (the DPO reference is a copy of the
    initial weights, as in smolmac with `full: true`), float32 on the CPU (not TRL's bf16 default)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    # TRL defaults to bf16 autocast and gradient checkpointing; float32 here, like smolmac's run
    common = dict(output_dir=str(out_dir), report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no", seed=0,
                  per_device_train_batch_size=len(data), max_steps=1, logging_steps=1, beta=0.1, **args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "dpo":
            return DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=Dataset.from_list(data), processing_class=tok), tok
        return ORPOTrainer(model=model, args=ORPOConfig(remove_unused_columns=False, **common),
                           train_dataset=Dataset.from_list(data), processing_class=tok), tok


# ---------------------------------------------------------------------------------------------
# Tokens: ours in `trl` mode == what TRL's preprocessing gives, for every row format


@pytest.mark.parametrize("fmt", ["chat", "plain", "implicit_chat", "implicit_plain"])
@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_trl_tokens_equal_trls_own_preprocessing(tiny_model, bos_model, tmp_path, fmt, bos):
    data = rows(fmt, n=3)
    model_dir = bos_model if bos else tiny_model
    dpo, tok = trl_trainer("dpo", model_dir, data, tmp_path / "dpo", max_length=64)
    ours, counts = preference.tokenize_pairs(tok, data, 64, "trl", "dpo")
    assert counts["identical"] == 0 and len(ours) == len(data)
    for ex, (c, r) in zip(dpo.train_dataset, ours):
        assert c.tokens.tolist() == ex["prompt_ids"] + ex["chosen_ids"]
        assert r.tokens.tolist() == ex["prompt_ids"] + ex["rejected_ids"]
        assert c.mask.tolist() == [False] * len(ex["prompt_ids"]) + [True] * len(ex["chosen_ids"])
        assert r.mask.tolist() == [False] * len(ex["prompt_ids"]) + [True] * len(ex["rejected_ids"])
    orpo, _ = trl_trainer("orpo", model_dir, data, tmp_path / "orpo", max_length=64)
    ours, _ = preference.tokenize_pairs(tok, data, 64, "trl", "orpo")
    for ex, (c, r) in zip(orpo.train_dataset, ours):
        assert c.tokens.tolist() == ex["chosen_input_ids"] and r.tokens.tolist() == ex["rejected_input_ids"]
        assert c.mask.tolist() == [lab != -100 for lab in ex["chosen_labels"]]
        assert r.mask.tolist() == [lab != -100 for lab in ex["rejected_labels"]]
    # what the modes differ in, spelled out (the README's DPO/ORPO section says the same)
    c, _ = ours[0]
    smol, _ = preference.tokenize_pairs(tok, data[:1], 64, "smolmac", "orpo")[0][0]
    assert c.tokens[0] == tok.bos_token_id and c.tokens[-1] == tok.eos_token_id
    if fmt.endswith("chat"):
        # TRL trains "<|im_end|>\n" (+ EOS again for ORPO); smolmac stops at "<|im_end|>"
        assert tok.decode(c.tokens[c.mask]).endswith("<|im_end|>\n<|im_end|>")
        assert tok.decode(smol.tokens[smol.mask]).endswith("<|im_end|>") and not tok.decode(smol.tokens).endswith("\n")
        d, _ = preference.tokenize_pairs(tok, data[:1], 64, "trl", "dpo")[0][0]
        assert tok.decode(d.tokens[d.mask]).endswith("<|im_end|>\n")
    else:
        # TRL keeps plain strings plain; smolmac wraps them into chat turns (this tokenizer has a template)
        assert "<|im_start|>" not in tok.decode(c.tokens) and "<|im_start|>" in tok.decode(smol.tokens)


def test_trl_mode_truncates_like_trl_max_length(tiny_model, tmp_path):
    """TRL's max_length is the whole sequence; smolmac's own mode keeps max_seq_len inputs + 1."""
    data = [{"prompt": user("hi"), "chosen": assistant("the cat sat " * 10), "rejected": assistant("no")}]
    dpo, tok = trl_trainer("dpo", tiny_model, data, tmp_path / "dpo", max_length=32)
    batch = dpo.data_collator([dpo.train_dataset[0]])
    (c, r), = preference.tokenize_pairs(tok, data, 32, "trl", "dpo")[0]
    assert batch["input_ids"][0].tolist() == c.tokens.tolist() and len(c.tokens) == 32
    assert batch["completion_mask"][0].tolist() == c.mask.astype(int).tolist()
    (c, _), = preference.tokenize_pairs(tok, data, 32, "smolmac", "dpo")[0]
    assert len(c.tokens) == 33


# ---------------------------------------------------------------------------------------------
# Step-0 metrics: smolmac's first train event == TRL's first log, same weights, same data


def smolmac_step0(method: str, model_dir, train_file, n: int, run_dir) -> dict:
    run = smolmac.train({
        "model": str(model_dir), "method": method, "full": True,
        "data": {"train": str(train_file)},
        "dpo": {"beta": 0.1, "tokenization": "trl"},
        "orpo": {"beta": 0.1, "tokenization": "trl", "nll": "full"},  # TRL's NLL covers the whole chosen sequence
        "train": {"steps": 1, "batch_size": n, "max_seq_len": 64, "report_every": 1, "lr": 1e-6, "dtype": "float32"},
    }, run_dir=run_dir)
    return next(e for e in run.events if e["type"] == "train" and e["step"] == 1)


@pytest.mark.parametrize("method,fmt", [("dpo", "chat"), ("orpo", "chat"), ("dpo", "plain"), ("orpo", "plain")])
def test_step0_metrics_equal_trls_trainer(tiny_model, bos_model, tmp_path, method, fmt):
    data = rows(fmt, n=6)
    model_dir = bos_model if fmt == "plain" else tiny_model  # plain: a tokenizer that adds BOS
    ours = smolmac_step0(method, model_dir, write_jsonl(tmp_path / "pairs.jsonl", data), len(data), tmp_path / "run")
    trainer, _ = trl_trainer(method, model_dir, data, tmp_path / "trl", max_length=64, learning_rate=1e-6)
    trainer.train()
    theirs = trainer.state.log_history[0]
    keys = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"]
    if method == "orpo":
        keys += ["nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/accuracies"]
    diffs = {k: abs(ours[k] - theirs[k]) for k in keys}
    print(method, fmt, "max |smolmac - TRL| =", max(diffs.values()), {k: theirs[k] for k in keys})
    assert max(diffs.values()) <= TOL, {k: (ours[k], theirs[k]) for k in keys}
    if method == "dpo":  # full fine-tuning: at step 0 the policy is the reference, so the logps carry the test
        assert abs(theirs["logps/chosen"]) > 1 and abs(theirs["rewards/chosen"]) < 1e-5
