"""The Python API: one function per CLI command, each the same code path as its command, raising
`UserError` where the CLI exits with code 2.

    import smolmac
    run = smolmac.train("recipes/sft-full-tiny.yaml", train={"steps": 50})
    print(run.dir, run.adapter_path, run.last("eval"))
"""

from __future__ import annotations

from pathlib import Path

from smolmac.config import Config, load_recipe
from smolmac.errors import UserError
from smolmac.runs import Run, default_run_dir, read_config, run_training

__all__ = ["train", "run"]


def _nested(overrides) -> dict | None:
    from smolmac.config import nest, parse_override

    if not overrides:
        return None
    if isinstance(overrides, (list, tuple)):
        return nest(dict(parse_override(o) for o in overrides))
    return dict(overrides)


def run(cfg: Config | None, run_dir: str | Path, resume: bool = False, on_event=None, stop=None, overrides=None) -> Run:
    """Train a resolved recipe in `run_dir`: a pipeline when it has `stages:`, else one run.

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
    if cfg.stages:
        from smolmac.pipeline import run_pipeline

        return run_pipeline(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop, overrides=overrides if resume else None)
    return run_training(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop, overrides=overrides if resume else None)


def train(recipe=None, run_dir: str | Path | None = None, resume: bool = False, on_event=None, stop=None, **overrides) -> Run:
    """Train from a recipe path, mapping or Config; keyword overrides mirror the recipe keys.

    Args:
        recipe: YAML path, dict or Config (ignored on resume: the run's saved recipe is used).
        run_dir: output directory (default runs/<name>-<timestamp>).
        resume: continue from the last checkpoint in run_dir (from step 0 when it has none).
        on_event: callback receiving each event dict.
        stop: threading.Event; when set, the run checkpoints and stops.
        **overrides: e.g. `train={"lr": 1e-4}`, `model="path"`, `method="sft"`. On resume only
            train.lr, train.steps/epochs, eval.every/batches, save.every/keep, train.report_every
            and train.early_stopping may change (recorded as a `config` event).
    """
    if resume:
        if run_dir is None:
            raise UserError("resume: give the run directory, e.g. smolmac.train(run_dir='runs/my-run', resume=True).")
        return run(None, run_dir, resume=True, on_event=on_event, stop=stop, overrides=overrides or None)
    cfg = load_recipe(recipe, overrides or None)
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    return run(cfg, run_dir, resume=resume, on_event=on_event, stop=stop)
