"""Data parallel: measured steps/s of 1 vs N local processes, bytes all-reduced per step for LoRA
vs full fine-tuning of a model shape, and a paper estimate for two Macs over Thunderbolt.

    python benchmarks/data_parallel.py                     # tiny model, 1 vs 2 processes, 135M bytes
    python benchmarks/data_parallel.py --steps 60 --nproc 2 --bandwidth-gbit 10 --tflops 4

Both runs train the same recipe (smolmac bench's `tiny` fixture: micro preset, 2,048 vocab, LoRA
r8 on every linear layer, the same variable-length chat rows) with the same global batch through
`smolmac train`, each in a fresh process group; steps/s skips the first fifth of the steps
(compilation of new shapes). Bytes per step are the float32 gradients of the trainable
parameters of the SmolLM2-135M shape (a random model from `smolmac.bench.make_fixture`), which is
what every process contributes to the all-reduce; the ring sends 2 (N - 1) / N of that per
process. The estimate assumes the step's compute splits evenly and does not overlap with the
all-reduce (MLX evaluates the step, then the all-reduce).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def steps_per_second(run_dir: Path) -> tuple[float, float]:
    from smolmac.events import read_events

    tr = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "train"]
    skip = tr[len(tr) // 5 - 1]
    dt = tr[-1]["elapsed_s"] - skip["elapsed_s"]
    return (tr[-1]["step"] - skip["step"]) / dt, (tr[-1]["trained_tokens"] - skip["trained_tokens"]) / dt


def measure(root: Path, steps: int, batch: int, nproc: int) -> dict:
    from smolmac.bench import make_fixture

    model, data = make_fixture(root / "fixture", "tiny")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(model), "data": {"train": str(data)}, "lora": {"rank": 8, "alpha": 16, "targets": "all-linear"},
        "train": {"steps": steps, "batch_size": batch, "lr": 1e-4, "max_seq_len": 1024, "report_every": 1},
    }))
    out = {}
    for n in (1, nproc):
        run_dir = root / f"run-{n}"
        cmd = [sys.executable, "-m", "smolmac.cli", "train", str(recipe), "--run-dir", str(run_dir), "--quiet"]
        tic = time.perf_counter()
        subprocess.run(cmd + (["--nproc", str(n)] if n > 1 else []), check=True)
        sps, tps = steps_per_second(run_dir)
        out[n] = {"steps_per_second": round(sps, 3), "tokens_per_second": round(tps, 1), "wall_s": round(time.perf_counter() - tic, 1)}
    return out


def gradient_bytes(root: Path) -> dict:
    """Float32 gradient bytes per step of the SmolLM2-135M shape: LoRA r8 all-linear vs full."""
    from smolmac.bench import make_fixture
    from smolmac.config import LoraConfig
    from smolmac.distributed import gradient_bytes as nbytes
    from smolmac.lora import apply_lora, trainable_count
    from smolmac.models import load_model

    model_dir, _ = make_fixture(root / "fixture-135m", "135m")
    model, *_ = load_model(str(model_dir))
    model.unfreeze()
    full = (trainable_count(model), nbytes(model))
    model, *_ = load_model(str(model_dir))
    apply_lora(model, LoraConfig(rank=8, alpha=16, targets="all-linear"))
    lora = (trainable_count(model), nbytes(model))
    return {"lora_r8_params": lora[0], "lora_r8_bytes": lora[1], "full_params": full[0], "full_bytes": full[1]}


def estimate(grads: dict, bandwidth_gbit: float, tflops: float, tokens: int, n: int = 2) -> dict:
    """Step time on one Mac vs n Macs for the 135M shape, same global batch of `tokens` tokens.

    FLOPs per token: 6 x params for full fine-tuning (forward 2, backward 4), 4 x params for LoRA
    (the frozen weights need no weight gradient); the ring sends 2 (n - 1) / n of the gradients.
    """
    params = grads["full_params"]
    out = {}
    for name, flops_per_token, payload in (("lora", 4 * params, grads["lora_r8_bytes"]), ("full", 6 * params, grads["full_bytes"])):
        one = flops_per_token * tokens / (tflops * 1e12)
        comm = 2 * (n - 1) / n * payload / (bandwidth_gbit * 1e9 / 8)
        out[name] = {"step_1_mac_s": round(one, 3), "compute_per_mac_s": round(one / n, 3), "allreduce_s": round(comm, 4),
                     "speedup": round(one / (one / n + comm), 2)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--bandwidth-gbit", type=float, default=10.0, help="assumed all-reduce bandwidth (TCP over a Thunderbolt bridge)")
    p.add_argument("--tflops", type=float, default=4.0, help="assumed sustained TFLOP/s of one Mac on the 135M step")
    p.add_argument("--tokens", type=int, default=8 * 512, help="tokens per global batch for the estimate")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = {"measured": measure(root, args.steps, args.batch_size, args.nproc), "gradients_135m": gradient_bytes(root)}
    result["estimate_2_macs"] = estimate(result["gradients_135m"], args.bandwidth_gbit, args.tflops, args.tokens)
    result["assumptions"] = {"bandwidth_gbit": args.bandwidth_gbit, "tflops": args.tflops, "tokens_per_step": args.tokens}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
