r"""Coil channels: the operator ``S``, ESPIRiT maps, noise pre-whitening and coil compression.

The coil sensitivities of paper 2.1 (:class:`CoilOperator`, :func:`espirit` from the calibration
scan), and the conditioning of measured multi-channel data (:func:`whitening_matrix`,
:func:`compression_matrix`; used when importing raw scanner data).  The simulated head array is
:mod:`spurig_core.simulation.coils`.

ESPIRiT (Uecker et al., MRM 71:990, 2014, doi:10.1002/mrm.24751) is implemented here in torch:

1. the calibration matrix of all ``w³`` kernel patches of the fully sampled calibration region
   ``(coils, cx, cy, cz)`` (SPEC §3: index ``i`` ↔ frequency ``i − cx//2``, same FOV as the image);
2. its right singular vectors with singular value above ``threshold · σ_max`` (the signal space),
   found from the smaller Gram matrix of the calibration matrix, above a noise floor;
3. the image-space operator ``G(ρ) = w⁻³ Σ_j V_j(ρ) V_j(ρ)^H`` with
   ``V_j(ρ) = Σ_u v_j[u] e^{+2πi u·ρ/N}``,
   evaluated exactly on the image matrix through the kernels' autocorrelation (a trigonometric
   polynomial of degree ``w − 1``: ``coils²`` small correlations and slab-wise sums suffice);
4. per voxel, the eigenvector of ``G(ρ)`` with the largest eigenvalue is the coil-sensitivity vector
   (unit norm over coils, phase relative to coil 0); voxels whose eigenvalue is below ``crop`` (the
   true maps have eigenvalue 1) are set to zero.

The result follows the image convention of SPEC §3 (voxel ``r`` at ``r − matrix//2``), so maps from
this module and maps from a scan file are interchangeable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..progress import Callback, emit
from .base import LinearOperator
from .fourier import apply_linear

__all__ = [
    "CoilOperator",
    "EspiritConfig",
    "compression_matrix",
    "espirit",
    "whitening_matrix",
]


class CoilOperator(LinearOperator):
    """Multiplication by coil sensitivities: ``S x = (S_c · x)_c``; ``S^H y = Σ_c conj(S_c) y_c``.

    Parameters
    ----------
    coil_maps : Tensor, shape (coils, x, y, z), complex64
    in_shape : tuple of int, optional
        ``(x, y, z)`` (default) or ``(basis, x, y, z)``: the maps broadcast over the leading axes.

    Notes
    -----
    Shapes: ``(..., x, y, z)`` → ``(coils, ..., x, y, z)``.
    """

    def __init__(self, coil_maps: torch.Tensor, in_shape: Seq[int] | None = None) -> None:
        if coil_maps.ndim != 4:
            raise InputError(f"coil_maps: expected (coils, x, y, z), got {tuple(coil_maps.shape)}")
        if not torch.isfinite(torch.view_as_real(coil_maps.to(torch.complex64))).all():
            raise InputError("coil_maps: contains NaN or Inf")
        self.maps = coil_maps.to(torch.complex64)
        img = tuple(coil_maps.shape[1:])
        ins = tuple(int(s) for s in in_shape) if in_shape is not None else img
        if ins[-3:] != img:
            raise InputError(f"CoilOperator: input {ins} does not end with the map matrix {img}")
        self._lead = len(ins) - 3
        super().__init__(ins, (coil_maps.shape[0], *ins), name="Coils")

    def _maps(self, like: torch.Tensor) -> torch.Tensor:
        s = self.maps.to(device=like.device, dtype=like.dtype if like.is_complex() else None)
        return s.reshape(s.shape[0], *((1,) * self._lead), *s.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., x, y, z)`` → ``(coils, ..., x, y, z)``."""
        self.check_in(x)
        return self._maps(x) * x.unsqueeze(0)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(coils, ..., x, y, z)`` → ``(..., x, y, z)``."""
        self.check_out(y)
        return (self._maps(y).conj() * y).sum(0)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_c |S_c|² x``."""
        self.check_in(x)
        w = (self.maps.abs() ** 2).sum(0).to(x.device)
        return apply_linear(x, lambda t: w * t, lambda t: w * t)


@dataclass(frozen=True)
class EspiritConfig:
    """Tunables of :func:`espirit`.

    Attributes
    ----------
    kernel_width : int
        ESPIRiT kernel size ``w`` per axis (k-space points); reduced to fit small calibrations.
    threshold : float
        Keep singular vectors of the calibration matrix with ``σ > threshold · σ_max``.
    crop : float
        Zero the maps where the largest eigenvalue of ``G(ρ)`` is below this (outside the object).
    noise_margin : float
        Also drop singular vectors below this multiple of the estimated noise floor (``0``: off).
    max_calibration : int
        Use at most this many central calibration points per axis (speed: the calibration matrix
        has ``(max_calibration − w + 1)³`` rows and ``coils · w³`` columns).
    slab_voxels : int
        Voxels per slab in the eigen-decomposition (bounds memory: ``coils² · slab_voxels``).
    """

    kernel_width: int = 4
    threshold: float = 0.02
    crop: float = 0.95
    noise_margin: float = 1.5
    max_calibration: int = 24
    slab_voxels: int = 1 << 16


def _calibration_matrix(calib: torch.Tensor, w: tuple[int, int, int]) -> torch.Tensor:
    """Rows = kernel patches, columns = ``(coils, w0, w1, w2)``: ``(patches, coils·w³)``."""
    c = calib.shape[0]
    p = calib.unfold(1, w[0], 1).unfold(2, w[1], 1).unfold(3, w[2], 1)
    # (coils, n0, n1, n2, w0, w1, w2) → (n0, n1, n2, coils, w0, w1, w2)
    p = p.permute(1, 2, 3, 0, 4, 5, 6)
    return p.reshape(-1, c * math.prod(w))


def _signal_kernels(
    calib: torch.Tensor, w: tuple[int, int, int], threshold: float, noise_margin: float
) -> torch.Tensor:
    """Orthonormal signal-space kernels ``(n_kernels, coils, w0, w1, w2)`` (complex128).

    The right singular vectors ``v_j`` of the calibration matrix ``a`` with
    ``σ_j > threshold·σ_max`` and ``σ_j²`` above the noise floor, conjugated (patch vectors, the
    rows of ``a``, lie in the span of ``conj(v_j)``).  The smaller of the two Gram matrices is
    decomposed (``a^H a`` in single precision: ample for a threshold of a few per cent).  The noise
    floor is the Marchenko–Pastur upper edge ``σ²(√m + √n)²`` with ``σ²`` from the median eigenvalue
    (most are noise), times ``noise_margin``; without it, noisy calibrations keep every kernel and
    the maps are arbitrary.
    """
    a = _calibration_matrix(calib, w).to(torch.complex64)
    rows, cols = a.shape
    if rows <= cols:
        a = a.to(torch.complex128)
        evals, u = torch.linalg.eigh(a @ a.conj().T)
    else:
        gram = a.conj().T @ a
        evals, u = torch.linalg.eigh(0.5 * (gram + gram.conj().T))
    evals = evals.clamp_min(0).double()
    m, n = max(rows, cols), min(rows, cols)
    sigma2 = float(evals.median()) / m if n > 1 else 0.0
    floor = noise_margin * sigma2 * (math.sqrt(m) + math.sqrt(n)) ** 2
    keep = (evals > (threshold**2) * evals[-1]) & (evals > floor)
    keep[-1] = True
    if rows <= cols:
        v = (a.conj().T @ u[:, keep]) / evals[keep].sqrt()
    else:
        v = u[:, keep].to(torch.complex128)
    # Patch vectors (rows of a) lie in the span of conj(V): the right singular vectors conjugated.
    v = v.T.conj()  # (n_kernels, coils·w³)
    return v.reshape(v.shape[0], calib.shape[0], *w)


def _autocorrelation(kernels: torch.Tensor) -> torch.Tensor:
    """``R[c, c', Δ] = Σ_j Σ_{u−u'=Δ} v_j[c,u] conj(v_j[c',u'])`` for ``Δ ∈ [−(w−1), w−1]³``.

    Returns ``(coils, coils, 2w0−1, 2w1−1, 2w2−1)`` with ``Δ = 0`` at index ``w − 1``.
    """
    w = kernels.shape[-3:]
    size = tuple(2 * n for n in w)  # ≥ 2w − 1: no wrap-around
    a = torch.fft.fftn(kernels, s=size, dim=(-3, -2, -1))  # (j, c, L0, L1, L2)
    spec = torch.einsum("jcabd,jeabd->ceabd", a, a.conj())
    r = torch.fft.ifftn(spec, dim=(-3, -2, -1))  # circular correlation, Δ at index Δ mod L
    idx = [torch.arange(-(n - 1), n) % (2 * n) for n in w]
    r = r[..., idx[0], :, :][..., :, idx[1], :][..., :, :, idx[2]]
    return r


def _ramp(delta_max: int, n: int, idx: torch.Tensor) -> torch.Tensor:
    """``E[ρ, Δ] = exp(2πi Δ (r − n//2)/n)`` for voxel indices ``idx`` and ``Δ ∈ [−Δmax, Δmax]``."""
    d = torch.arange(-delta_max, delta_max + 1, dtype=torch.float64)
    rho = idx.to(torch.float64) - n // 2
    return torch.exp(2j * math.pi * rho[:, None] * d[None, :] / n)


def _top_eigenvectors(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest eigenpair of Hermitian ``g (voxels, coils, coils)`` per voxel.

    A batched ``eigh`` (exact; faster on the CPU than a power iteration over strided coils).
    Returns ``v (coils, voxels)`` (unit norm) and ``λ (voxels,)``.
    """
    evals, evecs = torch.linalg.eigh(g)
    return evecs[:, :, -1].T, evals[:, -1]


def espirit(
    calibration: torch.Tensor,
    matrix: Seq[int],
    *,
    config: EspiritConfig | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Estimate coil sensitivities from the calibration region by ESPIRiT (module docstring).

    Parameters
    ----------
    calibration : Tensor, shape (coils, cx, cy, cz), complex64
        Fully sampled centre of k-space, index ``i`` ↔ integer frequency ``i − cx//2`` (SPEC §3),
        at the same FOV as the image.
    matrix : tuple of 3 int
        Image matrix ``(x, y, z)`` of the maps.
    config : EspiritConfig, optional
    callback : Callback, optional
        Receives one ``"espirit"`` progress event per slab.

    Returns
    -------
    Tensor, shape (coils, x, y, z), complex64
        Unit-norm (over coils) sensitivities, phase relative to coil 0, zero where the largest
        eigenvalue is below ``config.crop``.  On the device of ``calibration``.
    """
    cfg = config or EspiritConfig()
    matrix = tuple(int(n) for n in matrix)
    if calibration.ndim != 4 or len(matrix) != 3:
        raise InputError(
            f"calibration: expected (coils, cx, cy, cz), got {tuple(calibration.shape)}"
        )
    if not torch.isfinite(torch.view_as_real(calibration.to(torch.complex64))).all():
        raise InputError("calibration: contains NaN or Inf")
    device = calibration.device
    ncoil = calibration.shape[0]
    # Central region of at most max_calibration points per axis (keeping the centre index).
    sl = []
    for n in calibration.shape[1:]:
        m = min(int(n), cfg.max_calibration)
        start = n // 2 - m // 2
        sl.append(slice(start, start + m))
    calib = calibration[:, sl[0], sl[1], sl[2]].to(torch.complex64)
    w = tuple(max(1, min(cfg.kernel_width, int(n) - 1 if n > 1 else 1)) for n in calib.shape[1:])
    if any(2 * wi - 1 > n for wi, n in zip(w, matrix, strict=True)):
        raise InputError(f"calibration: kernel {w} too large for the image matrix {matrix}")
    if float(torch.linalg.vector_norm(calib)) == 0.0:
        raise InputError("calibration: all zeros")
    # Scale-free: normalise (eigenvalues of G do not depend on it, but float ranges do).
    calib = calib / torch.linalg.vector_norm(calib)
    w3 = (w[0], w[1], w[2])
    kernels = _signal_kernels(calib.cpu(), w3, cfg.threshold, cfg.noise_margin)  # (j, c, w³) c128
    r = _autocorrelation(kernels) / math.prod(w)  # (c, c', 2w0-1, 2w1-1, 2w2-1)

    # Axes 1 and 2 are evaluated at every voxel at once; axis 0 in slabs.
    e1 = _ramp(w[1] - 1, matrix[1], torch.arange(matrix[1]))  # (y, Δ1)
    e2 = _ramp(w[2] - 1, matrix[2], torch.arange(matrix[2]))  # (z, Δ2)
    r12 = torch.einsum("cdabe,ze->cdabz", r, e2)
    r12 = torch.einsum("cdabz,yb->cdayz", r12, e1)  # (c, c', Δ0, y, z)
    r12 = r12.to(device=device, dtype=torch.complex64)
    plane = matrix[1] * matrix[2]
    slab = max(1, min(matrix[0], cfg.slab_voxels // plane))
    maps = torch.zeros((ncoil, *matrix), dtype=torch.complex64, device=device)
    total = math.ceil(matrix[0] / slab)
    for step, s in enumerate(range(0, matrix[0], slab)):
        e = min(matrix[0], s + slab)
        e0 = _ramp(w[0] - 1, matrix[0], torch.arange(s, e)).to(device, torch.complex64)
        g = torch.einsum("cdayz,xa->xyzcd", r12, e0).reshape(-1, ncoil, ncoil)
        # λ_max ≤ trace: voxels below the crop need no eigenvector (outside the object).
        live = torch.diagonal(g, dim1=1, dim2=2).real.sum(-1) >= cfg.crop
        v = torch.zeros((ncoil, g.shape[0]), dtype=torch.complex64, device=device)
        if bool(live.any()):
            vl, lam = _top_eigenvectors(g[live])
            ref = vl[:1]
            mag = ref.abs()
            phase = torch.where(mag > 0, ref.conj() / mag.clamp_min(1e-30), torch.ones_like(ref))
            v[:, live] = vl * phase * (lam > cfg.crop)
        maps[:, s:e] = v.reshape(ncoil, e - s, matrix[1], matrix[2])
        emit(callback, "espirit", step + 1, total, "coil maps")
    return maps


# ----------------------------------------------------------------------------------------------
# measured channels: noise pre-whitening and SVD coil compression
# ----------------------------------------------------------------------------------------------
def whitening_matrix(noise: np.ndarray) -> np.ndarray:
    """Noise pre-whitening: ``W`` with ``W Ψ W^H = I`` for the noise covariance ``Ψ``.

    ``W = L^{-1}`` with ``Ψ = L L^H`` (Cholesky) and ``Ψ = N N^H / n`` estimated from noise-only
    samples (Pruessmann et al., MRM 46:638, 2001, doi:10.1002/mrm.1241); applied to k-space and
    calibration data, it makes the channels' noise white with unit variance.

    Parameters
    ----------
    noise : ndarray, shape (coils, n), complex
        Samples of a noise measurement (no RF).

    Returns
    -------
    ndarray, shape (coils, coils), complex64

    Raises
    ------
    InputError
        When there are fewer samples than coils or the covariance is singular (a dead channel).
    """
    n_coils, n = noise.shape
    if n < n_coils:
        raise InputError(f"noise scan: {n} samples cannot estimate a {n_coils}-channel covariance")
    x = np.asarray(noise, dtype=np.complex128)
    psi = x @ x.conj().T / n
    try:
        low = np.linalg.cholesky(psi)
    except np.linalg.LinAlgError:
        raise InputError(
            "noise scan: the noise covariance is singular (a channel without noise?)"
        ) from None
    return np.linalg.inv(low).astype(np.complex64)


def compression_matrix(data: np.ndarray, coils: int) -> np.ndarray:
    """SVD coil compression of measured data to ``coils`` virtual coils.

    The virtual coils are the leading left singular vectors of the data matrix (Buehrer et al.,
    MRM 57:1131, 2007, doi:10.1002/mrm.21237; Huang et al., MRI 26:133, 2008): ``A = U_K^H``, so
    ``A @ x`` keeps the most energy of ``x`` that ``K`` channels can.  Compute it from the
    calibration data (or the centre of k-space) and apply it to every array of the scan.

    Parameters
    ----------
    data : ndarray, shape (elements, n), complex
        Samples of all channels (e.g. calibration points).
    coils : int
        Virtual coils to keep (``1 … elements``).

    Returns
    -------
    ndarray, shape (coils, elements), complex64
        Orthonormal rows, each with its largest entry real and positive: a singular vector is
        defined only up to a phase, and fixing it makes the matrix a function of the data alone
        (not of the LAPACK build or thread count), so a scan compressed twice — once for its
        gridding, once for its reconstruction — gets the same virtual coils.
    """
    n_el = data.shape[0]
    if not 1 <= coils <= n_el:
        raise InputError(f"--coils {coils}: choose 1 to {n_el} virtual coils")
    u, _, _ = np.linalg.svd(np.asarray(data, dtype=np.complex128), full_matrices=False)
    a = u[:, :coils].conj().T
    lead = a[np.arange(coils), np.abs(a).argmax(axis=1)]
    a = a * (np.abs(lead) / lead)[:, None]
    return a.astype(np.complex64)


def virtual_coils(scan: Any, max_coils: int) -> Any:
    """Return ``scan`` compressed to ``max_coils`` virtual coils if it has more channels.

    The one rule every entry point applies before gridding or reconstructing
    (``GriddingConfig.max_coils``): the iGROG kernel predicts ``2·C²·n_sources`` outputs, and with
    24–32 channels its fit underfits (gridded LLR −0.56 and −1.56 dB from LLR-NUFFT at 32³,
    −0.18/−0.20 dB once compressed to 16; ``benchmarks/RESULTS-igrog.md``).  Every method — the
    NUFFT ones too — then sees the same compressed data, so their comparison stays fair.  The
    compression (:func:`compress_scan`) is a function of the calibration alone, so compressing
    the same scan again gives the same virtual coils.

    Parameters
    ----------
    scan : Scan
    max_coils : int
        Most channels kept as they are (``0``: never compress).

    Returns
    -------
    Scan
        ``scan`` itself (``0`` or at most ``max_coils`` channels), or a compressed copy with
        ``max_coils`` channels.
    """
    if max_coils <= 0 or int(scan.kspace.shape[0]) <= max_coils:
        return scan
    return compress_scan(scan, max_coils)


def compress_scan(scan: Any, coils: int, *, matrix: np.ndarray | None = None) -> Any:
    """Return ``scan`` with its channels SVD-compressed to ``coils`` virtual coils.

    The compression ``A`` (:func:`compression_matrix`) comes from the calibration data (or, without
    a calibration, from the k-space of the first group) unless ``matrix`` is given, and is applied
    to every per-channel array: ``kspace``, ``calibration`` and ``coil_maps`` (``A S`` are the
    virtual coils' sensitivities, so the forward model of SPEC §3 holds for the compressed scan).
    ``A`` has orthonormal rows, so white channel noise stays white with the same variance.

    Parameters
    ----------
    scan : Scan
        A scan with ``C ≥ coils`` channels.
    coils : int
        Virtual coils to keep (``1 … C``).
    matrix : ndarray, shape (coils, C), complex, optional
        A compression matrix to reuse (e.g. the noisy scan's for its noise-free twin).

    Returns
    -------
    Scan
        A new scan (the input is not changed); ``scan.path`` and ``sha256`` are cleared.
    """
    import dataclasses

    n_in = int(scan.kspace.shape[0])
    if matrix is None:
        source = scan.calibration if scan.calibration is not None else scan.kspace[:, 0]
        matrix = compression_matrix(source.reshape(n_in, -1).numpy(), coils)
    a = torch.as_tensor(np.asarray(matrix), dtype=torch.complex64)
    if a.shape != (coils, n_in):
        raise InputError(f"compression matrix: shape {tuple(a.shape)}, expected ({coils}, {n_in})")

    def mix(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        return (a @ x.reshape(n_in, -1)).reshape(coils, *x.shape[1:])

    return dataclasses.replace(
        scan,
        kspace=mix(scan.kspace),
        calibration=mix(scan.calibration),
        coil_maps=mix(scan.coil_maps),
        path=None,
        sha256=None,
    )
