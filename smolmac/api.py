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

__all__ = ["train", "run"]


def run(cfg: Config, run_dir: str | Path, resume: bool = False, on_event=None, stop=None,
        nproc: int | None = None, hostfile: str | None = None, backend: str | None = None) -> Run:
    """Train a resolved recipe in `run_dir`: a pipeline when it has `stages:`, else one run;
    data-parallel over `nproc` local processes or the hosts of `hostfile` (smolmac/hosts.py)."""
    if (nproc is not None and nproc != 1) or hostfile:  # --nproc 1 is an ordinary run
        from smolmac.hosts import train_group

        return train_group(cfg, Path(run_dir), resume, nproc=nproc, hostfile=hostfile, backend=backend, on_event=on_event, stop=stop)
    if cfg.stages:
        from smolmac.pipeline import run_pipeline

        return run_pipeline(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop)
    return run_training(cfg, Path(run_dir), resume=resume, on_event=on_event, stop=stop)


def train(recipe=None, run_dir: str | Path | None = None, resume: bool = False, on_event=None, stop=None,
          nproc: int | None = None, hostfile: str | None = None, backend: str | None = None, **overrides) -> Run:
    """Train from a recipe path, mapping or Config; keyword overrides mirror the recipe keys.

    Args:
        recipe: YAML path, dict or Config.
        run_dir: output directory (default runs/<name>-<timestamp>).
        resume: continue from the last checkpoint in run_dir.
        on_event: callback receiving each event dict.
        stop: threading.Event; when set, the run checkpoints and stops.
        nproc: train data-parallel in this many local processes (mlx.launch, ring backend), or
        hostfile: across the hosts of this mlx.launch hostfile, with `backend` (ring, jaccl, mpi).
        **overrides: e.g. `train={"lr": 1e-4}`, `model="path"`, `method="sft"`.
    """
    if resume and run_dir is not None and recipe is None:
        cfg = read_config(run_dir)
    else:
        cfg = load_recipe(recipe, overrides or None)
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    return run(cfg, run_dir, resume=resume, on_event=on_event, stop=stop, nproc=nproc, hostfile=hostfile, backend=backend)
