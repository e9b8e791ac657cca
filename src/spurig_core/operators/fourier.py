r"""Fourier operators: centred FFT, zero-padding to the oversampled grid and the NUFFT (paper 2.1).

All transforms follow the forward model of SPEC §3 exactly: an image ``m`` of
``matrix = (Nx, Ny, Nz)`` voxels, voxel ``r`` at position ``ρ = r − matrix//2``, is encoded at the
spatial frequency ``k`` (cycles per FOV) as

.. math:: \hat m(k) = \sum_r m(r)\, e^{-2\pi i\, k\cdot(r - \lfloor N/2\rfloor)/N},

with no ``1/N`` factor.  The centred FFT evaluates this sum at the integer frequencies
``q = p − N//2`` (array index ``p``); the NUFFT evaluates it at arbitrary ``k``.  Their adjoints are
the conjugate-transposed sums (``Σ_p``, again without ``1/N``), which is also what autograd returns
(vector–Jacobian product of a linear map = its adjoint applied to the cotangent).

Centring without ``fftshift``
-----------------------------
With ``h = N//2``, ``e^{-2πi(p−h)(r−h)/N} = c · d[p] · d[r] · e^{-2πi p r/N}`` where
``d[r] = e^{2πi h r/N}`` and ``c = e^{-2πi h²/N}``.  For even ``N``, ``d`` is the ±1 checkerboard
``(−1)^r`` and ``c = (−1)^h``; the centred FFT is then a plain FFT between two sign flips, about a
third of the cost of ``fftshift``/``ifftshift`` (``cpu-measurements.md``).  Odd ``N`` use the same
formula with a complex ramp.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np
import torch

from ..errors import InputError, NotAvailableError
from .base import LinearOperator

__all__ = [
    "NUFFT",
    "FFTOperator",
    "PadOperator",
    "apply_linear",
    "centre_offset",
    "crop3",
    "cufinufft_available",
    "fft3c",
    "ifft3c",
    "modulation",
    "nufft_plan",
    "pad3",
]

_DIMS = (-3, -2, -1)


# ------------------------------------------------------------------------------------------------
# autograd: a linear map whose vjp is its adjoint
# ------------------------------------------------------------------------------------------------
class _Linear(torch.autograd.Function):
    """``y = f(x)`` for a linear ``f`` with adjoint ``g``: backward is ``g``, jvp is ``f``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fwd: Callable, adj: Callable) -> torch.Tensor:  # type: ignore[override]
        ctx.fwd, ctx.adj = fwd, adj
        return fwd(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        # Differentiable itself (double backward applies the forward again).
        return _Linear.apply(g.contiguous(), ctx.adj, ctx.fwd), None, None

    @staticmethod
    def jvp(ctx: Any, t: torch.Tensor, *_: Any) -> torch.Tensor:  # type: ignore[override]
        return ctx.fwd(t.contiguous())


def apply_linear(
    x: torch.Tensor,
    fwd: Callable[[torch.Tensor], torch.Tensor],
    adj: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply the linear map ``fwd`` to ``x`` so that autograd uses ``adj`` as its vjp.

    ``fwd`` and ``adj`` run without autograd (they may use buffers, numpy or in-place operations);
    the gradient of any loss through the result is ``adj`` applied to the cotangent, and
    forward-mode AD propagates tangents through ``fwd``.  Without gradients involved this is just
    ``fwd(x)``.

    Parameters
    ----------
    x : Tensor
        Input of ``fwd``.
    fwd, adj : callable
        The linear map and its exact adjoint (``⟨fwd(x), y⟩ = ⟨x, adj(y)⟩``).
    """
    if (torch.is_grad_enabled() and x.requires_grad) or _has_tangent(x):
        return _Linear.apply(x, fwd, adj)
    with torch.no_grad():
        return fwd(x)


def _has_tangent(x: torch.Tensor) -> bool:
    import torch.autograd.forward_ad as fwad

    try:
        return fwad.unpack_dual(x).tangent is not None
    except RuntimeError:  # pragma: no cover - no forward-AD level active
        return False


# ------------------------------------------------------------------------------------------------
# centred FFT
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _modulation_cached(
    shape: tuple[int, int, int], device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    ramps = []
    const = 1.0 + 0.0j
    for n in shape:
        h = n // 2
        r = np.arange(n)
        if n % 2 == 0:
            ramps.append((1.0 - 2.0 * (r % 2)).astype(np.complex128))
        else:
            ramps.append(np.exp(2j * np.pi * h * r / n))
        const *= np.exp(-2j * np.pi * h * h / n)
    d = ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]
    if all(n % 2 == 0 for n in shape):
        const = complex(round(const.real), 0.0)  # exactly ±1
    pre = torch.from_numpy(d).to(dtype=dtype, device=device)
    post = torch.from_numpy(d * const).to(dtype=dtype, device=device)
    return pre, post


def modulation(
    shape: Seq[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.complex64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the diagonal factors of the centred FFT: ``fft3c(x) = post · fft(pre · x)``.

    Parameters
    ----------
    shape : tuple of 3 int
        The transform size ``(X, Y, Z)``.
    device, dtype
        Where and in which complex dtype to return the factors.

    Returns
    -------
    pre, post : Tensor, shape (X, Y, Z)
        ``pre[r] = Π_d e^{2πi h_d r_d/N_d}`` (the ±1 checkerboard for even sizes) and
        ``post = c · pre`` with ``c = Π_d e^{-2πi h_d²/N_d}`` (``±1`` for even sizes), ``h = N//2``.
        Both have unit modulus.  Cached; do not modify them.
    """
    s = tuple(int(n) for n in shape)
    if len(s) != 3:
        raise InputError(f"modulation: shape must have 3 entries, got {s}")
    return _modulation_cached(s, str(torch.device(device)), dtype)  # type: ignore[arg-type]


def fft3c(x: torch.Tensor, *, norm: str = "backward") -> torch.Tensor:
    """Centred FFT over the last three axes (SPEC §3 sign and centring).

    ``fft3c(x)[..., p] = Σ_r x[..., r] · exp(-2πi (p − N//2)·(r − N//2)/N)`` per axis, i.e. the
    forward model of SPEC §3 at the integer frequencies ``p − N//2`` with ``norm="backward"``
    (no scaling).

    Parameters
    ----------
    x : Tensor, shape (..., x, y, z), complex
        Images.
    norm : {"backward", "ortho", "forward"}
        As in :func:`torch.fft.fftn`: no scaling, ``1/√N`` or ``1/N``.

    Returns
    -------
    Tensor, shape (..., x, y, z)
        k-space, frequency ``p − N//2`` at index ``p``.
    """
    if x.ndim < 3:
        raise InputError(f"fft3c: need at least 3 dimensions, got shape {tuple(x.shape)}")
    if not x.is_complex():
        x = x.to(torch.complex64)
    pre, post = modulation(x.shape[-3:], x.device, x.dtype)
    y = torch.fft.fftn(x * pre, dim=_DIMS, norm=norm)
    return y.mul_(post)


def ifft3c(y: torch.Tensor, *, norm: str = "backward") -> torch.Tensor:
    """Inverse of :func:`fft3c` over the last three axes.

    With ``norm="backward"`` this is the inverse (``1/N``); with ``norm="forward"`` it is the exact
    adjoint of ``fft3c(·, norm="backward")`` (the sum ``Σ_p`` without scaling); ``"ortho"`` is both
    for the unitary pair.

    Parameters
    ----------
    y : Tensor, shape (..., x, y, z), complex
        k-space with frequency ``p − N//2`` at index ``p``.
    norm : {"backward", "ortho", "forward"}
        As in :func:`torch.fft.ifftn`.

    Returns
    -------
    Tensor, shape (..., x, y, z)
    """
    if y.ndim < 3:
        raise InputError(f"ifft3c: need at least 3 dimensions, got shape {tuple(y.shape)}")
    if not y.is_complex():
        y = y.to(torch.complex64)
    pre, post = modulation(y.shape[-3:], y.device, y.dtype)
    x = torch.fft.ifftn(y * post.conj(), dim=_DIMS, norm=norm)
    return x.mul_(pre.conj())


class FFTOperator(LinearOperator):
    """Centred 3D FFT over the last three axes as an operator.

    Parameters
    ----------
    shape : tuple of int
        ``(..., x, y, z)``: batch axes followed by the three transformed axes.
    unitary : bool
        ``False`` (default): the SPEC §3 sum without scaling; adjoint ``ifft3c(·, norm="forward")``.
        ``True``: ``norm="ortho"``, so that the adjoint is the inverse.
    """

    def __init__(self, shape: Seq[int], *, unitary: bool = False) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3:
            raise InputError(f"FFTOperator: shape needs at least 3 axes, got {shape}")
        super().__init__(shape, shape, name="FFT")
        self.unitary = unitary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the centred 3D FFT (orthonormal when ``unitary``)."""
        self.check_in(x)
        return fft3c(x, norm="ortho" if self.unitary else "backward")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint: the centred inverse FFT, unnormalised unless ``unitary``."""
        self.check_out(y)
        return ifft3c(y, norm="ortho" if self.unitary else "forward")

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``F^H F x`` without transforms: ``x`` (unitary) or ``x`` times the grid size."""
        self.check_in(x)
        if self.unitary:
            return x.clone()
        return x * float(math.prod(x.shape[-3:]))


# ------------------------------------------------------------------------------------------------
# pad / crop
# ------------------------------------------------------------------------------------------------
def centre_offset(matrix: Seq[int], grid: Seq[int]) -> tuple[int, int, int]:
    """Start of a ``matrix`` image inside a ``grid`` so that the centres ``N//2``, ``X//2`` meet."""
    off = tuple(int(g) // 2 - int(n) // 2 for n, g in zip(matrix, grid, strict=True))
    if any(o < 0 or int(g) < int(n) for o, n, g in zip(off, matrix, grid, strict=True)):
        raise InputError(f"grid {tuple(grid)} is smaller than the image matrix {tuple(matrix)}")
    return off  # type: ignore[return-value]


def _slices(matrix: Seq[int], grid: Seq[int]) -> tuple[slice, slice, slice]:
    o = centre_offset(matrix, grid)
    return tuple(slice(oi, oi + int(n)) for oi, n in zip(o, matrix, strict=True))  # type: ignore[return-value]


def pad3(x: torch.Tensor, grid: Seq[int]) -> torch.Tensor:
    """Zero-pad the last three axes to ``grid``, centred (voxel ``N//2`` lands on ``X//2``).

    Parameters
    ----------
    x : Tensor, shape (..., x, y, z)
    grid : tuple of 3 int
        ``(X, Y, Z)``, each at least the image size.

    Returns
    -------
    Tensor, shape (..., X, Y, Z)
    """
    sl = _slices(x.shape[-3:], grid)
    out = x.new_zeros((*x.shape[:-3], *(int(g) for g in grid)))
    out[(..., *sl)] = x
    return out


def crop3(y: torch.Tensor, matrix: Seq[int]) -> torch.Tensor:
    """Centred crop of the last three axes to ``matrix`` (the adjoint of :func:`pad3`).

    Parameters
    ----------
    y : Tensor, shape (..., X, Y, Z)
    matrix : tuple of 3 int

    Returns
    -------
    Tensor, shape (..., x, y, z), a new contiguous tensor.
    """
    sl = _slices(matrix, y.shape[-3:])
    return y[(..., *sl)].contiguous()


class PadOperator(LinearOperator):
    """Centred zero-padding of the last three axes to the oversampled grid; ``.H`` crops.

    Parameters
    ----------
    in_shape : tuple of int
        ``(..., x, y, z)``.
    grid : tuple of 3 int
        ``(X, Y, Z)`` from :func:`spurig_core.operators.grid.grid_shape`.
    """

    def __init__(self, in_shape: Seq[int], grid: Seq[int]) -> None:
        in_shape = tuple(int(s) for s in in_shape)
        self.grid = tuple(int(g) for g in grid)
        self.matrix = in_shape[-3:]
        centre_offset(self.matrix, self.grid)
        super().__init__(in_shape, (*in_shape[:-3], *self.grid), name="Pad")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``x`` (centred) to the oversampled grid."""
        self.check_in(x)
        return pad3(x, self.grid)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Crop ``y`` (centred) back to the image matrix."""
        self.check_out(y)
        return crop3(y, self.matrix)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """Return a copy of ``x``: cropping after padding is the identity."""
        self.check_in(x)
        return x.clone()


# ------------------------------------------------------------------------------------------------
# NUFFT
# ------------------------------------------------------------------------------------------------
def _cufinufft() -> Any | None:
    try:
        import cufinufft  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - depends on the installation
        return None
    return cufinufft


def cufinufft_available() -> bool:
    """Whether CUDA and ``cufinufft`` are both there (for :func:`nufft_plan` with ``gpu=True``)."""
    return torch.cuda.is_available() and _cufinufft() is not None


def nufft_plan(
    kind: int,
    matrix: Seq[int],
    *,
    n_trans: int = 1,
    eps: float = 1e-4,
    dtype: str = "complex64",
    gpu: bool = False,
    nthreads: int | None = None,
) -> Any:
    """Make a finufft (CPU) or cufinufft (GPU) plan with SPEC §3's conventions (the one wrapper).

    Type 2 is the forward sum ``Σ_r f[r] exp(−i x·(r − N//2))`` (``isign=−1``), type 1 its
    adjoint (``isign=+1``); ``modeord=0`` puts mode ``r − N//2`` at array index ``r``.  Points are
    set by the caller with ``plan.setpts(x, y, z)`` in radians (``2π k_d / matrix_d`` for ``k`` in
    cycles/FOV) and may be set again for another batch of points; ``plan.execute`` transforms
    ``(n_trans, *matrix)`` ↔ ``(n_trans, points)`` (without the leading axis when ``n_trans`` is 1).

    Parameters
    ----------
    kind : {1, 2}
        NUFFT type.
    matrix : sequence of 3 int
        Mode (image) shape.
    n_trans : int
        Transforms per execution.
    eps : float
        Requested relative accuracy.
    dtype : {"complex64", "complex128"}
        Precision of data and points.
    gpu : bool
        A cufinufft plan (inputs are CUDA tensors); needs :func:`cufinufft_available`.
    nthreads : int, optional
        finufft threads (CPU only); ``None`` leaves finufft's default (its OpenMP runtime's).

    Returns
    -------
    finufft.Plan or cufinufft.Plan
    """
    modes = tuple(int(m) for m in matrix)
    isign = -1 if kind == 2 else 1
    if gpu:
        cu = _cufinufft()
        if cu is None:  # pragma: no cover - depends on the installation
            raise NotAvailableError("NUFFT: a GPU plan needs cufinufft, which is not installed")
        return cu.Plan(kind, modes, n_trans=n_trans, eps=eps, isign=isign, dtype=dtype, modeord=0)
    import finufft

    kw: dict[str, Any] = {"modeord": 0}
    if nthreads is not None:
        kw["nthreads"] = int(nthreads)
    return finufft.Plan(kind, modes, n_trans=n_trans, eps=eps, isign=isign, dtype=dtype, **kw)


class NUFFT(LinearOperator):
    r"""Non-uniform FFT at the trajectory points (type 2 forward, type 1 adjoint), via finufft.

    Forward: ``y[b, j] = Σ_r x[b, r] · exp(-2πi k_j·(r − matrix//2)/matrix)`` (SPEC §3), i.e.
    finufft type 2 with ``isign=-1``, points ``2π k_j/matrix`` (radians) and ``modeord=0`` (modes
    ``−N//2 … (N−1)//2`` in array order, which is exactly ``r − N//2``).  Adjoint: type 1 with
    ``isign=+1``.  Plans are made once per batch size and reuse the points (``setpts`` once).
    Autograd through :meth:`forward` / :meth:`adjoint` gives the adjoint / forward.

    Parameters
    ----------
    trajectory : Tensor, shape (..., 3), float
        Sample positions in cycles per FOV, within ``[-matrix/2, matrix/2)`` per axis (SPEC §3).
    matrix : tuple of 3 int
        Image matrix ``(x, y, z)``.
    batch : tuple of int
        Leading batch axes of the input (e.g. ``(basis,)`` or ``(coils, basis)``).
    eps : float
        Requested relative accuracy (``1e-6`` … ``1e-3``; ``benchmarks/RESULTS-operators.md``).
    n_trans : int, optional
        Transforms per finufft call (default: the whole batch); bounds the working memory.
    nthreads : int, optional
        finufft threads (default: ``torch.get_num_threads()``, so that ``torch.set_num_threads``
        governs the NUFFT too; finufft's own default, its OpenMP runtime's thread count, ignores
        it).  With more than one thread finufft's spreading sums in a run-dependent order: only
        one thread gives bit-identical results run to run.

    Notes
    -----
    Shapes: input ``(*batch, x, y, z)`` complex64 → output ``(*batch, *trajectory.shape[:-1])``
    (:meth:`forward`, type 2; :meth:`adjoint`, type 1: the base class's, through ``_fwd`` and
    ``_adj``).
    On CUDA tensors ``cufinufft`` is used when it is installed (imported lazily); otherwise the
    work is done by finufft on the CPU and the result moved back to the input's device.
    """

    def __init__(
        self,
        trajectory: torch.Tensor,
        matrix: Seq[int],
        *,
        batch: Seq[int] = (),
        eps: float = 1e-4,
        n_trans: int | None = None,
        nthreads: int | None = None,
    ) -> None:
        matrix = tuple(int(n) for n in matrix)
        if len(matrix) != 3 or trajectory.ndim < 2 or trajectory.shape[-1] != 3:
            raise InputError(
                f"NUFFT: trajectory must be (..., 3) for a 3D matrix, got "
                f"{tuple(trajectory.shape)} and matrix {matrix}"
            )
        if not torch.isfinite(trajectory).all():
            raise InputError("NUFFT: trajectory contains NaN or Inf")
        lim = torch.tensor(matrix, dtype=torch.float64, device=trajectory.device)
        if (trajectory.abs().double() > 1.5 * lim).any():  # finufft accepts [-3π, 3π]
            raise InputError("NUFFT: trajectory exceeds ±1.5·matrix cycles/FOV")
        if not 1e-7 <= eps < 1:
            raise InputError(f"NUFFT: eps must be in [1e-7, 1), got {eps}")
        self.matrix = matrix
        self.batch = tuple(int(b) for b in batch)
        self.pts_shape = tuple(trajectory.shape[:-1])
        self.n_batch = math.prod(self.batch)
        self.n_pts = math.prod(self.pts_shape)
        self.eps = float(eps)
        self.n_trans = max(1, min(int(n_trans or self.n_batch), self.n_batch))
        self.nthreads = nthreads
        self.device = trajectory.device
        super().__init__((*self.batch, *matrix), (*self.batch, *self.pts_shape), name="NUFFT")
        # Points in radians, one array per axis, float32 contiguous.
        k = trajectory.detach().reshape(-1, 3).double()
        rad = (2.0 * math.pi * k / lim).float()
        self._gpu = self.device.type == "cuda" and _cufinufft() is not None
        self._pts: tuple[Any, ...]
        if self._gpu:
            self._pts = tuple(rad[:, d].contiguous() for d in range(3))
        else:
            self._pts = tuple(np.ascontiguousarray(rad[:, d].cpu().numpy()) for d in range(3))
        self._plans: dict[tuple[int, int], Any] = {}

    # -- plans ---------------------------------------------------------------------------------
    def _plan(self, kind: int, ntr: int) -> Any:
        key = (kind, ntr)
        plan = self._plans.get(key)
        if plan is None:
            nthreads = None if self._gpu else int(self.nthreads or torch.get_num_threads())
            plan = nufft_plan(
                kind, self.matrix, n_trans=ntr, eps=self.eps, gpu=self._gpu, nthreads=nthreads
            )
            plan.setpts(*self._pts)
            self._plans[key] = plan
        return plan

    # -- raw transforms (no autograd, no shape checks) -------------------------------------------
    def _type2(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, x, y, z)`` → ``(B, M)``, B any number of transforms."""
        return self._execute(2, x, (self.n_pts,))

    def _type1(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` → ``(B, x, y, z)``."""
        return self._execute(1, y, self.matrix)

    def _execute(self, kind: int, data: torch.Tensor, tail: tuple[int, ...]) -> torch.Tensor:
        """NUFFT of type ``kind`` of ``B`` inputs, ``n_trans`` per call → ``(B, *tail)``."""
        nb = data.shape[0]
        if self._gpu:
            ds = data.to(torch.complex64).contiguous()
            out = torch.empty((nb, *tail), dtype=torch.complex64, device=data.device)
            for s in range(0, nb, self.n_trans):
                e = min(nb, s + self.n_trans)
                res = self._plan(kind, e - s).execute(ds[s:e] if e - s > 1 else ds[s])
                out[s:e] = res.reshape(e - s, *tail)
            return out
        dn = data.detach().to("cpu", torch.complex64).contiguous().numpy()
        outn = np.empty((nb, *tail), dtype=np.complex64)
        for s in range(0, nb, self.n_trans):
            e = min(nb, s + self.n_trans)
            plan = self._plan(kind, e - s)
            if e - s == 1:
                plan.execute(dn[s], out=outn[s])
            else:
                plan.execute(dn[s:e], out=outn[s:e])
        return torch.from_numpy(outn).to(data.device)

    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        return self._type2(x.reshape(-1, *self.matrix)).reshape(self.out_shape)  # type: ignore[arg-type]

    def _adj(self, y: torch.Tensor) -> torch.Tensor:
        return self._type1(y.reshape(-1, self.n_pts)).reshape(self.in_shape)  # type: ignore[arg-type]
