"""Recipe form fields built from smolmac.config's dataclasses (types, defaults, help, choices).

Every recipe key becomes one row: a switch for booleans, a select for keys with choices, an
input otherwise (YAML-parsed unless the key is a plain string). The screen reads all rows back
into a recipe mapping and validates it with `config.apply_mapping` + `config.validate`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Union

import yaml
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Label, Select, Switch

from smolmac import config as C
from smolmac.errors import UserError
from smolmac.tui.i18n import t


@dataclass
class FieldSpec:
    key: str  # dotted recipe key, e.g. "train.lr"
    hint: Any  # the dataclass annotation
    default: Any
    help: str
    choices: tuple | None = None
    valid: str = ""  # the values it takes beyond its type, e.g. "> 0" (smolmac.config)

    @property
    def is_bool(self) -> bool:
        return self.hint is bool

    @property
    def is_text(self) -> bool:
        """Plain strings are taken verbatim (no YAML parsing); empty means null when allowed."""
        return self.hint is str or (typing.get_origin(self.hint) is Union and set(typing.get_args(self.hint)) == {str, type(None)})

    @property
    def widget_id(self) -> str:
        return "f-" + self.key.replace(".", "-")


def field_specs() -> dict[str, FieldSpec]:
    """Every recipe key (top level first, then each section), except pipeline `stages`."""
    out = {}
    hints = typing.get_type_hints(C.Config)
    for f in dataclasses.fields(C.Config):
        if f.name in C.SECTIONS or f.name == "stages":
            continue
        out[f.name] = FieldSpec(f.name, hints[f.name], f.default, f.metadata["help"], f.metadata.get("choices"), C.valid_values(f))
    for section, cls in C.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            out[key] = FieldSpec(key, hints[f.name], getattr(inst, f.name), f.metadata["help"], f.metadata.get("choices"), C.valid_values(f))
    return out


SPECS = field_specs()


def to_text(value) -> str:
    """How a value is shown in an input: YAML flow style for lists and mappings."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def parse_text(spec: FieldSpec, text: str):
    text = text.strip()
    if spec.is_text:
        return text if text or spec.hint is str else None
    if not text:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # left as text: validation then names the key and the expected type


def make_widget(spec: FieldSpec, value=None):
    value = spec.default if value is None else value
    if spec.is_bool:
        widget = Switch(bool(value), id=spec.widget_id)
    elif spec.choices:
        widget = Select([(str(c), c) for c in spec.choices], value=value, allow_blank=False, id=spec.widget_id, compact=True)
    else:
        widget = Input(to_text(value), id=spec.widget_id, compact=True, placeholder=t("empty") if not spec.is_text else "")
    widget.add_class("field")
    widget.field_key = spec.key
    return widget


def read_widget(widget):
    spec = SPECS[widget.field_key]
    if isinstance(widget, Switch):
        return widget.value
    if isinstance(widget, Select):
        return None if widget.value is Select.NULL else widget.value
    return parse_text(spec, widget.value)


def write_widget(widget, value) -> None:
    spec = SPECS[widget.field_key]
    if isinstance(widget, Switch):
        widget.value = bool(value)
    elif isinstance(widget, Select):
        widget.value = value if value in (spec.choices or ()) else spec.default
    else:
        widget.value = to_text(value)


class FieldRow(Horizontal):
    """A label (the key) and the key's widget on one line."""

    DEFAULT_CSS = """
    FieldRow { height: auto; }
    FieldRow > Label { width: 22; color: $text-muted; padding-right: 1; }
    FieldRow > Input, FieldRow > Select { width: 1fr; }
    FieldRow > Switch { height: 1; border: none; padding: 0; width: auto; }
    """

    def __init__(self, key: str, label: str | None = None, value=None):
        super().__init__(classes="field-row")
        self.spec = SPECS[key]
        self.label = label or key
        self.value = value

    def compose(self) -> ComposeResult:
        yield Label(self.label)
        yield make_widget(self.spec, self.value)


def nest(values: dict[str, Any]) -> dict:
    """{"train.lr": 1e-4, "model": "m"} -> {"train": {"lr": 1e-4}, "model": "m"}."""
    out: dict = {}
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


def values_of(cfg: C.Config) -> dict[str, Any]:
    """{dotted key: value} of every form key in a Config."""
    out = {}
    for key in SPECS:
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        out[key] = obj
    return out


def minimal(cfg: C.Config, keep=("model", "method", "data.train")) -> dict:
    """The recipe keys that differ from their defaults (plus `keep`), nested: a readable recipe."""
    mapping = nest({k: v for k, v in values_of(cfg).items() if k in keep or v != SPECS[k].default})
    if cfg.stages:
        mapping["stages"] = cfg.stages
    return mapping


def check(values: dict[str, Any], extra: dict | None = None) -> tuple[C.Config | None, str | None, str | None]:
    """Validate form values as a recipe: (config, None, None) or (None, message, offending key)."""
    mapping = nest(values)
    if extra:
        mapping.update(extra)
    try:
        cfg = C.apply_mapping(C.Config(), mapping, "form")
        C.validate(cfg, "form")
        C.check_stages(cfg, "form")  # each stage's keys, as a recipe file's stages are checked
        if cfg.stages:  # and each stage as the pipeline resolves it (shipped data paths, chain)
            from smolmac.pipeline import stage_config

            base = cfg.to_dict()
            for i, stage in enumerate(cfg.stages, 1):
                stage_config(base, stage, i, cfg.model if cfg.model is not None else "<previous stage>", None)
    except UserError as e:
        message = str(e)
        if "stages[" in message:
            return None, message, "stages"
        keys = [k for k in re.findall(r"'([a-z_]+(?:\.[a-z_]+)?)'", message) if k in SPECS]
        return None, message, keys[0] if keys else None
    return cfg, None, None
