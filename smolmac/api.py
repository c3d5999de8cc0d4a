"""The Python API: one function per CLI command, each the same code path as its command, raising
`UserError` where the CLI exits with code 2.

    import smolmac
    run = smolmac.train("recipes/sft-full-tiny.yaml", train={"steps": 50})
    print(run.dir, run.adapter_path, run.last("eval"))
"""

from __future__ import annotations

from pathlib import Path

from smolmac.config import Config, load_recipe
from smolmac.runs import Run, default_run_dir, read_config, run_training

__all__ = ["train", "run", "list_recipes", "inspect"]


def run(cfg: Config, run_dir: str | Path, resume: bool = False, on_event=None, stop=None) -> Run:
    """Train a resolved recipe in `run_dir`: a pipeline when it has `stages:`, else one run."""
    if cfg.stages:
        from smolmac.pipeline import run_pipeline

        return run_pipeline(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop)
    return run_training(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop)


def train(recipe=None, run_dir: str | Path | None = None, resume: bool = False, on_event=None, stop=None, **overrides) -> Run:
    """Train from a recipe path, mapping or Config; keyword overrides mirror the recipe keys.

    Args:
        recipe: YAML path, dict or Config.
        run_dir: output directory (default runs/<name>-<timestamp>).
        resume: continue from the last checkpoint in run_dir.
        on_event: callback receiving each event dict.
        stop: threading.Event; when set, the run checkpoints and stops.
        **overrides: e.g. `train={"lr": 1e-4}`, `model="path"`, `method="sft"`.
    """
    if resume and run_dir is not None and recipe is None:
        cfg = read_config(run_dir)
    else:
        cfg = load_recipe(recipe, overrides or None)
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    return run(cfg, run_dir, resume=resume, on_event=on_event, stop=stop)


# ---------------------------------------------------------------------------------------------
# Recipes and looking inside models (the app's workshop views)


def list_recipes(user_dir: str | Path = "recipes") -> list[dict]:
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
