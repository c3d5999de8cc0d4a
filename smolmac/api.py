"""The Python API: one function per CLI command, each the same code path as its command, raising
`UserError` where the CLI exits with code 2 (see "Scripting" in the README).

    import smolmac
    run = smolmac.train("recipes/sft-full-tiny.yaml", train={"steps": 50})
    m = smolmac.load("models/base", adapters={"math": run.dir})
    print(m.generate("What is 7 + 5?"), m.inspect())
    smolmac.export(run.dir, format="peft", to="out/math-peft")
"""

from __future__ import annotations

from pathlib import Path

from smolmac.config import Config, load_recipe
from smolmac.errors import UserError
from smolmac.runs import Run, default_run_dir, read_config, run_training

__all__ = ["train", "run", "load", "export", "upload", "combine", "runs", "read_run", "bench", "evaluate"]
__all__ += ["recipes", "inspect"]


def _nested(overrides) -> dict | None:
    from smolmac.config import nest, parse_override

    if not overrides:
        return None
    if isinstance(overrides, (list, tuple)):
        return nest(dict(parse_override(o) for o in overrides))
    return dict(overrides)


def run(cfg: Config | None, run_dir: str | Path, resume: bool = False, on_event=None, stop=None, overrides=None,
        nproc: int | None = None, hostfile: str | None = None, backend: str | None = None) -> Run:
    """Train a resolved recipe in `run_dir`: a pipeline when it has `stages:`, else one run;
    data-parallel over `nproc` local processes or the hosts of `hostfile` (smolmac/hosts.py).

    Args:
        cfg: the recipe; on resume the run dir's saved recipe is used (cfg may be None).
        overrides: on resume, keys to change (`{"train": {"lr": 1e-4}}` or ["train.lr=1e-4"]);
            only the safe ones (runs.SAFE_ON_RESUME) are accepted, the others are refused by name.
    """
    overrides = _nested(overrides)
    if resume:
        cfg = read_config(run_dir)
    elif overrides:
        cfg = load_recipe(cfg, overrides)
    changes = overrides if resume else None
    if (nproc is not None and nproc != 1) or hostfile:  # --nproc 1 is an ordinary run
        from smolmac.hosts import train_group

        return train_group(cfg, Path(run_dir), resume, nproc=nproc, hostfile=hostfile, backend=backend, on_event=on_event, stop=stop, overrides=changes)
    if cfg.stages:
        from smolmac.pipeline import run_pipeline

        return run_pipeline(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop, overrides=changes)
    return run_training(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop, overrides=changes)


def train(recipe=None, run_dir: str | Path | None = None, resume: bool = False, on_event=None, stop=None,
          nproc: int | None = None, hostfile: str | None = None, backend: str | None = None, **overrides) -> Run:
    """`smolmac train`: train from a recipe path, mapping or Config; keyword overrides mirror the
    recipe keys.

    Args:
        recipe: YAML path, dict or Config (ignored on resume: the run's saved recipe is used).
        run_dir: output directory (default runs/<name>-<timestamp>).
        resume: continue from the last checkpoint in run_dir (from step 0 when it has none).
        on_event: callback receiving each event dict.
        stop: threading.Event; when set, the run checkpoints and stops.
        nproc: train data-parallel in this many local processes (mlx.launch, ring backend), or
        hostfile: across the hosts of this mlx.launch hostfile, with `backend` (ring, jaccl, mpi).
        **overrides: e.g. `train={"lr": 1e-4}`, `model="path"`, `method="sft"`. On resume only
            train.lr, train.steps/epochs, eval.every/batches, save.every/keep, train.report_every
            and train.early_stopping may change (recorded as a `config` event).
    """
    if resume:
        if run_dir is None:
            raise UserError("resume: give the run directory, e.g. smolmac.train(run_dir='runs/my-run', resume=True).")
        return run(None, run_dir, resume=True, on_event=on_event, stop=stop, overrides=overrides or None,
                   nproc=nproc, hostfile=hostfile, backend=backend)
    cfg = load_recipe(recipe, overrides or None)
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    return run(cfg, run_dir, on_event=on_event, stop=stop, nproc=nproc, hostfile=hostfile, backend=backend)


def load(base: str | None = None, adapters=None, dtype: str = "auto"):
    """`smolmac generate`: load a base model once with named adapters; returns a
    `smolmac.generate.LoadedModel` with .generate, .chat, .chat_stream, .stream, .use(name | None),
    .adapters, .combine and .inspect.

    Args:
        base: Hub id or model directory (None: the base the first adapter records).
        adapters: {name: RUN_OR_ADAPTER_DIR} (or a list of "NAME=DIR" strings).
        dtype: "auto" (bfloat16 on Metal/CUDA, float32 on the CPU), float32, float16, bfloat16.
    """
    from smolmac.generate import load as load_handle

    return load_handle(base, adapters, dtype)


def export(run_or_model, format: str = "peft", to=None, dtype: str | None = None, overwrite: bool = False, on_message=None,
           quantize: str | None = None, group_size: int | None = None, with_base: bool = False, pick: str = "last") -> Path:
    """`smolmac export`: write a run, an adapter dir, or the active adapter of a loaded model
    (`smolmac.load(...).use(name)`, e.g. a combined one) in one of smolmac.export.EXPORTERS' formats.

    Args:
        run_or_model: run dir, pipeline dir, adapter dir, or a LoadedModel with an active adapter.
        format: "peft", "hf", "mlx", "gguf", "ollama", "gguf-lora", "mlx-q4" or "mlx-q8".
        to: output directory (a .gguf file for gguf and gguf-lora), written under a temporary
            name and renamed into place.
        dtype: float32, float16 or bfloat16 (GGUF: f32, f16, bf16, q8_0; default: as trained).
        overwrite: replace an earlier export at `to` (a folder smolmac wrote, holding nothing else).
        on_message: receives progress sentences (e.g. print).
        quantize, group_size, with_base: as `smolmac export --quantize/--group-size/--with-base`.
        pick: a run's "last" weights or its "best" evaluation's (save.best: adapter-best/, model-best/).
    """
    from smolmac.errors import UserError
    from smolmac.export import export_run, write_export
    from smolmac.export.sources import Source
    from smolmac.generate import LoadedModel

    if to is None:
        raise UserError("export: give the output path, e.g. to='out/my-peft'.")
    options = {"quantize": quantize, "group_size": group_size, "with_base": with_base}
    if not isinstance(run_or_model, LoadedModel):
        return export_run(run_or_model, format, to, dtype=dtype, overwrite=overwrite, on_message=on_message, pick=pick, **options)
    handle = run_or_model
    if handle.active is None:
        raise UserError("export: the loaded model has no active adapter; call .use(NAME) first (export a base model by its folder).")
    ad = handle.adapters[handle.active]
    source = handle.bank.sources[handle.active]
    path = Path(source) if Path(source).exists() else Path(handle.base)
    return write_export(Source(path, adapter=ad, base=handle.base), format, to, dtype, overwrite, on_message, **options)


def upload(path, repo: str, private: bool = False, dry_run: bool = False, message: str | None = None, on_message=None) -> str | None:
    """`smolmac upload`: upload an export directory to the Hugging Face Hub; returns its URL.

    Args:
        path: an export directory (from `export`).
        repo: "you/name".
        private: create the repository as private.
        dry_run: list the files and print the model card, upload nothing (offline).
        message: commit message.
        on_message: receives the printed lines.
    """
    from smolmac.hub import upload as hub_upload

    return hub_upload(path, repo, private=private, dry_run=dry_run, message=message, on_message=on_message)


def combine(adapters, weights, method: str = "svd", rank: int | None = None, to=None, format: str = "peft",
            overwrite: bool = False, on_message=None) -> Path:
    """`smolmac adapters combine`: combine adapters into one with PEFT's add_weighted_adapter
    definitions (linear, cat, svd; see smolmac/combining.py) and write it as an adapter at `to`
    (a temp dir renamed into place, so nothing is written there on error), with a model card.

    Args:
        adapters: adapter dirs (runs, mlx-lm or PEFT dirs), a list of "DIR" / "NAME=DIR", or {name: dir}.
        weights: one number per adapter (or "0.7,0.3").
        method: "linear" (equal ranks), "cat" (rank = sum of ranks) or "svd".
        rank: the rank of an svd combination (default: the largest rank).
        to: output directory.
        format: "peft" or "mlx".
        overwrite: replace an earlier export or combination at `to` (nothing else is deleted).
        on_message: receives progress sentences (e.g. print).
    """
    import os

    from smolmac.adapters import parse_adapter_specs, read_adapter
    from smolmac.combining import combine as combine_adapters
    from smolmac.combining import parse_weights
    from smolmac.errors import UserError
    from smolmac.export import EXPORTERS, check_out, write_export
    from smolmac.export.sources import Source

    say = on_message or (lambda _m: None)
    if format not in ("peft", "mlx"):
        raise UserError(f"--format: '{format}' is not an adapter folder format; choose peft or mlx (then `smolmac export OUT --format hf|gguf|...` converts the combined adapter like any other).")
    if to is None:
        raise UserError("--to: give the output directory of the combined adapter.")
    specs = [f"{k}={v}" for k, v in adapters.items()] if isinstance(adapters, dict) else [str(a) for a in adapters]
    named = parse_adapter_specs(specs, "combine")
    seen: dict[str, str] = {}
    for name, path in named.items():
        key = os.path.realpath(path)
        if key in seen:
            raise UserError(f"combine: '{path}' is given twice (as '{seen[key]}' and '{name}'); give each adapter once and set its weight with --weights.")
        seen[key] = name
        check_out(Path(to), Path(path), overwrite, EXPORTERS[format])
    weights = parse_weights(weights)
    ad = combine_adapters({name: read_adapter(path) for name, path in named.items()}, weights, method, rank)
    say(f"combined {', '.join(f'{n} ({w:g})' for n, w in zip(named, weights))} with {method}: rank {ad.rank}, {len(ad.modules())} modules.")
    info = {"combined": {"method": method, "adapters": list(named), "weights": weights, "rank": ad.rank}}
    return write_export(Source(Path(next(iter(named.values()))), adapter=ad), format, Path(to), overwrite=overwrite, on_message=say, info=info)


def runs(runs_dir: str | Path = "runs") -> list[dict]:
    """`smolmac runs`: summaries of every run in `runs_dir`, newest first (dir, name, status,
    method, model, step, total_steps, loss, alive, error; a pipeline also has `current` and
    `stages`, one summary per stage, and counts finished stages as its steps)."""
    from smolmac.launcher import Launcher, list_runs

    return list_runs(runs_dir, Launcher())


def read_run(run_dir: str | Path) -> Run:
    """A run dir as a `Run`: its recipe, every event, its adapter or model path, stopped or not."""
    from smolmac import events as ev
    from smolmac.errors import UserError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: no config.yaml; it is not a run directory.")
    events = ev.current(ev.read_events(run_dir / "events.jsonl"))  # steps a resume redid count once
    done = next((e for e in reversed(events) if e["type"] == "done"), None)
    adapter, model = run_dir / "adapter", run_dir / "model"
    best = next((d for d in (run_dir / "adapter-best", run_dir / "model-best") if d.is_dir()), None)
    return Run(dir=run_dir, config=read_config(run_dir), events=events,
               adapter_path=adapter if (adapter / "adapter_config.json").is_file() else None,
               model_path=model if (model / "config.json").is_file() else None,
               stopped=bool(done and done.get("stopped")), early_stopped=(done or {}).get("reason"), best_path=best)


def evaluate(base: str | None = None, adapters=None, tasks=None, limit=None, include_path=None, batch_size: int = 8,
             dtype: str = "auto", num_fewshot: int | None = None, chat_template: bool = False, out=None, on_message=None) -> dict:
    """`smolmac eval`: EleutherAI's lm-evaluation-harness tasks on a base model and on each adapter,
    the base loaded once and the adapters switched on it (smolmac/harness.py); needs the optional
    extra `pip install 'smolmac[eval]'`.

    Args:
        base: Hub id or model directory (None: the base the first adapter records).
        adapters: {name: RUN_OR_ADAPTER_DIR} or a list of "NAME=DIR" strings.
        tasks: lm-eval task (or group) names, a list or "t1,t2".
        limit: at most this many documents per task (a float below 1: that fraction).
        include_path: a folder (or YAML file) of your own lm-eval tasks.
        batch_size: rows per forward pass.
        dtype: "auto" (bfloat16 on Metal/CUDA, float32 on the CPU), float32, float16, bfloat16.
        num_fewshot: few-shot examples per prompt (default: each task's).
        chat_template: render prompts with the tokenizer's chat template.
        out: also write the scores and lm-eval's results as JSON here.
        on_message: receives progress lines and the table.
    Returns:
        {"scores": {task: {metric: {column: value}}}, "columns": ["base", *adapters], "table": str,
        "results": {column: lm-eval's results}}.
    """
    import importlib.util
    import json

    from smolmac.adapters import parse_adapter_specs
    from smolmac.errors import UserError

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("eval: lm-evaluation-harness is not installed; pip install 'smolmac[eval]' (or lm-eval).")
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks or []) if t and t.strip()]
    if not names:
        raise UserError("--tasks: give at least one lm-eval task, e.g. --tasks arc_easy,hellaswag.")
    if limit is not None and (float(limit) <= 0 or (float(limit) >= 1 and not float(limit).is_integer())):
        raise UserError(f"--limit: {limit} is not a number of documents (a whole number) or a fraction below 1.")
    limit = None if limit is None else (int(limit) if float(limit) >= 1 else float(limit))
    if isinstance(adapters, (str, Path)):
        adapters = [adapters]
    specs = dict(adapters) if isinstance(adapters, dict) else parse_adapter_specs([str(a) for a in adapters or []])
    from smolmac.harness import evaluate_adapters

    res = evaluate_adapters(base, specs, names, limit=limit, include_path=include_path, batch_size=batch_size, dtype=dtype,
                            num_fewshot=num_fewshot, chat_template=chat_template, on_message=on_message)
    if out:
        from smolmac.storage import atomic_write_text

        atomic_write_text(out, json.dumps(res, indent=2, default=str))
    return res


def bench(what: str, size: str = "tiny", steps: int | None = None, batch_size: int = 8, out=None, on_message=None, work=None) -> dict:
    """`smolmac bench`: "sft" (vs mlx-lm), "dpo" (vs SFT), "pretrain" (MFU) or "forgetting" (LoRA
    vs full fine-tuning: task score and retain perplexity); returns the results.

    Args:
        what: "sft", "dpo", "pretrain" or "forgetting".
        size: "tiny" or "135m" (135m needs a GPU or a Mac; forgetting: tiny only).
        steps: measured steps per system (default: the benchmark's).
        batch_size: rows per batch (not forgetting: it uses the quickstart's 16).
        out: also write the results as JSON here.
        on_message: receives the printed table lines.
        work: forgetting: keep the pretrained model and the runs in this folder (reused later).
    """
    from smolmac.bench import SIZES, run_bench
    from smolmac.errors import UserError

    if what not in ("sft", "dpo", "pretrain", "forgetting"):
        raise UserError(f"bench: '{what}' is not a benchmark; choose sft, dpo, pretrain or forgetting.")
    if size not in SIZES:
        raise UserError(f"bench: size '{size}' is unknown; choose {' or '.join(SIZES)}.")
    if what == "forgetting" and size != "tiny":  # its models are the quickstart's micro Llama
        raise UserError(f"bench forgetting: --size {size} is not available; it trains the quickstart's tiny model (drop --size).")
    if out is not None:  # checked before minutes of benchmarking, not when writing the results
        if Path(out).is_dir():
            raise UserError(f"--out: {out} is a directory; give a file name such as {Path(out) / 'bench.json'}.")
        if not Path(out).parent.is_dir():
            raise UserError(f"--out: the folder {Path(out).parent} does not exist; create it or write the results elsewhere.")
    return run_bench(what, size=size, steps=steps, batch_size=batch_size, out=out, on_message=on_message or (lambda _m: None), work=work)


# ---------------------------------------------------------------------------------------------
# Recipes and looking inside models (the app's workshop views)


def recipes(user_dir: str | Path = "recipes") -> list[dict]:
    """The recipes `train` finds by name: yours in `user_dir`, then the shipped ones.

    Args:
        user_dir: your recipes folder; a recipe there hides a shipped one of the same name.

    Returns one `{name, path, about, pipeline, shipped}` per recipe (`smolmac recipes`).
    """
    from smolmac import config

    return config.list_recipes(user_dir)


def inspect(target: str | Path, tokens: str | None = None, neighbours: str | None = None, top: int = 8) -> dict:
    """Look inside a model, a run or a pipeline (`smolmac inspect`).

    Args:
        target: a model (Hub id or folder), a run dir or a pipeline dir.
        tokens: text to split into tokens (pieces, ids, characters per token).
        neighbours: a token whose nearest tokens in the input embedding are listed, for the
            base and for each trained model of the run or pipeline.
        top: how many neighbours.

    Returns a JSON-ready report: models, anatomy (parameters per part), adapter share, tokens,
    chat template preview, neighbours (see smolmac.inspection).
    """
    from smolmac.inspection import inspect as inspect_

    return inspect_(target, tokens=tokens, neighbours=neighbours, top=top)
