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
- ``scale`` is the voxel size in mm (leading non-spatial axes get 1) and ``units`` say so, so the
  scale bar reads mm and 3D views have the right proportions.  T1/T2 layer names end in ``[ms]``
  (the status bar and the colorbar's layer then carry the unit).
- Only what a user asked for is visible on open: the T1 map when there is one (on top), else the
  coefficients; T2, PD, B1 and tissue are added hidden, below T1.
- Result arrays stay dask arrays over the zarr store; only the chunks on screen are read.  From
  128 voxels a side they are multiscale: a lazy 2× pyramid computed at read time
  (:mod:`napari_spurig._pyramid`; the store holds SPEC §5's arrays only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._pyramid import MULTISCALE_MIN_SIZE, as_multiscale

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


def black_zero(name: str) -> Any:
    """Return napari colormap ``name`` with 0 drawn black.

    The maps are 0 outside the object; viridis would draw that air purple.  Returns the name
    itself for maps that start black already.
    """
    if name in ("inferno", "magma", "gray"):
        return name
    from napari.utils.colormaps import Colormap, ensure_colormap

    base = ensure_colormap(name)
    colors = np.concatenate([[[0.0, 0.0, 0.0, 1.0]], np.asarray(base.colors)])
    controls = np.concatenate([[0.0], np.linspace(1e-3, 1.0, len(base.colors))])
    return Colormap(colors=colors, controls=controls, name=f"{name} (0 black)")


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
    """Return an HDF5 file's ``schema`` attribute (``None`` if absent); InputError if unreadable."""
    from spurig_core.io import file_schema

    return file_schema(path)


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
    from spurig_core.io import file_schema

    p = Path(path)
    return p.is_dir() and file_schema(p) == _RESULT_SCHEMA


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def _scale(voxel_size_mm: tuple[float, ...] | list[float], ndim: int) -> tuple[float, ...]:
    vox = tuple(float(v) for v in voxel_size_mm)[-3:]
    return (1.0,) * (ndim - len(vox)) + vox


def _units(ndim: int) -> tuple[str, ...]:
    """Return napari layer ``units``: mm on the three spatial axes, ``pixel`` (an index) before."""
    return ("pixel",) * max(0, ndim - 3) + ("mm",) * min(3, ndim)


#: Unit suffixes of map layer names (``T1 [ms]``).
MAP_UNITS: dict[str, str] = {"t1": "ms", "t2": "ms", "pd": "a.u.", "b1": "rel."}


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

    The engine's :func:`spurig_core.physics.unbalance_coefficients` at the basis axis of a
    ``(basis, x, y, z)`` or ``(n, basis, x, y, z)`` array.

    Parameters
    ----------
    coefficients : array, shape (..., basis, x, y, z), complex
        Balanced coefficients ``α̃`` (numpy or dask; dask stays lazy).

    Returns
    -------
    array, shape (..., basis, x, y, z), complex
        ``F_k^H α̃``, ``F_k`` the unitary DFT of length ``basis``.
    """
    from spurig_core.physics import unbalance_coefficients

    return unbalance_coefficients(coefficients, axis=coefficients.ndim - 4)


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
        "units": _units(mag.ndim),
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
    visible: bool | None = None,
) -> LayerDataTuple:
    """Return an image layer for a quantitative map with its colormap, contrast limits and unit.

    Parameters
    ----------
    data : array, shape (x, y, z), real
        ``kind="t1"``/``"t2"``: relaxation times in ms; ``"pd"``/``"b1"``: magnitude / relative B1+.
    kind : {"t1", "t2", "pd", "b1"}
    name : str
        Layer name; `` [ms]`` (the unit of :data:`MAP_UNITS`) is appended when missing.
    visible : bool, optional
        Default: only T1 is visible.
    """
    if kind == "t1":
        cmap, limits = T1_COLORMAP, T1_LIMITS_MS
    elif kind == "t2":
        cmap, limits = black_zero(T2_COLORMAP), T2_LIMITS_MS
    elif kind == "b1":
        cmap, limits = "twilight", (0.5, 1.5)
    else:
        cmap, limits = "gray", magnitude_limits(data)
    unit = f" [{MAP_UNITS[kind]}]" if kind in MAP_UNITS else ""
    meta = {
        "name": name if name.endswith(unit) else f"{name}{unit}",
        "scale": _scale(voxel_size_mm, data.ndim),
        "units": _units(data.ndim),
        "colormap": cmap,
        "contrast_limits": limits,
        "visible": kind == "t1" if visible is None else bool(visible),
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
        ``B1``, ``tissue`` (labels), ``reference |PD|``, ``reference T2 [ms]`` and
        ``reference T1 [ms]``, whichever the file has, in that order so T1 is on top (the only
        visible one); the list is empty for a scan without them.

    Raises
    ------
    InputError
        When the file is not a readable scan or its reference arrays have the wrong shape.
    """
    from spurig_core.errors import InputError
    from spurig_core.io import scan_maps

    p = Path(path)
    schema = _h5_schema(p)
    if schema != _RAW_SCHEMA:
        raise InputError(f"{p}: unsupported schema {schema!r}; expected '{_RAW_SCHEMA}'")
    vox, maps = scan_maps(p)  # the checks of spurig_core.io.load_scan; k-space is not read
    stem = p.name.removesuffix(".hdf5").removesuffix(".h5")
    meta = {"kind": "scan", "scan_path": str(p.resolve()), "voxel_size_mm": vox}
    layers: list[LayerDataTuple] = []
    for name, kind, label in (("reference/t1_ms", "t1", "T1"), ("reference/t2_ms", "t2", "T2")):
        if name in maps:
            a = maps[name].astype(np.float32)
            layers.append(
                map_layer(
                    a, kind, name=f"{stem} reference {label}", voxel_size_mm=vox, metadata=meta
                )
            )
    if "reference/pd" in maps:
        pd = np.abs(maps["reference/pd"]).astype(np.float32)
        layers.append(
            map_layer(pd, "pd", name=f"{stem} reference |PD|", voxel_size_mm=vox, metadata=meta)
        )
    if "reference/tissue" in maps:
        tissue_meta = {
            "name": f"{stem} tissue",
            "scale": vox,
            "units": _units(3),
            "colormap": TISSUE_COLORS,
            "opacity": 0.5,
            "visible": False,
            "metadata": {"spurig": {**meta, "kind": "tissue"}},
        }
        layers.append((maps["reference/tissue"].astype(np.uint8), tissue_meta, "labels"))
    if "b1" in maps:
        b1 = maps["b1"].astype(np.float32)
        layers.append(map_layer(b1, "b1", name=f"{stem} B1", voxel_size_mm=vox, metadata=meta))
    return layers[::-1]  # napari draws the last layer on top: T1


def _warn(message: str) -> None:
    """Return a napari warning notification (headless-safe: napari.utils needs no Qt)."""
    from napari.utils.notifications import show_warning

    show_warning(message)


def _stored_limits(raw: dict[str, Any]) -> tuple[float, float] | None:
    """Return a result's stored coefficient display range (``display.contrast_limits``) if valid."""
    try:
        lo, hi = (float(v) for v in raw["display"]["contrast_limits"]["coefficients"])
    except (KeyError, TypeError, ValueError):
        return None
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) and hi > lo else None


def _result_arrays(p: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the validated attributes and lazy dask arrays of a result store (SPEC §5).

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
    attrs["contrast_limits"] = _stored_limits(raw)
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
    path: str | os.PathLike[str],
    *,
    unbalanced: bool = False,
    iterations: bool = True,
    multiscale_min: int | None = MULTISCALE_MIN_SIZE,
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
    multiscale_min : int or None
        Volumes with a spatial side of at least this many voxels (default 128) get a lazy 2×
        pyramid (``multiscale=True``, :mod:`napari_spurig._pyramid`); ``None``: never.

    Returns
    -------
    list of layer data tuples
        ``<name> iterations`` (n, basis, x, y, z) hidden; ``<name> |α̃|`` (basis, x, y, z);
        after matching ``<name> PD``, ``<name> T2 [ms]`` and ``<name> T1 [ms]`` (on top, the only
        visible layer then; without maps the coefficients are the visible layer).

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
        contrast_limits=None if unbalanced else attrs["contrast_limits"],
        metadata={**meta, "kind": "coefficients", "unbalanced": unbalanced},
    )
    layers = [main]
    if "t1_ms" in arrays:
        main[1]["visible"] = False
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
        layers.insert(0, lay)
    for name, kind, label in (("pd", "pd", "PD"), ("t2_ms", "t2", "T2"), ("t1_ms", "t1", "T1")):
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
    return [as_multiscale(lay, min_size=multiscale_min) for lay in layers]


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

    from spurig_core.io import open_nifti

    p = Path(path)
    proxy, zooms = open_nifti(p)
    shape = tuple(int(s) for s in proxy.shape)
    data = da.from_array(proxy, chunks=shape, asarray=True)
    if data.ndim == 4:
        data = da.moveaxis(data, 3, 0)
    stem = p.name.removesuffix(".gz").removesuffix(".nii")
    low = stem.lower()
    meta = {"kind": "nifti", "path": str(p.resolve()), "voxel_size_mm": zooms}
    kind = "t1" if "t1" in low else "t2" if "t2" in low else None
    if kind is not None and data.ndim == 3:
        return [
            map_layer(data, kind, name=stem, voxel_size_mm=zooms, metadata=meta, visible=True)  # type: ignore[arg-type]
        ]
    return [
        (
            data,
            {
                "name": stem,
                "scale": _scale(zooms, data.ndim),
                "units": _units(data.ndim),
                "contrast_limits": magnitude_limits(data),
                "metadata": {"spurig": meta},
            },
            "image",
        )
    ]
