"""The data term of a reconstruction, built once: ``A``, ``A^H b`` and ``‖b‖₂``.

Every method of :mod:`spurig_core.recon.methods` receives a :class:`DataTerm` and a
:class:`RunContext` and returns a :class:`MethodOutput`; none looks at the operator's type.
:func:`build_data_term` makes the term a method asks for:

``"nufft"``
    :class:`~spurig_core.operators.encoding.SubspaceNUFFTEncoding` of the acquired trajectory,
    with the same density weights ``w ∝ n(p)^{-γ}`` (``γ = encoding.density_compensation``,
    default 0.5) as the gridded term, computed on the grid of ``gridding.grid_oversampling``;
    the data are ``W^{1/2} b``.
``"gridded"``
    :class:`~spurig_core.operators.encoding.GriddedSubspaceEncoding` of the iGROG-gridded scan
    (gridded here, or reused from ``gridded``).  When the iGROG self-check fails and
    ``on_bad_gridding="fallback"``, the NUFFT term replaces it
    (:mod:`spurig_core.operators.igrog_check`).

The encoding settings are the model's (``encoding`` of its checkpoint) when the method uses a
model, updated by the ``[encoding]`` overrides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checkpoint import all_finite
from ..config import from_dict, to_dict
from ..data import Result, Scan
from ..errors import InputError
from ..operators.base import LinearOperator
from ..progress import Callback, emit

__all__ = [
    "DataTerm",
    "MethodOutput",
    "RunContext",
    "build_data_term",
    "coil_maps",
    "nufft_term",
    "scan_basis",
]


@dataclass(frozen=True, eq=False)
class DataTerm:
    """What a method reconstructs from.

    Attributes
    ----------
    op : LinearOperator
        The (density-weighted) encoding ``A`` from coefficients ``(basis, x, y, z)``.
    ahb : Tensor, shape (basis, x, y, z), complex64
        ``A^H b``.
    b_norm : float
        ``‖b‖₂`` of the (weighted) data, in float64 (the norm-matching ``‖b‖``).
    kind : {"gridded", "nufft"}
        Which encoding ``op`` is (a failed iGROG self-check may turn ``"gridded"`` into
        ``"nufft"``).
    started : float
        ``time.perf_counter()`` at which the method's runtime starts: before the NUFFT operator
        is built, or the end of the gridding minus its seconds (kernel training excluded, paper
        3.5).
    timings : dict
        ``gridding_s``, ``kernel_training_s`` (and ``gridding_reused``) of a gridded term.
    record : dict
        ``gridding`` and ``encoding`` settings (and the self-check) for the result's config.
    lipschitz : float or None
        ``‖A^H A‖₂`` of a gridded term, kept with the gridded data
        (:mod:`spurig_core.operators.step_size`; computed here when the gridding has none, its
        seconds in ``timings["step_size_s"]``); ``None``: the method runs its own power
        iteration (the NUFFT term).
    """

    op: LinearOperator
    ahb: torch.Tensor
    b_norm: float
    kind: str
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    lipschitz: float | None = None


@dataclass(frozen=True, eq=False)
class RunContext:
    """Everything else a method's run function may use.

    Attributes
    ----------
    duration : str
        The named duration nearest the number of groups (LLR threshold, model choice).
    overrides : dict
        The checked config overrides (``{"llr": {...}, ...}``).
    model : Any
        The :class:`~spurig_core.recon.trained.LoadedModel` of a method with a model, else None.
    scan : Scan
    basis : Tensor, shape (tr, basis), complex64
    device : torch.device
    save_iterations : bool
    callback : Callback or None
    """

    duration: str
    overrides: dict[str, Any]
    model: Any
    scan: Scan
    basis: torch.Tensor
    device: torch.device
    save_iterations: bool = False
    callback: Callback | None = None


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """What a method's run function returns.

    Attributes
    ----------
    coefficients : Tensor, shape (basis, x, y, z), complex64
    iterations : Tensor, shape (n, basis, x, y, z), complex64, or None
        The initialisation and every iterate (``save_iterations``).
    record : dict
        Entries for the result's config (e.g. ``{"llr": {...}}``, ``{"unroll": {...}}``).
    model_info : dict or None
        ``{"file": name, "sha256": hex}`` of the model used.
    """

    coefficients: torch.Tensor
    iterations: torch.Tensor | None = None
    record: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, str] | None = None

    def to_result(
        self,
        scan: Scan,
        method: str,
        groups: int,
        basis: torch.Tensor,
        device: str,
        runtime_s: float,
        config: dict[str, Any],
        timings: dict[str, float],
    ) -> Result:
        """Return the :class:`~spurig_core.data.Result` of the run (tensors on the CPU, complex64).

        Parameters
        ----------
        scan : Scan
            Its path and sha256 become the result's ``source``.
        method : str
            The method that ran (after a NUFFT fallback).
        groups : int
        basis : Tensor, shape (tr, basis), complex64
        device : str
            ``"cpu"`` or ``"cuda"``.
        runtime_s : float
        config : dict
            The result's config record.
        timings : dict
        """
        source = None
        if scan.path is not None:
            source = {"path": str(scan.path), "sha256": scan.sha256 or ""}
        return Result(
            coefficients=self.coefficients.detach().to("cpu", torch.complex64),
            basis=basis.detach().cpu(),
            method=method,
            groups=groups,
            runtime_s=runtime_s,
            device=device,
            voxel_size_mm=scan.voxel_size_mm,
            model=self.model_info,
            source=source,
            config=config,
            iterations=None if self.iterations is None else self.iterations.detach().cpu(),
            timings=dict(timings),
        )


def virtual_coils_for(
    scan: Scan, overrides: dict[str, Any], callback: Callback | None = None
) -> tuple[Scan, dict[str, Any]]:
    """Compress a scan with more than ``gridding.max_coils`` channels for every method.

    Returns
    -------
    scan : Scan
        The scan, or its :func:`~spurig_core.operators.coil_maps.virtual_coils` copy.
    record : dict
        ``{"coil_compression": {"acquired": C, "virtual": K}}`` when compressed, else ``{}``
        (kept in the result's config).
    """
    from ..operators.coil_maps import virtual_coils
    from ..operators.igrog import GriddingConfig

    gcfg = from_dict(GriddingConfig, overrides.get("gridding") or {}, where="gridding")
    out = virtual_coils(scan, gcfg.max_coils)
    if out is scan:
        return scan, {}
    line = f"{scan.n_coils} channels compressed to {out.n_coils} virtual coils (gridding.max_coils)"
    emit(callback, "coils", 1, 1, line)
    return out, {"coil_compression": {"acquired": scan.n_coils, "virtual": out.n_coils}}


def coil_maps(scan: Scan, device: torch.device, callback: Callback | None = None) -> torch.Tensor:
    """Return the scan's coil maps, or ESPIRiT maps from its calibration data.

    Returns
    -------
    Tensor, shape (coils, x, y, z), complex64, on ``device``
    """
    if scan.coil_maps is not None:
        return scan.coil_maps.to(device)
    if scan.calibration is None:
        raise InputError(
            f"{scan.path}: neither 'coil_maps' nor 'calibration' present; cannot get coil maps"
        )
    from ..operators.coil_maps import espirit

    emit(callback, "espirit", 0, 1, "estimating coil maps (ESPIRiT)")
    maps = espirit(scan.calibration, scan.matrix).to(device)
    emit(callback, "espirit", 1, 1)
    return maps


def scan_basis(scan: Scan, device: torch.device) -> torch.Tensor:
    """Return the balanced temporal basis of the scan's sequence.

    Returns
    -------
    Tensor, shape (tr, basis), complex64, on ``device``
    """
    from ..physics import default_basis

    basis = default_basis(scan.sequence)
    if basis.shape[0] != scan.n_tr:
        raise InputError(
            f"basis has {basis.shape[0]} time points but the scan has {scan.n_tr} repetitions"
        )
    return basis.to(device)


def _b_norm(b: torch.Tensor) -> float:
    if not all_finite(b):
        raise InputError("k-space: contains NaN or Inf")
    return float(torch.linalg.vector_norm(b.to(torch.complex128)))


def nufft_term(
    trajectory: torch.Tensor,
    maps: torch.Tensor,
    basis: torch.Tensor,
    kspace: torch.Tensor,
    *,
    density_compensation: float,
    grid_oversampling: float,
) -> tuple[LinearOperator, torch.Tensor, float]:
    """Build the density-weighted NUFFT data term.

    Parameters
    ----------
    trajectory : Tensor, shape (groups, tr, samples, 3), float32
        Cycles per FOV.
    maps : Tensor, shape (coils, x, y, z), complex64
    basis : Tensor, shape (tr, basis), complex64
    kspace : Tensor, shape (coils, groups, tr, samples), complex64
    density_compensation : float
        ``γ`` of the weights ``w ∝ n(p)^{-γ}``.
    grid_oversampling : float
        The grid that defines ``n(p)`` (the gridded term's).

    Returns
    -------
    op : SubspaceNUFFTEncoding
    ahb : Tensor, shape (basis, x, y, z), complex64
    b_norm : float
    """
    from ..operators.encoding import SubspaceNUFFTEncoding

    op = SubspaceNUFFTEncoding(
        trajectory,
        maps,
        basis,
        density_compensation=density_compensation,
        grid_oversampling=grid_oversampling,
    )
    b = op.data_values(kspace)
    b_norm = _b_norm(b)
    return op, op.adjoint(b), b_norm


def _reuse(gridded: Any, sub: Scan) -> tuple[Any, dict[str, float]]:
    n_groups, matrix = sub.n_groups, tuple(sub.matrix)
    if gridded.index.shape[0] < n_groups or tuple(gridded.matrix) != matrix:
        raise InputError(
            f"gridded data: {gridded.index.shape[0]} groups of a {gridded.matrix} matrix "
            f"do not cover {n_groups} groups of this {matrix} scan"
        )
    if int(gridded.values.shape[0]) != sub.n_coils:
        raise InputError(
            f"gridded data: {gridded.values.shape[0]} coils, the scan (after gridding.max_coils "
            f"compression) {sub.n_coils}: grid it with the same gridding.max_coils"
        )
    return gridded.first_groups(n_groups), {
        "gridding_s": 0.0,
        "kernel_training_s": 0.0,
        "gridding_reused": 1.0,
    }


def _warn_other_grid(gridded: Any, gcfg: Any, method: str) -> None:
    """Log a warning when a reused gridding is not on the grid ``gcfg`` asks for."""
    from ..operators.grid import grid_shape

    want = grid_shape(tuple(gridded.matrix), gcfg.grid_oversampling)
    if tuple(gridded.grid) != tuple(want):
        logging.getLogger("spurig").warning(
            "%s: the gridded data are on a %s grid; its settings (grid_oversampling %g) give %s",
            method or "method",
            "x".join(map(str, gridded.grid)),
            gcfg.grid_oversampling,
            "x".join(map(str, want)),
        )


def _step_size(
    gridded: Any, op: Any, maps: torch.Tensor, basis: torch.Tensor, timings: dict[str, float]
) -> tuple[float, dict[str, float]]:
    """``‖A^H A‖₂`` of the gridded term ``op``: the stored value, else computed now and stored.

    Returns the value and ``timings`` with ``step_size_s`` (0 when it was stored).
    """
    from ..operators.step_size import step_key, step_size_of, stored_step_size

    gamma = op.config.density_compensation
    key = step_key(int(gridded.index.shape[0]), gamma, maps, basis)
    lip = stored_step_size(gridded, key)
    seconds = 0.0
    if lip is None:
        t0 = time.perf_counter()
        lip = gridded.lipschitz[key] = step_size_of(op, maps)
        seconds = time.perf_counter() - t0
    return lip, {**timings, "step_size_s": seconds}


def build_data_term(
    kind: str,
    sub: Scan,
    maps: torch.Tensor,
    basis: torch.Tensor,
    *,
    overrides: dict[str, Any],
    encoding: dict[str, Any] | None = None,
    gridding: dict[str, Any] | None = None,
    gridded: Any = None,
    method: str = "",
    on_bad_gridding: str = "warn",
    callback: Callback | None = None,
) -> DataTerm:
    """Build the data term of ``kind`` for the scan ``sub`` (already cut to its groups).

    Parameters
    ----------
    kind : {"gridded", "nufft"}
        :attr:`~spurig_core.recon.methods.Method.data_term`.
    sub : Scan
        The scan's first ``groups`` groups.
    maps : Tensor, shape (coils, x, y, z), complex64
        Coil maps on the device to compute on.
    basis : Tensor, shape (tr, basis), complex64
    overrides : dict
        Checked ``{"gridding": {...}, "encoding": {...}}`` overrides.
    encoding : dict, optional
        The model's encoding settings (overridden by ``overrides["encoding"]``).
    gridding : dict, optional
        The gridding settings of the model's training data (overridden by
        ``overrides["gridding"]``): the scan is gridded as the model's inputs were.
    gridded : GriddedData, optional
        A gridding of at least ``groups`` groups to reuse (``kind="gridded"``); the caller
        grids it with the settings the method expects (e.g. the model's ``gridding``).
    method : str
        The method's name (for the self-check's wording).
    on_bad_gridding : {"warn", "fallback", "error"}
        See :func:`spurig_core.operators.igrog_check.apply_gridding_check`.
    callback : Callback, optional

    Returns
    -------
    DataTerm
    """
    from ..operators.encoding import EncodingConfig, GriddedSubspaceEncoding
    from ..operators.igrog import GriddingConfig, grid_scan
    from ..operators.igrog_check import apply_gridding_check

    dev = maps.device
    gcfg = from_dict(
        GriddingConfig,
        {"device": dev.type, **(gridding or {}), **(overrides.get("gridding") or {})},
        where="gridding",
    )
    ecfg = from_dict(
        EncodingConfig,
        {**(encoding or {}), **(overrides.get("encoding") or {})},
        where="encoding",
    )
    kspace = sub.kspace.to(dev)
    record: dict[str, Any] = {}
    timings: dict[str, float] = {}
    if kind == "gridded":
        if gridded is None:
            gridded, timings = grid_scan(sub, config=gcfg, callback=callback)
        else:
            gridded, timings = _reuse(gridded, sub)
            _warn_other_grid(gridded, gcfg, method)
        # the runtime includes gridding but not kernel training (paper 3.5)
        started = time.perf_counter() - timings.get("gridding_s", 0.0)
        bad = apply_gridding_check(gridded, method, on_bad_gridding, record, callback)
        # what the data were gridded with (a reused gridding's own settings where it has them)
        record["gridding"] = dict(gridded.settings or to_dict(gcfg))
        record["grid"] = [int(n) for n in gridded.grid]
        if not bad:
            gop = GriddedSubspaceEncoding(gridded.to(dev), maps, basis, config=ecfg)
            record["encoding"] = to_dict(ecfg)
            lip, timings = _step_size(gridded, gop, maps, basis, timings)
            return DataTerm(
                gop, gop.adjoint_data(), gop.data_norm(), "gridded", started, timings, record, lip
            )
    else:
        started = time.perf_counter()
    op, ahb, b_norm = nufft_term(
        sub.trajectory.to(dev),
        maps,
        basis,
        kspace,
        density_compensation=ecfg.density_compensation,
        grid_oversampling=gcfg.grid_oversampling,
    )
    record["encoding"] = to_dict(ecfg)
    if ecfg.density_compensation > 0:  # the grid the density weights were counted on
        record["density_grid_oversampling"] = float(gcfg.grid_oversampling)
    return DataTerm(op, ahb, b_norm, "nufft", started, timings, record)
