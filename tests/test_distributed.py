"""Data parallel (smolmac/distributed.py, smolmac/hosts.py): 2 processes x batch/2 train exactly
like 1 process x batch (SFT with LoRA, DPO, full fine-tuning), checkpoints resume across a change
of the number of processes, a killed or failing process stops the group with one error event,
and launch-check says what a host lacks. The group tests start real processes through mlx.launch
(ring backend on localhost); every wait polls with a generous limit (the CI machine has 2 loaded
cores: starting two processes takes up to a minute there).
"""

from __future__ import annotations

import json
import os
import shutil
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
from conftest import chat_rows, write_jsonl
from test_preference import pair_rows

import smolmac
from smolmac import events as ev
from smolmac.batches import Batches, PackedBatches
from smolmac.config import load_recipe
from smolmac.data import Example
from smolmac.distributed import scratch_dir
from smolmac.errors import UserError
from smolmac.hosts import plan, read_hostfile
from smolmac.methods.preference import PairBatches

LAUNCH_LIMIT = 900  # seconds for a whole group run on a loaded 2-core machine


def sft_recipe(model, train_file, **train):
    return {
        "model": str(model), "data": {"train": str(train_file)},
        "lora": {"rank": 4, "alpha": 8},  # no dropout: the processes draw different masks
        "train": {"steps": 10, "lr": 5e-3, "batch_size": 4, "report_every": 1, "warmup": 2, **train},
    }


def write_recipe(path: Path, rec: dict) -> Path:
    path.write_text(yaml.safe_dump(rec))
    return path


def cli(*args, env=None, timeout=LAUNCH_LIMIT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smolmac.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def train_losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    return {e["step"]: e[key] for e in ev.read_events(run_dir / "events.jsonl") if e["type"] == "train"}


def assert_same(a: dict, b: dict, atol: float = 1e-5):
    steps = sorted(set(a) & set(b))
    assert steps, (a, b)
    diff = {s: abs(a[s] - b[s]) for s in steps}
    assert max(diff.values()) <= atol, {s: (a[s], b[s]) for s in steps if diff[s] > atol}


def poll(condition, limit: float, what: str, interval: float = 0.05):
    """Wait until `condition()` is truthy (returns it), failing after `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"waited {limit:.0f} s for {what}")


# ---------------------------------------------------------------------------------------------
# Sharding (no processes): the shards of micro-batch k are exactly its rows


def pad(a: np.ndarray, width: int) -> np.ndarray:
    return np.pad(a, [(0, 0), (0, width - a.shape[1])])


@pytest.mark.parametrize("size", [2, 3])
def test_shards_of_every_micro_batch_are_its_rows(size):
    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(1, 50, n).astype(np.int32), rng.random(n) > 0.3) for n in rng.integers(3, 40, 21)]
    pairs = [(examples[i], examples[i + 1]) for i in range(0, 20, 2)]
    cases = [(Batches(examples, 6, 64, seed=1), 0), (PairBatches(pairs, 4, 64, seed=1), 1),
             (PackedBatches(rng.integers(1, 50, 700).astype(np.uint16), 16, 6, seed=1), 0)]
    for batches, paired in cases:
        whole = batches.stream(0)
        shards = [batches.stream(0, (r, size)) for r in range(size)]
        for _ in range(2 * len(batches) + 1):  # over an epoch boundary
            arrays, ntok = next(whole)
            parts = [next(s) for s in shards]
            live = [p for p in parts if p[1] > 0]
            assert sum(p[1] for p in parts) == ntok
            width = arrays[0].shape[1]
            for k, a in enumerate(arrays):
                if paired:  # chosen rows, then rejected rows, in each part
                    halves = [np.split(pad(p[0][k], width), 2) for p in live]
                    got = np.concatenate([h[0] for h in halves] + [h[1] for h in halves])
                else:
                    got = np.concatenate([pad(p[0][k], width) for p in live])
                np.testing.assert_array_equal(got, a)
            empty = [p for p in parts if p[1] == 0]  # a short micro-batch: a stand-in row, weight 0
            assert all(p[0][0].shape[0] == (2 if paired else 1) for p in empty)
    assert Batches(examples, 6, 64, seed=1).fingerprint() != Batches(examples[:-1], 6, 64, seed=1).fingerprint()


def test_plans_refuse_in_one_sentence(tmp_path, tiny_model):
    cfg = load_recipe(sft_recipe(tiny_model, tmp_path / "x.jsonl", batch_size=6))
    with pytest.raises(UserError, match=r"train.batch_size: 6 rows cannot be split evenly over 4 processes; use a multiple of 4, e.g. 8"):
        plan(cfg, 4, None, None)
    n, args = plan(cfg, 2, None, None)
    assert n == 2 and args[:6] == ["--backend", "ring", "--hosts", "127.0.0.1", "-n", "2"]
    assert "SMOLMAC_DISTRIBUTED=ring" in args and any(a.startswith("OPENBLAS_NUM_THREADS=") for a in args)
    with pytest.raises(UserError, match="either --nproc N"):
        plan(cfg, 2, "hosts.json", None)
    with pytest.raises(UserError, match="--nproc: 0 is not a number of processes"):
        plan(cfg, 0, None, None)
    with pytest.raises(UserError, match="--nproc runs on this machine with the ring backend"):
        plan(cfg, 2, None, "jaccl")
    with pytest.raises(UserError, match="stages: a pipeline runs in one process"):
        plan(load_recipe({**sft_recipe(tiny_model, "x.jsonl"), "stages": [{"method": "sft"}]}), 2, None, None)
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "mac-elsewhere.invalid", "ips": ["10.0.0.2"]}, {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))
    with pytest.raises(UserError, match=r"the first host \(mac-elsewhere.invalid\) is process 0, which writes the run dir"):
        plan(cfg, None, str(hosts), None)
    hosts.write_text(json.dumps({"backend": "ring", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "mac2.invalid"}]}))
    with pytest.raises(UserError, match=r"hosts\[1\] \(mac2.invalid\) has no \"ips\""):
        plan(cfg, None, str(hosts), None)
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))
    with pytest.raises(UserError, match="lists one host; data parallel needs two or more"):
        plan(cfg, None, str(hosts), None)
    hosts.write_text("[{\"ssh\": ")
    with pytest.raises(UserError, match="is not valid JSON"):
        read_hostfile(hosts)


# ---------------------------------------------------------------------------------------------
# Groups of real processes


@pytest.mark.slow
def test_sft_lora_two_processes_equal_one(tiny_model, tmp_path):
    # 45 rows in micro-batches of 4: the last of each epoch has 1 row, so one process runs a
    # stand-in row with weight 0; 14 steps cross the epoch boundary.
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(45))
    rec = sft_recipe(tiny_model, data, steps=14)
    one = smolmac.train(rec, run_dir=tmp_path / "one")
    r = cli("train", write_recipe(tmp_path / "r.yaml", rec), "--run-dir", tmp_path / "two", "--nproc", 2, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    a, b = train_losses(one.dir), train_losses(two)
    assert len(a) == len(b) == 14
    assert_same(a, b)
    start = ev.read_events(two / "events.jsonl")[0]
    assert start["world_size"] == 2 and start["hosts"] == 1
    assert start["gradient_bytes_per_step"] == 4 * start["trainable_params"]
    last = ev.read_events(two / "events.jsonl")[-2]
    assert last["type"] == "checkpoint" and train_losses(two, "world_size")[14] == 2
    # the group's tokens: every row's real tokens, as the single process counts them
    assert train_losses(two, "trained_tokens")[14] == train_losses(one.dir, "trained_tokens")[14]
    wa = mx.load(str(one.adapter_path / "adapters.safetensors"))
    wb = mx.load(str(two / "adapter" / "adapters.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:  # Adam turns rounding in near-zero gradients into updates of up to ~lr: 1e-4
        np.testing.assert_allclose(np.array(wa[k]), np.array(wb[k]), atol=1e-4)


@pytest.mark.slow
def test_dpo_two_processes_equal_one_with_accumulation_and_a_gathered_reference(tiny_model, tmp_path):
    train = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(29, seed=1))
    valid = write_jsonl(tmp_path / "valid.jsonl", pair_rows(8, seed=2))
    rec = {"model": str(tiny_model), "method": "dpo", "data": {"train": str(train), "valid": str(valid)},
           "lora": {"rank": 4, "alpha": 8}, "dpo": {"beta": 0.5}, "eval": {"every": 4},
           "train": {"steps": 8, "lr": 1e-3, "batch_size": 2, "grad_accum": 2, "max_seq_len": 64, "report_every": 1, "warmup": 2}}
    one = smolmac.train(rec, run_dir=tmp_path / "one")
    r = cli("train", write_recipe(tmp_path / "r.yaml", rec), "--run-dir", tmp_path / "two", "--nproc", 2, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert_same(train_losses(one.dir, key), train_losses(two, key), atol=1e-5 if key == "loss" else 1e-4)
    evals = [(e["step"], e["val_loss"]) for e in ev.read_events(two / "events.jsonl") if e["type"] == "eval"]
    assert [s for s, _ in evals] == [4, 8]
    np.testing.assert_allclose([v for _, v in evals], [e["val_loss"] for e in one.events if e["type"] == "eval"], atol=1e-5)
    assert ev.read_events(two / "events.jsonl")[0]["ref_logps"] == "computed"
    for split in ("train", "valid"):  # computed half by each process, gathered: the same numbers
        with np.load(one.dir / f"ref_logps-{split}.npz") as f, np.load(two / f"ref_logps-{split}.npz") as g:
            assert str(f["key"]) == str(g["key"])
            np.testing.assert_allclose(f["logps"], g["logps"], atol=1e-5)


def rank_pid(run_dir: Path, rank: int) -> int | None:
    """The pid of process `rank` of the group training in `run_dir` (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = proc.joinpath("environ").read_bytes().split(b"\0")
            cmd = proc.joinpath("cmdline").read_bytes()
        except OSError:
            continue
        if f"MLX_RANK={rank}".encode() in env and str(run_dir).encode() in cmd and b"--nproc" not in cmd:
            return int(proc.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the process to kill through /proc")
def test_a_killed_process_ends_the_group_and_its_checkpoint_resumes_in_one_process(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(45))
    # long enough that the kill lands mid-run; rounding differences stay below 1e-5 over it
    rec = sft_recipe(tiny_model, data, steps=120, lr=1e-3)
    rec["save"] = {"every": 4, "keep": 2}
    run_dir = tmp_path / "two"
    proc = subprocess.Popen([sys.executable, "-m", "smolmac.cli", "train", str(write_recipe(tmp_path / "r.yaml", rec)),
                             "--run-dir", str(run_dir), "--nproc", "2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        poll(lambda: any(e["type"] == "checkpoint" for e in ev.read_events(run_dir / "events.jsonl")) or proc.poll() is not None,
             LAUNCH_LIMIT, "the group's first checkpoint")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        pid = poll(lambda: rank_pid(run_dir, 1), 30, "process 1")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ended <= 30, f"the group took {ended:.1f} s to end"
    assert proc.returncode != 0
    events = ev.read_events(run_dir / "events.jsonl")
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and "lost one of them" in errors[0]["message"], errors
    assert "process 1 was killed (SIGKILL)" in err and "smolmac train --resume" in err, err[-2000:]
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts and all((c / "state.json").is_file() for c in ckpts)  # no half-written checkpoint
    stopped_at = int(ckpts[-1].name.split("-")[1])
    assert stopped_at < 120
    # continue the 2-process checkpoint in 1 process: the 1-process trajectory from there on
    resumed = smolmac.train(run_dir=run_dir, resume=True)
    assert resumed.last("start")["resumed_from"] == stopped_at
    one = smolmac.train(rec, run_dir=tmp_path / "one")
    after = {s: v for s, v in train_losses(run_dir).items() if s > stopped_at}
    assert len(after) == 120 - stopped_at
    assert_same(train_losses(one.dir), after)
    assert_same(train_losses(one.dir), {s: v for s, v in train_losses(run_dir).items() if s <= stopped_at})
    shutil.rmtree(scratch_dir(str(run_dir), 1))  # the killed process's caches (a next group run clears them)


@pytest.mark.slow
def test_full_fine_tuning_checkpoint_of_one_process_resumes_in_two(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(40))
    rec = {**sft_recipe(tiny_model, data, steps=8, lr=1e-3, grad_accum=2), "full": True}
    whole = smolmac.train(rec, run_dir=tmp_path / "whole")
    stop = threading.Event()
    first = smolmac.train(rec, run_dir=tmp_path / "run", stop=stop,
                          on_event=lambda e: e["type"] == "train" and e["step"] == 3 and stop.set())
    assert first.stopped
    resumed = smolmac.train(run_dir=tmp_path / "run", resume=True, nproc=2)  # the Python API
    assert resumed.model_path == (tmp_path / "run" / "model").resolve()
    assert resumed.last("start")["resumed_from"] == 3 and resumed.last("start")["world_size"] == 2
    assert_same(train_losses(whole.dir), train_losses(tmp_path / "run"))
    assert len(train_losses(tmp_path / "run")) == 8


@pytest.mark.slow
def test_a_failing_process_is_reported_by_process_0_in_one_error_event(tiny_model, tmp_path):
    # Process 1 (only) fails reading its 4th micro-batch: injected through sitecustomize, which
    # every local process of the group imports at start.
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('MLX_RANK') == '1' and os.environ.get('SMOLMAC_DISTRIBUTED'):\n"
        "    from smolmac import batches\n"
        "    real, calls = batches.Batches.make_shard, [0]\n"
        "    def make_shard(self, group, shard):\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 4:\n"
        "            raise OSError('injected: the disk of process 1 failed')\n"
        "        return real(self, group, shard)\n"
        "    batches.Batches.make_shard = make_shard\n")
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(40))
    rec = sft_recipe(tiny_model, data, steps=8)
    rec["save"] = {"every": 2}
    r = cli("train", write_recipe(tmp_path / "r.yaml", rec), "--run-dir", tmp_path / "two", "--nproc", 2, "--quiet",
            env={"PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])})
    assert r.returncode != 0
    events = ev.read_events(tmp_path / "two" / "events.jsonl")
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1, errors
    assert "process 1" in errors[0]["message"] and "OSError: injected: the disk of process 1 failed" in errors[0]["message"]
    assert max(train_losses(tmp_path / "two")) == 3
    assert (tmp_path / "two" / "checkpoints" / "step-0000002" / "state.json").is_file()
    assert "continue from its last checkpoint (step 2) with smolmac train --resume" in r.stderr, r.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# launch-check


def test_launch_check_on_localhost_and_what_to_fix(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(8))
    recipe = write_recipe(tmp_path / "r.yaml", sft_recipe(tiny_model, data))
    local = tmp_path / "hosts.json"
    local.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))
    r = cli("launch-check", "--hostfile", local, recipe, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "host 1 127.0.0.1: Python" in r.stdout and "2/2 paths found" in r.stdout
    assert f"all 2 hosts are ready: smolmac train {recipe} --hostfile {local}" in r.stdout

    missing = write_recipe(tmp_path / "m.yaml", sft_recipe(tiny_model, tmp_path / "nowhere.jsonl", batch_size=3))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "no-such-host.invalid"}]))
    r = cli("launch-check", "--hostfile", bad, missing, timeout=600)
    assert r.returncode == 1
    fixes = [line for line in r.stdout.splitlines() if line.startswith("fix: ")]
    assert any(f"data.train '{tmp_path / 'nowhere.jsonl'}' is not there" in f for f in fixes), r.stdout
    assert any("hosts[1] (no-such-host.invalid) has no \"ips\"" in f for f in fixes), r.stdout
    assert any("host 1 no-such-host.invalid: " in f and ("ssh" in f) for f in fixes), r.stdout
    assert any("train.batch_size 3 cannot be split over 2 processes" in f for f in fixes), r.stdout
