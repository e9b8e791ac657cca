"""Argument checks of the public Python API (SPEC §2b): every bad argument is one InputError line.

The pipeline functions call these first (one line each), so that a wrong type or value in a script
(``reconstruct("x.h5", ...)``, ``groups="2"``, ``config={"llr": 5}``) fails before any work with a
message that names the argument, what was given and what is expected, instead of a ``TypeError``
or ``AttributeError`` from deep inside.  Paths are accepted wherever a scan or a result is
expected, and loaded (and validated) with :func:`spurig_core.io.load_scan` /
:func:`~spurig_core.io.load_result`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Result, Scan
from .errors import InputError
from .io_fields import FIELDS, check_magnitude, check_range

__all__ = [
    "as_result",
    "as_scan",
    "check_result_target",
    "evaluate_args",
    "match_args",
    "reconstruct_args",
    "simulate_args",
]


def _type(value: Any) -> str:
    return type(value).__name__


def _is_path(value: Any) -> bool:
    return isinstance(value, str | os.PathLike) and not isinstance(value, bytes)


def as_path(value: Any, what: str) -> Path:
    """``value`` as a Path, or an InputError naming ``what``."""
    if not _is_path(value):
        raise InputError(f"{what}: expected a path (str or os.PathLike), got {_type(value)}")
    return Path(value)


def check_result_target(result: Any, path: Any) -> Path:
    """Return the target of :meth:`Result.save`: a Result and a path ending in ``.zarr``."""
    if not isinstance(result, Result):
        raise InputError(f"save: expected a Result, got {_type(result)}")
    p = as_path(path, "save: path")
    if p.suffix != ".zarr":
        raise InputError(f"{p}: a result store must be a directory named *.zarr (suffix .zarr)")
    return p


def _tensor(value: Any, name: str, ndim: int, complex_: bool, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{where}: '{name}' must be a torch.Tensor, got {_type(value)}")
    if value.ndim != ndim:
        raise InputError(
            f"{where}: '{name}' has shape {tuple(value.shape)}, expected {ndim} dimensions"
        )
    if complex_ != value.is_complex() or not (value.is_complex() or value.is_floating_point()):
        kind = "complex" if complex_ else "real floating-point"
        raise InputError(f"{where}: '{name}' has dtype {value.dtype}, expected {kind}")
    return value


def _values(t: torch.Tensor, name: str, where: str, *, field: str | None = None) -> None:
    a = t.detach().cpu().numpy()
    check_magnitude(a, name, where, kind="tensor")
    if field is not None:
        check_range(a, name, where, FIELDS[field])


def check_scan(scan: Scan, where: str = "scan") -> Scan:
    """Types, shapes and value ranges of an in-memory Scan (one built in a script).

    A scan read by :func:`~spurig_core.io.load_scan` (``sha256`` set) had its values checked then;
    only the maps' ranges are checked again (they are small).
    """
    from .data import FispSequence

    if not isinstance(scan.sequence, FispSequence):
        raise InputError(f"{where}: 'sequence' must be a FispSequence, got {_type(scan.sequence)}")
    ksp = _tensor(scan.kspace, "kspace", 4, True, where)
    traj = _tensor(scan.trajectory, "trajectory", 4, False, where)
    coils, groups, tr, samples = (int(s) for s in ksp.shape)
    if tuple(traj.shape) != (groups, tr, samples, 3):
        raise InputError(
            f"{where}: 'trajectory' has shape {tuple(traj.shape)}, expected "
            f"{(groups, tr, samples, 3)} to match 'kspace'"
        )
    if scan.sequence.n_tr != tr:
        raise InputError(
            f"{where}: the sequence has {scan.sequence.n_tr} repetitions, 'kspace' has {tr}"
        )
    for name, n in (
        ("coils", coils),
        ("groups", groups),
        ("repetitions", tr),
        ("samples", samples),
    ):
        if not FIELDS[name].contains(float(n)):
            raise InputError(f"{where}: 'kspace' {name} = {n} is outside {FIELDS[name].text()}")
    m = scan.matrix
    if not (isinstance(m, tuple | list) and len(m) == 3):
        raise InputError(f"{where}: 'matrix' must be 3 integers, got {m!r}")
    for v in (*m, *scan.fov_mm):
        if isinstance(v, bool) or not isinstance(v, int | float | np.number):
            raise InputError(f"{where}: 'matrix'/'fov_mm' hold {v!r}, not numbers")
    for name, vals in (("matrix", m), ("fov_mm", scan.fov_mm)):
        bad = [v for v in vals if not FIELDS[name].contains(float(v))]
        if bad:
            raise InputError(
                f"{where}: '{name}' = {tuple(vals)} must each be {FIELDS[name].text()}"
            )
    if scan.sha256 is None:  # not validated by load_scan
        _values(ksp, "kspace", where)
        _values(traj, "trajectory", where)
    matrix = tuple(int(v) for v in m)
    if scan.b1 is not None:
        b1 = _tensor(scan.b1, "b1", 3, False, where)
        if tuple(b1.shape) != matrix:
            raise InputError(f"{where}: 'b1' has shape {tuple(b1.shape)}, expected {matrix}")
        _values(b1, "b1", where, field="b1")
    ref = scan.reference
    if ref is not None:
        for name, field in (("t1_ms", "t1_ms"), ("t2_ms", "t2_ms")):
            t = _tensor(getattr(ref, name), f"reference/{name}", 3, False, where)
            _values(t, f"reference/{name}", where, field=field)
    return scan


def as_scan(scan: Any, what: str = "scan", *, optional: bool = False) -> Scan | None:
    """Return a Scan from a Scan (checked) or path (loaded); ``None`` allowed when ``optional``."""
    if scan is None and optional:
        return None
    if isinstance(scan, Scan):
        return check_scan(scan, str(scan.path) if scan.path else what)
    if _is_path(scan):
        from .io import load_scan

        return load_scan(scan)
    raise InputError(f"{what}: expected a Scan or the path of a .h5 scan, got {_type(scan)}")


def as_result(result: Any, what: str = "result") -> Result:
    """Return a Result from a Result (checked) or the path of a ``.zarr`` store (loaded)."""
    if isinstance(result, Result):
        where = what
        c = _tensor(result.coefficients, "coefficients", 4, True, where)
        b = _tensor(result.basis, "basis", 2, True, where)
        if b.shape[1] != c.shape[0]:
            raise InputError(
                f"{where}: 'basis' {tuple(b.shape)} does not fit 'coefficients' {tuple(c.shape)}"
            )
        _values(c, "coefficients", where)
        _values(b, "basis", where)
        return result
    if _is_path(result):
        from .io import load_result

        return load_result(result)
    raise InputError(f"{what}: expected a Result or the path of a .zarr store, got {_type(result)}")


def _device(device: Any) -> str:
    if not isinstance(device, str | torch.device):
        raise InputError(f"device: expected 'cpu' or 'cuda', got {_type(device)}")
    return str(device)


def _opt_int(value: Any, name: str, *, none: bool = True) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        expected = "an integer or None" if none else "an integer"
        raise InputError(f"{name}: expected {expected}, got {value!r:.40}")


def _recon_config(config: Any) -> None:
    from .config import check_tables
    from .overrides import recon_tables

    if config is None:
        return
    tables = recon_tables()
    if not isinstance(config, dict):
        names = ", ".join(repr(t) for t in tables)
        raise InputError(f"config: expected a dict of tables ({names}), got {_type(config)}")
    check_tables(config, tables, where="config")


def reconstruct_args(
    scan: Any,
    *,
    method: Any,
    groups: Any,
    duration: Any,
    model: Any,
    device: Any,
    save_iterations: Any,
    callback: Any,
    config: Any,
) -> Scan:
    """Check :func:`~spurig_core.pipeline.reconstruct`'s arguments and the memory it will need.

    Returns
    -------
    Scan
        ``scan`` itself, or the scan loaded from a path.
    """
    from .recon.methods import get_method

    get_method(method)  # "method: 'x' is not one of spurig, hybrid, …"
    _opt_int(groups, "groups")
    if duration is not None and not isinstance(duration, str):
        raise InputError(f"duration: expected a name like '2min' or None, got {duration!r:.40}")
    if model is not None:
        as_path(model, "model")
    dev = _device(device)
    if not isinstance(save_iterations, bool):
        raise InputError(f"save_iterations: expected True or False, got {save_iterations!r:.40}")
    if callback is not None and not callable(callback):
        raise InputError(f"callback: expected a callable or None, got {_type(callback)}")
    _recon_config(config)
    s = as_scan(scan)
    assert s is not None
    _recon_memory(s, method, groups, save_iterations, config, dev)
    return s


def _recon_memory(
    scan: Scan, method: str, groups: Any, save_iterations: bool, config: Any, device: str
) -> None:
    """Refuse before any work when a step's estimated memory exceeds what is available."""
    from .memory import recon_estimates, require_bytes

    g = scan.n_groups if not isinstance(groups, int) else max(1, min(groups, scan.n_groups))
    from .recon.methods import METHODS

    llr = (config or {}).get("llr") or {}
    iters = int(llr.get("iterations", 40)) if "llr" in METHODS[method].tables else 8
    # the user's grid; without one, recon_estimates takes the method's own, else the default
    user = ((config or {}).get("gridding") or {}).get("grid_oversampling")
    oversampling = None if user is None else float(user)
    steps = recon_estimates(
        method=method,
        matrix=scan.matrix,
        coils=scan.n_coils,
        groups=g,
        tr=scan.n_tr,
        samples=int(scan.kspace.shape[3]),
        espirit=scan.coil_maps is None and scan.calibration is not None,
        oversampling=oversampling,
        saved_iterates=iters + 1 if save_iterations else 0,
        sparse=((config or {}).get("encoding") or {}).get("sparse"),
    )
    for what, need in steps:
        require_bytes(need, f"reconstruct --method {method}: {what}", device=device)


def match_args(result: Any, scan: Any, device: Any) -> tuple[Result, Scan | None]:
    """Check :func:`~spurig_core.pipeline.match`'s arguments (paths are loaded)."""
    _device(device)
    return as_result(result), as_scan(scan, optional=True)


def evaluate_args(result: Any, scan: Any) -> tuple[Result, Scan]:
    """Check :func:`~spurig_core.pipeline.evaluate`'s arguments (paths are loaded)."""
    res = as_result(result)
    s = as_scan(scan)
    assert s is not None
    return res, s


def simulate_args(
    out_path: Any,
    matrix: Any,
    coils: Any,
    groups: Any,
    noise: Any,
    seed: Any,
    phantom: Any,
    callback: Any,
) -> None:
    """Check :func:`~spurig_core.pipeline.simulate`'s argument types (ranges: the simulator)."""
    as_path(out_path, "out_path")
    for name, value in (("matrix", matrix), ("coils", coils), ("groups", groups), ("seed", seed)):
        _opt_int(value, name, none=False)
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, int | float)):
        raise InputError(f"noise: expected a number or None, got {noise!r:.40}")
    if not isinstance(phantom, str):
        raise InputError(f"phantom: expected 'brain' or 'analytic', got {_type(phantom)}")
    if callback is not None and not callable(callback):
        raise InputError(f"callback: expected a callable or None, got {_type(callback)}")
