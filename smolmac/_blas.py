"""Load an optimised BLAS into the process before MLX's CPU backend binds its bundled one.

MLX's Linux CPU wheel ships the reference BLAS (~6 GFLOP/s for a 1024² float32 matmul on a
2-core x86 machine). Loading OpenBLAS with RTLD_GLOBAL *before* `mlx.core` is imported makes
MLX resolve its BLAS symbols there instead (~185 GFLOP/s, tiny-model training ~13x faster).
macOS uses Accelerate through Metal/CPU and is never touched.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

KNOWN_LOCATIONS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
HINT = (
    "MLX on Linux is using its slow reference BLAS; install OpenBLAS "
    "(Debian/Ubuntu: apt-get install libopenblas0-pthread) or point SMOLMAC_BLAS at a "
    "libblas.so for a 13-30x faster CPU backend."
)

# "loaded:<path>", "disabled", "absent", "too-late" (mlx.core imported first) or "macos"
status = "unset"


def load() -> str:
    """Load the BLAS once per process; returns the status string (see `status`)."""
    global status
    if status != "unset":
        return status
    if sys.platform == "darwin":
        status = "macos"
        return status
    wanted = os.environ.get("SMOLMAC_BLAS", "")
    if wanted.lower() in ("0", "none", "off", "reference"):
        status = "disabled"
        return status
    if "mlx.core" in sys.modules:
        status = "too-late"
        warnings.warn("mlx.core was imported before smolmac: " + HINT, stacklevel=2)
        return status
    candidates = [wanted] if wanted else list(KNOWN_LOCATIONS)
    for path in candidates:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
            except OSError:
                continue
            status = f"loaded:{path}"
            return status
    status = "absent"
    warnings.warn(HINT, stacklevel=2)
    return status
