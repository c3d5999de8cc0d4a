"""Faults from outside: a run SIGKILLed at random points (before its first checkpoint, inside a
checkpoint write, mid-step, while starting) and resumed each time must end exactly like an
uninterrupted run; a full disk (a small tmpfs, as root) must end in one sentence and resume.

The kills inside the process use smolmac's test hook `SMOLMAC_FAULT=KIND:STEP`
(smolmac/trainer.py `_fault`); the others are a SIGKILL from here. `SMOLMAC_CHAOS_SEED` picks
other random points.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from smolmac import events as ev
from smolmac.storage import lock_owner

SEED = int(os.environ.get("SMOLMAC_CHAOS_SEED", "14"))
STEPS = 24


def chaos_recipe(model, chat_file) -> dict:
    return {"model": str(model), "data": {"train": str(chat_file), "valid": 0.1},
            "lora": {"rank": 4, "dropout": 0.1},  # dropout: the RNG must be restored too
            "train": {"steps": STEPS, "batch_size": 4, "grad_accum": 2, "lr": 5e-3, "warmup": 3, "report_every": 1},
            "eval": {"every": 6}, "save": {"every": 4, "keep": 2}}


def cli(args: list[str], cwd: Path, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SMOLMAC_FAULT"}
    if fault:
        env["SMOLMAC_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "smolmac.cli", "train", *args, "--quiet"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def steps_seen(run_dir: Path) -> list[int]:
    return [e["step"] for e in ev.read_events(run_dir / "events.jsonl") if e["type"] == "train"]


def wait_then_kill(proc: subprocess.Popen, condition, seen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and proc.poll() is None:
        assert time.monotonic() < deadline, f"not within {timeout}s; saw: {seen()}"
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=120)


def per_step(run_dir: Path) -> dict:
    """{step: loss} and {step: val_loss} of the steps that count (superseded ones dropped)."""
    events = ev.current(ev.read_events(run_dir / "events.jsonl"))
    losses, vals = {}, {}
    for e in events:
        if e["type"] == "train":
            assert e["step"] not in losses, f"step {e['step']} reported twice after dropping superseded steps"
            losses[e["step"]] = e["loss"]
        elif e["type"] == "eval":
            vals[e["step"]] = e["val_loss"]
    return losses, vals


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tiny_model, chat_file, tmp_path):
    rng = random.Random(SEED)
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(chaos_recipe(tiny_model, chat_file)))
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "chaos"
    ref = cli([str(rec), "--run-dir", str(ref_dir)], tmp_path)
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err

    plan = [
        ("fault", f"step:{rng.randint(1, 3)}"),  # before the first checkpoint (step 4)
        ("fault", f"checkpoint-write:{rng.choice([4, 8])}"),  # inside a checkpoint write
        ("at-step", rng.randint(9, 14)),  # from outside, mid-run
        ("fault", f"step:{rng.randint(15, 19)}"),  # mid-step, after the update
        ("after", rng.uniform(0.5, 6.0)),  # from outside, at a random moment (maybe while loading)
    ]
    history = []
    for i, (kind, arg) in enumerate(plan):
        args = [str(rec), "--run-dir", str(run_dir)] if i == 0 else ["--resume", str(run_dir)]
        proc = cli(args, tmp_path, fault=arg if kind == "fault" else None)
        if kind == "fault":
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == -9, (kind, arg, proc.returncode, err)  # it did die there
        elif kind == "at-step":
            wait_then_kill(proc, lambda arg=arg: any(s >= arg for s in steps_seen(run_dir)), lambda: steps_seen(run_dir)[-5:])
        else:
            time.sleep(arg)
            proc.kill()
            proc.communicate(timeout=120)
        assert lock_owner(run_dir) is None  # the kernel released the lock with the process
        ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
        history.append((kind, arg, proc.returncode, ckpts, steps_seen(run_dir)[-1:] or None))
    assert not (run_dir / "adapter").exists(), history  # every kill landed before the end
    final = cli(["--resume", str(run_dir)], tmp_path)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, (history, err)

    lines = (run_dir / "events.jsonl").read_text().splitlines()
    for line in lines:  # no torn line anywhere (each start repaired the one a kill left)
        json.loads(line)
    assert sum(json.loads(x)["type"] == "start" for x in lines) >= 3, history
    losses, vals = per_step(run_dir)
    ref_losses, ref_vals = per_step(ref_dir)
    assert sorted(losses) == list(range(1, STEPS + 1)), history
    assert max(abs(losses[s] - ref_losses[s]) for s in losses) <= 1e-6, (history, losses, ref_losses)
    assert vals.keys() == ref_vals.keys() and max(abs(vals[s] - ref_vals[s]) for s in vals) <= 1e-6
    import mlx.core as mx

    a = mx.load(str(run_dir / "adapter" / "adapters.safetensors"))
    b = mx.load(str(ref_dir / "adapter" / "adapters.safetensors"))
    assert all(mx.array_equal(a[k], b[k]) for k in b)
    leftovers = [p.name for p in run_dir.rglob(".*")]
    assert leftovers == [], leftovers


# ---------------------------------------------------------------------------------------------
# A full disk


def _why_no_tmpfs() -> str | None:
    if sys.platform != "linux":
        return "mounting a small tmpfs to fill needs Linux"
    if os.geteuid() != 0:
        return "mounting a small tmpfs to fill needs root (run the suite as root to include the disk-full test)"
    return None


@pytest.fixture()
def small_disk(tmp_path):
    why = _why_no_tmpfs()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the container lacks CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` until about `leave` bytes are free; returns the filler file."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


def one_sentence(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=600)
    lines = [x for x in err.strip().splitlines() if x]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, (proc.returncode, err)
    return lines[0]


def test_a_full_disk_ends_in_one_sentence_and_nothing_is_lost(tiny_model, tiny_tokenizer, chat_file, tmp_path, small_disk):
    rec = tmp_path / "r.yaml"
    r = chaos_recipe(tiny_model, chat_file)
    r["train"].update(steps=6, grad_accum=1)
    r["save"]["every"] = 2
    rec.write_text(yaml.safe_dump(r))
    run_dir = small_disk / "run"

    # 1. A checkpoint does not fit (about 120 KB of weights and AdamW state; 40 KB free).
    filler = fill(small_disk, 40_000)
    msg = one_sentence(cli([str(rec), "--run-dir", str(run_dir)], tmp_path))
    assert "checkpoints/step-0000002: the disk is full (" in msg and "needed); free some space" in msg and f"--resume {run_dir}" in msg, msg
    assert not list((run_dir / "checkpoints").glob(".tmp-*")) and not list((run_dir / "checkpoints").glob("step-*"))
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]  # no torn line
    assert events[-1]["type"] == "error" and "disk is full" in events[-1]["message"]

    # 2. Not even an event fits: the resume says so, and the log keeps only whole lines.
    before = (run_dir / "events.jsonl").read_bytes()
    filler.unlink()
    fill(small_disk, 0)
    msg = one_sentence(cli(["--resume", str(run_dir)], tmp_path))
    assert "events.jsonl: the disk is full" in msg or "the disk is full" in msg, msg
    assert (run_dir / "events.jsonl").read_bytes()[: len(before)] == before
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        json.loads(line)

    # 3. Space again: --resume (no checkpoint yet) restarts from step 0 and finishes.
    filler.unlink()
    done = cli(["--resume", str(run_dir)], tmp_path)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    losses, _ = per_step(run_dir)
    assert sorted(losses) == list(range(1, 7)) and (run_dir / "adapter" / "adapters.safetensors").is_file()

    # 4. An export that does not fit leaves the earlier export as it was.
    from smolmac.errors import UserError
    from smolmac.export import export_run

    out = export_run(run_dir, "peft", small_disk / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    filler = fill(small_disk, 8_000)
    with pytest.raises(UserError, match=r"export: the disk is full \(.* free, about .* needed\); free some space"):
        export_run(run_dir, "hf", out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in small_disk.iterdir() if p.name.startswith(".")]
    filler.unlink()

    # 5. The pretraining token cache: a full disk mid-write, then a whole cache on the next try.
    from conftest import corpus
    from transformers import AutoTokenizer

    from smolmac.config import load_recipe
    from smolmac.methods.pretrain import token_cache

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(corpus(3000)))
    cfg = load_recipe({"model": "x", "method": "pretrain", "data": {"train": str(text)}})
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    reference = token_cache(cfg, tok, tmp_path / "ref")[0]
    filler = fill(small_disk, 30_000)
    with pytest.raises(UserError, match=r"tokens/train.bin: the disk is full \(.* free, about .* needed\)"):
        token_cache(cfg, tok, small_disk / "pre")
    assert not (small_disk / "pre" / "tokens" / "meta.json").exists()
    assert not [p for p in (small_disk / "pre" / "tokens").iterdir() if p.name.startswith(".")]
    filler.unlink()
    import numpy as np

    again = token_cache(cfg, tok, small_disk / "pre")[0]
    assert np.array_equal(np.asarray(again), np.asarray(reference))
