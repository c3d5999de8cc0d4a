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
