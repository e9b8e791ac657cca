"""ISMRMRD raw data (https://ismrmrd.readthedocs.io) read with the ``ismrmrd`` package.

Format knowledge only (writing: :mod:`spurig_core.io_ismrmrd_out`): which acquisitions are
imaging, calibration or noise, how their encoding counters and trajectories become arrays, and the
header XML.  What is done with the arrays (noise pre-whitening, coil compression, a gridded
calibration) lives in :mod:`spurig_core.exchange`.  ``ismrmrd`` (and through it ``xsdata``) is
imported inside the functions, so that ``import spurig_core`` stays light; install it with
``pip install "spurig[scanner]"``.

Layout (what :func:`~spurig_core.io_ismrmrd_out.write_ismrmrd` writes, :func:`read_ismrmrd` reads)
-------------------------------------------------------------------------------------------------
- Header encoding 0 is the MRF acquisition: ``encodedSpace`` matrix and field of view are the
  scan's ``matrix`` and ``fov_mm`` (``reconSpace`` the same), trajectory ``spiral``, and
  ``encodingLimits`` ``kspace_encoding_step_1`` = 0 … tr−1, ``repetition`` = 0 … groups−1.
- Encoding 1, present with calibration data, is the Cartesian calibration cube: matrix
  ``(cx, cy, cz)`` on the same field of view.
- ``sequenceParameters``: ``TR``, ``TE``, ``TI`` in ms and ``flipAngle_deg`` = the whole
  flip-angle train (one value per repetition); ``userParameters`` ``userParameterDouble`` named
  ``rest_s`` = the free relaxation after each group in s (SPEC §4).
- Acquisitions: the calibration lines first, flagged ``ACQ_IS_PARALLEL_CALIBRATION``, with
  ``encoding_space_ref`` 1, the readout along axis 0 (``center_sample`` = cx//2), and
  ``kspace_encode_step_1`` / ``kspace_encode_step_2`` = the line's index along axes 1 / 2 (centre
  cy//2, cz//2); then one acquisition per (group, repetition), in that order, with ``data`` of
  shape (coils, samples) and ``traj`` of shape (samples, 3).
- Default mapping of acquisitions to ``(group, tr)`` (:data:`DEFAULT_MAP`): the group is the
  ``repetition`` counter, the time point within the group the ``kspace_encode_step_1`` counter.
  Any two counters of :data:`COUNTERS` can be named instead (``--map group=segment,tr=user_1``);
  each counter's distinct values are taken in increasing order, so offsets and gaps do not
  matter, but every (group, tr) pair must occur exactly once.
- Trajectory units: ``traj[:, d]`` is the spatial frequency along image axis ``d`` (ISMRMRD's
  kx, ky, kz); spurig's k = ``traj × scale`` in cycles per FOV (grid units, SPEC §3).  The default
  scale 1 reads cycles/FOV (what spurig and BART write); a converter that stores normalised
  frequencies in [-0.5, 0.5) needs ``scale = matrix`` and one that stores radians in [-π, π)
  needs ``scale = matrix / 2π`` (``--traj-scale``).  k must lie in ``[-matrix/2, matrix/2)``
  (``+matrix/2`` exactly is folded to ``-matrix/2``, the same point of the periodic grid); without
  ``--traj-scale``, a trajectory reaching less than half of that range is refused as probably in
  other units (``--traj-scale 1`` confirms cycles/FOV).
- Acquisitions flagged as noise measurements are noise samples; navigator, phase correction,
  dummy-scan, feedback and phase-stabilisation acquisitions are skipped; samples outside
  ``discard_pre`` / ``discard_post`` are dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import _require_file

__all__ = [
    "COUNTERS",
    "DEFAULT_MAP",
    "HEADER_ATTR",
    "RawIsmrmrd",
    "is_ismrmrd",
    "parse_map",
    "read_ismrmrd",
]

PathLike = str | os.PathLike[str]

#: Encoding counters (``AcquisitionHeader.idx``) that ``--map`` may name.
COUNTERS = (
    "kspace_encode_step_1",
    "kspace_encode_step_2",
    "average",
    "slice",
    "contrast",
    "phase",
    "repetition",
    "set",
    "segment",
    *(f"user_{i}" for i in range(8)),
)

#: Which counter gives the group and which the time point (repetition) within a group.
DEFAULT_MAP: dict[str, str] = {"group": "repetition", "tr": "kspace_encode_step_1"}

#: Root attribute of an imported spurig scan holding the ISMRMRD header XML it came from.
HEADER_ATTR = "ismrmrd_header"

# acquisition flags (ismrmrd.constants; repeated so that no import is needed here)
_NOISE, _CALIB, _CALIB_AND_IMAGING = 19, 20, 21
_SKIPPED = {
    23: "navigation",
    24: "phase correction",
    26: "feedback",
    27: "dummy scan",
    28: "feedback",
    29: "surface coil correction",
    30: "phase stabilisation",
    31: "phase stabilisation",
}


def parse_map(text: str | None) -> dict[str, str]:
    """``"group=segment,tr=user_1"`` as a complete mapping (missing keys keep their default).

    Raises
    ------
    InputError
        For an unknown key or counter, or a malformed entry.
    """
    mapping = dict(DEFAULT_MAP)
    if not text:
        return mapping
    for part in str(text).split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in DEFAULT_MAP or value not in COUNTERS:
            raise InputError(
                f"--map: {part.strip()!r} is not KEY=COUNTER with KEY in group, tr and COUNTER "
                f"one of {', '.join(COUNTERS)}"
            )
        mapping[key] = value
    if mapping["group"] == mapping["tr"]:
        raise InputError(f"--map: group and tr both name the counter {mapping['tr']!r}")
    return mapping


@dataclass
class RawIsmrmrd:
    """The arrays of an ISMRMRD file, sorted into spurig's shapes (units as in the file).

    Attributes
    ----------
    kspace : ndarray, shape (coils, groups, tr, samples), complex64
    trajectory : ndarray, shape (groups, tr, samples, 3), float32
        As stored (multiply by the trajectory scale for cycles/FOV).
    matrix : tuple of 3 int
    fov_mm : tuple of 3 float
    calibration : ndarray, shape (coils, cx, cy, cz), complex64, optional
        From Cartesian acquisitions flagged as parallel calibration.
    noise : ndarray, shape (coils, n), complex64, optional
        Samples of the noise-measurement acquisitions.
    sequence : dict
        What the header says about the sequence: ``flip_angle_deg`` (list), ``tr_ms``,
        ``te_ms``, ``ti_ms`` (lists, ms) and ``rest_s`` (float), whichever it carries.
    header_xml : str
    notes : list of str
        What was skipped or how something was read (for the import report).
    """

    kspace: np.ndarray
    trajectory: np.ndarray
    matrix: tuple[int, int, int]
    fov_mm: tuple[float, float, float]
    calibration: np.ndarray | None
    noise: np.ndarray | None
    sequence: dict[str, Any]
    header_xml: str
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _open(path: PathLike, what: str = "ISMRMRD file") -> tuple[Any, Path]:
    import ismrmrd

    p = _require_file(path, what)
    try:
        return ismrmrd.File(str(p), "r"), p
    except OSError as exc:
        raise InputError(f"{p}: not an ISMRMRD file (not readable as HDF5: {exc})") from None


def _container_name(f: Any) -> str | None:
    """Return the group holding the header and acquisitions (``dataset`` or the only one)."""
    names = [k for k in f if f[k].has_header()]
    if "dataset" in names:
        return "dataset"
    return names[0] if len(names) == 1 else None


def is_ismrmrd(path: PathLike) -> bool:
    """Whether ``path`` is an HDF5 file with an ISMRMRD dataset (header XML and acquisitions)."""
    try:
        f, _ = _open(path)
    except InputError:
        return False
    with f:
        name = _container_name(f)
        return name is not None and f[name].has_acquisitions()


def read_ismrmrd(path: PathLike, *, mapping: dict[str, str] | None = None) -> RawIsmrmrd:
    """Read an ISMRMRD file's header and acquisitions into spurig's shapes.

    Parameters
    ----------
    path : path-like
        An ISMRMRD HDF5 file.
    mapping : dict, optional
        ``{"group": COUNTER, "tr": COUNTER}`` (:func:`parse_map`); :data:`DEFAULT_MAP` when
        ``None``.

    Raises
    ------
    InputError
        One line naming the file and the problem: not ISMRMRD, no imaging acquisitions, no
        trajectory, inconsistent sample or channel counts, counters that do not identify each
        (group, tr) exactly once, a calibration that is not a full Cartesian block.
    """
    m = parse_map(None) if mapping is None else {**DEFAULT_MAP, **mapping}
    f, p = _open(path)
    with f:
        name = _container_name(f)
        if name is None:
            raise InputError(
                f"{p}: not an ISMRMRD file (no group with an 'xml' header; groups: "
                f"{', '.join(list(f.keys())[:5]) or 'none'})"
            )
        cont = f[name]
        try:
            header = cont.header
        except Exception as exc:  # xsdata raises its own parser errors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise InputError(f"{p}: the ISMRMRD header XML is not valid ({first})") from None
        if not cont.has_acquisitions() or len(cont.acquisitions) == 0:
            raise InputError(f"{p}: the ISMRMRD dataset {name!r} holds no acquisitions")
        try:
            acqs = cont.acquisitions[:]
        except (OSError, KeyError, ValueError, TypeError) as exc:  # a damaged 'data' dataset
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise InputError(f"{p}: the acquisitions cannot be read ({first})") from None
    return _sort(acqs, header, m, p)


def _sort(acqs: list[Any], header: Any, m: dict[str, str], p: Path) -> RawIsmrmrd:
    from ismrmrd.xsd import ToXML

    notes: list[str] = []
    imaging: list[Any] = []
    calib: list[Any] = []
    noise: list[Any] = []
    skipped: dict[str, int] = {}
    for a in acqs:
        kind = next((k for flag, k in _SKIPPED.items() if a.is_flag_set(flag)), None)
        if a.is_flag_set(_NOISE):
            noise.append(a)
        elif kind is not None:
            skipped[kind] = skipped.get(kind, 0) + 1
        elif a.is_flag_set(_CALIB) and not a.is_flag_set(_CALIB_AND_IMAGING):
            calib.append(a)
        else:
            imaging.append(a)
    for kind, n in skipped.items():
        notes.append(f"skipped {n} {kind} acquisitions")
    if not imaging:
        raise InputError(
            f"{p}: no imaging acquisitions ({len(noise)} noise, {len(calib)} calibration, "
            f"{sum(skipped.values())} other of {len(acqs)})"
        )
    kspace, traj = _imaging_arrays(imaging, m, p)
    enc_ref = _one({a.encoding_space_ref for a in imaging}, "encoding_space_ref", "imaging", p)
    matrix, fov = _encoded_space(header, enc_ref, p)
    coils = kspace.shape[0]
    cal = None
    cart = [a for a in calib if a.trajectory_dimensions == 0]
    if len(cart) < len(calib):
        notes.append(f"ignored {len(calib) - len(cart)} non-Cartesian calibration acquisitions")
    if cart:
        cal = _calibration_cube(cart, header, fov, p)
        if cal.shape[0] != coils:
            raise InputError(
                f"{p}: calibration acquisitions have {cal.shape[0]} channels, imaging {coils}"
            )
    nz = None
    if noise:
        nz = np.concatenate([np.asarray(a.data, np.complex64) for a in noise], axis=1)
        if nz.shape[0] != coils:
            raise InputError(
                f"{p}: noise acquisitions have {nz.shape[0]} channels, imaging {coils}"
            )
    return RawIsmrmrd(
        kspace=kspace,
        trajectory=traj,
        matrix=matrix,
        fov_mm=fov,
        calibration=cal,
        noise=nz,
        sequence=_header_sequence(header),
        header_xml=ToXML(header),
        notes=notes,
    )


def _one(values: set[Any], name: str, what: str, p: Path) -> Any:
    if len(values) != 1:
        raise InputError(
            f"{p}: {what} acquisitions differ in {name} ({', '.join(map(str, sorted(values)))}); "
            "spurig needs one value"
        )
    return next(iter(values))


def _counter(a: Any, name: str) -> int:
    if name.startswith("user_"):
        return int(a.idx.user[int(name[5:])])
    return int(getattr(a.idx, name))


def _imaging_arrays(imaging: list[Any], m: dict[str, str], p: Path) -> tuple[Any, Any]:
    """k-space (coils, groups, tr, samples) and trajectory (groups, tr, samples, 3)."""
    dims = {a.trajectory_dimensions for a in imaging}
    if dims != {3}:
        d = sorted(dims)
        why = "no trajectory" if d == [0] else f"{d} trajectory dimensions"
        raise InputError(
            f"{p}: imaging acquisitions carry {why}; spurig needs the 3D k-space position of "
            "every sample (traj with kx, ky, kz): convert the raw data with its trajectory"
        )
    coils = _one({a.active_channels for a in imaging}, "active_channels", "imaging", p)
    samples = _one(
        {a.number_of_samples - a.discard_pre - a.discard_post for a in imaging},
        "number of samples (after discard_pre/discard_post)",
        "imaging",
        p,
    )
    gv, g = np.unique([_counter(a, m["group"]) for a in imaging], return_inverse=True)
    tv, t = np.unique([_counter(a, m["tr"]) for a in imaging], return_inverse=True)
    count = np.zeros((len(gv), len(tv)), dtype=np.int64)
    np.add.at(count, (g, t), 1)
    where = f"group counter {m['group']!r} and tr counter {m['tr']!r}"
    if (count > 1).any():
        i, j = np.argwhere(count > 1)[0]
        raise InputError(
            f"{p}: {where}: the pair ({gv[i]}, {tv[j]}) occurs {count[i, j]} times; these "
            "counters do not identify an acquisition (choose others with --map group=C,tr=C)"
        )
    if (count == 0).any():
        i, j = np.argwhere(count == 0)[0]
        raise InputError(
            f"{p}: {where}: {int((count == 0).sum())} of {count.size} (group, tr) acquisitions "
            f"are missing, e.g. ({gv[i]}, {tv[j]}); the data are incomplete or --map names the "
            "wrong counters"
        )
    if len(tv) < 5:
        raise InputError(
            f"{p}: tr counter {m['tr']!r} takes {len(tv)} values; an MRF group needs at least 5 "
            "time points (choose the counter of the time point with --map tr=COUNTER)"
        )
    kspace = np.empty((coils, len(gv), len(tv), samples), dtype=np.complex64)
    traj = np.empty((len(gv), len(tv), samples, 3), dtype=np.float32)
    for a, gi, ti in zip(imaging, g, t, strict=True):
        s = slice(a.discard_pre, a.discard_pre + samples)
        kspace[:, gi, ti] = a.data[:, s]
        traj[gi, ti] = a.traj[s]
    return kspace, traj


def _encoded_space(
    header: Any, ref: int, p: Path
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    from .io_fields import check_range

    if ref >= len(header.encoding):
        raise InputError(
            f"{p}: acquisitions refer to encoding {ref}; the header has {len(header.encoding)}"
        )
    space = header.encoding[ref].encodedSpace
    ms, fv = space.matrixSize, space.fieldOfView_mm
    matrix = (int(ms.x), int(ms.y), int(ms.z))
    fov = (float(fv.x), float(fv.y), float(fv.z))
    where = f"{p}: header encoding {ref} encodedSpace"
    check_range(np.asarray(matrix, dtype=np.float64), "matrix", where)
    check_range(np.asarray(fov, dtype=np.float64), "fov_mm", where)
    return matrix, fov


def _extent(lo: int, hi: int) -> int:
    """Largest ``c`` with frequencies ``-(c//2) … c-1-c//2`` inside ``[lo, hi]`` (SPEC §3)."""
    return max(2 * min(-lo, hi + 1), 2 * min(-lo, hi) + 1, 0)


def _calibration_cube(
    lines: list[Any], header: Any, fov: tuple[float, float, float], p: Path
) -> np.ndarray:
    """(coils, cx, cy, cz) from fully sampled Cartesian calibration lines (readout = axis 0)."""
    ref = _one({a.encoding_space_ref for a in lines}, "encoding_space_ref", "calibration", p)
    if ref >= len(header.encoding):
        raise InputError(f"{p}: calibration refers to encoding {ref}; the header has none")
    enc = header.encoding[ref]
    fv = enc.encodedSpace.fieldOfView_mm
    ratio = np.array([fv.x, fv.y, fv.z], dtype=np.float64) / np.asarray(fov)
    over = round(float(ratio[0]))
    if over < 1 or abs(ratio[0] - over) > 1e-3 or np.abs(ratio[1:] - 1).max() > 1e-3:
        raise InputError(
            f"{p}: calibration field of view {tuple(map(float, ratio * fov))} mm differs from the "
            f"imaging one {fov} mm (only an integer readout oversampling is supported)"
        )
    n = _one(
        {a.number_of_samples - a.discard_pre - a.discard_post for a in lines},
        "samples",
        "calibration",
        p,
    )
    centre = _one(
        {a.center_sample - a.discard_pre for a in lines}, "center_sample", "calibration", p
    )
    f0 = np.arange(n) - centre
    keep = f0 % over == 0
    f0 = f0[keep] // over
    steps = []
    for d, name in ((1, "kspace_encode_step_1"), (2, "kspace_encode_step_2")):
        e = np.array([_counter(a, name) for a in lines])
        lim = getattr(enc.encodingLimits, f"kspace_encoding_step_{d}", None) if ref else None
        c = int(lim.center) if lim is not None else (int(e.min()) + int(e.max()) + 1) // 2
        steps.append(e - c)
    shape = [_extent(int(f.min()), int(f.max())) for f in (f0, *steps)]
    if min(shape) < 4:
        raise InputError(
            f"{p}: the calibration block spans only {tuple(shape)} points; need >= 4 per axis"
        )
    coils = _one({a.active_channels for a in lines}, "active_channels", "calibration", p)
    cube = np.zeros((coils, *shape), dtype=np.complex128)
    hits = np.zeros(shape, dtype=np.int64)
    i0 = f0 + shape[0] // 2
    ok0 = (i0 >= 0) & (i0 < shape[0])
    for a, k1, k2 in zip(lines, steps[0], steps[1], strict=True):
        j, l = int(k1) + shape[1] // 2, int(k2) + shape[2] // 2
        if 0 <= j < shape[1] and 0 <= l < shape[2]:
            data = np.asarray(a.data)[:, a.discard_pre : a.discard_pre + n][:, keep]
            cube[:, i0[ok0], j, l] += data[:, ok0]
            hits[i0[ok0], j, l] += 1
    if (hits == 0).any():
        raise InputError(
            f"{p}: the calibration block {tuple(shape)} is not fully sampled "
            f"({int((hits == 0).sum())} Cartesian points missing)"
        )
    return (cube / hits).astype(np.complex64)


def _header_sequence(header: Any) -> dict[str, Any]:
    """Return what the header says about the sequence (see :class:`RawIsmrmrd`)."""
    out: dict[str, Any] = {}
    sp = header.sequenceParameters
    if sp is not None:
        for key, name in (
            ("flipAngle_deg", "flip_angle_deg"),
            ("TR", "tr_ms"),
            ("TE", "te_ms"),
            ("TI", "ti_ms"),
        ):
            values = list(getattr(sp, key) or [])
            if values:
                out[name] = [float(v) for v in values]
    up = header.userParameters
    for item in up.userParameterDouble if up is not None else []:
        if item.name == "rest_s":
            out["rest_s"] = float(item.value)
    return out
