"""Viewer arrangements shared by the widgets, ``spurig gui`` and the README screenshot.

These functions change a napari viewer (or ``ViewerModel``) but import no Qt binding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._jobs import CompareOutput

__all__ = [
    "READER_PATTERNS",
    "add_layers",
    "axial_order",
    "follow_axial",
    "follow_current_viewer",
    "prefer_spurig_readers",
    "render_compare",
    "select_view",
    "set_slice",
    "show_compare",
]

#: File patterns whose reader ``spurig gui`` and the widgets set to spurig (napari's
#: Preferences › Plugins › "File extension readers"; a user's own choice is never overwritten).
#: napari's built-in reader also claims ``*.h5``, ``*.zarr`` and ``*.nii.gz``, so without a
#: preference napari asks which reader to use.  ``*.zarr/`` matches stores (directories).
READER_PATTERNS: tuple[str, ...] = ("*.zarr", "*.zarr/", "*.h5", "*.hdf5", "*.nii", "*.nii.gz")


def prefer_spurig_readers(settings: Any = None) -> list[str]:
    """Make spurig napari's reader for :data:`READER_PATTERNS` the user has not assigned.

    Parameters
    ----------
    settings : NapariSettings, optional
        Defaults to ``napari.settings.get_settings()`` (persisted in the user's settings file).

    Returns
    -------
    list of str
        The patterns that were added (empty when all were set already).
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    current = dict(settings.plugins.extension2reader)
    added = [p for p in READER_PATTERNS if p not in current]
    if added:
        settings.plugins.extension2reader = {**current, **dict.fromkeys(added, "spurig")}
    return added


def axial_order(ndim: int) -> tuple[int, ...]:
    """``dims.order`` that shows axial slices of ``(..., x, y, z)`` data: z is the slider.

    The displayed axes are y (rows, anterior at the top) and x (columns); leading non-spatial
    axes (coefficient, iteration) keep their order as sliders.
    """
    if ndim < 3:
        return tuple(range(ndim))
    return (*range(ndim - 3), ndim - 1, ndim - 2, ndim - 3)


def _is_spurig(layer: Any) -> bool:
    return bool((getattr(layer, "metadata", None) or {}).get("spurig"))


def _set_axial(viewer: Any) -> None:
    if viewer.dims.ndisplay != 2 or not any(_is_spurig(lay) for lay in viewer.layers):
        return
    order = axial_order(viewer.dims.ndim)
    if tuple(viewer.dims.order) != order:
        viewer.dims.order = order


def style_layer(layer: Any) -> None:
    """Per-layer display a layer data tuple cannot carry: T1/T2 maps get napari's colorbar.

    napari 0.9's colorbar has no title field, so the layer's name overlay (its name, which ends
    in ``[ms]``) is shown in the same canvas corner as the colorbar's title: the unit is on the
    canvas, not only in the layer list and status bar.
    """
    kind = ((getattr(layer, "metadata", None) or {}).get("spurig") or {}).get("kind")
    if kind in ("t1", "t2") and hasattr(layer, "colorbar"):
        layer.colorbar.visible = True
        if hasattr(layer, "name_overlay"):
            layer.name_overlay.visible = True
            layer.name_overlay.position = layer.colorbar.position  # stacked above it


def _inserted(viewer: Any, event: Any) -> None:
    style_layer(event.value)
    _set_axial(viewer)


def follow_current_viewer() -> None:
    """Apply :func:`follow_axial` to napari's current viewer.

    Readers and sample data, which get no viewer, call this before their layers are added.
    """
    import napari

    viewer = napari.current_viewer()
    if viewer is not None:
        follow_axial(viewer)


def follow_axial(viewer: Any) -> None:
    """Keep ``viewer`` showing axial slices whenever a spurig layer is added (idempotent).

    Also gives T1/T2 layers a colorbar (:func:`style_layer`) as they are added.
    """
    if getattr(viewer.layers, "_spurig_axial", False):  # the viewer (pydantic) takes no attrs
        return
    viewer.layers._spurig_axial = True
    for layer in viewer.layers:
        style_layer(layer)
    viewer.layers.events.inserted.connect(lambda e: _inserted(viewer, e), position="last")
    viewer.layers.events.removed.connect(lambda e: _set_axial(viewer), position="last")
    _set_axial(viewer)


def add_layers(viewer: Any, tuples: list[Any]) -> list[Any]:
    """Add layer data tuples ``(data, meta, layer_type)`` to ``viewer``; return the new layers."""
    from napari.layers import Layer

    return [viewer.add_layer(Layer.create(data, dict(meta), kind)) for data, meta, kind in tuples]


def _grid(viewer: Any) -> Any:
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9; viewer.grid before
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _tag(tuples: list[Any], view: str) -> list[Any]:
    """Layer data tuples with ``metadata["spurig"]["view"] = view``."""
    out = []
    for data, meta, kind in tuples:
        meta = dict(meta)
        md = dict(meta.get("metadata") or {})
        md["spurig"] = {**(md.get("spurig") or {}), "view": view}
        meta["metadata"] = md
        out.append((data, meta, kind))
    return out


def _view_of(layer: Any) -> str | None:
    return ((layer.metadata or {}).get("spurig") or {}).get("view")


def select_view(viewer: Any, layers: list[Any], view: str, shape: tuple[int, int]) -> list[Any]:
    """Show only ``layers`` of ``view`` in a napari grid of ``shape``, each titled by its name.

    Returns
    -------
    list of Layer
        The layers of that view (in grid order).
    """
    shown = []
    for layer in layers:
        on = _view_of(layer) == view
        layer.visible = on
        if on:
            shown.append(layer)
            if hasattr(layer, "name_overlay"):
                layer.name_overlay.visible = True  # the panel's title
                layer.name_overlay.font_size = 9
            role = ((layer.metadata or {}).get("spurig") or {}).get("role")
            if role in ("t1", "t2", "error", "difference") and hasattr(layer, "colorbar"):
                layer.colorbar.visible = True  # the scale of maps in ms and errors in %
                layer.colorbar.size = (12, 70)
                layer.colorbar.position = "bottom_left"  # the title is at the top
                layer.colorbar.font_size = 7
    grid = _grid(viewer)
    grid.shape = shape
    grid.enabled = True
    return shown


def show_compare(
    viewer: Any,
    output: CompareOutput,
    *,
    previous: list[Any] | None = None,
    view: str = "coefficients",
) -> list[Any]:
    """Add a comparison's views to ``viewer`` and show one of them side by side.

    Other layers are hidden (napari's grid only tiles visible layers); the previous comparison's
    layers are removed.  The coefficient view's images share contrast limits, gamma and colormap
    (linked); every panel shows its layer name as title; the slider starts on the central axial
    slice.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
    output : CompareOutput
        From :func:`napari_spurig._compare_job.compare_job`.
    previous : list of Layer, optional
        Layers of an earlier comparison to replace.
    view : str
        One of ``output.views`` (``"coefficients"``, ``"T1/T2"``, ``"iterations"``).

    Returns
    -------
    list of Layer
        All the comparison's layers (every view), the ones of ``view`` visible.
    """
    from napari.experimental import link_layers
    from napari.layers import Image

    follow_axial(viewer)
    for layer in previous or []:
        if layer in viewer.layers:
            viewer.layers.remove(layer)
    for layer in viewer.layers:
        layer.visible = False
    views = output.views or {"coefficients": output.layers}
    layers: list[Any] = []
    for name, tuples in views.items():
        layers += add_layers(viewer, _tag(tuples, name))
    coeff = [lay for lay in layers if _view_of(lay) == "coefficients" and isinstance(lay, Image)]
    if len(coeff) > 1:
        link_layers(coeff, ("contrast_limits", "gamma", "colormap"))
    grids = output.grids or {"coefficients": (2, len(output.rows) + 1)}
    select_view(viewer, layers, view, grids.get(view, (1, 1)))
    set_slice(viewer, int(layers[0].data.shape[-1]) // 2, float(layers[0].scale[-1]))
    viewer.reset_view()
    return layers


def set_slice(viewer: Any, z: int, voxel_mm: float) -> None:
    """Show axial slice ``z`` (index along the data's last axis, ``voxel_mm`` thick)."""
    viewer.dims.set_point(viewer.dims.ndim - 1, z * voxel_mm)


def render_compare(
    viewer: Any,
    output: CompareOutput,
    *,
    path: str | Path | None = None,
    ndisplay: int = 2,
    view: str = "coefficients",
) -> np.ndarray:
    """Screenshot of a comparison (needs a shown Qt viewer and an OpenGL context).

    Parameters
    ----------
    viewer : napari.Viewer
        A shown viewer.
    output : CompareOutput
    path : path-like, optional
        Also write the screenshot as PNG there.
    ndisplay : {2, 3}
        ``2``: the grid of axial slices; ``3``: a 3D rendering of the reference coefficients.
    view : str
        Which view of the comparison (2D only).

    Returns
    -------
    ndarray, shape (height, width, 4), uint8
    """
    from qtpy.QtWidgets import QApplication  # a shown viewer has Qt; let the canvas lay out first

    layers = show_compare(viewer, output, view=view if ndisplay == 2 else "coefficients")
    QApplication.processEvents()
    viewer.reset_view()
    if ndisplay == 3:
        _grid(viewer).enabled = False
        for layer in layers[1:]:
            layer.visible = False
        viewer.dims.ndisplay = 3
        scene = getattr(viewer, "scene", None)  # napari >= 0.9: viewer.scene.camera
        (scene.camera if scene is not None else viewer.camera).angles = (0.0, 30.0, 60.0)
        QApplication.processEvents()
        viewer.reset_view()
    shot = viewer.screenshot(
        path=None if path is None else str(path), canvas_only=True, flash=False
    )
    return np.asarray(shot)
