"""npe2 writer contribution: image layers to NIfTI (``*.nii``, ``*.nii.gz``).

Complex data are written as magnitudes; the voxel size comes from the layer's ``scale`` (mm) and the
affine from :func:`spurig_core.io.write_nifti`, so ``spurig export`` and the viewer agree.  A
channel-stacked layer ``(basis, x, y, z)`` is written channels last ``(x, y, z, basis)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["write_image"]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer to ``path`` as NIfTI-1.

    Parameters
    ----------
    path : str
        Target file ending in ``.nii`` or ``.nii.gz``.
    data : array, shape (x, y, z) or (c, x, y, z)
        The layer data (numpy or dask; complex → magnitude).
    meta : dict
        Layer attributes; ``scale`` gives the voxel size in mm (last three entries).

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    InputError
        When the layer is not 3D or 4D, or the path cannot take the file (a folder or another
        kind of file is there, or its folder cannot be written): checked before any data is
        computed.
    """
    from spurig_core.errors import InputError
    from spurig_core.io import write_nifti
    from spurig_core.outputs import check_output

    check_output(path, kind="nifti")
    if hasattr(data, "compute"):
        data = data.compute()
    arr = np.asarray(data)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if arr.ndim not in (3, 4):
        raise InputError(f"{path}: NIfTI export needs a 3D or 4D layer, got shape {arr.shape}")
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 0, -1)
    scale = tuple(float(s) for s in (meta.get("scale") or (1.0, 1.0, 1.0)))[-3:]
    if len(scale) < 3:
        scale = (1.0,) * (3 - len(scale)) + scale
    out = write_nifti(arr.astype(np.float32), path, (scale[0], scale[1], scale[2]))
    return [str(out)]
