"""Memory of one base with N adapters (smolmac.load) against N separately loaded base + adapter
models (what loading each adapter alone costs), measured with mx.get_active_memory().

    python benchmarks/adapters_memory.py                       # smollm2-135m shape, 3 adapters
    python benchmarks/adapters_memory.py micro 2048 3 8        # preset, vocab, adapters, rank

The base is a random-weight Llama of the preset's shape saved in a temp dir (nothing downloads);
each adapter is LoRA on every linear layer of every block, with random weights. Each side runs in
a fresh process so that neither sees the other's arrays.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import smolmac  # noqa: F401  (the optimised BLAS before mlx)


def build(root: Path, preset: str, vocab: int, n: int, rank: int) -> tuple[Path, list[Path]]:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models import llama

    from smolmac.config import LoraConfig
    from smolmac.lora import apply_lora, save_adapter
    from smolmac.models import init_weights, preset_config, save_model_dir
    from smolmac.tokenizer import train_tokenizer

    cfg = preset_config({"preset": preset}, vocab, 0, 1, 2)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    init_weights(model, cfg, seed=0)
    base = save_model_dir(model, None, cfg, root / "base")
    train_tokenizer(["a small corpus for a tokenizer the model never uses"] * 8, base, vocab_size=300)  # mlx-lm needs one
    adapters = []
    for i in range(n):
        config = apply_lora(model, LoraConfig(rank=rank, alpha=2 * rank), seed=i)
        model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.01) for k, v in tree_flatten(model.trainable_parameters())]))
        adapters.append(save_adapter(model, config, root / f"adapter-{i}", {"model": str(base)}))
        model = llama.Model(llama.ModelArgs.from_dict(cfg))  # a fresh base for the next adapter
        model.load_weights(str(base / "model.safetensors"), strict=False)
    return base, adapters


def measure(mode: str, base: str, adapters: list[str]) -> dict:
    import mlx.core as mx

    from smolmac.adapters import attach
    from smolmac.generate import load
    from smolmac.models import load_model

    keep = []
    if mode == "one-base":
        handle = load(base, {f"a{i}": a for i, a in enumerate(adapters)}, dtype="float32")
        keep.append(handle)
        info = handle.inspect()
    else:  # each adapter on its own copy of the base
        for a in adapters:
            model, *_ = load_model(base, "float32")
            attach(model, a)
            keep.append(model)
        info = None
    mx.eval([m.model.parameters() if hasattr(m, "model") else m.parameters() for m in keep])
    return {"mode": mode, "active_mb": mx.get_active_memory() / 1e6, "inspect": info}


def main():
    if sys.argv[1:2] == ["worker"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4:])))
        return
    preset, vocab, n, rank = (sys.argv[1:5] + ["smollm2-135m", "49152", "3", "8"][len(sys.argv[1:5]):])
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = build(Path(tmp), preset, int(vocab), int(n), int(rank))
        res = {}
        for mode in ("one-base", "separate"):
            out = subprocess.run([sys.executable, __file__, "worker", mode, str(base), *map(str, adapters)], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    info = res["one-base"]["inspect"]
    sizes = ", ".join(f"{a['mb']:.2f}" for a in info["adapters"].values())
    print(f"{preset} (vocab {vocab}, {info['base']['params'] / 1e6:.1f}M params, float32), {n} LoRA r{rank} all-linear adapters")
    print(f"inspect(): base {info['base']['mb']:.1f} MB, adapters {sizes} MB")
    print(f"one base + {n} adapters (smolmac.load):   {res['one-base']['active_mb']:8.1f} MB active")
    print(f"{n} separately loaded base + adapter:    {res['separate']['active_mb']:8.1f} MB active")
    print(f"ratio: {res['separate']['active_mb'] / res['one-base']['active_mb']:.2f}x")


if __name__ == "__main__":
    main()
