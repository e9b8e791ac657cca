"""The only module that knows file formats: HDF5 raw scans, zarr results, NIfTI, checkpoints.

Every writer is atomic: it writes to a temporary name beside the target and renames at the end,
so an interrupted or failed write leaves nothing half-written and keeps whatever was there before.
Every reader validates what it reads and raises :class:`~spurig_core.errors.InputError` with one
line that names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import FispSequence, Reference, Result, Scan
from .errors import InputError
from .io_probe import (
    file_schema,
    open_nifti,
    result_iterations_shape,
    result_source,
    scan_maps,
    scan_voxel_size,
)
from .outputs import atomic_path, deferred_signals

__all__ = [
    "RAW_SCHEMA",
    "RESULT_SCHEMA",
    "atomic_path",
    "file_schema",
    "file_sha256",
    "load_checkpoint",
    "load_result",
    "load_scan",
    "open_nifti",
    "result_chunks",
    "result_iterations_shape",
    "result_source",
    "save_checkpoint",
    "save_result",
    "scan_maps",
    "scan_voxel_size",
    "write_nifti",
    "write_scan",
]

RAW_SCHEMA = "spurig-raw/1"
RESULT_SCHEMA = "spurig-result/1"

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------------------
# file helpers (atomic writes: spurig_core.outputs.atomic_path, re-exported here; probes for
# viewers: spurig_core.io_probe, re-exported here)
# ----------------------------------------------------------------------------------------------
def file_sha256(path: PathLike, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _require_file(path: PathLike, what: str, *, directory: bool = False) -> Path:
    """``path`` as a Path that exists, is readable and is a file (or a directory)."""
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise InputError(f"{what}: expected a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p}: no such file")
    if directory and not p.is_dir():
        raise InputError(f"{what} {p}: is a file, not a .zarr store directory")
    if not directory and p.is_dir():
        raise InputError(f"{what} {p}: is a directory, not a file")
    if not os.access(p, os.R_OK | (os.X_OK if directory else 0)):
        raise InputError(f"{what} {p}: permission denied (not readable)")
    return p


# ----------------------------------------------------------------------------------------------
# raw scans: HDF5, schema spurig-raw/1 (SPEC §3)
# ----------------------------------------------------------------------------------------------
def write_scan(scan: Scan, path: PathLike, *, compression: str | None = None) -> Path:
    """Write ``scan`` as an HDF5 file of schema ``spurig-raw/1`` (atomically).

    Parameters
    ----------
    scan : Scan
        The scan; its ``reference``, ``calibration``, ``coil_maps`` and ``b1`` are written when set.
    path : path-like
        Target ``.h5`` file.
    compression : str, optional
        HDF5 filter for the large datasets (e.g. ``"gzip"``); none by default.
    """
    import h5py

    def arr(t: torch.Tensor, dtype: Any) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))

    final = Path(path)
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        # h5py's string conversion runs in a Cython callback that prints an interrupt raised in
        # it and goes on (a SIGTERM just after the file appeared: a traceback on stderr), so the
        # signal is held for it and acted on right after
        with deferred_signals():
            f.attrs["schema"] = RAW_SCHEMA
        f.attrs["matrix"] = np.asarray(scan.matrix, dtype=np.int64)
        f.attrs["fov_mm"] = np.asarray(scan.fov_mm, dtype=np.float64)
        f.create_dataset("kspace", data=arr(scan.kspace, np.complex64), compression=compression)
        f.create_dataset(
            "trajectory", data=arr(scan.trajectory, np.float32), compression=compression
        )
        seq = f.create_dataset(
            "sequence/flip_angle_deg", data=np.asarray(scan.sequence.flip_angle_deg, np.float32)
        )
        for name in ("tr_ms", "te_ms", "ti_ms", "rest_s"):
            seq.attrs[name] = float(getattr(scan.sequence, name))
        if scan.calibration is not None:
            f.create_dataset("calibration", data=arr(scan.calibration, np.complex64))
        if scan.coil_maps is not None:
            f.create_dataset("coil_maps", data=arr(scan.coil_maps, np.complex64))
        if scan.b1 is not None:
            f.create_dataset("b1", data=arr(scan.b1, np.float32))
        if scan.reference is not None:
            ref = scan.reference
            f.create_dataset("reference/t1_ms", data=arr(ref.t1_ms, np.float32))
            f.create_dataset("reference/t2_ms", data=arr(ref.t2_ms, np.float32))
            f.create_dataset("reference/pd", data=arr(ref.pd, np.complex64))
            f.create_dataset("reference/tissue", data=arr(ref.tissue, np.uint8))
    return final


def load_scan(path: PathLike) -> Scan:
    """Read and validate a raw scan of schema ``spurig-raw/1`` (SPEC §3).

    Checks the schema version; every dataset's presence, dtype, rank and shape (consistent coils,
    groups, repetitions, samples and matrix); that every attribute and value lies in its physical
    range (:data:`spurig_core.io_fields.FIELDS`: sequence timings and flip angles, matrix, FOV,
    B1, reference T1/T2, tissue labels); that the trajectory lies in ``[-matrix/2, matrix/2)``;
    that nothing contains NaN or Inf or overflows float32; and, before reading each dataset, that
    its declared size fits in the available memory.

    Parameters
    ----------
    path : path-like
        An HDF5 file.

    Returns
    -------
    Scan

    Raises
    ------
    InputError
        With one line naming the file, the field and the problem.
    """
    import h5py

    p = _require_file(path, "scan")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(
            f"{p}: not a readable HDF5 file (truncated or wrong format): {exc}"
        ) from None
    try:
        with f:
            parts = _read_scan(f, p)
    except InputError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # h5py internals
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{p}: not a readable scan ({type(exc).__name__}: {first})") from None
    return Scan(**parts, path=p.resolve(), sha256=file_sha256(p))


def _read_scan(f: Any, p: Path) -> dict[str, Any]:
    """Return the :class:`Scan` fields of an open ``spurig-raw/1`` file (see :func:`load_scan`)."""
    from ._readers import h5_dataset, scan_header, scan_sequence_values
    from .io_fields import check_range

    w = str(p)
    matrix, fov = scan_header(f, w, RAW_SCHEMA)
    ksp = h5_dataset(f, "kspace", np.complex64, ("coils", "groups", "repetitions", "samples"), w)
    assert ksp is not None  # not optional
    coils, groups, tr, samples = ksp.shape
    traj = h5_dataset(f, "trajectory", np.float32, ("groups", "repetitions", "samples", ""), w)
    assert traj is not None
    if traj.shape != (groups, tr, samples, 3):
        raise InputError(
            f"{p}: 'trajectory' has shape {traj.shape}, expected {(groups, tr, samples, 3)} "
            f"to match 'kspace' {ksp.shape}"
        )
    half = np.asarray(matrix, dtype=np.float64) / 2
    lo, hi = traj.reshape(-1, 3).min(axis=0), traj.reshape(-1, 3).max(axis=0)
    if (lo < -half).any() or (hi >= half).any():
        raise InputError(
            f"{p}: 'trajectory' leaves [-matrix/2, matrix/2) = [{-half}, {half}): "
            f"min {lo}, max {hi}"
        )
    fa, timings = scan_sequence_values(f, w, tr)
    c3, m3 = ("calibration",) * 3, ("matrix",) * 3
    calib = h5_dataset(f, "calibration", np.complex64, ("coils", *c3), w, optional=True)
    if calib is not None and calib.shape[0] != coils:
        raise InputError(f"{p}: 'calibration' has {calib.shape[0]} coils, 'kspace' has {coils}")
    maps = h5_dataset(f, "coil_maps", np.complex64, ("coils", *m3), w, optional=True)
    if maps is not None and maps.shape != (coils, *matrix):
        raise InputError(f"{p}: 'coil_maps' has shape {maps.shape}, expected {(coils, *matrix)}")
    b1 = h5_dataset(f, "b1", np.float32, m3, w, optional=True)
    if b1 is not None:
        if b1.shape != matrix:
            raise InputError(f"{p}: 'b1' has shape {b1.shape}, expected {matrix}")
        check_range(b1, "b1", w)
    reference = None
    if "reference" in f:
        parts = {}
        for name, dtype in (
            ("t1_ms", np.float32),
            ("t2_ms", np.float32),
            ("pd", np.complex64),
            ("tissue", np.uint8),
        ):
            a = h5_dataset(f, f"reference/{name}", dtype, m3, w)
            assert a is not None
            if a.shape != matrix:
                raise InputError(f"{p}: 'reference/{name}' has shape {a.shape}, expected {matrix}")
            if name != "pd":
                check_range(a, f"reference/{name}", w)
            parts[name] = torch.from_numpy(a)
        reference = Reference(**parts)
    return {
        "kspace": torch.from_numpy(ksp),
        "trajectory": torch.from_numpy(traj),
        "sequence": FispSequence(fa, **timings),
        "matrix": matrix,
        "fov_mm": fov,
        "calibration": None if calib is None else torch.from_numpy(calib),
        "coil_maps": None if maps is None else torch.from_numpy(maps),
        "b1": None if b1 is None else torch.from_numpy(b1),
        "reference": reference,
    }


# ----------------------------------------------------------------------------------------------
# results: zarr, schema spurig-result/1 (SPEC §5)
# ----------------------------------------------------------------------------------------------
def _np(t: torch.Tensor, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))


#: Depth (z planes) of a result chunk: volumes are stored as axial slabs ``(x, y, 16)`` per
#: coefficient (and iteration), so that showing one axial slice reads 1/14 of a 220³ volume
#: instead of all of it; volumes of at most 16 planes stay one chunk.
SLAB_DEPTH = 16


def result_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape of a result array: 1 per leading index, axial slabs of :data:`SLAB_DEPTH`."""
    if len(shape) < 3:
        return tuple(shape)
    lead = (1,) * (len(shape) - 3)
    return (*lead, shape[-3], shape[-2], min(shape[-1], SLAB_DEPTH))


def contrast_limits(coefficients: np.ndarray, *, percentile: float = 99.5) -> list[float]:
    """Return the display range ``[0, p]`` of coefficient magnitudes.

    ``p`` is the percentile of the central axial plane of the first coefficient (what the viewer
    shows first).

    Parameters
    ----------
    coefficients : ndarray, shape (basis, x, y, z), complex
    """
    plane = np.abs(coefficients[0, :, :, coefficients.shape[-1] // 2]).astype(np.float64)
    hi = float(np.percentile(plane, percentile)) if plane.size else 0.0
    if not np.isfinite(hi) or hi <= 0:
        hi = float(np.abs(coefficients).max()) if coefficients.size else 0.0
    return [0.0, hi if np.isfinite(hi) and hi > 0 else 1.0]


def _write_array(group: Any, name: str, data: np.ndarray) -> None:
    chunks = result_chunks(tuple(data.shape))
    # Every chunk is stored, all-zero ones too, so that a deleted chunk can be told from a zero one.
    arr = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        config={"write_empty_chunks": True},
    )
    arr[...] = data


def save_result(result: Result, path: PathLike) -> Path:
    """Write ``result`` as a zarr group of schema ``spurig-result/1`` (atomically).

    Arrays: ``coefficients`` (basis, x, y, z) complex64, ``basis`` (tr, basis) complex64 and,
    when present, ``iterations`` (n, basis, x, y, z), ``t1_ms``/``t2_ms``/``pd`` (x, y, z)
    float32.  Attributes: ``schema``, ``method``, ``groups``, ``runtime_s``, ``device``,
    ``model``, ``source``, ``voxel_size_mm``, ``config``, ``timings`` and ``display``
    (``{"contrast_limits": {"coefficients": [0, p]}}``, :func:`contrast_limits`, so a viewer needs
    no read to set its range).  Volumes are chunked in axial slabs (:func:`result_chunks`).

    Raises
    ------
    InputError
        When ``path`` is not a path ending in ``.zarr`` or ``result`` is not a :class:`Result`.
    """
    import zarr

    from ._checks import check_result_target

    final = check_result_target(result, path)
    with atomic_path(final, directory=True) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        coeffs = _np(result.coefficients, np.complex64)
        _write_array(g, "coefficients", coeffs)
        _write_array(g, "basis", _np(result.basis, np.complex64))
        if result.iterations is not None:
            _write_array(g, "iterations", _np(result.iterations, np.complex64))
        for name in ("t1_ms", "t2_ms", "pd"):
            t = getattr(result, name)
            if t is not None:
                _write_array(g, name, _np(t, np.float32))
        g.attrs.update(
            {
                "schema": RESULT_SCHEMA,
                "method": result.method,
                "groups": int(result.groups),
                "runtime_s": float(result.runtime_s),
                "device": result.device,
                "model": result.model,
                "source": result.source,
                "voxel_size_mm": [float(v) for v in result.voxel_size_mm],
                "config": json.loads(json.dumps(result.config, default=str)),
                "timings": {k: float(v) for k, v in result.timings.items()},
                "display": {"contrast_limits": {"coefficients": contrast_limits(coeffs)}},
            }
        )
    return final


def load_result(path: PathLike, *, lazy: bool = False) -> Result:
    """Read and validate a zarr result store of schema ``spurig-result/1`` (SPEC §5).

    Checks the schema, each array's dtype, rank and shape, each attribute's type and range
    (:data:`spurig_core.io_fields.FIELDS`), that every chunk is stored (a deleted chunk would read
    as zeros) and decodes, and that values are finite and do not overflow float32.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` directory.
    lazy : bool
        Skip reading ``iterations`` (the largest array) when ``True``.

    Raises
    ------
    InputError
        With one line naming the store, the array or attribute and the problem.
    """
    from ._readers import open_result_group, result_attrs, zarr_array
    from .io_fields import check_range

    p = _require_file(path, "result", directory=True)
    w = str(p)
    g, raw = open_result_group(p, RESULT_SCHEMA)
    attrs = result_attrs(raw, w)
    m3 = ("result_matrix",) * 3
    coeffs = zarr_array(g, "coefficients", np.complex64, ("basis", *m3), w)
    basis = zarr_array(g, "basis", np.complex64, ("repetitions", "basis"), w)
    if basis.shape[1] != coeffs.shape[0]:
        raise InputError(
            f"{p}: 'basis' has {basis.shape[1]} columns but 'coefficients' has "
            f"{coeffs.shape[0]} maps"
        )
    maps = {}
    for name in ("t1_ms", "t2_ms", "pd"):
        t = zarr_array(g, name, np.float32, m3, w, optional=True)
        if t is not None:
            if t.shape != coeffs.shape[1:]:
                raise InputError(f"{p}: '{name}' has shape {t.shape}, expected {coeffs.shape[1:]}")
            check_range(t, name, w)
            t = torch.from_numpy(t)
        maps[name] = t
    iterations = None
    if not lazy:
        axes = ("iterations", "basis", *m3)
        its = zarr_array(g, "iterations", np.complex64, axes, w, optional=True)
        if its is not None:
            if its.shape[1:] != coeffs.shape:
                raise InputError(
                    f"{p}: 'iterations' has shape {its.shape}, expected (n, {coeffs.shape})"
                )
            iterations = torch.from_numpy(its)
    return Result(
        coefficients=torch.from_numpy(coeffs),
        basis=torch.from_numpy(basis),
        iterations=iterations,
        **attrs,
        **maps,
    )


# ----------------------------------------------------------------------------------------------
# NIfTI
# ----------------------------------------------------------------------------------------------
def nifti_affine(voxel_size_mm: tuple[float, float, float], shape: tuple[int, ...]) -> np.ndarray:
    """RAS affine of a volume whose voxel ``r`` sits at ``(r - shape//2) * voxel_size`` mm."""
    aff = np.diag([*voxel_size_mm, 1.0]).astype(np.float64)
    aff[:3, 3] = [-(n // 2) * v for n, v in zip(shape[:3], voxel_size_mm, strict=True)]
    return aff


def write_nifti(
    data: np.ndarray, path: PathLike, voxel_size_mm: tuple[float, float, float]
) -> Path:
    """Write a 3D (or 4D, channels last) real volume as NIfTI-1 (affine: :func:`nifti_affine`)."""
    import nibabel as nib

    arr = np.asarray(data)
    if np.iscomplexobj(arr):
        raise InputError(f"{path}: NIfTI export needs real data (take the magnitude first)")
    img = nib.Nifti1Image(arr.astype(np.float32), nifti_affine(voxel_size_mm, arr.shape))
    img.header.set_xyzt_units("mm")
    final = Path(path)
    suffix = ".nii.gz" if final.name.endswith(".nii.gz") else ".nii"
    with atomic_path(final) as tmp:
        tmp_named = tmp.with_name(tmp.name + suffix)
        try:
            nib.save(img, str(tmp_named))
            os.replace(tmp_named, tmp)
        finally:
            if tmp_named.exists():
                tmp_named.unlink()
    return final


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(state: dict[str, Any], path: PathLike) -> Path:
    """``torch.save`` a checkpoint dictionary of plain data atomically.

    Raises
    ------
    TypeError
        When ``state`` holds something :func:`load_checkpoint` would refuse (a numpy array, a
        dataclass, …): convert it to dicts, lists, numbers, strings or tensors first.
    """
    from ._checkpoint import check_plain

    check_plain(state)
    final = Path(path)
    with atomic_path(final) as tmp:
        torch.save(state, tmp)
    return final


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (CPU tensors), never running code.

    Every model, training and data file goes through here.  It is read with
    ``torch.load(weights_only=True)`` (no fallback): a pickle that calls or builds anything but
    tensors and plain containers is refused, and so is NaN or Inf in any floating tensor.

    Raises
    ------
    InputError
        When the file is missing, truncated, carries Python objects (code), holds NaN or Inf, or is
        not a spurig checkpoint; one line naming the file.
    """
    import pickle
    import warnings

    from ._checkpoint import non_finite, refusal_reason

    p = _require_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a broken file
        reason = None
        if isinstance(exc, pickle.UnpicklingError):
            with open(p, "rb") as f:
                reason = refusal_reason(str(exc), f.read(2))
        if reason is not None:
            raise InputError(
                f"{p}: refused: the file contains Python objects other than tensors and plain "
                f"data (weights_only load failed: {reason}); spurig never runs code from a model "
                "file"
            ) from None
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{p}: not a readable checkpoint (truncated or wrong format): {first}"
        ) from None
    if not isinstance(state, dict) or "kind" not in state:
        raise InputError(f"{p}: not a spurig checkpoint (no 'kind' entry)")
    bad = non_finite(state)
    if bad is not None:
        raise InputError(f"{p}: refused: tensor {bad!r} contains NaN or Inf")
    return state
