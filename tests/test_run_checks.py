"""Issue 14 (input half): key ranges shared by validation, --help-keys, the README and the app's
form; `train.dtype: auto`; one-line data warnings; DPO/ORPO eval events without perplexity; no
third-party noise on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from conftest import WORDS, chat_rows, clean_env, write_jsonl

import smolmac
from smolmac import config as C
from smolmac.cli import main
from smolmac.events import read_events

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Ranges live next to the fields


def _numeric(tp) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args)


def test_every_numeric_key_declares_its_range():
    for cls in (C.Config, *C.SECTIONS.values()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _numeric(hints[f.name]):
                assert "range" in f.metadata or "check" in f.metadata, f"{cls.__name__}.{f.name} has no range"
                default = getattr(cls(), f.name)
                assert C.field_problem(f, default) is None, f"the default of {f.name} is out of its own range"


def test_help_keys_readme_and_form_show_the_same_ranges(capsys):
    assert main(["train", "--help-keys"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\.lr .*default 0\.0001  \(> 0\)", out)
    assert re.search(r"lora\.dropout .*\(in \[0, 1\)\)", out)
    assert re.search(r"train\.betas .*\(two numbers in \[0, 1\)\)", out)
    readme = (ROOT / "README.md").read_text()
    for key, _tp, _default, _help, valid in C.field_help():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"README key table has no row for {key}"
        if valid:
            assert f"| {valid} |" in row.replace("\\|", "|"), f"README row of {key} does not show {valid!r}: {row}"
    from smolmac.tui.widgets.config_form import SPECS, check

    assert SPECS["train.lr"].valid == "> 0" and SPECS["train.report_every"].valid == ">= 1"
    cfg, message, key = check({"model": "m", "train.lr": -1.0, "train.report_every": 1})
    assert cfg is None and key == "train.lr" and "must be > 0" in message


# ---------------------------------------------------------------------------------------------
# dtype: auto


def test_dtype_auto_is_the_default_everywhere_and_resolves_per_device(monkeypatch):
    import mlx.core as mx

    from smolmac.models import resolve_dtype

    assert C.Config().train.dtype == "auto"
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert (raw.get("train") or {}).get("dtype") == "auto", f"{path.name} does not ask for dtype: auto"
    assert resolve_dtype("float16") == "float16"
    assert resolve_dtype("auto") == ("bfloat16" if mx.default_device().type == mx.DeviceType.gpu else "float32")

    class Gpu:
        type = mx.DeviceType.gpu

    monkeypatch.setattr(mx, "default_device", lambda: Gpu())
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    assert resolve_dtype("auto") == "bfloat16"  # Metal
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    monkeypatch.setattr(mx.cuda, "is_available", lambda: True)
    assert resolve_dtype("auto") == "bfloat16"  # CUDA
    monkeypatch.setattr(mx.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto") == "float32"


def test_the_resolved_dtype_is_recorded_and_shown(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(8))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": str(tiny_model), "data": {"train": str(chat)}, "train": {"steps": 1, "batch_size": 4}}))
    assert main(["train", "r.yaml", "--run-dir", "run"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["dtype"] == "float32"  # the CPU backend (this machine)
    start = next(e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "start")
    assert start["dtype"] == "float32"
    assert re.search(r"sft .*trainable parameters.*, float32", " ".join(capsys.readouterr().out.split()))
    # the same recipe again in the same dir is the same run (auto == the dtype it resolved to)
    assert main(["train", "--resume", "run", "--quiet"]) == 0


# ---------------------------------------------------------------------------------------------
# Warnings


def test_data_warnings_are_one_line_events_the_cli_and_app_show(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long = " ".join(WORDS * 3)
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": long}]},  # cut
        {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "ok"}]},  # prompt fills it
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    write_jsonl(tmp_path / "c.jsonl", rows)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": str(tiny_model), "data": {"train": "c.jsonl"},
                                                     "train": {"steps": 1, "batch_size": 4, "max_seq_len": 32}}))
    assert main(["train", "r.yaml", "--run-dir", "run"]) == 0
    out = capsys.readouterr().out
    events = read_events(tmp_path / "run" / "events.jsonl")
    warnings = [e for e in events if e["type"] == "warning"]
    assert {w["kind"] for w in warnings} == {"truncated", "untrained_rows", "small_data"}
    by_kind = {w["kind"]: w["message"] for w in warnings}
    assert by_kind["truncated"].startswith("2 of 3 training rows (67%) are longer than train.max_seq_len=32")
    assert by_kind["untrained_rows"].startswith("1 of 3 training rows have no trained token")
    assert "fewer than one optimizer step takes (train.batch_size x train.grad_accum = 4)" in by_kind["small_data"]
    assert all("\n" not in w["message"] for w in warnings)
    assert events.index(warnings[0]) == 1  # right after the start event
    for w in warnings:
        assert f"warning: {w['message'][:60]}" in out.replace("\n", " ")
    from smolmac.tui.view import RunView

    view = RunView()
    lines = [view.add(e) for e in events]
    assert sum(1 for line in lines if line and line.startswith("warning: ")) == 3
    assert len(view.warnings) == 3


def test_enough_data_gives_no_warning(tmp_path, tiny_model):
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(8))
    run = smolmac.train({"model": str(tiny_model), "data": {"train": str(chat)}, "train": {"steps": 1, "batch_size": 4}}, run_dir=tmp_path / "r")
    assert not [e for e in run.events if e["type"] == "warning"]


# ---------------------------------------------------------------------------------------------
# DPO/ORPO evaluation: preference metrics, no perplexity


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_eval_events_carry_preference_metrics_and_no_perplexity(method, tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pairs = [{"prompt": f"{a} + {b}?", "chosen": str(a + b), "rejected": str(a + b + 1)} for a in range(4) for b in range(4)]
    write_jsonl(tmp_path / "p.jsonl", pairs)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": str(tiny_model), "method": method, "data": {"train": "p.jsonl", "valid": 0.25},
                                                     "train": {"steps": 2, "batch_size": 4, "max_seq_len": 64}}))
    assert main(["train", "r.yaml", "--run-dir", "run"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    evals = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "eval"]
    assert evals and all("val_ppl" not in e for e in evals)
    assert all("eval_rewards/accuracies" in e and "eval_rewards/margins" in e for e in evals)
    assert re.search(r"step 2: val loss [\d.]+ .*eval_rewards/accuracies", out) and "ppl" not in out, out
    from smolmac.tui.view import RunView

    line = RunView().add(evals[-1])
    assert "ppl" not in line and "preference accuracy" in line


def test_sft_eval_events_keep_perplexity(tmp_path, tiny_model):
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(16))
    run = smolmac.train({"model": str(tiny_model), "data": {"train": str(chat), "valid": 0.25}, "train": {"steps": 1, "batch_size": 4}}, run_dir=tmp_path / "r")
    assert run.last("eval")["val_ppl"] > 1


# ---------------------------------------------------------------------------------------------
# stderr stays quiet


def test_normal_commands_print_nothing_on_stderr_without_torch(tmp_path, tiny_model):
    """As on a Mac with MLX only: transformers' "PyTorch was not found" advisory is silenced,
    also where transformers is imported before mlx-lm (which silences it too): training a
    tokenizer, generating, training."""
    from conftest import corpus

    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(4))
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus(200)))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": str(tiny_model), "data": {"train": str(chat)}, "train": {"steps": 1, "batch_size": 4}}))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"method": "tokenizer", "tokenizer": {"vocab_size": 300}, "data": {"train": "corpus.txt"}}))
    code = "import sys; sys.modules['torch'] = None; from smolmac.cli import main; sys.exit(main(sys.argv[1:]))"
    for argv in (["train", "t.yaml", "--run-dir", "tok", "--quiet"],
                 ["generate", "--model", str(tiny_model), "--prompt", "hi", "--max-tokens", "2"],
                 ["train", "r.yaml", "--run-dir", "run", "--quiet"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=clean_env())
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", f"{' '.join(argv)} wrote to stderr:\n{out.stderr}"
    assert (tmp_path / "tok" / "tokenizer" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "run" / "events.jsonl").read_text().splitlines()[-1])["type"] == "done"
