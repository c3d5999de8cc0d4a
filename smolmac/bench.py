"""Benchmarks, one command each, same model/data/batch/rank/targets, every system in a fresh
process (so peak memory is its own):

    smolmac bench sft [--size tiny|135m] [--steps N] [--batch-size B] [--out results.json]
    smolmac bench dpo
    smolmac bench pretrain
    smolmac bench forgetting [--steps 300] [--work DIR]   # LoRA vs full: task score, retain ppl

`sft` trains the same random-weight model on the same variable-length chat rows (short and long
mixed) through smolmac and through `mlx_lm.tuner.train`, and reports for both: real (non-pad)
tokens per second at steady state (the second half of the run, every batch shape compiled), the
time the first half took, how many distinct batch shapes each compiled, model GFLOP/s and MFU
against a float32 matmul peak measured in the same run, peak memory, and the ratios.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # preset overrides and tokenizer vocab for each benchmark shape
    "tiny": ({"preset": "micro"}, 2048),
    "135m": ({"preset": "smollm2-135m"}, 49152),
}
ROWS = 96  # sft chat rows: 12 batches of 8, so the first 24 steps see every batch shape twice
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
    rows = chat_rows(ROWS)
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
    steps_seen: list[dict] = []

    def on_event(e):
        if e["type"] in ("start", "train"):  # wall clock at the start and after every step
            steps_seen.append({**e, "t": time.perf_counter()})

    mx.reset_peak_memory()
    smolmac.train(rec, run_dir=out, on_event=on_event)
    t0, tr = steps_seen[0]["t"], steps_seen[1:]
    return {"steps": [{"t": e["t"] - t0, "tokens": e["trained_tokens"], "own_s": e["elapsed_s"],
                       "loss": e["loss"]} for e in tr],
            "batch_shapes": tr[-1]["batch_shapes"], "peak_memory_gb": mx.get_peak_memory() / 1e9}


def _worker_mlx_lm(model: str, data: str, steps: int, batch: int, out: str) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner import trainer as mlx_trainer
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
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
    reports, shapes = [], set()

    class CB:
        def on_train_loss_report(self, info):
            reports.append({**info, "t": time.perf_counter()})

        def on_val_loss_report(self, info):
            pass

    def batches(**kw):  # mlx-lm's own batching; records the shapes its compiled step sees
        for arrays, lengths in mlx_trainer.iterate_batches(**kw):
            shapes.add(tuple(arrays.shape))
            yield arrays, lengths

    args = mlx_trainer.TrainingArgs(batch_size=batch, iters=steps, steps_per_report=1, steps_per_eval=10**9,
                                    steps_per_save=10**9, max_seq_length=1024,
                                    adapter_file=str(Path(out) / "adapters.safetensors"))
    Path(out).mkdir(parents=True, exist_ok=True)
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    mlx_trainer.train(m, optim.AdamW(learning_rate=1e-4), ds, None, args, iterate_batches=batches, training_callback=CB())
    own, out_steps = 0.0, []
    for r in reports:  # its own clock: each report's step time is 1 / iterations_per_second
        own += 1 / r["iterations_per_second"]
        out_steps.append({"t": r["t"] - t0, "tokens": r["trained_tokens"], "own_s": own, "loss": r["train_loss"]})
    return {"steps": out_steps, "batch_shapes": len(shapes), "peak_memory_gb": mx.get_peak_memory() / 1e9}


def steady_state(steps: list[dict]) -> dict:
    """Throughput over the second half of a run (every shape compiled by then, if the first half
    covered an epoch) and the time the first half took.

    Args:
        steps: one record per optimizer step: `t` wall seconds since training started, `tokens`
            trained so far, `own_s` the system's own cumulative training-time counter.
    """
    half = len(steps) // 2
    a, b = steps[half - 1], steps[-1]
    toks = b["tokens"] - a["tokens"]
    return {"tokens_per_second": toks / max(b["t"] - a["t"], 1e-9),
            "tokens_per_second_own_clock": toks / max(b["own_s"] - a["own_s"], 1e-9),
            "first_half_s": a["t"], "first_half_steps": half, "steady_steps": len(steps) - half,
            "final_loss": b["loss"]}


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


def _effective_seq(data: Path, model: str) -> float:
    """Token-weighted mean row length (sum n^2 / sum n): the context the attention FLOPs see."""
    from mlx_lm.utils import load_tokenizer

    from smolmac.config import DataConfig
    from smolmac.data import prepare_rows, tokenize_rows

    kind, rows = prepare_rows([json.loads(x) for x in data.read_text().splitlines()], DataConfig(), str(data))
    lengths = [min(len(e.tokens) - 1, 1024) for e in tokenize_rows(load_tokenizer(Path(model)), kind, rows)]
    return sum(n * n for n in lengths) / max(sum(lengths), 1)


def bench_sft(size: str = "tiny", steps: int | None = None, batch_size: int = 8, on_message=print) -> dict:
    """smolmac vs mlx-lm LoRA SFT on the same model, rows and batch, each in a fresh process.

    Throughput is the steady state: trained (non-pad) tokens over wall-clock seconds of the
    second half of the run, when both systems have compiled their batch shapes (the default
    step counts make the first half two epochs of the ROWS rows at batch 8). The first half's
    time is reported separately, with the number of distinct batch shapes each compiled. Model
    FLOPs/s and MFU (LoRA: 4N + attention FLOPs per token) are against a float32 matmul peak
    measured here, before the runs.
    """
    from smolmac.flops import flops_per_token, mfu, peak_flops

    steps = steps or 48
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = make_fixture(root, size)
        on_message(f"bench sft ({size}, batch {batch_size}, LoRA r8 all-linear, float32, {steps} steps; "
                   f"steady state = the last {steps - steps // 2}) ...")
        peak = peak_flops("float32")
        config = json.loads((model / "config.json").read_text())
        fpt = flops_per_token(config, _effective_seq(data, str(model)), trainable_fraction=0.0)
        res = {"size": size, "steps": steps, "batch_size": batch_size, "flops_per_token": fpt,
               "peak_gflops": peak / 1e9}
        for name in ("mlx_lm", "smolmac"):
            raw = _spawn(name, model, data, steps, batch_size, root / name)
            r = {**steady_state(raw["steps"]), "batch_shapes": raw["batch_shapes"], "peak_memory_gb": raw["peak_memory_gb"]}
            r["model_gflops"] = r["tokens_per_second"] * fpt / 1e9
            r["mfu"] = mfu(r["tokens_per_second"], fpt, peak)
            r["step_peak_memory_gb"] = _spawn("step", name, model, batch_size, 1024)["peak_memory_gb"]
            res[name] = r
    s, m = res["smolmac"], res["mlx_lm"]
    res["ratio_tokens_per_second"] = s["tokens_per_second"] / m["tokens_per_second"]
    res["ratio_tokens_per_second_own_clock"] = s["tokens_per_second_own_clock"] / m["tokens_per_second_own_clock"]
    res["ratio_first_half_time"] = s["first_half_s"] / m["first_half_s"]
    res["ratio_peak_memory"] = s["peak_memory_gb"] / m["peak_memory_gb"]
    res["ratio_step_peak_memory"] = s["step_peak_memory_gb"] / m["step_peak_memory_gb"]
    return res


def print_sft(res: dict, on_message=print):
    """The `bench sft` table: steady state first, then the warm-up and memory."""
    half = res["smolmac"]["first_half_steps"]
    on_message(f"{'system':8} {'steady tok/s':>12} {'GFLOP/s':>8} {'MFU':>6} {'shapes':>6} "
               f"{f'first {half} steps s':>17} {'run peak GB':>11} {'step peak GB':>12}")
    for name in ("mlx_lm", "smolmac"):
        r = res[name]
        on_message(f"{name:8} {r['tokens_per_second']:12,.0f} {r['model_gflops']:8.1f} {r['mfu']:6.1%} {r['batch_shapes']:6d} "
                   f"{r['first_half_s']:17.1f} {r['peak_memory_gb']:11.3f} {r['step_peak_memory_gb']:12.3f}")
    on_message(f"smolmac/mlx-lm at steady state: {res['ratio_tokens_per_second']:.2f}x tok/s "
               f"({res['ratio_tokens_per_second_own_clock']:.2f}x by each system's own step clock); "
               f"time to the first {half} steps (compilation included): {res['ratio_first_half_time']:.2f}x; "
               f"peak memory on the same {res['batch_size']}x1024 batch: {res['ratio_step_peak_memory']:.2f}x")
    on_message(f"MFU: model FLOPs ({res['flops_per_token'] / 1e6:.1f} MFLOP/token, LoRA 4N + attention) over a "
               f"float32 matmul peak of {res['peak_gflops']:.0f} GFLOP/s measured here")


def bench_pretrain(size: str = "tiny", steps: int | None = None, batch_size: int = 8, on_message=print,
                   seq_len: int | None = None) -> dict:
    """Pretraining throughput and MFU (6N + attention FLOPs per token over the measured matmul
    peak) of a random-weight preset on random tokens, through smolmac's loop."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models import llama

    from smolmac.config import TrainConfig
    from smolmac.flops import flops_per_token, mfu, peak_flops
    from smolmac.losses import lm_loss
    from smolmac.models import preset_config
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


# ---------------------------------------------------------------------------------------------
# `smolmac bench dpo`: a DPO step against SFT steps on the same rows


class _Repeat:
    """One fixed micro-batch, forever (the `stream` interface of the loop); `times` records when
    each step asked for its batch, so their differences are whole step times."""

    def __init__(self, arrays, ntok):
        self.arrays, self.ntok, self.times = arrays, ntok, []

    def __len__(self):
        return 1

    def stream(self, start=0):
        while True:
            self.times.append(time.perf_counter())
            yield self.arrays, self.ntok


def _synthetic_pairs(vocab: int, n: int, max_len: int, seed: int) -> list:
    """Random-token pairs filling max_len + 1 tokens: a quarter prompt, the rest completion."""
    import numpy as np

    from smolmac.data import Example

    rng = np.random.default_rng(seed)
    p = (max_len + 1) // 4
    pairs = []
    for _ in range(n):
        prompt = rng.integers(4, vocab, p)
        sides = [np.concatenate([prompt, rng.integers(4, vocab, max_len + 1 - p)]).astype(np.int32) for _ in range(2)]
        mask = np.arange(max_len + 1) >= p
        pairs.append((Example(sides[0], mask), Example(sides[1], mask.copy())))
    return pairs


def _time_steps(model, tcfg, arrays, ntok, loss_fn, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds per optimizer step after `warmup` steps (compilation), and peak bytes."""
    import mlx.core as mx
    import numpy as np

    from smolmac.trainer import build_optimizer
    from smolmac.trainer import train as train_loop

    optimizer = build_optimizer(model, tcfg, warmup + steps + 1)
    batches = _Repeat(arrays, ntok)
    mx.clear_cache()
    mx.reset_peak_memory()
    train_loop(model, optimizer, batches, loss_fn, total_steps=warmup + steps + 1, on_event=lambda e: None,
               grad_clip=tcfg.grad_clip, report_every=1)
    # median: robust to other processes taking the CPU for a moment
    return float(np.median(np.diff(batches.times)[warmup:])), mx.get_peak_memory()


def bench_dpo(size: str = "tiny", steps: int | None = None, batch_size: int = 8, on_message=print, *,
              model: str | None = None, data_path: str | None = None, max_seq_len: int = 256, warmup: int = 2,
              rounds: int = 2, full: bool = False, dtype: str = "float32", seed: int = 0) -> dict:
    """DPO step time and peak memory against SFT on the same pairs and batch (`smolmac bench dpo`).

    One micro-batch of `batch_size` pairs, (2B, L) for DPO, is trained for warmup + steps
    optimizer steps with each loss through the same compiled loop, in one process, in `rounds`
    rounds of rotating order; a config's time is its fastest round's median step. Baselines:
    SFT on the same (2B, L) rows (chosen and rejected replies as SFT examples: the same tokens;
    the targets apply to this one) and SFT on the (B, L) chosen rows alone. The one-off reference
    pass is timed separately.

    Args:
        size: "tiny" or "135m": a random-weight model of that shape (smolmac.bench.SIZES).
        steps: timed steps per round (default 10); `warmup` untimed ones come first.
        batch_size: pairs per micro-batch.
        on_message: receives the printed lines.
        model: an mlx-lm model (Hub id or directory) instead of `size`.
        data_path: preference data (file or Hub id); None = random-token pairs filling max_seq_len.
        full: full fine-tuning instead of LoRA (default `lora` settings).
    Returns:
        dict with step seconds, peak GB, the ratios and the targets (time <= 2.2, memory <= 1.15).
    """
    import importlib.util

    from smolmac import data
    from smolmac.config import Config, DataConfig
    from smolmac.data import hf_tokenizer
    from smolmac.errors import UserError
    from smolmac.lora import apply_lora
    from smolmac.losses import lm_loss
    from smolmac.methods.dpo import loss
    from smolmac.methods.preference import PairBatches, reference_logps, tokenize_pairs
    from smolmac.methods.sft import pad_id
    from smolmac.models import load_model

    steps = steps or 10
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            model_dir = str(make_fixture(Path(tmp), size)[0])
        else:
            model_dir = model
        cfg = Config(model=model_dir, method="dpo", full=full)
        cfg.train.dtype, cfg.train.lr, cfg.train.schedule, cfg.train.max_seq_len = dtype, 1e-6, "constant", max_seq_len
        net, tokenizer, _, _ = load_model(model_dir, dtype)
    if full:
        net.unfreeze()
    else:
        apply_lora(net, cfg.lora, seed=seed)
    if data_path:
        _, rows = data.prepare_rows(data.load_rows(data_path), DataConfig(), data_path)
        pairs = tokenize_pairs(tokenizer, rows[: batch_size * 4], max_seq_len)[0][:batch_size]
    else:
        pairs = _synthetic_pairs(len(hf_tokenizer(tokenizer)), batch_size, max_seq_len, seed)
    if len(pairs) < batch_size:
        raise UserError(f"{data_path}: only {len(pairs)} usable pairs; the benchmark needs --batch-size {batch_size} of them.")
    name = model or size
    on_message(f"bench dpo ({name}, {'full' if full else 'LoRA r8 all-linear'}, {batch_size} pairs x {max_seq_len} tokens, {steps} steps) ...")
    batches = PairBatches(pairs, batch_size, max_seq_len, seed, pad_id(tokenizer))
    tic = time.perf_counter()
    batches.ref = reference_logps(net, batches)
    ref_s = time.perf_counter() - tic
    (inputs, targets, mask, valid, ref), ntok = batches.make(batches.groups[0])
    b = len(pairs)
    runs = {
        "sft": ((inputs, targets, mask), ntok, lm_loss),
        "sft_chosen": ((inputs[:b], targets[:b], mask[:b]), int(valid[:b].sum()), lm_loss),
        "dpo": ((inputs, targets, mask, valid, ref), ntok, loss(cfg)),
    }
    res = {"model": name, "mode": "full" if full else "lora", "dtype": dtype, "pairs_per_batch": b,
           "seq_len": int(inputs.shape[1]), "steps": steps, "rounds": rounds}
    keys = list(runs)
    timings: dict[str, list] = {k: [] for k in keys}
    for r in range(rounds):  # rotate the order: no config always runs first (or after another)
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            arrays, n, loss_fn = runs[key]
            timings[key].append(_time_steps(net, cfg.train, arrays, n, loss_fn, steps, warmup))
    on_message(f"{'loss on the batch':28} {'step s':>8} {'peak GB':>8}")
    labels = {"sft": f"SFT, same {2 * b} rows", "sft_chosen": f"SFT, {b} chosen rows only", "dpo": f"DPO, {b} pairs"}
    for key in keys:
        sec, peak = min(t for t, _ in timings[key]), max(m for _, m in timings[key])
        res[f"{key}_step_s"], res[f"{key}_peak_gb"] = round(sec, 5), round(peak / 1e9, 4)
        on_message(f"{labels[key]:28} {sec:8.4f} {peak / 1e9:8.4f}")
    res["time_ratio"] = round(res["dpo_step_s"] / res["sft_step_s"], 3)
    res["memory_ratio"] = round(res["dpo_peak_gb"] / res["sft_peak_gb"], 3)
    res["time_ratio_vs_chosen_only"] = round(res["dpo_step_s"] / res["sft_chosen_step_s"], 3)
    res["memory_ratio_vs_chosen_only"] = round(res["dpo_peak_gb"] / res["sft_chosen_peak_gb"], 3)
    res["ref_logps_s"] = round(ref_s, 4)
    res["targets"] = {"time_ratio": 2.2, "memory_ratio": 1.15}
    res["mlx_lm_lora"] = "installed, not compared" if importlib.util.find_spec("mlx_lm_lora") else "not installed"
    on_message(f"DPO/SFT on the same rows: {res['time_ratio']:.2f}x step time (target <= 2.2), "
               f"{res['memory_ratio']:.2f}x peak memory (target <= 1.15); vs SFT on the chosen rows only: "
               f"{res['time_ratio_vs_chosen_only']:.2f}x, {res['memory_ratio_vs_chosen_only']:.2f}x")
    on_message(f"reference log-probs: {ref_s:.2f} s once for {b} pairs (cached per run); mlx-lm-lora: {res['mlx_lm_lora']}")
    return res


def machine() -> str:
    import mlx.core as mx

    dev = mx.default_device()
    return f"{platform.system()} {platform.machine()}, {dev}, mlx {mx.__version__}"


def run_bench(what: str, size: str = "tiny", steps: int | None = None, batch_size: int = 8, out: str | None = None, on_message=print,
              work: str | None = None) -> dict:
    """Run one benchmark, print a table, optionally save JSON (`work`: forgetting's folder)."""
    if what == "forgetting":  # LoRA vs full fine-tuning: task score and retain perplexity (smolmac/forgetting.py)
        from smolmac.forgetting import bench_forgetting

        res = bench_forgetting(steps=steps, work=work, on_message=on_message)
    elif what == "sft":
        res = bench_sft(size, steps, batch_size, on_message)
        print_sft(res, on_message)
    elif what == "dpo":
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
