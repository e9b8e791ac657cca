"""npe2 sample-data contributions: the shipped demo scan and a precomputed result for it.

The scan comes from :func:`spurig_core.simulation.sample_scan_path` (never simulated from the
menu: that would block the viewer for minutes); the result from
``spurig_core.simulation.sample_result_path()`` when the engine provides it, else a ``*.zarr``
store named after the scan beside it.  When neither exists a clear
:class:`spurig_core.errors.NotAvailableError` says so.
"""

from __future__ import annotations

from pathlib import Path

from ._layers import LayerDataTuple, is_result_store, result_layers, scan_layers

__all__ = ["sample_path", "sample_result", "sample_scan"]


def _simulation():  # type: ignore[no-untyped-def]
    from spurig_core.errors import NotAvailableError

    try:
        from spurig_core import simulation
    except ImportError as exc:
        raise NotAvailableError(f"sample data: no spurig_core.simulation ({exc})") from None
    return simulation


def sample_path(kind: str, *, create: bool = False) -> Path:
    """Path of the sample ``"scan"`` or ``"result"``.

    Parameters
    ----------
    kind : {"scan", "result"}
    create : bool
        Let the engine simulate the sample scan when it is missing.  Off for the napari menu
        entries: simulating takes minutes and sample-data commands run in the GUI thread.

    Raises
    ------
    NotAvailableError
        When there is no such sample (or it may not be created).
    """
    from spurig_core.errors import InputError, NotAvailableError

    sim = _simulation()
    if kind == "scan":
        try:
            return Path(sim.sample_scan_path(create=create))
        except InputError as exc:
            raise NotAvailableError(
                f"{exc} (make it once with `python sample_data/make_sample.py` or `spurig demo`)"
            ) from None
    fn = getattr(sim, "sample_result_path", None)
    if fn is not None:
        return Path(fn())
    scan = sample_path("scan", create=create)
    stem = scan.name.removesuffix(".h5")
    candidates = sorted(scan.parent.glob(f"{stem}*.zarr"))
    for c in candidates:
        if is_result_store(c):
            return c
    raise NotAvailableError(
        f"sample result: no result store '{stem}*.zarr' beside {scan} "
        "(reconstruct the sample scan with the Reconstruct widget or `spurig recon`)"
    )


def sample_scan() -> list[LayerDataTuple]:
    """Reference maps (T1, T2, |PD|, tissue) of the shipped sample scan."""
    return scan_layers(sample_path("scan"))


def sample_result() -> list[LayerDataTuple]:
    """Coefficients (and maps, when matched) of the sample result."""
    return result_layers(sample_path("result"))
