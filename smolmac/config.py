"""Recipes: commented YAML backed by dataclasses with a default and help text for every field.

The same definitions validate recipe files, apply `--set section.key=value` overrides, are saved
as the run's `config.yaml`, and label the TUI's form fields. Precedence: CLI > recipe > defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from smolmac.errors import UserError, did_you_mean
from smolmac.methods import METHODS
from smolmac.trackers import TRACKERS


def number(x):
    """An int when the float is whole (YAML/JSON-friendly: 16.0 -> 16)."""
    return int(x) if float(x).is_integer() else float(x)


def _f(default, help: str, choices: tuple | None = None):
    """A dataclass field with help text (and optional allowed values)."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    train: str | None = _f(None, "Training data: a local jsonl/json/csv/parquet/txt file or folder, or a Hub dataset id.")
    valid: Union[str, float, None] = _f(None, "Validation data (same forms as train), or a fraction of train to split off (e.g. 0.05).")
    format: str = _f("auto", "Row format; auto-detected from the columns when 'auto'.", ("auto", "text", "messages", "prompt_completion", "preference"))
    columns: dict = _f({}, "Map our column names to yours, e.g. {messages: conversations, prompt: question}.")
    config: str | None = _f(None, "Hub dataset configuration name (the second argument of datasets.load_dataset).")
    split: str = _f("train", "Split of a Hub dataset used for training.")
    valid_split: str | None = _f(None, "Split of a Hub dataset used for validation (e.g. 'test').")
    max_rows: int | None = _f(None, "Use at most the first N training rows (in file order, before a validation fraction is split off).")


@dataclass
class LoraConfig:
    rank: int = _f(8, "LoRA rank r.")
    alpha: float = _f(16.0, "LoRA alpha with PEFT semantics: the update is scaled by alpha / rank.")
    dropout: float = _f(0.0, "Dropout on the LoRA input.")
    targets: Union[str, list] = _f("all-linear", "'all-linear' or a list of leaf module names, e.g. [q_proj, v_proj].")
    layers: Union[str, int] = _f("all", "'all' or N: adapt only the last N transformer blocks.")
    dora: bool = _f(False, "Use DoRA (weight-decomposed LoRA) instead of LoRA.")


@dataclass
class TrainConfig:
    steps: int = _f(0, "Optimizer steps; 0 means train for `epochs` epochs.")
    epochs: float = _f(1.0, "Epochs over the training data when steps is 0.")
    batch_size: int = _f(4, "Rows (or packed sequences) per micro-batch.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (gradients weighted by token count).")
    lr: float = _f(1e-4, "Peak learning rate.")
    schedule: str = _f("cosine", "Learning-rate decay after warmup.", ("cosine", "linear", "constant"))
    warmup: int = _f(0, "Linear warmup steps from 0 to lr.")
    min_lr_ratio: float = _f(0.0, "Final learning rate as a fraction of lr (cosine/linear).")
    weight_decay: float = _f(0.0, "AdamW weight decay (never applied to norms, biases or embeddings).")
    betas: list = _f([0.9, 0.999], "AdamW betas.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this value; 0 disables.")
    max_seq_len: int = _f(1024, "Longest sequence in tokens; longer rows are truncated and counted.")
    packing: bool = _f(False, "Pack short rows into max_seq_len sequences (no attention across rows).")
    seed: int = _f(0, "Seed for initialisation, data order and dropout.")
    dtype: str = _f("float32", "Compute dtype for trainable and frozen weights.", ("float32", "bfloat16", "float16"))
    grad_checkpoint: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    report_every: int = _f(10, "Steps between train events.")


@dataclass
class EvalConfig:
    every: int = _f(0, "Steps between evaluations (val loss, perplexity, samples); 0 = only at the end.")
    batches: int = _f(-1, "Validation batches per evaluation; -1 = the whole validation set.")
    prompts: list = _f([], "Fixed prompts for greedy samples at each evaluation.")
    max_tokens: int = _f(48, "Tokens generated per sample.")
    exact_match: str | None = _f(None, "Held-out {prompt, completion} jsonl: greedy answers are scored by exact match at every evaluation of sft/dpo/orpo runs and before and after each pipeline stage.")
    preference: str | None = _f(None, "Held-out {prompt, chosen, rejected} jsonl: preference accuracy (chosen more likely than rejected) before and after a dpo/orpo stage.")
    retain: str | None = _f(None, "General data the model should keep knowing (text or chat rows: a file, folder or Hub dataset id): sft/dpo/orpo runs report its loss and perplexity (retain_loss, retain_ppl) at the start and at every evaluation. In a pipeline, the pretraining stage's validation text by default.")
    retain_rows: int = _f(256, "At most this many rows of eval.retain are scored.")


@dataclass
class SaveConfig:
    every: int = _f(0, "Steps between checkpoints; 0 = only when stopped and at the end.")
    keep: int = _f(2, "Checkpoints kept on disk (oldest are deleted).")


@dataclass
class DPOConfig:
    beta: float = _f(0.1, "DPO temperature beta.")
    loss: str = _f("sigmoid", "DPO loss variant (TRL's definitions).", ("sigmoid", "ipo", "hinge"))
    label_smoothing: float = _f(0.0, "Label smoothing epsilon for the sigmoid loss (cDPO).")
    tokenization: str = _f("smolmac", "How pairs become tokens: smolmac (reply up to and including its end-of-turn token; plain strings become chat turns when the tokenizer has a template) or trl (TRL's DPOTrainer tokens: the template's trailing newline trained, plain strings kept plain with EOS and the tokenizer's BOS).", ("smolmac", "trl"))


@dataclass
class ORPOConfig:
    beta: float = _f(0.1, "Weight lambda of the odds-ratio term.")
    nll: str = _f("completion", "NLL over the chosen completion only, or the full chosen sequence like TRL.", ("completion", "full"))
    tokenization: str = _f("smolmac", "How pairs become tokens: smolmac (reply up to and including its end-of-turn token; plain strings become chat turns when the tokenizer has a template) or trl (TRL's ORPOTrainer tokens: the template's trailing newline trained, EOS appended again, BOS prepended, plain strings kept plain).", ("smolmac", "trl"))


@dataclass
class TokenizerConfig:
    path: str | None = _f(None, "Reuse an existing tokenizer (Hub id or directory) instead of training one.")
    type: str = _f("bpe", "Tokenizer model to train.", ("bpe", "unigram"))
    vocab_size: int = _f(4096, "Vocabulary size of the trained tokenizer (special tokens included).")
    data: str | None = _f(None, "Corpus for tokenizer training; defaults to data.train.")


SECTIONS = {
    "data": DataConfig,
    "lora": LoraConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "save": SaveConfig,
    "dpo": DPOConfig,
    "orpo": ORPOConfig,
    "tokenizer": TokenizerConfig,
}


@dataclass
class Config:
    model: Any = _f(None, "Hub id or local directory of an mlx-lm model, or {new: {preset: nano, ...}} for a model built from scratch.")
    method: str = _f("sft", "Training method: " + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + ".", tuple(METHODS))
    full: bool = _f(False, "Full fine-tuning instead of LoRA/DoRA.")
    trust_remote_code: bool = _f(False, "Allow the tokenizer's custom code from the Hub.")
    name: str | None = _f(None, "Run name used for the default run directory.")
    report_to: Union[str, list] = _f([], "Also mirror every event to these trackers: tensorboard, trackio, wandb (each an optional extra: pip install 'smolmac[tensorboard]'); events.jsonl stays the record.")
    stages: list = _f([], "Pipeline stages, each a partial recipe applied over this one (see README).")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training and validation data."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA/DoRA adapter."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimisation."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation and samples."})
    save: SaveConfig = field(default_factory=SaveConfig, metadata={"help": "Checkpoints."})
    dpo: DPOConfig = field(default_factory=DPOConfig, metadata={"help": "DPO (method: dpo)."})
    orpo: ORPOConfig = field(default_factory=ORPOConfig, metadata={"help": "ORPO (method: orpo)."})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata={"help": "Tokenizer training (pretraining)."})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


TOP_LEVEL = {f.name for f in dataclasses.fields(Config)} - set(SECTIONS)


# ---------------------------------------------------------------------------------------------
# Loading and validation


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping key as `{dotted.key: line}`."""


def _load_yaml_with_lines(text: str, source: str) -> tuple[dict, dict]:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: this is not valid YAML ({problem}); fix the indentation or quoting there.") from None
    lines: dict[str, int] = {}

    def walk(n, prefix):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    if node is not None:
        walk(node, "")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping of keys (model, method, data, ...).")
    return data, lines


def _type_ok(value, tp) -> tuple[bool, Any]:
    """Check/coerce `value` against an annotation. Returns (ok, coerced)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (Union, types.UnionType):  # Optional[X] and X | None
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        if isinstance(value, str):
            try:
                return True, int(value)
            except ValueError:
                return False, value
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if tp is list or origin is list:
        return isinstance(value, list), value
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    return True, value


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "null", list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _set_field(obj, key: str, value, where: str, dotted: str):
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if key not in names:
        raise UserError(f"{where}: unknown key '{dotted}'{did_you_mean(key, names)}; see `smolmac train --help-keys` for every key.")
    tp = hints[key]
    ok, coerced = _type_ok(value, tp)
    if not ok:
        raise UserError(f"{where}: '{dotted}' must be {_type_name(tp)}, not {value!r}.")
    fdef = next(f for f in dataclasses.fields(obj) if f.name == key)
    choices = fdef.metadata.get("choices")
    if choices and coerced not in choices:
        raise UserError(f"{where}: '{dotted}' must be one of {', '.join(map(str, choices))}, not {coerced!r}{did_you_mean(str(coerced), choices)}.")
    setattr(obj, key, coerced)


def apply_mapping(cfg: Config, data: dict, source: str = "<recipe>", lines: dict | None = None) -> Config:
    """Apply a (possibly partial) recipe mapping onto `cfg` in place, validating every key."""
    lines = lines or {}

    def where(dotted):
        return f"{source}:{lines[dotted]}" if dotted in lines else source

    for key, value in data.items():
        key = str(key)
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise UserError(f"{where(key)}: '{key}' must be a mapping of {SECTIONS[key].__name__} keys, not {value!r}.")
            section = getattr(cfg, key)
            for sub, v in value.items():
                dotted = f"{key}.{sub}"
                _set_field(section, str(sub), v, where(dotted), dotted)
        else:
            if key not in TOP_LEVEL:
                raise UserError(f"{where(key)}: unknown key '{key}'{did_you_mean(key, TOP_LEVEL | set(SECTIONS))}; see `smolmac train --help-keys` for every key.")
            _set_field(cfg, key, value, where(key), key)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-4` -> ("train.lr", 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set train.lr=1e-4.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def nest(dotted: dict) -> dict:
    """{"train.lr": 1} -> {"train": {"lr": 1}}."""
    out: dict = {}
    for key, value in dotted.items():
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise UserError(f"--set {key}: '{p}' is not a section.")
        d[parts[-1]] = value
    return out


def read_recipe(path: str | Path) -> tuple[dict, dict]:
    """Read a recipe file: (mapping, {dotted key: line})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found; pass the path of a YAML recipe such as recipes/quickstart.yaml.")
    return _load_yaml_with_lines(path.read_text(encoding="utf-8"), str(path))


def load_recipe(recipe: str | Path | dict | Config | None = None, overrides: dict | list | None = None) -> Config:
    """Build a validated Config from a recipe path, a mapping or a Config, plus overrides.

    Args:
        recipe: YAML path, a mapping with recipe keys, an existing Config, or None (defaults).
        overrides: nested mapping `{"train": {"lr": 1e-4}}` or a list of "train.lr=1e-4" strings.
    """
    if isinstance(recipe, Config):
        cfg = dataclasses.replace(recipe)
        cfg = apply_mapping(Config(), recipe.to_dict(), "<config>")
    else:
        cfg = Config()
        if isinstance(recipe, dict):
            apply_mapping(cfg, recipe, "<recipe>")
        elif recipe is not None:
            data, lines = read_recipe(recipe)
            apply_mapping(cfg, data, str(recipe), lines)
            if cfg.name is None:
                cfg.name = Path(recipe).stem
    if overrides:
        if isinstance(overrides, (list, tuple)):
            overrides = nest(dict(parse_override(o) for o in overrides))
        apply_mapping(cfg, overrides, "--set")
    validate(cfg)
    return cfg


def validate(cfg: Config, source: str = "recipe"):
    """Cross-field checks that a single key cannot express."""
    if cfg.method != "tokenizer" and cfg.model is None and not cfg.stages:
        raise UserError(f"{source}: 'model' is missing; give a Hub id, a local directory, or {{new: {{preset: nano}}}}.")
    if isinstance(cfg.model, dict) and "new" not in cfg.model:
        raise UserError(f"{source}: 'model' as a mapping must have a 'new' key, e.g. model: {{new: {{preset: nano}}}}.")
    if cfg.model is not None and not isinstance(cfg.model, (str, dict)):
        raise UserError(f"{source}: 'model' must be a Hub id, a directory or {{new: ...}}, not {cfg.model!r}.")
    t = cfg.train
    for key in ("batch_size", "grad_accum", "max_seq_len"):
        if getattr(t, key) < 1:
            raise UserError(f"{source}: 'train.{key}' must be at least 1, not {getattr(t, key)}.")
    if t.steps < 0 or t.epochs <= 0 and t.steps == 0:
        raise UserError(f"{source}: set 'train.steps' > 0 or 'train.epochs' > 0.")
    if cfg.lora.rank < 1:
        raise UserError(f"{source}: 'lora.rank' must be at least 1, not {cfg.lora.rank}.")
    if isinstance(cfg.lora.layers, str) and cfg.lora.layers != "all":
        raise UserError(f"{source}: 'lora.layers' must be 'all' or a number of last blocks, not {cfg.lora.layers!r}.")
    if isinstance(cfg.lora.targets, str) and cfg.lora.targets != "all-linear":
        raise UserError(f"{source}: 'lora.targets' must be 'all-linear' or a list such as [q_proj, v_proj], not {cfg.lora.targets!r}.")
    if isinstance(cfg.report_to, str):  # `--set report_to=wandb` means [wandb]
        cfg.report_to = [cfg.report_to]
    for name in cfg.report_to:
        if name not in TRACKERS:
            raise UserError(f"{source}: 'report_to' takes {', '.join(TRACKERS)}, not {name!r}{did_you_mean(str(name), TRACKERS)}.")
    if len(set(cfg.report_to)) != len(cfg.report_to):
        raise UserError(f"{source}: 'report_to' names a tracker twice: {cfg.report_to}.")
    if cfg.eval.retain_rows < 1:
        raise UserError(f"{source}: 'eval.retain_rows' must be at least 1, not {cfg.eval.retain_rows}.")
    if isinstance(cfg.data.valid, float) and not 0 < cfg.data.valid < 1:
        raise UserError(f"{source}: 'data.valid' as a fraction must be between 0 and 1, not {cfg.data.valid}.")


def field_help(section: str | None = None) -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for every key; used by --help-keys, README and the TUI."""
    rows = []
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            continue
        rows.append((f.name, _type_name(_hints(Config)[f.name]), f.default if f.default is not dataclasses.MISSING else None, f.metadata["help"]))
    for name, cls in SECTIONS.items():
        if section and name != section:
            continue
        hints = _hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            rows.append((f"{name}.{f.name}", _type_name(hints[f.name]), getattr(inst, f.name), f.metadata["help"]))
    return rows
