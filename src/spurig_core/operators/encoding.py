r"""The subspace encoding ``A = F_u S Φ̃`` and its normal operator (paper 2.1 and 2.3.1).

Coefficients ``α`` of shape ``(basis, x, y, z)`` are encoded to k-space
``(coils, groups, tr, samples)``:

.. math:: (A α)[c, g, t, s] = \sum_k Φ̃[t, k] \sum_r S_c(r)\, α_k(r)\, e^{-2πi\, k_{gts}·(r − N/2)/N}

(SPEC §3 forward model with ``m_t = Σ_k Φ̃[t,k] α_k``).  The Fourier transform acts on the ``basis``
coefficient maps (it commutes with the temporal basis); ``Φ̃`` mixes per sample.

Two implementations:

- :class:`SubspaceNUFFTEncoding`: the samples at the trajectory (type-2 / type-1 NUFFT).  Its
  ``gram`` is forward followed by adjoint, one coil at a time: the paper's slow baseline.
  Defined in :mod:`~spurig_core.operators.encoding_nufft` (with :func:`density_weights`) and
  re-exported here.
- :class:`GriddedSubspaceEncoding`: the samples moved to the oversampled grid by iGROG
  (:class:`~spurig_core.operators.grid.GriddedData`).  Only FFTs are needed, and the normal operator
  is exact without Toeplitz embedding: per grid point ``p`` the basis×basis kernel

  .. math:: K[k', k](p) = \sum_{(g,t,s):\ \mathrm{index}[g,t,s] = p} \overline{Φ̃[t,k']}\, Φ̃[t,k]

  (duplicates counted), so ``A^H A α = Σ_c conj(S_c) crop F^H K F pad(S_c α)``.  The data enter
  a reconstruction only once, as ``A^H b`` (:meth:`GriddedSubspaceEncoding.adjoint_data`).

Both follow the device of the coil maps they were built with (CPU or CUDA), work in complex64 and
give the adjoint as the autograd gradient.  :func:`adjoint_scale` is the norm-matching scale of the
paper's appendix A.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checkpoint import all_finite
from .._heap import reusing_freed_memory
from ..errors import InputError
from .base import LinearOperator
from .encoding_nufft import SubspaceNUFFTEncoding, _check_maps_basis, _mix_basis, density_weights
from .fourier import centre_offset, modulation
from .grid import GriddedData
from .pairs import SamplePairs, pair_product, pair_sums, sample_pairs
from .projection import PairProjection

__all__ = [
    "EncodingConfig",
    "GriddedSubspaceEncoding",
    "SubspaceNUFFTEncoding",
    "adjoint_scale",
    "density_weights",
]


def _sq_norm(values: torch.Tensor) -> float:
    """``‖values‖₂²`` (complex): float32 norms of 8,192-number blocks, squares summed in float64."""
    v = torch.view_as_real(values).reshape(-1)
    head = v.numel() - v.numel() % 8192
    parts = [torch.linalg.vector_norm(v[:head].view(-1, 8192), dim=1).double().square().sum()]
    if head < v.numel():
        parts.append(torch.linalg.vector_norm(v[head:], dtype=torch.float64).square())
    return float(torch.stack(parts).sum())


def _transposed(x: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """``x.T`` contiguous, copied in blocks of rows that stay in cache (2× a plain copy at 64³)."""
    out = torch.empty((x.shape[1], x.shape[0]), dtype=x.dtype, device=x.device)
    if x.device.type != "cpu":
        return out.copy_(x.T)
    for s in range(0, x.shape[0], block):
        out[:, s : s + block].copy_(x[s : s + block].T)
    return out


#: Least memory for the sampled k-space of several coils mixed together in the gram (CPU,
#: sparse storage); the budget is this or two full-grid work buffers, whichever is larger
#: (:meth:`GriddedSubspaceEncoding._coils_per_mix`): 4 coils at 64³ (16 groups), 7 at 64³
#: (4 groups), 5 at 96³ (16 groups: 40 MB a coil).
_MIX_BYTES = 64 << 20
#: Full-grid work buffers' worth of memory the several-coil mixing may take beyond that.
_MIX_GRID_BUFFERS = 2


# ------------------------------------------------------------------------------------------------
# Gridded encoding (SPUR-iG data consistency)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodingConfig:
    """Tunables of the data term's encodings (the ``[encoding]`` table of a config).

    Every field configures :class:`GriddedSubspaceEncoding`; ``density_compensation`` also sets
    the k-space weight of :class:`SubspaceNUFFTEncoding` (``llr-nufft``, the same data term).

    Attributes
    ----------
    chunk : int
        Grid points per block of the kernel mixing on the CPU (cache-sized blocks were ~6× faster
        than whole-volume elementwise operations); ``0`` = one block (always on CUDA).
    sparse : bool or None
        Store the kernels only at the sampled grid points (gather/scatter around the mixing).
        ``None``: when fewer than ``sparse_below`` of the grid points are sampled.
    sparse_below : float
        Sampled fraction below which ``sparse=None`` chooses the sparse storage.
    samples_per_block : int
        Unused since issue #14 (the kernels are one sparse count-matrix product, whose memory is
        a few integers per sample); kept because model records carry it.
    density_compensation : float
        Exponent ``γ`` of the k-space weight ``w(p) ∝ n(p)^{-γ}`` of the data term, with ``n(p)``
        the number of samples (all groups and repetitions) gridded to point ``p``, normalised to a
        mean weight of 1 over the samples; the operator becomes ``W^{1/2} A`` and its data
        ``W^{1/2} b``.  ``0`` is the plain ``½‖Aα − b‖²`` (the paper does not state a weight).
        3D SPI samples the centre with a density ``∝ 1/|k|²``, so without a weight the gram's
        spectrum spans orders of magnitude and 40 FISTA iterations (or 6 unrolled steps) barely
        move the high frequencies; ``γ = 1`` equalises the density but amplifies the noise of the
        sparse outer samples.  The default ``γ = 0.5`` (square-root density compensation: a
        weighted least-squares data term as in gridding reconstructions, Pipe & Menon 1999,
        doi:10.1002/(SICI)1522-2594(199901)41:1<179::AID-MRM25>3.0.CO;2-V) was measured best on a
        48³ subject: 40-iteration LLR at 2 min 19.5 dB (γ = 0) → 26.0 dB (γ = 0.5) mean PSNR,
        16–20 dB at γ = 1 (benchmarks/RESULTS-llr-tuning.md).
    """

    chunk: int = 16384
    sparse: bool | None = None
    sparse_below: float = 0.5
    samples_per_block: int = 1 << 18
    density_compensation: float = 0.5

    def __post_init__(self) -> None:
        """Raise InputError unless ``density_compensation`` is in [0, 1]."""
        if not (0.0 <= self.density_compensation <= 1.0):
            raise InputError(
                f"encoding.density_compensation: choose 0 to 1, got {self.density_compensation}"
            )


class GriddedSubspaceEncoding(LinearOperator):
    """``A = P_index F pad S Φ̃`` on iGROG-gridded samples, with an exact FFT-only ``gram``.

    Parameters
    ----------
    gridded : GriddedData
        Gridded samples: ``values (coils, groups, tr, samples)``, ``index (groups, tr, samples)``
        into the oversampled grid ``(X, Y, Z)``, image ``matrix``.
    coil_maps : Tensor, shape (coils, x, y, z), complex64
        Sensitivities on the image matrix; their device is where the operator computes.
    basis : Tensor, shape (tr, basis), complex64
        Temporal (balanced) basis ``Φ̃``.
    config : EncodingConfig, optional
    weights : Tensor, shape (groups, tr, samples), float, optional
        Per-sample data weights ``w ≥ 0`` used as given instead of the density weights of
        ``config.density_compensation`` (e.g. the central block of another encoding's samples,
        :func:`~spurig_core.operators.band_limited.band_limited`).

    Notes
    -----
    Forward: pad ``S_c α_k`` to the grid, centred FFT (the SPEC §3 sum, evaluated at the grid
    frequencies ``(p − X//2)·N/X``, see :mod:`~spurig_core.operators.grid`), gather ``index``, mix
    ``Σ_k Φ̃[t,k]``.  Adjoint: the exact adjoint (scatter-add, duplicates add).  ``gram``: pad, FFT,
    per-point ``basis × basis`` kernel ``K``, inverse FFT, crop; ``K`` is built once
    (``basis² · X·Y·Z``
    complex64).  The FFT checkerboards cancel in ``gram`` and are folded into the coil maps.
    The gram's FFTs run one basis coefficient at a time, each result used where the FFT leaves
    it (gathered at the sampled points, or cropped into the image) rather than copied into a
    buffer, and on the CPU the sampled k-space of several coils is mixed together, so each block
    of ``K`` is read once for them (within the budget of :meth:`_coils_per_mix`).  On the 2-core
    Xeon of 2026-12-06 a batched ``fftn`` of ``(5, 96, 96, 96)`` took 19 ms, five single ones
    into a buffer 8.6 ms and without the buffer about 5 ms; the 64³ gram 0.69 → 0.32 s with the
    same values (``benchmarks/RESULTS.md``, session 14).
    """

    def __init__(
        self,
        gridded: GriddedData,
        coil_maps: torch.Tensor,
        basis: torch.Tensor,
        *,
        config: EncodingConfig | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.config = config or EncodingConfig()
        idx = gridded.index
        if idx.ndim != 3:
            raise InputError(
                f"GriddedSubspaceEncoding: index must be (groups, tr, samples), got "
                f"{tuple(idx.shape)}"
            )
        g, t, s = idx.shape
        _check_maps_basis(coil_maps, basis, t, "GriddedSubspaceEncoding")
        self.matrix = tuple(int(n) for n in gridded.matrix)
        self.grid = tuple(int(n) for n in gridded.grid)
        if tuple(coil_maps.shape[1:]) != self.matrix:
            raise InputError(
                f"GriddedSubspaceEncoding: coil maps {tuple(coil_maps.shape[1:])} do "
                f"not match the gridded matrix {self.matrix}"
            )
        vs = tuple(gridded.values.shape)
        if vs != (coil_maps.shape[0], g, t, s):
            raise InputError(
                f"GriddedSubspaceEncoding: values {vs} do not match "
                f"(coils, groups, tr, samples) = {(coil_maps.shape[0], g, t, s)}"
            )
        self.n_grid = math.prod(self.grid)
        if idx.dtype not in (torch.int64, torch.int32) or (
            idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_grid)
        ):
            raise InputError(
                f"GriddedSubspaceEncoding: index must be integers in [0, {self.n_grid})"
            )
        self.gridded = gridded
        self.device = coil_maps.device
        self.n_coils = int(coil_maps.shape[0])
        self.n_basis = int(basis.shape[1])
        sl = centre_offset(self.matrix, self.grid)
        self._crop = tuple(slice(o, o + n) for o, n in zip(sl, self.matrix, strict=True))
        super().__init__(
            (self.n_basis, *self.matrix), (self.n_coils, g, t, s), name="GriddedSubspaceEncoding"
        )
        dev = self.device
        pre, post = modulation(self.grid, dev)
        self._post = post
        maps = coil_maps.to(dev, torch.complex64)
        self._smod = maps * pre[self._crop]  # checkerboard folded into the maps
        self._smod_conj = self._smod.conj()
        self.basis = basis.to(dev, torch.complex64)
        self._phi_t = self.basis.T.reshape(self.n_basis, 1, t, 1).contiguous()
        self._index = idx.to(dev, torch.int64).reshape(-1)
        self._pairs = sample_pairs(self._index.reshape(g, t, s))
        self._projector: PairProjection | None = None
        self._weights(g, t, s, weights)
        self._chunk = self.config.chunk if dev.type == "cpu" and self.config.chunk > 0 else 0
        self._build_kernels()
        self._buffers: dict[str, torch.Tensor] = {}
        self._ahb: torch.Tensor | None = None
        self._b_norm: float | None = None
        self._own_finite = False  # the gridded values passed the NaN/Inf check

    # -- density weights ---------------------------------------------------------------------------
    def _weights(self, g: int, t: int, s: int, given: torch.Tensor | None) -> None:
        """Per-sample ``√w``: of the given weights, else of the density weights (or ``None``)."""
        if given is None:
            gamma = float(self.config.density_compensation)
            w = density_weights(self._index.reshape(g, t, s), self.n_grid, gamma)
        elif tuple(given.shape) != (g, t, s) or not bool(
            torch.isfinite(given).all() and (given >= 0).all()
        ):
            raise InputError(
                f"GriddedSubspaceEncoding: weights must be finite, >= 0 and of shape "
                f"{(g, t, s)}, got {tuple(given.shape)}"
            )
        else:
            w = given.to(self.device, torch.float32)
        self._sqrtw: torch.Tensor | None = None if w is None else w.sqrt()
        self._weights_given = given is not None

    @property
    def weights(self) -> torch.Tensor | None:
        """Per-sample data weights ``w`` (shape (groups, tr, samples), float32), or ``None``."""
        return None if self._sqrtw is None else self._sqrtw.square()

    @property
    def pairs(self) -> SamplePairs:
        """The samples grouped by (grid point, repetition) (:func:`~.pairs.sample_pairs`)."""
        return self._pairs

    @property
    def pair_weights(self) -> torch.Tensor:
        """Summed data weights of each (point, repetition) pair, shape (pairs,), float32."""
        return self._pair_weights

    # -- kernels -----------------------------------------------------------------------------------
    def _build_kernels(self) -> None:
        nb = self.n_basis
        # outer[t, k', k] = conj(Φ̃[t,k']) Φ̃[t,k]
        outer = (self.basis.conj()[:, :, None] * self.basis[:, None, :]).reshape(-1, nb * nb)
        p = self._pairs
        sampled = p.points
        if self._sqrtw is None or self._weights_given:
            self._pair_weights = pair_sums(p, self.weights)
        else:  # density weights depend on the point only: count × the first sample's weight
            first = p.perm[p.pair_start[:-1].long()].long()
            self._pair_weights = pair_sums(p).mul_(self._sqrtw.reshape(-1)[first].square())
        kern = pair_product(p, outer, self._pair_weights)  # (sampled points, nb²)
        frac = sampled.numel() / self.n_grid
        sparse = (
            self.config.sparse
            if self.config.sparse is not None
            else (frac < self.config.sparse_below)
        )
        self.sampled_fraction = frac
        self.sparse = bool(sparse)
        if self.sparse:
            self._loc: torch.Tensor | None = sampled
            self._kernel = _transposed(kern).view(nb, nb, -1)
        else:
            self._loc = None
            full = torch.zeros((nb * nb, self.n_grid), dtype=torch.complex64, device=self.device)
            full[:, sampled] = kern.T
            self._kernel = full.reshape(nb, nb, -1)

    def centre_direction(self, radius: int = 2) -> torch.Tensor:
        """Top eigenvector of the per-point kernels summed over the central ``(2r+1)³`` points.

        The basis-space direction in which ``A^H A`` is largest at the densely sampled k-space
        centre (a better Lanczos start than equal coefficients, :func:`~.step_size.coil_start`).

        Returns
        -------
        Tensor, shape (basis,), complex64
        """
        ax = [
            torch.arange(n // 2 - radius, n // 2 + radius + 1, device=self.device)
            for n in self.grid
        ]
        gx, gy, gz = torch.meshgrid(*ax, indexing="ij")
        pts = ((gx * self.grid[1] + gy) * self.grid[2] + gz).reshape(-1)
        if self._loc is not None:  # sparse storage: the sampled points among them
            pos = torch.searchsorted(self._loc, pts).clamp(max=self._loc.numel() - 1)
            pts = pos[self._loc[pos] == pts]
        k = self._kernel[:, :, pts].sum(-1).to(torch.complex128)
        vec = torch.linalg.eigh((k + k.conj().T) / 2).eigenvectors[:, -1]
        return vec.to(torch.complex64)

    @property
    def kernels(self) -> torch.Tensor:
        """The per-location kernels ``K``, shape (basis, basis, X, Y, Z), complex64 (a copy)."""
        nb = self.n_basis
        if self._loc is None:
            return self._kernel.reshape(nb, nb, *self.grid).clone()
        full = torch.zeros((nb, nb, self.n_grid), dtype=torch.complex64, device=self.device)
        full[:, :, self._loc] = self._kernel
        return full.reshape(nb, nb, *self.grid)

    # -- buffers -----------------------------------------------------------------------------------
    def _buf(self, name: str, zero: bool = False) -> torch.Tensor:
        b = self._buffers.get(name)
        if b is None:
            b = torch.zeros((self.n_basis, *self.grid), dtype=torch.complex64, device=self.device)
            self._buffers[name] = b
        elif zero:
            b.zero_()
        return b

    def _work(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return the work buffer ``name`` of ``shape``, kept between calls (contents undefined)."""
        b = self._buffers.get(name)
        if b is None or tuple(b.shape) != shape or b.dtype != dtype:
            b = torch.empty(shape, dtype=dtype, device=self.device)
            self._buffers[name] = b
        return b

    def _release_scratch(self) -> None:
        """Free the buffers of one call over all coils: the weighted coil and the projection's.

        Kept from coil to coil; held on after the last one, their 40–55 MB at 64³ made the UNet
        after them slower (session 29).
        """
        self._buffers.pop("weighted", None)
        if self._projector is not None:
            self._projector.release()

    def release_buffers(self) -> None:
        """Free the preallocated work buffers.

        ``3 × basis·X·Y·Z`` complex64, and the gram's several-coil mixing buffer (within the
        budget of :meth:`_coils_per_mix`).
        """
        self._buffers.clear()

    def _padded(self, x: torch.Tensor, c: int) -> torch.Tensor:
        """``pre · pad(S_c x)`` in the ``in`` buffer (whose border stays zero)."""
        bin_ = self._buf("in")
        torch.mul(x, self._smod[c], out=bin_[(slice(None), *self._crop)])
        return bin_

    def _pad_fft(self, x: torch.Tensor, c: int) -> torch.Tensor:
        """``fft(pre · pad(S_c x))`` into the ``f`` buffer (no post-modulation)."""
        bin_ = self._padded(x, c)
        bf = self._buf("f")
        for k in range(self.n_basis):  # one coefficient at a time: issue #14, see the notes
            torch.fft.fftn(bin_[k], out=bf[k])
        return bf

    def _fft_gather(self, x: torch.Tensor, c: int, out: torch.Tensor) -> None:
        """``out[k] = fft(pre · pad(S_c x))[k]`` at the sampled points (sparse storage).

        Each coefficient's transform is gathered from the FFT's own result, which is freed at
        once: no copy into a buffer (``fftn(out=)`` computes into a temporary and copies).
        """
        assert self._loc is not None
        bin_ = self._padded(x, c)
        for k in range(self.n_basis):
            torch.index_select(torch.fft.fftn(bin_[k]).view(-1), 0, self._loc, out=out[k])

    def _ifft_crop_acc(self, z: torch.Tensor, c: int, acc: torch.Tensor) -> None:
        """``acc += conj(S_c pre) · crop(Σ_p z e^{+...})`` (adjoint of :meth:`_pad_fft`).

        One coefficient at a time, each inverse transform used straight from the FFT's result.
        """
        smod = self._smod_conj[c]
        for k in range(self.n_basis):
            acc[k].addcmul_(torch.fft.ifftn(z[k], norm="forward")[self._crop], smod)

    def _mix(self, y: torch.Tensor) -> torch.Tensor:
        """``z[k'] = Σ_k K[k',k] y[k]`` per grid point, into the ``z`` buffer."""
        nb = self.n_basis
        z = self._buf("z")
        yv, zv = y.reshape(nb, -1), z.reshape(nb, -1)
        if self._loc is None:
            self._mix_points(yv.unsqueeze(0), zv.unsqueeze(0))
            return z
        ys = yv.index_select(1, self._loc).unsqueeze(0)
        self._mix_points(ys, ys)
        zv.index_copy_(1, self._loc, ys[0])
        return z

    def _mix_points(self, ys: torch.Tensor, zs: torch.Tensor) -> None:
        """``zs[c, k', p] = Σ_k K[k', k, p] ys[c, k, p]`` for the stored points, blockwise.

        ``ys`` and ``zs`` have shape (coils, basis, points); they may be the same tensor (then
        each block is mixed into a block-sized buffer and copied back).  Several coils per block
        read each block of ``K`` once (issue #14: 4–5 coils at a time made the 64³ gram 16–19 %
        faster).
        """
        nb = self.n_basis
        n = ys.shape[2]
        step = self._chunk or n
        kern = self._kernel
        same = ys.data_ptr() == zs.data_ptr()
        shape = (ys.shape[0], nb, min(step, n) if same else 0)
        tmp = torch.empty(shape, dtype=ys.dtype, device=ys.device)
        for s in range(0, n, step):
            e = min(n, s + step)
            yc, kc = ys[:, :, s:e], kern[:, :, s:e]
            zc = tmp[:, :, : e - s] if same else zs[:, :, s:e]
            for a in range(nb):
                torch.mul(kc[a, 0], yc[:, 0], out=zc[:, a])
                for b in range(1, nb):
                    zc[:, a].addcmul_(kc[a, b], yc[:, b])
            if same:
                zs[:, :, s:e].copy_(zc)

    # -- raw maps (no autograd) ------------------------------------------------------------------
    @reusing_freed_memory()
    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.complex64)
        out = torch.empty(self.out_shape, dtype=torch.complex64, device=x.device)  # type: ignore[arg-type]
        sh = self.out_shape[1:]  # type: ignore[index]
        for c in range(self.n_coils):
            bf = self._pad_fft(x, c)
            bf.mul_(self._post)
            y = bf.reshape(self.n_basis, -1).index_select(1, self._index)
            _mix_basis(y.reshape(self.n_basis, *sh), self._phi_t, out[c])
            if self._sqrtw is not None:
                out[c].mul_(self._sqrtw)
        return out

    def _project_coil(
        self, bc: torch.Tensor, out: torch.Tensor, post: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``out[k, p] = post[p] Σ_{index = p} conj(Φ̃[t,k]) √w[g,t,s] bc[g,t,s]``, sampled ``p``.

        :class:`~.projection.PairProjection` (issue #14: 1.02 → 0.47 s for the ``A^H b`` of a
        64³ scan, and 0.4 s less in session 29); writes the sampled points only.
        """
        if self._projector is None:
            self._projector = PairProjection(self._pairs, self.basis, self._sqrtw)
        return self._projector(bc, out, post)

    @reusing_freed_memory()
    def _adj(self, b: torch.Tensor) -> torch.Tensor:
        b = b.to(torch.complex64)
        acc = torch.zeros(self.in_shape, dtype=torch.complex64, device=b.device)  # type: ignore[arg-type]
        z = self._buf("z")  # zero off the sampled points, as the sparse mixing keeps it
        post = self._post.reshape(-1)[self._pairs.points].conj()
        for c in range(self.n_coils):
            self._project_coil(b[c], z, post)
            self._ifft_crop_acc(z, c, acc)
        self._release_scratch()
        return acc

    @reusing_freed_memory()
    def _gram(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.complex64)
        acc = torch.zeros_like(x)
        if self._loc is None or not self._chunk:  # dense storage, or one block (CUDA)
            for c in range(self.n_coils):
                y = self._pad_fft(x, c)
                z = self._mix(y)
                self._ifft_crop_acc(z, c, acc)
            return acc
        per, nb, loc = self._coils_per_mix(), self.n_basis, self._loc
        ys = self._buffers.get("mix")
        if ys is None or ys.shape[0] != per:  # kept, like the other buffers (fresh memory faults)
            ys = torch.empty((per, nb, loc.numel()), dtype=torch.complex64, device=self.device)
            self._buffers["mix"] = ys
        z = self._buf("z")  # zero off the sampled points
        zv = z.view(nb, -1)
        for c0 in range(0, self.n_coils, per):
            m = min(self.n_coils, c0 + per) - c0
            for j in range(m):
                self._fft_gather(x, c0 + j, ys[j])
            self._mix_points(ys[:m], ys[:m])
            for j in range(m):
                zv.index_copy_(1, loc, ys[j])
                self._ifft_crop_acc(z, c0 + j, acc)
        return acc

    def _coils_per_mix(self) -> int:
        """Coils mixed together in the gram (sparse storage; at least one).

        Within ``max(_MIX_BYTES, _MIX_GRID_BUFFERS · basis · X·Y·Z · 8)`` bytes, i.e. at most
        two more of the operator's full-grid work buffers (issue #14, 96³: one coil per mix 1.52 s
        a gram, two 1.30 s, five 1.12 s).
        """
        per_coil = self.n_basis * (0 if self._loc is None else self._loc.numel()) * 8
        budget = max(_MIX_BYTES, _MIX_GRID_BUFFERS * self.n_basis * self.n_grid * 8)
        return max(1, min(self.n_coils, budget // max(per_coil, 1)))

    # forward, adjoint and gram (FFT and the per-point kernels, exact for gridded data) come from
    # LinearOperator: shape check, kernel without autograd, the adjoint kernel as its vjp
    def project(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Projected k-space ``b̃[c, k, p] = Σ_{(g,t,s): index = p} conj(Φ̃[t,k]) w b[c,g,t,s]``.

        Parameters
        ----------
        values : Tensor, shape (coils, groups, tr, samples), optional
            Raw (unweighted) data; default: the gridded data's own values.

        Returns
        -------
        Tensor, shape (coils, basis, X, Y, Z), complex64
        """
        b = self._values(values)
        out = torch.zeros(
            (self.n_coils, self.n_basis, *self.grid), dtype=torch.complex64, device=self.device
        )
        with torch.no_grad():
            for c in range(self.n_coils):
                self._project_coil(b[c], out[c])
        self._release_scratch()
        return out

    def adjoint_projected(self, projected: torch.Tensor) -> torch.Tensor:
        """Apply ``A^H`` to the projected k-space of :meth:`project`.

        Maps ``(coils, basis, X, Y, Z)`` → ``(basis, x, y, z)``.
        """
        want = (self.n_coils, self.n_basis, *self.grid)
        if tuple(projected.shape) != want:
            raise InputError(
                f"{self.name}: projected k-space has shape "
                f"{tuple(projected.shape)}, expected {want}"
            )
        acc = torch.zeros(self.in_shape, dtype=torch.complex64, device=self.device)  # type: ignore[arg-type]
        with torch.no_grad():
            for c in range(self.n_coils):
                z = projected[c].to(self.device, torch.complex64) * self._post.conj()
                self._ifft_crop_acc(z, c, acc)
        return acc

    def adjoint_data(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """``A^H b`` of the gridded data (computed once and cached for the data's own values).

        Parameters
        ----------
        values : Tensor, shape (coils, groups, tr, samples), optional
            Other data on the same sample layout (not cached).

        Returns
        -------
        Tensor, shape (basis, x, y, z), complex64
        """
        if values is not None:
            return self.adjoint(self._values(values))
        if self._ahb is None:
            with torch.no_grad():
                self._ahb, self._b_norm = self._adj_own()
        return self._ahb.clone()

    def _checked(self, values: torch.Tensor | None) -> torch.Tensor:
        """Return raw data ``b`` (default: own), shape- and NaN/Inf-checked, on the device."""
        b = self.gridded.values if values is None else values
        self.check_out(b)
        if values is None and self._own_finite:
            pass  # the gridded data's own values were checked once (issue #14: 0.8 s at 32³)
        elif not all_finite(b):
            raise InputError(f"{self.name}: k-space contains NaN or Inf")
        elif values is None:
            self._own_finite = True
        return b.to(self.device, torch.complex64)

    def _values(self, values: torch.Tensor | None) -> torch.Tensor:
        """Return the data term's right-hand side ``W^{1/2} b`` of raw data ``b`` (default: own)."""
        b = self._checked(values)
        return b if self._sqrtw is None else b * self._sqrtw

    def _own_coil(self, b: torch.Tensor, c: int) -> torch.Tensor:
        """Coil ``c`` of ``W^{1/2} b`` (in a work buffer that the next call overwrites)."""
        if self._sqrtw is None:
            return b[c]
        out = self._work("weighted", tuple(b.shape[1:]), torch.complex64)
        # on the (re, im) pairs: a complex × real product converts √w to complex first
        torch.mul(torch.view_as_real(b[c]), self._sqrtw[..., None], out=torch.view_as_real(out))
        return out

    @reusing_freed_memory()
    def _adj_own(self) -> tuple[torch.Tensor, float]:
        """``A^H W^{1/2} b`` and ``‖W^{1/2} b‖₂`` of the own values, one coil at a time.

        Without a weighted copy of the whole k-space (issue #14, session 29: 0.2 s of fresh
        memory at 64³, 16 groups).
        """
        b = self._checked(None)
        acc = torch.zeros(self.in_shape, dtype=torch.complex64, device=self.device)  # type: ignore[arg-type]
        z = self._buf("z")  # zero off the sampled points, as the sparse mixing keeps it
        post = self._post.reshape(-1)[self._pairs.points].conj()
        sq = 0.0
        for c in range(self.n_coils):
            bc = self._own_coil(b, c)
            sq += _sq_norm(bc)
            self._project_coil(bc, z, post)
            self._ifft_crop_acc(z, c, acc)
        self._release_scratch()
        return acc, math.sqrt(sq)

    def data_values(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Return the (density-weighted) data ``W^{1/2} b`` that this operator's ``A`` is fitted to.

        Parameters
        ----------
        values : Tensor, shape (coils, groups, tr, samples), optional
            Raw data on the same layout; default: the gridded data's own values.
        """
        return self._values(values)

    def data_norm(self) -> float:
        """``‖W^{1/2} b‖₂`` of the gridded data's own values (the norm-matching ``‖b‖``).

        Float32 norms of blocks of 8,192 numbers combined in float64 (the complex128 norm to
        ~1e-8, issue #14: 10× faster than accumulating every element in float64); computed
        with :meth:`adjoint_data` from the same weighted values when that ran first.
        """
        if self._b_norm is None:
            with torch.no_grad():
                b = self._checked(None)
                sq = sum(_sq_norm(self._own_coil(b, c)) for c in range(self.n_coils))
            self._release_scratch()
            self._b_norm = math.sqrt(sq)
        return self._b_norm


def adjoint_scale(op: LinearOperator, b: torch.Tensor, *, ahb: torch.Tensor | None = None) -> float:
    """Norm-matching scale ``s = ‖b‖₂ / ‖A A^H b‖₂`` (paper appendix A.1).

    The unrolled reconstruction starts from ``s · A^H b``; the adjoint reconstruction returns it.
    ``‖A v‖₂`` is computed as ``√⟨v, A^H A v⟩`` with ``v = A^H b``, so a fast ``gram`` is used.

    Parameters
    ----------
    op : LinearOperator
        The encoding ``A``.
    b : Tensor, shape (coils, groups, tr, samples)
        Measured (or gridded) k-space.
    ahb : Tensor, shape (basis, x, y, z), optional
        ``A^H b`` when already computed.

    Returns
    -------
    float
        ``s`` (``0.0`` when ``b`` is zero).
    """
    with torch.no_grad():
        v = op.adjoint(b) if ahb is None else ahb
        nb = float(torch.linalg.vector_norm(b.to(torch.complex128)))
        if nb == 0.0:
            return 0.0
        av2 = float(
            torch.vdot(
                v.reshape(-1).to(torch.complex128), op.gram(v).reshape(-1).to(torch.complex128)
            ).real
        )
        if av2 <= 0.0:
            raise InputError(f"{op.name}: A A^H b is zero; cannot scale the initialisation")
        return nb / math.sqrt(av2)
