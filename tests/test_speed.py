"""Speed and fitting in memory: `train.batch_size: auto`, the out-of-memory path, the steady-state
benchmark's arithmetic. (Speed figures themselves are in `smolmac bench sft`, never asserted here.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smolmac import memory
from smolmac.config import load_recipe
from smolmac.errors import UserError

mx = pytest.importorskip("mlx.core")

MAX_LEN = 256
WORDS = "the cat sat on a green mat while two dogs ran in the park under one blue tree".split()


@pytest.fixture()
def long_rows(tmp_path) -> Path:
    """Text rows longer than MAX_LEN tokens: every micro-batch is (B, MAX_LEN), as the plan assumes."""
    rows = [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(400))} for i in range(48)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(model, data, **train) -> dict:
    return {"model": str(model), "data": {"train": str(data)}, "lora": {"rank": 8},
            "train": {"steps": 2, "max_seq_len": MAX_LEN, "report_every": 1, "lr": 1e-3, "schedule": "constant", **train}}


CHILD = """
import json, sys
import smolmac  # first: it loads OpenBLAS before MLX starts
import mlx.core as mx
rec, budget, out = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
mx.set_memory_limit(int(budget * 1e9))  # advisory on the CPU backend; binding on Metal
mx.reset_peak_memory()
run = smolmac.train(rec, run_dir=out)
start = next(e for e in run.events if e["type"] == "start")
print(json.dumps({"peak_gb": mx.get_peak_memory() / 1e9, "plan": start.get("batch_plan"),
                  "done": run.events[-1]["type"] == "done", "config": open(out + "/config.yaml").read()}))
"""


def run_child(rec: dict, budget: float, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(rec), str(budget), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_auto_batch_fits_a_budget_where_16_rows_do_not(tiny_model, long_rows, tmp_path):
    cfg = load_recipe(recipe(tiny_model, long_rows, batch_size="auto"))
    mc = memory.model_config(cfg)
    est = {b: memory.estimate(mc, b, MAX_LEN, 8)["total_gb"] for b in (4, 8, 16)}
    budget = (est[4] + est[8]) / 2 * (1 + memory.MARGIN)  # room for 4 rows with the margin, not 8
    fixed = run_child(recipe(tiny_model, long_rows, batch_size=16), budget, tmp_path / "fixed")
    assert fixed["peak_gb"] > budget, (fixed, budget)  # measured: 16 rows at once do not fit
    auto = run_child(recipe(tiny_model, long_rows, batch_size="auto", memory_budget_gb=budget), budget, tmp_path / "auto")
    assert auto["done"] and auto["peak_gb"] <= budget, (auto, budget)
    assert auto["plan"].startswith("batch_size auto: 4 rows per micro-batch x 4 accumulated"), auto["plan"]
    saved = load_recipe(str(tmp_path / "auto" / "config.yaml"))  # a resume trains the same micro-batches
    assert (saved.train.batch_size, saved.train.grad_accum, saved.train.effective_batch) == (4, 4, None)


def test_plan_keeps_the_effective_batch_and_prefers_fewer_micro_batches(tiny_model):
    cfg = load_recipe({"model": str(tiny_model), "train": {"batch_size": "auto", "effective_batch": 12, "max_seq_len": MAX_LEN}})
    mc = memory.model_config(cfg)
    roomy = memory.plan(cfg, mc, budget=100.0, peak=1e11)
    assert (roomy.batch_size, roomy.grad_accum, roomy.grad_checkpoint, roomy.fits) == (12, 1, False, True)
    one_row = memory.estimate(mc, 1, MAX_LEN, 8)["total_gb"]
    tight = memory.plan(cfg, mc, budget=one_row * 3.5 * (1 + memory.MARGIN), peak=1e11)
    assert tight.batch_size * tight.grad_accum == 12 and tight.batch_size == 3 and tight.fits
    hopeless = memory.plan(cfg, mc, budget=one_row / 10, peak=1e11)
    assert not hopeless.fits and hopeless.batch_size == 1
    v = memory.verdict(cfg, mc, budget=100.0)
    assert v.plan.batch_size == 12 and v.total_gb == pytest.approx(memory.estimate(mc, 12, MAX_LEN, 8)["total_gb"])


def test_auto_batch_that_cannot_fit_fails_in_one_sentence(tiny_model, long_rows, tmp_path):
    import smolmac

    with pytest.raises(UserError, match=r"train.batch_size: auto: even 1 row .* raise train.memory_budget_gb\.$"):
        smolmac.train(recipe(tiny_model, long_rows, batch_size="auto", memory_budget_gb=1e-4), run_dir=tmp_path / "r")


class FailingMx:
    """mlx.core, except that the `fail_at`-th evaluation of a training step raises what MLX's
    allocator raises (mlx/allocator.cpp: RuntimeError "[malloc] Unable to allocate N bytes.")."""

    def __init__(self, fail_at: int):
        self.fail_at, self.steps = fail_at, 0

    def __getattr__(self, name):
        return getattr(mx, name)

    def eval(self, *args):
        if args and isinstance(args[0], list) and len(args[0]) == 3:  # (state, losses, weights, metrics)
            self.steps += 1
            if self.steps == self.fail_at:
                raise RuntimeError("[malloc] Unable to allocate 8589934592 bytes.")
        return mx.eval(*args)


def test_out_of_memory_saves_the_last_good_state_and_names_a_smaller_setting(tiny_model, long_rows, tmp_path, monkeypatch, capsys):
    import smolmac
    from smolmac import cli, trainer

    smolmac.train(recipe(tiny_model, long_rows, batch_size=4, steps=2), run_dir=tmp_path / "two")
    monkeypatch.setattr(trainer, "mx", FailingMx(fail_at=3))
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe(tiny_model, long_rows, batch_size=4, steps=5)))
    code = cli.main(["train", str(path), "--run-dir", str(tmp_path / "oom")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "out of memory in step 3 ([malloc] Unable to allocate 8589934592 bytes)" in err
    assert "set train.batch_size: 2 and train.grad_accum: 2 (the same 4 rows per step)" in err
    ckpt = tmp_path / "oom" / "checkpoints" / "step-0000002"
    assert str(ckpt) in err
    # the saved state is the one before the failed step: equal to a run that stopped after step 2
    ours, theirs = mx.load(str(ckpt / "weights.safetensors")), mx.load(str(tmp_path / "two" / "checkpoints" / "step-0000002" / "weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(mx.array_equal(ours[k], theirs[k]).item() for k in ours)
    assert json.loads((ckpt / "state.json").read_text())["micro"] == 2
    events = [json.loads(x) for x in (tmp_path / "oom" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "error" and "out of memory" in events[-1]["message"]


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    from smolmac.trainer import is_out_of_memory

    assert is_out_of_memory(RuntimeError("[metal::malloc] Unable to allocate 1 bytes."))
    assert not is_out_of_memory(RuntimeError("[matmul] shapes do not match")) and not is_out_of_memory(ValueError("Unable to allocate"))


def test_steady_state_uses_the_second_half():
    from smolmac.bench import steady_state

    steps = [{"t": t, "tokens": 100 * (i + 1), "own_s": t * 0.9, "loss": 1.0} for i, t in enumerate([5, 9, 10, 11, 12, 13])]
    s = steady_state(steps)
    assert s["first_half_s"] == 10 and s["first_half_steps"] == 3 and s["steady_steps"] == 3
    assert s["tokens_per_second"] == pytest.approx(300 / 3) and s["tokens_per_second_own_clock"] == pytest.approx(300 / 2.7)
