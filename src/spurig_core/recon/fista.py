"""FISTA (Beck & Teboulle 2009, doi:10.1137/080716542) for ``min_x ½‖A x − b‖² + λ R(x)``.

The solver only needs the normal operator ``A^H A`` (:meth:`LinearOperator.gram`) and the
precomputed ``A^H b``: the gradient of the data term is ``A^H A x − A^H b``. The iGROG-gridded
encoding therefore never touches the raw k-space layout inside the loop, and the NUFFT encoding
uses the same code. The step is ``1/L`` with ``L = safety · ‖A‖₂²`` estimated by power iteration;
the regulariser enters through a proximal callable
``prox(v, step) = argmin_x ½‖x − v‖² + step·λR(x)``.

Iteration (constant step, Beck & Teboulle 2009, eq. 4.1–4.3), from ``x_0``, ``z_1 = x_0``,
``t_1 = 1``::

    x_i     = prox(z_i − (A^H A z_i − A^H b) / L, 1/L)
    t_{i+1} = (1 + sqrt(1 + 4 t_i²)) / 2
    z_{i+1} = x_i + (t_i − 1) / t_{i+1} · (x_i − x_{i−1})

Every tensor stays on the device of ``A^H b`` (CPU or CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..operators.base import LinearOperator
from ..progress import Callback, emit

__all__ = ["FistaResult", "Prox", "fista", "lipschitz_constant"]

#: ``prox(v, step)``: the proximal operator of ``step · λ R`` at ``v`` (returns a new tensor).
Prox = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True, eq=False)
class FistaResult:
    """What :func:`fista` returns.

    Attributes
    ----------
    x : Tensor, same shape, dtype and device as ``A^H b``
        The last iterate.
    iterations : Tensor, shape (n + 1, *x.shape), or None
        The initialisation followed by every iterate (``save_iterations=True``), on
        ``iterations_device``.
    lipschitz : float
        The ``L`` used (step ``1/L``).
    """

    x: torch.Tensor
    iterations: torch.Tensor | None
    lipschitz: float


def lipschitz_constant(
    op: LinearOperator, like: torch.Tensor, *, iters: int = 30, safety: float = 1.02, seed: int = 0
) -> float:
    """``safety · ‖A‖₂²``, the Lipschitz constant of the gradient of ``½‖A x − b‖²``.

    Parameters
    ----------
    op : LinearOperator
        The encoding ``A``; only :meth:`~LinearOperator.gram` is applied.
    like : Tensor, shape in_shape
        Fixes the shape, dtype and device of the random start vector of the power iteration.
    iters : int
        Maximum power iterations (stops earlier at relative change 1e-4).
    safety : float
        Factor ≥ 1 covering the under-estimate of a truncated power iteration.
    seed : int
        Seed of the local generator of the start vector.
    """
    gen = torch.Generator().manual_seed(int(seed))
    dtype = like.dtype if like.is_complex() else torch.complex64
    x0 = torch.randn(tuple(like.shape), dtype=dtype, generator=gen).to(like.device)
    if not like.is_complex():
        x0 = x0.real.to(like.dtype)
    norm = op.opnorm(x0, iters=iters)
    if not math.isfinite(norm) or norm <= 0.0:
        raise InputError(f"{op.name}: operator norm is {norm}; the data or the encoding is empty")
    return float(safety) * norm**2


def fista(
    op: LinearOperator,
    ahb: torch.Tensor,
    *,
    prox: Prox | None = None,
    iterations: int = 40,
    x0: torch.Tensor | None = None,
    lipschitz: float | None = None,
    power_iterations: int = 30,
    lipschitz_safety: float = 1.02,
    seed: int = 0,
    save_iterations: bool = False,
    iterations_device: torch.device | str = "cpu",
    callback: Callback | None = None,
    stage: str = "fista",
) -> FistaResult:
    """Minimise ``½‖A x − b‖² + λ R(x)`` by FISTA with a constant step ``1/L``.

    Parameters
    ----------
    op : LinearOperator
        The encoding ``A``; only ``op.gram`` (``A^H A``) is applied.
    ahb : Tensor, shape in_shape, e.g. (basis, x, y, z), complex64
        ``A^H b``, computed once by the caller.
    prox : callable ``prox(v, step) -> Tensor``, optional
        Proximal operator of ``step · λ R``; ``None`` solves the plain least-squares problem.
    iterations : int
        Number of iterations (fixed; the paper uses 40 for LLR).
    x0 : Tensor, shape of ``ahb``, optional
        Initialisation (zeros when omitted).
    lipschitz : float, optional
        ``L``; estimated with :func:`lipschitz_constant` when omitted.
    power_iterations, lipschitz_safety, seed
        Passed to :func:`lipschitz_constant`.
    save_iterations : bool
        Also return the initialisation and every iterate, shape ``(iterations + 1, *ahb.shape)``
        (``iterations + 1`` volumes on ``iterations_device``: a 64³ five-coefficient volume is
        10 MiB, so 41 of them are 0.4 GiB).
    iterations_device : torch.device or str
        Where the saved iterates are kept (CPU by default, to spare GPU memory).
    callback : callable, optional
        Receives ``ProgressEvent(stage, i, iterations, data=x_i)`` after every iteration; ``data``
        is the current iterate (do not modify it). Raising :class:`~spurig_core.errors.Cancelled`
        from it stops the solver; the exception propagates to the caller.
    stage : str
        Stage name of the progress events.

    Returns
    -------
    FistaResult
    """
    if iterations < 0:
        raise InputError(f"fista: iterations must be >= 0, got {iterations}")
    if op.in_shape is not None and tuple(ahb.shape) != op.in_shape:
        raise InputError(f"{op.name}: A^H b has shape {tuple(ahb.shape)}, expected {op.in_shape}")
    if x0 is None:
        x = torch.zeros_like(ahb)
    else:
        if x0.shape != ahb.shape:
            raise InputError(f"fista: x0 has shape {tuple(x0.shape)}, expected {tuple(ahb.shape)}")
        x = x0.to(device=ahb.device, dtype=ahb.dtype)
    if lipschitz is None:
        lipschitz = lipschitz_constant(
            op, ahb, iters=power_iterations, safety=lipschitz_safety, seed=seed
        )
    if not (lipschitz > 0.0 and math.isfinite(lipschitz)):
        raise InputError(f"fista: the Lipschitz constant must be finite and > 0, got {lipschitz}")
    step = 1.0 / lipschitz

    saved: torch.Tensor | None = None
    if save_iterations:
        saved = torch.empty((iterations + 1, *ahb.shape), dtype=ahb.dtype, device=iterations_device)
        saved[0].copy_(x)

    z = x
    t = 1.0
    for i in range(iterations):
        v = op.gram(z)
        if v.data_ptr() in (z.data_ptr(), ahb.data_ptr()):  # e.g. an identity gram
            v = v.clone()
        v.sub_(ahb).mul_(-step).add_(z)  # v = z − step · (A^H A z − A^H b)
        x_new = prox(v, step) if prox is not None else v
        del v
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        momentum = (t - 1.0) / t_new
        if momentum != 0.0:
            z = torch.sub(x_new, x).mul_(momentum).add_(x_new)
        else:
            z = x_new
        x, t = x_new, t_new
        if saved is not None:
            saved[i + 1].copy_(x)
        emit(callback, stage, i + 1, iterations, f"iteration {i + 1}/{iterations}", data=x)
    return FistaResult(x=x, iterations=saved, lipschitz=float(lipschitz))
