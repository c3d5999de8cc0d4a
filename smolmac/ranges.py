"""What each recipe key accepts beyond its name: its type (`type_ok`), its range (`Range`,
declared next to the field in smolmac/config.py), and checks of structured values (betas, LoRA
targets, column maps, ...). Validation, `--help-keys`, the README key table and the app's form all
read these, so they say the same thing.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from smolmac.errors import did_you_mean


def number(x):
    """An int when the float is whole (YAML/JSON-friendly: 16.0 -> 16)."""
    return int(x) if float(x).is_integer() else float(x)


@dataclass(frozen=True)
class Range:
    """The valid values of a number: bounds (each closed or open) plus sentinels allowed besides.

    Declared next to the field (`_f(..., range=...)`), so validation, `--help-keys`, the README
    table and the app's form all say the same thing.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()  # sentinel values, e.g. (-1,) for "the whole validation set"

    def __contains__(self, x) -> bool:
        if x in self.also:
            return True
        if not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))

    def text(self) -> str:
        """'>= 1', '> 0', 'in [0, 1)', '-1 or >= 1'."""
        if self.lo is not None and self.hi is not None:
            core = f"in {'(' if self.lo_open else '['}{number(self.lo)}, {number(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            core = f"{'>' if self.lo_open else '>='} {number(self.lo)}"
        elif self.hi is not None:
            core = f"{'<' if self.hi_open else '<='} {number(self.hi)}"
        else:
            core = "finite"
        return " or ".join([*map(str, self.also), core])


def at_least(lo, **kw) -> Range:
    return Range(lo=lo, **kw)


def above(lo) -> Range:
    return Range(lo=lo, lo_open=True)


def between(lo, hi, hi_open=False, lo_open=False) -> Range:
    return Range(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


# Checks of structured values: each returns what is wrong ("" / None when nothing is).


def check_columns(value: dict):
    ours = ("text", "messages", "prompt", "completion", "chosen", "rejected", "tools")
    for k, v in value.items():
        if k not in ours:
            return f"maps unknown column '{k}'{did_you_mean(str(k), ours)} (ours are {', '.join(ours)}; write {{our_name: your_column}})"
        if not isinstance(v, str) or not v:
            return f"maps '{k}' to {v!r}, not to a column name"
    return None


def check_fraction_or_path(value):
    if isinstance(value, float) and not 0 < value < 1:
        return "as a fraction must be in (0, 1), e.g. 0.05"
    if isinstance(value, str) and not value.strip():
        return "is empty; give a file, folder or Hub dataset id, or a fraction such as 0.05"
    return None


def check_targets(value):
    if isinstance(value, str):
        return None if value == "all-linear" else "must be 'all-linear' or a list such as [q_proj, v_proj]"
    if not value:
        return "is an empty list; name at least one module, e.g. [q_proj, v_proj], or use all-linear"
    bad = next((x for x in value if not isinstance(x, str) or not x), None)
    return None if bad is None else f"must list module names such as q_proj, not {bad!r}"


def check_layers(value):
    if isinstance(value, str):
        return None if value == "all" else "must be 'all' or a number of last blocks (>= 1)"
    return None if value >= 1 else "must be 'all' or a number of last blocks (>= 1)"


def check_batch_size(value):
    if isinstance(value, str):
        return None if value == "auto" else "must be auto or a number of rows (>= 1)"
    return None if value >= 1 else "must be auto or a number of rows (>= 1)"


def check_betas(value):
    if len(value) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in value):
        return "must be two numbers [beta1, beta2], e.g. [0.9, 0.999]"
    if not all(0 <= b < 1 for b in value):
        return "must be two numbers in [0, 1), e.g. [0.9, 0.999]"
    return None


def check_prompts(value):
    bad = next((x for x in value if not isinstance(x, str)), None)
    return None if bad is None else f"must be a list of strings, but holds {bad!r}"


EARLY_STOPPING_KEYS = {"metric": "val_loss", "patience": None, "min_delta": 0.0, "mode": "auto"}


def check_early_stopping(value: dict):
    """train.early_stopping: known keys, patience >= 1 evaluations, min_delta >= 0, a direction."""
    if not value:
        return "must be a mapping like {metric: val_loss, patience: 3}, or null"
    bad = next((k for k in value if k not in EARLY_STOPPING_KEYS), None)
    if bad is not None:
        return f"has an unknown key '{bad}'{did_you_mean(str(bad), EARLY_STOPPING_KEYS)}; use metric, patience, min_delta and mode"
    full = {**EARLY_STOPPING_KEYS, **value}
    patience, metric, delta = full["patience"], full["metric"], full["min_delta"]
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        return f"needs patience: a whole number of evaluations >= 1, not {patience!r}"
    if not isinstance(metric, str) or not metric.strip():
        return f"needs metric: an eval metric such as val_loss, not {metric!r}"
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta < 0:
        return f"needs min_delta: a number >= 0, not {delta!r}"
    if full["mode"] not in ("auto", "min", "max"):
        return f"needs mode: auto, min or max, not {full['mode']!r}"
    return None


def check_not_empty(value):
    return "is empty" if isinstance(value, str) and not value.strip() else None


def type_ok(value, tp) -> tuple[bool, Any]:
    """Check/coerce `value` against an annotation. Returns (ok, coerced)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (Union, types.UnionType):  # Optional[X] and X | None
        for arg in typing.get_args(tp):
            ok, v = type_ok(value, arg)
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


def type_name(tp) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    return {type(None): "null", list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def valid_values(fdef: dataclasses.Field) -> str:
    """What a field accepts beyond its type, in words ("> 0", "in [0, 1)", "one of a, b"), or ""."""
    meta = fdef.metadata
    if "choices" in meta:
        return "one of " + ", ".join(map(str, meta["choices"]))
    if "range" in meta:
        return meta["range"].text()
    return meta.get("valid", "")


def field_problem(fdef: dataclasses.Field, value, given=None) -> str | None:
    """What is wrong with a type-checked value of a field (the end of a sentence), or None.

    Args:
        value: the value after type coercion; `given`: as the user wrote it (shown in the error).
    """
    meta = fdef.metadata
    if value is None:
        return None
    shown = repr(value if given is None else given)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    choices = meta.get("choices")
    if choices and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, not {shown}{did_you_mean(str(value), choices)}"
    rng = meta.get("range")
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value not in rng:
        return f"must be {rng.text()}, not {shown}" + (f" ({meta['hint']})" if meta.get("hint") else "")
    check = meta.get("check")
    problem = check(value) if check else None
    if problem:
        return f"{problem}, not {shown}" if problem.startswith("must") else problem
    return None
