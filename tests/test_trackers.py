"""report_to: every event mirrored to TensorBoard, trackio and W&B, all offline: TensorBoard's own
event-file reader, trackio's local SQLite storage and W&B's offline run file read back what a
tiny run (stopped at step 2, then resumed) wrote in events.jsonl."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolmac import trackers
from smolmac.config import load_recipe
from smolmac.errors import UserError
from smolmac.events import read_events

INSTALLED = [n for n in trackers.TRACKERS if __import__("importlib").util.find_spec(n) is not None]

# The run: stopped after step 2 (checkpoint), resumed to step 4; eval and a sample every 2 steps.
DRIVER = """
import json, sys, threading
import smolmac
rec, run_dir = json.loads(sys.argv[1]), sys.argv[2]
stop = threading.Event()
first = smolmac.train(rec, run_dir=run_dir, stop=stop, on_event=lambda e: e["type"] == "train" and e["step"] == 2 and stop.set())
assert first.stopped, "the first part did not stop at step 2"
smolmac.train(run_dir=run_dir, resume=True)
"""

TRACKIO_READER = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
project, name = sys.argv[1], sys.argv[2]
print(json.dumps({"runs": SQLiteStorage.get_runs(project), "logs": SQLiteStorage.get_logs(project, name),
                  "config": SQLiteStorage.get_run_config(project, name)}, default=str))
"""


def offline_env(tmp_path: Path) -> dict:
    """Everything local: trackio's database and W&B's files under tmp_path, no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(TRACKIO_DIR=str(tmp_path / "trackio"), WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-dir"),
               WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb-data"), HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def mirrored(tiny_model, tmp_path_factory):
    """(run dir, env) of a tiny SFT run with report_to: every installed tracker."""
    from conftest import chat_rows, write_jsonl

    if not INSTALLED:
        pytest.skip("no tracker installed: pip install 'smolmac[tensorboard,trackio,wandb]'")
    tmp = tmp_path_factory.mktemp("trackers")
    data = write_jsonl(tmp / "chat.jsonl", chat_rows(24))
    rec = {"model": str(tiny_model), "data": {"train": str(data), "valid": 0.25}, "report_to": INSTALLED,
           "lora": {"rank": 4}, "eval": {"every": 2, "prompts": ["reverse: the cat"], "max_tokens": 4},
           "save": {"every": 0}, "train": {"steps": 4, "batch_size": 4, "max_seq_len": 64, "report_every": 1, "lr": 1e-3}}
    env = offline_env(tmp)
    out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(rec), str(tmp / "run")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run", env, out


def by_step(events, kind, key):
    return {e["step"]: e[key] for e in events if e["type"] == kind}


# ---------------------------------------------------------------------------------------------
# The recipe key


def test_report_to_is_checked_in_one_sentence(tiny_model):
    base = {"model": str(tiny_model)}
    assert load_recipe(base).report_to == []
    assert load_recipe({**base, "report_to": "tensorboard"}).report_to == ["tensorboard"]  # --set report_to=tensorboard
    with pytest.raises(UserError, match=r"'report_to' takes tensorboard, trackio, wandb, not 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        load_recipe({**base, "report_to": ["tensorbord"]})
    with pytest.raises(UserError, match="names a tracker twice"):
        load_recipe({**base, "report_to": ["wandb", "wandb"]})


def test_a_missing_tracker_package_fails_before_anything_is_written(tiny_model, chat_file, tmp_path, monkeypatch):
    import importlib.util

    import smolmac

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    rec = {"model": str(tiny_model), "data": {"train": str(chat_file)}, "report_to": ["wandb"], "train": {"steps": 1}}
    with pytest.raises(UserError, match=r"^report_to: wandb is not installed; pip install 'smolmac\[wandb\]', or remove wandb from report_to\.$"):
        smolmac.train(rec, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tracker_failing_mid_run_stops_it_in_one_sentence(tiny_model, chat_file, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    import smolmac

    def full_disk(self, scalars, step):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trackers.TensorBoard, "log", full_disk)
    rec = {"model": str(tiny_model), "data": {"train": str(chat_file)}, "report_to": ["tensorboard"],
           "train": {"steps": 2, "batch_size": 4, "max_seq_len": 64, "report_every": 1}}
    with pytest.raises(UserError, match=r"^report_to: tensorboard failed at step 1 \(\[Errno 28\] No space left on device\); fix it or remove tensorboard from report_to, then resume the run\.$"):
        smolmac.train(rec, run_dir=tmp_path / "run")
    last = read_events(tmp_path / "run" / "events.jsonl")[-1]
    assert last["type"] == "error" and last["message"].startswith("report_to: tensorboard failed at step 1")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))  # the config text was written


def test_a_pipeline_stage_is_named_pipeline_slash_stage(tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "config.yaml").write_text("stages: []\n")
    assert trackers.run_name(tmp_path / "pipe" / "2-sft") == "pipe/2-sft"
    assert trackers.run_name(tmp_path / "pipe") == "pipe"


def test_numbers_are_named_by_event_type():
    event = {"type": "eval", "step": 4, "time": 1.0, "val_loss": 2.5, "eval_rewards/accuracies": 0.75, "note": "x", "ok": True}
    assert trackers.numbers(event) == {"eval/val_loss": 2.5, "eval/rewards/accuracies": 0.75}


# ---------------------------------------------------------------------------------------------
# Each tracker holds what events.jsonl holds


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_runs_scalars(mirrored):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = mirrored
    events = read_events(run_dir / "events.jsonl")
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    got = {s.step: s.value for s in acc.Scalars("train/loss")}
    want = by_step(events, "train", "loss")
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]  # both halves of the resumed run
    assert got == pytest.approx(want, rel=1e-6)
    assert {s.step: s.value for s in acc.Scalars("eval/val_loss")} == pytest.approx(by_step(events, "eval", "val_loss"), rel=1e-6)
    assert {s.step for s in acc.Scalars("train/lr")} == {1, 2, 3, 4}
    tags = acc.Tags()["tensors"]
    assert {"config", "sample"} <= set(tags)
    config = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "report_to:" in config and "trainable_params:" in config
    assert "reverse: the cat" in acc.Tensors("sample")[0].tensor_proto.string_val[0].decode()
    assert {s.step: s.value for s in acc.Scalars("done/elapsed_s")}[4] == pytest.approx(events[-1]["elapsed_s"], rel=1e-6)


@pytest.mark.slow
def test_trackio_local_database_holds_the_runs_metrics(mirrored):
    pytest.importorskip("trackio")
    run_dir, env, _ = mirrored
    events = read_events(run_dir / "events.jsonl")
    out = subprocess.run([sys.executable, "-c", TRACKIO_READER, "smolmac", "run"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    stored = json.loads(out.stdout.strip().splitlines()[-1])
    assert stored["runs"] == ["run"]  # the resumed half continued the same trackio run
    assert list(Path(env["TRACKIO_DIR"]).glob("*.db"))  # its local SQLite database, in TRACKIO_DIR
    logs = stored["logs"]
    got = {r["step"]: r["train/loss"] for r in logs if "train/loss" in r}
    assert got == pytest.approx(by_step(events, "train", "loss"), rel=1e-9) and sorted(got) == [1, 2, 3, 4]
    assert {r["step"]: r["eval/val_loss"] for r in logs if "eval/val_loss" in r} == pytest.approx(by_step(events, "eval", "val_loss"), rel=1e-9)
    assert stored["config"]["report_to"] == INSTALLED
    assert stored["config"]["train"]["steps"] == 4 and stored["config"]["start"]["trainable_params"] > 0


def wandb_records(path: Path) -> list:
    """The records of a W&B offline run file: W&B's LevelDB-style log of 32 KiB blocks, each
    record a 7-byte header (crc, length, kind: 1 full, 2 first, 3 middle, 4 last) then bytes of
    a `wandb_internal_pb2.Record`; the file starts with a 7-byte ':W&B' header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


@pytest.mark.slow
def test_wandb_offline_run_files_hold_the_runs_metrics(mirrored):
    pytest.importorskip("wandb", reason="W&B is an optional extra: pip install 'smolmac[wandb]'")
    run_dir, _, _ = mirrored
    events = read_events(run_dir / "events.jsonl")
    run_id = (run_dir / "wandb-id").read_text().strip()
    # W&B names each start's folder by the second it began; a resume within the same second gets
    # the folder name with "-1" appended
    files = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert len(files) == 2, list((run_dir / "wandb").iterdir())  # started, then resumed: one W&B run id
    history, config = {}, {}
    for f in files:
        raw = f.read_bytes()
        assert b"train/loss" in raw and b"eval/val_loss" in raw
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                history.setdefault(row["_step"], {}).update(row)
            elif kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    assert {s: r["train/loss"] for s, r in history.items() if "train/loss" in r} == pytest.approx(by_step(events, "train", "loss"), rel=1e-9)
    assert {s: r["eval/val_loss"] for s, r in history.items() if "eval/val_loss" in r} == pytest.approx(by_step(events, "eval", "val_loss"), rel=1e-9)
    assert config["train"]["steps"] == 4 and config["report_to"] == INSTALLED
    assert config["start"]["method"] == "sft" and config["start"]["resumed_from"] == 2  # the resumed half's start
