"""Adapters: one place that reads, attaches and fuses LoRA/DoRA adapters, whatever their layout.

Every source (a run's adapter/, the last checkpoint of an unfinished run, an mlx-lm adapter dir,
a PEFT adapter dir) becomes one `Adapter` held in mlx-lm orientation; exporters
(smolmac/export/) write it in any layout, `attach` puts it on a loaded model, `fuse` merges it.
PEFT `lora_A.weight` is mlx-lm's `lora_a.T` (r, in), `lora_B.weight` is `lora_b.T` (out, r), and
DoRA's `lora_magnitude_vector` is mlx-lm's `m` unchanged (both compute
`m / ||W + scale·BA||_row ⊙ (W x + scale·B A x)`).

    from smolmac.adapters import attach
    model, tokenizer, *_ = smolmac.models.load_model("base")
    attach(model, "runs/x")          # a run dir, an mlx-lm adapter dir or a PEFT adapter dir
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from smolmac.errors import UserError, did_you_mean

PEFT_PREFIX = "base_model.model."
# mlx-lm leaf -> PEFT suffix
PEFT_SUFFIX = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight", "m": "lora_magnitude_vector"}
_BLOCK = re.compile(r"^(?P<prefix>(?:.*?\.)?)(?P<idx>\d+)\.(?P<rel>.+)$")


@dataclass
class Adapter:
    """A LoRA/DoRA adapter independent of its file layout.

    `weights` use mlx-lm keys: `<module>.lora_a` (in, r), `<module>.lora_b` (r, out), `<module>.m`
    (out,) for DoRA, where <module> is the model path shared by mlx-lm and transformers
    (e.g. `model.layers.3.self_attn.q_proj`).
    """

    weights: dict = field(repr=False)
    rank: int
    alpha: float
    scale: float
    dropout: float = 0.0
    dora: bool = False
    rslora: bool = False
    base: str | None = None  # the model string it was trained on (Hub id or path)
    base_path: str | None = None  # where that model was loaded from
    method: str | None = None
    n_blocks: int | None = None  # transformer blocks of the base, when known

    def modules(self) -> list[str]:
        return sorted({k.rsplit(".", 1)[0] for k in self.weights})

    def layout(self) -> tuple[list[int], list[str]] | None:
        """(block indices, block-relative paths) when the adapted modules are the same in every
        adapted block (what PEFT's target_modules + layers_to_transform and mlx-lm express)."""
        parts = [_BLOCK.match(m) for m in self.modules()]
        if not parts or not all(parts) or len({p["prefix"] for p in parts}) != 1:
            return None
        layers = sorted({int(p["idx"]) for p in parts})
        rel = sorted({p["rel"] for p in parts})
        if len(parts) != len(layers) * len(rel):
            return None
        return layers, rel

    def weights_as(self, dtype: str | None = None) -> dict:
        """The weights, cast to `dtype` (float32, float16, bfloat16) when given."""
        from smolmac.models import DTYPES

        return {k: v.astype(DTYPES[dtype]) for k, v in self.weights.items()} if dtype else dict(self.weights)

    def mlx_config(self) -> dict:
        """mlx-lm's adapter_config.json (plus smolmac's rank/alpha/model records)."""
        layout = self.layout()
        layers, rel = layout if layout else ([], [])
        cfg = {
            "fine_tune_type": "dora" if self.dora else "lora",
            "num_layers": len(layers),
            "lora_parameters": {"rank": self.rank, "scale": self.scale, "dropout": self.dropout, "keys": rel},
            "rank": self.rank,
            "alpha": self.alpha,
            "model": self.base,
            "base_model_path": self.base_path,
            "method": self.method,
            "num_blocks": self.n_blocks,
        }
        if self.rslora:
            cfg["use_rslora"] = True
        return cfg


# ---------------------------------------------------------------------------------------------
# Reading


def _base_blocks(*candidates) -> int | None:
    """num_hidden_layers from a locally available config.json (a directory or the HF cache)."""
    for spec in candidates:
        if not spec:
            continue
        path = Path(str(spec)).expanduser() / "config.json"
        if not path.is_file():
            from huggingface_hub import try_to_load_from_cache
            from huggingface_hub.errors import HFValidationError

            try:
                cached = try_to_load_from_cache(str(spec), "config.json")
            except HFValidationError:  # a path that does not exist, not a Hub id
                cached = None
            path = Path(cached) if isinstance(cached, str) else None
        if path and path.is_file():
            cfg = json.loads(path.read_text())
            n = cfg.get("num_hidden_layers") or (cfg.get("text_config") or {}).get("num_hidden_layers")
            if n:
                return int(n)
    return None


def read_mlx_adapter(adapter_dir: str | Path, weights_file: str | Path | None = None, config: dict | None = None) -> Adapter:
    """An mlx-lm adapter dir (adapter_config.json + adapters.safetensors) as an Adapter."""
    adapter_dir = Path(adapter_dir)
    if config is None:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("fine_tune_type") == "full":
        raise UserError(f"{adapter_dir}: this mlx-lm adapter holds full weights, not LoRA; export the run's model/ with --format hf.")
    weights = mx.load(str(weights_file or adapter_dir / "adapters.safetensors"))
    a = next((v for k, v in sorted(weights.items()) if k.endswith(".lora_a")), None)
    if a is None:
        raise UserError(f"{adapter_dir}: the adapter has no lora_a tensors; it is not a LoRA/DoRA adapter.")
    lp = config.get("lora_parameters") or {}
    rank = int(a.shape[1])
    scale = float(lp.get("scale", 20.0))
    rslora = bool(config.get("use_rslora", False))
    alpha = config.get("alpha", scale * (math.sqrt(rank) if rslora else rank))
    idx = [int(m["idx"]) for m in map(_BLOCK.match, weights) if m]
    # mlx-lm adapts the last `num_layers` blocks, so the last adapted block is the model's last
    n_blocks = config.get("num_blocks") or (max(idx) + 1 if idx else None)
    return Adapter(
        weights=weights, rank=rank, alpha=alpha, scale=scale, dropout=float(lp.get("dropout", 0.0)),
        dora=config.get("fine_tune_type") == "dora", rslora=rslora, base=config.get("model"),
        base_path=config.get("base_model_path"), method=config.get("method"), n_blocks=n_blocks,
    )


_PEFT_UNSUPPORTED = {"modules_to_save": (None, []), "rank_pattern": (None, {}), "alpha_pattern": (None, {}),
                     "fan_in_fan_out": (False, None), "bias": ("none", None), "target_parameters": (None, []),
                     "layer_replication": (None, []), "lora_bias": (False, None), "use_qalora": (False, None)}


def read_peft_adapter(adapter_dir: str | Path) -> Adapter:
    """A PEFT LoRA/DoRA adapter dir (adapter_config.json + adapter_model.safetensors) as an Adapter."""
    adapter_dir = Path(adapter_dir)
    cfg_path, st = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not st.is_file():
        raise UserError(f"{adapter_dir}: a PEFT adapter needs adapter_config.json and adapter_model.safetensors; re-save it with save_pretrained(safe_serialization=True).")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{cfg_path}: peft_type is {cfg.get('peft_type')}; smolmac reads LoRA/DoRA adapters only.")
    for key, allowed in _PEFT_UNSUPPORTED.items():
        if cfg.get(key, allowed[0]) not in allowed:
            raise UserError(f"{cfg_path}: '{key}' = {cfg[key]!r} is not supported by smolmac; merge the adapter in PEFT (merge_and_unload) and use the merged model instead.")
    weights = {}
    for key, t in mx.load(str(st)).items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else None
        ours = next((o for o, s in PEFT_SUFFIX.items() if name and (name.endswith("." + s) or name.endswith(f".{s}.weight"))), None)
        if ours is None:
            raise UserError(f"{st}: tensor '{key}' is not a LoRA/DoRA weight of a linear layer; smolmac cannot load this adapter.")
        module = name[: name.rindex("." + PEFT_SUFFIX[ours])]
        weights[f"{module}.{ours}"] = t if ours == "m" else t.T
    r, rslora = int(cfg.get("r", 8)), bool(cfg.get("use_rslora", False))
    alpha = cfg.get("lora_alpha", 8)
    base = cfg.get("base_model_name_or_path")
    n_blocks = _base_blocks(base)
    idx = [int(m["idx"]) for m in map(_BLOCK.match, weights) if m]
    if n_blocks is None and idx and cfg.get("layers_to_transform") is None and isinstance(cfg.get("target_modules"), list):
        n_blocks = max(idx) + 1  # leaf-name targets without a layer list adapt every block
    return Adapter(
        weights=weights, rank=r, alpha=alpha, scale=alpha / (math.sqrt(r) if rslora else r),
        dropout=float(cfg.get("lora_dropout", 0.0)), dora=bool(cfg.get("use_dora", False)),
        rslora=rslora, base=base, n_blocks=n_blocks,
    )


# ---------------------------------------------------------------------------------------------
# Applying to an mlx-lm model


def base_layer(module):
    """The wrapped base layer of an mlx-lm LoRA/DoRA layer, or None for other modules."""
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    if isinstance(module, (LoRALinear, DoRALinear, LoRASwitchLinear)):
        return module.linear
    if isinstance(module, (LoRAEmbedding, DoRAEmbedding)):
        return module.embedding
    return None


@contextlib.contextmanager
def adapters_disabled(model):
    """Swap every LoRA/DoRA layer for the base layer it wraps, then swap back.

    Exact (the base layer's own forward runs, not `W x + 0 * B A x`) and copies nothing: the
    base layer's weights are the same arrays. A model without adapters is left as is.
    """
    adapted = [(name, m) for name, m in model.named_modules() if base_layer(m) is not None]
    if adapted:
        model.update_modules(tree_unflatten([(name, base_layer(m)) for name, m in adapted]))
    try:
        yield model
    finally:
        if adapted:
            model.update_modules(tree_unflatten(adapted))


def adapter_layers(model: nn.Module, ad: Adapter, source: str = "adapter") -> list[tuple[str, nn.Module]]:
    """mlx-lm LoRA/DoRA layers holding `ad`'s weights around `model`'s own linear layers (the
    same arrays: nothing of the base is copied), as (module path, layer) pairs not yet attached.

    Raises UserError naming `source` and the module when the adapter does not fit the model.
    """
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    from smolmac.models import blocks

    n = len(blocks(model))
    if ad.n_blocks and ad.n_blocks != n:  # same shapes, another depth: it would fit, wrongly
        raise UserError(f"{source}: the adapter was trained on a base model with {ad.n_blocks} blocks and this one has {n}; load it on the base model it was trained on ({ad.base}).")
    modules = dict(model.named_modules())
    cls = DoRALinear if ad.dora else LoRALinear
    new = []
    for name in ad.modules():
        base = modules.get(name)
        base = base_layer(base) or base  # an adapter already attached there: wrap its base layer
        if not isinstance(base, (nn.Linear, nn.QuantizedLinear)):
            raise UserError(f"{source}: the adapter targets '{name}', which is not a linear layer of this model; load it on the base model it was trained on ({ad.base}).")
        layer = cls.from_base(base, r=ad.rank, dropout=ad.dropout, scale=ad.scale)
        for leaf in ("lora_a", "lora_b", "m") if ad.dora else ("lora_a", "lora_b"):
            value = ad.weights.get(f"{name}.{leaf}")
            if value is None or value.shape != getattr(layer, leaf).shape:
                got = None if value is None else tuple(value.shape)
                raise UserError(f"{source}: '{name}.{leaf}' has shape {got}, the model needs {tuple(getattr(layer, leaf).shape)}; load the adapter on the base model it was trained on ({ad.base}).")
            setattr(layer, leaf, value)
        layer.train(model.training)
        new.append((name, layer))
    return new


def apply_adapter(model: nn.Module, ad: Adapter, source: str = "adapter") -> nn.Module:
    """Freeze `model` and wrap the adapted linears in mlx-lm LoRA/DoRA layers holding the weights."""
    model.freeze()
    model.update_modules(tree_unflatten(adapter_layers(model, ad, source)))
    mx.eval(model.parameters())
    return model


def adapter_dir(path: str | Path) -> Path:
    """The adapter folder a path points to: a run dir's adapter/, or the folder itself."""
    path = Path(path)
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    return path


def pick_weights(path: str | Path | None, pick: str = "last") -> Path | None:
    """The weights `--pick` names in a run dir: "last" is the path itself (its adapter/ or
    model/), "best" its adapter-best/ or model-best/ (the best evaluation's, kept by save.best)."""
    if pick not in ("last", "best"):
        raise UserError(f"--pick: '{pick}' is not a choice; use last or best.")
    if pick == "last":
        return None if path is None else Path(path)
    if path is None:
        raise UserError("--pick best: give the run dir whose best weights to load (--adapter RUN_DIR).")
    path = Path(path)
    for folder, marker in (("model-best", "config.json"), ("adapter-best", "adapter_config.json")):
        if (path / folder / marker).is_file():
            return path / folder
    raise UserError(f"--pick best: {path} is not a run dir with adapter-best/ or model-best/; set save.best (e.g. val_loss) in its recipe, or use --pick last.")


def full_weights(path: str | Path) -> Path | None:
    """The model folder of a full fine-tune given by its run dir (model/) or its model-best/,
    else None (an adapter)."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    return path if path.name == "model-best" and (path / "config.json").is_file() else None


def read_adapter(path: str | Path) -> Adapter:
    """A run dir, an mlx-lm adapter dir or a PEFT adapter dir as an Adapter."""
    path = adapter_dir(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such adapter directory; point at a run dir, an mlx-lm adapter folder or a PEFT adapter folder.")
    if (path / "model" / "config.json").is_file():
        raise UserError(f"{path}: this run is a full fine-tune (its model/ folder), not an adapter; load {path / 'model'} as the model instead.")
    if (path / "adapter_model.safetensors").is_file():
        return read_peft_adapter(path)
    if (path / "adapters.safetensors").is_file() and (path / "adapter_config.json").is_file():
        return read_mlx_adapter(path)
    raise UserError(f"{path}: no adapter here (adapter_config.json with adapters.safetensors or adapter_model.safetensors); point at a run dir or an adapter folder.")


def attach(model: nn.Module, path: str | Path) -> dict:
    """Apply an adapter (run dir, mlx-lm or PEFT adapter dir) to an mlx-lm model, to generate,
    evaluate or continue training (the LoRA weights are trainable, the base frozen).

    Returns:
        The mlx-lm adapter config, ready for `smolmac.lora.save_adapter(model, config, dir)`.
    """
    from smolmac.models import blocks

    ad = read_adapter(path)
    ad.n_blocks = ad.n_blocks or len(blocks(model))
    apply_adapter(model, ad, str(path))
    return ad.mlx_config()


def load_peft_adapter(model: nn.Module, path: str | Path) -> dict:
    """`attach` for a PEFT adapter dir (kept for scripts written against v0.1)."""
    return attach(model, path)


def fuse(model: nn.Module) -> nn.Module:
    """Merge every LoRA/DoRA layer into its base layer: W + scale·BA (DoRA renormalised).

    The one fuse of smolmac (pipelines and export): a quantised base is dequantised first
    (mlx-lm#1172: fusing into 4-bit weights rounds the update away), so the result is a plain
    float model that transformers, the next pipeline stage and the exporters can load.
    """
    from mlx_lm.utils import dequantize_model

    from smolmac.models import is_quantized

    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if is_quantized(model):  # the layers no adapter touched (embeddings, other linears)
        dequantize_model(model)
    return model


# ---------------------------------------------------------------------------------------------
# Several adapters on one base


def nbytes(arrays) -> int:
    return sum(v.nbytes for v in arrays)


def adapter_name(path: str | Path) -> str:
    """A default name for an adapter given by path: its run dir's name (not `adapter`)."""
    path = Path(path)
    return path.parent.name if path.name == "adapter" and path.parent.name else path.name


def parse_adapter_specs(specs, what: str = "--adapter") -> dict[str, str]:
    """`NAME=DIR` or `DIR` strings as {name: dir}; a plain DIR is named after its run dir.

    Raises UserError for an empty or reserved name ('none' means the base) and for a name used twice.
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = str(spec).partition("=")
        if not sep or "/" in name or "\\" in name:  # a plain path (which may itself contain '=')
            stem, path, i = adapter_name(spec), str(spec), 2
            name = stem
            while name in out:  # two plain dirs with one name (runs/a/adapter, b/a): number them
                name, i = f"{stem}-{i}", i + 1
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise UserError(f"{what}: '{spec}' needs a name and a directory, e.g. math=runs/math.")
        if name.lower() == "none":
            raise UserError(f"{what}: 'none' is reserved for the base model; give the adapter another name.")
        if name in out:
            raise UserError(f"{what}: the name '{name}' is used twice; give each adapter its own name (NAME=DIR).")
        out[name] = path
    return out


class AdapterSet:
    """Several named adapters over one loaded base model; at most one is active at a time.

    Each adapter is a set of mlx-lm LoRA/DoRA layers wrapping the base model's own linear layers
    (the same arrays: only the adapter's tensors take memory). `use(name)` swaps that adapter's
    layers into the model; `use(None)` swaps the base layers back, so the base's own forward runs
    (bit-exact, as in `adapters_disabled`). Adapters with different targets, ranks, layers, with
    or without DoRA coexist: each one only touches the modules it adapts.

        bank = AdapterSet(model)
        bank.add("math", "runs/math"); bank.add("style", "out/style-peft")
        bank.use("math"); model(x)     # base + math
        bank.use(None); model(x)       # the base, exactly
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.adapters: dict[str, Adapter] = {}
        self.sources: dict[str, str] = {}
        self.active: str | None = None
        self._layers: dict[str, list] = {}  # name -> [(module path, LoRA/DoRA layer)]
        model.freeze()

    def add(self, name: str, adapter: str | Path | Adapter, source: str | None = None) -> Adapter:
        """Attach an adapter (run dir, mlx-lm or PEFT adapter dir, or an Adapter) under `name`
        without making it active.

        Raises UserError when the name is taken or the adapter was trained on another base.
        """
        from smolmac.models import blocks

        if not name or name.lower() == "none":
            raise UserError(f"adapter name '{name}': give a non-empty name other than 'none' (which means the base model).")
        if name in self.adapters:
            raise UserError(f"adapter '{name}' is already loaded; remove it first or choose another name.")
        source = source or (str(adapter) if not isinstance(adapter, Adapter) else name)
        ad = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
        ad.n_blocks = ad.n_blocks or len(blocks(self.model))
        with self.using(None):  # build on the base layers, whichever adapter is active
            layers = adapter_layers(self.model, ad, f"adapter '{name}' ({source})")
        mx.eval([layer.parameters() for _, layer in layers])
        self.adapters[name], self.sources[name], self._layers[name] = ad, source, layers
        return ad

    def remove(self, name: str) -> None:
        """Detach adapter `name` (the base is active afterwards if it was the active one)."""
        self.require(name)
        if self.active == name:
            self.use(None)
        del self.adapters[name], self.sources[name], self._layers[name]

    def require(self, name: str | None) -> None:
        """UserError unless `name` is a loaded adapter (or None, the base)."""
        if name is not None and name not in self.adapters:
            choices = ", ".join(self.adapters) or "none loaded"
            raise UserError(f"adapter '{name}' is not loaded{did_you_mean(str(name), self.adapters)}; choose one of: {choices} (or None for the base).")

    def use(self, name: str | None) -> None:
        """Make adapter `name` active, or the base model with None; no weights are reloaded."""
        self.require(name)
        if name == self.active:
            return
        if self.active is not None:  # each layer wraps the base layer it replaced: put that back
            self.model.update_modules(tree_unflatten([(m, base_layer(layer)) for m, layer in self._layers[self.active]]))
        if name is not None:
            self.model.update_modules(tree_unflatten(self._layers[name]))
        self.active = name

    @contextlib.contextmanager
    def using(self, name: str | None):
        """Make `name` active inside a `with` block, then restore the previous one."""
        previous = self.active
        self.use(name)
        try:
            yield self.model
        finally:
            self.use(previous)

    def memory(self) -> dict:
        """Parameters and bytes of the base model and of each adapter."""
        from mlx.utils import tree_flatten

        with self.using(None):
            base = [v for _, v in tree_flatten(self.model.parameters())]
        out = {"base": {"params": sum(v.size for v in base), "bytes": nbytes(base)}, "adapters": {}}
        for name, ad in self.adapters.items():
            out["adapters"][name] = {"params": sum(v.size for v in ad.weights.values()), "bytes": nbytes(ad.weights.values())}
        return out
