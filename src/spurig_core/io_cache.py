"""The on-disk cache of derived physics: dictionaries and temporal bases (the io layer).

:mod:`spurig_core.physics.dictionary` builds what is cached; this module names the files, finds
the cache directory, loads an entry or makes, stores (atomically, :func:`~spurig_core.outputs.
atomic_path`) and returns it.  A cache entry is a ``torch.save`` dict with a ``"kind"`` key, read
back with ``weights_only=True``; a broken entry is rebuilt, never trusted, and a read-only cache
never stops a computation.

File names::

    dictionary-v{CACHE_VERSION}-{sequence key}-{grid key}-{basis key}.pt
    basis-v{CACHE_VERSION}-{sequence key}-{grid key}-k{k}.pt
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .outputs import atomic_path

__all__ = [
    "CACHE_VERSION",
    "basis_file",
    "cache_dir",
    "cached",
    "dictionary_file",
    "tensor_key",
]

#: Bumped whenever a change alters what is cached (the EPG, the grid or the basis conventions).
CACHE_VERSION = 2


def cache_dir() -> Path:
    """Return the on-disk cache: ``$SPURIG_CACHE``, else ``~/.cache/spurig``."""
    env = os.environ.get("SPURIG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spurig"


def tensor_key(t: torch.Tensor) -> str:
    """Return a short hash of a tensor's values (as complex64), for cache names."""
    arr = t.detach().cpu().to(torch.complex64).numpy()
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:12]


def dictionary_file(sequence_key: str, grid_key: str, basis: torch.Tensor) -> str:
    """Cache name of a compressed dictionary (sequence, grid and basis of the compression)."""
    return f"dictionary-v{CACHE_VERSION}-{sequence_key}-{grid_key}-{tensor_key(basis)}.pt"


def basis_file(sequence_key: str, grid_key: str, k: int) -> str:
    """Cache name of the rank-``k`` basis of a sequence's dictionary over a grid."""
    return f"basis-v{CACHE_VERSION}-{sequence_key}-{grid_key}-k{k}.pt"


def cached(name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load ``name`` from the cache, or make it, store it atomically and return it.

    Parameters
    ----------
    name : str
        File name inside :func:`cache_dir` (:func:`dictionary_file`, :func:`basis_file`).
    make : callable
        Builds the state (a dict with a ``"kind"`` key) when the cache has no valid entry.

    Returns
    -------
    dict
        The state, with tensors on the CPU.
    """
    path = cache_dir() / name
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "kind" in state:
                return state
        except Exception:  # a broken cache file is rebuilt, never trusted
            pass
    state = make()
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError:  # a read-only cache must not stop the computation
        pass
    return state
