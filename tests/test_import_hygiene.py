"""The engine never imports the UI: `import smolmac` (and the CLI, runs and config modules) in a
fresh interpreter loads no textual (STYLE 1; harlequin's test_import_hygiene.py)."""

from __future__ import annotations

import subprocess
import sys


def test_engine_imports_no_textual():
    code = (
        "import sys\n"
        "import smolmac, smolmac.cli, smolmac.runs, smolmac.config, smolmac.events\n"
        "loaded = sorted(m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'textual_plotext', 'smolmac.tui')))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_app_module_imports_without_starting_anything():
    # The reverse direction is allowed: the TUI imports the engine (and textual).
    code = "import sys, smolmac.tui.app as a\nassert 'textual' in sys.modules and callable(a.run_app)\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def _imports(path, modules: dict) -> set[str]:
    """Every smolmac module `path` imports, at module level or inside functions."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)  # `from smolmac import events`
            names |= subs if len(subs) == len(node.names) else subs | {node.module}
    return names & set(modules)


def test_no_import_cycles_even_through_function_level_imports():
    """The dependency graph of smolmac's modules (engine and app) has no cycle (STYLE 2)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {}
    for base, package in ((root / "smolmac", "smolmac"), (root / "tui", "smolmac.tui")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))
            modules[name] = path
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
