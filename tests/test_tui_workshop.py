"""The app's workshop: pipelines as first-class runs (the Runs tree, the pipeline dashboard, every
action on a stage), compare with recipe differences, New pipeline (the Stages tab), Look inside,
chat along a pipeline, keys that fit 80x24 in both languages, and the snapshots the README shows.

Scripted pipelines (event files as the engine writes them) drive the pure UI tests; the real
tiny pipeline of conftest.py (`tiny_pipeline`) drives the ones that load models.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_tui import (
    T0,
    FakeChat,
    FakeLauncher,
    _render,
    make_app,
    start_event,
    train_event,
    utc,  # noqa: F401  (fixture: the Started column in UTC)
    wait_for,
)

from smolmac.pipeline import stage_rows
from smolmac.tui.app import SmolmacApp

SIZE = (100, 32)
DATA = Path(__file__).parent / "data"

STAGES = [  # (name, method, recipe keys of the stage, metrics it learned, steps)
    ("tokenizer", "tokenizer", {}, {"vocab_size": 416, "chars_per_token": 1.97}, 0),
    ("pretrain", "pretrain", {"train": {"steps": 40, "lr": 3.0e-3}}, {"val_ppl": {"before": 460.1, "after": 2.17}, "mfu": 0.205, "exact_match": 0.0}, 40),
    ("sft", "sft", {"full": True, "train": {"steps": 20, "lr": 1.0e-3}}, {"exact_match": {"before": 0.0, "after": 0.45}}, 20),
    ("orpo", "orpo", {"full": True, "train": {"steps": 10, "lr": 3.0e-4}}, {"preference_accuracy": {"before": 0.71, "after": 0.87}, "exact_match": {"before": 0.45, "after": 0.84}}, 10),
]


def append(path: Path, events) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def fake_pipeline(root: Path, name: str, upto: int = 4, stopped: bool = False) -> Path:
    """A pipeline dir as the engine writes it: finished through stage `upto` (the next one
    running, or stopped when `stopped`), each stage an ordinary run dir with its own events."""
    d = root / name
    d.mkdir(parents=True)
    stages = [{"name": n, "method": m, **keys} for n, m, keys, _, _ in STAGES]
    (d / "config.yaml").write_text(yaml.safe_dump({"model": {"new": {"preset": "micro"}}, "method": "sft", "name": "quickstart", "stages": stages}))
    events = [{"type": "start", "step": 0, "total_steps": 4, "method": "pipeline", "model": '{"new": {"preset": "micro"}}', "stages": [s[0] for s in STAGES], "time": T0}]
    for i, (sname, method, keys, metrics, steps) in enumerate(STAGES, 1):
        if i > upto + 1:
            break
        sub = d / f"{i}-{sname}"
        sub.mkdir()
        model = {"new": {"preset": "micro"}} if i <= 2 else f"runs/{name}/{i - 1}-{STAGES[i - 2][0]}/model"
        (sub / "config.yaml").write_text(yaml.safe_dump({"model": model, "method": method, "name": sname, "train": {"batch_size": 16, **keys.get("train", {})}, "full": keys.get("full", False)}))
        t = T0 + 100 * i
        events.append({"type": "stage", "step": 0, "stage": i, "name": sname, "method": method, "dir": str(sub), "status": "started", "time": t})
        started_from = sub / "init" if i == 2 else d / f"{i - 1}-{STAGES[i - 2][0]}" / "model"
        sub_events = [{**start_event(total=steps), "method": method, "model": str(started_from), "time": t}]
        done_steps = steps if i <= upto else steps // 2
        sub_events += [{**train_event(s, total=steps), "loss": round(4.0 / (1 + s / 5) + i * 0.1, 4), "time": t + s} for s in range(2, done_steps + 1, 2)] if steps else []
        if i <= upto:
            sub_events.append({"type": "done", "step": steps, "output": str(sub / ("tokenizer" if method == "tokenizer" else "model")), "stopped": False, "time": t + 50})
            events.append({"type": "metrics", "step": 0, "stage": i, "name": sname, "method": method, "metrics": metrics, "elapsed_s": 10.0 * i, "time": t + 60,
                           "examples": [{"prompt": "What is 7 + 5?", "answer": "7 + 5 = 12" if i >= 3 else "", "expected": "7 + 5 = 12"}] if i >= 2 else []})
            events.append({"type": "stage", "step": 0, "stage": i, "name": sname, "method": method, "dir": str(sub), "status": "finished", "output": "x", "elapsed_s": 10.0 * i, "time": t + 60})
        elif stopped:
            sub_events.append({"type": "done", "step": done_steps, "output": str(sub / "checkpoints"), "stopped": True, "time": t + 50})
            events += [{"type": "stage", "step": 0, "stage": i, "name": sname, "method": method, "dir": str(sub), "status": "stopped", "time": t + 50},
                       {"type": "done", "step": i - 1, "output": str(sub), "stopped": True, "time": t + 50}]
        append(sub / "events.jsonl", sub_events)
    if upto >= 4:
        events.append({"type": "done", "step": 4, "output": str(d / "4-orpo" / "model"), "stopped": False, "time": T0 + 600})
    append(d / "events.jsonl", events)
    return d


def rows_text(screen) -> list[str]:
    table = screen.query_one("#runs")
    return [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


# ---------------------------------------------------------------------------------------------
# Runs: a pipeline is a row that expands into its stages; every action works on a stage


async def test_runs_show_a_pipeline_with_its_stages_and_every_action_works_on_a_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    fake_pipeline(root, "qs")
    fake_pipeline(root, "halfway", upto=2, stopped=True)
    launcher = FakeLauncher()
    app = make_app(tmp_path, launcher)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        rows = rows_text(screen)
        assert len(rows) == 2 + 4 + 4, rows  # two pipelines, each with its four stages
        qs = next(i for i, r in enumerate(rows) if "qs" in r and "pipeline" in r)
        assert "finished" in rows[qs] and "4/4" in rows[qs]
        stage_rows_ = rows[qs + 1:qs + 5]
        for row, (name, method, *_rest) in zip(stage_rows_, STAGES):
            assert f"-{name}" in row and method in row and "finished" in row, row
        assert "vocab 416" in stage_rows_[0] and "val perplexity 460 -> 2.17" in stage_rows_[1] and "exact match 0% -> 45%" in stage_rows_[2]
        assert "20/20" in stage_rows_[2] and "- " in stage_rows_[0]  # steps; a tokenizer has none
        half = next(i for i, r in enumerate(rows) if "halfway" in r)
        assert "stopped" in rows[half] and "3-sft" in rows[half]  # the pipeline row shows its current stage
        assert [("pending" in r) for r in rows[half + 1:half + 5]] == [False, False, False, True]

        # x folds a pipeline into one row and back.
        table = screen.query_one("#runs")
        table.move_cursor(row=qs)
        await pilot.press("x")
        assert len(rows_text(screen)) == 6
        await pilot.press("x")
        assert len(rows_text(screen)) == 10

        # enter: the pipeline's dashboard; on a stage, that stage's own dashboard.
        table.move_cursor(row=qs)
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PipelineScreen")
        await pilot.press("escape")
        table.move_cursor(row=qs + 3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "DashboardScreen")
        dash = app.screen
        assert dash.run_dir == root / "qs" / "3-sft" and dash.process_dir == root / "qs"
        await wait_for(pilot, lambda: dash.view.step == 20)
        await pilot.press("escape")

        # Compare two stages: their curves on one chart, their recipes' differences.
        table.move_cursor(row=qs + 2)
        await pilot.press("space")
        table.move_cursor(row=qs + 3)
        await pilot.press("space", "c")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen")
        compare = app.screen
        assert set(compare.query_one("#compare-chart").series) == {"qs/2-pretrain", "qs/3-sft"}
        diff = dict(compare.diff)
        assert diff["method"] == ["pretrain", "sft"] and diff["train.lr"] == [3.0e-3, 1.0e-3] and diff["full"] == [False, True]
        assert "batch_size" not in str(diff) and "Recipe differences" in _render(app)
        await pilot.press("escape")

        # Export a stage; resume a stage (its pipeline resumes); delete a whole pipeline after asking.
        await pilot.press("e")
        await pilot.pause()
        assert type(app.screen).__name__ == "ExportScreen" and app.screen.query_one("#export-run").value == str(root / "qs" / "3-sft")
        assert app.screen.query_one("#export-out").value == str(Path("exports") / "qs-3-sft-peft")
        assert str(root / "qs" / "4-orpo") in [v for _, v in app.screen.query_one("#export-run")._options]  # every stage offered
        await pilot.press("escape")
        table.move_cursor(row=half + 3)
        await pilot.press("r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PipelineScreen")
        assert ("resume", "halfway") in launcher.calls
        await pilot.press("escape")
        table.move_cursor(row=[i for i, r in enumerate(rows_text(screen)) if "qs" in r and "pipeline" in r][0] + 2)
        await pilot.press("d")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog" and "all its 4 stages" in app.screen.question
        await pilot.press("n")
        assert (root / "qs").exists()
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: not (root / "qs").exists() and len(rows_text(screen)) == 5)


# ---------------------------------------------------------------------------------------------
# The pipeline dashboard


async def test_pipeline_dashboard_shows_the_stage_table_and_follows_the_running_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = fake_pipeline(Path("runs"), "live", upto=1)  # tokenizer done, pretrain running
    launcher = FakeLauncher()
    launcher.alive_dirs["live"] = True
    app = make_app(tmp_path, launcher)
    async with app.run_test(size=SIZE) as pilot:
        from smolmac.tui.screens.pipeline import PipelineScreen

        await app.push_screen(PipelineScreen(d))
        await pilot.pause()
        screen = app.screen
        chart = screen.query_one("#pipe-chart")
        assert screen.followed == "2-pretrain"
        await wait_for(pilot, lambda: chart.point_count() == 10)  # steps 2..20 of the running stage
        assert "Stop" in _render(app) and "Resume" not in _render(app).splitlines()[-1]
        await pilot.press("s")
        assert ("stop", "live") in launcher.calls

        # The stage finishes, the next starts: the table and the chart move on with it.
        append(d / "2-pretrain" / "events.jsonl", [{**train_event(s, 40), "time": T0 + s} for s in range(22, 41, 2)] + [{"type": "done", "step": 40, "output": "m", "time": T0 + 300}])
        append(d / "events.jsonl", [{"type": "metrics", "step": 0, "stage": 2, "name": "pretrain", "method": "pretrain", "metrics": STAGES[1][3], "elapsed_s": 20.0, "time": T0 + 300,
                                     "examples": [{"prompt": "What is 7 + 5?", "answer": "7 + 7", "expected": "7 + 5 = 12"}]},
                                    {"type": "stage", "step": 0, "stage": 2, "name": "pretrain", "method": "pretrain", "dir": "x", "status": "finished", "elapsed_s": 20.0, "time": T0 + 300},
                                    {"type": "stage", "step": 0, "stage": 3, "name": "sft", "method": "sft", "dir": "x", "status": "started", "time": T0 + 301}])
        (d / "3-sft").mkdir()
        (d / "3-sft" / "config.yaml").write_text(yaml.safe_dump({"method": "sft", "model": "runs/live/2-pretrain/model", "full": True}))
        append(d / "3-sft" / "events.jsonl", [{**start_event(total=20), "time": T0 + 302}, {**train_event(2, 20), "time": T0 + 303}])
        await wait_for(pilot, lambda: screen.followed == "3-sft" and chart.point_count() == 1)
        table = screen.query_one("#pipe-stages")
        learned = [str(table.get_row_at(i)[-1]) for i in range(table.row_count)]
        from smolmac.events import read_events

        assert learned[:2] == [r["learned"] for r in stage_rows(read_events(d / "events.jsonl"))][:2]  # the CLI's closing table
        assert learned[1] == "val perplexity 460 -> 2.17, mfu 0.205, exact match 0%"

        # The cursor on a finished stage: its curve and its answers; enter opens its dashboard.
        table.move_cursor(row=1)
        await wait_for(pilot, lambda: screen.followed == "2-pretrain" and chart.point_count() == 20)
        assert "What is 7 + 5? → '7 + 7'" in _render(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "DashboardScreen")
        assert app.screen.run_dir == d / "2-pretrain"


async def test_pipeline_dashboard_shows_the_kept_column_once_a_stage_measured_it(tmp_path, monkeypatch):
    """The CLI table's "kept" column (retain perplexity before -> after, eval.retain) in the app:
    absent while no stage measured it (see the snapshot), then one cell per stage."""
    from smolmac.events import read_events

    monkeypatch.chdir(tmp_path)
    d = fake_pipeline(Path("runs"), "kept", upto=4)
    events = read_events(d / "events.jsonl")
    kept = {"sft": {"before": 2.57, "after": 13.8}, "orpo": {"before": 13.8, "after": 14.1}}
    for e in events:  # as the engine writes them: sft and orpo measured the retain set
        if e["type"] == "metrics" and e["method"] in kept:
            e["metrics"] = {**e["metrics"], "retain_ppl": kept[e["method"]]}
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    app = make_app(tmp_path, FakeLauncher())
    async with app.run_test(size=SIZE) as pilot:
        from smolmac.tui.screens.pipeline import PipelineScreen

        await app.push_screen(PipelineScreen(d))
        table = app.screen.query_one("#pipe-stages")
        await wait_for(pilot, lambda: table.row_count == 4 and len(table.columns) == 7)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(4)]
        cli = stage_rows(read_events(d / "events.jsonl"))
        assert [r[-1] for r in rows] == [r["kept"] or "-" for r in cli] == ["-", "-", "2.57 -> 13.8 (+437%)", "13.8 -> 14.1 (+2%)"]
        assert [r[-2] for r in rows] == [r["learned"] for r in cli] and "retain" not in rows[2][-2]
        assert str(list(table.columns.values())[-1].label) == "Kept (retain ppl)"


# ---------------------------------------------------------------------------------------------
# New pipeline from the app


async def test_new_pipeline_stages_are_added_moved_checked_saved_and_started(tmp_path, monkeypatch, tiny_model, chat_file):
    monkeypatch.chdir(tmp_path)
    launcher = FakeLauncher()
    app = make_app(tmp_path, launcher)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        form = app.screen
        options = [label for label, _ in form.query_one("#recipe")._options]
        assert "quickstart · pipeline" in options and "sft-full-tiny" in options  # shipped recipes, from any folder

        # A shipped pipeline recipe fills the Stages tab.
        form.query_one("#recipe").value = next(v for label, v in form.query_one("#recipe")._options if label == "quickstart · pipeline")
        editor = form.query_one("#stages")
        await wait_for(pilot, lambda: [s["method"] for s in editor.stages] == ["tokenizer", "pretrain", "sft", "orpo"])
        await wait_for(pilot, lambda: "pipeline of 4 stages" in str(form.query_one("#problem").render()))

        # From scratch: two stages on a model, edited, reordered, checked.
        form.query_one("#recipe").value = ""
        await wait_for(pilot, lambda: editor.stages == [])
        form.query_one("#f-model").value = str(tiny_model)
        form.query_one("#f-data-train").value = str(chat_file)
        await pilot.press("ctrl+t")
        form.query_one("#stage-table").focus()
        await pilot.press("a", "a")  # sft, then orpo after it
        assert [s["method"] for s in editor.stages] == ["sft", "orpo"]
        keys = form.query_one("#stage-keys")
        keys.value = "{train: {stpes: 5}}"  # a typo: the stage's key is named inline
        await wait_for(pilot, lambda: "stages[2]" in str(form.query_one("#stage-problem").render()))
        assert "unknown key 'stages[2].train.stpes'" in str(form.query_one("#stage-problem").render())
        await wait_for(pilot, lambda: "✗" in str(form.query_one("#problem").render()))
        keys.value = "{train: {steps: 5}, orpo: {beta: 0.2}}"
        await wait_for(pilot, lambda: "2 stages, each checked" in str(form.query_one("#stage-problem").render()))
        form.query_one("#stage-name").value = "align"
        form.query_one("#stage-table").focus()
        await pilot.press("shift+up")  # orpo first, then back
        assert [s.get("name") for s in editor.stages] == ["align", "sft"]
        await pilot.press("shift+down", "a")
        assert [s["method"] for s in editor.stages] == ["sft", "orpo", "sft"]  # after an orpo stage: sft
        await pilot.press("x")
        assert [s.get("name") for s in editor.stages] == ["sft", "align"]

        # Ctrl+S saves the pipeline as YAML that loads back to the same stages.
        await pilot.press("ctrl+s")
        await pilot.pause()
        app.screen.query_one("Input").value = str(tmp_path / "mine.yaml")
        await pilot.press("enter")
        await pilot.pause()
        from smolmac.config import load_recipe

        saved = load_recipe(tmp_path / "mine.yaml")
        assert [(s.get("name"), s["method"]) for s in saved.stages] == [("sft", "sft"), ("align", "orpo")]
        assert saved.stages[1]["orpo"] == {"beta": 0.2} and saved.stages[1]["train"] == {"steps": 5}

        # Ctrl+R starts it: a pipeline opens on its stages' dashboard.
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PipelineScreen")
        (kind, recipe, run_dir), = launcher.calls
        assert kind == "start" and [s["method"] for s in load_recipe(recipe).stages] == ["sft", "orpo"] and app.screen.run_dir == run_dir


# ---------------------------------------------------------------------------------------------
# Look inside (a real tiny pipeline)


@pytest.mark.slow
async def test_look_inside_a_pipeline_tokens_anatomy_embeddings(tiny_pipeline, tmp_path):
    from mlx.utils import tree_flatten

    from smolmac.models import load_model

    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        from smolmac.tui.screens.inspect import InspectScreen

        await app.push_screen(InspectScreen(tiny_pipeline, model="3-sft"))
        screen = app.screen
        await wait_for(pilot, lambda: screen.data is not None)
        assert screen.data["ref"].label == "3-sft · adapter"
        assert [label for label, value in screen.query_one("#inspect-model")._options if isinstance(value, str)] == ["2-pretrain · untrained", "2-pretrain", "3-sft · adapter", "4-orpo"]
        screen.query_one("#inspect-text").value = "What is 7 + 5?"
        await wait_for(pilot, lambda: "chars" in _render(app) or "characters per token" in _render(app))
        tokens = str(screen.query_one("#inspect-tokens").render())
        assert "characters per token" in tokens and "tokens" in tokens
        assert "trained" in str(screen.query_one("#inspect-chat").render())

        await pilot.press("ctrl+t")
        await pilot.pause()
        pretrained = load_model(str(tiny_pipeline / "2-pretrain" / "model"))[0]
        total = sum(v.size for _, v in tree_flatten(pretrained.parameters()))
        assert screen.data["anatomy"]["total"] == total and f"{total:,}" in _render(app)
        sft = next(s for s in screen.data["training"] if s["model"] == "3-sft · adapter")
        assert f"({sft['share']:.1%} of the model)" in _render(app) and "adapter" in _render(app)

        await pilot.press("ctrl+t")
        screen.query_one("#inspect-token").value = "7"
        screen.query_one("#inspect-token").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: "nearest tokens to" in _render(app))
        shown = _render(app)
        assert "2-pretrain · untrained" in shown and "4-orpo" in shown and "LoRA stages share" in shown


# ---------------------------------------------------------------------------------------------
# 80x24: every screen's keys are in its footer or (all of them) in the F1 panel, in both languages

FOOTER_CHECK = r"""
import asyncio, json, sys, time
sys.path.insert(0, {tests!r})
from test_tui import FakeChat, FakeLauncher
from textual.widgets._footer import FooterKey
from smolmac.tui.app import SmolmacApp

async def main():
    launcher = FakeLauncher()
    launcher.alive_dirs["live"] = True
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=launcher, chat_backend=FakeChat(), memory_gb=16, list_models=lambda: [])
    out = {{}}
    async with app.run_test(size=(80, 24)) as pilot:
        async def check(name):
            deadline = time.monotonic() + 60  # the footer is composed after the screen: poll
            while time.monotonic() < deadline:
                await pilot.pause(0.2)
                keys = list(app.screen.query(FooterKey))
                if keys and all(k.region.width > 0 for k in keys):
                    break
            cut = [f"{{k.key}} {{k.description}}" for k in keys if k.region.right > 80 or k.region.width == 0]
            shown = {{k.action for k in keys}}
            bindings = {{b.action for _, b, *_ in app.screen.active_bindings.values() if not b.system}}
            await pilot.press("f1")
            deadline = time.monotonic() + 60
            while not app.screen.query("KeyPanel") and time.monotonic() < deadline:
                await pilot.pause(0.1)
            panel = len(app.screen.query("KeyPanel")) > 0
            await pilot.press("f1")
            out[name] = {{"cut": cut, "shown": sorted(shown), "panel": bool(panel), "bindings": sorted(bindings)}}
        await check("runs")
        runs = app.screen  # the worst case: a stopped pipeline offers resume and delete too
        runs.query_one("#runs").move_cursor(row=[r.dir for r in runs.rows].index("runs/halfway"))
        await check("runs-stopped")
        from smolmac.tui.screens.pipeline import PipelineScreen
        from smolmac.tui.screens.dashboard import DashboardScreen
        from smolmac.tui.screens.compare import CompareScreen
        from smolmac.tui.screens.inspect import InspectScreen
        from smolmac.tui.screens.export import ExportScreen
        from smolmac.tui.screens.chat import ChatScreen
        from smolmac.tui.screens.new_run import NewRunScreen
        for name, make in [("pipeline-live", lambda: PipelineScreen("runs/live")), ("pipeline-stopped", lambda: PipelineScreen("runs/halfway")),
                           ("dashboard", lambda: DashboardScreen("runs/live/2-pretrain", pipeline_dir="runs/live")),
                           ("compare", lambda: CompareScreen(["runs/halfway/2-pretrain", "runs/halfway/1-tokenizer"])),
                           ("inspect", lambda: InspectScreen(None)), ("export", lambda: ExportScreen(None)), ("chat", lambda: ChatScreen())]:
            await app.push_screen(make())
            await check(name)
            app.pop_screen()
        await app.push_screen(NewRunScreen())
        for tab in ("setup", "stages", "data", "settings"):
            app.screen.query_one("TabbedContent").active = "tab-" + tab
            if tab == "stages":
                app.screen.query_one("#stage-table").focus()
            await check("new-" + tab)
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("language", ["en", "it"])
def test_every_screen_keeps_its_keys_visible_at_80x24(tmp_path, language):
    root = tmp_path / "runs"
    fake_pipeline(root, "live", upto=1)
    fake_pipeline(root, "halfway", upto=2, stopped=True)
    script = FOOTER_CHECK.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "SMOLMAC_LANG": language}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result) == 13 and set(result["runs-stopped"]["shown"]) >= {"resume", "delete"}
    for name, r in result.items():
        assert r["cut"] == [], f"{language} {name}: keys cut off in the footer: {r['cut']}"
        assert r["panel"], f"{language} {name}: F1 shows no key panel"
        assert r["shown"], f"{language} {name}: no keys in the footer"


# ---------------------------------------------------------------------------------------------
# Chat along a pipeline


def model_files(d: Path) -> None:
    """The outputs a pipeline's stages leave (only the files run_models looks for): the built
    untrained model, the pretrained model, an SFT adapter (LoRA), the aligned model."""
    for folder, name in (("2-pretrain/init", "config.json"), ("2-pretrain/model", "config.json"), ("3-sft/adapter", "adapter_config.json"), ("4-orpo/model", "config.json")):
        (d / folder).mkdir(parents=True, exist_ok=True)
        (d / folder / name).write_text("{}")


async def test_chat_along_a_pipeline_picks_its_models_and_prompts_pretrained_ones_as_plain_text(tmp_path, monkeypatch):
    from test_chat_adapters import replies, send

    from smolmac.tui.screens.chat import Transcript, open_chat

    monkeypatch.chdir(tmp_path)
    d = fake_pipeline(tmp_path / "runs", "qs")
    model_files(d)
    chat = FakeChat()
    app = make_app(tmp_path, chat=chat)
    async with app.run_test(size=SIZE) as pilot:
        open_chat(app, d)
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ChatScreen" and app.screen.query("Checkbox"))
        screen = app.screen
        assert [str(c.label) for c in screen.query("Checkbox")] == ["untrained", "2-pretrain", "3-sft", "4-orpo"]
        assert [c.value for c in screen.query("Checkbox")] == [False, True, True, True]  # the last three
        panes = [(p.side, p.border_title) for p in screen.query(Transcript) if p.display]
        assert panes == [("base", "2-pretrain · plain text"), ("adapter", "3-sft · adapter"), ("adapter-2", "4-orpo")]
        await send(pilot, screen, "What is 2 + 3?")
        got = replies(screen)
        assert got == {"base": "base says: What is 2 + 3? (turn 1) ", "adapter": "3-sft says: What is 2 + 3? (turn 1) ", "adapter-2": "4-orpo says: What is 2 + 3? (turn 1) "}
        assert chat.loads == [str(d / "2-pretrain" / "model")] and chat.plain == ["base"]  # the LoRA stage's base, loaded once
        assert ("3-sft", str(d / "3-sft" / "adapter")) in chat.attached and ("4-orpo", str(d / "4-orpo" / "model")) in chat.attached

        # Pick the untrained model instead of the aligned one: a model of its own, plain text too.
        await pilot.click("#pick-3")
        await pilot.click("#pick-0")
        await wait_for(pilot, lambda: [p.border_title for p in screen.query(Transcript) if p.display] == [
            "2-pretrain · untrained · plain text", "2-pretrain · plain text", "3-sft · adapter"])
        screen.query_one("#chat-prompt").focus()  # enter on a checkbox would toggle it
        await send(pilot, screen, "1 + 1 =")
        assert set(chat.plain[1:]) == {"untrained", "2-pretrain"} and len(replies(screen)) == 3

        # A stage's chat opens on that stage and the model it started from.
        app.pop_screen()
        open_chat(app, d, stage="4-orpo")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ChatScreen" and app.screen is not screen)
        await pilot.pause()
        assert [c.value for c in app.screen.query("Checkbox")] == [False, False, True, True]


@pytest.mark.slow
async def test_chat_sends_one_prompt_to_three_stages_of_a_real_pipeline(tiny_pipeline, tmp_path):
    """The real MLX backend: the pretrained model, the SFT adapter on it, the aligned model."""
    from test_chat_adapters import send

    from smolmac.tui.screens.chat import Transcript, open_chat

    app = SmolmacApp(runs_dir=tmp_path / "runs", recipes_dir=tmp_path, launcher=FakeLauncher(), memory_gb=16, list_models=lambda: [])
    async with app.run_test(size=SIZE) as pilot:
        open_chat(app, tiny_pipeline)
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ChatScreen" and app.screen.query("#chat-max"))
        screen = app.screen
        screen.query_one("#chat-max").value = "8"
        await send(pilot, screen, "What is 2 + 3?")
        shown = [p for p in screen.query(Transcript) if p.display]
        assert [p.border_title for p in shown] == ["2-pretrain · plain text", "3-sft · adapter", "4-orpo"]
        for pane in shown:
            reply = pane.messages[-1]
            assert reply["role"] == "assistant" and "✗" not in pane.query("Static").last().render().plain, pane.border_title
        assert "✗" not in _render(app)


# ---------------------------------------------------------------------------------------------
# Snapshots of a real quickstart run (the README's screenshots)
#
# tests/data/quickstart holds a finished `smolmac train quickstart` run's event files and the
# replies its models gave to one prompt, recorded by scripts/record_app_demo.py with the chat's
# own backend; the chat snapshot replays those replies (no model weights in the repository).


class RecordedChat(FakeChat):
    """Streams the replies the quickstart's models really gave, word by word (and their sizes)."""

    def __init__(self, replies: dict, mb: dict):
        super().__init__()
        self.replies, self.mb = replies, mb

    def inspect(self, handle):  # the quickstart's stages are full models: no base is loaded
        return {"base_mb": 0.0, "adapters": {n: self.mb[n] for n in handle["adapters"]}}

    def stream(self, handle, messages, adapter=None, max_tokens=256, temp=0.0, top_p=1.0, chat=None):
        yield from re.findall(r"\s*\S+|\s+", self.replies[adapter or "base"])


def quickstart_run(tmp_path, monkeypatch) -> Path:
    """The recorded quickstart as runs/quickstart, with marker files for its models."""
    monkeypatch.chdir(tmp_path)
    run = Path("runs") / "quickstart"
    shutil.copytree(DATA / "quickstart", run, ignore=shutil.ignore_patterns("replies.json"))
    for folder in ("2-pretrain/init", "2-pretrain/model", "3-sft/model", "4-orpo/model"):
        (run / folder).mkdir(parents=True)
        (run / folder / "config.json").write_text("{}")
    return run


@pytest.mark.usefixtures("utc")
def test_snapshot_runs_with_a_pipeline(snap_compare, tmp_path, monkeypatch):
    quickstart_run(tmp_path, monkeypatch)
    fake_pipeline(Path("runs"), "halfway", upto=2, stopped=True)
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=FakeLauncher(), chat_backend=FakeChat(), memory_gb=16, list_models=lambda: [])
    assert snap_compare(app, terminal_size=SIZE)


def test_snapshot_pipeline_dashboard(snap_compare, tmp_path, monkeypatch):
    run = quickstart_run(tmp_path, monkeypatch)
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=FakeLauncher(), chat_backend=FakeChat(), memory_gb=16, list_models=lambda: [])

    async def open_pipeline(pilot):
        from smolmac.tui.screens.pipeline import PipelineScreen

        await pilot.app.push_screen(PipelineScreen(run))
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#pipe-chart").point_count() > 0)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_pipeline)


def test_snapshot_chat_along_the_pipeline(snap_compare, tmp_path, monkeypatch):
    run = quickstart_run(tmp_path, monkeypatch)
    recorded = json.loads((DATA / "quickstart" / "replies.json").read_text())
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=FakeLauncher(), chat_backend=RecordedChat(recorded["replies"], recorded["mb"]),
                     memory_gb=16, list_models=lambda: [])

    async def ask(pilot):
        from smolmac.tui.screens.chat import open_chat

        open_chat(pilot.app, run)
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "ChatScreen" and pilot.app.screen.query("Checkbox"))
        screen = pilot.app.screen
        screen.query_one("#chat-prompt").value = recorded["prompt"]
        screen.query_one("#chat-prompt").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.pending == 0 and all(p.messages for p in screen.query("Transcript") if p.display))
        screen.query_one("#chat-prompt").cursor_blink = False  # the same picture every time
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=ask)


def test_readme_screenshots_are_the_snapshots():
    """docs/ holds the two snapshots above as the README shows them (copy them after
    `pytest tests/test_tui_workshop.py -k snapshot --snapshot-update`)."""
    snapshots = Path(__file__).parent / "__snapshots__" / "test_tui_workshop"
    docs = Path(__file__).parents[1] / "docs"
    for test, doc in (("test_snapshot_pipeline_dashboard", "app-pipeline.svg"), ("test_snapshot_chat_along_the_pipeline", "app-chat.svg")):
        assert (docs / doc).read_bytes() == (snapshots / f"{test}.svg").read_bytes(), f"docs/{doc} differs from the {test} snapshot: copy it"
        assert f"docs/{doc}" in (Path(__file__).parents[1] / "README.md").read_text()
