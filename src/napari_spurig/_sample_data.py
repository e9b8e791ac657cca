"""npe2 sample-data contributions: a shipped small scan and result, and the 48³ demo scan.

- ``scan`` and ``result`` open the small sample shipped in the checkout's ``sample_data/``
  (:data:`SMALL_NAME`, 32³, 4 coils, 4 groups = the 30 s scan, ≈ 18 MB; and
  :data:`SMALL_RESULT`, its SPUR-iG reconstruction with the shipped 30 s model, matched), so they
  work on a fresh checkout with no simulation.  ``python sample_data/make_sample.py --small``
  makes them again.
- ``scan48`` opens the 48³ scan of the README and ``spurig demo``.  When it is missing it is
  simulated in a background worker with a progress bar (about a minute): the menu entry returns at
  once with an empty placeholder layer saying so, and the scan's layers replace it when done.

When a file is missing a clear :class:`spurig_core.errors.NotAvailableError` says how to make it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import LayerDataTuple, is_result_store, result_layers, scan_layers

__all__ = [
    "SMALL",
    "SMALL_NAME",
    "SMALL_RESULT",
    "sample_path",
    "sample_result",
    "sample_scan",
    "sample_scan_48",
    "simulate_48_job",
]

#: File name of the shipped small sample scan.
SMALL_NAME = "spurig_sample_32.h5"
#: File name of its shipped result (SPUR-iG, shipped 30 s model, matched: T1/T2/PD).
SMALL_RESULT = "spurig_sample_32_spurig-30s.zarr"
#: ``spurig_core.simulation.simulate`` arguments of the small sample (deterministic).
SMALL: dict[str, Any] = {
    "matrix": 32,
    "coils": 4,
    "groups": 4,
    "seed": 7,
    "phantom": "brain",
    "compression": "gzip",
}


def _small_dirs() -> list[Path]:
    """Where the small sample is looked up: ``$SPURIG_SAMPLE_DIR``, then the checkout's."""
    dirs = []
    env = os.environ.get("SPURIG_SAMPLE_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path(__file__).resolve().parents[2] / "sample_data")
    return dirs


def _simulation():  # type: ignore[no-untyped-def]
    from spurig_core.errors import NotAvailableError

    try:
        from spurig_core.simulation import sample
    except ImportError as exc:
        raise NotAvailableError(f"sample data: no spurig_core.simulation ({exc})") from None
    return sample


def sample_path(kind: str, *, create: bool = False) -> Path:
    """Path of a sample: ``"scan"``/``"result"`` (shipped 32³) or ``"scan48"`` (48³ demo scan).

    Parameters
    ----------
    kind : {"scan", "result", "scan48"}
    create : bool
        ``"scan48"`` only: simulate it when missing (minutes; not in the GUI thread).

    Raises
    ------
    NotAvailableError
        When there is no such sample (or it may not be created), with the command that makes it.
    """
    from spurig_core.errors import InputError, NotAvailableError

    if kind in ("scan", "result"):
        name = SMALL_NAME if kind == "scan" else SMALL_RESULT
        for d in _small_dirs():
            p = d / name
            if (kind == "scan" and p.is_file()) or (kind == "result" and is_result_store(p)):
                return p
        where = ", ".join(str(d) for d in _small_dirs())
        raise NotAvailableError(
            f"sample {kind} {name}: not found in {where} "
            "(make it with `python sample_data/make_sample.py --small`)"
        )
    if kind != "scan48":
        raise InputError(f"sample {kind!r}: choose scan, result or scan48")
    sim = _simulation()
    try:
        return Path(sim.sample_scan_path(create=create))
    except InputError as exc:
        raise NotAvailableError(
            f"{exc} (make it once with `python sample_data/make_sample.py` or `spurig demo`)"
        ) from None


def sample_scan() -> list[LayerDataTuple]:
    """Return reference maps (T1 on top, T2, |PD|, tissue, B1) of the shipped 32³ sample scan."""
    from ._view import follow_current_viewer

    follow_current_viewer()
    return scan_layers(sample_path("scan"))


def sample_result() -> list[LayerDataTuple]:
    """Return the shipped SPUR-iG result of the 32³ sample: coefficients and T1/T2/PD maps."""
    from ._view import follow_current_viewer

    follow_current_viewer()
    return result_layers(sample_path("result"))


def simulate_48_job(cancel: threading.Event) -> Generator[Any, None, Path]:
    """Simulate (or find) the 48³ sample scan; yields progress events; returns its path."""
    from ._jobs import run_engine

    sim = _simulation()
    path = yield from run_engine(sim.sample_scan_path, create=True, cancel=cancel)
    return Path(path)


#: Name of the placeholder layer shown while the 48³ sample is simulated.
PLACEHOLDER = "48³ sample: simulating (about a minute; see the progress bar)"
_RUNNERS: list[Any] = []  # keeps running workers alive


def sample_scan_48() -> list[LayerDataTuple]:
    """Return the 48³ demo scan's reference maps; simulated in a worker when it is missing.

    Returns
    -------
    list of layer data tuples
        The scan's layers when it exists; else an empty placeholder points layer while a
        background worker (progress bar, cancellable from napari's activity dock) simulates it
        and then adds the layers to the current viewer.
    """
    from spurig_core.errors import NotAvailableError

    from ._view import follow_current_viewer

    follow_current_viewer()
    try:
        return scan_layers(sample_path("scan48"))
    except NotAvailableError:
        pass
    import napari

    from ._view import add_layers, follow_axial
    from ._widgets._common import JobRunner

    viewer = napari.current_viewer()
    if viewer is None:  # no GUI: simulate here (blocking)
        return scan_layers(sample_path("scan48", create=True))
    follow_axial(viewer)

    def done(path: Path) -> None:
        for layer in [lay for lay in viewer.layers if lay.name == PLACEHOLDER]:
            viewer.layers.remove(layer)
        add_layers(viewer, scan_layers(path))

    runner = JobRunner("48³ sample", on_done=done)
    runner.on_stop = lambda: _RUNNERS.remove(runner) if runner in _RUNNERS else None
    _RUNNERS.append(runner)
    runner.start(simulate_48_job)
    return [(np.empty((0, 3), np.float32), {"name": PLACEHOLDER, "units": "mm"}, "points")]
