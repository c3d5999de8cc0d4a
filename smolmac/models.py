"""Models: load any mlx-lm model (Hub id or directory), build Llama models from presets, save
Hugging Face-layout model directories, and the forward pieces the losses need.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from smolmac.data import hf_tokenizer
from smolmac.errors import UserError, did_you_mean

# name: (hidden, layers, heads, kv_heads, intermediate, context)
PRESETS = {
    "nano": (64, 2, 4, 2, 192, 256),
    "micro": (128, 4, 4, 2, 384, 512),
    "mini": (256, 6, 8, 4, 768, 1024),
    "smollm2-135m": (576, 30, 9, 3, 1536, 2048),
    "smollm2-360m": (960, 32, 15, 5, 2560, 2048),
}
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def resolve_dtype(dtype: str = "auto") -> str:
    """A dtype name for training and loading models: "auto" is the best precision of the device
    MLX computes on, bfloat16 on a GPU backend (Metal, CUDA) and float32 on the CPU backend (where
    bfloat16 matmuls are emulated and run at a fraction of float32's speed); the others (float32,
    float16, bfloat16) are returned as given.

    Args:
        dtype: "auto", "float32", "float16" or "bfloat16".
    """
    if dtype == "auto":
        gpu = False
        if mx.default_device().type == mx.DeviceType.gpu:
            metal, cuda = getattr(mx, "metal", None), getattr(mx, "cuda", None)
            gpu = bool((metal is not None and metal.is_available()) or (cuda is not None and cuda.is_available()))
        return "bfloat16" if gpu else "float32"
    if dtype not in DTYPES:
        raise UserError(f"dtype: '{dtype}' is not supported; choose auto, float32, float16 or bfloat16.")
    return dtype


def preset_config(spec: dict, vocab_size: int, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict:
    """A Hugging Face LlamaConfig dict from `{preset: nano, hidden_size: ..., ...}` overrides."""
    spec = dict(spec or {})
    name = spec.pop("preset", "nano")
    if name not in PRESETS:
        raise UserError(f"model.new.preset: unknown preset '{name}'{did_you_mean(name, PRESETS)}; choose one of {', '.join(PRESETS)}.")
    hidden, layers, heads, kv, inter, ctx = PRESETS[name]
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "max_position_embeddings": ctx,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }
    aliases = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "intermediate": "intermediate_size", "context": "max_position_embeddings"}
    for key, value in spec.items():
        key = aliases.get(key, key)
        if key not in cfg and key not in ("head_dim", "rope_scaling"):
            raise UserError(f"model.new.{key}: unknown model setting{did_you_mean(key, list(cfg) + list(aliases))}.")
        cfg[key] = value
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise UserError("model.new: hidden_size must be divisible by heads.")
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    return cfg


def count_params(cfg: dict) -> int:
    """Parameter count of a Llama config (tied embeddings counted once)."""
    h, n, v, i = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * hd
    kv = cfg["num_key_value_heads"] * hd
    block = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
    head = 0 if cfg.get("tie_word_embeddings", True) else v * h
    return v * h + n * block + h + head


def init_weights(model: nn.Module, cfg: dict, seed: int):
    """GPT-2 style init: N(0, 0.02); residual output projections scaled by 1/sqrt(2 * layers)."""
    mx.random.seed(seed)
    std = cfg.get("initializer_range", 0.02)
    out_std = std / math.sqrt(2 * cfg["num_hidden_layers"])

    def init(path, w):
        if path.endswith("norm.weight"):
            return mx.ones_like(w)
        if path.endswith("bias"):
            return mx.zeros_like(w)
        s = out_std if path.endswith(("o_proj.weight", "down_proj.weight")) else std
        return mx.random.normal(w.shape, dtype=w.dtype) * s

    model.update(tree_map_with_path(init, model.parameters()))
    mx.eval(model.parameters())


def new_model(spec: dict, tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a randomly initialised Llama model from a preset and save it with its tokenizer.

    Args:
        spec: `{preset: nano, ...overrides}` (hidden_size, num_hidden_layers, ... or short aliases).
        tokenizer_dir: a Hugging Face tokenizer directory (its vocab sizes the embedding).
        out_dir: model directory to write (HF layout; loadable by mlx-lm and transformers).
    """
    from mlx_lm.models import llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = preset_config(spec, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    init_weights(model, cfg, seed)
    save_model_dir(model, tok, cfg, out_dir)
    return Path(out_dir)


def save_model_dir(model: nn.Module, tokenizer, config: dict, out_dir: str | Path, dtype: str | None = None,
                   max_shard_bytes: int = 5 * 2**30, extra_files: dict | None = None) -> Path:
    """Save a Hugging Face-layout model directory (safetensors with {"format": "pt"}).

    Shards above `max_shard_bytes` with a `model.safetensors.index.json`. Tied embeddings write no
    lm_head. `tokenizer` is an HF tokenizer (or mlx-lm TokenizerWrapper) or None.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    if dtype:
        weights = {k: v.astype(DTYPES[dtype]) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    if config.get("tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)
    shards, current, size = [], {}, 0
    for key in sorted(weights):
        nbytes = weights[key].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = weights[key]
        size += nbytes
    shards.append(current)
    for old in out.glob("model*.safetensors"):
        old.unlink()
    if len(shards) == 1:
        mx.save_safetensors(str(out / "model.safetensors"), shards[0], metadata={"format": "pt"})
    else:
        index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": {}}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            mx.save_safetensors(str(out / name), shard, metadata={"format": "pt"})
            index["weight_map"].update({k: name for k in shard})
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if dtype:
        config["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2))
    if tokenizer is not None:
        save_tokenizer(tokenizer, config, out)
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text)
    return out


def save_tokenizer(tokenizer, config: dict, out: Path):
    """The tokenizer files and generation_config.json (greedy; every end-of-turn id) into `out`."""
    hf_tok = hf_tokenizer(tokenizer)
    hf_tok.save_pretrained(str(out))
    gen = {"do_sample": False}
    for key in ("bos_token_id", "pad_token_id"):
        if config.get(key) is not None:
            gen[key] = config[key]
    eos = sorted({i for i in [config.get("eos_token_id"), hf_tok.eos_token_id, hf_tok.convert_tokens_to_ids("<|endoftext|>")] if isinstance(i, int) and i >= 0 and i != hf_tok.unk_token_id}) if hasattr(hf_tok, "convert_tokens_to_ids") else config.get("eos_token_id")
    gen["eos_token_id"] = eos
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


_LOCAL_HINT = re.compile(r"^(\.|/|~)|^[A-Za-z]:\\")


def resolve_model_path(spec: str) -> Path:
    """A local directory, or a Hub id resolved through the HF cache (offline when cached)."""
    path = Path(os.path.expanduser(spec))
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model: {spec} has no config.json; point it at a model directory (or a Hub id).")
        return path
    if _LOCAL_HINT.match(spec) or spec.count("/") > 1:
        raise UserError(f"model: the local path {spec} does not exist; check the path or give a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    patterns = ["*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=offline))
    except HFValidationError:
        raise UserError(f"model: '{spec}' is neither an existing directory nor a valid Hub id.") from None
    except RepositoryNotFoundError:
        raise UserError(f"model: the Hub has no model '{spec}' (or it is private); check the id or log in with `hf auth login`.") from None
    except (LocalEntryNotFoundError, OSError) as e:
        if offline or isinstance(e, LocalEntryNotFoundError):
            raise UserError(f"model: '{spec}' is not in the Hugging Face cache and the Hub cannot be reached; download it once online (`hf download {spec}`) or use a local directory.") from None
        raise


def load_model(spec: str, dtype: str = "float32", trust_remote_code: bool = False):
    """Load model + tokenizer with mlx-lm; returns (model, tokenizer, config, path).

    Args:
        dtype: float32, bfloat16, float16, or auto (see `resolve_dtype`).
    """
    from mlx_lm.utils import load

    path = resolve_model_path(spec)
    config = json.loads((path / "config.json").read_text())
    try:
        model, tokenizer, config = load(str(path), tokenizer_config={"trust_remote_code": trust_remote_code}, return_config=True)
    except ValueError as e:
        if "not supported" in str(e):
            raise UserError(f"model: {spec} has model_type '{config.get('model_type')}', which mlx-lm cannot load; pick a model of a supported architecture (llama, qwen2, qwen3, gemma, mistral, phi3, ...).") from None
        raise
    except FileNotFoundError as e:
        raise UserError(f"model: {spec} is incomplete ({e}); re-download it or check the directory.") from None
    cast_floating(model, dtype)
    model.eval()
    return model, tokenizer, config, path


def cast_floating(model: nn.Module, dtype: str):
    """Cast floating-point parameters (not quantised uint32 weights) to `dtype` (or auto)."""
    target = DTYPES[resolve_dtype(dtype)]
    model.set_dtype(target, lambda x: mx.issubdtype(x, mx.floating))
    mx.eval(model.parameters())


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def blocks(model: nn.Module) -> list:
    """The transformer blocks of an mlx-lm model."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise UserError(f"model: {type(model).__module__} exposes no transformer layers; LoRA needs a standard mlx-lm model.")
    return list(layers)
