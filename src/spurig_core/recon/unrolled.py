"""The unrolled SPUR-iG reconstruction (paper eq. 2–3, section 2.3, appendix A.1).

For ``i = 1 … N`` (``N = 6`` by default)::

    α_{i−½} = α_{i−1} − μ_i · (A^H A α_{i−1} − A^H b)        (DC step, eq. 2)
    α_i     = f_θ(α_{i−½}, i)                                 (learned prior, eq. 3)

with ``α_0 = s · A^H b``, ``s = ‖b‖₂ / ‖A A^H b‖₂`` (appendix A.1).  ``A^H A`` is the operator's
:meth:`~spurig_core.operators.base.LinearOperator.gram` (the FFT-based gridded gram of
:class:`spurig_core.operators.encoding.GriddedSubspaceEncoding` in SPUR-iG; any operator works).

Step sizes are ``μ_i = exp(ρ_i) / L`` with learnable ``ρ_i`` (initialised to ``log(mu_init)``) and
``L ≈ ‖A^H A‖₂`` estimated per scan by a few deterministic power iterations started at ``A^H b``
(or given, e.g. precomputed for training examples).  With ``mu_init = 1`` the untrained network
starts from gradient steps of ``1/L``, the classical safe step, whatever the number of coils,
groups or the scale of the data.

:class:`UnrolledRecon` runs full (plain) unrolling, GLEAM-style detached steps, or full unrolling
with gradient checkpointing across DC and denoiser steps (training stages 2 and 3, appendix
A.3–A.4),
and the denoisers are shared across steps or separate (ablation of section 3.3).  Checkpoints
written by the training stages are read back with
:func:`~spurig_core.recon.unrolled_io.load_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..operators.base import LinearOperator
from ..progress import Callback, emit
from .dc import cg_dc, gradient_dc
from .networks import Denoiser, UNetConfig

__all__ = [
    "MODEL_KIND",
    "TRAIN_KIND",
    "UnrollConfig",
    "UnrolledRecon",
    "estimate_lipschitz",
    "scaled_init",
    "scaled_init_gram",
]

#: ``kind`` of a model file written at the end of a training stage.
MODEL_KIND = "spurig-model"
#: ``kind`` of a resumable training checkpoint (a superset of a model file).
TRAIN_KIND = "spurig-train"

Mode = Literal["full", "gleam", "checkpoint"]


@dataclass(frozen=True)
class UnrollConfig:
    """Tunables of :class:`UnrolledRecon`.

    Attributes
    ----------
    steps : int
        Unroll iterations ``N`` (6 in the paper, chosen by the ablation of section 3.3).
    share_weights : bool
        One denoiser for all steps (``False``: a separate UNet per step, the "no WS" ablation).
    mu_init : float
        Initial step size in units of ``1/L``.
    power_iters : int
        Power iterations for ``L`` when it is not given.
    network : UNetConfig
        The denoiser (``dim=3`` for SPUR-iG, ``dim=2`` for the hybrid baseline).
    dc : {"gradient", "cg"}
        The DC half-step (:mod:`.dc`): ``dc_steps`` gradient steps of ``μ_i`` (the paper's, one
        step, the default of every shipped model), or ``dc_steps`` conjugate-gradient iterations
        on ``(A^H A + λ_i I) α = A^H b + λ_i α_{i−1}`` (MoDL) with learnable
        ``λ_i = exp(ϱ_i) · L``.
    dc_steps : int
        Gradient steps or CG iterations per DC half-step.
    lambda_init : float
        Initial ``λ_i / L`` of the ``"cg"`` DC.
    """

    steps: int = 6
    share_weights: bool = True
    mu_init: float = 1.0
    power_iters: int = 8
    network: UNetConfig = field(default_factory=UNetConfig)
    dc: str = "gradient"
    dc_steps: int = 1
    lambda_init: float = 0.1

    def __post_init__(self) -> None:
        """Raise InputError naming the first field out of range (``steps``, ``dc``, …)."""
        if self.steps < 1:
            raise InputError(f"UnrollConfig.steps: must be at least 1, got {self.steps}")
        if not self.mu_init > 0:
            raise InputError(f"UnrollConfig.mu_init: must be positive, got {self.mu_init}")
        if self.power_iters < 1:
            raise InputError("UnrollConfig.power_iters: must be at least 1")
        if self.dc not in ("gradient", "cg"):
            raise InputError(f"UnrollConfig.dc: choose gradient or cg, got {self.dc!r}")
        if self.dc_steps < 1 or not self.lambda_init > 0:
            raise InputError(
                f"UnrollConfig: dc_steps must be >= 1 and lambda_init > 0, got "
                f"{self.dc_steps}, {self.lambda_init}"
            )


def estimate_lipschitz(op: LinearOperator, x0: torch.Tensor, *, iters: int = 8) -> float:
    """``L ≈ ‖A^H A‖₂`` by deterministic power iteration on ``op.gram`` started at ``x0``.

    Parameters
    ----------
    op : LinearOperator
        Operator with domain ``(basis, x, y, z)``.
    x0 : Tensor, shape (basis, x, y, z), complex64
        Start vector (``A^H b`` is a good one; no random numbers are drawn).
    iters : int
        Number of iterations (the estimate approaches ``L`` from below; a few suffice for a
        step size).

    Returns
    -------
    float
        The estimate (1.0 when ``x0`` or ``A^H A x0`` is zero).
    """
    with torch.no_grad():
        n = float(torch.linalg.vector_norm(x0))
        if n == 0.0:
            return 1.0
        x = x0 / n
        est = 0.0
        for _ in range(iters):
            y = op.gram(x)
            est = float(torch.linalg.vector_norm(y))
            if est == 0.0:
                return 1.0
            x = y / est
    return est


def scaled_init(op: LinearOperator, ahb: torch.Tensor, b_norm: float) -> tuple[torch.Tensor, float]:
    """Return the initialisation ``s · A^H b`` with ``s = ‖b‖₂ / ‖A A^H b‖₂`` (appendix A.1).

    ``‖A A^H b‖₂² = ⟨A^H b, A^H A A^H b⟩`` needs only the gram, so gridded operators that never
    form ``A`` itself work too.

    Parameters
    ----------
    op : LinearOperator
    ahb : Tensor, shape (basis, x, y, z), complex64
        ``A^H b``.
    b_norm : float
        ``‖b‖₂`` of the (gridded) data.

    Returns
    -------
    x0 : Tensor, shape (basis, x, y, z), complex64
    s : float
    """
    x0, s, _ = scaled_init_gram(op, ahb, b_norm)
    return x0, s


def scaled_init_gram(
    op: LinearOperator, ahb: torch.Tensor, b_norm: float
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """:func:`scaled_init` and ``A^H A x0 = s · A^H A A^H b``, from the scale's own gram.

    The first DC step needs the gram of ``x0``; the scale has already applied it to ``A^H b``,
    so an unroll started here spends one gram fewer (issue #14).

    Returns
    -------
    x0 : Tensor, shape (basis, x, y, z), complex64
    s : float
    gram_x0 : Tensor, shape (basis, x, y, z), complex64
    """
    from .classical import norm_matching

    with torch.no_grad():
        s, g = norm_matching(op, ahb, b_norm)
    return ahb * s, s, g.mul_(s)


class UnrolledRecon(nn.Module):
    """SPUR-iG: ``N`` alternations of a gradient DC step and a step-conditioned denoiser.

    Parameters
    ----------
    cfg : UnrollConfig
    """

    def __init__(self, cfg: UnrollConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = 1 if cfg.share_weights else cfg.steps
        self.denoisers = nn.ModuleList(Denoiser(cfg.network) for _ in range(n))
        self.log_mu = nn.Parameter(torch.full((cfg.steps,), math.log(cfg.mu_init)))
        if cfg.dc == "cg":  # only then: the files of gradient-DC models keep their keys
            self.log_lam = nn.Parameter(torch.full((cfg.steps,), math.log(cfg.lambda_init)))

    # -- pieces ------------------------------------------------------------------------------
    def denoiser(self, i: int) -> Denoiser:
        """Return the denoiser of step ``i`` (0-based)."""
        d = self.denoisers[0 if self.cfg.share_weights else i]
        assert isinstance(d, Denoiser)
        return d

    def mu(self, i: int, lipschitz: float) -> torch.Tensor:
        """Step size ``μ_i = exp(ρ_i) / L`` of step ``i`` (0-based)."""
        return torch.exp(self.log_mu[i]) / lipschitz

    def step(
        self,
        op: LinearOperator,
        ahb: torch.Tensor,
        alpha: torch.Tensor,
        i: int,
        lipschitz: float,
        gram_alpha: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One unroll iteration (eq. 2 then eq. 3) with 0-based ``i`` (FiLM index ``i + 1``).

        Parameters
        ----------
        op : LinearOperator
        ahb : Tensor, shape (basis, x, y, z), complex64
        alpha : Tensor, shape (basis, x, y, z), complex64
        i : int
        lipschitz : float
        gram_alpha : Tensor, shape (basis, x, y, z), complex64, optional
            ``A^H A alpha`` when already known (constant: no gradient flows through it).

        Returns
        -------
        Tensor, shape (basis, x, y, z), complex64
        """
        return self.denoiser(i)(self.dc_half(op, ahb, alpha, i, lipschitz, gram_alpha), i + 1)

    def dc_half(
        self,
        op: LinearOperator,
        ahb: torch.Tensor,
        alpha: torch.Tensor,
        i: int,
        lipschitz: float,
        gram_alpha: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Take the DC half-step ``α_{i−½}`` of 0-based step ``i`` from ``α_{i−1}`` (``cfg.dc``)."""
        if self.cfg.dc == "cg":
            lam = torch.exp(self.log_lam[i]) * lipschitz
            return cg_dc(op, ahb, alpha, lam, self.cfg.dc_steps, gram_z=gram_alpha)
        return gradient_dc(
            op, ahb, alpha, self.mu(i, lipschitz), self.cfg.dc_steps, gram_alpha=gram_alpha
        )

    # -- the whole reconstruction --------------------------------------------------------------
    def forward(
        self,
        op: LinearOperator,
        ahb: torch.Tensor,
        x0: torch.Tensor,
        *,
        lipschitz: float | None = None,
        mode: Mode = "full",
        steps: int | None = None,
        return_all: bool = False,
        callback: Callback | None = None,
        gram_x0: torch.Tensor | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Unroll from ``x0``.

        Parameters
        ----------
        op : LinearOperator
            The encoding operator (only ``op.gram`` is used).
        ahb : Tensor, shape (basis, x, y, z), complex64
            ``A^H b``.
        x0 : Tensor, shape (basis, x, y, z), complex64
            The initialisation (``s · A^H b``, see :func:`scaled_init`).
        lipschitz : float, optional
            ``‖A^H A‖₂``; estimated with :func:`estimate_lipschitz` when omitted.
        mode : {"full", "gleam", "checkpoint"}
            ``"full"`` keeps the whole graph; ``"gleam"`` detaches the input of every step, so that
            a loss on step ``i`` only reaches step ``i``'s parameters (GLEAM, appendix A.3);
            ``"checkpoint"`` recomputes each DC and denoiser step in the backward pass
            (``torch.utils.checkpoint``, appendix A.4) and gives the same gradients as ``"full"``.
        steps : int, optional
            Number of steps to run (default ``cfg.steps``).
        return_all : bool
            Return the list ``[x0, α_1, …, α_N]`` instead of ``α_N``.
        callback : Callback, optional
            ``emit(callback, "unroll", i, N, data=α_i)`` after each step; may raise
            :class:`~spurig_core.errors.Cancelled`.
        gram_x0 : Tensor, shape (basis, x, y, z), complex64, optional
            ``A^H A x0`` when known (:func:`scaled_init_gram`): the first DC step uses it instead
            of applying the gram (a constant: ``x0`` must not need a gradient).

        Returns
        -------
        Tensor, shape (basis, x, y, z), or list of them
        """
        n = self.cfg.steps if steps is None else steps
        if n > self.cfg.steps:
            raise InputError(f"UnrolledRecon: {n} steps requested, the model has {self.cfg.steps}")
        if ahb.shape != x0.shape or ahb.ndim != 4 or ahb.shape[0] != self.cfg.network.basis:
            raise InputError(
                f"UnrolledRecon: A^H b {tuple(ahb.shape)} and x0 {tuple(x0.shape)} must both be "
                f"({self.cfg.network.basis}, x, y, z)"
            )
        if lipschitz is None:
            lipschitz = estimate_lipschitz(op, ahb, iters=self.cfg.power_iters)
        alpha = x0
        out = [x0] if return_all else []
        if gram_x0 is not None and x0.requires_grad:
            raise InputError("UnrolledRecon: gram_x0 needs an x0 without gradient")
        for i in range(n):
            known = gram_x0 if i == 0 else None
            if mode == "gleam":
                alpha = self.step(op, ahb, alpha.detach(), i, lipschitz, known)
            elif mode == "checkpoint" and torch.is_grad_enabled():
                alpha = checkpoint(
                    self.step, op, ahb, alpha, i, lipschitz, known, use_reentrant=False
                )
            else:
                alpha = self.step(op, ahb, alpha, i, lipschitz, known)
            if return_all:
                out.append(alpha)
            emit(
                callback,
                "unroll",
                i + 1,
                n,
                f"unroll step {i + 1}/{n}",
                data=alpha.detach() if callback is not None else None,
            )
        return out if return_all else alpha

    @torch.no_grad()
    def reconstruct(
        self,
        op: LinearOperator,
        ahb: torch.Tensor,
        *,
        b_norm: float,
        lipschitz: float | None = None,
        save_iterations: bool = False,
        callback: Callback | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inference: scaled initialisation, then ``N`` steps without a graph.

        Parameters
        ----------
        op, ahb, b_norm
            The operator, ``A^H b`` (basis, x, y, z) and ``‖b‖₂`` of the data, as for
            :func:`scaled_init`.
        lipschitz : float, optional
        save_iterations : bool
            Also return the initialisation and every step's output.
        callback : Callback, optional
            Progress per step with the current iterate as ``data``; may raise ``Cancelled``.

        Returns
        -------
        coefficients : Tensor, shape (basis, x, y, z), complex64
        iterations : Tensor, shape (steps + 1, basis, x, y, z), complex64, or None
        """
        was_training = self.training
        self.eval()
        try:
            x0, _, gram_x0 = scaled_init_gram(op, ahb, b_norm)
            res = self.forward(
                op,
                ahb,
                x0,
                lipschitz=lipschitz,
                return_all=save_iterations,
                callback=callback,
                gram_x0=gram_x0,
            )
        finally:
            self.train(was_training)
        if save_iterations:
            assert isinstance(res, list)
            return res[-1], torch.stack(res)
        assert isinstance(res, torch.Tensor)
        return res, None
