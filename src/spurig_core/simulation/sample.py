"""The sample scan of the README, ``spurig demo`` and the napari sample, made on first use."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..progress import Callback
from .writers import simulate

__all__ = ["SAMPLE", "SAMPLE_NAME", "sample_scan_path"]

#: Parameters of the sample scan (README, ``spurig demo``, the napari sample).
SAMPLE = {"matrix": 48, "coils": 10, "groups": 16, "seed": 7, "phantom": "brain"}
SAMPLE_NAME = "spurig_sample_48.h5"


def _sample_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("SPURIG_SAMPLE_DIR")
    if env:
        dirs.append(Path(env))
    repo = Path(__file__).resolve().parents[3] / "sample_data"
    if repo.is_dir():
        dirs.append(repo)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spurig"
    dirs.append(cache)
    return dirs


def sample_scan_path(*, create: bool = True, callback: Callback | None = None) -> Path:
    """Return the sample scan (48³, 16 groups, 10 coils, brain subject, seed 7), made on first use.

    Looked up in ``$SPURIG_SAMPLE_DIR``, the checkout's ``sample_data/`` and ``~/.cache/spurig``;
    when absent it is simulated deterministically into the first writable of them
    (``sample_data/make_sample.py`` does the same).

    Parameters
    ----------
    create : bool
        Simulate the file when it is missing (else raise).
    callback : Callback, optional
        Progress of the simulation.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        When the file is missing and ``create`` is false or no directory is writable.
    """
    dirs = _sample_dirs()
    for d in dirs:
        if (d / SAMPLE_NAME).exists():
            return d / SAMPLE_NAME
    if not create:
        raise InputError(f"sample scan {SAMPLE_NAME}: not found in {', '.join(map(str, dirs))}")
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.W_OK):
                continue
        except OSError:
            continue
        return simulate(d / SAMPLE_NAME, callback=callback, **SAMPLE)  # type: ignore[arg-type]
    raise InputError(
        f"sample scan {SAMPLE_NAME}: no writable directory among {', '.join(map(str, dirs))}"
    )
