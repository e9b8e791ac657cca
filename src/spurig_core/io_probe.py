"""Probes and image-space readers for viewers (re-exported by :mod:`spurig_core.io`).

The napari plugin opens files only through these and :mod:`spurig_core.io`'s loaders: the schema
of a file or store, a scan's image-space arrays (reference maps, B1) without its k-space, its voxel
size, a result's source scan and iterate shape, and a NIfTI file's lazy array proxy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "file_schema",
    "open_nifti",
    "result_iterations_shape",
    "result_source",
    "scan_maps",
    "scan_voxel_size",
]

RAW_SCHEMA = "spurig-raw/1"
PathLike = str | os.PathLike[str]


def result_iterations_shape(path: PathLike) -> tuple[int, ...] | None:
    """Shape of a result store's ``iterations`` array without reading it (``None``: absent)."""
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r")
        arr = g["iterations"] if "iterations" in g else None
        return tuple(int(n) for n in arr.shape) if isinstance(arr, zarr.Array) else None
    except Exception:  # an unreadable store: load_result reports it with one line
        return None


def file_schema(path: PathLike) -> str | None:
    """Return the root ``schema`` attribute of an HDF5 file or zarr group.

    ``None`` when it is absent or when a directory is not a zarr group.

    Raises
    ------
    InputError
        When a file cannot be opened as HDF5 (truncated or another format).
    """
    p = Path(path)
    if p.is_dir():
        import zarr

        try:
            found = dict(zarr.open_group(str(p), mode="r").attrs).get("schema")
        except Exception:  # zarr raises many types for a directory that is not a store
            return None
        return found if isinstance(found, str) else None
    import h5py

    try:
        with h5py.File(p, "r") as f:
            schema = f.attrs.get("schema")
    except OSError as exc:
        raise InputError(
            f"{p}: not a readable HDF5 file (truncated or wrong format): {exc}"
        ) from None
    if isinstance(schema, bytes):
        schema = schema.decode()
    return None if schema is None else str(schema)


def scan_maps(path: PathLike) -> tuple[tuple[float, float, float], dict[str, np.ndarray]]:
    """Voxel size and the image-space arrays of a scan (``reference/*``, ``b1``), not k-space.

    Applies :func:`load_scan`'s checks to what is read (schema, header, dtypes, shapes, ranges).

    Returns
    -------
    voxel_size_mm : tuple of 3 float
    maps : dict
        ``"reference/t1_ms"``, ``"reference/t2_ms"`` (float32, ms), ``"reference/pd"``
        (complex64), ``"reference/tissue"`` (uint8), ``"b1"`` (float32), each ``(x, y, z)``;
        only those the file has.
    """
    import h5py

    from ._readers import h5_dataset, scan_header
    from .io_fields import check_range

    p = Path(path)
    file_schema(p)  # one line for an unreadable file
    dtypes = {"reference/pd": np.complex64, "reference/tissue": np.uint8}
    maps: dict[str, np.ndarray] = {}
    with h5py.File(p, "r") as f:
        matrix, fov = scan_header(f, str(p), RAW_SCHEMA)
        for name in ("reference/t1_ms", "reference/t2_ms", "reference/pd", "reference/tissue",
                     "b1"):  # fmt: skip
            a = h5_dataset(
                f, name, dtypes.get(name, np.float32), ("matrix",) * 3, str(p), optional=True
            )
            if a is None:
                continue
            if a.shape != matrix:
                raise InputError(f"{p}: '{name}' has shape {a.shape}, expected {matrix}")
            if name != "reference/pd":
                check_range(a, name, str(p))
            maps[name] = a
    vox = (fov[0] / matrix[0], fov[1] / matrix[1], fov[2] / matrix[2])
    return vox, maps


def open_nifti(path: PathLike) -> tuple[Any, tuple[float, float, float]]:
    """Return a NIfTI file's lazy array proxy (3D or 4D, read on indexing) and its voxel size in mm.

    Raises
    ------
    InputError
        When nibabel cannot read the file or it is not 3D/4D.
    """
    import nibabel as nib

    p = Path(path)
    try:
        img: Any = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for bad files
        raise InputError(f"{p}: not a readable NIfTI file: {exc}") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) not in (3, 4):
        raise InputError(f"{p}: expected a 3D or 4D volume, got shape {shape}")
    z = [float(v) for v in img.header.get_zooms()[:3]]
    return img.dataobj, (z[0], z[1], z[2])


def scan_voxel_size(path: PathLike) -> tuple[float, float, float]:
    """Voxel size in mm of a scan from its header (``fov_mm / matrix``)."""
    import h5py

    from ._readers import scan_header

    file_schema(path)
    with h5py.File(path, "r") as f:
        matrix, fov = scan_header(f, str(path), RAW_SCHEMA)
    return (fov[0] / matrix[0], fov[1] / matrix[1], fov[2] / matrix[2])


def result_source(path: PathLike) -> dict[str, Any] | None:
    """Return a result store's ``source`` attribute (scan path and sha256), ``None`` if absent."""
    import zarr

    try:
        src = dict(zarr.open_group(str(path), mode="r").attrs).get("source")
    except Exception:  # an unreadable store: load_result reports it with one line
        return None
    return dict(src) if isinstance(src, dict) else None
