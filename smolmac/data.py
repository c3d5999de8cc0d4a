"""Data: load rows from files or the Hub, detect the format (TRL's dataset formats), tokenise with the chat
template and a loss mask over every assistant turn, and batch with real length bucketing.

Every row keeps where it came from (`file:line`) so that errors can name it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smolmac.errors import UserError

WHERE = "__where__"
FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "bot": "assistant", "system": "system", "tool": "tool", "function": "tool", "ipython": "tool",
}
KINDS = ("text", "messages", "prompt_completion", "preference")


# ---------------------------------------------------------------------------------------------
# Loading


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        try:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno}); fix or remove that line.") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{i}: each line must be a JSON object, not {json_type(row)}.")
                row[WHERE] = f"{path}:{i}"
                rows.append(row)
        except UnicodeDecodeError:
            raise UserError(f"{path}: not valid UTF-8 text; re-save the file as UTF-8.") from None
    return rows


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8 text; re-save the file as UTF-8.") from None


def _read_json(path: Path) -> list[dict]:
    text = read_utf8(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if "\n" in text.strip():  # maybe JSON lines with a .json name
            return _read_jsonl(path)
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); fix the file.") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else [data]
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}: item {i} must be a JSON object, not {json_type(row)}.")
        row[WHERE] = f"{path}[{i}]"
        rows.append(row)
    return rows


def _read_text(path: Path) -> list[dict]:
    text = read_utf8(path)
    # Documents are separated by blank lines; a file without blank lines is one document.
    docs = [d.strip() for d in text.split("\n\n")]
    return [{"text": d, WHERE: f"{path}"} for d in docs if d]


def _read_with_datasets(path: Path, kind: str) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for a malformed file
        raise UserError(f"{path}: could not be read as {kind} ({str(e).splitlines()[0]}); check the file.") from None
    # CSV: line i + 2 (after the header); parquet has no lines: row i
    return [{**row, WHERE: f"{path}:{i + 2}" if kind == "csv" else f"{path}[row {i}]"} for i, row in enumerate(ds)]


def read_file(path: Path) -> list[dict]:
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unsupported file type '{path.suffix}'; use .jsonl, .json, .csv, .parquet or .txt.")
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    if kind == "json":
        return _read_json(path)
    if kind == "text":
        return _read_text(path)
    return _read_with_datasets(path, kind)


def load_rows(spec: str, config: str | None = None, split: str = "train") -> list[dict]:
    """Rows from a local file, a folder of files, or a Hub dataset id (with config and split);
    `quickstart:NAME` names a file shipped with smolmac."""
    from smolmac.quickstart import resolve

    spec = resolve(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return read_file(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FILE_TYPES and p.is_file())
        if not files:
            raise UserError(f"{path}: the folder has no .jsonl/.json/.csv/.parquet/.txt files.")
        return [row for f in files for row in read_file(f)]
    if spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in FILE_TYPES:
        raise UserError(f"data: {spec} does not exist; check the path.")
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(spec, config, split=split)
    except Exception as e:
        raise UserError(f"data: could not load the Hub dataset '{spec}' split '{split}' ({str(e).splitlines()[0]}); check the id, data.config and data.split, or that it is cached when offline.") from None
    return [{**row, WHERE: f"{spec}[{split}][{i}]"} for i, row in enumerate(ds)]


# ---------------------------------------------------------------------------------------------
# Formats


def _map_columns(rows: list[dict], columns: dict) -> list[dict]:
    if not columns:
        return rows
    out = []
    for row in rows:
        row = dict(row)
        for ours, theirs in columns.items():
            if theirs in row:
                row[ours] = row.pop(theirs)
        out.append(row)
    return out


def detect_format(row: dict, where: str = "data") -> str:
    """TRL's dataset formats: text, messages, prompt_completion or preference, from a row's keys."""
    keys = set(row) - {WHERE}
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "chosen" in keys:
        raise UserError(f"{where}: the row has 'chosen' but no 'rejected' column; preference rows need both (map names with data.columns).")
    if "messages" in keys or "conversations" in keys:
        return "messages"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise UserError(
        f"{where}: cannot tell the format from the columns {sorted(keys)}; expected text, messages, "
        "prompt+completion or prompt+chosen+rejected, or map yours with data.columns (e.g. {messages: conversations})."
    )


def normalise_messages(messages, where: str) -> list[dict]:
    """OpenAI/ShareGPT messages -> [{"role", "content"}] with standard role names."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects, not {'an empty list' if messages == [] else json_type(messages)}.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise UserError(f"{where}: every message must be an object with role and content, not {json_type(m)}.")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role is None:
            raise UserError(f"{where}: message {i + 1} has no 'role' (or ShareGPT 'from'); give each message a role such as user or assistant.")
        if not isinstance(role, str) or role not in ROLE_ALIASES:
            raise UserError(f"{where}: unknown role '{role}'; use system, user, assistant or tool (ShareGPT human/gpt are mapped).")
        if content is None:
            content = ""
        if isinstance(content, list):
            raise UserError(f"{where}: message {i + 1} has a list as content (content parts); smolmac trains on text, so write the content as one string.")
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i + 1} content must be a string, not {json_type(content)}.")
        msg = {"role": ROLE_ALIASES[role], "content": content}
        for extra in ("tool_calls", "name", "tool_call_id"):
            if m.get(extra) is not None:
                msg[extra] = m[extra]
        out.append(msg)
    return out


def prepare_rows(rows: list[dict], data_cfg, where: str) -> tuple[str, list[dict]]:
    """Apply column mapping and detect (or check) the format. Returns (kind, rows)."""
    if not rows:
        raise UserError(f"{where}: the data is empty; give a file with at least one row.")
    first = rows[0]
    for ours, theirs in data_cfg.columns.items():
        if theirs not in first and ours not in first:
            have = sorted(set(first) - {WHERE})
            raise UserError(f"{first.get(WHERE, where)}: data.columns maps '{ours}' to '{theirs}', but the row has no '{theirs}' column (it has {have}).")
    rows = _map_columns(rows, data_cfg.columns)
    kind = data_cfg.format if data_cfg.format != "auto" else detect_format(rows[0], rows[0].get(WHERE, where))
    required = {"text": ("text",), "messages": ("messages",), "prompt_completion": ("prompt", "completion"), "preference": ("chosen", "rejected")}[kind]
    for row in rows:
        if kind == "messages" and "messages" not in row and "conversations" in row:
            row["messages"] = row.pop("conversations")
        missing = [k for k in required if k not in row]
        if missing:
            have = sorted(set(row) - {WHERE})
            raise UserError(f"{row.get(WHERE, where)}: missing column '{missing[0]}' for {kind} data (the row has {have}); map it with data.columns, e.g. {{{missing[0]}: your_column}}.")
    return kind, rows


# ---------------------------------------------------------------------------------------------
# Tokenisation with loss masks


@dataclass
class Example:
    tokens: np.ndarray  # (n,) int32
    mask: np.ndarray  # (n,) bool: token t is trained (predicted from t-1)


def hf_tokenizer(tokenizer):
    """The Hugging Face tokenizer inside an mlx-lm TokenizerWrapper (or the tokenizer itself)."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return tokenizer._tokenizer if isinstance(tokenizer, TokenizerWrapper) else tokenizer


def require_chat_template(tokenizer, where: str):
    if not getattr(hf_tokenizer(tokenizer), "chat_template", None):
        raise UserError(f"{where}: the tokenizer has no chat template, so chat data cannot be rendered; use a chat/instruct model, a text-format dataset, or add a chat_template to tokenizer_config.json.")


def render(tokenizer, messages, add_generation_prompt=False, tools=None, where: str = "data") -> str:
    """The chat template's text for `messages`; a template that refuses them (roles that do not
    alternate, a system turn it does not support, a field of the wrong type) is a UserError
    naming `where`."""
    from jinja2 import TemplateError

    try:
        return hf_tokenizer(tokenizer).apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (TemplateError, TypeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{where}: the chat template cannot render this conversation ({reason}); fix the row (e.g. alternate user and assistant turns) or use a model whose template accepts it.") from None


def template_overhead(tokenizer) -> int:
    """Tokens a chat exchange costs before any text: an empty user turn and an empty reply
    rendered with the chat template (BOS, role headers, end-of-turn tokens), or, without a
    template, the tokenizer's BOS and the EOS after a completion."""
    hf = hf_tokenizer(tokenizer)
    if getattr(hf, "chat_template", None):
        empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
        return len(encode_templated(tokenizer, render(tokenizer, empty, where="the chat template")))
    return len(bos_ids(tokenizer)) + (hf.eos_token_id is not None)


def check_room(tokenizer, max_seq_len: int):
    """Refuse a train.max_seq_len that leaves no room for text after the template's own tokens."""
    need = template_overhead(tokenizer)
    if max_seq_len <= need:
        raise UserError(f"train.max_seq_len: {max_seq_len} leaves no room for text, since the chat template alone takes {need} tokens for an empty user turn and reply; raise train.max_seq_len well above {need} (e.g. 512).")


def end_of_turn_ids(tokenizer) -> set[int]:
    hf = hf_tokenizer(tokenizer)
    ids = getattr(tokenizer, "eos_token_ids", None)  # mlx-lm wrapper: a set; HF 5: maybe an int
    ids = {ids} if isinstance(ids, int) else set(ids or [])
    if hf.eos_token_id is not None:
        ids.add(hf.eos_token_id)
    for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>"):
        tid = hf.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != hf.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


def bos_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before any text: its BOS for Llama-2, Mistral or
    Gemma-style tokenizers, [] for GPT-2, SmolLM or Qwen-style ones.

    Read from what the tokenizer does (`encode(add_special_tokens=True)` against `False`), not
    from flags that differ between tokenizer classes; special tokens it appends (EOS) are not
    included.
    """
    hf = hf_tokenizer(tokenizer)
    plain = hf.encode("a", add_special_tokens=False)
    full = hf.encode("a", add_special_tokens=True)
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return list(full[:k])
    return []


def encode_plain(tokenizer, text: str) -> list[int]:
    """Untemplated text as the tokenizer defines it: its BOS (see `bos_ids`; not doubled when
    the text already starts with it), then the text's tokens, no EOS. Training (plain prompts,
    text rows, pretraining documents) and generation both encode plain text this way."""
    hf = hf_tokenizer(tokenizer)
    ids = list(hf.encode(text, add_special_tokens=False))
    bos = bos_ids(tokenizer)
    return ids if not bos or ids[: len(bos)] == bos else bos + ids


def encode_templated(tokenizer, text: str) -> list[int]:
    """Chat-template output: the template writes BOS if the model wants one, so nothing is
    added (as transformers' `apply_chat_template(tokenize=True)`, TRL and mlx-lm do)."""
    return list(hf_tokenizer(tokenizer).encode(text, add_special_tokens=False))


def json_type(value) -> str:
    """A value's type as the data file spells it: null, a boolean, a number, a list, an object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return {list: "a list", dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


def _text(value, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, not {json_type(value)}.")
    return value


def _encode_spans(tokenizer, text: str, spans: list[tuple[int, int]], eot: set[int]) -> Example:
    """Tokenise `text` once; mark tokens whose characters fall in any of the (start, end) spans.

    Anything a span holds after its last end-of-turn token (e.g. ChatML's trailing newline) is
    left unmasked, so the model learns to stop at the end-of-turn token.
    """
    hf = hf_tokenizer(tokenizer)
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = enc["offset_mapping"]
    mask = np.zeros(len(ids), dtype=bool)
    for start, end in spans:
        inside = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= end and b > a]
        if not inside:
            continue
        last = max((i for i in inside if int(ids[i]) in eot), default=inside[-1])
        mask[[i for i in inside if i <= last]] = True
    return Example(ids, mask)


def tokenize_chat(tokenizer, messages: list[dict], where: str, tools=None, train_roles=("assistant",)) -> Example:
    """Render a conversation with the chat template; mask = every assistant turn incl. end-of-turn.

    The span of assistant turn i is the text between render(messages[:i], generation prompt) and
    render(messages[:i+1]); templates must render prefixes consistently (checked).
    """
    full = render(tokenizer, messages, tools=tools, where=where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] not in train_roles:
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools, where=where) if i else ""
        upto = render(tokenizer, messages[: i + 1], tools=tools, where=where)
        if not full.startswith(upto) or not upto.startswith(before):
            raise UserError(f"{where}: the chat template does not render conversation prefixes consistently (it rewrites earlier turns), so assistant turns cannot be masked; use a template without history rewriting.")
        spans.append((len(before), len(upto)))
    if not spans:
        raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to train on; add one or drop the row.")
    return _encode_spans(tokenizer, full, spans, end_of_turn_ids(tokenizer))


def tokenize_text(tokenizer, text: str, where: str) -> Example:
    """A text row: the tokenizer's BOS (if it adds one), the text, EOS; every token trained."""
    hf = hf_tokenizer(tokenizer)
    ids = encode_plain(tokenizer, _text(text, "text", where))
    eos = hf.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids = ids + [eos]
    ids = np.asarray(ids, dtype=np.int32)
    return Example(ids, np.ones(len(ids), dtype=bool))


def tokenize_prompt_completion(tokenizer, prompt, completion, where: str) -> Example:
    """A prompt/completion row (strings or message lists); the mask covers the completion."""
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, (str, list)):
            raise UserError(f"{where}: '{key}' must be a string or a list of messages, not {json_type(value)}.")
    if isinstance(prompt, list) or isinstance(completion, list):
        p = normalise_messages(prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}], where)
        c = normalise_messages(completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}], where)
        return tokenize_chat(tokenizer, p + c, where)
    # Standard (string) prompt-completion: rendered as one user turn + one assistant turn when the
    # tokenizer has a chat template (as TRL does for instruct models), else plain concatenation.
    if getattr(hf_tokenizer(tokenizer), "chat_template", None):
        return tokenize_chat(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], where)
    hf = hf_tokenizer(tokenizer)
    p = encode_plain(tokenizer, prompt)  # the tokens generation gives the model for this prompt
    c = hf.encode(completion, add_special_tokens=False) + ([hf.eos_token_id] if hf.eos_token_id is not None else [])
    ids = np.asarray(p + c, dtype=np.int32)
    return Example(ids, np.concatenate([np.zeros(len(p), bool), np.ones(len(c), bool)]))


def tokenize_rows(tokenizer, kind: str, rows: list[dict]) -> list[Example]:
    """Tokenise SFT/LM rows (not preference rows, see preference.py)."""
    if kind in ("messages",):
        require_chat_template(tokenizer, rows[0].get(WHERE, "data"))
    out = []
    for row in rows:
        where = row.get(WHERE, "data")
        if kind == "text":
            out.append(tokenize_text(tokenizer, row["text"], where))
        elif kind == "messages":
            tools = row.get("tools")
            if tools is not None and not isinstance(tools, list):
                raise UserError(f"{where}: 'tools' must be a list of tool definitions, not {json_type(tools)}.")
            out.append(tokenize_chat(tokenizer, normalise_messages(row["messages"], where), where, tools=tools))
        elif kind == "prompt_completion":
            out.append(tokenize_prompt_completion(tokenizer, row["prompt"], row["completion"], where))
        else:
            raise UserError(f"{where}: preference rows need method dpo or orpo, not sft.")
    return out


def split_valid(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Split off `fraction` of rows (at least one) with a fixed seed."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_valid = max(1, int(round(len(rows) * fraction)))
    if n_valid >= len(rows):
        raise UserError(f"data.valid: splitting {fraction} off {len(rows)} rows leaves no training rows; use a smaller fraction or more data.")
    valid = [rows[i] for i in sorted(order[:n_valid])]
    train = [rows[i] for i in sorted(order[n_valid:])]
    return train, valid


# ---------------------------------------------------------------------------------------------
# Documents for language modelling: local files/folders or Hub datasets (streamed)


def is_local(spec: str) -> bool:
    """A local path (existing or path-like) rather than a Hub dataset id."""
    p = Path(spec).expanduser()
    return p.exists() or spec.startswith((".", "/", "~")) or p.suffix.lower() in FILE_TYPES


def _row_text(row: dict, tokenizer, where: str) -> str:
    """A language-modelling row (TRL's dataset formats): `text`, or `messages` rendered with the chat template."""
    if isinstance(row.get("text"), str):
        return row["text"]
    if "text" in row:
        _text(row["text"], "text", row.get(WHERE, where))
    if "messages" in row and tokenizer is not None:
        return render(tokenizer, normalise_messages(row["messages"], row.get(WHERE, where)), where=row.get(WHERE, where))
    keys = sorted(set(row) - {WHERE})
    raise UserError(f"{row.get(WHERE, where)}: pretraining needs a 'text' column (or 'messages'), the row has {keys}; map yours with data.columns, e.g. {{text: content}}.")


def load_documents(spec: str, data_cfg, split: str, tokenizer=None, limit: int | None = None) -> Iterator[str]:
    """Yield document texts from a local file/folder or a Hub dataset id (streamed).

    Args:
        spec: path, folder, `quickstart:NAME` or Hub dataset id.
        data_cfg: the recipe's data section (columns, config).
        split: Hub split name.
        tokenizer: renders `messages` rows with its chat template (None: text rows only).
        limit: stop after this many documents.
    """
    from smolmac.quickstart import resolve

    spec = resolve(spec)
    if is_local(spec):
        rows = load_rows(spec)
        if not rows:
            raise UserError(f"{spec}: the corpus is empty; give a file with some text.")
        rows = _map_columns(rows, data_cfg.columns)
        if not any(isinstance(r.get("text"), str) and r["text"].strip() or r.get("messages") for r in rows):
            raise UserError(f"{spec}: the corpus has no text; give a file with some text (or map your column with data.columns).")
        for row in rows[:limit]:
            yield _row_text(row, tokenizer, spec)
        return
    import datasets

    datasets.disable_progress_bars()
    try:  # streaming: a large Hub corpus is read as it is tokenised, never downloaded whole
        ds = datasets.load_dataset(spec, data_cfg.config, split=split, streaming=True)
    except Exception as e:
        raise UserError(f"data: could not open the Hub dataset '{spec}' split '{split}' ({str(e).splitlines()[0]}); check the id, data.config and data.split.") from None
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            return
        row = _map_columns([dict(row)], data_cfg.columns)[0]
        yield _row_text(row, tokenizer, f"{spec}[{split}][{i}]")
