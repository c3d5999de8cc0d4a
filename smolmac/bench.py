"""Benchmarks, one command each, same model/data/batch/rank/targets, every system in a fresh
process (so peak memory is its own):

    smolmac bench sft [--size tiny|135m] [--steps N] [--batch-size B] [--out results.json]
    smolmac bench dpo
    smolmac bench pretrain

`sft` trains the same random-weight model on the same variable-length chat rows (short and long
mixed) through smolmac and through `mlx_lm.tuner.train`, and reports real (non-pad) tokens per
second and peak memory for both, and the ratios.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {
    # preset overrides and tokenizer vocab for each benchmark shape
    "tiny": ({"preset": "micro"}, 2048),
    "135m": ({"preset": "smollm2-135m"}, 49152),
}
WORDS = "the a cat dog sat ran on in park tree green blue one two three four five six seven eight nine ten".split()


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """Chats of mixed length: 70% short (10-60 words), 30% long (150-400 words)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        long = rng.random() < 0.3
        k = rng.randint(150, 400) if long else rng.randint(10, 60)
        q = " ".join(rng.choice(WORDS) for _ in range(max(3, k // 4)))
        a = " ".join(rng.choice(WORDS) for _ in range(k))
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


def make_fixture(root: Path, size: str) -> tuple[Path, Path]:
    """A tokenizer + random model of the given shape, and a chat jsonl file."""
    from smolmac.models import new_model
    from smolmac.tokenizer import train_tokenizer

    spec, vocab = SIZES[size]
    rows = chat_rows(256)
    texts = [m["content"] for r in rows for m in r["messages"]] + [" ".join(WORDS)] * 10
    # a word-level corpus cannot fill a 49k vocab: pad the spec's vocab_size instead
    tok = train_tokenizer(texts, root / "tok", vocab_size=300, source="bench corpus")
    model = new_model({**spec, "vocab_size": vocab}, tok, root / "model")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, data


def _worker_smolmac(model: str, data: str, steps: int, batch: int, out: str) -> dict:
    import mlx.core as mx

    import smolmac

    rec = {
        "model": model, "data": {"train": data},
        "lora": {"rank": 8, "alpha": 160.0, "targets": "all-linear"},
        "train": {"steps": steps, "batch_size": batch, "lr": 1e-4, "max_seq_len": 1024, "report_every": 1, "grad_clip": 0.0},
    }
    mx.reset_peak_memory()
    run = smolmac.train(rec, run_dir=out)
    tr = [e for e in run.events if e["type"] == "train"]
    skip = tr[len(tr) // 5 - 1]  # the first fifth of the steps compiles graphs for new shapes
    elapsed = tr[-1]["elapsed_s"] - skip["elapsed_s"]
    toks = tr[-1]["trained_tokens"] - skip["trained_tokens"]
    return {"tokens_per_second": toks / elapsed, "peak_memory_gb": mx.get_peak_memory() / 1e9, "final_loss": tr[-1]["loss"]}


def _worker_mlx_lm(model: str, data: str, steps: int, batch: int, out: str) -> dict:
    import time

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    import smolmac  # noqa: F401  (same BLAS as smolmac's run)
    from smolmac.lora import target_keys

    m, tok = load(model)
    m.set_dtype(mx.float32)
    m.freeze()
    linear_to_lora_layers(m, len(m.layers), {"rank": 8, "scale": 20.0, "dropout": 0.0, "keys": target_keys(m, "all-linear")})
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    # mask_prompt=False: mlx-lm then counts every non-pad token, as smolmac's tokens_per_second does
    ds = CacheDataset(ChatDataset(rows, tok, mask_prompt=False))
    reports = []

    class CB:
        def on_train_loss_report(self, info):
            reports.append({**info, "t": time.perf_counter()})

        def on_val_loss_report(self, info):
            pass

    args = TrainingArgs(batch_size=batch, iters=steps, steps_per_report=1, steps_per_eval=10**9, steps_per_save=10**9,
                        max_seq_length=1024, adapter_file=str(Path(out) / "adapters.safetensors"))
    Path(out).mkdir(parents=True, exist_ok=True)
    mx.reset_peak_memory()
    train(m, optim.AdamW(learning_rate=1e-4), ds, None, args, training_callback=CB())
    warm = reports[len(reports) // 5:]
    # tokens_per_second per report = that step's tokens / its train time
    toks = sum(r["tokens_per_second"] / r["iterations_per_second"] for r in warm)
    secs = sum(1 / r["iterations_per_second"] for r in warm)
    return {"tokens_per_second": toks / secs, "peak_memory_gb": mx.get_peak_memory() / 1e9, "final_loss": reports[-1]["train_loss"]}


def _worker_step_memory(system: str, model: str, batch: int, seq: int) -> dict:
    """Peak memory of two compiled LoRA steps on one identical (batch, seq) batch, so the two
    systems are compared on the same shape whatever batches their samplers drew."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.trainer import default_loss

    from smolmac.config import LoraConfig
    from smolmac.lora import apply_lora
    from smolmac.losses import lm_loss
    from smolmac.models import load_model

    m, *_ = load_model(model)
    apply_lora(m, LoraConfig(rank=8, alpha=160.0))
    tokens = np.random.default_rng(0).integers(0, 256, (batch, seq + 1)).astype(np.int32)
    if system == "mlx_lm":
        loss, args = default_loss, (mx.array(tokens), mx.array([[0, seq]] * batch))
    else:
        loss, args = lm_loss, (mx.array(tokens[:, :-1]), mx.array(tokens[:, 1:]), mx.ones((batch, seq)))
    opt = optim.AdamW(learning_rate=1e-4)
    value_and_grad = nn.value_and_grad(m, loss)
    state = [m.state, opt.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*a):
        (value, ntoks, *_), grads = value_and_grad(m, *a)
        opt.update(m, grads)
        return value, ntoks

    mx.reset_peak_memory()
    for _ in range(2):
        mx.eval(state, step(*args))
    return {"peak_memory_gb": mx.get_peak_memory() / 1e9}


WORKERS = {"smolmac": _worker_smolmac, "mlx_lm": _worker_mlx_lm}


def _spawn(system: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-m", "smolmac.bench", system, *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{system} benchmark failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_sft(size: str = "tiny", steps: int | None = None, batch_size: int = 8, on_message=print) -> dict:
    steps = steps or (60 if size == "tiny" else 40)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = make_fixture(root, size)
        on_message(f"bench sft ({size}, batch {batch_size}, LoRA r8 all-linear, {steps} steps) ...")
        res = {name: _spawn(name, model, data, steps, batch_size, root / name) for name in ("mlx_lm", "smolmac")}
        for name in ("mlx_lm", "smolmac"):
            res[name]["step_peak_memory_gb"] = _spawn("step", name, model, batch_size, 1024)["peak_memory_gb"]
    res["ratio_step_peak_memory"] = res["smolmac"]["step_peak_memory_gb"] / res["mlx_lm"]["step_peak_memory_gb"]
    res["ratio_tokens_per_second"] = res["smolmac"]["tokens_per_second"] / res["mlx_lm"]["tokens_per_second"]
    res["ratio_peak_memory"] = res["smolmac"]["peak_memory_gb"] / res["mlx_lm"]["peak_memory_gb"]
    return res


def bench_pretrain(size: str = "tiny", steps: int | None = None, batch_size: int = 8, on_message=print,
                   seq_len: int | None = None) -> dict:
    """Pretraining throughput and MFU (6N + attention FLOPs per token over the measured matmul
    peak) of a random-weight preset on random tokens, through smolmac's loop."""
    import time

    import mlx.core as mx
    import numpy as np
    from mlx_lm.models import llama

    from smolmac.config import TrainConfig
    from smolmac.losses import lm_loss
    from smolmac.models import preset_config
    from smolmac.pretrain import flops_per_token, mfu, peak_flops
    from smolmac.trainer import build_optimizer, train

    spec, vocab = SIZES[size]
    seq = seq_len or (256 if size == "tiny" else 2048)
    steps = steps or 20
    cfg = preset_config({**spec, "max_position_embeddings": max(seq, 256)}, vocab, 0, 1, 2)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    mx.eval(model.parameters())
    rng = np.random.default_rng(0)

    class Stream:
        def stream(self, start):
            while True:
                x = rng.integers(0, vocab, (batch_size, seq + 1)).astype(np.int32)
                yield (x[:, :-1], x[:, 1:], np.ones((batch_size, seq), np.float32)), batch_size * seq

    events = []
    on_message(f"bench pretrain ({size}, batch {batch_size} x {seq}, {steps} steps) ...")
    mx.reset_peak_memory()
    tic = time.perf_counter()
    train(model, build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1), steps), Stream(), lm_loss,
          total_steps=steps, on_event=lambda e: events.append(e.to_dict()), report_every=1)
    tr = [e for e in events if e["type"] == "train"]
    skip = tr[len(tr) // 5 - 1] if len(tr) >= 5 else tr[0]  # compilation
    tps = (tr[-1]["trained_tokens"] - skip["trained_tokens"]) / max(tr[-1]["elapsed_s"] - skip["elapsed_s"], 1e-9)
    fpt = flops_per_token(cfg, seq)
    peak = peak_flops()
    res = {"size": size, "tokens_per_second": tps, "flops_per_token": fpt, "peak_tflops": peak / 1e12,
           "mfu": mfu(tps, fpt, peak), "peak_memory_gb": mx.get_peak_memory() / 1e9, "wall_s": time.perf_counter() - tic}
    on_message(f"{tps:,.0f} tok/s, MFU {res['mfu']:.1%} of a measured {res['peak_tflops'] * 1000:.0f} GFLOP/s matmul peak, peak memory {res['peak_memory_gb']:.2f} GB")
    return res


def machine() -> str:
    import mlx.core as mx

    dev = mx.default_device()
    return f"{platform.system()} {platform.machine()}, {dev}, mlx {mx.__version__}"


def run_bench(what: str, size: str = "tiny", steps: int | None = None, batch_size: int = 8, out: str | None = None, on_message=print) -> dict:
    """Run one benchmark, print a table, optionally save JSON."""
    if what == "sft":
        res = bench_sft(size, steps, batch_size, on_message)
        on_message(f"{'system':10} {'tok/s':>10} {'run peak GB':>12} {'step peak GB':>13}")
        for name in ("mlx_lm", "smolmac"):
            r = res[name]
            on_message(f"{name:10} {r['tokens_per_second']:10.0f} {r['peak_memory_gb']:12.3f} {r['step_peak_memory_gb']:13.3f}")
        on_message(f"smolmac/mlx-lm: {res['ratio_tokens_per_second']:.2f}x tok/s, {res['ratio_peak_memory']:.2f}x run peak memory "
                   f"(depends on the batches each drew), {res['ratio_step_peak_memory']:.2f}x peak memory on the same {batch_size}x1024 batch")
    elif what == "dpo":
        from smolmac.preference import bench_dpo

        res = bench_dpo(size=size, steps=steps, batch_size=batch_size, on_message=on_message)
    else:
        res = bench_pretrain(size=size, steps=steps, batch_size=batch_size, on_message=on_message)
    res["machine"] = machine()
    on_message(f"machine: {res['machine']}")
    if out:
        Path(out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":  # worker: python -m smolmac.bench SYSTEM MODEL DATA STEPS BATCH OUT
    if sys.argv[1] == "step":  # python -m smolmac.bench step SYSTEM MODEL BATCH SEQ
        print(json.dumps(_worker_step_memory(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    else:
        system, model, data, steps, batch, out = sys.argv[1:7]
        print(json.dumps(WORKERS[system](model, data, int(steps), int(batch), out)))
