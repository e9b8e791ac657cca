"""The only module that knows file formats: HDF5 raw scans, zarr results, NIfTI, checkpoints.

Every writer is atomic: it writes to a temporary name beside the target and renames at the end,
so an interrupted or failed write leaves nothing half-written and keeps whatever was there before.
Every reader validates what it reads and raises :class:`~spurig_core.errors.InputError` with one
line that names the file and the problem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Reference, Result, Scan, Sequence
from .errors import InputError

__all__ = [
    "RAW_SCHEMA",
    "RESULT_SCHEMA",
    "atomic_path",
    "file_sha256",
    "load_checkpoint",
    "load_result",
    "load_scan",
    "save_checkpoint",
    "save_result",
    "write_nifti",
    "write_scan",
]

RAW_SCHEMA = "spurig-raw/1"
RESULT_SCHEMA = "spurig-result/1"

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On an exception the temporary file or directory is removed and ``path`` is left untouched.

    Parameters
    ----------
    path : path-like
        The final file (or directory, with ``directory=True``).
    directory : bool
        Whether the target is a directory (e.g. a zarr store).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    if directory:
        tmp.unlink()
    try:
        yield tmp
        _set_default_mode(tmp)
        if directory:
            backup = None
            if final.exists():
                backup = final.with_name(f".{final.name}.old-{os.getpid()}")
                os.replace(final, backup)
            os.replace(tmp, final)
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def _set_default_mode(path: Path) -> None:
    """Give a finished temporary file the mode a plain ``open`` would (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    if path.is_file():
        path.chmod(0o666 & ~umask)
    elif path.is_dir():
        path.chmod(0o777 & ~umask)


def file_sha256(path: PathLike, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _require_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p}: no such file")
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


def _dataset(
    f: Any,
    name: str,
    dtype: Any,
    ndim: int,
    path: Path,
    *,
    optional: bool = False,
    finite: bool = True,
) -> np.ndarray | None:
    import h5py

    if name not in f:
        if optional:
            return None
        raise InputError(f"{path}: missing dataset '{name}' (schema {RAW_SCHEMA})")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{path}: '{name}' is not a dataset")
    if ds.dtype != np.dtype(dtype):
        raise InputError(
            f"{path}: dataset '{name}' has dtype {ds.dtype}, expected {np.dtype(dtype)}"
        )
    if ds.ndim != ndim:
        raise InputError(
            f"{path}: dataset '{name}' has {ds.ndim} dimensions {ds.shape}, expected {ndim}"
        )
    try:
        data = ds[()]
    except (OSError, RuntimeError) as exc:
        raise InputError(
            f"{path}: dataset '{name}' cannot be read (truncated file?): {exc}"
        ) from None
    if finite and np.issubdtype(data.dtype, np.inexact) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{path}: dataset '{name}' contains {bad} NaN or Inf values")
    return data


def load_scan(path: PathLike) -> Scan:
    """Read and validate a raw scan of schema ``spurig-raw/1`` (SPEC §3).

    Checks the schema version, every dataset's presence, dtype and shape (consistent coils,
    groups, repetitions, samples and matrix), that the trajectory lies in
    ``[-matrix/2, matrix/2)``, and that nothing contains NaN or Inf.

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
        With one line naming the file and the problem.
    """
    import h5py

    p = _require_file(path, "scan")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(
            f"{p}: not a readable HDF5 file (truncated or wrong format): {exc}"
        ) from None
    with f:
        schema = f.attrs.get("schema")
        if isinstance(schema, bytes):
            schema = schema.decode()
        if schema is None:
            raise InputError(f"{p}: no 'schema' attribute; expected '{RAW_SCHEMA}'")
        if schema != RAW_SCHEMA:
            raise InputError(f"{p}: unsupported schema {schema!r}; expected '{RAW_SCHEMA}'")
        for name in ("matrix", "fov_mm"):
            if name not in f.attrs:
                raise InputError(f"{p}: missing root attribute '{name}'")
        matrix = tuple(int(v) for v in np.asarray(f.attrs["matrix"]).reshape(-1))
        fov = tuple(float(v) for v in np.asarray(f.attrs["fov_mm"]).reshape(-1))
        if len(matrix) != 3 or min(matrix) < 1:
            raise InputError(f"{p}: attribute 'matrix' must be 3 positive ints, got {matrix}")
        if len(fov) != 3 or not all(np.isfinite(fov)) or min(fov) <= 0:
            raise InputError(f"{p}: attribute 'fov_mm' must be 3 positive numbers, got {fov}")

        ksp = _dataset(f, "kspace", np.complex64, 4, p)
        traj = _dataset(f, "trajectory", np.float32, 4, p)
        fa = _dataset(f, "sequence/flip_angle_deg", np.float32, 1, p)
        assert ksp is not None and traj is not None and fa is not None
        coils, groups, tr, samples = ksp.shape
        if traj.shape != (groups, tr, samples, 3):
            raise InputError(
                f"{p}: 'trajectory' has shape {traj.shape}, expected {(groups, tr, samples, 3)} "
                f"to match 'kspace' {ksp.shape}"
            )
        if fa.shape != (tr,):
            raise InputError(
                f"{p}: 'sequence/flip_angle_deg' has shape {fa.shape}, expected ({tr},)"
            )
        half = np.asarray(matrix, dtype=np.float64) / 2
        lo = traj.reshape(-1, 3).min(axis=0) if traj.size else np.zeros(3)
        hi = traj.reshape(-1, 3).max(axis=0) if traj.size else np.zeros(3)
        if (lo < -half).any() or (hi >= half).any():
            raise InputError(
                f"{p}: 'trajectory' leaves [-matrix/2, matrix/2) = [{-half}, {half}): "
                f"min {lo}, max {hi}"
            )
        seq_attrs = f["sequence/flip_angle_deg"].attrs
        for name in ("tr_ms", "te_ms", "ti_ms", "rest_s"):
            if name not in seq_attrs:
                raise InputError(f"{p}: 'sequence/flip_angle_deg' lacks attribute '{name}'")
            if not np.isfinite(float(seq_attrs[name])):
                raise InputError(f"{p}: sequence attribute '{name}' is not finite")
        seq = Sequence(
            fa,
            tr_ms=float(seq_attrs["tr_ms"]),
            te_ms=float(seq_attrs["te_ms"]),
            ti_ms=float(seq_attrs["ti_ms"]),
            rest_s=float(seq_attrs["rest_s"]),
        )

        calib = _dataset(f, "calibration", np.complex64, 4, p, optional=True)
        if calib is not None and calib.shape[0] != coils:
            raise InputError(f"{p}: 'calibration' has {calib.shape[0]} coils, 'kspace' has {coils}")
        maps = _dataset(f, "coil_maps", np.complex64, 4, p, optional=True)
        if maps is not None and maps.shape != (coils, *matrix):
            raise InputError(
                f"{p}: 'coil_maps' has shape {maps.shape}, expected {(coils, *matrix)}"
            )
        b1 = _dataset(f, "b1", np.float32, 3, p, optional=True)
        if b1 is not None and b1.shape != matrix:
            raise InputError(f"{p}: 'b1' has shape {b1.shape}, expected {matrix}")

        reference = None
        if "reference" in f:
            parts = {}
            for name, dtype in (
                ("t1_ms", np.float32),
                ("t2_ms", np.float32),
                ("pd", np.complex64),
                ("tissue", np.uint8),
            ):
                a = _dataset(f, f"reference/{name}", dtype, 3, p)
                assert a is not None
                if a.shape != matrix:
                    raise InputError(
                        f"{p}: 'reference/{name}' has shape {a.shape}, expected {matrix}"
                    )
                parts[name] = torch.from_numpy(a)
            if int(parts["tissue"].max()) > 4:
                raise InputError(f"{p}: 'reference/tissue' has labels above 4")
            reference = Reference(**parts)

    return Scan(
        kspace=torch.from_numpy(ksp),
        trajectory=torch.from_numpy(traj),
        sequence=seq,
        matrix=(matrix[0], matrix[1], matrix[2]),
        fov_mm=(fov[0], fov[1], fov[2]),
        calibration=torch.from_numpy(calib) if calib is not None else None,
        coil_maps=torch.from_numpy(maps) if maps is not None else None,
        b1=torch.from_numpy(b1) if b1 is not None else None,
        reference=reference,
        path=p.resolve(),
        sha256=file_sha256(p),
    )


# ----------------------------------------------------------------------------------------------
# results: zarr, schema spurig-result/1 (SPEC §5)
# ----------------------------------------------------------------------------------------------
def _np(t: torch.Tensor, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))


def _write_array(group: Any, name: str, data: np.ndarray) -> None:
    # One chunk per coefficient (and per iteration) volume: napari reads a plane at a time lazily.
    chunks = (*([1] * (data.ndim - 3)), *data.shape[-3:]) if data.ndim > 3 else data.shape
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
    arr[...] = data


def save_result(result: Result, path: PathLike) -> Path:
    """Write ``result`` as a zarr group of schema ``spurig-result/1`` (atomically).

    Arrays: ``coefficients`` (basis, x, y, z) complex64, ``basis`` (tr, basis) complex64 and,
    when present, ``iterations`` (n, basis, x, y, z), ``t1_ms``/``t2_ms``/``pd`` (x, y, z)
    float32.  Attributes: ``schema``, ``method``, ``groups``, ``runtime_s``, ``device``,
    ``model``, ``source``, ``voxel_size_mm``, ``config`` and ``timings``.
    """
    import zarr

    final = Path(path)
    with atomic_path(final, directory=True) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        _write_array(g, "coefficients", _np(result.coefficients, np.complex64))
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
            }
        )
    return final


def load_result(path: PathLike, *, lazy: bool = False) -> Result:
    """Read a zarr result store of schema ``spurig-result/1``.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` directory.
    lazy : bool
        Skip reading ``iterations`` (the largest array) when ``True``.

    Raises
    ------
    InputError
        When the store is missing, has another schema, or its arrays have wrong shapes or dtypes.
    """
    import zarr

    p = _require_file(path, "result")
    g: Any
    try:
        g = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store
        raise InputError(f"{p}: not a readable zarr result store: {exc}") from None
    attrs: dict[str, Any] = dict(g.attrs)
    if attrs.get("schema") != RESULT_SCHEMA:
        raise InputError(
            f"{p}: unsupported schema {attrs.get('schema')!r}; expected '{RESULT_SCHEMA}'"
        )

    def read(name: str, dtype: Any, ndim: int, optional: bool = False) -> torch.Tensor | None:
        if name not in g:
            if optional:
                return None
            raise InputError(f"{p}: missing array '{name}' (schema {RESULT_SCHEMA})")
        a = g[name]
        if np.dtype(a.dtype) != np.dtype(dtype) or a.ndim != ndim:
            raise InputError(
                f"{p}: array '{name}' is {a.dtype} {a.shape}, expected {np.dtype(dtype)} with "
                f"{ndim} dimensions"
            )
        data = np.asarray(a[...])
        if not np.isfinite(data).all():
            raise InputError(f"{p}: array '{name}' contains NaN or Inf values")
        return torch.from_numpy(data)

    coeffs = read("coefficients", np.complex64, 4)
    basis = read("basis", np.complex64, 2)
    assert coeffs is not None and basis is not None
    if basis.shape[1] != coeffs.shape[0]:
        raise InputError(
            f"{p}: 'basis' has {basis.shape[1]} columns but 'coefficients' has "
            f"{coeffs.shape[0]} maps"
        )
    matrix = tuple(coeffs.shape[1:])
    maps = {}
    for name in ("t1_ms", "t2_ms", "pd"):
        t = read(name, np.float32, 3, optional=True)
        if t is not None and tuple(t.shape) != matrix:
            raise InputError(f"{p}: '{name}' has shape {tuple(t.shape)}, expected {matrix}")
        maps[name] = t
    iterations = None if lazy else read("iterations", np.complex64, 5, optional=True)
    return Result(
        coefficients=coeffs,
        basis=basis,
        method=str(attrs.get("method", "unknown")),
        groups=int(attrs.get("groups", 0)),
        runtime_s=float(attrs.get("runtime_s", 0.0)),
        device=str(attrs.get("device", "cpu")),
        voxel_size_mm=tuple(attrs.get("voxel_size_mm", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
        model=attrs.get("model"),
        source=attrs.get("source"),
        config=dict(attrs.get("config") or {}),
        iterations=iterations,
        timings=dict(attrs.get("timings") or {}),
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
    """``torch.save`` a checkpoint dictionary atomically."""
    final = Path(path)
    with atomic_path(final) as tmp:
        torch.save(state, tmp)
    return final


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (CPU tensors).

    Raises
    ------
    InputError
        When the file is missing, truncated or not a spurig checkpoint.
    """
    p = _require_file(path, "checkpoint")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types on a broken file
        raise InputError(
            f"{p}: not a readable checkpoint (truncated or wrong format): {exc}"
        ) from None
    if not isinstance(state, dict) or "kind" not in state:
        raise InputError(f"{p}: not a spurig checkpoint (no 'kind' entry)")
    return state
