r"""The per-point projection of the gridded encoding's adjoint (issue #14).

``out[k, p] = post[p] Σ_{(g,t,s): index = p} conj(Φ̃[t,k]) √w[g,t,s] b[g,t,s]`` for one coil's
k-space ``b``: the first half of
:meth:`~spurig_core.operators.encoding.GriddedSubspaceEncoding.adjoint` (an inverse FFT follows),
and the projected k-space of its ``project``.  Two sparse products instead of an ``index_add_``
per coefficient: the samples summed per (point, repetition) pair
(:class:`~spurig_core.operators.pairs.SamplePairs`), then each point's pairs times ``conj Φ̃`` of
their repetitions, with the pair sums' real and imaginary parts interleaved in one
(points × 2·tr) matrix.
"""

from __future__ import annotations

import warnings

import torch

from .pairs import SamplePairs

__all__ = ["PairProjection"]


class PairProjection:
    """The projection ``b ↦ Σ_{index = p} conj(Φ̃[t,k]) √w b`` at the sampled grid points ``p``.

    Parameters
    ----------
    pairs : SamplePairs
        The encoding's samples grouped by (point, repetition).
    basis : Tensor, shape (tr, basis), complex64
        ``Φ̃``.
    sqrtw : Tensor, shape (groups, tr, samples), float32, optional
        ``√w`` per sample (``None``: unweighted).

    Notes
    -----
    On the CPU both products write into work buffers kept from call to call (issue #14, session
    29: fresh 14–16 MB results for every coil, zero-filled and copied, were 0.4 s of a 64³
    ``A^H b``); :meth:`release` frees them after the last coil.
    """

    def __init__(self, pairs: SamplePairs, basis: torch.Tensor, sqrtw: torch.Tensor | None) -> None:
        dev = basis.device
        self.pairs = pairs
        self.n_basis = int(basis.shape[1])
        w = (
            torch.ones(pairs.perm.numel(), dtype=torch.float32, device=dev)
            if sqrtw is None
            else sqrtw.reshape(-1)[pairs.perm]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
            self.sums = torch.sparse_csr_tensor(
                pairs.pair_start, pairs.perm, w, (pairs.pair_start.numel() - 1, pairs.perm.numel())
            )
        # rows 2t / 2t + 1: the factors of the real / imaginary part of a pair sum of repetition
        # t; columns interleave real and imaginary parts: Re(M) phi[2t] + Im(M) phi[2t + 1] is
        # M conj(Φ̃[t]) as complex numbers
        c = basis.conj()
        phi_re = torch.stack([c.real, c.imag], -1).reshape(c.shape[0], -1)
        phi_im = torch.stack([-c.imag, c.real], -1).reshape(c.shape[0], -1)
        self.phi = torch.stack([phi_re, phi_im], 1).reshape(2 * c.shape[0], -1).contiguous()
        # the (points × 2·tr) CSR structure whose values are the pair sums' (re, im) pairs
        self.crow = pairs.point_start * 2
        self.cols = torch.stack([pairs.pair_tr * 2, pairs.pair_tr * 2 + 1], 1).reshape(-1)
        self._buffers: dict[str, torch.Tensor] = {}

    def _work(self, name: str, shape: tuple[int, int]) -> torch.Tensor:
        b = self._buffers.get(name)
        if b is None or tuple(b.shape) != shape:
            b = torch.empty(shape, dtype=torch.float32, device=self.phi.device)
            self._buffers[name] = b
        return b

    def release(self) -> None:
        """Free the work buffers (after the last coil of a call over all coils)."""
        self._buffers.clear()

    def __call__(
        self, bc: torch.Tensor, out: torch.Tensor, post: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Write ``post[p] Σ_{index = p} conj(Φ̃[t,k]) √w bc`` into ``out`` at the sampled ``p``.

        Parameters
        ----------
        bc : Tensor, shape (groups, tr, samples), complex64
            One coil's k-space.
        out : Tensor, shape (basis, X, Y, Z), complex64
            Written at the sampled points only (it must be zero elsewhere).
        post : Tensor, shape (points,), complex64, optional
            A factor per sampled point (the FFT's post-modulation).

        Returns
        -------
        Tensor
            ``out``.
        """
        pairs, nb = self.pairs, self.n_basis
        n_pairs, n_points = int(pairs.pair_tr.numel()), int(pairs.points.numel())
        x = torch.view_as_real(bc.reshape(-1))
        cpu = bc.device.type == "cpu"  # the buffers answer the CPU's page faults (CUDA: as before)
        if cpu:
            ps = torch.mm(self.sums, x, out=self._work("pair_sums", (n_pairs, 2)))
        else:
            ps = (self.sums @ x).contiguous()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
            per_point = torch.sparse_csr_tensor(
                self.crow, self.cols, ps.view(-1), (n_points, 2 * pairs.n_tr)
            )
        if cpu:  # beta = 0: the buffer's old values are ignored
            o = self._work("point_sums", (n_points, 2 * nb))
            torch.addmm(o, per_point, self.phi, beta=0, out=o)
        else:
            o = (per_point @ self.phi).contiguous()
        oc = torch.view_as_complex(o.view(-1, nb, 2))  # (points, basis)
        if post is not None:
            oc.mul_(post[:, None])
        out.view(nb, -1).index_copy_(1, pairs.points, oc.T)
        return out
