"""Shared fixtures: a tiny tokenizer and Llama model built on the fly (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import smolmac  # noqa: F401  (loads the optimised BLAS before mlx)

WORDS = (
    "the cat sat on a mat and a dog ran to the park while birds sang in tall green trees "
    "numbers like one two three four five add up quickly caffè perché città naïve 🙂 code def f(x): return x + 1"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(n)]


def chat_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Variable-length chats; the answer is the user's words reversed (learnable)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS[:20]) for _ in range(rng.randint(2, 8))]
        rows.append({"messages": [
            {"role": "user", "content": "reverse: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]})
    return rows


def clean_env() -> dict:
    """This environment minus what importing mlx-lm in the test process set (it silences
    transformers' advisories), so a child process shows what a user's shell would."""
    import os

    return {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    from smolmac.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(corpus(), out, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer, hidden-64 Llama with the tiny tokenizer, saved in HF layout."""
    from smolmac.models import new_model

    # init std 0.1 (not 0.02) so a random model has logits large enough for LoRA to move
    return new_model({"preset": "nano", "initializer_range": 0.1}, tiny_tokenizer, tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture()
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows())


def hold_lock(run_dir: Path):
    """Start a process that holds `run_dir`'s run lock (as a live `smolmac train` does) until
    killed; returns it once the lock is held (polls up to 60 s)."""
    import subprocess
    import sys
    import time

    from smolmac.storage import lock_owner

    code = ("import sys, time  # smolmac\nfrom smolmac.storage import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while lock_owner(run_dir) != proc.pid:
        assert proc.poll() is None and time.monotonic() < deadline, f"the lock holder did not start (exit {proc.poll()})"
        time.sleep(0.1)
    return proc


# A real four-stage pipeline in the quickstart's shape (tokenizer -> pretrain a `{new: nano}`
# model -> SFT with LoRA -> ORPO full), a few steps each on the shipped quickstart data: the runs
# list, dashboards, chat, compare and inspect are tested on what the engine really writes.
TINY_PIPELINE = {
    "name": "tiny",
    "model": {"new": {"preset": "nano"}},
    "tokenizer": {"type": "bpe", "vocab_size": 300, "data": "quickstart:corpus.txt"},
    "train": {"batch_size": 8, "seed": 0, "report_every": 1},
    "eval": {"exact_match": "quickstart:eval.jsonl", "preference": "quickstart:eval_preference.jsonl"},
    "stages": [
        {"name": "tokenizer", "method": "tokenizer", "data": {"max_rows": 400}},
        {"name": "pretrain", "method": "pretrain", "data": {"train": "quickstart:corpus.txt", "valid": 0.05, "max_rows": 400},
         "train": {"steps": 4, "lr": 3.0e-3, "max_seq_len": 64}},
        {"name": "sft", "method": "sft", "data": {"train": "quickstart:sft.jsonl", "max_rows": 64}, "lora": {"rank": 4},
         "train": {"steps": 3, "lr": 1.0e-3, "max_seq_len": 48}},
        {"name": "orpo", "method": "orpo", "full": True, "data": {"train": "quickstart:preference.jsonl", "max_rows": 64},
         "train": {"steps": 3, "lr": 3.0e-4, "max_seq_len": 48}},
    ],
}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """The finished run dir of TINY_PIPELINE (built once per session: ~10 s of CPU)."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "runs" / "tiny"
    smolmac.train(TINY_PIPELINE, run_dir=run_dir)
    return run_dir
