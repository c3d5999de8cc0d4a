"""Pipelines and the offline quickstart: every stage improves its metric; finished stages are
skipped on resume; a stopped stage resumes from its checkpoint; LoRA stages are fused."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import smolmac
from smolmac.config import load_recipe
from smolmac.errors import UserError
from smolmac.events import read_events
from smolmac.pipeline import format_stage_table, stage_rows

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`smolmac train quickstart-ci` (the quickstart, shortened) run as a user runs it: by name, in
    a folder with nothing in it (the recipe and its data come with the package)."""
    empty = tmp_path_factory.mktemp("qs") / "empty"
    empty.mkdir()
    run_dir = empty / "runs" / "qs"
    out = subprocess.run([sys.executable, "-m", "smolmac.cli", "train", "quickstart-ci", "--run-dir", str(run_dir)],
                         cwd=empty, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return SimpleNamespace(dir=run_dir, cwd=empty, stdout=out.stdout, events=read_events(run_dir / "events.jsonl"),
                           model_path=run_dir / "4-orpo" / "model")


def test_recipes_validate():
    for name in ("quickstart.yaml", "quickstart-ci.yaml"):
        cfg = load_recipe(RECIPES / name)
        assert [s["method"] for s in cfg.stages] == ["tokenizer", "pretrain", "sft", "orpo"]


@pytest.mark.slow
def test_quickstart_every_stage_improves(quickstart):
    metrics = {e["name"]: e["metrics"] for e in quickstart.events if e["type"] == "metrics"}
    assert metrics["tokenizer"]["vocab_size"] == 416
    ppl = metrics["pretrain"]["val_ppl"]
    assert ppl["after"] < ppl["before"] / 20  # from ~vocab size (uniform) to a few
    em = metrics["sft"]["exact_match"]
    assert em["before"] == 0.0 and em["after"] >= 0.3  # held-out questions; chance is ~1/19
    orpo = metrics["orpo"]
    pref, margin, em2 = orpo["preference_accuracy"], orpo["preference_margin"], orpo["exact_match"]
    # Held-out pairs prefer the right answer by more (31 pairs: the accuracy is coarse, the mean
    # log-prob margin is not), and the answers get better.
    assert margin["after"] > margin["before"] and pref["after"] >= pref["before"] and em2["after"] > em2["before"]
    assert em2["before"] == em["after"]  # the same model, measured once
    final = quickstart.model_path
    assert final == quickstart.dir / "4-orpo" / "model" and (final / "model.safetensors").is_file()
    assert quickstart.events[-1]["type"] == "done" and quickstart.events[-1]["output"] == str(final)
    table = format_stage_table(quickstart.dir)
    assert "exact match 0% ->" in table and "val perplexity" in table and len(table.splitlines()) == 5
    # forgetting, measured: SFT and ORPO keep the pretraining validation text (the "kept" column)
    assert "kept (retain ppl)" in table.splitlines()[0]
    sft_events = [json.loads(x) for x in (quickstart.dir / "3-sft" / "events.jsonl").read_text().splitlines()]
    start, evals = sft_events[0], [e for e in sft_events if e["type"] == "eval"]
    assert start["type"] == "start" and start["retain_loss"] > 0 and start["retain_ppl"] > 1
    assert evals and all(e["retain_ppl"] > 1 for e in evals)
    assert metrics["sft"]["retain_ppl"] == {"before": start["retain_ppl"], "after": evals[-1]["retain_ppl"]}
    assert metrics["orpo"]["retain_ppl"]["before"] > 1 and "retain_ppl" not in metrics["pretrain"]
    for line in table.splitlines()[3:]:  # sft, orpo: before -> after (change)
        assert " -> " in line.rsplit("  ", 1)[1] and line.endswith("%)")
    # each stage is an ordinary run dir chained to the previous one
    sft_cfg = load_recipe(str(quickstart.dir / "3-sft" / "config.yaml"))
    assert sft_cfg.model == str(quickstart.dir / "2-pretrain" / "model")
    pre_cfg = load_recipe(str(quickstart.dir / "2-pretrain" / "config.yaml"))
    assert pre_cfg.tokenizer.path == str(quickstart.dir / "1-tokenizer" / "tokenizer")
    assert (quickstart.dir / "2-pretrain" / "tokens" / "train.bin").is_file()


@pytest.mark.slow
def test_train_quickstart_by_name_from_an_empty_folder(quickstart):
    for needle in ("1-tokenizer", "2-pretrain", "3-sft", "4-orpo", "what was learned", "exact match"):
        assert needle in quickstart.stdout, quickstart.stdout[-3000:]
    assert quickstart.events[-1]["type"] == "done" and not quickstart.events[-1]["stopped"]
    assert {p.name for p in quickstart.cwd.iterdir()} == {"runs"}  # nothing but the run was written here


@pytest.mark.slow
def test_resume_skips_finished_stages(quickstart):
    run = smolmac.train(run_dir=quickstart.dir, resume=True)
    statuses = [e["status"] for e in run.events[len(quickstart.events):] if e["type"] == "stage"]
    assert statuses == ["skipped"] * 4
    assert run.model_path == quickstart.model_path


def test_stopped_stage_resumes_and_lora_is_fused(tiny_model, chat_file, tmp_path):
    recipe = {
        "model": str(tiny_model),
        "data": {"train": str(chat_file)},
        "train": {"batch_size": 4, "lr": 5e-3, "report_every": 1},
        "stages": [
            {"name": "lora", "method": "sft", "lora": {"rank": 4}, "train": {"steps": 3}},
            {"name": "full", "method": "sft", "full": True, "train": {"steps": 6}, "save": {"every": 2}},
        ],
    }
    stop = threading.Event()

    def on_event(e):
        if e.get("stage") == 2 and e["type"] == "train" and e["step"] == 2:
            stop.set()

    run = smolmac.train(recipe, run_dir=tmp_path / "p", on_event=on_event, stop=stop)
    assert run.stopped and run.events[-1]["type"] == "done" and run.events[-1]["stopped"]
    fused = tmp_path / "p" / "1-lora" / "fused"
    assert (fused / "config.json").is_file()
    assert load_recipe(str(tmp_path / "p" / "2-full" / "config.yaml")).model == str(fused)

    run = smolmac.train(run_dir=tmp_path / "p", resume=True)
    assert not run.stopped
    stages = [(e["name"], e["status"]) for e in run.events if e["type"] == "stage"]
    assert stages[-3:] == [("lora", "skipped"), ("full", "started"), ("full", "finished")]
    sub = [json.loads(x) for x in (tmp_path / "p" / "2-full" / "events.jsonl").read_text().splitlines()]
    assert [e["resumed_from"] for e in sub if e["type"] == "start"] == [None, 2]
    assert run.model_path == tmp_path / "p" / "2-full" / "model"
    assert stage_rows(run.events)[0]["stage"] == "1-lora"

    # the fused model answers exactly like base + adapter
    from smolmac.generate import generate, load_for_generation

    a = generate(*load_for_generation(str(tiny_model), str(tmp_path / "p" / "1-lora" / "adapter")), "reverse: the cat", max_tokens=8)
    b = generate(*load_for_generation(str(fused)), "reverse: the cat", max_tokens=8)
    assert a == b


def test_bad_stage_and_rerun_are_user_errors(tiny_model, chat_file, tmp_path):
    with pytest.raises(UserError, match=r"stages\[1\]: each stage must be a mapping with at least 'method'"):
        smolmac.train({"model": str(tiny_model), "stages": [{"name": "x"}]}, run_dir=tmp_path / "a")
    recipe = {"model": str(tiny_model), "data": {"train": str(chat_file)}, "stages": [{"method": "sft", "train": {"steps": 1}}]}
    smolmac.train(recipe, run_dir=tmp_path / "b")
    with pytest.raises(UserError, match="already holds this run; pass --resume"):
        smolmac.train(recipe, run_dir=tmp_path / "b")


def test_lora_stage_on_a_4bit_base_fuses_into_a_float_model_the_next_stage_trains(tiny_model, chat_file, tmp_path):
    """The one fuse (smolmac.adapters.fuse, through the hf exporter) dequantises a QLoRA base, so
    the fused stage output is a float model that the next (full fine-tuning) stage can load."""
    from mlx_lm import convert

    from smolmac.generate import generate, load_for_generation

    qbase = tmp_path / "q4"
    convert(str(tiny_model), str(qbase), quantize=True, q_group_size=32, q_bits=4)
    recipe = {
        "model": str(qbase), "data": {"train": str(chat_file)},
        "train": {"batch_size": 4, "lr": 5e-3, "report_every": 1},
        "stages": [{"name": "qlora", "method": "sft", "lora": {"rank": 4}, "train": {"steps": 3}},
                   {"name": "full", "method": "sft", "full": True, "train": {"steps": 2}}],
    }
    run = smolmac.train(recipe, run_dir=tmp_path / "p")
    fused = tmp_path / "p" / "1-qlora" / "fused"
    assert "quantization" not in json.loads((fused / "config.json").read_text())
    assert run.model_path == tmp_path / "p" / "2-full" / "model" and not run.stopped
    # the fused float model answers like the 4-bit base + adapter it was made from
    a = generate(*load_for_generation(str(qbase), str(tmp_path / "p" / "1-qlora" / "adapter")), "reverse: the cat", max_tokens=8)
    b = generate(*load_for_generation(str(fused)), "reverse: the cat", max_tokens=8)
    assert a == b
