"""The tokenizer inside a GGUF file, written as llama.cpp's convert_hf_to_gguf.py writes it:
`tokenizer.ggml.model` (gpt2 = byte-level BPE, llama = SentencePiece), the tokens with their types,
merges or scores, `tokenizer.ggml.pre` (which of llama.cpp's built-in pre-tokenizers splits the
text), the bos/eos/pad ids, whether BOS/EOS are added, and `tokenizer.chat_template`.

llama.cpp cannot run an arbitrary Hugging Face pre-tokenizer: it knows a fixed list by name.
convert_hf_to_gguf.py recognises a tokenizer by hashing its output on a test string; smolmac reads
the pre-tokenizer itself from tokenizer.json and maps only the ones llama.cpp splits identically,
and refuses the rest in one sentence (a GGUF that tokenises differently would load and then answer
worse, silently).

smolmac's own tokenizers (smolmac/tokenizer.py) split digit runs off (Digits) before GPT-2's
byte-level regex. llama.cpp has no such pre-tokenizer, but its `gpt-2` one gives the same tokens
whenever the vocabulary has no token made of two or more whitespace characters: the two differ
only in where a whitespace run that ends right before a digit is cut (`"x  12"`: `"  "`, `"12"`
against `" "`, `" "`, `"12"`), and no merge of the vocabulary joins digits with anything else,
because training never saw them in one piece. tests/test_gguf.py holds llama.cpp to this.
"""

from __future__ import annotations

import json
from pathlib import Path

from smolmac.errors import UserError

# Hugging Face pre-tokenizer regexes (as their tokenizer.json spells them) of llama.cpp's
# built-in pre-tokenizers (src/llama-vocab.cpp quotes them as "original regex from tokenizer.json")
SPLIT_REGEXES = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}
MAPPED = "GPT-2, SmolLM2, Llama 3 and Qwen2 byte-level BPE, smolmac's own BPE tokenizers, SentencePiece with tokenizer.model"


def _describe(pre: dict | None) -> str:
    if not pre:
        return "none"
    if pre.get("type") == "Sequence":
        return "Sequence[" + ", ".join(_describe(p) for p in pre.get("pretokenizers", [])) + "]"
    args = {k: v for k, v in pre.items() if k in ("individual_digits", "add_prefix_space", "use_regex", "behavior")}
    return pre.get("type", "?") + (f"({', '.join(f'{k}={v}' for k, v in args.items())})" if args else "")


def _byte_level(p: dict, use_regex: bool) -> bool:
    return p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False) and p.get("use_regex", True) == use_regex


def _whitespace_runs(vocab: dict) -> list[str]:
    """Tokens whose bytes are two or more whitespace characters (or pieces of them)."""
    from gguf.vocab import bytes_to_unicode

    decode = {c: b for b, c in bytes_to_unicode().items()}
    found = []
    for token in vocab:
        if not all(c in decode for c in token):
            continue
        text = bytes(decode[c] for c in token).decode("utf-8", errors="replace")
        if len(text) >= 2 and all(c.isspace() or c == "\ufffd" for c in text) and any(c.isspace() for c in text):
            found.append(token)
    return found


def bpe_pre(tj: dict, where: str) -> str:
    """llama.cpp's name of the pre-tokenizer that splits like tokenizer.json `tj`; UserError if none."""
    model, normalizer, pre = tj["model"], tj.get("normalizer"), tj.get("pre_tokenizer")
    if normalizer and normalizer.get("type") != "NFC":  # NFC: a no-op on NFC text (Qwen2 declares it)
        raise UserError(f"{where}: the tokenizer normalises text ({normalizer.get('type')}), which llama.cpp's byte-level BPE does not do; it cannot be exported to GGUF with the same tokens.")
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else ([pre] if pre else [])
    name = None
    if len(steps) == 1 and _byte_level(steps[0], True):
        name = "gpt-2"
    elif len(steps) == 2 and steps[0].get("type") == "Digits" and _byte_level(steps[1], True):
        if steps[0].get("individual_digits"):
            name = "smollm"  # SmolLM/SmolLM2: one digit per piece, then GPT-2's regex
        else:
            runs = _whitespace_runs(model.get("vocab", {}))
            if runs:
                raise UserError(f"{where}: this tokenizer splits digit runs off before GPT-2's regex and has whitespace tokens such as {runs[0]!r}; llama.cpp has no pre-tokenizer that splits text before digits the same way, so the GGUF would tokenise differently (a tokenizer with Digits(individual_digits=True), as SmolLM2's, maps exactly).")
            name = "gpt-2"  # identical tokens for this vocabulary: see the module docstring
    elif len(steps) == 2 and steps[0].get("type") == "Split" and _byte_level(steps[1], False):
        split = steps[0]
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            name = SPLIT_REGEXES.get((split.get("pattern") or {}).get("Regex"))
    if name is None:
        raise UserError(f"{where}: the pre-tokenizer {_describe(pre)} has no llama.cpp equivalent that tokenises identically (smolmac maps {MAPPED}); it cannot be exported to GGUF.")
    if bool(model.get("ignore_merges")) != (name == "llama-bpe"):  # llama.cpp ties the two together
        raise UserError(f"{where}: the tokenizer {'sets' if model.get('ignore_merges') else 'does not set'} ignore_merges, which llama.cpp's '{name}' pre-tokenizer {'does not do' if model.get('ignore_merges') else 'always does'}; it cannot be exported to GGUF with the same tokens.")
    return name


def _looks_special(token: str) -> bool:
    # convert_hf_to_gguf.py's does_token_look_special: added tokens like <|...|> are control tokens
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def _bpe_tokens(hf_tok, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens and types, id by id (convert_hf_to_gguf.py's get_vocab_base)."""
    import gguf

    reverse = {i: t for t, i in hf_tok.get_vocab().items()}
    added = hf_tok.get_added_vocab()
    decoder = hf_tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:  # a padded embedding row (vocab_size above the tokenizer's)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:  # llama.cpp expects added tokens pre-normalised
                token = hf_tok.decode(hf_tok.encode(token, add_special_tokens=False))
            types.append(gguf.TokenType.CONTROL if decoder[i].special or _looks_special(token) else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def _spm_tokens(tok_dir: Path, n_vocab: int, where: str) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types of a SentencePiece model (convert_hf_to_gguf.py's
    _create_vocab_sentencepiece), with the added tokens of tokenizer_config.json."""
    import gguf
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(tok_dir / "tokenizer.model"))
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores, types = [-10000.0] * n_vocab, [gguf.TokenType.UNUSED] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i], scores[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i)
        types[i] = (gguf.TokenType.UNKNOWN if sp.IsUnknown(i) else gguf.TokenType.CONTROL if sp.IsControl(i)
                    else gguf.TokenType.UNUSED if sp.IsUnused(i) else gguf.TokenType.BYTE if sp.IsByte(i)
                    else gguf.TokenType.NORMAL)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text()) if (tok_dir / "tokenizer_config.json").is_file() else {}
    for key, data in (config.get("added_tokens_decoder") or {}).items():
        i, token = int(key), data["content"]
        if i >= n_vocab:
            raise UserError(f"{where}: added token {token!r} has id {i}, beyond the model's {n_vocab} embeddings.")
        special = data.get("special") or _looks_special(token)
        tokens[i] = (token if special else token.replace("\u2581", " ")).encode("utf-8")
        scores[i], types[i] = -1000.0, gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    return tokens, scores, types


def add_tokenizer(writer, tok_dir: Path, hf_tok, n_vocab: int, where: str = "tokenizer") -> dict:
    """Write the `tokenizer.*` keys of a GGUF file for the tokenizer saved in `tok_dir`.

    Args:
        writer: a gguf.GGUFWriter.
        tok_dir: a directory with the Hugging Face tokenizer files (and config.json).
        hf_tok: the same tokenizer, loaded (transformers).
        n_vocab: embedding rows of the model (ids above the tokenizer's become unused tokens).
        where: what to name in error messages.

    Returns:
        {"model": "gpt2"|"llama", "pre": name or None} for the caller's report.
    """
    import gguf

    tj_path = tok_dir / "tokenizer.json"
    tj = json.loads(tj_path.read_text(encoding="utf-8")) if tj_path.is_file() else None
    kind = (tj or {}).get("model", {}).get("type")
    if len(hf_tok) > n_vocab:
        raise UserError(f"{where}: the tokenizer has {len(hf_tok)} tokens but the model only {n_vocab} embeddings; llama.cpp needs an embedding for every token.")
    if (tok_dir / "tokenizer.model").is_file() and (kind is None or tj["model"].get("byte_fallback")):
        tokens, scores, types = _spm_tokens(tok_dir, n_vocab, where)
        config = json.loads((tok_dir / "tokenizer_config.json").read_text()) if (tok_dir / "tokenizer_config.json").is_file() else {}
        if isinstance(config.get("add_prefix_space"), bool):  # as convert_hf_to_gguf.py's LlamaModel.set_vocab
            writer.add_add_space_prefix(config["add_prefix_space"])
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(tok_dir, load_merges=False, n_vocab=n_vocab)
        model, pre = "llama", None
    elif kind == "BPE" and not tj["model"].get("byte_fallback") and (tj.get("decoder") or {}).get("type") == "ByteLevel":
        pre = bpe_pre(tj, where)
        tokens, types = _bpe_tokens(hf_tok, n_vocab)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=n_vocab)
        model = "gpt2"
    elif kind == "BPE" and tj["model"].get("byte_fallback"):
        raise UserError(f"{where}: a SentencePiece-style tokenizer without its tokenizer.model file; put the base model's tokenizer.model next to its tokenizer.json to export GGUF.")
    else:
        raise UserError(f"{where}: a {kind or 'missing'} tokenizer has no GGUF mapping in smolmac (it maps {MAPPED}); train a BPE tokenizer (tokenizer.type: bpe) to export GGUF.")
    # BOS/EOS exactly when transformers adds them, so llama.cpp's prompts match training
    special.add_special_token = {}
    special.add_to_gguf(writer, quiet=True)
    ids = hf_tok("a")["input_ids"]
    bare = hf_tok("a", add_special_tokens=False)["input_ids"]
    writer.add_add_bos_token(bool(hf_tok.bos_token_id is not None and ids[:1] == [hf_tok.bos_token_id] and bare[:1] != ids[:1]))
    writer.add_add_eos_token(bool(hf_tok.eos_token_id is not None and ids[-1:] == [hf_tok.eos_token_id] and bare[-1:] != ids[-1:]))
    return {"model": model, "pre": pre, "chat_template": special.chat_template}
