"""Fit and check the step-time model `train.batch_size: auto` ranks settings with
(smolmac.memory.predicted_tokens_per_second): seconds per optimizer step =
MICRO_OVERHEAD_S per micro-batch + model FLOPs / (measured matmul peak * STEP_MFU).

    python benchmarks/auto_batch.py                   # every setting, one process each
    python benchmarks/auto_batch.py micro 16 4 0      # one point (worker): preset, effective, micro, ckpt

Each point trains a random-weight preset (vocab 2048, LoRA r8 all-linear, float32) on random
(micro, 256) token batches through smolmac's loop, `effective / micro` micro-batches per step, and
reports the median seconds per optimizer step after two warm-up steps. The two constants are
fitted by least squares over all points; the table shows measured vs predicted tokens/s.
"""

import json
import subprocess
import sys
import time

SEQ, VOCAB = 256, 2048
POINTS = ["micro 16 1 0", "micro 16 2 0", "micro 16 4 0", "micro 16 8 0", "micro 16 16 0", "micro 16 4 1", "micro 16 16 1"]


def measure(preset: str, effective: int, micro: int, ckpt: bool, steps: int = 4, warmup: int = 2) -> dict:
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models import llama

    from smolmac.config import LoraConfig, TrainConfig
    from smolmac.lora import apply_lora
    from smolmac.losses import lm_loss
    from smolmac.models import preset_config
    from smolmac.trainer import build_optimizer, train

    cfg = preset_config({"preset": preset, "max_position_embeddings": SEQ}, VOCAB, 0, 1, 2)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    mx.eval(model.parameters())
    apply_lora(model, LoraConfig(rank=8, alpha=16))
    if ckpt:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])
    x = np.random.default_rng(0).integers(0, VOCAB, (micro, SEQ + 1)).astype(np.int32)
    arrays = (x[:, :-1], x[:, 1:], np.ones((micro, SEQ), np.float32))
    times = []

    class Stream:  # the same micro-batch forever; records when each step asks for its first one
        def stream(self, start):
            k = 0
            while True:
                if k % (effective // micro) == 0:
                    times.append(time.perf_counter())
                k += 1
                yield arrays, micro * SEQ

    total = warmup + steps + 1
    train(model, build_optimizer(model, TrainConfig(lr=1e-4), total), Stream(), lm_loss, total_steps=total,
          grad_accum=effective // micro, on_event=lambda e: None, report_every=1)
    return {"step_s": float(np.median(np.diff(times)[warmup:])), "config": cfg}


def main():
    import smolmac  # noqa: F401  (optimised BLAS first)

    if len(sys.argv) == 5:
        preset, effective, micro, ckpt = sys.argv[1:]
        print(json.dumps(measure(preset, int(effective), int(micro), ckpt == "1")))
        return
    import numpy as np

    from smolmac import memory
    from smolmac.flops import flops_per_token, peak_flops

    peak = peak_flops("float32")
    rows = []
    for point in POINTS:
        out = subprocess.run([sys.executable, __file__, *point.split()], capture_output=True, text=True)
        if out.returncode:
            print(f"{point}: failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        preset, effective, micro, ckpt = point.split()
        e, b, c = int(effective), int(micro), ckpt == "1"
        flops = e * SEQ * flops_per_token(res["config"], SEQ, 0.0) * (1 + 0.5 * c)
        rows.append((point, e // b, flops / peak, res["step_s"], e * SEQ, res["config"], e, b, c))
    # step_s = accum * overhead + (flops / peak) / mfu: linear least squares in (overhead, 1 / mfu)
    a = np.array([[r[1], r[2]] for r in rows])
    (overhead, inv_mfu), *_ = np.linalg.lstsq(a, np.array([r[3] for r in rows]), rcond=None)
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s; fitted MICRO_OVERHEAD_S = {overhead:.4f}, STEP_MFU = {1 / inv_mfu:.3f}")
    memory.MICRO_OVERHEAD_S, memory.STEP_MFU = overhead, 1 / inv_mfu
    print(f"{'point (preset effective micro ckpt)':36} {'measured tok/s':>14} {'predicted tok/s':>15} {'error':>7}")
    for point, _, _, step_s, tokens, cfg, e, b, c in rows:
        pred = memory.predicted_tokens_per_second(cfg, e, b, SEQ, c, False, peak)
        print(f"{point:36} {tokens / step_s:14,.0f} {pred:15,.0f} {pred * step_s / tokens - 1:+7.1%}")


if __name__ == "__main__":
    main()
