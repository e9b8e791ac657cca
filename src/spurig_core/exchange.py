"""Scanner data in and clinical maps out: ``import-ismrmrd``, ``export-ismrmrd``, ``export-dicom``.

Called by :mod:`spurig_core.pipeline` (one-line wrappers) and so by the CLI and the napari plugin.
File formats live in :mod:`spurig_core.io_ismrmrd` and :mod:`spurig_core.io_dicom`; this module
checks the options, turns what an ISMRMRD file holds into a ``spurig-raw/1`` scan (units, sequence,
noise pre-whitening, calibration, coil compression) and reports what it chose.

What must be known about the sequence (SPEC §4), from the ISMRMRD header or a JSON sidecar
(``--sequence SEQ.json``, whose values win; keys as in
:meth:`spurig_core.data.FispSequence.to_dict`):

- ``flip_angle_deg``: the flip-angle train, one value in degrees per repetition of a group
  (header: ``sequenceParameters/flipAngle_deg`` with exactly that many values);
- ``tr_ms``, ``te_ms``, ``ti_ms``: repetition time, echo time, inversion delay in ms (header:
  ``sequenceParameters/TR``, ``TE``, ``TI``; one value, or several equal ones);
- ``rest_s``: the free relaxation after each group in s (header: a ``userParameterDouble`` named
  ``rest_s``).

Noise pre-whitening uses the covariance of the noise-measurement samples as they are (no
receiver-bandwidth or dwell-time correction: it changes only the overall scale, which T1 and T2 do
not depend on).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, NotAvailableError
from .outputs import check_output
from .progress import Callback, emit

__all__ = ["ImportReport", "export_dicom", "export_ismrmrd", "import_ismrmrd", "parse_traj_scale"]

PathLike = str | os.PathLike[str]

_SEQUENCE_KEYS = {
    "flip_angle_deg": (
        "the flip-angle train, degrees, one per repetition",
        "sequenceParameters/flipAngle_deg",
    ),
    "tr_ms": ("repetition time, ms", "sequenceParameters/TR"),
    "te_ms": ("echo time, ms", "sequenceParameters/TE"),
    "ti_ms": ("inversion delay, ms", "sequenceParameters/TI"),
    "rest_s": ("free relaxation after each group, s", "userParameterDouble 'rest_s'"),
}
_EXAMPLE = {"tr_ms": 12.5, "te_ms": 1.7, "ti_ms": 20.0, "rest_s": 1.2}

#: Largest edge of the calibration cube gridded from non-Cartesian data.
GRIDDED_CALIBRATION = 24


def _need(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise NotAvailableError(
            f"the {module!r} package is not installed; install it with "
            'pip install -c constraints.txt -e ".[scanner]"'
        )


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_ismrmrd` read and chose (printed by ``spurig import-ismrmrd``)."""

    path: Path
    shape: tuple[int, int, int, int]
    coils_in: int
    matrix: tuple[int, int, int]
    fov_mm: tuple[float, float, float]
    mapping: dict[str, str]
    traj_scale: tuple[float, float, float]
    calibration: str
    noise: str
    sequence: dict[str, str]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        """Human-readable lines, one per decision."""
        c, g, t, s = self.shape
        coils = (
            f"{c} coils" if c == self.coils_in else f"{c} virtual coils (SVD of {self.coils_in})"
        )
        src = ", ".join(f"{k} from {v}" for k, v in self.sequence.items())
        return [
            f"wrote {self.path}: {g} groups x {t} repetitions x {s} samples, {coils}, "
            f"matrix {self.matrix}, FOV {self.fov_mm} mm",
            f"mapping: group = {self.mapping['group']}, tr = {self.mapping['tr']}; "
            f"trajectory x {self.traj_scale} -> cycles/FOV",
            f"calibration: {self.calibration}",
            f"noise: {self.noise}",
            f"sequence: {src}",
            *self.notes,
        ]


# ----------------------------------------------------------------------------------------------
# option checks (before any work)
# ----------------------------------------------------------------------------------------------
def parse_traj_scale(value: Any) -> tuple[float, float, float] | None:
    """``--traj-scale``: one positive number or three (``"S"``, ``"Sx,Sy,Sz"``, float, sequence)."""
    if value is None:
        return None
    parts: list[Any]
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",")]
    elif isinstance(value, int | float):
        parts = [value]
    else:
        parts = list(value)
    try:
        nums = [float(v) for v in parts]
    except (TypeError, ValueError):
        nums = []
    if len(nums) not in (1, 3) or not all(math.isfinite(v) and v > 0 for v in nums):
        raise InputError(
            f"--traj-scale {value!r}: expected one positive number or three (Sx,Sy,Sz), the "
            "factor from the file's trajectory units to cycles/FOV"
        )
    return (nums[0],) * 3 if len(nums) == 1 else (nums[0], nums[1], nums[2])


def _read_sidecar(path: PathLike) -> dict[str, Any]:
    from .io import _require_file

    p = _require_file(path, "--sequence")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--sequence {p}: not a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(
            f"--sequence {p}: expected a JSON object with keys {', '.join(_SEQUENCE_KEYS)}"
        )
    unknown = sorted(set(data) - set(_SEQUENCE_KEYS))
    if unknown:
        raise InputError(
            f"--sequence {p}: unknown key {unknown[0]!r}; allowed: {', '.join(_SEQUENCE_KEYS)}"
        )
    for key, value in data.items():
        ok = (
            isinstance(value, list)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            if key == "flip_angle_deg"
            else isinstance(value, int | float) and not isinstance(value, bool)
        )
        if not ok:
            kind = "a list of numbers" if key == "flip_angle_deg" else "a number"
            raise InputError(f"--sequence {p}: {key!r} = {value!r:.40} is not {kind}")
    return data


# ----------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------
def _sequence(
    header: dict[str, Any], sidecar: dict[str, Any], n_tr: int, raw: Path, side: Path | None
) -> tuple[Any, dict[str, str]]:
    """Return the :class:`~spurig_core.data.FispSequence` of sidecar values, else header values."""
    from .data import FispSequence

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (what, where) in _SEQUENCE_KEYS.items():
        if key in sidecar:
            values[key], sources[key] = sidecar[key], f"{side}"
            continue
        found: Any = header.get(key)  # a list of numbers (rest_s: a number)
        if key == "flip_angle_deg":
            ok = found is not None and len(found) == n_tr
            why = (
                ""
                if found is None
                else f" (it has {len(found)} values, the data {n_tr} repetitions)"
            )
        elif key == "rest_s":
            ok, why = found is not None, ""
        else:
            ok = bool(found) and max(found) - min(found) <= 1e-6 * max(abs(max(found)), 1.0)
            why = "" if not found else f" (it varies: {found[:4]}; spurig models a constant one)"
        if not ok:
            example = "[10.0, 10.5, ...]" if key == "flip_angle_deg" else _EXAMPLE[key]
            raise InputError(
                f"{raw}: sequence parameter {key!r} ({what}) is missing from the ISMRMRD header "
                f'({where}){why}; pass it with --sequence SEQ.json, e.g. {{"{key}": {example}}}'
            )
        values[key] = found if key in ("flip_angle_deg", "rest_s") else found[0]
        sources[key] = "header"
    fa = np.asarray(values.pop("flip_angle_deg"), dtype=np.float32)
    if fa.shape != (n_tr,):
        raise InputError(
            f"--sequence {side}: 'flip_angle_deg' has {fa.size} values; the data have {n_tr} "
            "repetitions per group"
        )
    where = f"{side}" if side is not None else f"{raw}"
    try:
        return FispSequence(fa, **{k: float(v) for k, v in values.items()}), sources
    except InputError as exc:
        raise InputError(f"{where}: {str(exc).removeprefix('sequence: ')}") from None


def _cycles_per_fov(
    traj: np.ndarray,
    scale: tuple[float, float, float] | None,
    matrix: tuple[int, int, int],
    raw: Path,
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Return the trajectory in cycles/FOV in ``[-matrix/2, matrix/2)`` (see io_ismrmrd's notes)."""
    s = (1.0, 1.0, 1.0) if scale is None else scale
    m = np.asarray(matrix, dtype=np.float64)
    k = traj.astype(np.float64) * np.asarray(s)
    half = m / 2
    edge = (k >= half) & (k <= half + 1e-4 * m)  # +matrix/2 is -matrix/2 of the periodic grid
    k = np.where(edge, k - m, k)
    peak = np.abs(k).reshape(-1, 3).max(axis=0)
    hint = (
        f"normalised units [-0.5, 0.5) need --traj-scale {','.join(str(int(v)) for v in m)}, "
        f"radians [-pi, pi) need {','.join(f'{v / (2 * math.pi):.6g}' for v in m)}"
    )
    if not np.isfinite(k).all():
        raise InputError(f"{raw}: the trajectory contains NaN or Inf")
    if (k < -half).any() or (k >= half).any():
        raise InputError(
            f"{raw}: the trajectory x {s} reaches |k| = {tuple(round(float(v), 3) for v in peak)} "
            f"cycles/FOV, outside [-matrix/2, matrix/2) for matrix {matrix}; {hint}"
        )
    if scale is None and (peak / half).max() < 0.5:
        raise InputError(
            f"{raw}: the trajectory reaches only |k| = {tuple(round(float(v), 3) for v in peak)} "
            f"of the grid's +-{tuple(float(v) for v in half)} cycles/FOV, which looks like other "
            f"units; {hint} (give --traj-scale 1 if it is in cycles/FOV)"
        )
    return k.astype(np.float32), s


def _apply(mat: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mat`` applied along the coil axis (first) of ``x``."""
    return np.tensordot(mat, x, axes=(1, 0)).astype(np.complex64)


def _gridded_calibration(
    kspace: np.ndarray, traj: np.ndarray, matrix: tuple[int, int, int], raw: Path
) -> tuple[np.ndarray, int]:
    """Return a Cartesian calibration cube from the centre of non-Cartesian data (cell averages).

    Every sample within ±1/2 cycle/FOV of an integer frequency is averaged into that point, over
    all groups and repetitions.  This is the same linear gridding for every coil, so the coil
    relations that ESPIRiT and iGROG learn from the cube are kept (the time-averaged image and
    the cell's apodisation are common to all coils).  The cube is the largest (≤ 24³, ≤ matrix)
    in which every point has samples.
    """
    k = np.rint(traj.reshape(-1, 3)).astype(np.int64)
    coils = kspace.shape[0]
    flat_data = kspace.reshape(coils, -1)
    for n in range(min(GRIDDED_CALIBRATION, *matrix), 3, -1):
        idx = k + n // 2
        inside = ((idx >= 0) & (idx < n)).all(axis=1)
        cell = np.ravel_multi_index(idx[inside].T, (n, n, n))
        hits = np.bincount(cell, minlength=n**3)
        if (hits > 0).all():
            break
    else:
        raise InputError(
            f"{raw}: no calibration acquisitions and the centre of k-space is too sparsely sampled "
            "to grid a 4^3 calibration cube from the imaging data"
        )
    cube = np.empty((coils, n**3), dtype=np.complex128)
    data = flat_data[:, inside]
    for c in range(coils):
        cube[c] = np.bincount(cell, weights=data[c].real, minlength=n**3) + 1j * np.bincount(
            cell, weights=data[c].imag, minlength=n**3
        )
    return (cube / hits).reshape(coils, n, n, n).astype(np.complex64), n


def _condition(
    raw: Any, traj: np.ndarray, coils: int | None, p: Path
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Pre-whitened, calibrated, compressed k-space and calibration, and what was done."""
    from .operators.coil_maps import compression_matrix, whitening_matrix

    ksp, cal = raw.kspace, raw.calibration
    n_in = ksp.shape[0]
    noise = "no noise-measurement acquisitions: data not pre-whitened"
    if raw.noise is not None:
        w = whitening_matrix(raw.noise)
        ksp = _apply(w, ksp)
        cal = None if cal is None else _apply(w, cal)
        noise = f"pre-whitened with the covariance of {raw.noise.shape[1]} noise samples"
    if cal is not None:
        size = "x".join(map(str, cal.shape[1:]))
        how = f"{size} Cartesian points from the parallel-calibration acquisitions"
    else:
        cal, n = _gridded_calibration(ksp, traj, raw.matrix, p)
        how = (
            f"{n}x{n}x{n} points gridded from the centre of the non-Cartesian data "
            "(no calibration acquisitions)"
        )
    if coils is not None and coils < n_in:
        a = compression_matrix(cal.reshape(n_in, -1), coils)
        ksp, cal = _apply(a, ksp), _apply(a, cal)
    return ksp, cal, noise, how


def import_ismrmrd(
    raw_path: PathLike,
    out_path: PathLike,
    *,
    mapping: str | dict[str, str] | None = None,
    traj_scale: Any = None,
    sequence: PathLike | None = None,
    coils: int | None = None,
    overwrite: bool = False,
    callback: Callback | None = None,
) -> ImportReport:
    """``spurig import-ismrmrd``: an ISMRMRD raw file to a ``spurig-raw/1`` scan.

    Parameters
    ----------
    raw_path : path-like
        The ISMRMRD file (layout and default counter mapping: :mod:`spurig_core.io_ismrmrd`).
    out_path : path-like
        The scan to write (atomically); ``spurig recon`` takes it as is.
    mapping : str or dict, optional
        ``"group=COUNTER,tr=COUNTER"`` (``--map``).
    traj_scale : float or 3 floats or str, optional
        Factor from the file's trajectory units to cycles/FOV (``--traj-scale``; default 1).
    sequence : path-like, optional
        JSON sidecar with sequence values (module doc); they win over the header's.
    coils : int, optional
        SVD-compress to this many virtual coils (``--coils``).
    overwrite : bool
        Replace an existing path of another kind at ``out_path``.

    Returns
    -------
    ImportReport

    Raises
    ------
    InputError
        One line, nothing written: bad options, not ISMRMRD, no trajectory, inconsistent counts,
        a missing sequence parameter (named, with how to pass it), a trajectory outside the grid.
    """
    import torch

    from .data import Scan
    from .io_fields import check_magnitude
    from .io_ismrmrd import parse_map, read_ismrmrd
    from .io_ismrmrd_out import write_imported_scan

    _need("ismrmrd")
    check_output(out_path, kind="h5", inputs=(raw_path, sequence), overwrite=overwrite)
    m = mapping if isinstance(mapping, dict) else parse_map(mapping)
    scale = parse_traj_scale(traj_scale)
    if coils is not None and (isinstance(coils, bool) or not isinstance(coils, int) or coils < 1):
        raise InputError(f"--coils {coils!r}: expected a positive number of virtual coils")
    side = _read_sidecar(sequence) if sequence is not None else {}
    emit(callback, "import", 0, 3, "reading ISMRMRD")
    raw = read_ismrmrd(raw_path, mapping=m)
    p = Path(raw_path)
    seq, sources = _sequence(
        raw.sequence, side, raw.kspace.shape[2], p, None if sequence is None else Path(sequence)
    )
    traj, used = _cycles_per_fov(raw.trajectory, scale, raw.matrix, p)
    n_in = raw.kspace.shape[0]
    if coils is not None and coils > n_in:
        raise InputError(f"--coils {coils}: the file has {n_in} channels (choose 1 to {n_in})")
    emit(callback, "import", 1, 3, "noise, calibration, coils")
    ksp, cal, noise, how = _condition(raw, traj, coils, p)
    check_magnitude(ksp, "kspace", str(p))
    scan = Scan(
        kspace=torch.from_numpy(np.ascontiguousarray(ksp)),
        trajectory=torch.from_numpy(traj),
        sequence=seq,
        matrix=raw.matrix,
        fov_mm=raw.fov_mm,
        calibration=torch.from_numpy(np.ascontiguousarray(cal)),
    )
    emit(callback, "import", 2, 3, "writing")
    out = write_imported_scan(scan, out_path, raw.header_xml)
    emit(callback, "import", 3, 3)
    return ImportReport(
        path=out,
        shape=tuple(ksp.shape),  # type: ignore[arg-type]
        coils_in=n_in,
        matrix=raw.matrix,
        fov_mm=raw.fov_mm,
        mapping=m,
        traj_scale=used,
        calibration=how,
        noise=noise,
        sequence=sources,
        notes=tuple(raw.notes),
    )


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
def export_ismrmrd(scan_path: PathLike, out_path: PathLike, *, overwrite: bool = False) -> Path:
    """``spurig export-ismrmrd``: a ``spurig-raw/1`` scan as an ISMRMRD file (atomically).

    The layout is that of :mod:`spurig_core.io_ismrmrd`; an imported scan keeps the subject, study
    and measurement sections of its original header.
    """
    from .io import load_scan
    from .io_ismrmrd_out import scan_header_xml, write_ismrmrd

    _need("ismrmrd")
    check_output(out_path, kind="h5", inputs=(scan_path,), overwrite=overwrite)
    scan = load_scan(scan_path)
    return write_ismrmrd(scan, out_path, header_xml=scan_header_xml(scan_path))


def _identifiers(
    result: Any, scan: PathLike | None, options: dict[str, str | None]
) -> dict[str, str]:
    """Patient and study identifiers: options, else the scan's ISMRMRD header, else defaults."""
    from .io_ismrmrd_out import scan_header_xml, subject_info

    source = scan
    if source is None and result.source and result.source.get("path"):
        candidate = Path(str(result.source["path"]))
        source = candidate if candidate.is_file() else None
    ids = subject_info(scan_header_xml(source)) if source is not None else {}
    if "PatientID" not in ids and result.source and result.source.get("sha256"):
        ids["PatientID"] = f"spurig-{str(result.source['sha256'])[:12]}"
    if not _is_uid(ids.get("StudyInstanceUID", "1")):
        del ids["StudyInstanceUID"]  # a malformed UID in the header: file under a new study
    ids.update({k: v for k, v in options.items() if v})
    ids.pop("ProtocolName", None)
    return ids


def export_dicom(
    result_path: PathLike,
    out_dir: PathLike,
    *,
    scan: PathLike | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_number: int = 100,
    overwrite: bool = False,
) -> list[Path]:
    """Write the T1, T2 and PD maps of a matched result as DICOM (``spurig export-dicom``).

    The objects written are described in the module doc of :mod:`spurig_core.io_dicom`.

    Patient and study identifiers come from the options, else from the ISMRMRD header kept in the
    scan (``scan``, or the result's source scan when it still exists), else anonymous defaults.

    Raises
    ------
    InputError
        When the result has no maps (run ``spurig match`` first), an identifier is malformed, or
        the output folder cannot be written.
    """
    import torch

    from .io import load_result
    from .io_dicom import write_dicom_maps

    _need("highdicom")
    check_output(out_dir, kind="dir", inputs=(result_path, scan), overwrite=overwrite)
    for option, value in (("--patient-id", patient_id), ("--patient-name", patient_name)):
        if value is not None and (
            not 0 < len(value) <= 64 or "\\" in value or not value.isprintable()
        ):
            raise InputError(
                f"{option} {value!r:.80}: expected 1 to 64 printable characters without a "
                "backslash (DICOM LO/PN)"
            )
    if study_uid is not None and not _is_uid(study_uid):
        raise InputError(f"--study-uid {study_uid!r}: not a DICOM UID (digits and dots, <= 64)")
    if isinstance(series_number, bool) or not 1 <= int(series_number) <= 2**31 - 8:
        raise InputError(f"--series-number {series_number!r}: expected 1 to 2147483639")
    result = load_result(result_path, lazy=True)
    if result.t1_ms is None or result.t2_ms is None or result.pd is None:
        raise InputError(
            f"{result_path}: has no T1/T2/PD maps; run spurig match {result_path} first"
        )
    ids = _identifiers(
        result,
        scan,
        {"PatientID": patient_id, "PatientName": patient_name, "StudyInstanceUID": study_uid},
    )
    image = torch.linalg.vector_norm(result.coefficients, dim=0).numpy()
    maps = {n: getattr(result, n).numpy() for n in ("t1_ms", "t2_ms", "pd")}
    try:  # every object is built (and validated by highdicom) before the first file is written
        return write_dicom_maps(
            maps,
            image,
            out_dir,
            voxel_size_mm=result.voxel_size_mm,
            method=result.method,
            groups=result.groups,
            identifiers=ids,
            series_number=int(series_number),
        )
    except (ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{out_dir}: DICOM refused by highdicom's validation: {first}") from None


def _is_uid(text: str) -> bool:
    parts = text.split(".")
    return 0 < len(text) <= 64 and all(
        p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts
    )
