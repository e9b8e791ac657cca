"""Data-consistency (DC) updates of the unrolled reconstruction (issue 13).

Two formulations of the DC half-step of :class:`~spurig_core.recon.unrolled.UnrolledRecon`:

* ``"gradient"`` (the paper's eq. 2, the shipped models): ``n`` gradient steps
  ``α ← α − μ (A^H A α − A^H b)`` with ``μ = exp(ρ)/L``; ``n = 1`` is the paper's.
* ``"cg"`` (MoDL, Aggarwal et al. 2019): ``α = (A^H A + λ I)^{-1} (A^H b + λ z)`` solved
  approximately by ``n`` conjugate-gradient iterations started at the denoiser's output ``z``,
  with ``λ = exp(ρ) · L``: a proximal step that stays close to ``z`` where the data say little.

Only ``op.gram`` is used; every update is differentiable (autograd through the iterations).
"""

from __future__ import annotations

import torch

from ..operators.base import LinearOperator

__all__ = ["cg_dc", "gradient_dc"]


def gradient_dc(
    op: LinearOperator,
    ahb: torch.Tensor,
    alpha: torch.Tensor,
    mu: torch.Tensor | float,
    steps: int = 1,
    *,
    gram_alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Take ``steps`` gradient steps on ``½‖Aα − b‖²`` from ``alpha``.

    Parameters
    ----------
    op : LinearOperator
    ahb, alpha : Tensor, shape (basis, x, y, z), complex64
    mu : Tensor (0-d, real) or float
        Step size (``exp(ρ)/L``).
    steps : int
    gram_alpha : Tensor, shape (basis, x, y, z), complex64, optional
        ``A^H A alpha`` when already known: the first step uses it instead of ``op.gram``.

    Returns
    -------
    Tensor, shape (basis, x, y, z), complex64
    """
    m = mu.to(alpha.real.dtype) if isinstance(mu, torch.Tensor) else mu
    for k in range(steps):
        g = gram_alpha if k == 0 and gram_alpha is not None else op.gram(alpha)
        alpha = alpha - m * (g - ahb)
    return alpha


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of ``⟨a, b⟩`` (the operator is Hermitian, so it is the whole inner product)."""
    return torch.sum(a.real * b.real + a.imag * b.imag)


def cg_dc(
    op: LinearOperator,
    ahb: torch.Tensor,
    z: torch.Tensor,
    lam: torch.Tensor | float,
    iters: int,
    *,
    gram_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``iters`` CG iterations on ``(A^H A + λ I) α = A^H b + λ z``, started at ``z``.

    Parameters
    ----------
    op : LinearOperator
    ahb, z : Tensor, shape (basis, x, y, z), complex64
    lam : Tensor (0-d, real, positive) or float
        ``λ`` in the units of ``A^H A`` (``exp(ρ)·L``).
    iters : int
    gram_z : Tensor, shape (basis, x, y, z), complex64, optional
        ``A^H A z`` when already known (the initial residual uses it instead of ``op.gram``).

    Returns
    -------
    Tensor, shape (basis, x, y, z), complex64
    """
    lm = lam.to(z.real.dtype) if isinstance(lam, torch.Tensor) else lam
    x = z
    r = ahb + lm * z - ((op.gram(x) if gram_z is None else gram_z) + lm * x)
    p = r
    rr = _dot(r, r)
    for _ in range(iters):
        ap = op.gram(p) + lm * p
        pap = _dot(p, ap)
        a = rr / torch.clamp(pap, min=1e-30)
        x = x + a * p
        r = r - a * ap
        rr_new = _dot(r, r)
        p = r + (rr_new / torch.clamp(rr, min=1e-30)) * p
        rr = rr_new
    return x
