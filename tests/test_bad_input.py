"""The bad-input table: every mistake a user can make in a recipe, a data file or a command line
ends in ONE sentence on stderr naming the file:line, key or argument, exit code 2, no traceback,
and no file outside the run dir changes.

Cases run in-process through `smolmac.cli.main(argv)` (fast); a few run as real subprocesses to
prove no traceback or third-party noise reaches stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import chat_rows, clean_env, write_jsonl

from smolmac.cli import main

RUN = "run"  # every train case writes only here


@dataclass
class Env:
    root: Path
    model: Path


@dataclass
class Case:
    id: str
    make: object  # (env) -> argv; writes the files the case needs
    pattern: str  # regex the error line must match
    line_has: str | None = None  # the file:line named must hold this text
    kw: dict = field(default_factory=dict)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def base_recipe(env: Env, method: str = "sft") -> dict:
    data = "pref.jsonl" if method in ("dpo", "orpo") else "chat.jsonl"
    return {"model": str(env.model), "method": method, "data": {"train": data}, "train": {"steps": 2, "batch_size": 2}}


def recipe(extra: dict | None = None, method: str = "sft", raw: str | None = None, name: str = "r.yaml"):
    """A case that trains from `name` = the base recipe deep-merged with `extra` (or `raw` text)."""

    def make(env: Env):
        text = raw if raw is not None else yaml.safe_dump(deep_merge(base_recipe(env, method), extra or {}), sort_keys=False)
        (env.root / name).write_text(text)
        return ["train", name, "--run-dir", RUN]

    return make


def key(dotted: str, value, pattern: str, method: str = "sft", extra: dict | None = None) -> Case:
    """A recipe with `dotted: value`; the error must name r.yaml at the line of the key."""
    parts = dotted.split(".")
    nested: dict = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        nested = {p: nested}
    leaf = parts[-1]
    return Case(f"key-{dotted}={value!r}"[:60], recipe(deep_merge(extra or {}, nested), method),
                rf"r\.yaml:\d+: '{re.escape(dotted)}' {pattern}", line_has=f"{leaf}:")


def setting(text: str, pattern: str) -> Case:
    return Case(f"set-{text}", lambda env: [*recipe()(env), "--set", text], pattern)


def rows(rows_or_text, pattern: str, method: str = "sft", name: str = "d.jsonl", extra: dict | None = None, line: int | None = None) -> Case:
    """Training data `name` holding `rows_or_text`; the error must name it (and `line`)."""

    def make(env: Env):
        path = env.root / name
        if isinstance(rows_or_text, bytes):
            path.write_bytes(rows_or_text)
        elif isinstance(rows_or_text, str):
            path.write_text(rows_or_text)
        else:
            path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows_or_text))
        return recipe(deep_merge({"data": {"train": name}}, extra or {}), method)(env)

    where = re.escape(name) + (f":{line}" if line else "")
    return Case(f"data-{name}-{re.sub(r'[^a-z ]', '', pattern)[:40].strip()}", make, where + r"\S*: " + pattern)


def cli(*argv, pattern: str, setup=None, id: str | None = None) -> Case:
    def make(env: Env):
        if setup:
            setup(env)
        return [a.replace("{model}", str(env.model)) for a in argv]

    return Case(id or "cli-" + " ".join(argv)[:70], make, pattern)


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
GOOD_CHAT = {"messages": [USER, ASSISTANT]}
GOOD_PREF = {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}


def _file(name, text="x"):
    return lambda env: (env.root / name).write_text(text)


def _dir(name, files=None):
    def make(env):
        (env.root / name).mkdir(parents=True, exist_ok=True)
        for f, text in (files or {}).items():
            (env.root / name / f).write_text(text)
    return make


def _finished_run(env):
    """A run dir with a different recipe already in it (no training needed)."""
    run = env.root / RUN
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**base_recipe(env), "name": "other"}))
    (run / "events.jsonl").write_text("")


def _strict_model(env):
    """A copy of the tiny model whose chat template refuses non-alternating roles and opens
    every chat with a long system text (so its overhead exceeds a tiny max_seq_len)."""
    strict = env.root / "strict"
    if strict.exists():
        return
    shutil.copytree(env.model, strict)
    cfg = json.loads((strict / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (
        "{{ '<|im_start|>system\nYou are a very helpful assistant who answers every question about cats, dogs, parks and trees carefully.<|im_end|>\n' }}"
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    (strict / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in strict.glob("chat_template.*"):
        f.unlink()


def strict(case: Case) -> Case:
    inner = case.make

    def make(env):
        _strict_model(env)
        argv = inner(env)
        r = yaml.safe_load((env.root / argv[1]).read_text())
        r["model"] = str(env.root / "strict")
        (env.root / argv[1]).write_text(yaml.safe_dump(r, sort_keys=False))
        return argv

    return Case(case.id + "-strict", make, case.pattern, case.line_has)


def _peft_like(env):
    out = env.root / "exp"
    out.mkdir()
    (out / "smolmac.json").write_text(json.dumps({"format": "peft"}))


CASES = [
    # -- recipe keys: ranges (issue 14, points 8 and 9) -----------------------------------------
    key("train.report_every", 0, r"must be >= 1, not 0"),
    key("train.report_every", -3, r"must be >= 1"),
    key("train.betas", [0.9], r"must be two numbers"),
    key("train.betas", [1.5, 0.999], r"must be two numbers in \[0, 1\)"),
    key("train.betas", [0.9, "x"], r"must be two numbers"),
    key("train.betas", 0.9, r"must be a list"),
    key("lora.dropout", 1.5, r"must be in \[0, 1\)"),
    key("lora.dropout", -0.1, r"must be in \[0, 1\)"),
    key("lora.dropout", 1.0, r"must be in \[0, 1\)"),
    key("train.warmup", -5, r"must be >= 0"),
    key("train.lr", 0, r"must be > 0, not 0 .*negative"),
    key("train.lr", -1e-3, r"must be > 0"),
    key("train.lr", "fast", r"must be float"),
    key("train.lr", float("nan"), r"must be > 0"),
    key("train.lr", float("inf"), r"must be > 0"),
    key("data.max_rows", 0, r"must be >= 1.*null"),
    key("data.max_rows", -5, r"must be >= 1"),
    key("save.every", -2, r"must be >= 0"),
    key("save.keep", 0, r"must be >= 1"),
    key("train.max_seq_len", 1, r"must be >= 16"),
    key("train.max_seq_len", 0, r"must be >= 16"),
    key("train.grad_clip", -1, r"must be >= 0"),
    key("train.weight_decay", -0.1, r"must be >= 0"),
    key("train.min_lr_ratio", 1.5, r"must be in \[0, 1\]"),
    key("train.min_lr_ratio", -0.1, r"must be in \[0, 1\]"),
    key("eval.every", -1, r"must be >= 0"),
    key("eval.max_tokens", 0, r"must be >= 1"),
    key("eval.batches", 0, r"must be -1 or >= 1"),
    key("eval.batches", -2, r"must be -1 or >= 1"),
    key("eval.prompts", [1, 2], r"must be a list of strings"),
    key("eval.prompts", "hi", r"must be a list"),
    key("dpo.beta", 0, r"must be > 0", method="dpo"),
    key("dpo.beta", -0.1, r"must be > 0", method="dpo"),
    key("dpo.label_smoothing", 0.7, r"must be in \[0, 0\.5\)", method="dpo"),
    key("dpo.label_smoothing", 0.1, r"applies only to dpo\.loss: sigmoid", method="dpo", extra={"dpo": {"loss": "ipo"}}),
    key("dpo.loss", "sigmoidd", r"must be one of .*did you mean 'sigmoid'", method="dpo"),
    key("orpo.beta", -1, r"must be >= 0", method="orpo"),
    key("orpo.nll", "all", r"must be one of completion, full", method="orpo"),
    key("tokenizer.vocab_size", 100, r"must be >= 261"),
    key("tokenizer.vocab_size", 0, r"must be >= 261"),
    key("tokenizer.type", "wordpiece", r"must be one of bpe, unigram"),
    key("train.batch_size", 0, r"must be auto or a number of rows \(>= 1\), not 0"),
    key("train.batch_size", "big", r"must be auto or a number of rows \(>= 1\), not 'big'"),
    key("train.memory_budget_gb", 0, r"must be > 0"),
    key("train.memory_budget_gb", -4, r"must be > 0"),
    key("train.effective_batch", 0, r"must be >= 1", extra={"train": {"batch_size": "auto"}}),
    key("train.effective_batch", 8, r"applies only to train\.batch_size: auto"),
    key("train.grad_accum", 2, r"is chosen by train\.batch_size: auto", extra={"train": {"batch_size": "auto"}}),
    key("train.grad_accum", 0, r"must be >= 1"),
    key("train.steps", -1, r"must be >= 0"),
    key("train.epochs", -1, r"must be >= 0"),
    key("train.epochs", 0, r"is 0 and 'train\.steps' is 0, so nothing would train", extra={"train": {"steps": 0}}),
    key("train.seed", -1, r"must be in \[0, 4294967295\]"),
    key("train.seed", 2**40, r"must be in \[0, 4294967295\]"),
    key("train.dtype", "float64", r"must be one of auto, float32"),
    key("train.schedule", "cosin", r"must be one of cosine, linear, constant, not 'cosin' \(did you mean 'cosine'\?\)"),
    key("train.packing", 3, r"must be bool"),
    key("lora.rank", 0, r"must be >= 1"),
    key("lora.alpha", 0, r"must be > 0"),
    key("lora.alpha", -16, r"must be > 0"),
    key("lora.layers", 0, r"must be 'all' or a number of last blocks"),
    key("lora.layers", "some", r"must be 'all' or a number of last blocks"),
    key("lora.targets", [], r"is an empty list"),
    key("lora.targets", "q_proj", r"must be 'all-linear' or a list"),
    key("lora.targets", ["q_proj", 3], r"must list module names"),
    key("data.valid", 1.5, r"as a fraction must be in \(0, 1\)"),
    key("data.valid", 0, r"as a fraction must be in \(0, 1\)"),
    key("data.columns", {"prompt": 3}, r"maps 'prompt' to 3"),
    key("data.columns", {"question": "prompt"}, r"maps unknown column 'question'"),
    key("data.columns", "messages", r"must be a mapping"),
    key("data.format", "chat", r"must be one of auto, text"),
    key("data.split", "", r"is empty"),
    key("full", "yes", r"must be bool"),
    key("method", "dpoo", r"must be one of .*did you mean 'dpo'"),
    key("model", 5, r"must be a Hub id, a directory"),
    key("model", {"preset": "nano"}, r"as a mapping must have a 'new' key"),
    Case("key-model.new=3", recipe({"model": {"new": 3}}), r"r\.yaml:\d+: 'model\.new' must be a mapping such as \{preset: nano\}, not 3", line_has="model:"),
    Case("key-unknown-top", recipe({"modle": "x"}), r"r\.yaml:\d+: unknown key 'modle' \(did you mean 'model'\?\)", line_has="modle:"),
    Case("key-unknown-sub", recipe({"train": {"learning_rate": 1}}), r"r\.yaml:\d+: unknown key 'train\.learning_rate'", line_has="learning_rate:"),
    Case("key-section-not-mapping", recipe(raw="model: m\ntrain: 5\n"), r"r\.yaml:2: 'train' must be a mapping", line_has="train:"),
    Case("stage-no-method", recipe({"stages": [{"train": {"lr": 1}}]}), r"r\.yaml:\d+: stages\[1\]: each stage must be a mapping with at least 'method'", line_has="- train:"),
    Case("stage-bad-lr", recipe({"stages": [{"method": "sft"}, {"method": "sft", "train": {"lr": -1}}]}),
         r"r\.yaml:\d+: 'stages\[2\]\.train\.lr' must be > 0", line_has="lr:"),
    Case("stage-nested-stages", recipe({"stages": [{"method": "sft", "stages": []}]}), r"r\.yaml:\d+: stages\[1\] cannot have its own 'stages'"),
    Case("stage-unknown-key", recipe({"stages": [{"method": "sft", "lora": {"rnak": 2}}]}),
         r"r\.yaml:\d+: unknown key 'stages\[1\]\.lora\.rnak' \(did you mean 'rank'\?\)", line_has="rnak:"),
    Case("yaml-invalid", recipe(raw="model: m\ntrain:\n  steps: [1,\n"), r"r\.yaml:\d+: this is not valid YAML"),
    Case("yaml-list", recipe(raw="- model\n- m\n"), r"r\.yaml: a recipe must be a YAML mapping"),
    cli("train", "missing.yaml", pattern=r"missing\.yaml: recipe file not found"),
    cli("train", "adir", pattern=r"adir: is a directory, not a recipe file", setup=_dir("adir")),
    Case("yaml-not-utf8", lambda env: ((env.root / "r.yaml").write_bytes(b"model: caff\xe8\n"), ["train", "r.yaml"])[1], r"r\.yaml: not valid UTF-8"),
    # -- --set ---------------------------------------------------------------------------------
    setting("train.lr=-1", r"--set: 'train\.lr' must be > 0"),
    setting("train.report_every=0", r"--set: 'train\.report_every' must be >= 1"),
    setting("lora.dropout=2", r"--set: 'lora\.dropout' must be in \[0, 1\)"),
    setting("train.betas=[0.9]", r"--set: 'train\.betas' must be two numbers"),
    setting("oops", r"--set oops: expected KEY=VALUE"),
    setting("train.stepz=3", r"--set: unknown key 'train\.stepz' \(did you mean 'steps'\?\)"),
    setting("train=5", r"--set: 'train' must be a mapping"),
    # -- data files and rows (the file and line are named) ------------------------------------
    rows([{"prompt": "2 + 2?", "completion": "4"}, {"prompt": "1 + 1?", "completion": 2}], r"'completion' must be a string or a list of messages, not a number \(2\)", line=2),
    rows([{"prompt": None, "completion": "x"}], r"'prompt' must be a string or a list of messages, not null", line=1),
    rows([GOOD_CHAT, {"messages": [USER, {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]}], r"message 2 has a list as content", line=2),
    rows([{"messages": [USER, {"role": "assistant", "content": 42}]}], r"message 2 content must be a string, not a number \(42\)", line=1),
    rows([{"messages": [{"content": "hi"}, ASSISTANT]}], r"message 1 has no 'role'", line=1),
    rows([{"messages": [{"role": "wizard", "content": "x"}, ASSISTANT]}], r"unknown role 'wizard'", line=1),
    rows([{"messages": "hello"}], r"'messages' must be a non-empty list .*not a string", line=1),
    rows([{"messages": []}], r"'messages' must be a non-empty list .*not an empty list", line=1),
    rows([{"text": "the cat"}, {"text": 12}], r"'text' must be a string, not a number \(12\)", line=2),
    rows([{"messages": [USER, ASSISTANT], "tools": "search"}], r"'tools' must be a list of tool definitions", line=1),
    rows([{"messages": [USER]}], r"the conversation has no assistant turn", line=1),
    rows([GOOD_PREF, {"prompt": "x", "chosen": 4, "rejected": "5"}], r"'chosen' must be a string or a list of messages, not a number", method="dpo", line=2),
    rows([{"prompt": {"q": "x"}, "chosen": "4", "rejected": "5"}], r"'prompt' must be a string or a list of messages, not an object", method="dpo", line=1),
    rows([{"prompt": "x", "chosen": "4", "rejected": ""}], r"'rejected' is empty", method="orpo", line=1),
    rows([{"prompt": "x", "chosen": [USER, ASSISTANT], "rejected": [ASSISTANT]}], r"'chosen' must hold only the assistant reply", method="dpo", line=1),
    rows([json.dumps(GOOD_CHAT), "{oops"], r"malformed JSON", line=2),
    rows(["[1, 2]"], r"each line must be a JSON object, not a list", line=1),
    rows(b'{"text": "caff\xe8"}\n', r"not valid UTF-8"),
    rows("<rows/>", r"unsupported file type '\.xml'", name="d.xml"),
    rows("", r"the data is empty"),
    rows([{"question": "a", "answer": "b"}], r"cannot tell the format", line=1),
    rows([GOOD_PREF], r"preference rows \(chosen/rejected\) need method dpo or orpo"),
    rows([GOOD_CHAT], r"method dpo needs preference rows", method="dpo"),
    rows([{"q": "a", "a": "b"}], r"data\.columns maps 'prompt' to 'question', but the row has no 'question'", extra={"data": {"columns": {"prompt": "question", "completion": "a"}}}, line=1),
    rows("prompt,completion\nhi,there\nhow,\n", r"'completion' must be a string or a list of messages, not null", name="d.csv", line=3),
    Case("data-missing-file", recipe({"data": {"train": "./nope.jsonl"}}), r"data: \./nope\.jsonl does not exist"),
    strict(rows([{"messages": [USER, USER, ASSISTANT]}], r"the chat template cannot render this conversation \(Conversation roles must alternate", line=1)),
    strict(Case("max-seq-len-below-template", recipe({"train": {"max_seq_len": 16}}), r"train\.max_seq_len: 16 leaves no room for text, since the chat template alone takes \d+ tokens")),
    Case("eval-exact-match-missing-column", lambda env: (write_jsonl(env.root / "em.jsonl", [{"prompt": "x"}]), recipe({"method": "sft", "eval": {"exact_match": "em.jsonl"}, "stages": [{"method": "sft"}]})(env))[1],
         r"em\.jsonl:1: an evaluation row needs string columns prompt, completion; 'completion' is missing"),
    # -- command lines -------------------------------------------------------------------------
    cli("train", pattern=r"train: give a recipe"),
    cli("train", "--resume", pattern=r"--resume: give the run directory"),
    cli("train", "--resume", "nowhere", pattern=r"--resume: nowhere has no config\.yaml"),
    cli("train", "--resume", "empty", pattern=r"--resume: empty has no config\.yaml", setup=_dir("empty")),
    cli("train", "r.yaml", "--json", "--quiet", pattern=r"smolmac train: argument --quiet: not allowed with argument --json"),
    cli("train", "r.yaml", "--bogus", pattern=r"smolmac: unrecognized arguments: --bogus"),
    Case("train-run-dir-is-file", lambda env: (_file("afile")(env), recipe()(env)[:2] + ["--run-dir", "afile/sub"])[1], r"--run-dir: afile is a file"),
    Case("train-run-dir-other-run", lambda env: (_finished_run(env), recipe()(env))[1], r"--run-dir: run already holds a different run"),
    cli("generate", "--prompt", "hi", pattern=r"smolmac generate: the following arguments are required: --model"),
    cli("generate", "--model", "./no/model", "--prompt", "hi", pattern=r"model: the local path \./no/model does not exist"),
    cli("generate", "--model", "{model}", "--prompt", "  ", pattern=r"--prompt: the prompt is empty"),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--max-tokens", "0", pattern=r"argument --max-tokens: must be >= 1, not 0"),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--max-tokens", "x", pattern=r"argument --max-tokens: expected a whole number, not 'x'"),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--temp", "-1", pattern=r"argument --temp: must be >= 0"),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--top-p", "0", pattern=r"argument --top-p: must be in \(0, 1\]"),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--top-p", "1.5", pattern=r"argument --top-p: must be in \(0, 1\]"),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--adapter", "nope", pattern=r"nope: no such adapter directory"),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--adapter", "afile", pattern=r"afile: no such adapter directory", setup=_file("afile")),
    cli("generate", "--model", "{model}", "--prompt", "hi", "--adapter", "adir", pattern=r"adir: no adapter", setup=_dir("adir", {"x.txt": "x"})),
    cli("generate", "--model", "afile", "--prompt", "hi", pattern=r"model: afile has no config\.json", setup=_file("afile")),
    cli("export", "nope", "--format", "peft", "--to", "out", pattern=r"nope: no such directory"),
    cli("export", "adir", "--format", "gguf2", "--to", "out", pattern=r"argument --format: invalid choice: 'gguf2'"),
    cli("export", "adir", "--format", "peft", "--to", "out", "--dtype", "float64", pattern=r"--dtype: 'float64' is not supported", setup=_dir("adir")),
    cli("export", "adir", "--format", "peft", "--to", "out", pattern=r"adir: this is neither a run directory nor an adapter directory", setup=_dir("adir")),
    cli("export", "adir", "--format", "peft", "--to", "full", pattern=r"--to: full exists and is not empty", setup=lambda env: (_dir("adir")(env), _dir("full", {"keep.txt": "mine"})(env))),
    cli("export", "adir", "--format", "peft", "--to", "afile", pattern=r"--to: afile is a file", setup=lambda env: (_dir("adir")(env), _file("afile")(env))),
    cli("export", "adir", "--format", "peft", pattern=r"the following arguments are required: --to"),
    cli("upload", "nope", "--repo", "you/x", "--dry-run", pattern=r"nope: no such directory"),
    cli("upload", "adir", "--repo", "you/x", "--dry-run", pattern=r"adir: this is not an export", setup=_dir("adir", {"a.txt": "x"})),
    cli("upload", "exp", "--repo", "not a repo!", "--dry-run", pattern=r"--repo: 'not a repo!' is not a valid Hub repository name", setup=_peft_like),
    cli("upload", "exp", "--dry-run", pattern=r"the following arguments are required: --repo"),
    cli("runs", "nowhere", pattern=r"runs: nowhere does not exist"),
    cli("runs", "afile", pattern=r"runs: afile is a file", setup=_file("afile")),
    cli("bench", "gpt", pattern=r"argument what: invalid choice: 'gpt'"),
    cli("bench", "sft", "--steps", "0", pattern=r"argument --steps: must be >= 1, not 0"),
    cli("bench", "sft", "--batch-size", "-1", pattern=r"argument --batch-size: must be >= 1, not -1"),
    cli("bench", "sft", "--size", "huge", pattern=r"argument --size: invalid choice: 'huge'"),
    cli("bench", "sft", "--out", "nodir/x.json", pattern=r"--out: the folder nodir does not exist"),
    cli("bench", "sft", "--out", "adir", pattern=r"--out: adir is a directory", setup=_dir("adir")),
    cli("frobnicate", pattern=r"smolmac: argument COMMAND: invalid choice: 'frobnicate'"),
]

_seen: dict = {}
for _c in CASES:  # unique test ids
    _seen[_c.id] = _seen.get(_c.id, 0) + 1
    if _seen[_c.id] > 1:
        _c.id += f"#{_seen[_c.id]}"


def snapshot(*roots: Path, skip: Path) -> dict:
    """{path: (size, mtime_ns)} of every file and folder under `roots`, except under `skip`."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            if d == skip or skip in d.parents:
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                p = d / name
                if p == skip:
                    continue
                st = p.lstat()
                out[str(p)] = (st.st_size if p.is_file() else None, st.st_mtime_ns)
    return out


@pytest.fixture()
def env(tmp_path, monkeypatch, tiny_model) -> Env:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_jsonl(tmp_path / "chat.jsonl", chat_rows(8))
    write_jsonl(tmp_path / "pref.jsonl", [GOOD_PREF, {"prompt": "3 + 3?", "chosen": "6", "rejected": "7"}] * 2)
    return Env(tmp_path, tiny_model)


def test_the_table_has_at_least_80_cases():
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    commands = {c.id[4:].split()[0] for c in CASES if c.id.startswith("cli-")}
    assert {"train", "generate", "export", "upload", "runs", "bench"} <= commands


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_ends_in_one_sentence(case: Case, env: Env, capsys):
    argv = case.make(env)
    before = snapshot(env.root, env.model, skip=env.root / RUN)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{err}"
    m = re.search(case.pattern, lines[0])
    assert m, f"{case.pattern!r} not in {lines[0]!r}"
    if case.line_has:  # the named line of the named file holds the key
        where = re.match(r"error: (\S+?):(\d+):", lines[0])
        assert where, lines[0]
        text = (env.root / where[1]).read_text().splitlines()[int(where[2]) - 1]
        assert case.line_has in text, f"line {where[2]} of {where[1]} is {text!r}, expected it to hold {case.line_has!r}"
    after = snapshot(env.root, env.model, skip=env.root / RUN)
    assert after == before, f"files outside the run dir changed: {sorted(set(after.items()) ^ set(before.items()))}"


SUBPROCESS = ["key-train.report_every=0", "data-d.jsonl-completion must be a string", "cli-generate --model {model} --prompt hi --max-tokens 0"]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_no_traceback_reaches_stderr_of_a_real_process(case_id, env):
    """The real command (not main() in-process): stderr is exactly the one error line; with torch
    hidden, as on a Mac without it, no third-party notice joins it."""
    case = next(c for c in CASES if c.id.startswith(case_id))
    argv = case.make(env)
    code = "import sys; sys.modules['torch'] = None; from smolmac.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, cwd=env.root, env=clean_env())
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(case.pattern, lines[0]), out.stderr
