"""The NUFFT subspace encoding ``A = F_u S Φ̃`` (the baseline) and helpers shared with it.

:class:`SubspaceNUFFTEncoding` evaluates the SPEC §3 forward model at the acquired trajectory
(type-2 / type-1 NUFFT); its ``gram`` is forward followed by adjoint, one coil at a time (the
paper's slow baseline).  :func:`density_weights` (the data weights ``w ∝ n(p)^{-γ}``), the input
checks and the per-sample basis mixing are shared with
:class:`~spurig_core.operators.encoding.GriddedSubspaceEncoding`.  The public names are
re-exported by :mod:`spurig_core.operators.encoding` (moved out of it to keep that module short).
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from .base import LinearOperator
from .fourier import NUFFT
from .grid import GRID_OVERSAMPLING, grid_shape, nearest_grid_index

__all__ = ["SubspaceNUFFTEncoding", "density_weights"]


def _check_maps_basis(coil_maps: torch.Tensor, basis: torch.Tensor, tr: int, name: str) -> None:
    if coil_maps.ndim != 4:
        raise InputError(
            f"{name}: coil_maps must be (coils, x, y, z), got {tuple(coil_maps.shape)}"
        )
    if basis.ndim != 2 or basis.shape[0] != tr:
        raise InputError(
            f"{name}: basis must be (tr, basis) with tr = {tr}, got {tuple(basis.shape)}"
        )
    for what, t in (("coil_maps", coil_maps), ("basis", basis)):
        if not torch.isfinite(torch.view_as_real(t.to(torch.complex64))).all():
            raise InputError(f"{name}: {what} contains NaN or Inf")


def density_weights(index: torch.Tensor, n_grid: int, gamma: float) -> torch.Tensor | None:
    """Per-sample data weights ``w ∝ n(p)^{-γ}`` with mean 1 (``None`` for ``γ = 0``).

    Parameters
    ----------
    index : Tensor, shape (groups, tr, samples), int
        Grid point of every sample.
    n_grid : int
        Number of grid points.
    gamma : float
        Exponent (see :class:`~spurig_core.operators.encoding.EncodingConfig`).

    Returns
    -------
    Tensor, shape (groups, tr, samples), float32, or None
    """
    if gamma == 0.0 or index.numel() == 0:
        return None
    flat = index.reshape(-1).long()
    counts = torch.bincount(flat, minlength=n_grid).to(torch.float64)
    w = counts.clamp(min=1.0).pow(-float(gamma))[flat]
    return (w * (flat.numel() / float(w.sum()))).to(torch.float32).reshape(index.shape)


def _mix_basis(y: torch.Tensor, phi_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[g, t, s] = Σ_k phi_t[k, 0, t, 0] · y[k, g, t, s]`` (in place into ``out``)."""
    torch.mul(y[0], phi_t[0], out=out)
    for k in range(1, y.shape[0]):
        out.addcmul_(y[k], phi_t[k])
    return out


class SubspaceNUFFTEncoding(LinearOperator):
    """``A = F_u S Φ̃`` with the NUFFT at the acquired trajectory.

    Parameters
    ----------
    trajectory : Tensor, shape (groups, tr, samples, 3), float
        Sample positions in cycles per FOV (SPEC §3).
    coil_maps : Tensor, shape (coils, x, y, z), complex64
        Sensitivities; their device is where the operator computes.
    basis : Tensor, shape (tr, basis), complex64
        Temporal (balanced) basis ``Φ̃``.
    eps : float
        NUFFT accuracy (``1e-4`` default; see ``benchmarks/RESULTS-operators.md``).
    nthreads : int, optional
        finufft threads.
    density_compensation : float
        ``γ`` of the data weight ``w ∝ n(p)^{-γ}`` (mean 1), with ``n(p)`` the number of samples
        whose nearest point of the ``grid_oversampling`` grid is ``p`` — the same weights as the
        gridded encoding's (:class:`~spurig_core.operators.encoding.EncodingConfig`), so ``llr``
        and ``llr-nufft`` solve the same problem.  The operator is ``W^{1/2} A``; its data are
        :meth:`data_values`.
        ``0`` (the default here): the plain data term.
    grid_oversampling : float
        Oversampling of the grid that defines ``n(p)``.

    Notes
    -----
    Shapes: ``(basis, x, y, z)`` → ``(coils, groups, tr, samples)``.  One coil at a time is
    transformed (``basis`` NUFFTs per call), so the working memory is ``basis × groups·tr·samples``.
    """

    def __init__(
        self,
        trajectory: torch.Tensor,
        coil_maps: torch.Tensor,
        basis: torch.Tensor,
        *,
        eps: float = 1e-4,
        nthreads: int | None = None,
        density_compensation: float = 0.0,
        grid_oversampling: float = GRID_OVERSAMPLING,
    ) -> None:
        if trajectory.ndim != 4 or trajectory.shape[-1] != 3:
            raise InputError(
                f"SubspaceNUFFTEncoding: trajectory must be (groups, tr, samples, 3), "
                f"got {tuple(trajectory.shape)}"
            )
        g, t, s, _ = trajectory.shape
        _check_maps_basis(coil_maps, basis, t, "SubspaceNUFFTEncoding")
        self.device = coil_maps.device
        self.maps = coil_maps.to(torch.complex64)
        self.basis = basis.to(self.device, torch.complex64)
        self.matrix = tuple(int(n) for n in coil_maps.shape[1:])
        nb = self.basis.shape[1]
        self.nufft = NUFFT(
            trajectory.to(self.device), self.matrix, batch=(nb,), eps=eps, nthreads=nthreads
        )
        super().__init__(
            (nb, *self.matrix), (coil_maps.shape[0], g, t, s), name="SubspaceNUFFTEncoding"
        )
        self._phi_t = self.basis.T.reshape(nb, 1, t, 1).contiguous()
        if not 0.0 <= density_compensation <= 1.0:
            raise InputError(
                f"SubspaceNUFFTEncoding: density_compensation must lie in [0, 1], got "
                f"{density_compensation}"
            )
        self._w: torch.Tensor | None = None
        self._sqrtw: torch.Tensor | None = None
        if density_compensation > 0.0:
            m3 = (self.matrix[0], self.matrix[1], self.matrix[2])
            grid = grid_shape(m3, grid_oversampling)
            index, _ = nearest_grid_index(trajectory.to(self.device), m3, grid)
            self._w = density_weights(index, math.prod(grid), density_compensation)
            assert self._w is not None
            self._sqrtw = self._w.sqrt()

    @property
    def weights(self) -> torch.Tensor | None:
        """Per-sample data weights ``w`` (shape (groups, tr, samples), float32), or ``None``."""
        return self._w

    def data_values(self, kspace: torch.Tensor) -> torch.Tensor:
        """Return the (density-weighted) data ``W^{1/2} b`` this operator is fitted to.

        Parameters
        ----------
        kspace : Tensor, shape (coils, groups, tr, samples), complex64
            Raw k-space on this operator's trajectory.
        """
        self.check_out(kspace)
        b = kspace.to(self.device, torch.complex64)
        return b if self._sqrtw is None else b * self._sqrtw

    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.complex64)
        out = torch.empty(self.out_shape, dtype=torch.complex64, device=x.device)  # type: ignore[arg-type]
        sh = self.out_shape[1:]  # type: ignore[index]
        for c in range(self.maps.shape[0]):
            y = self.nufft._type2(self.maps[c] * x).reshape(-1, *sh)
            _mix_basis(y, self._phi_t, out[c])
            if self._sqrtw is not None:
                out[c].mul_(self._sqrtw)
        return out

    def _adj(self, b: torch.Tensor) -> torch.Tensor:
        b = b.to(torch.complex64)
        acc = torch.zeros(self.in_shape, dtype=torch.complex64, device=b.device)  # type: ignore[arg-type]
        phi_c = self._phi_t.conj()
        for c in range(self.maps.shape[0]):
            bc = b[c] if self._sqrtw is None else b[c] * self._sqrtw
            w = phi_c * bc.unsqueeze(0)  # (basis, groups, tr, samples)
            img = self.nufft._type1(w.reshape(w.shape[0], -1))
            acc.addcmul_(img, self.maps[c].conj())
        return acc

    def _gram(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.complex64)
        acc = torch.zeros_like(x)
        sh = self.out_shape[1:]  # type: ignore[index]
        phi_c = self._phi_t.conj()
        line = torch.empty(sh, dtype=torch.complex64, device=x.device)
        for c in range(self.maps.shape[0]):
            y = self.nufft._type2(self.maps[c] * x).reshape(-1, *sh)
            _mix_basis(y, self._phi_t, line)
            if self._w is not None:
                line.mul_(self._w)
            torch.mul(phi_c, line.unsqueeze(0), out=y)
            img = self.nufft._type1(y.reshape(y.shape[0], -1))
            acc.addcmul_(img, self.maps[c].conj())
        return acc
