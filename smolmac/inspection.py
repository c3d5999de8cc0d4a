"""Look inside a model ("Smontiamo un Transformer"): how text becomes tokens, what the chat template
trains, where the parameters are, how much of them a run trained, and which tokens the input
embedding puts close together. The app's Look inside screen and `smolmac inspect` show these.

    smolmac inspect runs/quickstart --tokens "What is 7 + 5?" --neighbours 7
    smolmac inspect HuggingFaceTB/SmolLM2-135M-Instruct --json

A target is a model (Hub id or folder), a run dir or a pipeline dir; a run or pipeline lists its
models (smolmac.pipeline.run_models) and the last trained one is inspected, with every adapter's
share of the parameters and the neighbours of a token in each model that has its own weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smolmac.errors import UserError
from smolmac.pipeline import ModelRef, run_models

# Parameter paths -> the parts of a decoder-only Transformer (Llama, Qwen, Gemma, Mistral, ...).
PARTS = ("embedding", "attention", "mlp", "norms", "head", "other")
CHAT_EXAMPLE = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5"},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "4 + 4 = 8"},
]


def model_refs(target: str | Path) -> list[ModelRef]:
    """The models a target holds: a run's or pipeline's (oldest first), or the model itself."""
    path = Path(target).expanduser()
    if (path / "events.jsonl").is_file() or ((path / "config.yaml").is_file() and not (path / "config.json").is_file()):
        refs = run_models(path)
        if not refs:
            raise UserError(f"{target}: this run has no model to look at yet (no model/, adapter/ or built init/); wait until a stage has trained.")
        return refs
    return [ModelRef(path.name or str(target), str(target), None, True, None, "base")]


def load(ref: ModelRef):
    """(model, tokenizer, config, path) of a ModelRef's base model (its adapter not applied)."""
    from smolmac.models import load_model

    return load_model(ref.model)


# ---------------------------------------------------------------------------------------------
# Anatomy: parameters per part


def part_of(name: str) -> str:
    """Which part of the Transformer a parameter path belongs to, e.g. 'model.layers.0.mlp.up_proj.weight' -> 'mlp'."""
    module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name  # 'up_proj', 'input_layernorm'
    if "embed_tokens" in name or name.endswith(("wte.weight", "embed.weight")):
        return "embedding"
    if name.startswith("lm_head") or ".lm_head." in name:
        return "head"
    if "norm" in module:
        return "norms"
    if ".self_attn." in name or ".attention." in name or ".attn." in name:
        return "attention"
    if ".mlp." in name or ".feed_forward." in name:
        return "mlp"
    return "other"


def anatomy(model, config: dict) -> dict:
    """Parameters per part (embedding, attention, mlp, norms, head) and in total.

    `total` is `sum(v.size for _, v in tree_flatten(model.parameters()))`: the stored values (a
    4-bit model's packed weights count as stored). Attention and MLP are summed over all blocks;
    `per_block` gives one block's share.
    """
    from mlx.utils import tree_flatten

    from smolmac.models import blocks, is_quantized

    params = tree_flatten(model.parameters())
    parts = dict.fromkeys(PARTS, 0)
    for name, v in params:
        parts[part_of(name)] += v.size
    total = sum(v.size for _, v in params)
    n_blocks = len(blocks(model))
    block = dict.fromkeys(("attention", "mlp", "norms"), 0)
    for name, v in tree_flatten(blocks(model)[0].parameters()):
        part = part_of("x.layers.0." + name)
        if part in block:
            block[part] += v.size
    tied = bool(config.get("tie_word_embeddings", parts["head"] == 0))
    return {
        "architecture": config.get("model_type"), "layers": n_blocks, "hidden": config.get("hidden_size"),
        "heads": config.get("num_attention_heads"), "kv_heads": config.get("num_key_value_heads"),
        "intermediate": config.get("intermediate_size"), "vocab": config.get("vocab_size"),
        "context": config.get("max_position_embeddings"), "tied_embeddings": tied, "quantized": is_quantized(model),
        "parts": {k: v for k, v in parts.items() if v or k in ("embedding", "attention", "mlp", "norms", "head")},
        "per_block": block, "total": total,
    }


def _disk_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern) if p.is_file())


def training_share(ref: ModelRef, total: int) -> dict | None:
    """How much of the model a run trained: an adapter's parameters (what the trainer reports as
    `trainable_params`: the adapter file holds exactly the trainable weights) and its size on
    disk vs the model's, or all of them for a pretrained / fully fine-tuned model."""
    from smolmac.models import resolve_model_path

    if ref.kind != "trained":
        return None
    model_dir = resolve_model_path(ref.model)
    model_bytes = _disk_bytes(model_dir, "*.safetensors")
    if ref.adapter is None:
        return {"model": ref.label, "trainable": total, "share": 1.0, "model_bytes": model_bytes}
    import mlx.core as mx

    files = sorted(Path(ref.adapter).glob("*.safetensors"))
    if not files:
        raise UserError(f"{ref.adapter}: no adapter weights (*.safetensors) here; the run may still be training.")
    trainable = sum(v.size for f in files for v in mx.load(str(f)).values())
    return {"model": ref.label, "trainable": trainable, "share": trainable / total, "model_bytes": model_bytes,
            "adapter_bytes": _disk_bytes(Path(ref.adapter))}


# ---------------------------------------------------------------------------------------------
# Tokens


def tokenize(tokenizer, text: str) -> dict:
    """How `text` splits into tokens: ids, raw pieces (e.g. 'Ġcat'), their text, chars per token."""
    from smolmac.data import hf_tokenizer

    hf = hf_tokenizer(tokenizer)
    ids = hf.encode(text, add_special_tokens=False)
    return {
        "text": text, "ids": ids, "pieces": hf.convert_ids_to_tokens(ids), "texts": [hf.decode([i]) for i in ids],
        "count": len(ids), "chars_per_token": round(len(text) / len(ids), 3) if ids else None,
    }


def chat_preview(tokenizer, messages: list[dict] | None = None) -> dict | None:
    """A two-turn chat through the chat template, token by token, with the tokens training learns
    from marked (every assistant turn and its end-of-turn token: smolmac.data.tokenize_chat).
    None when the tokenizer has no chat template."""
    from smolmac.data import hf_tokenizer, render, tokenize_chat

    hf = hf_tokenizer(tokenizer)
    if not getattr(hf, "chat_template", None):
        return None
    messages = messages or CHAT_EXAMPLE
    ex = tokenize_chat(tokenizer, messages, "chat template")
    ids = [int(i) for i in ex.tokens]
    return {"rendered": render(tokenizer, messages), "ids": ids, "texts": [hf.decode([i]) for i in ids],
            "trained": [bool(m) for m in ex.mask], "count": len(ids), "trained_count": int(ex.mask.sum())}


# ---------------------------------------------------------------------------------------------
# Embeddings


def embedding_matrix(model) -> np.ndarray:
    """The input embedding as a float32 (vocab, hidden) numpy array (a quantised one dequantised)."""
    import mlx.core as mx
    import mlx.nn as nn

    embed = next((m for name, m in model.named_modules() if name.endswith("embed_tokens")), None)
    if embed is None:
        embed = next((m for _, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))), None)
    if embed is None:
        raise UserError("inspect: this model has no input embedding layer that smolmac recognises.")
    vocab = embed.weight.shape[0]
    out = embed(mx.arange(vocab)).astype(mx.float32)  # (V, H), dequantised by the layer itself
    return np.array(out)


def token_id(tokenizer, token: str) -> int:
    """The id of one token, given as a vocabulary piece ('Ġcat') or as text ('cat', ' cat')."""
    from smolmac.data import hf_tokenizer

    hf = hf_tokenizer(tokenizer)
    vocab = hf.get_vocab()
    if token in vocab:
        return vocab[token]
    for text in (token, " " + token):
        ids = hf.encode(text, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
    ids = hf.encode(token, add_special_tokens=False)
    pieces = [hf.decode([i]) for i in ids]
    raise UserError(f"--neighbours: {token!r} is {len(ids)} tokens for this tokenizer ({', '.join(map(repr, pieces))}); give one of them, e.g. {pieces[0]!r}." if ids else f"--neighbours: {token!r} gives no token; give a word or a piece of the vocabulary.")


def nearest(matrix: np.ndarray, tokenizer, token: str, top: int = 8) -> dict:
    """The `top` tokens closest to `token` by cosine similarity of their input embeddings."""
    from smolmac.data import hf_tokenizer

    hf = hf_tokenizer(tokenizer)
    tid = token_id(tokenizer, token)
    if tid >= len(matrix):
        raise UserError(f"--neighbours: token id {tid} is outside this model's embedding of {len(matrix)} rows.")
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit[tid]  # (V,)
    order = [int(i) for i in np.argsort(-sims) if i != tid][:top]
    return {"token": hf.decode([tid]), "id": tid,
            "nearest": [{"id": i, "text": hf.decode([i]), "cosine": round(float(sims[i]), 4)} for i in order]}


# ---------------------------------------------------------------------------------------------
# The report (CLI and API)


def inspect(target: str | Path, tokens: str | None = None, neighbours: str | None = None, top: int = 8,
            model: str | None = None) -> dict:
    """Everything `smolmac inspect` shows, as a JSON-ready dict (see smolmac.api.inspect).

    Args:
        model: the label of one of the target's models (default: its last trained one).
    """
    refs = model_refs(target)
    ref = next((r for r in refs if r.label == model), None) if model else refs[-1]
    if ref is None:
        raise UserError(f"--model: {target} has no model {model!r}; choose one of {', '.join(r.label for r in refs)}.")
    m, tok, config, _path = load(ref)
    report = {"target": str(target), "models": [r.label for r in refs], "model": ref.label, "path": ref.model,
              "anatomy": anatomy(m, config)}
    total = report["anatomy"]["total"]
    totals = {ref.model: total}
    report["training"] = [s for r in refs if (s := training_share(r, _total(r, totals))) is not None]
    report["tokenizer"] = {"vocab": len(_hf(tok)), "chat_template": chat_preview(tok)}
    if tokens is not None:
        report["tokens"] = tokenize(tok, tokens)
    if neighbours is not None:
        report["neighbours"] = _neighbours(refs, neighbours, top)
    return report


def _hf(tok):
    from smolmac.data import hf_tokenizer

    return hf_tokenizer(tok)


def _total(ref: ModelRef, totals: dict) -> int:
    """Parameters of a ref's (base) model, counted once per model path."""
    from mlx.utils import tree_flatten

    if ref.model not in totals:
        totals[ref.model] = sum(v.size for _, v in tree_flatten(load(ref)[0].parameters()))
    return totals[ref.model]


def _neighbours(refs: list[ModelRef], token: str, top: int) -> list[dict]:
    """Nearest tokens in every model that has its own embedding (an adapter leaves it unchanged:
    its row says so instead of repeating its base's)."""
    out, seen = [], {}
    for ref in refs:
        if ref.model in seen:
            out.append({"model": ref.label, "same_as": seen[ref.model]})
            continue
        m, tok, _config, _path = load(ref)
        out.append({"model": ref.label, **nearest(embedding_matrix(m), tok, token, top)})
        seen[ref.model] = ref.label
    return out


def _mb(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


def format_report(report: dict) -> str:
    """The plain-text view of an `inspect` report (what `smolmac inspect` prints)."""
    a = report["anatomy"]
    lines = [f"model {report['model']}: {report['path']}"]
    if len(report["models"]) > 1:
        lines.append("models here: " + ", ".join(report["models"]))
    lines.append(f"{a['architecture']} · {a['layers']} blocks · hidden {a['hidden']} · {a['heads']} heads ({a['kv_heads']} kv) · "
                 f"vocab {a['vocab']} · context {a['context']}" + (" · tied embeddings" if a["tied_embeddings"] else "") + (" · quantised" if a["quantized"] else ""))
    lines += ["", f"{'part':<12}{'parameters':>14}{'share':>8}   one block"]
    for part, n in a["parts"].items():
        note = f"{a['per_block'][part]:,}" if part in a["per_block"] else ("tied to the embedding" if part == "head" and not n else "")
        lines.append(f"{part:<12}{n:>14,}{n / a['total']:>8.1%}   {note}")
    lines.append(f"{'total':<12}{a['total']:>14,}")
    for s in report["training"]:
        line = f"trained in {s['model']}: {s['trainable']:,} parameters ({s['share']:.1%} trained)"
        if "adapter_bytes" in s:
            line += f"; adapter {_mb(s['adapter_bytes'])} on disk vs model {_mb(s['model_bytes'])}"
        lines.append(line)
    chat = report["tokenizer"]["chat_template"]
    lines += ["", f"tokenizer: vocab {report['tokenizer']['vocab']}, " + (f"chat template: a two-turn chat is {chat['count']} tokens, {chat['trained_count']} trained" if chat else "no chat template (plain text only)")]
    if "tokens" in report:
        tk = report["tokens"]
        lines.append(f"tokens of {tk['text']!r}: {tk['count']} tokens, {tk['chars_per_token']} chars/token")
        lines.append("  " + " ".join(f"[{i} {t!r}]" for i, t in zip(tk["ids"], tk["texts"])))
    for n in report.get("neighbours", []):
        if "same_as" in n:
            lines.append(f"nearest in {n['model']}: same embedding as {n['same_as']} (an adapter does not change it)")
        else:
            lines.append(f"nearest to {n['token']!r} in {n['model']}: " + ", ".join(f"{x['text']!r} {x['cosine']:.2f}" for x in n["nearest"]))
    return "\n".join(lines)
