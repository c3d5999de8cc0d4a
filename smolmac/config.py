"""Recipes: commented YAML backed by dataclasses with a default and help text for every field.

The same definitions validate recipe files, apply `--set section.key=value` overrides, are saved
as the run's `config.yaml`, and label the TUI's form fields. Precedence: CLI > recipe > defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from smolmac.errors import UserError, did_you_mean
from smolmac.methods import METHODS
from smolmac.ranges import (  # noqa: F401  (number, field_problem: re-exported, smolmac.config is their home for callers)
    Range,
    above,
    at_least,
    between,
    check_batch_size,
    check_betas,
    check_columns,
    check_early_stopping,
    check_fraction_or_path,
    check_layers,
    check_not_empty,
    check_prompts,
    check_targets,
    field_problem,
    number,
    type_name,
    type_ok,
    valid_values,
)
from smolmac.tokenizer import MIN_VOCAB
from smolmac.trackers import TRACKERS


def check_trackers(value):
    names = [value] if isinstance(value, str) else value
    bad = next((n for n in names if n not in TRACKERS), None)
    if bad is not None:
        return f"takes {', '.join(TRACKERS)}, not {bad!r}{did_you_mean(str(bad), TRACKERS)}"
    if len(set(names)) != len(names):
        return f"names a tracker twice: {names}"
    return None


def _f(default, help: str, choices: tuple | None = None, range: Range | None = None, check=None, valid: str | None = None, hint: str | None = None):
    """A dataclass field with help text and what values it takes.

    Args:
        choices: the allowed values.
        range: the allowed numbers (`Range`).
        check: `(value) -> problem or None` for structured values (lists, mappings, unions).
        valid: what `check` accepts, in words (for --help-keys, the README and the app).
        hint: what to do, appended to the error (e.g. "1e-4 is a common start").
    """
    meta = {"help": help}
    for key, value in (("choices", choices), ("range", range), ("check", check), ("valid", valid), ("hint", hint)):
        if value is not None:
            meta[key] = value
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    train: str | None = _f(None, "Training data: a local jsonl/json/csv/parquet/txt file or folder, or a Hub dataset id.", check=check_not_empty)
    valid: Union[str, float, None] = _f(None, "Validation data (same forms as train), or a fraction of train to split off (e.g. 0.05).", check=check_fraction_or_path, valid="a path or id, or a fraction in (0, 1)")
    format: str = _f("auto", "Row format; auto-detected from the columns when 'auto'.", ("auto", "text", "messages", "prompt_completion", "preference"))
    columns: dict = _f({}, "Map our column names to yours, e.g. {messages: conversations, prompt: question}.", check=check_columns, valid="{text|messages|prompt|completion|chosen|rejected|tools: your column}")
    config: str | None = _f(None, "Hub dataset configuration name (the second argument of datasets.load_dataset).")
    split: str = _f("train", "Split of a Hub dataset used for training.", check=check_not_empty)
    valid_split: str | None = _f(None, "Split of a Hub dataset used for validation (e.g. 'test').")
    max_rows: int | None = _f(None, "Use at most the first N training rows (in file order, before a validation fraction is split off).", range=at_least(1), hint="leave it out (null) to use every row")


@dataclass
class LoraConfig:
    rank: int = _f(8, "LoRA rank r.", range=at_least(1))
    alpha: float = _f(16.0, "LoRA alpha with PEFT semantics: the update is scaled by alpha / rank.", range=above(0))
    dropout: float = _f(0.0, "Dropout on the LoRA input.", range=between(0, 1, hi_open=True))
    targets: Union[str, list] = _f("all-linear", "'all-linear' or a list of leaf module names, e.g. [q_proj, v_proj].", check=check_targets, valid="all-linear or a non-empty list of names")
    layers: Union[str, int] = _f("all", "'all' or N: adapt only the last N transformer blocks.", check=check_layers, valid="all or >= 1")
    dora: bool = _f(False, "Use DoRA (weight-decomposed LoRA) instead of LoRA.")


@dataclass
class TrainConfig:
    steps: int = _f(0, "Optimizer steps; 0 means train for `epochs` epochs.", range=at_least(0))
    epochs: float = _f(1.0, "Epochs over the training data when steps is 0.", range=at_least(0))
    batch_size: Union[int, str] = _f(4, "Rows (or packed sequences) per micro-batch, or auto: choose the micro-batch, train.grad_accum and train.grad_checkpoint that fit train.memory_budget_gb fastest, keeping train.effective_batch rows per step.", check=check_batch_size, valid="auto or >= 1")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (gradients weighted by token count).", range=at_least(1))
    effective_batch: int | None = _f(None, "Rows per optimizer step that batch_size: auto keeps (default 16); only with batch_size: auto.", range=at_least(1), hint="leave it out (null) for 16")
    memory_budget_gb: float | None = _f(None, "Memory a run may use, in GB (the estimate is checked and batch_size: auto chooses against it); default: Metal's recommended working set on a Mac, 80% of RAM elsewhere.", range=above(0), hint="leave it out (null) for what this machine can use")
    lr: float = _f(1e-4, "Peak learning rate.", range=above(0), hint="0 would not train and a negative rate climbs the loss; 1e-4 (LoRA) or 1e-5 (full) are common starts")
    schedule: str = _f("cosine", "Learning-rate decay after warmup.", ("cosine", "linear", "constant"))
    warmup: int = _f(0, "Linear warmup steps from 0 to lr.", range=at_least(0))
    min_lr_ratio: float = _f(0.0, "Final learning rate as a fraction of lr (cosine/linear).", range=between(0, 1))
    weight_decay: float = _f(0.0, "AdamW weight decay (never applied to norms, biases or embeddings).", range=at_least(0))
    betas: list = _f([0.9, 0.999], "AdamW betas.", check=check_betas, valid="two numbers in [0, 1)")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this value; 0 disables.", range=at_least(0))
    max_seq_len: int = _f(1024, "Longest sequence in tokens; longer rows are truncated and counted.", range=at_least(16), hint="a chat template alone needs a dozen tokens or more")
    packing: bool = _f(False, "Pack short rows into max_seq_len sequences (no attention across rows).")
    seed: int = _f(0, "Seed for initialisation, data order and dropout.", range=between(0, 2**32 - 1))
    dtype: str = _f("auto", "Compute dtype for trainable and frozen weights; auto = bfloat16 on a GPU (Metal, CUDA), float32 on the CPU.", ("auto", "float32", "bfloat16", "float16"))
    grad_checkpoint: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    report_every: int = _f(10, "Steps between train events.", range=at_least(1))
    early_stopping: dict | None = _f(None, "Stop when an eval metric stops improving: {metric: val_loss, patience: 3, min_delta: 0.0, mode: auto}; patience counts evaluations (eval.every); the run then finishes normally.", check=check_early_stopping, valid="{metric, patience >= 1, min_delta >= 0, mode: auto|min|max}")


@dataclass
class EvalConfig:
    every: int = _f(0, "Steps between evaluations (val loss, perplexity, samples); 0 = only at the end.", range=at_least(0))
    batches: int = _f(-1, "Validation batches per evaluation; -1 = the whole validation set.", range=at_least(1, also=(-1,)))
    prompts: list = _f([], "Fixed prompts for greedy samples at each evaluation.", check=check_prompts, valid="a list of strings")
    max_tokens: int = _f(48, "Tokens generated per sample.", range=at_least(1))
    exact_match: str | None = _f(None, "Held-out {prompt, completion} jsonl: greedy answers are scored by exact match at every evaluation of sft/dpo/orpo runs and before and after each pipeline stage.", check=check_not_empty)
    preference: str | None = _f(None, "Held-out {prompt, chosen, rejected} jsonl: preference accuracy (chosen more likely than rejected) before and after a dpo/orpo stage.", check=check_not_empty)
    retain: str | None = _f(None, "General data the model should keep knowing (text or chat rows: a file, folder or Hub dataset id): sft/dpo/orpo runs report its loss and perplexity (retain_loss, retain_ppl) at the start and at every evaluation. In a pipeline, the pretraining stage's validation text by default.", check=check_not_empty)
    retain_rows: int = _f(256, "At most this many rows of eval.retain are scored.", range=at_least(1))


@dataclass
class SaveConfig:
    every: int = _f(0, "Steps between checkpoints; 0 = only when stopped and at the end.", range=at_least(0))
    keep: int = _f(2, "Checkpoints kept on disk (oldest are deleted).", range=at_least(1))
    best: str | None = _f(None, "Eval metric whose best value is kept as adapter-best/ (model-best/ for full weights) beside the last, e.g. val_loss or eval_rewards/accuracies.", check=check_not_empty, valid="an eval metric name, or null")
    best_mode: str = _f("auto", "Direction of save.best: min, max, or auto (min when the name has 'loss' or 'ppl', else max).", ("auto", "min", "max"))


@dataclass
class DPOConfig:
    beta: float = _f(0.1, "DPO temperature beta.", range=above(0))
    loss: str = _f("sigmoid", "DPO loss variant (TRL's definitions).", ("sigmoid", "ipo", "hinge"))
    label_smoothing: float = _f(0.0, "Label smoothing epsilon for the sigmoid loss (cDPO).", range=between(0, 0.5, hi_open=True))
    tokenization: str = _f("smolmac", "How pairs become tokens: smolmac (reply up to and including its end-of-turn token; plain strings become chat turns when the tokenizer has a template) or trl (TRL's DPOTrainer tokens: the template's trailing newline trained, plain strings kept plain with EOS and the tokenizer's BOS).", ("smolmac", "trl"))


@dataclass
class ORPOConfig:
    beta: float = _f(0.1, "Weight lambda of the odds-ratio term.", range=at_least(0))
    nll: str = _f("completion", "NLL over the chosen completion only, or the full chosen sequence like TRL.", ("completion", "full"))
    tokenization: str = _f("smolmac", "How pairs become tokens: smolmac (reply up to and including its end-of-turn token; plain strings become chat turns when the tokenizer has a template) or trl (TRL's ORPOTrainer tokens: the template's trailing newline trained, EOS appended again, BOS prepended, plain strings kept plain).", ("smolmac", "trl"))


@dataclass
class TokenizerConfig:
    path: str | None = _f(None, "Reuse an existing tokenizer (Hub id or directory) instead of training one.", check=check_not_empty)
    type: str = _f("bpe", "Tokenizer model to train.", ("bpe", "unigram"))
    vocab_size: int = _f(4096, "Vocabulary size of the trained tokenizer (special tokens included).", range=at_least(MIN_VOCAB), hint="a byte-level tokenizer needs its 256 bytes and the special tokens")
    data: str | None = _f(None, "Corpus for tokenizer training; defaults to data.train.", check=check_not_empty)


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
    name: str | None = _f(None, "Run name used for the default run directory.", check=check_not_empty)
    report_to: Union[str, list] = _f([], "Also mirror every event to these trackers: tensorboard, trackio, wandb (each an optional extra: pip install 'smolmac[tensorboard]'); events.jsonl stays the record.", check=check_trackers, valid="a list of " + ", ".join(TRACKERS))
    stages: list = _f([], "Pipeline stages, each a partial recipe applied over this one (see README).", valid="a list of partial recipes, each with a method")
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
    """(mapping, {dotted key: line}); list items are numbered from 0 (`stages.0.train.lr`)."""
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
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[f"{prefix}{i}"] = v.start_mark.line + 1
                walk(v, f"{prefix}{i}.")

    if node is not None:
        walk(node, "")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping of keys (model, method, data, ...).")
    return data, lines


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _set_field(obj, key: str, value, where: str, dotted: str):
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if key not in names:
        raise UserError(f"{where}: unknown key '{dotted}'{did_you_mean(key, names)}; see `smolmac train --help-keys` for every key.")
    tp = hints[key]
    ok, coerced = type_ok(value, tp)
    if not ok:
        raise UserError(f"{where}: '{dotted}' must be {type_name(tp)}, not {value!r}.")
    fdef = next(f for f in dataclasses.fields(obj) if f.name == key)
    problem = field_problem(fdef, coerced, value)
    if problem:
        raise UserError(f"{where}: '{dotted}' {problem}.")
    setattr(obj, key, coerced)


def _locator(source: str, lines: dict | None, stage: int | None):
    """`where(dotted)` -> "file:line" of a key (of stage `stage`, 1-based, when given)."""
    lines = lines or {}
    prefix = f"stages.{stage - 1}." if stage else ""

    def where(dotted: str) -> str:
        for key in (prefix + dotted, prefix.rstrip(".")):
            if key and key in lines:
                return f"{source}:{lines[key]}"
        return source

    return where


def apply_mapping(cfg: Config, data: dict, source: str = "<recipe>", lines: dict | None = None, stage: int | None = None) -> Config:
    """Apply a (possibly partial) recipe mapping onto `cfg` in place, validating every key.

    Args:
        source: the file (or "--set", "form") named in errors.
        lines: `{dotted key: line}` of the file (from `read_recipe`).
        stage: `data` is pipeline stage `stage` (1-based) of the file: keys are named
            `stages[i].key` and their lines looked up under `stages.<i-1>.`.
    """
    where = _locator(source, lines, stage)
    name = f"stages[{stage}]." if stage else ""

    for key, value in data.items():
        key = str(key)
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise UserError(f"{where(key)}: '{name}{key}' must be a mapping of {SECTIONS[key].__name__} keys, not {value!r}.")
            section = getattr(cfg, key)
            for sub, v in value.items():
                dotted = f"{key}.{sub}"
                _set_field(section, str(sub), v, where(dotted), name + dotted)
        else:
            if key not in TOP_LEVEL:
                raise UserError(f"{where(key)}: unknown key '{name}{key}'{did_you_mean(key, TOP_LEVEL | set(SECTIONS))}; see `smolmac train --help-keys` for every key.")
            _set_field(cfg, key, value, where(key), name + key)
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


def shipped_recipes_dir() -> Path | None:
    """The recipes installed with smolmac (package data `smolmac.recipes`, the repo's recipes/)."""
    import importlib.util

    spec = importlib.util.find_spec("smolmac.recipes")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return None


def _about(path: Path) -> str:
    """A recipe's one-line description: its first comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def list_recipes(user_dir: str | Path = "recipes") -> list[dict]:
    """Recipes addressable by name: the user's own (`user_dir/*.yaml`) first, then the shipped ones.

    Each is `{name, path, about, pipeline, shipped}`; a user's recipe hides a shipped one of the
    same name (what `find_recipe` resolves too).
    """
    out, seen, names = [], set(), set()
    for folder, shipped in ((Path(user_dir), False), (shipped_recipes_dir(), True)):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml")):
            if path.resolve() in seen or path.stem in names:
                continue
            seen.add(path.resolve())
            names.add(path.stem)
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                data = None  # listed anyway: loading it names the line that is wrong
            out.append({"name": path.stem, "path": str(path), "about": _about(path), "shipped": shipped,
                        "pipeline": isinstance(data, dict) and bool(data.get("stages"))})
    return out


def find_recipe(spec: str | Path, user_dir: str | Path = "recipes") -> Path:
    """A recipe file from a path, or from a name: `user_dir/NAME.yaml`, else the shipped NAME.yaml."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a recipe file; pass the path of a YAML recipe such as recipes/quickstart.yaml, or the name of one.")
    if path.parent == Path(".") and path.suffix in ("", ".yaml", ".yml"):
        for r in list_recipes(user_dir):
            if r["name"] == path.stem:
                return Path(r["path"])
    names = ", ".join(r["name"] for r in list_recipes(user_dir))
    raise UserError(f"{spec}: recipe file not found; pass the path of a YAML recipe or the name of one ({names}); `smolmac recipes` lists them.")


def read_recipe(path: str | Path) -> tuple[dict, dict]:
    """Read a recipe file (a path, or the name of a recipe: see `find_recipe`): (mapping, {dotted key: line})."""
    from smolmac.data import read_utf8

    path = find_recipe(path)
    return _load_yaml_with_lines(read_utf8(path), str(path))


def load_recipe(recipe: str | Path | dict | Config | None = None, overrides: dict | list | None = None) -> Config:
    """Build a validated Config from a recipe path, a mapping or a Config, plus overrides.

    Every key is checked (type, range, choices), pipeline stages included, and an error names
    the file and line of the offending key.

    Args:
        recipe: YAML path, a mapping with recipe keys, an existing Config, or None (defaults).
        overrides: nested mapping `{"train": {"lr": 1e-4}}` or a list of "train.lr=1e-4" strings.
    """
    source, lines = "<recipe>", {}
    if isinstance(recipe, Config):
        cfg = apply_mapping(Config(), recipe.to_dict(), "<config>")
    else:
        cfg = Config()
        if isinstance(recipe, dict):
            apply_mapping(cfg, recipe, "<recipe>")
        elif recipe is not None:
            path = find_recipe(recipe)  # a path, or the name of one of your or the shipped recipes
            data, lines = read_recipe(path)
            source = str(path)
            apply_mapping(cfg, data, source, lines)
            if cfg.name is None:
                cfg.name = path.stem
    if overrides:
        if isinstance(overrides, (list, tuple)):
            overrides = nest(dict(parse_override(o) for o in overrides))
        apply_mapping(cfg, overrides, "--set")
    validate(cfg, source, lines)
    check_stages(cfg, source, lines)
    return cfg


def validate(cfg: Config, source: str = "recipe", lines: dict | None = None, stage: int | None = None):
    """Cross-field checks that a single key cannot express (each key's own type and range are
    checked as it is set); errors name `source:line` of the key when `lines` has it."""
    where = _locator(source, lines, stage)
    name = f"stages[{stage}]." if stage else ""
    if cfg.method != "tokenizer" and cfg.model is None and not cfg.stages:
        raise UserError(f"{where('model')}: '{name}model' is missing; give a Hub id, a local directory, or {{new: {{preset: nano}}}}.")
    if isinstance(cfg.model, dict) and not isinstance(cfg.model.get("new") or {}, dict):
        raise UserError(f"{where('model')}: '{name}model.new' must be a mapping such as {{preset: nano}}, not {cfg.model['new']!r}.")
    if isinstance(cfg.model, dict) and "new" not in cfg.model:
        raise UserError(f"{where('model')}: '{name}model' as a mapping must have a 'new' key, e.g. model: {{new: {{preset: nano}}}}.")
    if (cfg.model is not None and not isinstance(cfg.model, (str, dict))) or cfg.model == "":
        raise UserError(f"{where('model')}: '{name}model' must be a Hub id, a directory or {{new: ...}}, not {cfg.model!r}.")
    t = cfg.train
    if t.steps == 0 and t.epochs == 0:
        raise UserError(f"{where('train.epochs')}: '{name}train.epochs' is 0 and 'train.steps' is 0, so nothing would train; set train.steps > 0 or train.epochs > 0.")
    if t.batch_size == "auto" and t.grad_accum != 1:
        raise UserError(f"{where('train.grad_accum')}: '{name}train.grad_accum' is chosen by train.batch_size: auto; remove it, or give train.batch_size a number.")
    if t.effective_batch is not None and t.batch_size != "auto":
        raise UserError(f"{where('train.effective_batch')}: '{name}train.effective_batch' applies only to train.batch_size: auto; remove it, or set train.batch_size: auto.")
    if cfg.dpo.label_smoothing and cfg.dpo.loss != "sigmoid":
        raise UserError(f"{where('dpo.label_smoothing')}: '{name}dpo.label_smoothing' applies only to dpo.loss: sigmoid, not {cfg.dpo.loss}; set it to 0.")
    if isinstance(cfg.report_to, str):  # `--set report_to=wandb` means [wandb]
        cfg.report_to = [cfg.report_to]
    if cfg.train.early_stopping and not cfg.stages and cfg.eval.every <= 0:
        raise UserError(f"{where('train.early_stopping')}: '{name}train.early_stopping' needs evaluations during the run; set eval.every (e.g. 100).")


def check_stages(cfg: Config, source: str = "recipe", lines: dict | None = None):
    """Check every pipeline stage as the pipeline will build it (top-level keys, then the
    stage's), so a bad key in stage 3 fails before stage 1 trains; errors name the file and line."""
    if not cfg.stages:
        return
    base = {k: v for k, v in cfg.to_dict().items() if k != "stages"}
    for i, stage in enumerate(cfg.stages, 1):
        where = _locator(source, lines, i)("stages")
        if not isinstance(stage, dict) or "method" not in stage:
            raise UserError(f"{where}: stages[{i}]: each stage must be a mapping with at least 'method', e.g. {{method: sft, train: {{steps: 100}}}}.")
        if "stages" in stage:
            raise UserError(f"{where}: stages[{i}] cannot have its own 'stages'.")
        scfg = apply_mapping(Config(), base, "<recipe>")
        apply_mapping(scfg, stage, source, lines, stage=i)
        if scfg.model is None:
            scfg.model = "<previous stage>"  # chained from the stage before
        validate(scfg, source, lines, stage=i)


def flatten(mapping: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1} (lists and `model: {new: ...}` stay whole values)."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key in SECTIONS and not prefix:
            out.update(flatten(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_diff(recipes: list[dict]) -> list[tuple[str, list]]:
    """The keys whose values differ between recipes (e.g. runs' config.yaml), each with one value
    per recipe (None where a recipe lacks the key), in recipe key order."""
    flat = [flatten(r or {}) for r in recipes]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [(k, [f.get(k) for f in flat]) for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def field_help(section: str | None = None) -> list[tuple[str, str, Any, str, str]]:
    """(dotted key, type, default, help, valid values) for every key; used by --help-keys, the
    README table and the app's form."""
    rows, top = [], Config()
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            continue
        rows.append((f.name, type_name(_hints(Config)[f.name]), getattr(top, f.name), f.metadata["help"], valid_values(f)))
    for name, cls in SECTIONS.items():
        if section and name != section:
            continue
        hints = _hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            rows.append((f"{name}.{f.name}", type_name(hints[f.name]), getattr(inst, f.name), f.metadata["help"], valid_values(f)))
    return rows
