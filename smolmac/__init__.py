"""smolmac: make a small language model your own, on MLX.

    import smolmac
    run = smolmac.train("recipes/sft-full-tiny.yaml", train={"steps": 50})
    print(run.dir, run.adapter_path, run.events[-1])

Importing smolmac is cheap and loads neither MLX nor the UI; the optimised BLAS is loaded first
so that any later `import mlx.core` in this process uses it (see smolmac/_blas.py).
"""

from smolmac import _blas

_blas.load()

from smolmac._version import __version__  # noqa: E402, F401

__all__ = ["train", "load_recipe", "Run", "UserError", "list_recipes", "inspect"]
_WORKSHOP = ("list_recipes", "inspect")  # smolmac.api; not `recipes`, the package of shipped recipes


def __getattr__(name):
    # Lazy: keep `import smolmac` free of mlx/datasets imports (the TUI imports it at start-up).
    if name == "train":
        from smolmac import api

        return api.train
    if name == "Run":
        from smolmac.runs import Run

        return Run
    if name == "load_recipe":
        from smolmac.config import load_recipe

        return load_recipe
    if name in _WORKSHOP:
        from smolmac import api

        return getattr(api, name)
    if name == "UserError":
        from smolmac.errors import UserError

        return UserError
    raise AttributeError(f"module 'smolmac' has no attribute {name!r}")
