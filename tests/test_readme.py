"""Every Python block of the README runs as written, in order, in a folder holding the README's
placeholders (`models/base`, `chats.jsonl`, `runs/math`, `runs/style`) built from tiny models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import chat_rows, write_jsonl
from test_export import make_run

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M)]


def test_the_readme_has_an_example_for_every_api_function():
    import smolmac

    code = "\n".join(c for _, c in python_blocks())
    for name in ("train", "load", "export", "upload", "combine", "runs", "read_run", "bench", "evaluate", "recipes", "inspect", "UserError"):
        assert f"smolmac.{name}" in code and name in smolmac.__all__, name
    for method in ("generate", "chat", "chat_stream", "use", "adapters", "combine", "inspect"):
        assert f"m.{method}" in code, method


@pytest.mark.slow
def test_every_readme_python_block_runs(tmp_path, monkeypatch, tiny_tokenizer, capsys):
    from smolmac.models import new_model

    monkeypatch.chdir(tmp_path)
    new_model({"preset": "nano", "initializer_range": 0.2}, tiny_tokenizer, "models/base", seed=0)
    write_jsonl(Path("chats.jsonl"), chat_rows())
    for name, seed in (("math", 1), ("style", 2)):
        make_run(Path("runs") / name, "models/base", {"rank": 8, "alpha": 16, "targets": "all-linear", "layers": "all", "dora": False}, seed=seed)
    blocks = python_blocks()
    assert len(blocks) >= 7
    for line, code in blocks:
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
        out = capsys.readouterr().out
        assert out.strip(), f"README.md:{line} printed nothing"
    assert Path("out/mixed-peft/adapter_model.safetensors").is_file() and Path("out/mixed-svd/adapters.safetensors").is_file()
    assert Path("out/math-hf/config.json").is_file() and not Path("out/never").exists()
    assert "--weights: 1 weight(s) for 2 adapters" in out
