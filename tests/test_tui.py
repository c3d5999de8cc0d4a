"""The Textual app: each screen through App.run_test + Pilot with a scripted event stream (a fake
run dir the test appends to), snapshots of the main screens, and one end-to-end run that starts
a real `smolmac train` child from the New run screen and watches it finish on the dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import hold_lock

import smolmac
from smolmac.events import EventTail
from smolmac.launcher import Launcher, list_runs
from smolmac.tui import i18n
from smolmac.tui.app import SmolmacApp
from smolmac.tui.view import RunView, group_label

SIZE = (100, 32)
T0 = 1_750_000_000.0  # fixed event times: deterministic "Started" column


# ---------------------------------------------------------------------------------------------
# Fakes: a scripted run dir and a launcher that starts nothing


def start_event(total=100, step=0, resumed=None):
    return {"type": "start", "step": step, "total_steps": total, "method": "sft", "model": "org/tiny-chat", "trainable_params": 12_288,
            "total_params": 120_000, "train_rows": 48, "valid_rows": 4, "truncated_rows": 0, "resumed_from": resumed, "time": T0}


def train_event(step, total=100):
    return {"type": "train", "step": step, "loss": round(3.0 / (1 + step / 20), 4), "lr": 1e-4, "tokens_per_second": 1234.5,
            "trained_tokens": step * 300, "peak_memory_gb": 0.42, "elapsed_s": step * 0.5, "eta_s": (total - step) * 0.5, "time": T0 + step}


def fake_run(root: Path, name: str, events=(), model="org/tiny-chat", method="sft") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"model": model, "method": method, "train": {"steps": 100}}))
    append(d, events)
    return d


def append(run_dir: Path, events) -> None:
    with (run_dir / "events.jsonl").open("a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


class FakeLauncher:
    """Records what the app asks; `alive` says which run dirs have a live process."""

    def __init__(self):
        self.alive_dirs: dict[str, bool] = {}
        self.calls: list[tuple] = []

    def alive(self, run_dir):
        return self.alive_dirs.get(Path(run_dir).name)

    def start(self, recipe, run_dir):
        self.calls.append(("start", Path(recipe), Path(run_dir)))
        self.alive_dirs[Path(run_dir).name] = True
        return 1

    def resume(self, run_dir):
        self.calls.append(("resume", Path(run_dir).name))
        return 1

    def stop(self, run_dir):
        self.calls.append(("stop", Path(run_dir).name))
        return bool(self.alive_dirs.get(Path(run_dir).name))


class FakeChat:
    """Echo backend (the MLXChatBackend interface) that records the thread of every call (they
    must all be the worker's): each reply names the adapter that gave it."""

    def __init__(self):
        self.threads: set[int] = set()
        self.loads: list[str] = []
        self.attached: list[tuple] = []
        self.plain: list[str] = []

    def load(self, model, adapters):
        self.threads.add(threading.get_ident())
        self.loads.append(model)
        return {"model": model, "adapters": {}}

    def attach(self, handle, name, path):
        self.threads.add(threading.get_ident())
        if "broken" in path:
            raise smolmac.UserError(f"adapter '{name}' ({path}): 'model.layers.0.self_attn.q_proj.lora_a' has shape (32, 4), the model needs (64, 4).")
        self.attached.append((name, path))
        handle["adapters"][name] = path

    def detach(self, handle, name):
        del handle["adapters"][name]

    def inspect(self, handle):
        return {"base_mb": 12.5, "adapters": {name: 0.25 for name in handle["adapters"]}}

    def stream(self, handle, messages, adapter=None, max_tokens=256, temp=0.0, top_p=1.0, chat=None):
        self.threads.add(threading.get_ident())
        if chat is False:  # a column without the chat template (a pretrained-only model)
            self.plain.append(adapter or "base")
        assert adapter is None or adapter in handle["adapters"]
        for word in [adapter or "base", "says:", messages[-1]["content"], f"(turn {len(messages) // 2 + 1})"]:
            yield word + " "


def make_app(tmp_path, launcher=None, chat=None, **kw) -> SmolmacApp:
    return SmolmacApp(runs_dir=tmp_path / "runs", recipes_dir=tmp_path / "recipes", launcher=launcher or FakeLauncher(),
                      chat_backend=chat or FakeChat(), memory_gb=kw.pop("memory_gb", 16.0), list_models=kw.pop("list_models", lambda: ["org/tiny-chat"]), **kw)


def poll_until(condition, seen, timeout=60.0):
    """Wait (without a UI) until `condition()` holds; after `timeout` s fail with `seen()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s; saw: {seen()}"
        time.sleep(0.05)


async def wait_for(pilot, condition, timeout=60.0, step=0.05):
    """Pause the pilot until `condition()` holds; after `timeout` seconds (generous: CI machines are
    busy) fail with what the screen shows."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; the screen shows:\n{_render(pilot.app)}")
        await pilot.pause(step)


def _render(app) -> str:
    """Plain text of everything on screen (what the user sees)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips(app.size))


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_i18n_detects_language_and_covers_every_string():
    assert i18n.detect_language({"LANG": "it_IT.UTF-8"}) == "it"
    assert i18n.detect_language({"LANG": "en_US.UTF-8"}) == "en"
    assert i18n.detect_language({"SMOLMAC_LANG": "en", "LANG": "it_IT.UTF-8"}) == "en"
    assert i18n.detect_language({"SMOLMAC_LANG": "it", "LANG": "C.UTF-8"}) == "it"
    assert i18n.detect_language({"LC_ALL": "it_CH", "LANG": "en_US"}) == "it"
    assert i18n.detect_language({}) == "en"
    table = json.loads((i18n.LOCALES / "it.json").read_text(encoding="utf-8"))
    from smolmac import launcher, memory
    from smolmac.tui import view
    from smolmac.tui.screens import chat, export, inspect, new_run

    used = {launcher.CRASHED, *memory.PARTS, *memory.SUGGESTIONS, *view.STATUS_STYLE, *chat.MODES, *new_run.LABELS.values(), *inspect.PART_NAMES.values()}
    used |= {label for _, label in export.FORMATS}
    for path in Path(i18n.__file__).parent.rglob("*.py"):  # every literal t("...") / t('...')
        used |= {m[1] for m in re.findall(r"""\bt\((["'])((?:(?!\1).)*)\1""", path.read_text(encoding="utf-8"))}
    missing = sorted(used - set(table))
    assert not missing, f"strings without an Italian translation: {missing}"
    for en, it in table.items():  # placeholders must survive translation
        assert set(re.findall(r"{(\w+)", en)) == set(re.findall(r"{(\w+)", it)), en
    try:
        i18n.set_language("it")
        assert i18n.t("Runs in {folder}", folder="runs") == "Esecuzioni in runs"
    finally:
        i18n.set_language("en")
    assert i18n.t("Runs in {folder}", folder="runs") == "Runs in runs"


def test_event_tail_reads_only_complete_lines_and_run_view_folds_a_resume(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.poll() == []
    path.write_text(json.dumps(start_event(total=20)) + "\n" + json.dumps(train_event(5))[:20])
    assert [e["type"] for e in tail.poll()] == ["start"]  # the half-written line waits
    with path.open("a") as f:
        f.write(json.dumps(train_event(5))[20:] + "\n" + json.dumps(train_event(10)) + "\n")
    events = tail.poll()
    assert [e["step"] for e in events] == [5, 10]
    view = RunView()
    for e in [start_event(20), *events, {"type": "done", "step": 10, "output": "ckpt", "stopped": True}]:
        view.add(e)
    assert view.status == "stopped" and view.train == [(5, train_event(5)["loss"]), (10, train_event(10)["loss"])]
    view.add(start_event(20, step=5, resumed=5))  # resumed from a checkpoint at step 5
    assert view.status == "running" and [s for s, _ in view.train] == [5] and view.done is None
    assert "resumed at step 5" in (view.add(start_event(20, step=5, resumed=5)) or "")


def test_a_run_whose_process_died_is_failed_with_its_last_output(tmp_path):
    root = tmp_path / "runs"
    d = fake_run(root, "oom", [start_event(), train_event(10)])
    (d / "train.log").write_text("loading\nKilled: out of memory\n\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (d / "pid").write_text(str(proc.pid))  # a pid that no longer runs
    [run] = list_runs(root, Launcher())
    assert run["status"] == "failed" and run["error"] == "Killed: out of memory" and not run["alive"]
    (d / "pid").unlink()
    # Started from the CLI (no pid file): nothing holds its lock, so its process is gone (SIGKILL).
    [run] = list_runs(root, Launcher())
    assert run["status"] == "failed" and not run["alive"]
    holder = hold_lock(d)  # a live `smolmac train` on it, started elsewhere
    try:
        [run] = list_runs(root, Launcher())
        assert run["status"] == "running" and run["alive"] and run["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    [run] = list_runs(root, Launcher())  # the kernel dropped the lock with the process: not stale
    assert run["status"] == "failed" and not run["alive"] and run["pid"] is None


def test_launcher_runs_children_in_their_own_session_and_stops_them_from_a_new_app(tmp_path):
    # A stand-in for the CLI that waits for SIGINT like `smolmac train` does, then says it stopped.
    child = ("import signal, sys, time  # smolmac\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(print('stopped', sys.argv[1:])))\n"
             "print('ready', flush=True)\ntime.sleep(120)\n")
    launcher = Launcher(command=[sys.executable, "-c", child])
    run_dir = tmp_path / "runs" / "r1"
    pid = launcher.start(tmp_path / "recipe.yaml", run_dir)
    assert int((run_dir / "pid").read_text()) == pid and launcher.alive(run_dir)
    assert os.getsid(pid) != os.getsid(0)  # its own session: it outlives the app and its terminal
    poll_until(lambda: "ready" in (run_dir / "train.log").read_text(), lambda: (run_dir / "train.log").read_text())
    reopened = Launcher()  # a later app knows the run only from its pid file
    assert reopened.alive(run_dir) is True and reopened.stop(run_dir)
    poll_until(lambda: not launcher.alive(run_dir), lambda: (run_dir / "train.log").read_text())
    assert "stopped" in (run_dir / "train.log").read_text() and "--run-dir" in (run_dir / "train.log").read_text()
    assert reopened.alive(run_dir) is False and not reopened.stop(run_dir)


# ---------------------------------------------------------------------------------------------
# Screens with scripted runs


async def test_runs_screen_lists_statuses_deletes_compares_and_refuses_bad_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    fake_run(root, "alpha", [start_event(), *[train_event(s) for s in (10, 20, 30)], {"type": "done", "step": 30, "output": "a", "time": T0 + 40}])
    fake_run(root, "beta", [start_event(), train_event(10), {"type": "error", "step": 0, "message": "data.train: the file is empty.", "time": T0 + 50}])
    live = fake_run(root, "gamma", [start_event(), train_event(10)])
    launcher = FakeLauncher()
    launcher.alive_dirs["gamma"] = True
    app = make_app(tmp_path, launcher)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        statuses = {r["name"]: r["status"] for r in screen.runs}
        assert statuses == {"alpha": "finished", "beta": "failed", "gamma": "running"}
        text = _render(app)
        assert "finished" in text and "failed" in text and "running" in text

        # A new step appended to the live run shows up on the next refresh.
        append(live, [train_event(20)])
        await wait_for(pilot, lambda: next(r for r in screen.runs if r["name"] == "gamma")["step"] == 20)

        # Resume is refused for a finished run (error modal), allowed for a failed one.
        names = [r["name"] for r in screen.runs]
        await pilot.press(*["down"] * names.index("alpha"), "r")
        await pilot.pause()
        assert type(app.screen).__name__ == "ErrorDialog" and "only a stopped or failed run" in app.screen.message
        await pilot.press("escape")
        screen.query_one("#runs").move_cursor(row=names.index("beta"))
        await pilot.press("r")
        await pilot.pause()
        assert ("resume", "beta") in launcher.calls and type(app.screen).__name__ == "DashboardScreen"
        await pilot.press("escape")

        # Compare two marked runs.
        screen.query_one("#runs").move_cursor(row=names.index("alpha"))
        await pilot.press("space")
        screen.query_one("#runs").move_cursor(row=names.index("gamma"))
        await pilot.press("space", "c")
        await pilot.pause()
        assert type(app.screen).__name__ == "CompareScreen"
        chart = app.screen.query_one("#compare-chart")
        assert set(chart.series) == {"alpha", "gamma"} and chart.point_count() == 3 + 2
        await pilot.press("escape")

        # Delete asks first; a running run cannot be deleted.
        screen.query_one("#runs").move_cursor(row=[r["name"] for r in screen.runs].index("gamma"))
        await pilot.press("d")
        await pilot.pause()
        assert type(app.screen).__name__ == "ErrorDialog"
        await pilot.press("escape")
        screen.query_one("#runs").move_cursor(row=[r["name"] for r in screen.runs].index("beta"))
        await pilot.press("d")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog"
        await pilot.press("n")
        assert (root / "beta").exists()
        await pilot.press("d", "y")
        await pilot.pause()
        assert not (root / "beta").exists() and {r["name"] for r in screen.runs} == {"alpha", "gamma"}

        # Quitting with a run still training asks first and leaves it running.
        await pilot.press("q")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog" and "gamma" in app.screen.question
        await pilot.press("n")
        assert app.is_running


async def test_dashboard_follows_a_growing_event_log_then_a_crash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path / "runs", "live", [])
    launcher = FakeLauncher()
    launcher.alive_dirs["live"] = True
    app = make_app(tmp_path, launcher)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await pilot.pause()
        dash = app.screen
        assert type(dash).__name__ == "DashboardScreen"
        chart = dash.query_one("#dash-chart")
        append(run, [start_event(total=40)])
        for step in (1, 10, 20):
            append(run, [train_event(step, total=40)])
            await wait_for(pilot, lambda step=step: dash.view.step == step)
        await wait_for(pilot, lambda: chart.point_count() == 3)
        append(run, [{"type": "eval", "step": 20, "val_loss": 1.9, "val_ppl": 6.7, "time": T0 + 21},
                     {"type": "sample", "step": 20, "prompt": "reverse: cat dog", "completion": "dog cat", "time": T0 + 21}])
        await wait_for(pilot, lambda: chart.point_count() == 4)
        text = _render(app)
        for needle in ("step 20/40", "val 1.9000", "dog cat", "1,234 tok/s", "0.42 GB"):
            assert needle in text, text
        assert dash.query_one("#dash-progress").progress == 20

        await pilot.press("s")
        assert ("stop", "live") in launcher.calls

        # The process dies with no done/error event: failed, with the last line it printed.
        (run / "train.log").write_text("Traceback ...\nRuntimeError: [metal::malloc] out of memory\n")
        launcher.alive_dirs["live"] = False
        await wait_for(pilot, lambda: dash.status == "failed")
        assert "out of memory" in _render(app)

        # Resume: the launcher is asked, and the new start event brings it back to running.
        await pilot.press("r")
        assert ("resume", "live") in launcher.calls
        launcher.alive_dirs["live"] = True
        append(run, [start_event(total=40, step=20, resumed=20), train_event(30, total=40)])
        await wait_for(pilot, lambda: dash.status == "running" and dash.view.step == 30)
        append(run, [train_event(40, total=40), {"type": "done", "step": 40, "output": "runs/live/adapter", "stopped": False, "time": T0 + 50}])
        await wait_for(pilot, lambda: dash.status == "finished")
        assert "runs/live/adapter" in _render(app)


async def test_a_run_trained_elsewhere_shows_running_and_resume_is_refused(tmp_path, monkeypatch):
    """Issue 14.2: a `smolmac train --resume` from a terminal holds the run's lock; the app shows the
    run as running (its last event still says stopped) and refuses Resume, naming the process."""
    monkeypatch.chdir(tmp_path)
    d = fake_run(tmp_path / "runs", "cli", [start_event(), train_event(10), {"type": "done", "step": 10, "output": "ckpt", "stopped": True, "time": T0 + 11}])
    holder = hold_lock(d)
    try:
        app = make_app(tmp_path, Launcher(command=[sys.executable, "-c", "raise SystemExit(1)"]))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.screen.runs[0]["status"] == "running"
            await pilot.press("r")
            await pilot.pause()
            assert type(app.screen).__name__ == "ErrorDialog" and str(holder.pid) in app.screen.message
            await pilot.press("escape", "enter")
            await pilot.pause()
            dash = app.screen
            await wait_for(pilot, lambda: dash.view.done is not None)
            assert dash.status == "running"
            await pilot.press("r")
            await pilot.pause()
            assert type(app.screen).__name__ == "ErrorDialog" and str(holder.pid) in app.screen.message
        assert not (d / "train.log").exists()  # no second process was started
    finally:
        holder.kill()
        holder.wait()


async def test_dashboard_shows_the_processes_and_hosts_of_a_data_parallel_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = {**start_event(total=40), "world_size": 2, "hosts": 2, "gradient_bytes_per_step": 38912}
    fake_run(tmp_path / "runs", "group", [start, {**train_event(10, total=40), "world_size": 2}])
    launcher = FakeLauncher()
    launcher.alive_dirs["group"] = True
    app = make_app(tmp_path, launcher)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "DashboardScreen" and app.screen.view.step == 10)
        assert "2 processes on 2 hosts" in _render(app) and "1,234 tok/s" in _render(app)
    assert group_label(start_event()) is None and group_label({"world_size": 4, "hosts": 1}) == "4 processes on 1 host"


async def test_new_run_form_validates_previews_estimates_and_saves(tmp_path, monkeypatch, tiny_model, chat_file):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny.yaml").write_text(yaml.safe_dump({"model": str(tiny_model), "data": {"train": str(chat_file)}, "train": {"steps": 10, "batch_size": 4, "max_seq_len": 128}}))
    launcher = FakeLauncher()
    app = make_app(tmp_path, launcher, memory_gb=0.001)  # nothing fits: the warning must show
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        form = app.screen
        assert type(form).__name__ == "NewRunScreen"
        form.query_one("#recipe").value = str(tmp_path / "recipes" / "tiny.yaml")
        await wait_for(pilot, lambda: form.query_one("#f-model").value == str(tiny_model))
        assert form.query_one("#f-train-steps").value == "10" and form.query_one("#f-data-train").value == str(chat_file)

        # Validation as you type, naming the key.
        form.query_one("#f-train-lr").focus()
        await pilot.pause()
        assert "train.lr" in str(form.query_one("#help").render()) and "Peak learning rate" in str(form.query_one("#help").render())
        form.query_one("#f-train-lr").value = "fast"
        await pilot.pause()
        assert "'train.lr' must be float" in str(form.query_one("#problem").render()) and form.query_one("#f-train-lr").has_class("-bad")
        form.query_one("#f-train-lr").value = "2e-4"
        await pilot.pause()
        assert "valid recipe" in str(form.query_one("#problem").render()) and not form.query_one("#f-train-lr").has_class("-bad")

        # Method-specific sections appear and disappear.
        assert form.query_one("#sec-lora").display and not form.query_one("#sec-dpo").display
        form.query_one("#f-method").value = "dpo"
        await pilot.pause()
        assert form.query_one("#sec-dpo").display
        form.query_one("#f-method").value = "sft"

        # Data preview: format, rows, and the example with trained (assistant) tokens highlighted.
        await wait_for(pilot, lambda: "messages" in str(form.query_one("#preview-summary").render()))
        assert "48 rows" in str(form.query_one("#preview-summary").render())
        example = form.preview["example"]  # the rich Text shown in #preview-example
        trained = "".join(example.plain[s.start:s.end] for s in example.spans if "on #" in str(s.style))
        dimmed = "".join(example.plain[s.start:s.end] for s in example.spans if str(s.style) == "dim")
        first = json.loads(chat_file.read_text().splitlines()[0])["messages"]
        assert first[1]["content"] in trained and "<|im_end|>" in trained  # the reply and its end-of-turn
        assert first[0]["content"] in dimmed and first[0]["content"] not in trained  # the prompt is masked

        # Memory estimate against (a tiny) machine memory, with suggestions.
        await wait_for(pilot, lambda: "GB" in str(form.query_one("#memory").render()))
        memory = str(form.query_one("#memory").render())
        assert "probably too much" in memory and "grad_checkpoint" in memory and "QLoRA" in memory
        # batch_size: auto shows what it chose (here nothing fits: the smallest setting, in yellow)
        form.query_one("#f-train-batch_size").value = "auto"
        await wait_for(pilot, lambda: "batch_size auto: 1 rows per micro-batch x 16 accumulated" in str(form.query_one("#memory").render()))
        form.query_one("#f-train-batch_size").value = "4"
        await wait_for(pilot, lambda: "batch_size auto" not in str(form.query_one("#memory").render()))

        # Save as recipe: the file loads back to the same config.
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert type(app.screen).__name__ == "PromptDialog"
        app.screen.query_one("Input").value = str(tmp_path / "recipes" / "saved.yaml")
        await pilot.press("enter")
        await pilot.pause()
        from smolmac.config import load_recipe

        saved = load_recipe(tmp_path / "recipes" / "saved.yaml")
        assert saved.train.lr == 2e-4 and saved.train.steps == 10 and saved.model == str(tiny_model)
        assert (tmp_path / "recipes" / "saved.yaml").read_text().startswith("# ")

        # Start: a recipe in a new run dir, the launcher called, the dashboard shown.
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert type(app.screen).__name__ == "DashboardScreen"
        (kind, recipe, run_dir), = launcher.calls
        assert kind == "start" and recipe.parent == run_dir and run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("tiny-")
        assert load_recipe(recipe).train.lr == 2e-4


async def test_chat_streams_base_and_adapter_side_by_side_on_one_worker_thread(tmp_path):
    chat = FakeChat()
    app = make_app(tmp_path, chat=chat)
    async with app.run_test(size=SIZE) as pilot:
        from smolmac.tui.screens.chat import ChatScreen

        await app.push_screen(ChatScreen(model="org/base", run_dir="runs/r1"))
        await pilot.pause()
        screen = app.screen
        assert screen.mode() == "both"
        for prompt in ("hello", "again"):
            screen.query_one("#chat-prompt").value = prompt
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.pending == 0 and len(screen.query_one("#pane-adapter").messages) % 2 == 0)
        base, adapter = screen.query_one("#pane-base"), screen.query_one("#pane-adapter")
        assert [m["content"] for m in base.messages] == ["hello", "base says: hello (turn 1) ", "again", "base says: again (turn 2) "]
        assert adapter.messages[-1]["content"] == "r1 says: again (turn 2) "
        assert chat.loads == ["org/base"] and chat.attached == [("r1", "runs/r1")]  # the base loaded once, reused
        assert len(chat.threads) == 1 and threading.get_ident() not in chat.threads
        screen.query_one("#chat-temp").value = "hot"
        screen.query_one("#chat-prompt").value = "x"
        await pilot.press("enter")
        await pilot.pause()
        assert type(app.screen).__name__ == "ErrorDialog" and "temp" in app.screen.message


async def test_export_screen_reports_a_missing_engine_module_as_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs", "done", [start_event(), {"type": "done", "step": 1, "output": "x", "time": T0}])
    monkeypatch.setitem(sys.modules, "smolmac.export", None)  # import fails as if not installed
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e")
        await pilot.pause()
        screen = app.screen
        assert screen.query_one("#export-out").value == str(Path("exports") / "done-peft")
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ErrorDialog")
        assert "smolmac.export" in app.screen.message
        await pilot.press("escape")
        await pilot.press("ctrl+u")  # nothing exported yet: a clear sentence, no crash
        await pilot.pause()
        assert "export the run first" in app.screen.message


def test_italian_ui_in_a_fresh_process(tmp_path):
    code = (
        "import asyncio, smolmac\n"
        "from smolmac.tui.app import SmolmacApp\n"
        "async def main():\n"
        f"    app = SmolmacApp(runs_dir={str(tmp_path / 'runs')!r}, recipes_dir={str(tmp_path)!r}, memory_gb=8, list_models=lambda: [])\n"
        "    async with app.run_test(size=(100, 32)) as pilot:\n"
        "        await pilot.pause()\n"
        "        print('\\n'.join(strip.text for strip in app.screen._compositor.render_strips(app.size)))\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "SMOLMAC_LANG": "it"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for needle in ("Nuova", "Nessuna esecuzione in", "Esporta", "Esecuzione", "Stato", "F1 tutti i tasti"):  # footer, empty state, columns, title
        assert needle in out.stdout, out.stdout


# ---------------------------------------------------------------------------------------------
# Snapshots (pytest-textual-snapshot): deterministic runs, times, folders and memory


@pytest.fixture()
def utc(monkeypatch):
    """Event times render in UTC (the Started column) while the test runs."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def snapshot_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("runs")
    fake_run(root, "sft-lora-chat", [start_event(), *[train_event(s) for s in range(10, 101, 10)], {"type": "done", "step": 100, "output": "runs/sft-lora-chat/adapter", "time": T0 + 200}])
    fake_run(root, "dpo-align", [start_event(), train_event(10), {"type": "error", "step": 0, "message": "data.train: row 3 has 'chosen' but no 'rejected' column.", "time": T0 + 100}], method="dpo")
    fake_run(root, "pretrain-nano", [{**start_event(total=2000), "time": T0 + 300}, {**train_event(500, total=2000), "time": T0 + 400}], model={"new": {"preset": "nano"}}, method="pretrain")
    launcher = FakeLauncher()
    launcher.alive_dirs["pretrain-nano"] = True
    return launcher


def test_snapshot_runs(snap_compare, tmp_path, monkeypatch, utc):
    launcher = snapshot_runs(tmp_path, monkeypatch)
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=launcher, chat_backend=FakeChat(), memory_gb=16, list_models=lambda: [])
    assert snap_compare(app, terminal_size=SIZE)


def test_snapshot_dashboard(snap_compare, tmp_path, monkeypatch, utc):
    launcher = snapshot_runs(tmp_path, monkeypatch)
    run = Path("runs") / "sft-lora-chat"
    events = [start_event()] + [train_event(s) for s in range(5, 101, 5)]
    events += [{"type": "eval", "step": s, "val_loss": round(2.6 / (1 + s / 25), 4), "val_ppl": 5.0, "time": T0 + s} for s in (25, 50, 75, 100)]
    events += [{"type": "sample", "step": 100, "prompt": "reverse: the cat sat", "completion": "sat cat the", "time": T0 + 100}]
    events += [{"type": "done", "step": 100, "output": "runs/sft-lora-chat/adapter", "stopped": False, "time": T0 + 101}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=launcher, chat_backend=FakeChat(), memory_gb=16, list_models=lambda: [])

    async def open_dashboard(pilot):
        from smolmac.tui.screens.dashboard import DashboardScreen

        await pilot.app.push_screen(DashboardScreen(run))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_dashboard)


def test_snapshot_new_run(snap_compare, tmp_path, monkeypatch, tiny_model, chat_file):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model, tmp_path / "models" / "tiny")
    assert chat_file == tmp_path / "chat.jsonl"  # referenced relatively by the recipe below
    Path("recipes").mkdir()
    Path("recipes", "sft-tiny.yaml").write_text("model: models/tiny\ndata:\n  train: chat.jsonl\n  valid: 0.1\ntrain:\n  steps: 50\n  lr: 3.0e-4\n")
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=FakeLauncher(), chat_backend=FakeChat(), memory_gb=16,
                     list_models=lambda: ["acme-org/tiny-instruct", "mlx-community/Qwen2.5-0.5B-Instruct-4bit"])

    async def fill(pilot):
        await pilot.press("n")
        await pilot.pause()
        pilot.app.screen.query_one("#recipe").value = "recipes/sft-tiny.yaml"
        await wait_for(pilot, lambda: "GB" in str(pilot.app.screen.query_one("#memory").render()))
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=fill)


# ---------------------------------------------------------------------------------------------
# End to end: a real tiny run started from the New run screen


@pytest.mark.slow
async def test_end_to_end_real_run_from_new_run_screen(tmp_path, monkeypatch, tiny_model, chat_file):
    """New run -> Start -> live dashboard -> Stop (checkpoint) -> Resume -> finished -> chat -> export."""
    monkeypatch.chdir(tmp_path)
    Path("recipes").mkdir()
    recipe = {
        "model": str(tiny_model), "data": {"train": str(chat_file), "valid": 0.1},
        "lora": {"rank": 4}, "train": {"steps": 300, "batch_size": 4, "lr": 1e-3, "max_seq_len": 128, "report_every": 2},
        "eval": {"every": 100, "prompts": ["reverse: cat dog"], "max_tokens": 4},
    }
    Path("recipes", "e2e.yaml").write_text(yaml.safe_dump(recipe))
    app = SmolmacApp(runs_dir="runs", recipes_dir="recipes", launcher=Launcher(), memory_gb=16, list_models=lambda: [])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        app.screen.query_one("#recipe").value = "recipes/e2e.yaml"
        await wait_for(pilot, lambda: app.screen.query_one("#f-model").value == str(tiny_model))
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "DashboardScreen")
        dash = app.screen
        chart = dash.query_one("#dash-chart")

        def log():
            path = dash.run_dir / "train.log"
            return (dash.view.error, dash.crashed, path.read_text()[-2000:] if path.exists() else "")

        # Stop as soon as the child reports its start: it checkpoints and stops early.
        await wait_for(pilot, lambda: dash.view.start is not None or dash.status == "failed")
        assert dash.status == "running", log()
        await pilot.press("s")
        counts = []
        while dash.status == "running":
            counts.append(chart.point_count())
            await pilot.pause(0.1)
        assert dash.status == "stopped", log()
        stopped_at = dash.view.step
        assert 0 < stopped_at < 300 and list((dash.run_dir / "checkpoints").iterdir())

        # Resume once the child has exited: the same dashboard follows the new child to the end.
        await wait_for(pilot, lambda: app.launcher.alive(dash.run_dir) is False)
        await pilot.press("r")
        deadline = time.monotonic() + 180
        while dash.status != "finished":
            assert dash.status != "failed" and time.monotonic() < deadline, log()
            counts.append(chart.point_count())
            await pilot.pause(0.2)
        counts.append(chart.point_count())
        assert counts[0] <= counts[-1] and len(set(counts)) >= 3  # the chart updated live, several times
        steps = [s for s, _ in dash.view.train]
        assert steps == sorted(set(steps)) and steps[-1] == 300 and stopped_at in steps
        assert [s for s, _ in dash.view.valid][-3:] == [100, 200, 300] or [s for s, _ in dash.view.valid][-2:] == [200, 300]
        assert (dash.run_dir / "adapter" / "adapters.safetensors").is_file() and dash.view.samples
        assert "finished" in _render(app)
        await pilot.press("escape")
        await pilot.pause()
        runs = app.screen
        await wait_for(pilot, lambda: runs.runs[0]["status"] == "finished" and not runs.runs[0]["alive"])

        # Chat with the base and the run's adapter side by side (real MLX generation on the worker).
        await pilot.press("t")
        await pilot.pause()
        chat = app.screen
        assert chat.mode() == "both" and chat.query_one("#chat-model").value == str(tiny_model)
        chat.query_one("#chat-max").value = "6"
        chat.query_one("#chat-prompt").value = "reverse: cat dog"
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.pending == 0)
        for side in ("base", "adapter"):
            reply = chat.query_one(f"#pane-{side}").messages[-1]
            assert reply["role"] == "assistant" and reply["content"] and "✗" not in _render(app)
        await pilot.press("escape")

        # Export the run as a PEFT adapter through the engine.
        await pilot.press("e")
        await pilot.pause()
        await pilot.press("ctrl+e")
        out = tmp_path / "exports" / f"{dash.run_dir.name}-peft"
        await wait_for(pilot, lambda: not app.screen.busy and (out / "adapter_config.json").is_file())
        assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
        app.screen.query_one("#export-repo").value = "someone/tiny-chat-lora"
        await pilot.press("ctrl+d")  # dry run: offline, lists files and the model card
        await wait_for(pilot, lambda: not app.screen.busy)
        shown = "\n".join(app.screen.transcript)
        assert "adapter_model.safetensors" in shown and "library_name: peft" in shown, shown


async def test_export_screen_offers_gguf_with_the_size_it_will_write(tmp_path, monkeypatch, tiny_model):
    """The formats come from the engine's registry; choosing GGUF offers its types (q8_0, q4_0),
    a .gguf destination and an estimate of the size, and Ctrl+E writes that file."""
    from test_export import make_run

    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "runs" / "tuned", tiny_model, {"targets": ["q_proj", "v_proj"], "layers": "all", "dora": False})
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e")
        await pilot.pause()
        screen = app.screen
        formats = {value for _, value in screen.query_one("#export-format")._options}
        assert {"gguf", "ollama", "gguf-lora", "mlx-q4", "mlx-q8"} <= formats
        await wait_for(pilot, lambda: "for peft" in _render(app))
        screen.query_one("#export-format").value = "gguf"
        await wait_for(pilot, lambda: "for gguf" in _render(app))
        assert screen.query_one("#export-out").value == str(Path("exports") / "tuned-gguf.gguf")
        assert {"f16", "q8_0", "q4_0"} <= {value for _, value in screen.query_one("#export-dtype")._options}
        screen.query_one("#export-dtype").value = "q4_0"
        await pilot.press("ctrl+e")
        out = tmp_path / "exports" / "tuned-gguf.gguf"
        await wait_for(pilot, lambda: not screen.busy and out.is_file())
        assert out.read_bytes()[:4] == b"GGUF" and " KB written." in "\n".join(screen.transcript)
