"""napari_spurig: the napari plugin of spurig (SPEC §6).

Readers for raw scans (``*.h5``), result stores (``*.zarr``) and NIfTI maps, a NIfTI writer, sample
data, and four dock widgets (Reconstruct, Train, Quantitative maps, Compare).  Importing this
package does not import Qt or napari; :func:`launch` (``spurig gui``) does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WIDGETS", "launch", "make_viewer"]

#: Dock widgets in the order ``spurig gui`` docks them: (display name, class name in ``_widgets``).
WIDGETS: tuple[tuple[str, str], ...] = (
    ("Reconstruct", "ReconstructWidget"),
    ("Quantitative maps", "MapsWidget"),
    ("Compare", "CompareWidget"),
    ("Train", "TrainWidget"),
)


def make_viewer(files: list[str] | None = None, *, show: bool = True, viewer: Any = None) -> Any:
    """Return a napari viewer with the plugin's widgets docked (tabbed) and ``files`` opened.

    Files that cannot be opened are reported as notifications; the viewer still starts.  spurig
    becomes napari's reader for ``*.zarr``, ``*.h5``, ``*.hdf5``, ``*.nii`` and ``*.nii.gz``
    wherever the user has not chosen another (:func:`napari_spurig._view.prefer_spurig_readers`),
    so File › Open and drag-and-drop open them without asking; slices are axial and the scale bar
    reads mm.

    Parameters
    ----------
    files : list of str, optional
        Scans, result stores or NIfTI files.
    show : bool
        Whether to show the window (when a new viewer is made).
    viewer : napari.Viewer, optional
        Dock into this viewer instead of making a new one.

    Returns
    -------
    napari.Viewer
    """
    import napari
    from napari.utils.notifications import show_error

    from . import _widgets
    from ._view import follow_axial, prefer_spurig_readers

    prefer_spurig_readers()
    if viewer is None:
        viewer = napari.Viewer(title="spurig", show=show)
    follow_axial(viewer)
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9
    overlays = getattr(canvas, "overlays", None)
    scale_bar = overlays.scale_bar if overlays is not None else viewer.scale_bar
    scale_bar.visible = True
    docks = []
    for name, cls in WIDGETS:
        widget = getattr(_widgets, cls)(viewer)
        docks.append(viewer.window.add_dock_widget(widget, name=name, area="right"))
    for dock in docks[1:]:
        viewer.window._qt_window.tabifyDockWidget(docks[0], dock)
    docks[0].raise_()
    for f in files or []:
        try:
            viewer.open(f, plugin="spurig")
        except Exception as exc:
            show_error(f"{f}: {exc.__cause__ or exc}")
    return viewer


def launch(files: list[str]) -> None:
    """``spurig gui [FILES]``: the viewer of :func:`make_viewer`, then the napari event loop.

    Raises
    ------
    NotAvailableError
        When napari or a Qt binding is not installed.
    """
    from spurig_core.errors import NotAvailableError

    try:
        import napari
        import qtpy  # noqa: F401 - fails without a Qt binding
    except ImportError as exc:
        raise NotAvailableError(
            f"the GUI needs napari and a Qt binding: pip install 'spurig[gui]' ({exc})"
        ) from None

    make_viewer(list(files))
    napari.run()
