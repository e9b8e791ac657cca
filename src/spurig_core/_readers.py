"""Checked reading of HDF5 datasets and zarr arrays for :mod:`spurig_core.io` (and the plugin).

Everything a file can get wrong becomes one :class:`~spurig_core.errors.InputError` line here:
links that cannot be followed, wrong dtype or rank, an axis outside its range, a declared size
larger than the available memory (checked before reading), unreadable (truncated or garbage)
chunks, missing zarr chunks (which zarr would silently read as zeros), NaN/Inf, values that overflow
float32, and attribute values of the wrong type or outside their range (:mod:`.io_fields`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io_fields import (
    check_magnitude,
    check_sequence,
    check_shape_axes,
    dict_attr,
    int_attr,
    number_attr,
    text_attr,
    vector_attr,
)
from .memory import require_bytes

__all__ = [
    "check_store_json",
    "h5_dataset",
    "open_result_group",
    "result_attrs",
    "scan_header",
    "scan_sequence_values",
    "zarr_array",
]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:160] if text else type(exc).__name__).rstrip()


def _declared(shape: Seq[int], itemsize: int, what: str, where: str) -> None:
    need = float(np.prod([float(s) for s in shape])) * itemsize
    require_bytes(need, f"{where}: reading {what} of shape {tuple(shape)}")


# ----------------------------------------------------------------------------------------------
# HDF5
# ----------------------------------------------------------------------------------------------
def h5_dataset(
    f: Any,
    name: str,
    dtype: Any,
    axes: Seq[str],
    where: str,
    *,
    optional: bool = False,
    values: bool = True,
) -> np.ndarray | None:
    """Read dataset ``name`` with its checks.

    Parameters
    ----------
    f : h5py.File
    name : str
    dtype : numpy dtype
        Required dtype.
    axes : sequence of str
        One :data:`~spurig_core.io_fields.FIELDS` key per axis (``""``: no range), which also fixes
        the rank.
    where : str
        The file, for messages.
    optional : bool
        Return ``None`` when absent instead of refusing.
    values : bool
        Check finiteness and float32 overflow of float/complex data.
    """
    import h5py

    if name not in f:
        if optional:
            return None
        raise InputError(f"{where}: missing dataset '{name}' (schema spurig-raw/1)")
    try:
        ds = f[name]
    except (KeyError, OSError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"{where}: '{name}' cannot be opened (a dangling link?): {_first_line(exc)}"
        ) from None
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{where}: '{name}' is not a dataset")
    if ds.dtype != np.dtype(dtype):
        raise InputError(
            f"{where}: dataset '{name}' has dtype {ds.dtype}, expected {np.dtype(dtype)}"
        )
    if ds.ndim != len(axes):
        raise InputError(
            f"{where}: dataset '{name}' has {ds.ndim} dimensions {ds.shape}, expected {len(axes)}"
        )
    check_shape_axes(ds.shape, axes, name, where)
    _declared(ds.shape, ds.dtype.itemsize, f"dataset '{name}'", where)
    try:
        data = np.asarray(ds[()])
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError(
            f"{where}: dataset '{name}' cannot be read (truncated file?): {_first_line(exc)}"
        ) from None
    if values:
        check_magnitude(data, name, where)
    return data


def _attr(attrs: Any, name: str, where: str, owner: str) -> Any:
    if name not in attrs:
        if owner == "the root":
            raise InputError(f"{where}: missing root attribute '{name}'")
        raise InputError(f"{where}: {owner} lacks attribute '{name}'")
    try:
        return attrs[name]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{where}: attribute '{name}' cannot be read: {_first_line(exc)}"
        ) from None


def scan_header(
    f: Any, where: str, schema: str
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Check the root ``schema`` and return ``matrix`` and ``fov_mm`` (SPEC §3)."""
    if "schema" not in f.attrs:
        raise InputError(f"{where}: no 'schema' attribute; expected '{schema}'")
    found = _attr(f.attrs, "schema", where, "the root")
    try:
        text = text_attr(found, "schema", where)
    except InputError:
        raise InputError(f"{where}: 'schema' attribute {found!r:.60} is not '{schema}'") from None
    if text != schema:
        raise InputError(f"{where}: unsupported schema {text!r}; expected '{schema}'")
    m = vector_attr(_attr(f.attrs, "matrix", where, "the root"), "matrix", where)
    fov = vector_attr(_attr(f.attrs, "fov_mm", where, "the root"), "fov_mm", where)
    return (int(m[0]), int(m[1]), int(m[2])), (fov[0], fov[1], fov[2])


def scan_sequence_values(f: Any, where: str, n_tr: int) -> tuple[np.ndarray, dict[str, float]]:
    """Return the flip angles ``(tr,)`` and timings of ``sequence/``, each in range (SPEC §4)."""
    # values=False: check_sequence names the flip-angle range for absurd values such as 1e30
    fa = h5_dataset(f, "sequence/flip_angle_deg", np.float32, ("repetitions",), where, values=False)
    assert fa is not None  # not optional
    if fa.shape != (n_tr,):
        raise InputError(
            f"{where}: 'sequence/flip_angle_deg' has shape {fa.shape}, expected ({n_tr},) "
            "to match 'kspace'"
        )
    attrs = f["sequence/flip_angle_deg"].attrs
    owner = "'sequence/flip_angle_deg'"
    timings = {
        name: number_attr(_attr(attrs, name, where, owner), name, where)
        for name in ("tr_ms", "te_ms", "ti_ms", "rest_s")
    }
    check_sequence(fa, timings, where, min_repetitions=5)
    return fa, timings


# ----------------------------------------------------------------------------------------------
# zarr
# ----------------------------------------------------------------------------------------------
def check_store_json(p: Path) -> None:
    """Refuse a store whose ``zarr.json`` is not JSON (say so instead of zarr's traceback)."""
    meta = p / "zarr.json"
    if meta.is_file():
        try:
            json.loads(meta.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{p}: zarr.json is not valid JSON ({_first_line(exc)}); the store is damaged"
            ) from None


def open_result_group(p: Path, schema: str) -> tuple[Any, dict[str, Any]]:
    """Open a result store read-only; return the group and its attributes (schema checked)."""
    import zarr

    check_store_json(p)
    try:
        g = zarr.open_group(str(p), mode="r")
        attrs = dict(g.attrs)
    except Exception as exc:  # zarr raises many types for a non-store
        raise InputError(f"{p}: not a readable zarr result store: {_first_line(exc)}") from None
    found = attrs.get("schema")
    if not isinstance(found, str) or found != schema:
        raise InputError(f"{p}: unsupported schema {found!r:.60}; expected '{schema}'")
    return g, attrs


def zarr_array(
    g: Any,
    name: str,
    dtype: Any,
    axes: Seq[str],
    where: str,
    *,
    optional: bool = False,
    read: bool = True,
    values: bool = True,
) -> Any:
    """Check array ``name`` of a result group and read it (``read=False``: return the array).

    Checks dtype, rank, axis ranges, the declared size against the available memory, that every
    chunk of the chunk grid is stored (zarr reads a missing chunk as zeros), then decodes the data
    and checks finiteness and float32 overflow.
    """
    import zarr

    try:
        present = name in g
        a = g[name] if present else None
    except Exception as exc:  # a damaged zarr.json of the array
        raise InputError(
            f"{where}: array '{name}' cannot be opened (damaged zarr.json?): {_first_line(exc)}"
        ) from None
    if a is None:
        if optional:
            return None
        raise InputError(f"{where}: missing array '{name}' (schema spurig-result/1)")
    if not isinstance(a, zarr.Array):
        raise InputError(f"{where}: '{name}' is not an array")
    if np.dtype(a.dtype) != np.dtype(dtype) or a.ndim != len(axes):
        raise InputError(
            f"{where}: array '{name}' is {a.dtype} {a.shape}, expected {np.dtype(dtype)} with "
            f"{len(axes)} dimensions"
        )
    check_shape_axes(a.shape, axes, name, where)
    itemsize = np.dtype(dtype).itemsize
    if read:
        _declared(a.shape, itemsize, f"array '{name}'", where)
    else:  # lazy viewers read one chunk at a time
        _declared(a.chunks, itemsize, f"a chunk of array '{name}'", where)
    try:
        stored, expected = int(a.nchunks_initialized), int(a.nchunks)
    except Exception as exc:
        raise InputError(f"{where}: array '{name}' cannot be listed: {_first_line(exc)}") from None
    if stored < expected:
        raise InputError(
            f"{where}: array '{name}' is missing {expected - stored} of its {expected} chunks "
            "(deleted or never written); zarr would read them as zeros"
        )
    if not read:
        return a
    try:
        data = np.asarray(a[...])
    except Exception as exc:  # codec errors of truncated or garbage chunks come in many types
        raise InputError(
            f"{where}: array '{name}' cannot be decoded (truncated or damaged chunk): "
            f"{_first_line(exc)}"
        ) from None
    if values:
        check_magnitude(data, name, where, kind="array")
    return data


def result_attrs(attrs: dict[str, Any], where: str) -> dict[str, Any]:
    """Return SPEC §5's result attributes, typed and in range; absent ones get their defaults."""

    def get(name: str, default: Any) -> Any:
        return attrs[name] if name in attrs else default

    out: dict[str, Any] = {
        "method": text_attr(get("method", "unknown"), "method", where),
        "groups": int_attr(attrs["groups"], "groups", where) if "groups" in attrs else 0,
        "runtime_s": number_attr(get("runtime_s", 0.0), "runtime_s", where),
        "device": text_attr(get("device", "cpu"), "device", where),
        "voxel_size_mm": vector_attr(get("voxel_size_mm", [1.0] * 3), "voxel_size_mm", where),
        "config": dict_attr(get("config", None), "config", where),
        "timings": dict_attr(get("timings", None), "timings", where, values="number"),
    }
    for name in ("model", "source"):
        v = get(name, None)
        out[name] = None if v is None else dict_attr(v, name, where, values="text")
    return out
