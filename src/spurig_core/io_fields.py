"""Physical ranges of every field of the file schemas, and the checks :mod:`spurig_core.io` applies.

One table, :data:`FIELDS`, gives each attribute and dataset of a raw scan (SPEC §3, §4) and of a
result store (SPEC §5) its allowed range and unit.  The helpers below turn an attribute of any type
HDF5 or zarr may hand back (``bytes``, ``str``, numpy scalars and arrays, JSON lists) into the
Python value the schema promises, or raise :class:`~spurig_core.errors.InputError` with one line
that names the file, the field, the bad value and the range, e.g.
``scan.h5: attribute 'tr_ms' = 'abc' is not a number; expected [1, 100] ms``.

How the ranges were chosen
--------------------------
- Sequence (SPEC §4, default TR 12.5, TE 1.7, TI 20 ms, rest 1.2 s, flips 10–90°): TR 1–100 ms,
  TE 0–100 ms and below TR, TI 0–10 000 ms, rest 0–60 s, each flip 0–180° and not all zero, and
  at least as many repetitions as the basis rank ``k = 5`` (a shorter train has no rank-5
  subspace).
- Geometry: matrix 4–512 voxels per axis (integral), FOV 1–1000 mm per axis; a result's matrix
  1–1024 (the napari plugin shows nothing larger); voxel size 0.001–1000 mm.
- Maps: relative B1 in (0, 3]; T1 0–10 000 ms and T2 0–5 000 ms (0 outside the object); tissue
  labels 0–4.
- Magnitudes: every complex or float array must be finite and ``Σ|x|²`` must fit in float32
  (≤ 3.4e38), so that no norm (``‖b‖``, the Lipschitz estimate, PSNR peaks) or FFT along the
  pipeline overflows: a norm is the first thing every solver takes.  A coefficient of 3e38 fails
  this (its square alone is 9e76); real data sit many orders of magnitude below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "FIELDS",
    "Range",
    "check_magnitude",
    "check_range",
    "check_sequence",
    "check_shape_axes",
    "dict_attr",
    "int_attr",
    "number_attr",
    "text_attr",
    "vector_attr",
]

#: Largest ``Σ|x|²`` an array may have: what float32 can hold.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Range:
    """An allowed interval ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), its unit, integrality."""

    lo: float
    hi: float
    unit: str = ""
    integer: bool = False
    lo_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` is finite, inside the interval and (if required) integral."""
        if not math.isfinite(value):
            return False
        if self.integer and value != round(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        return above and value <= self.hi

    def text(self) -> str:
        """E.g. ``[1, 100] ms`` or ``(0, 3] (relative B1+)``."""
        left = "(" if self.lo_open else "["
        s = f"{left}{_num(self.lo)}, {_num(self.hi)}]"
        return f"{s} {self.unit}" if self.unit else s

    def problem(self, value: float) -> str:
        """Why ``value`` is not allowed: ``"is not an integer"`` or ``"is outside [a, b] unit"``."""
        if math.isfinite(value) and self.integer and value != round(value):
            return f"is not an integer (expected integers in {self.text()})"
        return f"is outside {self.text()}"


#: Allowed range of every numeric field (attribute or dataset values) of both schemas.
FIELDS: dict[str, Range] = {
    # raw scan, SPEC §3 / §4
    "matrix": Range(4, 512, "voxels", integer=True),
    "fov_mm": Range(1, 1000, "mm"),
    "tr_ms": Range(1, 100, "ms"),
    "te_ms": Range(0, 100, "ms"),
    "ti_ms": Range(0, 10_000, "ms"),
    "rest_s": Range(0, 60, "s"),
    "flip_angle_deg": Range(0, 180, "degrees"),
    "repetitions": Range(5, 100_000, "(at least the basis rank 5)", integer=True),
    "coils": Range(1, 256, integer=True),
    "groups": Range(1, 10_000, integer=True),
    "samples": Range(1, 1_000_000, integer=True),
    "calibration": Range(1, 512, "points per axis", integer=True),
    "b1": Range(0, 3, "(relative B1+)", lo_open=True),
    "t1_ms": Range(0, 10_000, "ms"),
    "t2_ms": Range(0, 5_000, "ms"),
    "tissue": Range(0, 4, "(0 background, 1 CSF, 2 GM, 3 WM, 4 other)", integer=True),
    # result store, SPEC §5
    "result_matrix": Range(1, 1024, "voxels", integer=True),
    "basis": Range(1, 64, "coefficients", integer=True),
    "iterations": Range(1, 10_000, integer=True),
    "runtime_s": Range(0, 1e7, "s"),
    "voxel_size_mm": Range(0.001, 1000, "mm"),
    "pd": Range(0, 1e30),
}


def _num(v: float) -> str:
    """``12.5``, ``100000`` (integral values without exponent up to 1e15), ``1e+300``."""
    if math.isfinite(v) and v == round(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}"


def _show(value: Any) -> str:
    """Return a short, one-line rendering of a bad value."""
    arr = np.asarray(value) if not isinstance(value, str | bytes) else None
    if arr is not None and arr.ndim > 0 and arr.size > 4:
        return f"an array of shape {arr.shape}"
    text = repr(value.tolist() if hasattr(value, "tolist") else value)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(value: Any) -> np.ndarray | None:
    """``value`` as a float64 array when it holds real numbers only (no str, bool, complex)."""
    if isinstance(value, str | bytes | bool | np.bool_) or value is None:
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        return None
    if arr.dtype.kind not in "iuf":
        if arr.dtype.kind != "O":
            return None
        try:  # JSON lists come back as Python lists of int/float
            if any(isinstance(v, bool | str | bytes) for v in arr.reshape(-1)):
                return None
            arr = arr.astype(np.float64)
        except (ValueError, TypeError):
            return None
    return arr.astype(np.float64)


def text_attr(value: Any, name: str, where: str) -> str:
    """Return a string attribute (``bytes`` decoded; a one-element array unwrapped)."""
    v = value
    if isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "USO":
        v = v.reshape(-1)[0]
    if isinstance(v, bytes | np.bytes_):
        try:
            v = bytes(v).decode()
        except UnicodeDecodeError:
            v = None
    if not isinstance(v, str):
        raise InputError(f"{where}: attribute '{name}' = {_show(value)} is not a string")
    return str(v)


def number_attr(value: Any, name: str, where: str, rng: Range | None = None) -> float:
    """Return a scalar number attribute checked against ``rng`` (default ``FIELDS[name]``)."""
    r = FIELDS[name] if rng is None else rng
    arr = _numbers(value)
    if arr is None or arr.size != 1:
        kind = "an integer" if r.integer else "a number"
        raise InputError(
            f"{where}: attribute '{name}' = {_show(value)} is not {kind}; expected {r.text()}"
        )
    v = float(arr.reshape(-1)[0])
    if not r.contains(v):
        raise InputError(f"{where}: attribute '{name}' = {_show(value)} {r.problem(v)}")
    return v


def int_attr(value: Any, name: str, where: str, rng: Range | None = None) -> int:
    """Return an integral scalar attribute (``16.0`` is accepted, ``16.7`` is not)."""
    r = FIELDS[name] if rng is None else rng
    return int(number_attr(value, name, where, Range(r.lo, r.hi, r.unit, True, r.lo_open)))


def vector_attr(
    value: Any, name: str, where: str, *, n: int = 3, rng: Range | None = None
) -> tuple[float, ...]:
    """Return an attribute of ``n`` numbers, each checked against ``rng`` (or ``FIELDS[name]``)."""
    r = FIELDS[name] if rng is None else rng
    arr = _numbers(value)
    what = "integers" if r.integer else "numbers"
    if arr is None or arr.size != n or arr.ndim > 1:
        raise InputError(
            f"{where}: attribute '{name}' = {_show(value)} is not {n} {what}; "
            f"expected {n} values, each {r.text()}"
        )
    vals = tuple(float(v) for v in arr.reshape(-1))
    bad = [v for v in vals if not r.contains(v)]
    if bad:
        shown, why = _show(list(vals)), r.problem(bad[0])
        raise InputError(f"{where}: attribute '{name}' = {shown}: {_show(bad[0])} {why}")
    return vals


def dict_attr(value: Any, name: str, where: str, *, values: str = "any") -> dict[str, Any]:
    """Return a mapping attribute (``None`` → ``{}``).

    ``values="number"`` requires finite numbers, ``values="text"`` strings.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: attribute '{name}' = {_show(value)} is not a mapping")
    if values == "text":
        for k, v in value.items():
            if not isinstance(v, str):
                raise InputError(
                    f"{where}: attribute '{name}' entry {k!r} = {_show(v)} is not a string"
                )
    if values == "number":
        for k, v in value.items():
            arr = _numbers(v)
            if arr is None or arr.size != 1 or not np.isfinite(arr).all():
                raise InputError(
                    f"{where}: attribute '{name}' entry {k!r} = {_show(v)} is not a finite number"
                )
        return {str(k): float(np.asarray(v)) for k, v in value.items()}
    return dict(value)


def check_range(data: np.ndarray, name: str, where: str, rng: Range | None = None) -> None:
    """Every value of ``data`` inside ``rng`` (default ``FIELDS[<last part of name>]``)."""
    r = FIELDS[name.rsplit("/", 1)[-1]] if rng is None else rng
    if data.size == 0:
        return
    lo, hi = float(np.min(data)), float(np.max(data))
    what = "labels" if r.integer else "values"
    v = np.asarray(data, dtype=np.float64)
    if hi > r.hi:
        n = int(np.count_nonzero(v > r.hi))
        raise InputError(
            f"{where}: '{name}' has {n} {what} above {_num(r.hi)} (max {_num(hi)}); "
            f"expected {r.text()}"
        )
    if lo < r.lo or (r.lo_open and lo <= r.lo):
        n = int(np.count_nonzero((v <= r.lo) if r.lo_open else (v < r.lo)))
        bound = f"at or below {_num(r.lo)}" if r.lo_open else f"below {_num(r.lo)}"
        raise InputError(
            f"{where}: '{name}' has {n} {what} {bound} (min {_num(lo)}); expected {r.text()}"
        )
    if r.integer and data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise InputError(f"{where}: '{name}' has non-integral values; expected {r.text()}")


def check_magnitude(data: np.ndarray, name: str, where: str, *, kind: str = "dataset") -> None:
    """Check that ``data`` is finite and ``Σ|x|²`` fits in float32 (see the module notes).

    Works in blocks of 4 Mi values so that no full-size temporary is made; the exact sum of
    squares (in float64) is only computed when ``max|x|² · size`` could exceed the limit.
    """
    if data.size == 0 or data.dtype.kind not in "fc":
        return
    flat = data.reshape(-1)
    step = 1 << 22
    peak = 0.0
    for i in range(0, flat.size, step):
        m = float(np.max(np.abs(flat[i : i + step])))
        if not math.isfinite(m):
            bad = int(np.count_nonzero(~np.isfinite(flat)))
            raise InputError(f"{where}: {kind} '{name}' contains {bad} NaN or Inf values")
        peak = max(peak, m)
    if peak * peak * flat.size <= FLOAT32_MAX:
        return
    wide = np.complex128 if data.dtype.kind == "c" else np.float64
    energy = 0.0
    for i in range(0, flat.size, step):
        block = np.abs(flat[i : i + step].astype(wide))
        energy += float(np.sum(block * block))
    if energy > FLOAT32_MAX:
        raise InputError(
            f"{where}: {kind} '{name}' has |value| up to {peak:.3g}: its sum of squares "
            f"{energy:.3g} exceeds float32's {FLOAT32_MAX:.3g}, so its norms overflow"
        )


def check_sequence(
    flip_angle_deg: np.ndarray,
    timings: dict[str, float],
    where: str,
    *,
    min_repetitions: int = 1,
) -> None:
    """Sequence values of SPEC §4 in range: flips, timings, TE below TR, flips not all zero.

    Parameters
    ----------
    flip_angle_deg : ndarray, shape (tr,)
    timings : dict
        ``tr_ms``, ``te_ms``, ``ti_ms``, ``rest_s``.
    where : str
        Prefix of the message (file or ``"sequence"``).
    min_repetitions : int
        Fewest repetitions accepted (a scan needs the basis rank, 5).
    """
    fa = np.asarray(flip_angle_deg, dtype=np.float64).reshape(-1)
    for name, value in timings.items():
        r = FIELDS[name]
        if not r.contains(float(value)):
            raise InputError(f"{where}: '{name}' = {_show(value)} {r.problem(float(value))}")
    if timings["te_ms"] >= timings["tr_ms"]:
        raise InputError(
            f"{where}: 'te_ms' = {_num(timings['te_ms'])} must be below 'tr_ms' = "
            f"{_num(timings['tr_ms'])} (the echo lies inside the repetition)"
        )
    if fa.size < min_repetitions:
        raise InputError(
            f"{where}: 'flip_angle_deg' has {fa.size} repetitions; expected at least "
            f"{min_repetitions} (the basis rank)"
        )
    if not np.isfinite(fa).all():
        bad = int(np.count_nonzero(~np.isfinite(fa)))
        raise InputError(f"{where}: 'flip_angle_deg' contains {bad} NaN or Inf values")
    check_range(fa, "flip_angle_deg", where)
    if fa.size and not np.any(fa > 0):
        raise InputError(f"{where}: 'flip_angle_deg' is zero everywhere; no signal is excited")


def check_shape_axes(shape: Seq[int], names: Seq[str], what: str, where: str) -> None:
    """Each axis length of ``shape`` inside ``FIELDS[names[i]]`` (``""`` skips an axis)."""
    for n, field_name in zip(shape, names, strict=True):
        if not field_name:
            continue
        r = FIELDS[field_name]
        if not r.contains(float(n)):
            label = "matrix" if field_name == "result_matrix" else field_name
            raise InputError(
                f"{where}: '{what}' has shape {tuple(shape)}: {label} = {n} {r.problem(float(n))}"
            )
