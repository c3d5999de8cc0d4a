"""The engine behind the app's workshop: pipelines in run listings (read_run, list_runs, `smolmac
runs`), the models of a run or pipeline, recipes by name from any folder, stage keys checked with
file and line, recipe differences, and `smolmac inspect` / `smolmac.inspect` (parameter counts
equal the model's, the trainable share equals the trainer's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import smolmac
from smolmac.cli import main
from smolmac.config import find_recipe, list_recipes, load_recipe, recipe_diff
from smolmac.errors import UserError
from smolmac.events import read_events
from smolmac.launcher import Launcher, list_runs
from smolmac.pipeline import headline, run_models
from smolmac.runs import read_run

T0 = 1_750_000_000.0


def write_events(d: Path, events: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with (d / "events.jsonl").open("a") as f:
        for e in events:
            f.write(json.dumps({"time": T0, "step": 0, **e}) + "\n")


def scripted_pipeline(root: Path, name: str = "pipe") -> Path:
    """A pipeline dir as the engine writes it, stopped in its second stage by a dead process."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"model": {"new": {"preset": "nano"}}, "method": "sft",
                                                   "stages": [{"name": "tok", "method": "tokenizer"}, {"method": "pretrain"}, {"method": "sft"}]}))
    write_events(d, [{"type": "start", "total_steps": 3, "method": "pipeline", "model": "{}", "stages": ["tok", "pretrain", "sft"]},
                     {"type": "stage", "stage": 1, "name": "tok", "method": "tokenizer", "dir": "elsewhere/pipe/1-tok", "status": "started"},
                     {"type": "metrics", "stage": 1, "name": "tok", "method": "tokenizer", "metrics": {"vocab_size": 300, "chars_per_token": 1.5}},
                     {"type": "stage", "stage": 1, "name": "tok", "method": "tokenizer", "dir": "elsewhere/pipe/1-tok", "status": "finished", "elapsed_s": 2.0},
                     {"type": "stage", "stage": 2, "name": "pretrain", "method": "pretrain", "dir": "elsewhere/pipe/2-pretrain", "status": "started"}])
    (d / "1-tok").mkdir()
    (d / "1-tok" / "config.yaml").write_text(yaml.safe_dump({"method": "tokenizer"}))
    write_events(d / "1-tok", [{"type": "start", "total_steps": 0, "method": "tokenizer"}, {"type": "done", "output": "x"}])
    (d / "2-pretrain").mkdir()
    (d / "2-pretrain" / "config.yaml").write_text(yaml.safe_dump({"method": "pretrain", "model": {"new": {"preset": "nano"}}}))
    write_events(d / "2-pretrain", [{"type": "start", "total_steps": 40, "method": "pretrain"},
                                    {"type": "train", "step": 10, "loss": 3.5}, {"type": "eval", "step": 10, "val_loss": 3.25, "val_ppl": 25.8}])
    return d


# ---------------------------------------------------------------------------------------------
# Pipelines in run listings


def test_read_run_summarises_a_running_pipeline_and_list_runs_fails_it_when_its_process_died(tmp_path):
    d = scripted_pipeline(tmp_path / "runs")
    info = read_run(d)
    assert (info["method"], info["status"], info["step"], info["total_steps"], info["current"]) == ("pipeline", "running", 1, 3, "2-pretrain")
    assert info["loss"] == 3.5  # the current stage's last loss
    stages = {s["label"]: s for s in info["stages"]}
    assert [s["status"] for s in info["stages"]] == ["finished", "running", "pending"]
    assert stages["2-pretrain"]["step"] == 10 and stages["2-pretrain"]["total_steps"] == 40
    assert headline(stages["1-tok"]) == "vocab 300" and headline(stages["2-pretrain"]) == "val loss 3.250"
    assert stages["3-sft"]["method"] == "sft" and stages["3-sft"]["dir"] == str(d / "3-sft")

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (d / "pid").write_text(str(proc.pid))  # the pipeline's process is gone without a final event
    (d / "train.log").write_text("Killed\n")
    [run] = list_runs(tmp_path / "runs", Launcher())
    assert run["status"] == "failed" and run["error"] == "Killed"
    assert [s["status"] for s in run["stages"]] == ["finished", "failed", "pending"]
    assert read_run(d)["stages"][1]["status"] == "running"  # the cached summary is not touched


@pytest.mark.slow
def test_a_finished_pipeline_is_listed_with_its_four_stages(tiny_pipeline, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # the table on one line per row
    info = read_run(tiny_pipeline)
    assert (info["method"], info["status"], info["step"], info["total_steps"]) == ("pipeline", "finished", 4, 4)
    assert [(s["label"], s["method"], s["status"]) for s in info["stages"]] == [
        ("1-tokenizer", "tokenizer", "finished"), ("2-pretrain", "pretrain", "finished"), ("3-sft", "sft", "finished"), ("4-orpo", "orpo", "finished")]
    assert [s["step"] for s in info["stages"][1:]] == [4, 3, 3] and all(s["loss"] is not None for s in info["stages"][1:])
    assert headline(info["stages"][1]).startswith("val perplexity") and headline(info["stages"][3]).startswith("preference accuracy")
    assert main(["runs", str(tiny_pipeline.parent)]) == 0
    out = capsys.readouterr().out
    for needle in ("pipeline", "new nano", "1-tokenizer", "2-pretrain", "3-sft", "4-orpo", "stage 4/4", "vocab 300", "val perplexity"):
        assert needle in out, out


@pytest.mark.slow
def test_run_models_lists_each_stage_once_and_finds_them_after_the_folder_moved(tiny_pipeline, tmp_path, monkeypatch):
    refs = run_models(tiny_pipeline)
    assert [(r.label, r.kind, r.chat, r.adapter is not None) for r in refs] == [
        ("2-pretrain · untrained", "init", False, False), ("2-pretrain", "trained", False, False),
        ("3-sft · adapter", "trained", True, True), ("4-orpo", "trained", True, False)]
    assert refs[2].model == refs[1].model  # the LoRA stage's base is the pretrained model
    # The stage configs record paths relative to where the pipeline ran; moved elsewhere, the
    # models are found inside the pipeline dir.
    moved = tmp_path / "moved" / "tiny"
    shutil.copytree(tiny_pipeline, moved)
    monkeypatch.chdir(tmp_path)
    for ref in run_models(moved):
        assert Path(ref.model).is_dir() and str(moved) in ref.model, ref
        assert ref.adapter is None or Path(ref.adapter).is_dir()


# ---------------------------------------------------------------------------------------------
# Recipes


def test_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # an empty folder: no ./recipes
    names = {r["name"]: r for r in list_recipes()}
    assert {"quickstart", "quickstart-ci", "sft-full-tiny"} <= set(names) and names["quickstart"]["pipeline"] and names["quickstart"]["shipped"]
    assert names["quickstart"]["about"].startswith("The offline quickstart")
    cfg = load_recipe("quickstart")
    assert cfg.name == "quickstart" and [s["method"] for s in cfg.stages] == ["tokenizer", "pretrain", "sft", "orpo"]
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("quickstart "))
    assert "pipeline" in line and "The offline quickstart" in line
    # A recipe of yours with the same name comes first; an unknown name lists what exists.
    Path("recipes").mkdir()
    Path("recipes", "quickstart.yaml").write_text("# mine\nmodel: x\n")
    assert find_recipe("quickstart") == Path("recipes/quickstart.yaml") and load_recipe("quickstart").model == "x"
    with pytest.raises(UserError, match=r"quikstart: recipe file not found; .*quickstart-ci.*`smolmac recipes`"):
        load_recipe("quikstart")


def test_stage_keys_are_checked_with_file_and_line(tmp_path):
    recipe = tmp_path / "p.yaml"
    recipe.write_text("model: m\nstages:\n  - method: sft\n    train: {steps: 3}\n  - method: orpo\n    train:\n      stpes: 3\n")
    with pytest.raises(UserError, match=r"p.yaml:7: unknown key 'stages\[2\].train.stpes' \(did you mean 'steps'\?\)"):
        load_recipe(recipe)
    recipe.write_text("model: m\nstages:\n  - method: sft\n  - {name: x}\n")
    with pytest.raises(UserError, match=r"p.yaml:4: stages\[2\]: each stage must be a mapping with at least 'method'"):
        load_recipe(recipe)
    with pytest.raises(UserError, match=r"<recipe>: unknown key 'stages\[1\].lora.rnk' \(did you mean 'rank'\?\)"):
        load_recipe({"model": "m", "stages": [{"method": "sft", "lora": {"rnk": 3}}]})


def test_recipe_diff_keeps_only_the_keys_that_differ():
    a = {"model": "m", "method": "sft", "train": {"lr": 1e-4, "steps": 10}, "lora": {"rank": 8}, "stages": []}
    b = {"model": "m", "method": "orpo", "train": {"lr": 3e-4, "steps": 10}, "lora": {"rank": 8}, "stages": [], "orpo": {"beta": 0.1}}
    assert recipe_diff([a, b]) == [("method", ["sft", "orpo"]), ("train.lr", [1e-4, 3e-4]), ("orpo.beta", [None, 0.1])]
    assert recipe_diff([a, a]) == []


# ---------------------------------------------------------------------------------------------
# Inspect


def test_inspect_a_model_from_the_cli_as_json_and_a_token_that_is_several(tiny_model, capsys):
    from mlx.utils import tree_flatten

    from smolmac.models import load_model

    assert main(["inspect", str(tiny_model), "--tokens", "the cat sat", "--neighbours", "the", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = load_model(str(tiny_model))[0]
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    anatomy = report["anatomy"]
    assert anatomy["total"] == total and sum(anatomy["parts"].values()) == total
    assert anatomy["layers"] == 2 and anatomy["hidden"] == 64 and anatomy["tied_embeddings"] and anatomy["parts"]["head"] == 0
    assert anatomy["parts"]["embedding"] == anatomy["vocab"] * anatomy["hidden"]
    assert anatomy["parts"]["attention"] == 2 * anatomy["per_block"]["attention"]
    assert report["training"] == []  # a base model: nothing trained here
    tokens = report["tokens"]
    assert "".join(tokens["texts"]) == "the cat sat" and tokens["count"] == len(tokens["ids"]) and tokens["chars_per_token"] == round(11 / tokens["count"], 3)
    [near] = report["neighbours"]
    assert near["token"].strip() == "the" and len(near["nearest"]) == 8
    assert all(-1 <= x["cosine"] <= 1 for x in near["nearest"]) and near["id"] not in [x["id"] for x in near["nearest"]]
    chat = report["tokenizer"]["chat_template"]
    trained = "".join(t for t, m in zip(chat["texts"], chat["trained"]) if m)
    assert "2 + 3 = 5" in trained and "4 + 4 = 8" in trained and "What is" not in trained
    code = main(["inspect", str(tiny_model), "--neighbours", "zebra-crossing!"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --neighbours: 'zebra-crossing!' is ") and "give one of them" in err


@pytest.mark.slow
def test_inspect_counts_equal_the_model_and_the_trainer(tiny_pipeline, tiny_model, chat_file, tmp_path):
    from mlx.utils import tree_flatten

    from smolmac.inspection import format_report
    from smolmac.models import load_model

    # A LoRA run: the trainable share is the trainer's trainable_params over the model's total.
    run = smolmac.train({"model": str(tiny_model), "data": {"train": str(chat_file)}, "lora": {"rank": 4, "targets": ["q_proj", "v_proj"]},
                         "train": {"steps": 2, "batch_size": 4}}, run_dir=tmp_path / "lora")
    report = smolmac.inspect(run.dir)
    total = sum(v.size for _, v in tree_flatten(load_model(str(tiny_model))[0].parameters()))
    [share] = report["training"]
    assert report["anatomy"]["total"] == total and report["models"] == ["base", "lora · adapter"]
    assert share["trainable"] == run.last("start")["trainable_params"] and share["share"] == share["trainable"] / total
    assert 0 < share["adapter_bytes"] < share["model_bytes"]

    # The pipeline: the last stage is inspected; every trained stage reports its share.
    report = smolmac.inspect(tiny_pipeline, tokens="What is 7 + 5?", neighbours="7")
    final = load_model(str(tiny_pipeline / "4-orpo" / "model"))[0]
    assert report["model"] == "4-orpo" and report["anatomy"]["total"] == sum(v.size for _, v in tree_flatten(final.parameters()))
    shares = {s["model"]: s for s in report["training"]}
    sft_start = read_events(tiny_pipeline / "3-sft" / "events.jsonl")[0]
    assert shares["3-sft · adapter"]["trainable"] == sft_start["trainable_params"]
    assert shares["2-pretrain"]["share"] == 1.0 and shares["4-orpo"]["share"] == 1.0
    near = {n["model"]: n for n in report["neighbours"]}
    assert near["3-sft · adapter"] == {"model": "3-sft · adapter", "same_as": "2-pretrain"}  # LoRA leaves the embedding
    assert near["2-pretrain · untrained"]["nearest"] != near["2-pretrain"]["nearest"]  # pretraining moved it
    text = format_report(report)
    assert "% trained" in text and "nearest to '7' in 2-pretrain" in text
