"""Viewer arrangements shared by the widgets, ``spurig gui`` and the README screenshot.

These functions change a napari viewer (or ``ViewerModel``) but import no Qt binding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._models import CompareOutput

__all__ = ["add_layers", "render_compare", "show_compare"]


def add_layers(viewer: Any, tuples: list[Any]) -> list[Any]:
    """Add layer data tuples ``(data, meta, layer_type)`` to ``viewer``; return the new layers."""
    from napari.layers import Layer

    return [viewer.add_layer(Layer.create(data, dict(meta), kind)) for data, meta, kind in tuples]


def _grid(viewer: Any) -> Any:
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9; viewer.grid before
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def show_compare(
    viewer: Any, output: CompareOutput, *, previous: list[Any] | None = None
) -> list[Any]:
    """Show a comparison side by side: results on top, magnified errors below, one camera.

    Other layers are hidden (napari's grid only tiles visible layers); the previous comparison's
    layers are removed; the image layers' contrast limits, gamma and colormap are linked.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
    output : CompareOutput
        From :func:`napari_spurig._models.compare_job`.
    previous : list of Layer, optional
        Layers of an earlier comparison to replace.

    Returns
    -------
    list of Layer
        The comparison's layers, in grid order.
    """
    from napari.experimental import link_layers

    for layer in previous or []:
        if layer in viewer.layers:
            viewer.layers.remove(layer)
    for layer in viewer.layers:
        layer.visible = False
    layers = add_layers(viewer, output.layers)
    images = [lay for lay in layers if lay._type_string == "image"]
    if len(images) > 1:
        link_layers(images, ("contrast_limits", "gamma", "colormap"))
    grid = _grid(viewer)
    grid.shape = (2, len(output.rows) + 1)
    grid.enabled = True
    z = layers[0].data.shape[-1] // 2
    viewer.dims.set_point(viewer.dims.ndim - 1, z * float(layers[0].scale[-1]))
    viewer.reset_view()
    return layers


def render_compare(
    viewer: Any, output: CompareOutput, *, path: str | Path | None = None, ndisplay: int = 2
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

    Returns
    -------
    ndarray, shape (height, width, 4), uint8
    """
    from qtpy.QtWidgets import QApplication  # a shown viewer has Qt; let the canvas lay out first

    layers = show_compare(viewer, output)
    QApplication.processEvents()
    viewer.reset_view()
    if ndisplay == 3:
        _grid(viewer).enabled = False
        for layer in layers[1:]:
            layer.visible = False
        viewer.dims.ndisplay = 3
        viewer.camera.angles = (0.0, 30.0, 60.0)
        QApplication.processEvents()
        viewer.reset_view()
    shot = viewer.screenshot(
        path=None if path is None else str(path), canvas_only=True, flash=False
    )
    return np.asarray(shot)
