"""Where the time of a LoRA SFT step goes, on a random-weight model of a preset's shape.

    python benchmarks/profile_step.py                          # SmolLM2-135M shape, 49k vocab, B=4 x 256
    python benchmarks/profile_step.py micro 2048 8 256         # preset vocab batch seq

Each part is its own compiled function on one fixed batch, timed as the best of `REPS` rounds
after a warm-up (compilation), all parts and a 1024^3 fp32 matmul (the peak) once per round:
  step            value_and_grad of lm_loss w.r.t. the LoRA weights + AdamW (what the loop runs)
  body            the same without the head: loss = sum of the final hidden states
  attention       every block's self-attention alone, forward + backward (input gradient)
  mlp             every block's MLP alone, forward + backward (input gradient)
  frozen body     the body with gradients w.r.t. the embeddings' output only (no LoRA gradients)
  optimizer       AdamW on gradients of the LoRA weights' shape
  loop            one step of smolmac's loop (batch building, host transfers, reporting included)
Derived: head + cross-entropy = step - body - optimizer; LoRA = body - frozen body; host =
loop - step. MFU = model FLOPs (LoRA: 4N + attention) / measured fp32 matmul peak.
"""

import sys
import time

import smolmac  # noqa: F401  (first: it loads an optimised BLAS before MLX starts)

REPS = 5


def best_of_rounds(parts: dict, rounds: int) -> dict:
    """Best seconds of each `name: (fn, args)` over `rounds` rounds, every part once per round
    (interleaved, so a busy moment of a shared machine does not fall on one part only)."""
    import mlx.core as mx

    for fn, args in parts.values():
        mx.eval(fn(*args))  # compile
    out = dict.fromkeys(parts, float("inf"))
    for _ in range(rounds):
        for name, (fn, args) in parts.items():
            tic = time.perf_counter()
            mx.eval(fn(*args))
            out[name] = min(out[name], time.perf_counter() - tic)
    return out


def main(preset="smollm2-135m", vocab=49152, batch=4, seq=256):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_map
    from mlx_lm.models import llama

    from smolmac.config import LoraConfig, TrainConfig
    from smolmac.flops import flops_per_token
    from smolmac.lora import apply_lora
    from smolmac.losses import hidden_states, lm_loss
    from smolmac.models import preset_config
    from smolmac.trainer import build_optimizer, train

    cfg = preset_config({"preset": preset, "max_position_embeddings": max(seq, 256)}, vocab, 0, 1, 2)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    mx.eval(model.parameters())
    apply_lora(model, LoraConfig(rank=8, alpha=16))
    x = np.random.default_rng(0).integers(0, vocab, (batch, seq + 1)).astype(np.int32)
    inputs, targets, mask = mx.array(x[:, :-1]), mx.array(x[:, 1:]), mx.ones((batch, seq))
    opt = optim.AdamW(learning_rate=1e-4)
    opt.init(model.trainable_parameters())
    state = [model.state, opt.state]
    lg = nn.value_and_grad(model, lm_loss)

    def step(i, t, m):
        (loss, n, _), g = lg(model, i, t, m)
        opt.update(model, g)
        return loss

    def body_loss(model, i):
        return hidden_states(model, i).sum()

    bg = nn.value_and_grad(model, body_loss)
    layer = model.model.layers[0]
    h = mx.random.normal((batch, seq, cfg["hidden_size"])) * 0.1
    mask_c = "causal"

    def attn(h):
        return sum(lay.self_attn(lay.input_layernorm(h), mask_c).sum() for lay in model.model.layers)

    def mlp(h):
        return sum(lay.mlp(lay.post_attention_layernorm(h)).sum() for lay in model.model.layers)

    def frozen(h0):
        for lay in model.model.layers:
            h0 = lay(h0, mask_c)
        return model.model.norm(h0).sum()

    grads = tree_map(lambda p: mx.ones_like(p) * 1e-3, model.trainable_parameters())
    opt2 = optim.AdamW(learning_rate=1e-4)
    opt2.init(model.trainable_parameters())
    params = model.trainable_parameters()

    def adam(g):
        return opt2.apply_gradients(g, params)

    del layer
    n = 1024  # the matmul peak, timed in the same rounds (smolmac.flops.peak_flops does it once)
    a = mx.random.normal((n, n))
    parts = best_of_rounds({
        "step": (mx.compile(step, inputs=state, outputs=state), (inputs, targets, mask)),
        "body": (mx.compile(lambda i: bg(model, i)), (inputs,)),
        "attention": (mx.compile(mx.value_and_grad(attn)), (h,)),
        "mlp": (mx.compile(mx.value_and_grad(mlp)), (h,)),
        "frozen body": (mx.compile(mx.value_and_grad(frozen)), (h,)),
        "optimizer": (mx.compile(adam), (grads,)),
        "matmul 1024^3": (lambda m: m @ m, (a,)),
    }, REPS)
    peak = 2 * n**3 / parts.pop("matmul 1024^3")
    stamps = []

    class Stream:  # the loop on the same numpy batch: its own host work included
        def stream(self, start):
            while True:
                stamps.append(time.perf_counter())
                yield (x[:, :-1], x[:, 1:], np.ones((batch, seq), np.float32)), batch * seq

    train(model, build_optimizer(model, TrainConfig(lr=1e-4), REPS + 2), Stream(), lm_loss, total_steps=REPS + 2,
          on_event=lambda e: None, report_every=1)
    parts["loop"] = float(min(np.diff(stamps)[1:]))
    p = parts
    derived = {"head + cross-entropy": p["step"] - p["body"] - p["optimizer"], "LoRA (body - frozen body)": p["body"] - p["frozen body"],
               "host (loop - step)": p["loop"] - p["step"]}
    tokens = batch * seq
    fpt = flops_per_token(cfg, seq, 0.0)
    print(f"{preset} vocab {vocab}, batch {batch} x {seq}, LoRA r8 all-linear, float32; matmul peak {peak / 1e9:.0f} GFLOP/s")
    for name, sec in {**parts, **derived}.items():
        print(f"{name:28} {sec * 1000:9.1f} ms  {sec / p['step']:6.1%} of the step")
    tps = tokens / p["loop"]
    print(f"loop: {tps:,.0f} tok/s, {tps * fpt / 1e9:.1f} GFLOP/s of model FLOPs ({fpt / 1e6:.0f} MFLOP/token), MFU {tps * fpt / peak:.1%}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(args[:1] + [int(a) for a in args[1:]]))
