"""smolmac: make a small language model your own, on MLX.

    import smolmac
    run = smolmac.train("recipes/sft-full-tiny.yaml", train={"steps": 50})
    m = smolmac.load("models/base", adapters={"mine": run.dir})
    print(m.generate("Hello!"), m.inspect())
    smolmac.export(run.dir, format="peft", to="out/mine-peft")

One function per CLI command (smolmac/api.py): train, load (generate), export, upload, combine
(adapters combine), runs, read_run, bench, evaluate (eval), recipes, inspect. Importing smolmac is
cheap and loads neither MLX nor the UI; the optimised BLAS is loaded first so that any later
`import mlx.core` in this process uses it (see smolmac/_blas.py).

`smolmac.runs`, `smolmac.export`, `smolmac.bench` and `smolmac.recipes` are also the engine's
modules of those names (`from smolmac import runs` keeps working; smolmac.recipes holds the shipped
recipes): the modules are made callable, and calling one runs the API function.
"""

import importlib
import os
import sys
import types

# transformers prints an advisory "PyTorch was not found..." on import when torch is absent (the
# usual smolmac install: MLX only); advisories only, its real warnings still show.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from smolmac import _blas  # noqa: E402

_blas.load()

from smolmac._version import __version__  # noqa: E402, F401

__all__ = ["train", "load", "export", "upload", "combine", "runs", "read_run", "bench", "evaluate", "load_recipe", "Run", "UserError"]
__all__ += ["recipes", "inspect"]  # the app's workshop: shipped recipes by name, looking inside models

# name -> "module:attribute", imported on first use (keeps `import smolmac` free of mlx/datasets)
_LAZY = {
    "train": "smolmac.api:train", "load": "smolmac.api:load", "upload": "smolmac.api:upload",
    "combine": "smolmac.api:combine", "read_run": "smolmac.api:read_run", "evaluate": "smolmac.api:evaluate",
    "Run": "smolmac.runs:Run", "load_recipe": "smolmac.config:load_recipe", "UserError": "smolmac.errors:UserError",
}
_LAZY["inspect"] = "smolmac.api:inspect"


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'smolmac' has no attribute {name!r}")


class _CommandModule(types.ModuleType):
    """A module that, called, runs the API function of the same name (smolmac.api)."""

    def __call__(self, *args, **kwargs):
        api = importlib.import_module("smolmac.api")  # on call, like _LAZY: smolmac.api imports this module
        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def _command_module(name: str) -> property:
    """The package attribute `name`: the module smolmac.<name>, made callable."""

    def get(package):
        module = package.__dict__.get(name) or importlib.import_module(f"smolmac.{name}")
        if type(module) is types.ModuleType:
            module.__class__ = _CommandModule
        return module

    def put(package, value):  # the import system sets it after importing smolmac.<name>
        package.__dict__[name] = value

    return property(get, put)


class _Package(types.ModuleType):
    runs = _command_module("runs")
    export = _command_module("export")
    bench = _command_module("bench")
    recipes = _command_module("recipes")  # the package of shipped recipes; called: smolmac.api.recipes


sys.modules[__name__].__class__ = _Package
