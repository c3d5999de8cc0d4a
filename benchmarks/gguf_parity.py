"""GGUF and quantised-MLX exports against smolmac's float32 model, judged by llama.cpp itself
(llama-cpp-python) and mlx-lm, for three random-weight Llama shapes:

    python benchmarks/gguf_parity.py            # tiny, quickstart, smollm2-135m (needs llama-cpp-python)
    python benchmarks/gguf_parity.py tiny       # one of them
    python benchmarks/gguf_parity.py runs/quickstart   # a trained run or pipeline (what it exports)

- tiny: the `nano` preset (hidden 64, 2 layers), a 320-token BPE tokenizer (the tests' fixture);
- quickstart: the `micro` preset with the 416-token tokenizer trained on smolmac/quickstart/corpus.txt;
- smollm2-135m: the `smollm2-135m` preset, vocab padded to 49,152 as smolmac/bench.py does.

For each GGUF type: file size, max |logit difference| at the last of 64 positions and over all 64
(llama.cpp with an f32 KV cache vs MLX float32 on the same ids), greedy (argmax) agreement over the
64 positions; llama.cpp's tokens vs the Hugging Face tokenizer's on the tests' 20 strings and a
chat. For mlx-q8/mlx-q4: size, argmax agreement, and the share of 32 greedily generated tokens
equal to float32's.
"""

import sys
import tempfile
import time
from pathlib import Path

import smolmac  # noqa: F401  (BLAS before mlx)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
GGUF_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]


def build(name: str, root: Path) -> Path:
    """A full fine-tune run dir (config.yaml + model/) holding a random-weight model."""
    from conftest import corpus

    from smolmac.bench import WORDS, chat_rows
    from smolmac.config import load_recipe
    from smolmac.models import new_model
    from smolmac.tokenizer import train_tokenizer

    run = root / name
    if name == "tiny":
        tok = train_tokenizer(corpus(), root / "tok-tiny", vocab_size=320)
        new_model({"preset": "nano", "initializer_range": 0.1}, tok, run / "model")
    elif name == "quickstart":
        docs = (ROOT / "smolmac" / "quickstart" / "corpus.txt").read_text().split("\n\n")
        tok = train_tokenizer(docs, root / "tok-qs", vocab_size=416)
        new_model({"preset": "micro"}, tok, run / "model")
    else:
        texts = [m["content"] for r in chat_rows(256) for m in r["messages"]] + [" ".join(WORDS)] * 10
        tok = train_tokenizer(texts, root / "tok-135m", vocab_size=300)
        new_model({"preset": "smollm2-135m", "vocab_size": 49152}, tok, run / "model")
    (run / "config.yaml").write_text(load_recipe({"model": str(run / "model"), "full": True}).to_yaml())
    return run


def measure(name: str) -> list[str]:
    """The table rows for a preset name (a random-weight model built here) or a run directory."""
    import llama_cpp
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load, stream_generate
    from test_gguf import STRINGS, TEXT

    from smolmac.data import hf_tokenizer
    from smolmac.export import export_run
    from smolmac.export.sizes import human_size, on_disk
    from smolmac.models import load_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if Path(name).is_dir():
            from smolmac.export.hf import fused_model
            from smolmac.export.sources import open_source

            run = Path(name)
            model, tok, config = fused_model(open_source(run), lambda _m: None)
            name = run.name
        else:
            run = build(name, Path(tmp))
            model, tok, config, _ = load_model(str(run / "model"))
        text = (ROOT / "smolmac" / "quickstart" / "corpus.txt").read_text()[:400] + " " + TEXT
        ids = tok.encode(text)[:64]
        ref = np.array(model(mx.array([ids]))[0])
        hf = hf_tokenizer(tok)
        chat = hf.apply_chat_template([{"role": "user", "content": "What is 7 + 5?"}], tokenize=False, add_generation_prompt=True)
        for qtype in GGUF_TYPES:
            t0 = time.perf_counter()
            kw = {"quantize": qtype} if qtype == "q4_0" else {"dtype": qtype}
            out = export_run(run, "gguf", Path(tmp) / f"{name}-{qtype}.gguf", **kw)
            seconds = time.perf_counter() - t0
            llm = llama_cpp.Llama(str(out), logits_all=True, n_ctx=256, n_threads=2, verbose=False,
                                  type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)])
            same = sum(llm.tokenize(s.encode(), add_bos=True, special=True) == hf(s)["input_ids"] for s in STRINGS + [chat])
            llm.close()
            rows.append(f"| {name} | gguf {qtype} | {human_size(on_disk(out))} | {seconds:.1f} s | {np.abs(got[-1] - ref[-1]).max():.2e} | "
                        f"{np.abs(got - ref).max():.2e} | {(got.argmax(-1) == ref.argmax(-1)).mean():.1%} | {same}/{len(STRINGS) + 1} |")
            print(rows[-1], flush=True)
        prompt = tok.encode(text)[:16]

        def greedy(m, t):
            return [r.token for r in stream_generate(m, t, prompt=prompt, max_tokens=32)]

        want = greedy(model, tok)
        for fmt in ("mlx-q8", "mlx-q4"):
            t0 = time.perf_counter()
            out = export_run(run, fmt, Path(tmp) / f"{name}-{fmt}")
            seconds = time.perf_counter() - t0
            qmodel, qtok = load(str(out))
            got = np.array(qmodel(mx.array([ids]))[0])
            share = sum(x == y for x, y in zip(want, greedy(qmodel, qtok))) / len(want)
            rows.append(f"| {name} | {fmt} | {human_size(on_disk(out))} | {seconds:.1f} s | {np.abs(got[-1] - ref[-1]).max():.2e} | "
                        f"{np.abs(got - ref).max():.2e} | {(got.argmax(-1) == ref.argmax(-1)).mean():.1%} | greedy {share:.0%} |")
            print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    names = sys.argv[1:] or ["tiny", "quickstart", "smollm2-135m"]
    print("| model | export | size | write | max abs Δ last | max abs Δ all 64 | argmax agree | llama.cpp tokens = HF |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        measure(n)
