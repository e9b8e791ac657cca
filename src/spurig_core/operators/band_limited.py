r"""The gridded encoding on the central block of k-space: the top of ``A^H A``'s spectrum, cheaply.

3D SPI samples the k-space centre densely, so the top eigenvectors of the gridded gram
``A^H A`` are smooth images whose k-space lies near the centre (the densest points carry the
largest per-point kernels).  :func:`band_limited` builds the same encoding for a small image
(``m`` voxels per axis instead of ``N``) on the central ``m/N`` of the grid: the same per-point
kernels ``K(p)`` at those points, the coil maps resampled to ``m`` voxels (their k-space cropped).
For an image ``x`` of ``m`` voxels and its band-limited resampling ``U x`` to ``N`` voxels,
``‖A U x‖² / ‖U x‖² ≈ (N/m)³ ‖A_m x‖² / ‖x‖²`` (exact up to the maps' spectrum beyond the block),
so a Lanczos run on ``A_m^H A_m`` — a 24³ FFT per coefficient and coil instead of a 96³ one at
64³ — gives the top of the spectrum and a start vector for the full operator
(:func:`~spurig_core.operators.step_size.step_size_of`, issue #14).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InputError
from .encoding import GriddedSubspaceEncoding
from .fourier import crop3, fft3c, ifft3c, pad3
from .grid import GriddedData

__all__ = ["BAND_SIZE", "band_limited", "band_matrix", "resample"]

#: Voxels per axis of the band-limited image (at least; the grid must scale exactly).
BAND_SIZE = 16


def band_matrix(
    matrix: Sequence[int], grid: Sequence[int], size: int | None = None
) -> tuple[int, int, int] | None:
    """Return the band-limited image size for an encoding, or None where none pays.

    Per axis the smallest even ``m ≥ size`` (default :data:`BAND_SIZE`) whose grid ``m·X/N`` is
    an even integer (the grid spacing in cycles/FOV must stay the same); ``None`` when the block
    would hold more than 1/8 of the image's voxels (its grams would cost as much as the full
    ones they replace).
    """
    size = BAND_SIZE if size is None else int(size)
    out = []
    for n, x in zip(matrix, grid, strict=True):
        m = size + size % 2
        while m < n and ((m * x) % n or ((m * x) // n) % 2):
            m += 2
        if m >= n:
            return None
        out.append(m)
    if 8 * math.prod(out) > math.prod(int(n) for n in matrix):
        return None
    return (out[0], out[1], out[2])


def resample(x: torch.Tensor, matrix: Sequence[int]) -> torch.Tensor:
    """Band-limited resampling of the last three axes to ``matrix`` (values kept).

    The centred k-space is zero-padded (every axis up) or cropped (every axis down) to
    ``matrix``; a constant image stays the same constant.

    Parameters
    ----------
    x : Tensor, shape (..., x, y, z), complex
    matrix : tuple of 3 int

    Returns
    -------
    Tensor, shape (..., *matrix), complex64
    """
    n_in = math.prod(x.shape[-3:])
    pairs = list(zip(x.shape[-3:], matrix, strict=True))
    up = all(int(a) <= int(b) for a, b in pairs)
    if not up and not all(int(a) >= int(b) for a, b in pairs):
        raise InputError(f"resample: {tuple(x.shape[-3:])} → {tuple(matrix)} mixes up and down")
    k = fft3c(x.to(torch.complex64))
    k = pad3(k, matrix) if up else crop3(k, matrix)
    return ifft3c(k, norm="forward").div_(n_in)


def band_limited(
    op: GriddedSubspaceEncoding, maps: torch.Tensor, size: int | None = None
) -> tuple[GriddedSubspaceEncoding, torch.Tensor, float] | None:
    """Build the encoding ``op`` on its central k-space block (an image of about ``size`` voxels).

    Parameters
    ----------
    op : GriddedSubspaceEncoding
    maps : Tensor, shape (coils, x, y, z), complex64
        ``op``'s coil maps.
    size : int, optional
        Default :data:`BAND_SIZE`.

    Returns
    -------
    (operator, maps, scale) or None
        The block's encoding (its samples are ``op``'s (point, repetition) pairs inside the
        block, weighted by their summed data weights, so that its per-point kernels are
        ``op``'s), its resampled coil maps, and ``scale = N³/m³`` with ``λ_max(A^H A) ≈ scale ·
        λ_max(A_m^H A_m)``; ``None`` where :func:`band_matrix` finds no block.
    """
    m = band_matrix(op.matrix, op.grid, size)
    if m is None:
        return None
    g = tuple(mi * xi // ni for mi, xi, ni in zip(m, op.grid, op.matrix, strict=True))
    pairs, dev = op.pairs, op.device
    # the sampled points inside the block, and their index on the block's grid
    rest, inside = pairs.points, torch.ones_like(pairs.points, dtype=torch.bool)
    lo_point = torch.zeros_like(pairs.points)
    stride = 1
    for x, gi in zip(reversed(op.grid), reversed(g), strict=True):
        q = rest % x - (x // 2 - gi // 2)
        rest = torch.div(rest, x, rounding_mode="floor")
        inside &= (q >= 0) & (q < gi)
        lo_point += q * stride
        stride *= gi
    # their (point, repetition) pairs: the ranges point_start[q]:point_start[q + 1]
    n_in = pairs.point_start.diff()[inside].long()
    first = pairs.point_start[:-1][inside].long()
    offset = torch.arange(int(n_in.sum()), device=dev) - torch.repeat_interleave(
        torch.cumsum(n_in, 0) - n_in, n_in
    )
    at = torch.repeat_interleave(first, n_in) + offset
    index, weights = _by_repetition(
        pairs.pair_tr[at].long(),
        torch.repeat_interleave(lo_point[inside], n_in),
        op.pair_weights[at],
        int(op.basis.shape[0]),
    )
    lo_maps = resample(maps, m).contiguous()
    values = torch.zeros((1, 1, 1, 1), dtype=torch.complex64, device=dev)
    data = GriddedData(values.expand(maps.shape[0], *index.shape), index, g, m)  # type: ignore[arg-type]
    lo = GriddedSubspaceEncoding(data, lo_maps, op.basis, config=op.config, weights=weights)
    return lo, lo_maps, math.prod(op.matrix) / math.prod(m)


def _by_repetition(
    tr: torch.Tensor, point: torch.Tensor, weight: torch.Tensor, n_tr: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay weighted (point, repetition) pairs out as samples ``(1, tr, s)``.

    Returns the index and the weights; the slots a repetition does not fill hold weight 0 at
    point 0 (they add nothing to the kernels).
    """
    order = torch.argsort(tr, stable=True)
    tr, point, weight = tr[order], point[order], weight[order]
    per_tr = torch.bincount(tr, minlength=n_tr)
    slot = torch.arange(tr.numel(), device=tr.device) - (torch.cumsum(per_tr, 0) - per_tr)[tr]
    s = max(int(per_tr.max()), 1) if tr.numel() else 1
    index = torch.zeros((1, n_tr, s), dtype=torch.int64, device=tr.device)
    weights = torch.zeros((1, n_tr, s), dtype=torch.float32, device=tr.device)
    index[0, tr, slot] = point
    weights[0, tr, slot] = weight
    return index, weights
