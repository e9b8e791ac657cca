r"""Classical reconstructions: the norm-matched adjoint and FISTA with the LLR prior (paper 2.5).

Both work with any :class:`~spurig_core.operators.base.LinearOperator` encoding ``A`` of the
subspace coefficients ``(basis, x, y, z)``: the iGROG-gridded encoding (``--method llr``, FFTs
only) or the NUFFT encoding (``--method llr-nufft``, the paper's slow baseline).

Scales
------
*Adjoint* (appendix A.1): ``s·A^H b`` with ``s = ‖b‖₂ / ‖A A^H b‖₂``, which aligns the norm of the
initialisation's k-space with the measured one. ``‖A A^H b‖₂² = ⟨A^H b, A^H A A^H b⟩`` is computed
with one gram, so only ``A^H b`` and ``‖b‖₂`` are needed.

*LLR threshold*: the paper's thresholds (A.5) refer to its own data normalisation. Here a threshold
``τ`` is made independent of the scale of ``b`` and of ``A``: with ``L₀ = ‖A‖₂²`` and
``x₀ = s·A^H b``, the objective is

.. math::  ½‖A x − b‖² + λ \sum_p ‖P_p x‖_*,\qquad λ = τ · m · L₀,

where ``m = max_r ‖x₀(r)‖₂`` is the largest voxel magnitude (ℓ2 over the basis) of the norm-matched
adjoint (``threshold_reference="max"``). Equivalently, for the operator normalised to ``‖A‖₂ = 1``
and the image normalised so that ``x₀`` has unit maximum magnitude, ``τ`` is the singular-value
threshold per unit step (the convention of sigpy / mr_recon style LLR code).
``threshold_reference="absolute"`` drops ``m``: ``λ = τ·√L₀``, i.e. ``τ`` is the threshold in the
units of the normalised operator with ``b`` as given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..errors import InputError
from ..operators.base import LinearOperator
from ..progress import Callback, emit
from .data_term import DataTerm, MethodOutput, RunContext
from .fista import fista, lipschitz_constant
from .llr import LLRConfig, LocallyLowRank

__all__ = [
    "LLRResult",
    "TuneCase",
    "TuneResult",
    "adjoint_recon",
    "llr_recon",
    "norm_matching",
    "norm_matching_scale",
    "run_adjoint",
    "run_llr",
    "tune_llr_threshold",
]


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what}: contains NaN or Inf")


def norm_matching_scale(op: LinearOperator, ahb: torch.Tensor, b_norm: float) -> float:
    """``s = ‖b‖₂ / ‖A A^H b‖₂`` (paper appendix A.1), from ``A^H b`` and ``‖b‖₂``.

    Parameters
    ----------
    op : LinearOperator
        The encoding ``A``; one ``op.gram`` is applied.
    ahb : Tensor, shape (basis, x, y, z), complex64
        ``A^H b``.
    b_norm : float
        ``‖b‖₂`` of the measured (or gridded) k-space.
    """
    return norm_matching(op, ahb, b_norm)[0]


def norm_matching(
    op: LinearOperator, ahb: torch.Tensor, b_norm: float
) -> tuple[float, torch.Tensor]:
    """:func:`norm_matching_scale` and the gram it applied, ``A^H A A^H b``.

    A method that starts from ``x0 = s · A^H b`` gets its first gradient's gram as
    ``s · A^H A A^H b`` from here instead of applying the gram again (issue #14).

    Returns
    -------
    s : float
    gram : Tensor, shape (basis, x, y, z), complex64
        ``A^H A A^H b``.
    """
    if not (b_norm >= 0.0 and math.isfinite(b_norm)):
        raise InputError(f"adjoint: ‖b‖ must be finite and >= 0, got {b_norm}")
    g = op.gram(ahb)
    energy = float(torch.sum((ahb.conj() * g).real, dtype=torch.float64))
    if energy <= 0.0 or b_norm == 0.0:
        raise InputError(f"{op.name}: A A^H b is zero; the k-space data are empty")
    return b_norm / math.sqrt(energy), g


def adjoint_recon(
    op: LinearOperator,
    b: torch.Tensor | None = None,
    *,
    ahb: torch.Tensor | None = None,
    b_norm: float | None = None,
    scale: bool = True,
) -> torch.Tensor:
    """Return the norm-matched adjoint reconstruction ``s·A^H b`` (``--method adjoint``).

    Give the k-space ``b`` (shape ``op.out_shape``), or ``ahb = A^H b`` with ``b_norm = ‖b‖₂``, or
    both ``b`` and a precomputed ``ahb`` (then ``‖b‖₂`` is taken from ``b``).  A gridded encoding
    carries its data: pass ``ahb=op.adjoint_data(), b_norm=op.data_norm()``
    (:class:`~spurig_core.recon.data_term.DataTerm` holds all three).

    Parameters
    ----------
    op : LinearOperator
        Encoding from coefficients ``(basis, x, y, z)`` to k-space.
    b : Tensor, shape out_shape, complex64, optional
        Measured k-space.
    ahb : Tensor, shape (basis, x, y, z), complex64, optional
        Precomputed ``A^H b``.
    b_norm : float, optional
        ``‖b‖₂`` when ``b`` is not given.
    scale : bool
        Apply the norm-matching scale ``s`` (appendix A.1); ``False`` returns ``A^H b``.

    Returns
    -------
    Tensor, shape (basis, x, y, z), complex64
    """
    ahb, b_norm = _adjoint_and_norm(op, b, ahb, b_norm)
    if not scale:
        return ahb.to(torch.complex64)
    return (norm_matching_scale(op, ahb, b_norm) * ahb).to(torch.complex64)


def _adjoint_and_norm(
    op: LinearOperator, b: torch.Tensor | None, ahb: torch.Tensor | None, b_norm: float | None
) -> tuple[torch.Tensor, float]:
    if b is not None:
        _check_finite(b, "k-space")
        if ahb is None:
            ahb = op.adjoint(b)
        b_norm = float(torch.linalg.vector_norm(b.to(torch.complex128)))
    if ahb is None or b_norm is None:
        raise InputError(
            f"{op.name}: give the k-space b, or A^H b with ‖b‖ (b_norm); a gridded encoding "
            "carries its own: ahb=op.adjoint_data(), b_norm=op.data_norm()"
        )
    if op.in_shape is not None and tuple(ahb.shape) != op.in_shape:
        raise InputError(f"{op.name}: A^H b has shape {tuple(ahb.shape)}, expected {op.in_shape}")
    _check_finite(ahb, "A^H b")
    return ahb, float(b_norm)


def run_adjoint(term: DataTerm, ctx: RunContext) -> MethodOutput:
    """Run ``--method adjoint``: :func:`adjoint_recon` of the data term (registry run function)."""
    coeffs = adjoint_recon(term.op, ahb=term.ahb, b_norm=term.b_norm)
    return MethodOutput(coeffs, coeffs[None].clone() if ctx.save_iterations else None)


def run_llr(term: DataTerm, ctx: RunContext) -> MethodOutput:
    """Run ``--method llr`` / ``llr-nufft`` (registry run function).

    That is :func:`llr_recon` with the duration's threshold and the ``[llr]`` overrides.
    """
    out = llr_recon(
        term.op,
        ahb=term.ahb,
        b_norm=term.b_norm,
        duration=ctx.duration,
        overrides=ctx.overrides.get("llr"),
        gram_norm=term.lipschitz,  # stored with the gridding (issue #14); None: power iteration
        save_iterations=ctx.save_iterations,
        callback=ctx.callback,
    )
    return MethodOutput(out.coefficients, out.iterations, {"llr": out.config})


@dataclass(frozen=True, eq=False)
class LLRResult:
    """What :func:`llr_recon` returns.

    Attributes
    ----------
    coefficients : Tensor, shape (basis, x, y, z), complex64
        The reconstruction (on the device of ``A^H b``).
    iterations : Tensor, shape (iterations + 1, basis, x, y, z), complex64, or None
        The initialisation and every FISTA iterate (``save_iterations=True``), on the CPU.
    threshold : float
        The relative threshold ``τ`` used.
    lam : float
        The regularisation weight ``λ`` of the objective in the units of ``A`` and ``b``.
    lipschitz : float
        ``L = safety·‖A‖₂²`` (FISTA step ``1/L``).
    scale : float
        The norm-matching scale ``s`` of the initialisation.
    runtime_s : float
        Wall time of the reconstruction (power iteration, scale, FISTA).
    config : dict
        ``to_dict`` of the :class:`LLRConfig` used, plus ``threshold_used`` (``τ``) and ``lam``
        (``λ``): what the result store records.
    settings : LLRConfig
        The settings used.
    """

    coefficients: torch.Tensor
    iterations: torch.Tensor | None
    threshold: float
    lam: float
    lipschitz: float
    scale: float
    runtime_s: float
    config: dict[str, Any]
    settings: LLRConfig


def llr_recon(
    op: LinearOperator,
    b: torch.Tensor | None = None,
    *,
    ahb: torch.Tensor | None = None,
    b_norm: float | None = None,
    config: LLRConfig | None = None,
    overrides: dict[str, Any] | None = None,
    duration: str | None = None,
    groups: int | None = None,
    threshold: float | None = None,
    gram_norm: float | None = None,
    callback: Callback | None = None,
    save_iterations: bool = False,
) -> LLRResult:
    """FISTA with the LLR prior (``--method llr`` / ``llr-nufft``; paper 2.5, appendix A.5).

    Solves ``min_x ½‖A x − b‖² + λ Σ_p ‖P_p x‖_*`` with ``config.iterations`` FISTA iterations
    (step ``1/L``, ``L`` from power iteration), the patch grid shifted at random at every
    iteration. Initialised with the norm-matched adjoint ``s·A^H b`` (``config.init="adjoint"``,
    the default, as SPUR-iG is) or with zeros (``"zeros"``). See the module notes for the
    threshold scale. The data enter only as ``A^H b`` and ``‖b‖₂`` (computed from ``b`` when
    given).

    Parameters
    ----------
    op : LinearOperator
        Encoding ``A`` from coefficients ``(basis, x, y, z)``; only ``op.gram`` is applied in the
        loop.
    b : Tensor, shape out_shape, complex64, optional
        k-space (used for ``A^H b`` when ``ahb`` is not given, and for ``‖b‖₂``).
    ahb : Tensor, shape (basis, x, y, z), complex64, optional
        Precomputed ``A^H b``, on the device to compute on.
    b_norm : float, optional
        ``‖b‖₂`` when ``b`` is not given.
    config : LLRConfig, optional
        Settings (defaults: the paper's).
    overrides : dict, optional
        Field values replacing those of ``config`` (e.g. the ``[llr]`` table of a TOML file).
    duration : str, optional
        ``"6min"``, ``"2min"``, ``"1min"`` or ``"30s"``: picks ``config.thresholds[duration]``.
    groups : int, optional
        Number of groups; picks the threshold of the nearest duration (when ``duration`` is None).
    threshold : float, optional
        The relative threshold ``τ`` itself (wins over ``duration`` and ``groups``).
    gram_norm : float, optional
        ``‖A‖₂²`` computed beforehand (stored with the gridding, issue #14): ``L`` is then
        ``lipschitz_safety · gram_norm`` without a power iteration.
    callback : callable, optional
        Progress events (stage ``"llr"``) with the current iterate as ``data``; may raise
        :class:`~spurig_core.errors.Cancelled`.
    save_iterations : bool
        Keep the initialisation and every iterate (on the CPU).

    Returns
    -------
    LLRResult
    """
    if overrides:
        base = to_dict(config or LLRConfig())
        config = from_dict(LLRConfig, {**base, **dict(overrides)}, where="llr")
    cfg = config or LLRConfig()
    tau = (
        float(threshold)
        if threshold is not None
        else cfg.threshold_for(duration=duration, groups=groups)
    )
    if tau < 0 or not math.isfinite(tau):
        raise InputError(f"llr: threshold must be finite and >= 0, got {tau}")
    t0 = time.perf_counter()
    ahb, b_norm = _adjoint_and_norm(op, b, ahb, b_norm)
    if ahb.ndim != 4:
        raise InputError(f"llr: A^H b must be (basis, x, y, z), got shape {tuple(ahb.shape)}")
    ahb = ahb.to(torch.complex64)
    if gram_norm is not None and gram_norm > 0.0:
        lip = cfg.lipschitz_safety * float(gram_norm)
    else:
        emit(callback, "llr", 0, cfg.iterations, "power iteration")
        lip = lipschitz_constant(
            op, ahb, iters=cfg.power_iterations, safety=cfg.lipschitz_safety, seed=cfg.seed
        )
    l0 = lip / cfg.lipschitz_safety
    s = norm_matching_scale(op, ahb, b_norm)
    x0 = s * ahb
    if cfg.threshold_reference == "max":
        m = float(torch.linalg.vector_norm(x0, dim=0).max())
        lam = tau * m * l0
    else:
        lam = tau * math.sqrt(l0)
    if cfg.init == "zeros":
        x0 = torch.zeros_like(ahb)
    prox = LocallyLowRank(
        lam, block=cfg.block, random_shift=cfg.random_shift, seed=cfg.seed, method=cfg.method
    )
    res = fista(
        op,
        ahb,
        prox=prox,
        iterations=cfg.iterations,
        x0=x0,
        lipschitz=lip,
        save_iterations=save_iterations,
        callback=callback,
        stage="llr",
    )
    record = {**to_dict(cfg), "threshold_used": tau, "lam": lam}
    return LLRResult(
        coefficients=res.x,
        iterations=res.iterations,
        threshold=tau,
        lam=lam,
        lipschitz=lip,
        scale=s,
        runtime_s=time.perf_counter() - t0,
        config=record,
        settings=cfg,
    )


@dataclass(frozen=True, eq=False)
class TuneCase:
    """One validation scan for :func:`tune_llr_threshold`.

    Attributes
    ----------
    op : LinearOperator
        Its encoding.
    ahb : Tensor, shape (basis, x, y, z), complex64
        ``A^H b``.
    b_norm : float
        ``‖b‖₂`` (a gridded encoding's ``op.data_norm()``).
    reference : Any
        Whatever the scoring callable compares with (e.g. reference coefficients or maps).
    """

    op: LinearOperator
    ahb: torch.Tensor
    b_norm: float
    reference: Any


@dataclass(frozen=True)
class TuneResult:
    """Outcome of :func:`tune_llr_threshold`.

    Attributes
    ----------
    best : float
        The threshold with the lowest mean score.
    scores : dict of float to float
        Mean score (over the cases) of every threshold tried.
    """

    best: float
    scores: dict[float, float]


def tune_llr_threshold(
    cases: TuneCase | Sequence[TuneCase],
    *,
    thresholds: Sequence[float],
    score: Callable[[torch.Tensor, Any], float],
    config: LLRConfig | None = None,
    callback: Callback | None = None,
) -> TuneResult:
    """Grid search of the LLR threshold on validation scans (paper 2.5).

    The paper tunes the weight per scan duration to minimise the sum of the mean relative T1 and
    T2 errors in white and grey matter; pass a ``score`` that matches the reconstruction and
    computes that (lower is better), and the validation scans of one duration as ``cases``.

    Parameters
    ----------
    cases : TuneCase or sequence of TuneCase
        Validation scans (all of one duration).
    thresholds : sequence of float
        Relative thresholds ``τ`` to try (see :func:`llr_recon`).
    score : callable ``score(coefficients, reference) -> float``
        Lower is better; ``coefficients`` has shape (basis, x, y, z).
    config : LLRConfig, optional
        Everything else (iterations, block, seed, ...).
    callback : callable, optional
        One event per reconstruction (stage ``"tune"``), with ``threshold`` and ``score`` metrics.

    Returns
    -------
    TuneResult
    """
    if isinstance(cases, TuneCase):
        cases = [cases]
    cases = list(cases)
    taus = [float(t) for t in thresholds]
    if not cases or not taus:
        raise InputError("tune: need at least one case and one threshold")
    cfg = config or LLRConfig()
    total = len(cases) * len(taus)
    scores: dict[float, float] = {}
    done = 0
    for tau in taus:
        values = []
        for case in cases:
            res = llr_recon(case.op, ahb=case.ahb, b_norm=case.b_norm, config=cfg, threshold=tau)
            values.append(float(score(res.coefficients, case.reference)))
            done += 1
            emit(
                callback, "tune", done, total, f"threshold {tau:g}", threshold=tau, score=values[-1]
            )
        scores[tau] = sum(values) / len(values)
    best = min(scores, key=lambda k: scores[k])
    return TuneResult(best=best, scores=scores)
