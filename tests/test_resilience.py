"""Runs under faults (issue 14): one process per run dir, resume from any stop, `--set` on
resume, finite-only checkpoints, signals and exit codes, torn event lines, leftovers, superseded
steps, path escapes, the stuck-loss warning. The SIGKILL chaos test and the full disk are in
test_chaos.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml
from conftest import chat_rows, corpus, hold_lock, write_jsonl

import smolmac
from smolmac import events as ev
from smolmac.cli import main
from smolmac.errors import UserError


def recipe(model, train_file, **train) -> dict:
    return {"model": str(model), "data": {"train": str(train_file)}, "lora": {"rank": 4},
            "train": {"steps": 4, "batch_size": 4, "lr": 5e-3, "report_every": 1, **train}}


def recipe_file(path: Path, rec: dict) -> Path:
    path.write_text(yaml.safe_dump(rec))
    return path


def one_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def poll(condition, seen, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s; saw: {seen()}"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# 2. One process per run dir


def test_a_live_run_refuses_a_second_train_or_resume_naming_its_pid(tiny_model, chat_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = recipe_file(tmp_path / "r.yaml", recipe(tiny_model, chat_file))
    run_dir = tmp_path / "run"
    assert main(["train", str(rec), "--run-dir", str(run_dir), "--quiet", "--set", "train.steps=2"]) == 0
    lines_before = (run_dir / "events.jsonl").read_text()
    holder = hold_lock(run_dir)  # what a live `smolmac train` holds
    try:
        err = one_error(capsys, main(["train", "--resume", str(run_dir), "--quiet"]))
        assert f"process {holder.pid} is training this run" in err
        err = one_error(capsys, main(["train", str(rec), "--run-dir", str(run_dir), "--quiet"]))
        assert f"process {holder.pid}" in err
        with pytest.raises(UserError, match=f"process {holder.pid}"):
            smolmac.train(run_dir=run_dir, resume=True)
        from smolmac.launcher import Launcher

        with pytest.raises(UserError, match=f"process {holder.pid}"):
            Launcher().resume(run_dir)
        assert Launcher().alive(run_dir) is True
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / "events.jsonl").read_text() == lines_before  # the refused ones wrote nothing
    # SIGKILL left no stale lock: resuming works at once.
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0


def test_pipelines_and_their_stages_are_locked(tiny_model, chat_file, tmp_path):
    rec = {"model": str(tiny_model), "data": {"train": str(chat_file)}, "train": {"batch_size": 4, "steps": 1},
           "stages": [{"name": "a", "method": "sft"}]}
    smolmac.train(rec, run_dir=tmp_path / "p")
    for d in (tmp_path / "p", tmp_path / "p" / "1-a"):
        holder = hold_lock(d)
        try:
            with pytest.raises(UserError, match=f"process {holder.pid} is training this run"):
                smolmac.train(run_dir=d, resume=True)
        finally:
            holder.kill()
            holder.wait()


def test_simultaneous_starts_never_crash(tiny_model, chat_file, tmp_path):
    """Config writes are atomic with unique temporary names (the old fixed config.tmp made one of
    five simultaneous starts crash); default run dirs are claimed with an atomic mkdir."""
    from smolmac.config import load_recipe
    from smolmac.runs import default_run_dir, open_run_dir, resolve_auto

    cfg = load_recipe(recipe(tiny_model, chat_file))
    errors = []

    def start(i):
        try:
            for _ in range(20):
                open_run_dir(cfg, tmp_path / "same", resume=False)
        except Exception as e:  # noqa: BLE001 - any exception is the failure under test
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # saved as the run trains it: train.dtype auto resolved to this device's dtype
    assert yaml.safe_load((tmp_path / "same" / "config.yaml").read_text()) == resolve_auto(cfg).to_dict()
    assert [p.name for p in (tmp_path / "same").iterdir()] == ["config.yaml"]  # no temp files left
    dirs = []
    threads = [threading.Thread(target=lambda: dirs.append(default_run_dir(cfg, tmp_path / "runs"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(dirs)) == 6 and all(d.is_dir() for d in dirs)


def test_two_processes_starting_the_same_run_dir(tiny_model, chat_file, tmp_path):
    rec = recipe_file(tmp_path / "r.yaml", recipe(tiny_model, chat_file, steps=30))
    cmd = [sys.executable, "-m", "smolmac.cli", "train", str(rec), "--run-dir", str(tmp_path / "run"), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
    # Refused by the lock while the other trains (or, on a very busy machine where the other
    # finished before this one started, because the dir then holds a finished run).
    assert ("is training this run right now" in refused or "already holds this run" in refused) and "Traceback" not in refused, refused
    events = ev.read_events(tmp_path / "run" / "events.jsonl")
    assert [e["type"] for e in events].count("start") == 1
    assert [e["step"] for e in events if e["type"] == "train"] == list(range(1, 31))


# ---------------------------------------------------------------------------------------------
# 3. Resume from any stop; --set on resume


def test_a_run_stopped_before_its_first_checkpoint_can_be_resumed_or_started_again(tiny_model, chat_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_rows(1)[0]) + "\n{oops\n")
    rec = recipe_file(tmp_path / "r.yaml", recipe(tiny_model, bad))
    run_dir = tmp_path / "run"
    assert "bad.jsonl:2" in one_error(capsys, main(["train", str(rec), "--run-dir", str(run_dir), "--quiet"]))
    write_jsonl(bad, chat_rows(16))  # the data error fixed: the same command again is allowed
    assert main(["train", str(rec), "--run-dir", str(run_dir), "--quiet"]) == 0
    events = ev.read_events(run_dir / "events.jsonl")
    assert [e["type"] for e in events][:2] == ["error", "start"] and events[1]["resumed_from"] == 0
    # A different recipe in a dir with no progress is allowed too; with progress it is not.
    assert "already holds this run" in one_error(capsys, main(["train", str(rec), "--run-dir", str(run_dir), "--quiet"]))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("model: x\n")
    assert main(["train", str(rec), "--run-dir", str(other), "--quiet", "--set", "train.steps=1"]) == 0


def test_set_on_resume_applies_safe_keys_and_refuses_the_others(tiny_model, chat_file, tmp_path, capsys):
    stop = threading.Event()
    rec = recipe(tiny_model, chat_file, steps=6, schedule="constant", lr=1e-3)
    smolmac.train(rec, run_dir=tmp_path / "run", stop=stop, on_event=lambda e: e["type"] == "train" and e["step"] == 2 and stop.set())
    for key in ("train.batch_size=2", "lora.rank=8", "model=other", "data.train=x.jsonl"):
        err = one_error(capsys, main(["train", "--resume", str(tmp_path / "run"), "--set", key, "--quiet"]))
        assert f"--set {key.split('=')[0]}: cannot be changed when resuming" in err, err
    run = smolmac.train(run_dir=tmp_path / "run", resume=True, train={"lr": 2e-3, "steps": 5}, save={"every": 1})
    change = next(e for e in run.events if e["type"] == "config")
    assert change["changes"] == {"train.lr": [0.001, 0.002], "train.steps": [6, 5], "save.every": [0, 1]}
    assert run.last("start")["total_steps"] == 5 and run.last("done")["step"] == 5
    assert [e["lr"] for e in run.events if e["type"] == "train" and e["step"] > 2] == pytest.approx([2e-3] * 3)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["lr"] == 2e-3
    assert len(list((tmp_path / "run" / "checkpoints").glob("step-*"))) == 2


# ---------------------------------------------------------------------------------------------
# 4. Finite-only checkpoints


def test_a_non_finite_loss_stops_before_any_save_and_keeps_the_finite_checkpoints(tiny_model, tmp_path):
    """Issue 14.4, exactly: report_every 10, save.every 3; the loss becomes NaN at step 5. Before,
    the check ran at report steps only and both kept checkpoints were NaN."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from smolmac.config import LoraConfig
    from smolmac.lora import apply_lora
    from smolmac.losses import lm_loss
    from smolmac.models import load_model
    from smolmac.trainer import list_checkpoints, save_checkpoint, train

    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(4, 300, (2, 3, 16)).astype(np.int32)
    mask = np.ones((3, 16), np.float32)

    class Poisoned:  # micro-batch 4 (step 5) carries a NaN mask weight
        def stream(self, start):
            i = start
            while True:
                yield (inputs, targets, mask * (np.nan if i == 4 else 1.0)), 48
                i += 1

    model, *_ = load_model(str(tiny_model))
    apply_lora(model, LoraConfig(rank=4), seed=0)
    opt = optim.Adam(learning_rate=1e-3)
    ckpts = tmp_path / "checkpoints"
    saved, events = [], []

    def save(pos):
        saved.append(pos.step)
        return save_checkpoint(ckpts, model, opt, pos, keep=2)

    with pytest.raises(UserError, match=r"loss became nan at step 5, so the run stopped before evaluating or saving that step"):
        train(model, opt, Poisoned(), lm_loss, total_steps=12, on_event=events.append, save=save, save_every=3, report_every=10)
    assert saved == [3] and [p.name for p in list_checkpoints(ckpts)] == ["step-0000003"]
    weights = mx.load(str(ckpts / "step-0000003" / "weights.safetensors"))
    assert all(bool(mx.all(mx.isfinite(v))) for v in weights.values())
    # Non-finite weights are never written either.
    from mlx.utils import tree_unflatten

    key, value = tree_flatten(model.trainable_parameters())[0]
    model.update(tree_unflatten([(key, value * float("nan"))]))
    from smolmac.trainer import Position

    with pytest.raises(UserError, match="weights became NaN or infinite at step 9"):
        save_checkpoint(ckpts, model, opt, Position(step=9), keep=1)
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-0000003"]


# ---------------------------------------------------------------------------------------------
# 5. Signals and exit codes


def _start_cli(tmp_path, rec_path, run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "smolmac.cli", "train", *([str(rec_path)] if rec_path else []), *extra,
                             *(["--run-dir", str(run_dir)] if rec_path else []), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _train_steps(run_dir):
    return [e["step"] for e in ev.read_events(run_dir / "events.jsonl") if e["type"] == "train"]


@pytest.mark.slow
def test_sigterm_and_sighup_checkpoint_and_exit_3(tiny_model, chat_file, tmp_path):
    rec = recipe_file(tmp_path / "r.yaml", recipe(tiny_model, chat_file, steps=100000))
    run_dir = tmp_path / "run"
    for i, sig in enumerate((signal.SIGTERM, signal.SIGHUP, signal.SIGINT)):
        proc = _start_cli(tmp_path, rec if i == 0 else None, run_dir, *([] if i == 0 else ["--resume", str(run_dir)]))
        seen = len(_train_steps(run_dir))
        poll(lambda seen=seen, proc=proc: len(_train_steps(run_dir)) > seen + 2 or proc.poll() is not None,
             lambda proc=proc: (proc.poll(), _train_steps(run_dir)[-3:]))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 3, (sig, proc.returncode, err)
        events = ev.read_events(run_dir / "events.jsonl")
        done = events[-1]
        assert done["type"] == "done" and done["stopped"] and not (run_dir / "adapter").exists(), done
        assert (run_dir / "checkpoints" / f"step-{done['step']:07d}" / "state.json").is_file()
    from smolmac.runs import read_run

    assert read_run(run_dir)["status"] == "stopped"


def test_the_resume_hint_names_the_run_dir(tmp_path):
    from smolmac.progress import ProgressView

    view = ProgressView(tmp_path / "runs" / "mine")
    with view.console.capture() as cap:
        view({"type": "done", "step": 7, "output": str(tmp_path / "runs" / "mine" / "checkpoints"), "stopped": True})
        view({"type": "warning", "step": 50, "message": "the loss has stayed at ln(vocab)"})
    text = cap.get()
    assert f"smolmac train --resume {tmp_path / 'runs' / 'mine'}`" in text.replace("\n", "")
    assert "warning: the loss has stayed at ln(vocab)" in text


# ---------------------------------------------------------------------------------------------
# 6. Torn lines, caches, leftovers, superseded steps


def test_a_torn_last_line_is_repaired_before_appending(tmp_path):
    path = tmp_path / "events.jsonl"
    whole = json.dumps({"type": "train", "step": 3, "loss": 1.0})
    path.write_text(whole + "\n" + whole[:17])  # killed (or a full disk) half-way through a line
    with ev.EventLog(path) as log:
        log(ev.Start(step=3, total_steps=9, method="sft", model="m", trainable_params=1, total_params=1, train_rows=1, valid_rows=0, resumed_from=3))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["train", "start"]  # the start event is not swallowed


def test_a_failed_event_write_leaves_no_torn_line(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "events.jsonl"
    log = ev.EventLog(path)
    log(ev.Error(step=0, message="first"))
    real = os.write

    def short_then_full(fd, data):
        real(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(UserError, match=r"events.jsonl: the disk is full"):
        log(ev.Error(step=0, message="second"))
    monkeypatch.setattr(os, "write", real)
    log.close()
    assert [json.loads(x)["message"] for x in path.read_text().splitlines()] == ["first"]


def test_stale_temporary_folders_are_removed_at_start_and_resume(tiny_model, chat_file, tmp_path):
    stop = threading.Event()
    run_dir = tmp_path / "run"
    smolmac.train(recipe(tiny_model, chat_file, steps=4), run_dir=run_dir, stop=stop, on_event=lambda e: e["type"] == "train" and stop.set())
    stale = [run_dir / "checkpoints" / ".tmp-step-0000003-99999", run_dir / ".config.yaml.tmp-99999-abcdef12",
             run_dir / ".adapter.tmp-99999-abcdef12", run_dir / ".adapter.old-99999-abcdef12"]
    for p in stale:
        p.mkdir() if "config" not in p.name else p.write_text("x")
    keep = run_dir / "notes.tmp-123"  # not ours: kept
    keep.write_text("mine")
    smolmac.train(run_dir=run_dir, resume=True)
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


def test_the_token_cache_is_validated_and_rebuilt(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from smolmac.config import load_recipe
    from smolmac.methods.pretrain import token_cache

    (tmp_path / "c.txt").write_text("\n\n".join(corpus(200)))
    cfg = load_recipe({"model": "x", "method": "pretrain", "data": {"train": str(tmp_path / "c.txt"), "valid": 0.1}})
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    train, valid, meta = token_cache(cfg, tok, tmp_path)
    good = np.array(train).copy()
    cache = tmp_path / "tokens"
    for damage in ("meta-empty", "train-truncated", "meta-garbage"):
        if damage == "meta-empty":
            (cache / "meta.json").write_text("")  # what a full disk left (issue 14.6)
        elif damage == "train-truncated":
            with (cache / "train.bin").open("r+b") as f:
                f.truncate(100)
        else:
            (cache / "meta.json").write_text('{"key": ')
        train, valid, again = token_cache(cfg, tok, tmp_path)
        assert np.array_equal(np.array(train), good) and again["train_tokens"] == meta["train_tokens"], damage
    # nothing but the cache (valid.jsonl: the validation text kept for eval.retain), no temp files
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "train.bin", "valid.bin", "valid.jsonl"]


def test_readers_drop_the_steps_a_resume_redid(tmp_path):
    from smolmac.export.card import run_metrics
    from smolmac.runs import read_run
    from smolmac.tui.view import RunView

    def train(step, loss):
        return {"type": "train", "step": step, "loss": loss, "lr": 1e-3, "tokens_per_second": 1.0, "trained_tokens": step,
                "peak_memory_gb": 0.1, "elapsed_s": 1.0, "eta_s": 1.0, "time": 1.0}

    start = {"type": "start", "step": 0, "total_steps": 20, "method": "sft", "model": "m", "trainable_params": 1,
             "total_params": 1, "train_rows": 1, "valid_rows": 1, "resumed_from": None, "time": 1.0}
    killed = [start, *[train(s, 2.0) for s in range(1, 13)], {"type": "eval", "step": 12, "val_loss": 9.0, "val_ppl": 1.0, "time": 1.0}]
    resumed = [{**start, "step": 10, "resumed_from": 10}, train(11, 1.5)]
    (tmp_path / "config.yaml").write_text("method: sft\nmodel: m\n")
    with (tmp_path / "events.jsonl").open("w") as f:
        for e in killed + resumed:
            f.write(json.dumps(e) + "\n")
    events = ev.current(ev.read_events(tmp_path / "events.jsonl"))
    assert [e["step"] for e in events if e["type"] == "train"] == list(range(1, 12))
    assert read_run(tmp_path)["step"] == 11 and read_run(tmp_path)["loss"] == 1.5
    assert "val_loss" not in run_metrics(ev.read_events(tmp_path / "events.jsonl"))  # step 12's eval is superseded
    view = RunView()
    for e in killed + resumed:
        view.add(e)
    assert [s for s, _ in view.train] == list(range(1, 12)) and view.last_eval is None


# ---------------------------------------------------------------------------------------------
# 7. Path escapes


def test_run_and_stage_names_cannot_escape(tiny_model, chat_file, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("../../escaped", str(tmp_path / "abs"), "..", "a/b", "~root"):
        rec = recipe_file(work / "r.yaml", {**recipe(tiny_model, chat_file), "name": name})
        assert "must be a plain name, not a path" in one_error(capsys, main(["train", str(rec), "--quiet"]))
    rec = recipe_file(work / "r.yaml", {"model": str(tiny_model), "data": {"train": str(chat_file)},
                                        "stages": [{"name": "x/../../../stage_escape", "method": "sft"}]})
    assert "stages[1].name: 'x/../../../stage_escape' must be a plain name" in one_error(capsys, main(["train", str(rec), "--run-dir", "p", "--quiet"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "work"]
    assert not list(work.rglob("*escape*")) and not (work / "p" / "1-x").exists()
    rec = recipe_file(work / "r.yaml", {**recipe(tiny_model, chat_file, steps=1), "name": "my run: v2"})
    assert main(["train", str(rec), "--quiet"]) == 0
    assert [p.name.rsplit("-", 2)[0] for p in (work / "runs").iterdir()] == ["my-run-v2"]


# ---------------------------------------------------------------------------------------------
# 9. The loss stuck at ln(vocab)


def test_a_loss_stuck_at_ln_vocab_for_50_steps_warns_once(tiny_model):
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten, tree_unflatten

    from smolmac.losses import lm_loss
    from smolmac.models import load_model
    from smolmac.trainer import train

    model, _tok, config, _ = load_model(str(tiny_model))
    # Zero output weights: logits are 0, every token has probability 1/V, the loss is ln(V).
    model.update(tree_unflatten([(k, mx.zeros_like(v)) for k, v in tree_flatten(model.parameters()) if "embed" in k or "lm_head" in k]))
    model.unfreeze()
    rng = np.random.default_rng(0)
    arrays = (rng.integers(4, 300, (2, 8)).astype(np.int32), rng.integers(4, 300, (2, 8)).astype(np.int32), np.ones((2, 8), np.float32))

    class Same:
        def stream(self, start):
            while True:
                yield arrays, 16

    events = []
    train(model, optim.SGD(learning_rate=0.0), Same(), lm_loss, total_steps=70, on_event=events.append,
          stuck_loss=math.log(config["vocab_size"]), report_every=100)
    warnings = [e for e in events if isinstance(e, ev.Warning)]
    assert len(warnings) == 1 and warnings[0].step == 50 and warnings[0].kind == "stuck_loss" and "ln(vocab) = 5.77" in warnings[0].message
