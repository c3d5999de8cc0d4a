"""Predicted (smolmac.memory.estimate) vs measured peak memory of smolmac's training step.

    python benchmarks/memory_table.py                 # the default grid, one process per point
    python benchmarks/memory_table.py --held-out      # points the coefficients were not fitted to
    python benchmarks/memory_table.py micro 2048 4 256 lora 0   # one point (worker mode)

Each point builds a random-weight Llama of the preset's shape, runs two compiled steps of
smolmac's loop (AdamW, clipping) on (B, L) tokens and reads mx.get_peak_memory().
"""

import json
import subprocess
import sys

GRID = [
    "nano 2048 8 256 lora 0", "micro 2048 4 256 lora 0", "micro 2048 8 256 lora 0", "micro 2048 4 512 lora 0",
    "micro 2048 4 1024 lora 0", "micro 2048 16 128 lora 0", "micro 2048 4 256 full 0", "micro 2048 4 256 lora 1",
    "nano 16384 4 256 lora 0", "micro 16384 4 256 lora 0", "micro 49152 4 256 lora 0", "micro 49152 8 512 lora 0",
    "mini 4096 4 256 lora 0", "mini 4096 8 512 lora 0", "mini 4096 4 256 full 0", "mini 16384 4 512 full 0",
    "mini 4096 4 256 lora 1", "mini 4096 8 512 lora 1", "mini 4096 4 1024 full 1", "mini 49152 2 1024 lora 0",
    "smollm2-135m 49152 2 256 lora 0", "smollm2-135m 49152 4 512 lora 1", "smollm2-135m 49152 2 512 full 0",
]

# Shapes none of the fitted points has (other vocabularies, batches, lengths, combinations):
# the estimate's error here is its out-of-sample error.
HELD_OUT = [
    "nano 4096 16 256 lora 0", "nano 32000 4 128 lora 0", "micro 8192 8 128 lora 1", "micro 4096 2 768 lora 0",
    "micro 32000 2 512 full 0", "mini 2048 2 512 lora 0", "mini 8192 8 256 lora 1", "mini 32000 4 128 full 1",
]


def measure(preset, vocab, B, L, mode, ckpt) -> float:
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models import llama

    from smolmac.config import LoraConfig, TrainConfig
    from smolmac.lora import apply_lora
    from smolmac.losses import lm_loss
    from smolmac.models import preset_config
    from smolmac.trainer import build_optimizer, train

    cfg = preset_config({"preset": preset, "max_position_embeddings": max(L, 256)}, vocab, 0, 1, 2)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    mx.eval(model.parameters())
    if mode == "lora":
        apply_lora(model, LoraConfig(rank=8, alpha=16))
    else:
        model.unfreeze()
    if ckpt:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])
    rng = np.random.default_rng(0)

    class Stream:
        def stream(self, start):
            while True:
                x = rng.integers(0, vocab, (B, L)).astype(np.int32)
                yield (x, x, np.ones((B, L), np.float32)), B * L

    mx.reset_peak_memory()
    train(model, build_optimizer(model, TrainConfig(lr=1e-4), 3), Stream(), lm_loss, total_steps=2, on_event=lambda e: None)
    return mx.get_peak_memory() / 1e9, cfg


def main():
    import smolmac  # noqa: F401  (optimised BLAS first)

    if len(sys.argv) == 7:
        preset, vocab, B, L, mode, ckpt = sys.argv[1:]
        peak, cfg = measure(preset, int(vocab), int(B), int(L), mode, ckpt == "1")
        print(json.dumps({"peak_gb": peak, "config": cfg}))
        return
    from smolmac.memory import estimate

    print(f"{'point':38} {'predicted GB':>12} {'measured GB':>12} {'error':>7}")
    errors = []
    for point in HELD_OUT if sys.argv[1:] == ["--held-out"] else GRID:
        out = subprocess.run([sys.executable, __file__, *point.split()], capture_output=True, text=True)
        if out.returncode:
            print(f"{point:38} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        preset, vocab, B, L, mode, ckpt = point.split()
        pred = estimate(res["config"], int(B), int(L), None if mode == "full" else 8, grad_checkpoint=ckpt == "1")["total_gb"]
        err = pred / res["peak_gb"] - 1
        errors.append(abs(err))
        print(f"{point:38} {pred:12.3f} {res['peak_gb']:12.3f} {err:+7.1%}")
    print(f"max |error| {max(errors):.1%}, mean {sum(errors) / len(errors):.1%}")


if __name__ == "__main__":
    main()
