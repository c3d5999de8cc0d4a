"""The Python API mirrors the CLI: cheap to import, one function per command (the CLI calls them),
UserError where the CLI exits with code 2 (the README's examples run in tests/test_readme.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from test_export import make_run

import smolmac
from smolmac.cli import main
from smolmac.errors import UserError


def test_import_smolmac_loads_no_mlx_and_command_modules_are_callable():
    code = (
        "import sys, smolmac\n"
        "names = [smolmac.train, smolmac.load, smolmac.upload, smolmac.combine, smolmac.read_run, smolmac.UserError]\n"
        "assert not [m for m in sys.modules if m.startswith(('mlx', 'textual', 'torch'))], sorted(sys.modules)\n"
        "from smolmac import runs\n"
        "import smolmac.export, smolmac.bench\n"
        "assert runs is smolmac.runs and callable(runs) and runs.read_run and runs.Run is smolmac.Run\n"
        "assert smolmac.export.export_run and callable(smolmac.export) and callable(smolmac.bench)\n"
        "assert smolmac.runs('no-such-folder') == []\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_resolve_dtype():
    from smolmac.models import resolve_dtype

    assert resolve_dtype("auto") == "float32"  # the CPU backend here (bfloat16 on Metal/CUDA)
    assert resolve_dtype("bfloat16") == "bfloat16"
    with pytest.raises(UserError, match="choose auto, float32, float16 or bfloat16"):
        resolve_dtype("fp8")


def test_api_raises_where_the_cli_exits_2(tmp_path, capsys):
    cases = [
        (lambda: smolmac.export(tmp_path / "missing", format="peft", to=tmp_path / "o"), ["export", str(tmp_path / "missing"), "--format", "peft", "--to", str(tmp_path / "o")]),
        (lambda: smolmac.upload(tmp_path / "missing", repo="you/x", dry_run=True), ["upload", str(tmp_path / "missing"), "--repo", "you/x", "--dry-run"]),
        (lambda: smolmac.combine([tmp_path / "a", tmp_path / "b"], "1,1", to=tmp_path / "c"), ["adapters", "combine", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "1,1", "--to", str(tmp_path / "c")]),
        (lambda: smolmac.load(adapters={"x": tmp_path / "a"}), ["generate", "--model", str(tmp_path / "m"), "--adapter", f"x={tmp_path / 'a'}", "--prompt", "hi"]),
    ]
    for call, argv in cases:
        with pytest.raises(UserError) as info:
            call()
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"error: {info.value}"
    with pytest.raises(UserError, match="not a benchmark"):
        smolmac.bench("speed")
    with pytest.raises(UserError, match="no config.yaml"):
        smolmac.read_run(tmp_path)


def test_load_takes_the_base_the_adapter_records_and_full_fine_tunes_generate_as_models(tmp_path, tiny_model, capsys):
    run, logits = make_run(tmp_path / "run", tiny_model, {"targets": "all-linear", "layers": "all", "dora": False})
    m = smolmac.load(adapters={"mine": run})
    assert m.base == str(tiny_model) and m.dtype == "float32" and list(m.adapters) == ["mine"]
    run_info = smolmac.read_run(run)
    assert run_info.adapter_path == run / "adapter" and run_info.last("eval")["val_loss"] == 1.5 and not run_info.stopped
    # `--adapter RUN` of a full fine-tune loads its model/ (as before several adapters existed)
    full = tmp_path / "full"
    shutil.copytree(tiny_model, full / "model")
    assert main(["generate", "--model", "unused", "--adapter", str(full), "--prompt", "the cat", "--max-tokens", "4", "--raw"]) == 0
    assert capsys.readouterr().out == smolmac.load(str(full / "model")).generate("the cat", max_tokens=4, chat=False) + "\n"
    with pytest.raises(UserError, match="full fine-tune .* not an adapter"):
        smolmac.load(str(tiny_model), {"full": full})
