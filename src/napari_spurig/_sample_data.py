"""npe2 sample-data contributions: the shipped demo scan and a precomputed result for it.

The files come from :mod:`spurig_core.simulation` (``sample_scan_path()`` and
``sample_result_path()``); when the engine does not provide them yet, a clear
:class:`spurig_core.errors.NotAvailableError` says so.
"""

from __future__ import annotations

from pathlib import Path

from ._layers import LayerDataTuple, result_layers, scan_layers

__all__ = ["sample_path", "sample_result", "sample_scan"]


def sample_path(kind: str) -> Path:
    """Path of the shipped sample ``"scan"`` or ``"result"``.

    Raises
    ------
    NotAvailableError
        When the engine has no sample file of that kind.
    """
    from spurig_core.errors import NotAvailableError

    try:
        from spurig_core import simulation
    except ImportError:
        raise NotAvailableError("sample data: spurig_core.simulation is not available") from None
    fn = getattr(simulation, f"sample_{kind}_path", None)
    if fn is None:
        raise NotAvailableError(
            f"sample data: spurig_core.simulation.sample_{kind}_path is missing"
        )
    path = Path(fn())
    if not path.exists():
        raise NotAvailableError(f"sample data: {path} does not exist")
    return path


def sample_scan() -> list[LayerDataTuple]:
    """Reference maps (T1, T2, |PD|, tissue) of the shipped sample scan."""
    return scan_layers(sample_path("scan"))


def sample_result() -> list[LayerDataTuple]:
    """Coefficients (and maps, when matched) of the shipped sample result."""
    return result_layers(sample_path("result"))
