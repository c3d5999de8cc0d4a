"""--format gguf: the fine-tune fused into its base, as one GGUF file that llama.cpp, LM Studio and
Ollama load, written with llama.cpp's own writer (the `gguf` package) exactly as llama.cpp's
convert_hf_to_gguf.py writes the same architecture: its tensor names, the Q/K permutation of
Llama-style rotary layouts, the hyper-parameters under `{arch}.*` and the tokenizer
(smolmac/export/gguf_vocab.py).

    smolmac export runs/x --format gguf --to out/x.gguf [--dtype f32|f16|bf16|q8_0] [--quantize q4_0]
    llama-cli -m out/x.gguf -p "Hello"

Architectures: llama (SmolLM2, smolmac's `{new: ...}` models), mistral (written as llama, like the
converter), qwen2, qwen3. Anything else, or a feature of them the file could not express (rope
scaling other than linear/llama3, partial rotary), is refused in one sentence. Tensor types are
what the `gguf` package can write: f32, f16, bf16, q8_0 and q4_0/q4_1/q5_0/q5_1; k-quants
(q4_k_m, ...) are refused with the command that makes them from an f16 file (llama-quantize).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np

from smolmac.errors import UserError, did_you_mean

# model_type -> (GGUF architecture, Q/K rows permuted for llama.cpp's rotary layout)
ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False)}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1"}
NATIVE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
# llama.cpp's types that llama-quantize makes but the gguf package cannot write
LLAMA_QUANTIZE_ONLY = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
                       "iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s",
                       "iq3_m", "iq4_nl", "iq4_xs")


def writable_types() -> list[str]:
    """The `--quantize` types this `gguf` package can write (it implements only some encoders)."""
    import gguf

    ok = []
    for name in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
        try:
            gguf.quants.quantize(np.zeros((1, 256), np.float32), gguf.GGMLQuantizationType[name.upper()])
            ok.append(name)
        except NotImplementedError:
            pass
    return ok


def check(kind, dtype: str | None, quantize: str | None = None):
    """Validate --dtype/--quantize before any weights are read."""
    from importlib.metadata import version

    if quantize is None:
        return
    q = quantize.lower()
    if dtype is not None and dtype != q:
        raise UserError(f"--quantize {quantize} and --dtype {dtype} name two different types; give one of them.")
    available = writable_types()
    if q in available:
        return
    if q in LLAMA_QUANTIZE_ONLY:
        raise UserError(f"--quantize: the gguf package ({version('gguf')}) cannot write {q}, only llama.cpp's llama-quantize makes it; choose {', '.join(available)}, or export --dtype f16 and run `llama-quantize OUT.gguf OUT-{q.upper()}.gguf {q.upper()}`.")
    raise UserError(f"--quantize: '{quantize}' is not a GGUF type{did_you_mean(q, available)}; choose {', '.join(available)}.")


def gguf_type(config: dict, dtype: str | None, quantize: str | None) -> str:
    """The file's type: --quantize, else --dtype, else the model's own float type."""
    native = config.get("torch_dtype") or config.get("dtype")
    return (quantize or dtype or NATIVE.get(native, "f32")).lower()


# ---------------------------------------------------------------------------------------------
# Architecture: hyper-parameters and tensor names


def architecture(config: dict, where: str) -> tuple[str, bool]:
    """(GGUF architecture, permute Q/K) for an HF config; UserError for what GGUF cannot express."""
    mtype = config.get("model_type")
    if mtype not in ARCHS:
        raise UserError(f"{where}: model_type '{mtype}' has no GGUF mapping in smolmac (it writes {', '.join(ARCHS)}); export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py.")
    rope = _rope(config)
    if rope.get("rope_type") not in (None, "default", "linear", "llama3"):
        raise UserError(f"{where}: rope scaling '{rope.get('rope_type')}' is not mapped to GGUF by smolmac (it maps linear and llama3); export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py.")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise UserError(f"{where}: partial rotary embeddings (partial_rotary_factor {config['partial_rotary_factor']}) are not mapped to GGUF for {mtype}.")
    return ARCHS[mtype]


def _rope(config: dict) -> dict:
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    return rope


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def add_hparams(writer, config: dict, arch: str, n_vocab: int):
    """`{arch}.*` keys as convert_hf_to_gguf.py's TextModel (+ LlamaModel for llama) writes them."""
    import gguf

    writer.add_block_count(config["num_hidden_layers"])
    if config.get("max_position_embeddings"):
        writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    rope = _rope(config)
    writer.add_rope_freq_base(float(config.get("rope_theta", rope.get("rope_theta", 10000.0))))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    if arch == "llama":
        writer.add_vocab_size(n_vocab)
        writer.add_rope_dimension_count(head_dim(config))


def rope_freqs(config: dict) -> np.ndarray | None:
    """Llama 3.1+ rope scaling as the per-frequency factors tensor `rope_freqs` (the converter's
    generate_extra_tensors); None without llama3 scaling."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    base, dim = float(config.get("rope_theta", rope.get("rope_theta", 10000.0))), head_dim(config)
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for freq in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for Q/K rows (convert_hf_to_gguf.py LlamaModel.permute): HF
    rotates the two halves of each head, llama.cpp adjacent pairs. w: (n_head * head_dim, ...)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(weights: dict, config: dict, arch: str, permute_qk: bool, where: str):
    """(GGUF name, float32 array) for each HF-named weight, Q/K permuted where llama.cpp needs it."""
    import gguf

    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(arch_id, config["num_hidden_layers"])
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    for key, value in weights.items():
        new = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"{where}: the weight '{key}' has no GGUF tensor name for {arch}; this model cannot be exported to GGUF.")
        data = np.asarray(value, dtype=np.float32)
        if permute_qk and key.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, heads)
        elif permute_qk and key.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, kv)
        yield new, data


def encode(data: np.ndarray, name: str, qtype: str):
    """(bytes-or-floats, GGML type) for one tensor: norms, biases and vectors stay f32 (as the
    converter keeps them); below 8 bits the embeddings and output head keep q8_0 (llama-quantize
    also keeps them finer); rows the block size does not divide fall back to f16."""
    import gguf

    T = gguf.GGMLQuantizationType
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        kind = T.F32
    elif qtype in ("q4_0", "q4_1", "q5_0", "q5_1") and name.split(".")[0] in ("token_embd", "output"):
        kind = T.Q8_0
    else:
        kind = T[qtype.upper()]
    try:
        return gguf.quants.quantize(data, kind), kind
    except gguf.QuantError:
        return gguf.quants.quantize(data, T.F16), T.F16


# ---------------------------------------------------------------------------------------------
# The file


def save_tokenizer(tok, config: dict, folder: Path, source_dir: Path | None = None):
    """The HF tokenizer files + config.json in `folder`, where gguf.SpecialVocab reads them, and
    the source model's SentencePiece tokenizer.model (transformers 5 no longer saves it)."""
    import shutil

    from smolmac.data import hf_tokenizer

    hf = hf_tokenizer(tok)
    hf.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    if source_dir is not None and (Path(source_dir) / "tokenizer.model").is_file() and not (folder / "tokenizer.model").exists():
        shutil.copy(Path(source_dir) / "tokenizer.model", folder / "tokenizer.model")
    return hf


def source_dir(src) -> Path | None:
    """The local folder of the model a Source fine-tuned (for files only it has, e.g. tokenizer.model)."""
    from smolmac.export.sources import _model_dir

    ad = src.adapter
    specs = [src.model_dir] + ([ad.base_path, ad.base] if ad else []) + [src.base]
    return next((d for d in map(_model_dir, specs) if d is not None), None)


def add_general(writer, info: dict, n_params: int | None = None):
    """general.* metadata from the model card's info (no local paths)."""
    import gguf

    from smolmac.export.card import hub_id

    base = info.get("base_model")
    writer.add_name(info.get("title") or f"{base or 'smolmac'}-{info.get('method') or info.get('fine_tune')}")
    if n_params:
        writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    if info.get("license"):
        writer.add_license(info["license"])
    if base:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base)
        if info.get("base_model_on_hub") and hub_id(base):
            writer.add_base_model_repo_url(0, f"https://huggingface.co/{base}")
    writer.add_tags([t for t in (info.get("fine_tune"), info.get("method"), "smolmac") if t])


def write_gguf(model, tok, config: dict, path: Path, qtype: str, say, info: dict | None = None, source: Path | None = None) -> dict:
    """Write an mlx-lm model (float, HF parameter names) and its tokenizer as one GGUF file.

    Args:
        model: the mlx-lm model (a quantised one is dequantised first).
        tok: its tokenizer (HF or mlx-lm TokenizerWrapper).
        config: its HF config.json dict.
        path: the .gguf file to write.
        qtype: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1.
        say: progress sentences.
        info: model card info (smolmac.export.card.card_info) for general.* metadata.
        source: the model's original folder (its tokenizer.model, for SentencePiece tokenizers).
    """
    import gguf
    from mlx.utils import tree_flatten

    from smolmac.export.gguf_vocab import add_tokenizer
    from smolmac.models import is_quantized

    where = f"--format gguf ({config.get('model_type')})"
    arch, permute_qk = architecture(config, where)
    if is_quantized(model):
        from mlx_lm.utils import dequantize_model

        say("the model is quantised: dequantising it before writing GGUF.")
        dequantize_model(model)
    weights = dict(tree_flatten(model.parameters()))
    n_vocab = int(weights["model.embed_tokens.weight"].shape[0])
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    add_general(writer, info or {}, sum(int(v.size) for v in weights.values()))
    add_hparams(writer, config, arch, n_vocab)
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[qtype]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    quiet = logging.getLogger("gguf")  # SpecialVocab logs guesses about post-processors: not ours to print
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with tempfile.TemporaryDirectory() as folder:
            hf = save_tokenizer(tok, config, Path(folder), source)
            vocab = add_tokenizer(writer, Path(folder), hf, n_vocab, where)
    finally:
        quiet.setLevel(level)
    extra = rope_freqs(config)
    if extra is not None:
        writer.add_tensor("rope_freqs.weight", extra, raw_dtype=gguf.GGMLQuantizationType.F32)
    counts: dict[str, int] = {}
    for name, data in gguf_tensors(weights, config, arch, permute_qk, where):
        encoded, kind = encode(data, name, qtype)
        writer.add_tensor(name, encoded, raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    say(f"GGUF: {arch}, {qtype}, tokenizer {vocab['model']}" + (f" (pre-tokenizer {vocab['pre']})" if vocab["pre"] else "")
        + f", tensors {', '.join(f'{n} {k.lower()}' for k, n in sorted(counts.items()))}.")
    return {"arch": arch, **vocab, "tensor_types": counts}


def write(src, out: Path, dtype: str | None, say, quantize: str | None = None) -> Path:
    from smolmac.export.card import card_info
    from smolmac.export.hf import fused_model

    model, tok, config = fused_model(src, say)
    qtype = gguf_type(config, dtype, quantize)
    write_gguf(model, tok, config, out, qtype, say, card_info(src, "gguf", qtype), source_dir(src))
    return out


def usage(info: dict, ref: str, base: str, local: str, fetch: str) -> str:
    return f"""### llama.cpp

```bash
{fetch}llama-cli -m {local} -cnv
llama-server -m {local}   # OpenAI-compatible server on :8080
```

### Ollama / LM Studio

```bash
ollama create my-model -f Modelfile   # Modelfile: FROM ./{Path(local).name}
```

LM Studio: copy the .gguf file to ~/.lmstudio/models/<you>/<name>/.
"""
