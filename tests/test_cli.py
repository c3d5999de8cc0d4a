"""User errors end in one sentence naming file/line/key, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest
from conftest import chat_rows, write_jsonl

from smolmac.cli import main
from smolmac.events import read_events


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run dirs land in tmp_path/runs


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def recipe_file(tmp_path, model, train, **extra):
    import yaml

    r = {"model": str(model), "data": {"train": str(train)}, "train": {"steps": 2, "batch_size": 2}, **extra}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def expect_error(capsys, pattern, *argv):
    import re

    code, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def test_bad_data(tmp_path, capsys, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_rows(1)[0]) + "\n{oops\n")
    expect_error(capsys, r"bad.jsonl:2: malformed JSON", "train", str(recipe_file(tmp_path, tiny_model, bad)))

    cols = write_jsonl(tmp_path / "cols.jsonl", [{"question": "a", "answer": "b"}])
    expect_error(capsys, r"cols.jsonl:1: cannot tell the format .*data.columns", "train", str(recipe_file(tmp_path, tiny_model, cols)),
                 "--run-dir", str(tmp_path / "r1"))
    expect_error(capsys, r"cols.jsonl:1: data.columns maps 'completion' to 'answr', but the row has no 'answr'", "train", str(recipe_file(tmp_path, tiny_model, cols)),
                 "--set", "data.columns={prompt: question, completion: answr}", "--run-dir", str(tmp_path / "r1b"))

    role = write_jsonl(tmp_path / "role.jsonl", [{"messages": [{"role": "wizard", "content": "x"}]}])
    expect_error(capsys, r"role.jsonl:1: unknown role 'wizard'", "train", str(recipe_file(tmp_path, tiny_model, role)), "--run-dir", str(tmp_path / "r2"))

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    expect_error(capsys, r"empty.jsonl: the data is empty", "train", str(recipe_file(tmp_path, tiny_model, empty)), "--run-dir", str(tmp_path / "r3"))

    noasst = write_jsonl(tmp_path / "noasst.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    expect_error(capsys, r"noasst.jsonl:1: the conversation has no assistant turn", "train", str(recipe_file(tmp_path, tiny_model, noasst)), "--run-dir", str(tmp_path / "r4"))


def test_no_chat_template(tmp_path, capsys, tiny_model):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in plain.glob("chat_template.*"):
        f.unlink()
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(4))
    expect_error(capsys, r"c.jsonl:1: the tokenizer has no chat template", "train", str(recipe_file(tmp_path, plain, chat)))


def test_bad_recipe_and_model(tmp_path, capsys, tiny_model, monkeypatch):
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(4))
    p = recipe_file(tmp_path, tiny_model, chat)
    p.write_text(p.read_text() + "lora:\n  rnak: 4\n")
    expect_error(capsys, r"r.yaml:\d+: unknown key 'lora.rnak' \(did you mean 'rank'\?\)", "train", str(p))
    expect_error(capsys, r"--set: 'train.steps' must be int", "train", str(recipe_file(tmp_path, tiny_model, chat)), "--set", "train.steps=many")
    expect_error(capsys, r"model: the local path ./no/such/model does not exist", "train", str(recipe_file(tmp_path, "./no/such/model", chat)))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    expect_error(capsys, r"'someone/not-cached' is not in the Hugging Face cache", "train", str(recipe_file(tmp_path, "someone/not-cached", chat)))

    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(tiny_model, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["model_type"] = "wizardformer"
    (odd / "config.json").write_text(json.dumps(cfg))
    expect_error(capsys, r"model_type 'wizardformer', which mlx-lm cannot load", "train", str(recipe_file(tmp_path, odd, chat)))


def test_run_dir_conflicts_and_resume(tmp_path, capsys, tiny_model):
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(8))
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe_file(tmp_path, tiny_model, chat)), "--run-dir", str(run_dir), "--quiet"]) == 0
    assert (run_dir / "adapter" / "adapters.safetensors").is_file()
    expect_error(capsys, r"already holds a different run", "train", str(recipe_file(tmp_path, tiny_model, chat)), "--run-dir", str(run_dir), "--set", "train.lr=0.5")
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())  # a run that never checkpointed
    assert main(["train", "--resume", str(empty), "--quiet"]) == 0  # it starts again from step 0, and says so
    start = next(e for e in read_events(empty / "events.jsonl") if e["type"] == "start")
    assert start["step"] == 0 and "no checkpoint yet" in start["resume"]
    assert (empty / "adapter" / "adapters.safetensors").is_file()


def test_json_stream_and_help(tmp_path, tiny_model):
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(8))
    out = subprocess.run([sys.executable, "-m", "smolmac.cli", "train", str(recipe_file(tmp_path, tiny_model, chat)),
                          "--run-dir", str(tmp_path / "j"), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    types = [json.loads(line)["type"] for line in out.stdout.splitlines()]
    assert types[0] == "start" and types[-1] == "done" and "train" in types
    help_ = subprocess.run([sys.executable, "-m", "smolmac.cli", "--help"], capture_output=True, text=True)
    for cmd in ("train", "generate", "export", "upload", "bench", "runs", "tui"):
        assert cmd in help_.stdout


def test_generate_streams_with_adapter(tmp_path, capsys, tiny_model):
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(8))
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe_file(tmp_path, tiny_model, chat)), "--run-dir", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(tiny_model), "--adapter", str(run_dir), "--prompt", "reverse: cat", "--max-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("env", [{"SMOLMAC_BLAS": "0"}, {}])
def test_blas_status(env):
    import os

    code = "import smolmac, smolmac._blas as b; print(b.status)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    status = out.stdout.strip()
    if env:
        assert status == "disabled"
    else:
        assert status.startswith("loaded:") or status in ("absent", "macos")


def test_results_identical_with_and_without_optimised_blas(tmp_path, tiny_model):
    """A few training steps give the same losses with the reference BLAS and with OpenBLAS."""
    import os

    from smolmac._blas import KNOWN_LOCATIONS

    if sys.platform == "darwin" or not any(os.path.exists(p) for p in KNOWN_LOCATIONS):
        pytest.skip("no optimised BLAS on this machine")
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(8))
    script = (
        "import json, sys, smolmac; "
        f"r = smolmac.train({{'model': {str(tiny_model)!r}, 'data': {{'train': {str(chat)!r}}}, 'train': {{'steps': 3, 'batch_size': 2, 'report_every': 1, 'lr': 0.01}}}}, run_dir=sys.argv[1]); "
        "print(json.dumps([e['loss'] for e in r.events if e['type'] == 'train']))"
    )
    losses = {}
    for name, env in (("ref", {"SMOLMAC_BLAS": "0"}), ("openblas", {})):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=300)
        assert out.returncode == 0, out.stderr
        losses[name] = json.loads(out.stdout.strip().splitlines()[-1])
    assert losses["ref"] == pytest.approx(losses["openblas"], abs=1e-5)
