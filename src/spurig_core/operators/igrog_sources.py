"""iGROG geometry and calibration values: where a sample's grid value is predicted from.

:func:`find_sources` gives every acquired sample its target (the nearest point of the
oversampled grid) and its ``n`` source samples along the same arm, with their displacements;
:func:`calibration_image` and :func:`calibration_kspace` evaluate the calibration data at any
k (band-limited interpolation by a type-2 NUFFT, Luo et al., MRM 2019, doi:10.1002/mrm.27801),
which gives the kernel's training pairs and the self-checks their reference values.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .fourier import nufft_plan
from .grid import nearest_grid_index

__all__ = ["calibration_image", "calibration_kspace", "find_sources"]


def find_sources(
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    grid: tuple[int, int, int],
    *,
    n_sources: int,
    search_window: int,
    source_spacing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target grid point and source samples of every sample of a batch of arms.

    Parameters
    ----------
    trajectory : Tensor, shape (arms, samples, 3), float
        k-space positions in cycles/FOV (one arm = one group and TR).
    matrix : tuple of 3 int
        Image matrix.
    grid : tuple of 3 int
        Oversampled grid shape.
    n_sources : int
        Sources per target.
    search_window : int
        Candidates are the ``2·search_window + 1`` readout neighbours (window shifted at the ends).
    source_spacing : float
        ``> 0``: instead of the nearest candidates, take every ``m``-th readout sample around the
        sample itself, ``m = max(1, round(source_spacing / Δ))`` with ``Δ`` the local readout
        step (mean over 5 samples), so that the sources of a densely sampled readout are about
        ``source_spacing`` cycles/FOV apart rather than a tight, nearly collinear cluster (whose
        kernel amplifies noise); the set is shifted to fit at the ends of the arm.

    Returns
    -------
    index : Tensor, shape (arms, samples), int64
        Linear grid index of each sample's nearest grid point (the target).
    sources : Tensor, shape (arms, samples, n), int64
        Readout indices of the ``n`` candidates nearest to the target, in readout order.
    displacement : Tensor, shape (arms, samples, n, 3), float32
        ``k_source − k_target`` in cycles/FOV.
    """
    arms, ns, _ = trajectory.shape
    index, offset = nearest_grid_index(trajectory, matrix, grid)
    k_target = trajectory.double() - offset.double()
    dev = trajectory.device
    s = torch.arange(ns, device=dev)
    if n_sources == 1 and search_window == 0:
        src = s.expand(arms, ns).unsqueeze(-1)
    elif source_spacing > 0 and n_sources > 1:
        src = _strided_sources(trajectory, n_sources, source_spacing)
    else:
        width = min(2 * search_window + 1, ns)
        if width < n_sources:
            raise InputError(
                f"trajectory: arms of {ns} samples are shorter than n_sources = {n_sources}"
            )
        start = torch.clamp(s - search_window, 0, ns - width)
        # coordinate-major (3, arms, samples, width) windows: three contiguous passes instead of
        # a reduction over a trailing axis of 3 (issue #14: gridding speed).  The ranking runs in
        # float32 (the trajectory's own precision): on the 64³ bench scan it picks the same
        # sources as float64 for all 3,072,000 samples, at 40 % less time (RESULTS-igrog.md)
        tc = trajectory.float().permute(2, 0, 1)  # (3, arms, samples)
        windows = tc.unfold(2, width, 1).index_select(2, start)  # (3, arms, samples, width)
        diff = windows - k_target.float().permute(2, 0, 1)[..., None]
        dist = diff[0].square()
        dist.addcmul_(diff[1], diff[1]).addcmul_(diff[2], diff[2])
        near = torch.topk(dist, n_sources, dim=-1, largest=False).indices
        src = torch.sort(near, dim=-1).values + start[None, :, None]
    ks = torch.gather(trajectory.double(), 1, src.reshape(arms, -1, 1).expand(-1, -1, 3))
    disp = ks.view(arms, ns, -1, 3) - k_target[:, :, None, :]
    return index, src, disp.float()


def _strided_sources(trajectory: torch.Tensor, n: int, spacing: float) -> torch.Tensor:
    """Readout indices ``(arms, samples, n)`` of sources about ``spacing`` apart along the arm.

    Source ``j`` is the sample nearest to arc length ``base + j·spacing`` with
    ``base = L(s) − ((n − 1)//2)·spacing`` (shifted to fit inside the arm); indices are then made
    strictly increasing, so a readout sparser than ``spacing`` gives consecutive samples.
    """
    ns = int(trajectory.shape[1])
    dev = trajectory.device
    step = torch.linalg.vector_norm(torch.diff(trajectory.double(), dim=1), dim=-1)
    arc = torch.cat([torch.zeros_like(step[:, :1]), torch.cumsum(step, dim=1)], dim=1)  # (a, ns)
    total = arc[:, -1:]
    base = arc - ((n - 1) // 2) * spacing
    base = torch.minimum(base, total - (n - 1) * spacing).clamp_min(0.0)
    want = base[..., None] + spacing * torch.arange(n, device=dev, dtype=torch.float64)
    flat = want.reshape(want.shape[0], -1)
    right = torch.searchsorted(arc.contiguous(), flat.contiguous()).clamp(max=ns - 1)
    left = (right - 1).clamp(min=0)
    pick_left = (flat - torch.gather(arc, 1, left)) < (torch.gather(arc, 1, right) - flat)
    idx = torch.where(pick_left, left, right).view(want.shape)
    for j in range(1, n):  # strictly increasing
        idx[..., j] = torch.maximum(idx[..., j], idx[..., j - 1] + 1)
    over = (idx[..., -1] - (ns - 1)).clamp(min=0)  # shift back a set that ran past the end
    return idx - over[..., None]


def _flat_arms(trajectory: torch.Tensor) -> torch.Tensor:
    return trajectory.reshape(-1, trajectory.shape[-2], 3)


def calibration_image(calibration: torch.Tensor) -> torch.Tensor:
    """Low-resolution coil images whose SPEC §3 transform at integer frequencies is ``calibration``.

    Parameters
    ----------
    calibration : Tensor, shape (coils, cx, cy, cz), complex
        ``calibration[c, i, j, l]`` at frequency ``(i − cx//2, j − cy//2, l − cz//2)`` cycles/FOV.

    Returns
    -------
    Tensor, shape (coils, cx, cy, cz), complex128
        Voxel ``r`` sits at ``(r − c//2)·matrix/c`` (full-resolution voxel units).
    """
    dims = (-3, -2, -1)
    x = torch.fft.ifftshift(calibration.to(torch.complex128), dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(x, dim=dims), dim=dims)


def calibration_kspace(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Band-limited interpolation of the calibration data at arbitrary frequencies (type-2 NUFFT).

    Parameters
    ----------
    image : Tensor, shape (coils, cx, cy, cz), complex
        From :func:`calibration_image`.
    k : Tensor, shape (points, 3), float
        Frequencies in cycles/FOV, inside ``[-c/2, c/2)`` per axis.

    Returns
    -------
    Tensor, shape (coils, points), complex128
        ``Σ_r image[c, r] exp(-2πi Σ_d k_d (r_d − c_d//2) / c_d)``; equals ``calibration`` at
        integer ``k``.
    """
    shape = image.shape[-3:]
    f = np.ascontiguousarray(image.detach().cpu().numpy().astype(np.complex128))
    pts = k.detach().cpu().double().numpy()
    xyz = [np.ascontiguousarray(2 * np.pi * pts[:, d] / shape[d]) for d in range(3)]
    plan = nufft_plan(2, shape, n_trans=int(image.shape[0]), eps=1e-9, dtype="complex128")
    plan.setpts(*xyz)
    out = plan.execute(f if image.shape[0] > 1 else f[0])
    return torch.from_numpy(np.asarray(out).reshape(image.shape[0], -1))
