r"""The step size ``L = ‖A^H A‖₂`` of the gridded data term, computed once with the gridding.

``L`` depends on the trajectory (through the grid index), the density weights, the coil maps and
the temporal basis, never on the data.  It is computed where the gridded data are made and kept
with them (:attr:`~spurig_core.operators.grid.GriddedData.lipschitz`, and in the ``gridded.pt``
caches of :func:`spurig_core.benchmark.save_gridded`), so that no reconstruction runs a power
iteration (issue #14).

:func:`gram_norm` runs Lanczos on ``A^H A``; the stored value is its top Ritz value after at most
:data:`MAX_GRAMS` grams (stopping at a relative change below :data:`RTOL`).  Since session 16
(issue #14) it starts from the top eigenvector of the band-limited problem
(:mod:`~spurig_core.operators.band_limited`: the same kernels on the central 24³ grid points of a
64³ scan, a 16³ image, 30 cheap grams), resampled to the image: at 64³ three full grams instead of
five reach 0.99995 / 1.0002 of a 40-gram value at 2 min (γ = 0.75 / 0.5; before: 0.9982 /
0.9991), and at 30 s 0.948 / 1.0016 in three instead of seven (before: 0.889 / 0.974).  Since
session 28 it stops after :data:`FULL_GRAMS` = 2 full grams (within 0.07 % of three, except 1.4 %
at 2 groups of a 48³ scan; against a 40-gram Lanczos run from the same start 0.998 / 0.996 at
64³, 2 min, γ = 0.75 / 0.5, 0.947 at 30 s, where three reach 0.948).  Since session 29 the
models' data term (``γ ≥`` :data:`BAND_ONLY_GAMMA`) takes the band-limited value itself, with no
full gram (:func:`full_grams`): within 0.2 % of the 2-gram value from 4 groups up, nearer the
norm at 2 groups, 0.21–0.27 s instead of 0.96–1.14 s at 64³; LLR's γ = 0.5 keeps the 2 grams.
Where no block pays (images below 32³) it starts, as before, from the data-free,
coil-combined image of :func:`coil_start` in the basis direction of the central per-point
kernels.  A Ritz value never exceeds ``λ_max`` (the band-limited estimate was at most 0.06 %
above it); the top of this spectrum is clustered (many eigenvalues within 1 % of the largest),
so Lanczos creeps the last per cent: measured 0.8 % (32³, 4 groups),
0.15 % (48³) and 0.1 % (64³, 16 groups) below the converged norm at γ = 0.5 after 6, 5 and 5
grams, 2.4 %, 0.3 % and 0.2 % at the shipped models' γ = 0.75 after 7, 6 and 6 grams, but 11 %
below a 30-gram value at 64³, 4 groups, γ = 0.75 (``benchmarks/RESULTS.md``, sessions 9 and 13):
at or above the unroll's former 8 power iterations from ``A^H b`` where both were measured (by
0.2–0.6 %), with which the shipped models' steps ``exp(ρ_i)/L`` were learned.
Margins are the consumers': FISTA-LLR uses ``lipschitz_safety · L`` (1.02, as before), the unroll
and ``dc-only`` use ``L`` itself (a gradient step of ``1/L`` is stable up to ``2/‖A^H A‖``).

Keys (:func:`step_key`) name the number of groups, the density exponent ``γ`` and a checksum of the
coil maps and basis, so a value is only reused for the operator it was computed for; a missing key
(e.g. a cache written before issue #14) means the value is computed when the data term is built,
and logged at debug level.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from ..errors import InputError
from .base import LinearOperator

__all__ = [
    "BAND_GRAMS",
    "BAND_ONLY_GAMMA",
    "FULL_GRAMS",
    "MAX_GRAMS",
    "RTOL",
    "WIDE_GRAMS",
    "attach_for_scan",
    "attach_step_sizes",
    "coil_start",
    "full_grams",
    "gram_norm",
    "step_key",
    "step_plan",
    "step_size_of",
    "stored_step_size",
    "top_ritz_pair",
]

_log = logging.getLogger("spurig")

#: Stopping tolerance of the stored value's Lanczos run (relative change of the Ritz value).
#: 3e-3 since 2026-12-06 (session 14): one gram fewer than 1e-3 at 64³ (5 / 5 / 6 grams at 2 min
#: γ = 0.75 / 2 min γ = 0.5 / 30 s γ = 0.75), with values at or above those of the code before
#: the centre-direction start (``benchmarks/RESULTS.md``, session 13).
RTOL = 3e-3
#: At most this many grams for a stored value (the unroll once spent 8 on its power iteration).
#: 7 since 2026-12-06: at 30 s (4 groups, 64³) the top of the spectrum is too flat for the
#: tolerance to stop the run from the centre-direction start (the 8th gram still adds 0.5 %), and
#: running on to 10 cost 2.3 s of the bench (``benchmarks/RESULTS.md``, session 13); at 2 min the
#: tolerance stops it at 5–6.
MAX_GRAMS = 7
#: At most this many grams of the band-limited block (:func:`step_size_of`; 24³ FFTs at 64³).
BAND_GRAMS = 30
#: Grams of the full operator after the band-limited start (:func:`step_size_of`).  2 since
#: session 28 (issue 14): the third gram moved the value by 0.02–0.07 % at 48³ and 64³, 2 min and
#: 30 s, γ = 0.75 and 0.5, and 1.4 % only on a 48³ 15-s scan (2 groups, 0.958 → 0.972 of a
#: 40-gram value); one gram fewer is 0.47 s of a 64³ reconstruction (``benchmarks/RESULTS.md``).
FULL_GRAMS = 2
#: Data terms with a density exponent ``γ`` at least this take the band-limited value itself,
#: ``(N/m)³ · λ_max(A_m^H A_m)``, with no full gram (:func:`full_grams`).  Session 29 (issue 14):
#: at the models' ``γ = 0.75`` it is within 0.2 % of the 2-gram value at 4–16 groups (32³, 48³,
#: 64³, the unseen 14-coil scan) and closer to a 40-gram value than it at 2 groups (0.983 vs
#: 0.958 at 48³, 0.857 vs 0.844 at 32³), at most 0.06 % above it; at LLR's ``γ = 0.5`` it is
#: 1.5–3.5 % low, and FISTA needs ``L ≥ ‖A^H A‖``, so the full grams stay there
#: (``benchmarks/RESULTS.md``, sessions 28 and 29).
BAND_ONLY_GAMMA = 0.75


#: Grams of a Lanczos run from a random start that also bounds the stored value from below for
#: ``γ >`` :data:`BAND_ONLY_GAMMA` (:func:`step_size_of`).  There the density weights flatten the
#: k-space centre and the top of ``A^H A``'s spectrum moves to the periphery, which neither the
#: band-limited block nor a Lanczos run started from it reaches: at γ = 0.85 / 1.0 (64³, 2 min)
#: both gave 0.72–0.73 / 0.45–0.47 of the norm, a random start 0.88 after 7 grams and 0.998 /
#: 0.9995 after 15 (session 29).  Only user settings get there: the models use 0.75, LLR 0.5.
WIDE_GRAMS = 16


def full_grams(gamma: float) -> int:
    """Return the full grams after the band-limited start for density exponent ``gamma``.

    ``0`` (the band-limited value is the estimate) where ``gamma ≥`` :data:`BAND_ONLY_GAMMA`,
    else :data:`FULL_GRAMS`.
    """
    return 0 if float(gamma) >= BAND_ONLY_GAMMA else FULL_GRAMS


def gram_norm(
    op: LinearOperator,
    *,
    rtol: float = RTOL,
    max_iters: int = 60,
    min_iters: int = 4,
    seed: int = 0,
    device: torch.device | str | None = None,
    x0: torch.Tensor | None = None,
) -> tuple[float, int]:
    """``λ_max(A^H A) = ‖A‖₂²`` by Lanczos on ``op.gram`` from a fixed random start.

    Plain three-term Lanczos without reorthogonalisation: lost orthogonality only produces
    copies of converged Ritz values, never a top value above ``λ_max``.

    Parameters
    ----------
    op : LinearOperator
        Operator with a known ``in_shape`` (e.g. ``(basis, x, y, z)``).
    rtol : float
        Stop when the top Ritz value changes by less than this relative amount.
    max_iters : int
        Maximum number of grams.
    seed : int
        Seed of the complex64 Gaussian start vector (drawn on the CPU).
    min_iters : int
        Grams before the stopping test applies.
    device : torch.device or str, optional
        Where to compute (default: the operator's ``device`` attribute, else the CPU).
    x0 : Tensor, shape in_shape, optional
        Start vector (default: the seeded Gaussian; :func:`coil_start` converges faster).

    Returns
    -------
    value : float
        The top Ritz value (a lower bound of ``λ_max`` that converges to it).
    grams : int
        The number of grams applied.
    """
    if op.in_shape is None:
        raise InputError(f"{op.name}: gram_norm needs an operator with a known in_shape")
    dev = device if device is not None else getattr(op, "device", "cpu")
    if x0 is None:
        gen = torch.Generator().manual_seed(int(seed))
        x0 = torch.randn(tuple(op.in_shape), dtype=torch.complex64, generator=gen)
    v = x0.to(dev, torch.complex64)
    v = v / torch.linalg.vector_norm(v)
    v_prev = torch.zeros_like(v)
    alphas: list[float] = []
    betas: list[float] = []
    theta = 0.0
    with torch.no_grad():
        for j in range(max_iters):
            w = op.gram(v)
            a = float(torch.vdot(v.reshape(-1), w.reshape(-1)).real)
            w.sub_(v, alpha=a)
            if betas:
                w.sub_(v_prev, alpha=betas[-1])
            alphas.append(a)
            new = _top_ritz(alphas, betas)
            b = float(torch.linalg.vector_norm(w))
            done = j + 1 >= min_iters and abs(new - theta) <= rtol * abs(new)
            theta = new
            if done or b <= 1e-7 * max(abs(new), 1e-30):
                return theta, j + 1
            betas.append(b)
            v_prev, v = v, w.div_(b)
    return theta, max_iters


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """Return the Lanczos tridiagonal matrix (float64) of the first ``len(alphas)`` steps."""
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _top_ritz(alphas: list[float], betas: list[float]) -> float:
    """Largest eigenvalue of the Lanczos tridiagonal matrix."""
    return float(torch.linalg.eigvalsh(_tridiagonal(alphas, betas))[-1])


def coil_start(
    maps: torch.Tensor, n_basis: int, direction: torch.Tensor | None = None
) -> torch.Tensor:
    """Data-free Lanczos start ``x0[k] = v_k Σ_c conj(S_c)``.

    A smooth, coil-combined image: its k-space sits at the densely sampled centre, where the top
    eigenvectors of ``A^H A`` live (like ``A^H b``'s, without the data).

    Parameters
    ----------
    maps : Tensor, shape (coils, x, y, z), complex64
    n_basis : int
    direction : Tensor, shape (n_basis,), complex64, optional
        The basis-space direction ``v`` (default: equal coefficients); the gridded encoding's
        :meth:`~.encoding.GriddedSubspaceEncoding.centre_direction` gives Ritz values closer to
        the norm at the same number of grams (issue #14; it does not save a gram under
        :data:`RTOL`).

    Returns
    -------
    Tensor, shape (n_basis, x, y, z), complex64
    """
    c = maps.to(torch.complex64).conj().sum(0)
    if direction is None:
        return c.expand(int(n_basis), *c.shape).contiguous()
    return direction.to(c.device, torch.complex64).reshape(-1, 1, 1, 1) * c


def step_size_of(op: Any, maps: torch.Tensor) -> float:
    """Compute the stored kind of ``‖A^H A‖₂`` for a gridded encoding ``op`` with maps ``maps``.

    Two stages where :func:`~.band_limited.band_limited` finds a central block: Lanczos on the
    block's encoding (:data:`BAND_GRAMS` grams at most, a 24³ FFT each at 64³) gives the top
    eigenvector of the band-limited problem; resampled to the image, it starts :func:`gram_norm`
    on ``op`` for :func:`full_grams` grams (:data:`FULL_GRAMS`).  Where that is none (the
    models' ``γ = 0.75``) the value is the block's top Ritz value scaled by ``(N/m)³``: an
    estimate, measured at most 0.06 % above ``λ_max``.
    Otherwise one stage from :func:`coil_start` in the direction of the operator's
    ``centre_direction()``.  With full grams the value is a Ritz value of ``op`` itself, so
    never above ``λ_max`` (see the module notes).  For ``γ >`` :data:`BAND_ONLY_GAMMA` (user
    settings only) it is at least the value of :data:`WIDE_GRAMS` grams from a random start.
    """
    from .band_limited import band_limited, resample
    from .encoding import GriddedSubspaceEncoding

    direction = op.centre_direction() if hasattr(op, "centre_direction") else None
    band = band_limited(op, maps) if isinstance(op, GriddedSubspaceEncoding) else None
    gamma = float(op.config.density_compensation) if hasattr(op, "config") else 0.0
    if band is None:
        value, _ = gram_norm(op, max_iters=MAX_GRAMS, x0=coil_start(maps, op.n_basis, direction))
    else:
        lo, lo_maps, scale = band
        start = coil_start(lo_maps, op.n_basis, direction)
        lo_value, lo_vector = top_ritz_pair(lo, start, BAND_GRAMS)
        full = full_grams(gamma)
        value = lo_value * scale
        if full:
            x0 = resample(lo_vector, op.matrix)
            value, _ = gram_norm(op, max_iters=full, min_iters=full, x0=x0)
    if gamma > BAND_ONLY_GAMMA:  # the top of the spectrum may lie away from the centre
        wide, _ = gram_norm(op, max_iters=WIDE_GRAMS, min_iters=WIDE_GRAMS, rtol=0.0)
        value = max(value, wide)
    return value


def top_ritz_pair(
    op: LinearOperator, x0: torch.Tensor, max_iters: int, rtol: float = 1e-4
) -> tuple[float, torch.Tensor]:
    """Top Ritz value and vector of ``A^H A`` by Lanczos with full reorthogonalisation.

    For small operators (the band-limited block of :func:`step_size_of`): every Lanczos vector
    is kept.  Stops after ``max_iters`` grams or when the value changes by less than ``rtol``.

    Parameters
    ----------
    op : LinearOperator
    x0 : Tensor, shape in_shape, complex64
        Start vector.
    max_iters : int
    rtol : float

    Returns
    -------
    value : float
    vector : Tensor, shape in_shape, complex64
        Unit norm.
    """
    v = x0.to(torch.complex64) / torch.linalg.vector_norm(x0)
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    theta = 0.0
    with torch.no_grad():
        for j in range(max_iters):
            basis.append(v)
            w = op.gram(v)
            alphas.append(float(torch.vdot(v.reshape(-1), w.reshape(-1)).real))
            for u in basis:  # full reorthogonalisation (the vectors are small)
                w.sub_(u * torch.vdot(u.reshape(-1), w.reshape(-1)))
            new = _top_ritz(alphas, betas)
            b = float(torch.linalg.vector_norm(w))
            if (j >= 3 and abs(new - theta) <= rtol * abs(new)) or b <= 1e-7 * abs(new):
                theta = new
                break
            theta = new
            betas.append(b)
            v = w.div_(b)
    y = torch.linalg.eigh(_tridiagonal(alphas, betas)).eigenvectors[:, -1].to(torch.complex64)
    vec = torch.zeros_like(basis[0])
    for yi, u in zip(y, basis, strict=False):
        vec.add_(u * yi)
    return theta, vec / torch.linalg.vector_norm(vec)


def step_key(groups: int, gamma: float, maps: torch.Tensor, basis: torch.Tensor) -> str:
    """Key of a stored step size: groups, density exponent and a checksum of maps and basis.

    Parameters
    ----------
    groups : int
    gamma : float
        ``encoding.density_compensation``.
    maps : Tensor, shape (coils, x, y, z), complex64
    basis : Tensor, shape (tr, basis), complex64
    """
    sm = float(torch.linalg.vector_norm(torch.view_as_real(maps), dtype=torch.float64))
    sb = float(torch.linalg.vector_norm(torch.view_as_real(basis), dtype=torch.float64))
    return f"g{int(groups)}|gamma{float(gamma):g}|c{maps.shape[0]}|s{sm:.5e}|b{sb:.5e}"


def stored_step_size(gridded: Any, key: str) -> float | None:
    """Return the stored ``L`` of ``key`` on a :class:`~.grid.GriddedData`, or None."""
    table = getattr(gridded, "lipschitz", None) or {}
    value = table.get(key)
    if value is None:
        _log.debug("no stored step size for %s: computing it now (Lanczos)", key)
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0.0 else None


def attach_step_sizes(
    gridded: Any,
    maps: torch.Tensor,
    basis: torch.Tensor,
    *,
    groups: list[int] | tuple[int, ...],
    config: Any = None,
) -> float:
    """Compute ``L`` for each number of groups (that fits) and store it on ``gridded``.

    Parameters
    ----------
    gridded : GriddedData
        Its ``lipschitz`` dict is filled in place (values already there are kept).
    maps : Tensor, shape (coils, x, y, z), complex64
        Coil maps on the device to compute on.
    basis : Tensor, shape (tr, basis), complex64
    groups : sequence of int
        Group counts (e.g. the SPEC durations' 48, 16, 8, 4); those above the gridded groups are
        skipped.
    config : EncodingConfig, optional
        The encoding settings (its ``density_compensation``).

    Returns
    -------
    float
        Seconds of the Lanczos runs.  The operators' construction is not counted: the
        reconstruction that reads the value builds the same operator for its data term, and in
        one process (``spurig recon``) the step size is computed with that very operator
        (:func:`~spurig_core.recon.data_term.build_data_term`), so a run that grids here and
        reconstructs elsewhere (``spurig bench``) would otherwise charge it twice.
    """
    from .encoding import EncodingConfig, GriddedSubspaceEncoding

    cfg = config or EncodingConfig()
    seconds = 0.0
    total = int(gridded.index.shape[0])
    for g in sorted({int(n) for n in groups if 0 < int(n) <= total}):
        key = step_key(g, cfg.density_compensation, maps, basis)
        if key in gridded.lipschitz:
            continue
        op = GriddedSubspaceEncoding(
            gridded.first_groups(g).to(maps.device), maps, basis, config=cfg
        )
        t0 = time.perf_counter()
        gridded.lipschitz[key] = step_size_of(op, maps)
        seconds += time.perf_counter() - t0
    return seconds


def step_plan(
    methods: list[str] | tuple[str, ...],
    groups: list[int] | tuple[int, ...],
    *,
    overrides: dict[str, Any] | None = None,
    model: str | None = None,
) -> list[tuple[int, Any]]:
    """List the (groups, encoding) pairs whose step sizes the gridded ``methods`` will read.

    The encoding is a model's own (``density_compensation`` 0.75 for the shipped models) for a
    method with a model, the default (0.5) for LLR, each updated by ``overrides["encoding"]``
    (what :func:`~spurig_core.recon.data_term.build_data_term` builds).  A method without a model
    for a duration is skipped (it will fail on its own).

    Returns
    -------
    list of (int, EncodingConfig)
        One entry per distinct (groups, density exponent).
    """
    from ..config import from_dict
    from ..durations import nearest_duration
    from ..errors import SpurigError
    from ..recon.methods import METHODS
    from ..recon.trained import model_encoding, resolve_model
    from .encoding import EncodingConfig

    extra = dict((overrides or {}).get("encoding") or {})
    plan: dict[tuple[int, float], Any] = {}
    for m in methods:
        entry = METHODS.get(m)
        if entry is None or not entry.gridded:
            continue
        for g in groups:
            enc: dict[str, Any] = {}
            if entry.needs_model:
                try:
                    path = resolve_model(model, method=m, duration=nearest_duration(int(g)))
                except SpurigError:
                    continue
                enc = model_encoding(path)
            cfg = from_dict(EncodingConfig, {**enc, **extra}, where="encoding")
            plan.setdefault((int(g), float(cfg.density_compensation)), cfg)
    return [(g, cfg) for (g, _), cfg in sorted(plan.items())]


def attach_for_scan(
    gridded: Any,
    scan: Any,
    plan: list[tuple[int, Any]],
    *,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """:func:`attach_step_sizes` for each entry of ``plan`` with the scan's coil maps and basis.

    Parameters
    ----------
    gridded : GriddedData
        The scan's gridding.
    scan : Scan
        Its coil maps (or calibration, for ESPIRiT) and sequence.
    plan : list of (int, EncodingConfig)
        From :func:`step_plan`; group counts above the gridding's are skipped.
    device : torch.device or str

    Returns
    -------
    dict of str to float
        Seconds: ``step_size_s:<γ>`` per density exponent (the Lanczos runs that one method's
        data term reads, without building the operator: see :func:`attach_step_sizes`),
        ``step_size_s`` their sum, and ``step_size_wall_s`` all of it (coil maps, basis and the
        operators' construction included).
    """
    from ..recon.data_term import coil_maps, scan_basis

    t0 = time.perf_counter()
    out: dict[str, float] = {}
    if plan:
        dev = torch.device(device)
        maps = coil_maps(scan, dev)
        basis = scan_basis(scan, dev)
        for g, cfg in plan:
            name = f"step_size_s:{float(cfg.density_compensation):g}"
            secs = attach_step_sizes(gridded, maps, basis, groups=(g,), config=cfg)
            out[name] = out.get(name, 0.0) + secs
    out["step_size_s"] = sum(out.values())
    out["step_size_wall_s"] = time.perf_counter() - t0
    return out
