"""Multiscale (pyramid) display of large result volumes, computed lazily at read time.

A result store keeps SPEC §5's arrays only (no extra pyramid arrays are written, so the schema and
every reader of it are unchanged).  For a volume with a spatial side of at least
:data:`MULTISCALE_MIN_SIZE` voxels the reader hands napari a list of levels instead: level 0 is
the stored dask array, level ``i`` the mean over ``2**i``-voxel cubes (``da.coarsen`` over the
axial slab chunks, so a level-1 axial slice reads the same one slab as level 0), down to
a side of at most :data:`MULTISCALE_MIN_SIDE`.  napari then draws the coarsest level in 3D and
picks a level by zoom in 2D, instead of uploading and re-reading the full-resolution volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MULTISCALE_MIN_SIDE", "MULTISCALE_MIN_SIZE", "as_multiscale", "pyramid"]

#: A volume whose largest spatial side is at least this many voxels is shown multiscale.
MULTISCALE_MIN_SIZE = 128
#: Levels are added until the largest spatial side is at most this many voxels.
MULTISCALE_MIN_SIDE = 64


def pyramid(data: Any, *, min_side: int = MULTISCALE_MIN_SIDE) -> list[Any]:
    """Levels of a lazy 2× pyramid over the last three (spatial) axes.

    Parameters
    ----------
    data : dask array, shape (..., x, y, z), real
        Level 0 (leading axes such as coefficient or iteration are not downsampled).
    min_side : int
        Stop once the largest spatial side is at most this (≥ 2).

    Returns
    -------
    list of dask arrays
        ``[data, level1, ...]``, level ``i`` of shape ``(..., x // 2**i, y // 2**i, z // 2**i)``
        (a side not divisible by ``2**i`` drops its last voxels), float32; level ``i`` is the
        mean over ``2**i``-voxel cubes of level 0 (= the 2×2×2 mean of level ``i - 1`` where
        the sides divide).
    """
    import dask.array as da

    levels = [data]
    factor = 1
    while max(levels[-1].shape[-3:]) > max(2, min_side) and min(levels[-1].shape[-3:]) >= 2:
        factor *= 2  # each level straight from level 0: one pass over the stored slabs
        axes = {data.ndim - 3 + i: factor for i in range(3)}
        levels.append(da.coarsen(np.mean, data, axes, trim_excess=True).astype(np.float32))
    return levels


def as_multiscale(layer: tuple[Any, dict[str, Any], str], *, min_size: int | None) -> Any:
    """``layer`` with a :func:`pyramid` as data (``multiscale=True``) when it is large enough.

    Parameters
    ----------
    layer : layer data tuple
        An image layer whose data is a real dask array of shape ``(..., x, y, z)``.
    min_size : int or None
        Pyramid when the largest spatial side is ``>= min_size`` (:data:`MULTISCALE_MIN_SIZE` in
        the readers); ``None`` keeps every layer single-scale.

    Returns
    -------
    layer data tuple
        Unchanged for other layers (labels, numpy data, small volumes); contrast limits and
        other metadata are kept (they come from level 0).
    """
    data, meta, kind = layer
    if (
        min_size is None
        or kind != "image"
        or not hasattr(data, "rechunk")
        or data.ndim < 3
        or max(data.shape[-3:]) < min_size
    ):
        return layer
    levels = pyramid(data, min_side=min(MULTISCALE_MIN_SIDE, max(2, min_size // 2)))
    if len(levels) == 1:
        return layer
    return (levels, {**meta, "multiscale": True}, kind)
