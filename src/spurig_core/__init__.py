"""spurig_core: the headless engine of spurig (SPUR-iG 3D MRF reconstruction).

Public API (SPEC §2b)::

    from spurig_core import load_scan, reconstruct, match, evaluate, load_result
    scan = load_scan("scan.h5")
    result = reconstruct(scan, method="llr", groups=16)
    result = match(result, scan)
    print(evaluate(result, scan))
    result.save("out.zarr")

Heavy submodules are imported on first use, so ``import spurig_core`` stays fast and never pulls
in napari, Qt or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_scan": ("spurig_core.io", "load_scan"),
    "load_result": ("spurig_core.io", "load_result"),
    "write_scan": ("spurig_core.io", "write_scan"),
    "simulate_signals": ("spurig_core.physics", "simulate_signals"),
    "simulate": ("spurig_core.pipeline", "simulate"),
    "reconstruct": ("spurig_core.pipeline", "reconstruct"),
    "match": ("spurig_core.pipeline", "match"),
    "evaluate": ("spurig_core.pipeline", "evaluate"),
    "Scan": ("spurig_core.data", "Scan"),
    "Result": ("spurig_core.data", "Result"),
    "FispSequence": ("spurig_core.data", "FispSequence"),
    "Reference": ("spurig_core.data", "Reference"),
    "InputError": ("spurig_core.errors", "InputError"),
    "Cancelled": ("spurig_core.errors", "Cancelled"),
    "ProgressEvent": ("spurig_core.progress", "ProgressEvent"),
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'spurig_core' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
