"""The forward model of SPEC §3 (NUFFT) and the Cartesian calibration scan.

Forward model (SPEC §3, exactly)::

    kspace[c, g, t, s] = Σ_r S_c(r) m_t(r) exp(−2πi k·(r − matrix//2) / matrix)
    k = trajectory[g, t, s]

evaluated with finufft (type 2, ``isign=−1``, points ``2π k_d / matrix_d``; cufinufft when CUDA
is there) on the time series in its factorised form ``m_t = Σ_j basis[t, j] images[j]``
(:func:`spurig_core.simulation.signals.signal_subspace`).

Calibration (SPEC §3): the fully sampled Cartesian centre ``(coils, cx, cy, cz)`` of a
proton-density weighted scan (image ``S_c · Σ_j f_j PD_j exp(iφ)``), at the integer frequencies
``(i − cx//2, j − cy//2, l − cz//2)``; computed exactly with an FFT.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import InputError
from ..operators.fourier import cufinufft_available, nufft_plan
from ..progress import Callback, emit

__all__ = ["calibration_data", "nufft_forward"]


def nufft_forward(
    images: torch.Tensor,
    coil_maps: torch.Tensor,
    trajectory: torch.Tensor,
    basis: torch.Tensor,
    *,
    eps: float = 1e-6,
    group_chunk: int = 4,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Return the forward model of SPEC §3 for images in a temporal factorisation.

    ``kspace[c, g, t, s] = Σ_j basis[t, j] Σ_r S_c(r) images[j, r] exp(−2πi k·(r − N//2)/N)``.

    Parameters
    ----------
    images : Tensor, shape (rank, x, y, z), complex64
        Coefficient images.
    coil_maps : Tensor, shape (coils, x, y, z), complex64
    trajectory : Tensor, shape (groups, tr, samples, 3), float32
        Cycles per FOV.
    basis : Tensor, shape (tr, rank), complex64
    eps : float
        finufft tolerance.
    group_chunk : int
        Groups per NUFFT call.
    callback : Callback, optional
        ``emit(callback, "nufft", groups_done, groups)``.

    Returns
    -------
    Tensor, shape (coils, groups, tr, samples), complex64
    """
    rank, *mat = images.shape
    coils = coil_maps.shape[0]
    groups, tr, samples, _ = trajectory.shape
    if tuple(coil_maps.shape[1:]) != tuple(mat) or basis.shape != (tr, rank):
        raise InputError(
            f"nufft_forward: images {tuple(images.shape)}, coil maps "
            f"{tuple(coil_maps.shape)} and basis {tuple(basis.shape)} do not fit"
        )
    out = np.empty((coils, groups, tr, samples), dtype=np.complex64)
    img = images.detach().cpu().numpy().astype(np.complex64)
    maps = coil_maps.detach().cpu().numpy().astype(np.complex64)
    bt = basis.detach().cpu().numpy().astype(np.complex64)
    scale = (2.0 * np.pi / np.asarray(mat, dtype=np.float64)).astype(np.float32)
    if cufinufft_available():
        try:
            return _nufft_forward_cuda(img, maps, trajectory, bt, eps, group_chunk, callback)
        except Exception as exc:  # an unusable GPU build must not stop a simulation
            import warnings

            warnings.warn(
                f"cufinufft failed ({exc}); simulating with finufft on the CPU",
                RuntimeWarning,
                stacklevel=2,
            )
    nthreads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads()
    plan = nufft_plan(2, mat, n_trans=rank, eps=eps, nthreads=nthreads)
    traj = trajectory.detach().cpu().numpy()
    for g0 in range(0, groups, group_chunk):
        g1 = min(groups, g0 + group_chunk)
        pts = traj[g0:g1].reshape(-1, 3)
        plan.setpts(*[np.ascontiguousarray(pts[:, d] * scale[d]) for d in range(3)])
        for c in range(coils):
            f = plan.execute(np.ascontiguousarray(img * maps[c][None]))  # (rank, M)
            f = f.reshape(rank, g1 - g0, tr, samples)
            for g in range(g1 - g0):  # per group: small temporaries
                # out[t, s] = Σ_j bt[t, j] f[j, t, s], batched over t as (t, 1, j) @ (t, j, s)
                ft = f[:, g].transpose(1, 0, 2)  # (tr, rank, samples), a view
                out[c, g0 + g] = np.matmul(bt[:, None, :], ft)[:, 0, :]
        emit(callback, "nufft", g1, groups, f"groups {g1}/{groups}")
    return torch.from_numpy(out)


def _nufft_forward_cuda(
    img: np.ndarray,
    maps: np.ndarray,
    trajectory: torch.Tensor,
    bt: np.ndarray,
    eps: float,
    group_chunk: int,
    callback: Callback | None,
) -> torch.Tensor:
    """:func:`nufft_forward` on the GPU with cufinufft (same conventions)."""
    rank, *mat = img.shape
    groups, tr, samples, _ = trajectory.shape
    dev = torch.device("cuda")
    scale = torch.tensor([2.0 * np.pi / m for m in mat], dtype=torch.float32, device=dev)
    plan = nufft_plan(2, mat, n_trans=rank, eps=eps, gpu=True)
    img_d = torch.from_numpy(img).to(dev)
    maps_d = torch.from_numpy(maps).to(dev)
    bt_d = torch.from_numpy(bt).to(dev)
    out = torch.empty((maps.shape[0], groups, tr, samples), dtype=torch.complex64)
    for g0 in range(0, groups, group_chunk):
        g1 = min(groups, g0 + group_chunk)
        pts = trajectory[g0:g1].reshape(-1, 3).to(dev) * scale
        plan.setpts(*[pts[:, d].contiguous() for d in range(3)])
        for c in range(maps.shape[0]):
            f = plan.execute((img_d * maps_d[c][None]).contiguous())
            f = f.reshape(rank, g1 - g0, tr, samples)
            out[c, g0:g1] = torch.einsum("tj,jgts->gts", bt_d, f).cpu()
        emit(callback, "nufft", g1, groups, f"groups {g1}/{groups}")
    return out


def calibration_data(
    image: torch.Tensor, coil_maps: torch.Tensor, size: int | tuple[int, int, int]
) -> torch.Tensor:
    """Fully sampled Cartesian k-space centre of the coil images ``S_c · image`` (SPEC §3).

    ``calib[c, i, j, l] = Σ_r S_c(r) image(r) exp(−2πi k·(r − N//2)/N)`` at
    ``k = (i − cx//2, j − cy//2, l − cz//2)``, computed exactly with an FFT.

    Parameters
    ----------
    image : Tensor, shape (x, y, z), complex64
    coil_maps : Tensor, shape (coils, x, y, z), complex64
    size : int or tuple of 3 int
        ``(cx, cy, cz)``, each at most the matrix.

    Returns
    -------
    Tensor, shape (coils, cx, cy, cz), complex64
    """
    mat = tuple(image.shape)
    cs = (int(size),) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    cs = tuple(min(c, n) for c, n in zip(cs, mat, strict=True))
    spec = torch.fft.fftn(coil_maps * image[None], dim=(1, 2, 3))
    out = spec
    for d, (n, c) in enumerate(zip(mat, cs, strict=True)):
        k = torch.arange(c) - c // 2
        # Σ_r x(r) e^{−2πi k (r − n//2)/n} = FFT(x)[k mod n] · e^{+2πi k (n//2)/n}
        ph = torch.exp(2j * torch.pi * k.double() * (n // 2) / n).to(torch.complex64)
        out = torch.index_select(out, d + 1, k % n)
        shape = [1, 1, 1, 1]
        shape[d + 1] = c
        out = out * ph.reshape(shape)
    return out.to(torch.complex64).contiguous()
