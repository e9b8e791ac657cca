"""Pure functions turning spurig files and arrays into napari layer data tuples (no Qt, no viewer).

A layer data tuple is ``(data, metadata, layer_type)`` as napari readers return them.  Everything
here is testable without a display; the readers, the sample data and the widgets only call these.

Display conventions
-------------------
- Coefficient magnitudes ``|α̃|`` of shape ``(basis, x, y, z)`` are ONE image layer whose first axis
  (labelled ``coefficient``) is a slider: the balanced coefficients share one intensity scale, so
  one contrast range fits all of them (paper 2.4).  Saved iterates add a leading ``iteration`` axis.
- T1 uses napari's ``inferno`` colormap over 0–3000 ms, T2 ``viridis`` over 0–200 ms (napari has no
  built-in lipari/navia, the ISMRM-recommended maps; these perceptually uniform maps are the nearest
  built-ins, and the ranges cover WM/GM with CSF saturated).  Tissue is a labels layer.
- ``scale`` is the voxel size in mm (leading non-spatial axes get 1), so 3D views have the right
  proportions.
- Result arrays stay dask arrays over the zarr store; only the chunks on screen are read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "T1_COLORMAP",
    "T1_LIMITS_MS",
    "T2_COLORMAP",
    "T2_LIMITS_MS",
    "TISSUE_COLORS",
    "LayerDataTuple",
    "coefficient_layer",
    "error_layer",
    "is_result_store",
    "is_scan_file",
    "magnitude_limits",
    "map_layer",
    "nifti_layers",
    "result_layers",
    "scan_layers",
    "unbalance",
]

LayerDataTuple = tuple[Any, dict[str, Any], str]

T1_COLORMAP = "inferno"
T2_COLORMAP = "viridis"
T1_LIMITS_MS = (0.0, 3000.0)
T2_LIMITS_MS = (0.0, 200.0)

#: Colours of the tissue labels of SPEC §3 (0 background is transparent).
TISSUE_COLORS: dict[int | None, str] = {
    None: "transparent",
    0: "transparent",
    1: "#3b82f6",  # CSF
    2: "#9ca3af",  # grey matter
    3: "#f5f5f4",  # white matter
    4: "#f59e0b",  # other tissue
}

_RAW_SCHEMA = "spurig-raw/1"
_RESULT_SCHEMA = "spurig-result/1"


# ----------------------------------------------------------------------------------------------
# file recognition
# ----------------------------------------------------------------------------------------------
def _h5_schema(path: str | os.PathLike[str]) -> str | None:
    """The ``schema`` attribute of an HDF5 file (``None`` when absent).

    Raises
    ------
    InputError
        When the file cannot be opened as HDF5 (truncated or not HDF5).
    """
    import h5py

    from spurig_core.errors import InputError

    try:
        with h5py.File(path, "r") as f:
            schema = f.attrs.get("schema")
    except OSError as exc:
        raise InputError(
            f"{path}: not a readable HDF5 file (truncated or wrong format): {exc}"
        ) from None
    if isinstance(schema, bytes):
        schema = schema.decode()
    return None if schema is None else str(schema)


def is_scan_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file whose root ``schema`` is ``spurig-raw/1``.

    Raises
    ------
    InputError
        When the file looks like HDF5 by name but cannot be opened (truncated or corrupt).
    """
    p = Path(path)
    if p.suffix.lower() not in (".h5", ".hdf5") or not p.is_file():
        return False
    return _h5_schema(p) == _RAW_SCHEMA


def is_result_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr group whose ``schema`` attribute is ``spurig-result/1``."""
    import zarr

    p = Path(path)
    if not p.is_dir():
        return False
    try:
        attrs = dict(zarr.open_group(str(p), mode="r").attrs)
    except Exception:  # zarr raises several types for a directory that is not a store
        return False
    return attrs.get("schema") == _RESULT_SCHEMA


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def _scale(voxel_size_mm: tuple[float, ...] | list[float], ndim: int) -> tuple[float, ...]:
    vox = tuple(float(v) for v in voxel_size_mm)[-3:]
    return (1.0,) * (ndim - len(vox)) + vox


def magnitude_limits(mag: Any, *, percentile: float = 99.5) -> tuple[float, float]:
    """Contrast limits ``(0, p)`` from the central ``z`` plane of a magnitude volume.

    Parameters
    ----------
    mag : array-like, shape (..., x, y, z), real
        numpy or dask; only the central plane of the first leading index is read.
    percentile : float
        Upper limit percentile in percent.
    """
    plane = mag[(0,) * (mag.ndim - 3) + (slice(None), slice(None), mag.shape[-1] // 2)]
    plane = np.asarray(plane.compute() if hasattr(plane, "compute") else plane, dtype=np.float64)
    hi = float(np.percentile(plane, percentile)) if plane.size else 1.0
    if not np.isfinite(hi) or hi <= 0:
        hi = float(np.max(plane)) if plane.size and np.max(plane) > 0 else 1.0
    return (0.0, hi)


def unbalance(coefficients: Any) -> Any:
    """Unbalanced coefficients ``α = F_k^H α̃`` (SPEC §4) along axis ``-4``.

    Parameters
    ----------
    coefficients : array, shape (..., basis, x, y, z), complex
        Balanced coefficients ``α̃`` (numpy or dask; dask stays lazy).

    Returns
    -------
    array, shape (..., basis, x, y, z), complex
        ``F_k^H α̃``, ``F_k`` the unitary DFT of length ``basis`` (``ifft`` with ``norm="ortho"``).
    """
    axis = coefficients.ndim - 4
    if hasattr(coefficients, "rechunk"):
        import dask.array as da

        whole = coefficients.rechunk({axis: -1})
        return da.fft.ifft(whole, axis=axis, norm="ortho")  # type: ignore[call-arg]
    return np.fft.ifft(np.asarray(coefficients), axis=axis, norm="ortho").astype(np.complex64)


def coefficient_layer(
    coefficients: Any,
    *,
    name: str,
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    contrast_limits: tuple[float, float] | None = None,
    metadata: dict[str, Any] | None = None,
    iterations: bool = False,
) -> LayerDataTuple:
    """One channel-stacked image layer of coefficient magnitudes.

    Parameters
    ----------
    coefficients : array, shape (basis, x, y, z) or (n, basis, x, y, z), complex or real
        Coefficients (or iterates); magnitudes are taken lazily for dask input.
    name : str
        Layer name.
    voxel_size_mm : tuple of 3 float
        Voxel size in mm, used as the layer's ``scale``.
    contrast_limits : tuple of 2 float, optional
        Defaults to 0 … the 99.5th percentile of the central plane.
    metadata : dict, optional
        Stored under the layer's ``metadata["spurig"]``.
    iterations : bool
        Whether the leading axis is the iteration index.
    """
    mag = abs(coefficients) if np.iscomplexobj(coefficients) else coefficients
    if not hasattr(mag, "compute"):
        mag = np.asarray(mag, dtype=np.float32)
    labels: tuple[str, ...] = ("coefficient", "x", "y", "z")
    if iterations:
        labels = ("iteration", *labels)
    meta = {
        "name": name,
        "scale": _scale(voxel_size_mm, mag.ndim),
        "colormap": "gray",
        "contrast_limits": contrast_limits or magnitude_limits(mag),
        "axis_labels": labels[-mag.ndim :],
        "metadata": {"spurig": dict(metadata or {})},
    }
    return (mag, meta, "image")


def map_layer(
    data: Any,
    kind: str,
    *,
    name: str,
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    metadata: dict[str, Any] | None = None,
) -> LayerDataTuple:
    """An image layer for a quantitative map with its colormap and contrast limits.

    Parameters
    ----------
    data : array, shape (x, y, z), real
        ``kind="t1"``/``"t2"``: relaxation times in ms; ``"pd"``/``"b1"``: magnitude / relative B1+.
    kind : {"t1", "t2", "pd", "b1"}
    """
    if kind == "t1":
        cmap, limits = T1_COLORMAP, T1_LIMITS_MS
    elif kind == "t2":
        cmap, limits = T2_COLORMAP, T2_LIMITS_MS
    elif kind == "b1":
        cmap, limits = "twilight", (0.5, 1.5)
    else:
        cmap, limits = "gray", magnitude_limits(data)
    meta = {
        "name": name,
        "scale": _scale(voxel_size_mm, data.ndim),
        "colormap": cmap,
        "contrast_limits": limits,
        "metadata": {"spurig": {**(metadata or {}), "kind": kind}},
    }
    return (data, meta, "image")


def error_layer(
    result_mag: Any,
    reference_mag: Any,
    *,
    factor: float,
    name: str,
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    contrast_limits: tuple[float, float] | None = None,
) -> LayerDataTuple:
    """Magnified absolute error ``factor · | |result| − |reference| |`` as an image layer.

    Parameters
    ----------
    result_mag, reference_mag : array, shape (basis, x, y, z), real
        Coefficient magnitudes on the same grid.
    factor : float
        Magnification (5 or 10 in the paper's figures).
    contrast_limits : tuple of 2 float, optional
        Use the reference's limits so that errors read on the images' scale.
    """
    err = factor * np.abs(
        np.asarray(result_mag, np.float32) - np.asarray(reference_mag, np.float32)
    )
    return coefficient_layer(
        err,
        name=name,
        voxel_size_mm=voxel_size_mm,
        contrast_limits=contrast_limits,
        metadata={"kind": "error", "factor": float(factor)},
    )


# ----------------------------------------------------------------------------------------------
# whole files
# ----------------------------------------------------------------------------------------------
def scan_layers(path: str | os.PathLike[str]) -> list[LayerDataTuple]:
    """Layers of a raw scan (``spurig-raw/1``): the reference maps and B1 when present.

    k-space is not read; ``A^H b`` is computed on request (Reconstruct widget, method ``adjoint``).

    Returns
    -------
    list of layer data tuples
        ``reference T1``/``T2`` (ms), ``reference |PD|``, ``tissue`` (labels) and ``B1``,
        whichever the file has; the list is empty for a scan without them.

    Raises
    ------
    InputError
        When the file is not a readable scan or its reference arrays have the wrong shape.
    """
    import h5py

    from spurig_core.errors import InputError

    p = Path(path)
    schema = _h5_schema(p)
    if schema != _RAW_SCHEMA:
        raise InputError(f"{p}: unsupported schema {schema!r}; expected '{_RAW_SCHEMA}'")
    from spurig_core._readers import h5_dataset, scan_header
    from spurig_core.io_fields import check_range

    stem = p.name.removesuffix(".hdf5").removesuffix(".h5")
    layers: list[LayerDataTuple] = []
    with h5py.File(p, "r") as f:
        # the same checks as spurig_core.io.load_scan for what is shown (k-space is not read)
        matrix, fov = scan_header(f, str(p), _RAW_SCHEMA)
        vox = (fov[0] / matrix[0], fov[1] / matrix[1], fov[2] / matrix[2])
        meta = {"kind": "scan", "scan_path": str(p.resolve()), "voxel_size_mm": vox}
        dtypes = {"reference/pd": np.complex64, "reference/tissue": np.uint8}

        def read(name: str) -> np.ndarray | None:
            a = h5_dataset(
                f, name, dtypes.get(name, np.float32), ("matrix",) * 3, str(p), optional=True
            )
            if a is None:
                return None
            if a.shape != matrix:
                raise InputError(f"{p}: '{name}' has shape {a.shape}, expected {matrix}")
            if name != "reference/pd":
                check_range(a, name, str(p))
            return a

        for name, kind, label in (("reference/t1_ms", "t1", "T1"), ("reference/t2_ms", "t2", "T2")):
            a = read(name)
            if a is not None:
                layers.append(
                    map_layer(
                        a.astype(np.float32),
                        kind,
                        name=f"{stem} reference {label}",
                        voxel_size_mm=vox,
                        metadata=meta,
                    )
                )
        pd = read("reference/pd")
        if pd is not None:
            layers.append(
                map_layer(
                    np.abs(pd).astype(np.float32),
                    "pd",
                    name=f"{stem} reference |PD|",
                    voxel_size_mm=vox,
                    metadata=meta,
                )
            )
        tissue = read("reference/tissue")
        if tissue is not None:
            layers.append(
                (
                    tissue.astype(np.uint8),
                    {
                        "name": f"{stem} tissue",
                        "scale": vox,
                        "colormap": TISSUE_COLORS,
                        "opacity": 0.5,
                        "visible": False,
                        "metadata": {"spurig": {**meta, "kind": "tissue"}},
                    },
                    "labels",
                )
            )
        b1 = read("b1")
        if b1 is not None:
            layers.append(
                map_layer(
                    b1.astype(np.float32), "b1", name=f"{stem} B1", voxel_size_mm=vox, metadata=meta
                )
            )
    return layers


def _warn(message: str) -> None:
    """A napari warning notification (headless-safe: napari.utils needs no Qt)."""
    from napari.utils.notifications import show_warning

    show_warning(message)


def _result_arrays(p: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validated attributes and lazy dask arrays of a result store (SPEC §5).

    Applies :func:`spurig_core.io.load_result`'s checks that need no full read (schema, attribute
    types and ranges, dtypes, ranks, axis ranges such as a declared matrix above 1024, a chunk
    larger than the available memory, missing chunks), then decodes the coefficients and maps once
    (not the iterates): a damaged chunk is an InputError, NaN/Inf a warning (shown blank).
    """
    import dask.array as da

    from spurig_core._readers import open_result_group, result_attrs, zarr_array
    from spurig_core.errors import InputError

    w = str(p)
    g, raw = open_result_group(p, _RESULT_SCHEMA)
    attrs = result_attrs(raw, w)
    m3 = ("result_matrix",) * 3
    specs = {
        "coefficients": (np.complex64, ("basis", *m3), False),
        "iterations": (np.complex64, ("iterations", "basis", *m3), True),
        "t1_ms": (np.float32, m3, True),
        "t2_ms": (np.float32, m3, True),
        "pd": (np.float32, m3, True),
    }
    arrays: dict[str, Any] = {}
    for name, (dtype, axes, optional) in specs.items():
        z = zarr_array(g, name, dtype, axes, w, optional=optional, read=False)
        if z is None:
            continue
        arrays[name] = da.from_zarr(z)
        if name == "iterations":
            continue  # the largest array stays unread until shown
        try:
            bad = int((~da.isfinite(arrays[name])).sum().compute())
        except Exception as exc:  # codec errors of truncated or garbage chunks
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise InputError(
                f"{p}: array '{name}' cannot be decoded (truncated or damaged chunk): {first}"
            ) from None
        if bad:
            _warn(f"{p}: array '{name}' contains {bad} NaN or Inf values (shown blank)")
    return attrs, arrays


def result_layers(
    path: str | os.PathLike[str], *, unbalanced: bool = False, iterations: bool = True
) -> list[LayerDataTuple]:
    """Layers of a result store (``spurig-result/1``), all lazy dask arrays over zarr.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` directory.
    unbalanced : bool
        Show ``|F_k^H α̃|`` (the unbalanced coefficients) instead of the balanced ``|α̃|``.
    iterations : bool
        Add the saved iterates (when present) as a layer with an ``iteration`` slider.

    Returns
    -------
    list of layer data tuples
        ``<name> |α̃|`` (basis, x, y, z); ``<name> iterations`` (n, basis, x, y, z) hidden;
        ``<name> T1``, ``<name> T2`` (ms) and ``<name> PD`` after matching.

    Raises
    ------
    InputError
        When the store is damaged or not of the schema (see :func:`_result_arrays`); NaN or Inf
        values give a warning notification instead.
    """
    from spurig_core.errors import InputError

    p = Path(path)
    attrs, arrays = _result_arrays(p)
    coeffs = arrays["coefficients"]
    vox = attrs["voxel_size_mm"]
    stem = p.name.removesuffix(".zarr")
    meta = {
        "kind": "result",
        "result_path": str(p.resolve()),
        "method": attrs["method"],
        "groups": attrs["groups"],
        "voxel_size_mm": vox,
    }
    symbol = "α" if unbalanced else "α̃"
    data = unbalance(coeffs) if unbalanced else coeffs
    main = coefficient_layer(
        data,
        name=f"{stem} |{symbol}|",
        voxel_size_mm=vox,  # type: ignore[arg-type]
        metadata={**meta, "kind": "coefficients", "unbalanced": unbalanced},
    )
    layers = [main]
    if iterations and "iterations" in arrays:
        it = arrays["iterations"]
        if tuple(it.shape[1:]) != tuple(coeffs.shape):
            raise InputError(
                f"{p}: 'iterations' has shape {it.shape}, "
                f"expected (n, {', '.join(map(str, coeffs.shape))})"
            )
        it = unbalance(it) if unbalanced else it
        lay = coefficient_layer(
            it,
            name=f"{stem} iterations |{symbol}|",
            voxel_size_mm=vox,  # type: ignore[arg-type]
            contrast_limits=main[1]["contrast_limits"],
            iterations=True,
            metadata={**meta, "kind": "iterations"},
        )
        lay[1]["visible"] = False
        layers.append(lay)
    for name, kind, label in (("t1_ms", "t1", "T1"), ("t2_ms", "t2", "T2"), ("pd", "pd", "PD")):
        if name in arrays:
            a = arrays[name]
            if tuple(a.shape) != tuple(coeffs.shape[1:]):
                raise InputError(f"{p}: '{name}' has shape {a.shape}, expected {coeffs.shape[1:]}")
            layers.append(
                map_layer(
                    a,
                    kind,
                    name=f"{stem} {label}",
                    voxel_size_mm=vox,  # type: ignore[arg-type]
                    metadata=meta,
                )
            )
    return layers


def nifti_layers(path: str | os.PathLike[str]) -> list[LayerDataTuple]:
    """One image layer of a NIfTI file, lazy over nibabel's array proxy, scaled by the header.

    A 4D file (channels last, as ``spurig export`` writes) gets its channel axis moved first.
    Files whose name contains ``t1``/``t2`` get the quantitative colormaps of this module.

    Raises
    ------
    InputError
        When nibabel cannot read the file.
    """
    import dask.array as da
    import nibabel as nib

    from spurig_core.errors import InputError

    p = Path(path)
    try:
        img: Any = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for bad files
        raise InputError(f"{p}: not a readable NIfTI file: {exc}") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) not in (3, 4):
        raise InputError(f"{p}: expected a 3D or 4D volume, got shape {shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    data = da.from_array(img.dataobj, chunks=shape, asarray=True)  # type: ignore[attr-defined]
    if data.ndim == 4:
        data = da.moveaxis(data, 3, 0)
    stem = p.name.removesuffix(".gz").removesuffix(".nii")
    low = stem.lower()
    meta = {"kind": "nifti", "path": str(p.resolve()), "voxel_size_mm": zooms}
    kind = "t1" if "t1" in low else "t2" if "t2" in low else None
    if kind is not None and data.ndim == 3:
        return [map_layer(data, kind, name=stem, voxel_size_mm=zooms, metadata=meta)]  # type: ignore[arg-type]
    return [
        (
            data,
            {
                "name": stem,
                "scale": _scale(zooms, data.ndim),
                "contrast_limits": magnitude_limits(data),
                "metadata": {"spurig": meta},
            },
            "image",
        )
    ]
