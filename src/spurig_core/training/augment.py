"""Data augmentation for pretraining (appendix A.2): random rigid-plus-scale transforms and crops.

One random transform (rotation by at most ``max_rotation_deg`` about a random axis, translation by
at most ``max_translation`` voxels per axis, isotropic scaling in ``scale_range``) is applied to the
network input, the target and the tissue labels alike, with ``affine_grid``/``grid_sample``:
trilinear on the real and imaginary channels, nearest neighbour on the labels, zeros outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "AugmentConfig",
    "apply_affine",
    "cube_symmetry",
    "random_affine",
    "random_crop",
    "rotation_matrix",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges (appendix A.2 defaults).

    Attributes
    ----------
    enabled : bool
    max_rotation_deg : float
        Largest rotation angle in degrees (about a uniformly random axis).
    max_translation : float
        Largest shift per axis in voxels.
    scale_range : tuple of 2 float
        Isotropic scaling range.
    """

    enabled: bool = True
    max_rotation_deg: float = 15.0
    max_translation: float = 5.0
    scale_range: tuple[float, float] = (0.98, 1.02)


def rotation_matrix(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rodrigues' rotation matrix (3×3) about ``axis`` by ``angle_deg`` degrees."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def random_affine(cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw one transform as a 3×4 matrix in voxel units (axes 0, 1, 2), about the volume centre.

    Returns
    -------
    ndarray, shape (3, 4), float64
        ``[M | t]``: an output voxel at offset ``r`` from the centre samples the input at
        ``M r + t``.
    """
    axis = rng.normal(size=3)
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    scale = rng.uniform(*cfg.scale_range)
    shift = rng.uniform(-cfg.max_translation, cfg.max_translation, size=3)
    m = rotation_matrix(axis, angle) / scale
    return np.concatenate([m, shift[:, None]], axis=1)


def apply_affine(
    volumes: list[torch.Tensor], labels: torch.Tensor | None, affine: np.ndarray
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Resample complex volumes and labels with one transform.

    Parameters
    ----------
    volumes : list of Tensor, shape (basis, x, y, z), complex64
        All of the same spatial shape.
    labels : Tensor, shape (x, y, z), integer, optional
    affine : ndarray, shape (3, 4)
        From :func:`random_affine` (voxel units).

    Returns
    -------
    volumes : list of Tensor, shape (basis, x, y, z), complex64
    labels : Tensor, shape (x, y, z), uint8, or None
    """
    shape = tuple(volumes[0].shape[-3:])
    for v in volumes:
        if tuple(v.shape[-3:]) != shape:
            raise InputError("apply_affine: volumes must share their spatial shape")
    device = volumes[0].device
    # normalised coordinate u_d = 2 r_d / n_d (align_corners=False); grid order is (z, y, x)
    n = np.array(shape, dtype=np.float64)
    d = np.diag(2.0 / n)
    m = d @ affine[:, :3] @ np.linalg.inv(d)
    t = d @ affine[:, 3]
    perm = [2, 1, 0]
    theta = np.concatenate([m[np.ix_(perm, perm)], t[perm, None]], axis=1)
    theta_t = torch.tensor(theta, dtype=torch.float32, device=device)[None]
    grid = F.affine_grid(theta_t, [1, 1, *shape], align_corners=False)
    out = []
    for v in volumes:
        ch = torch.view_as_real(v).movedim(-1, 1).reshape(1, -1, *shape)  # (1, 2k, x, y, z)
        r = F.grid_sample(ch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        r = r.reshape(v.shape[0], 2, *shape).movedim(1, -1).contiguous()
        out.append(torch.view_as_complex(r))
    lab = None
    if labels is not None:
        lf = labels.to(torch.float32)[None, None]
        lab = F.grid_sample(lf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        lab = lab[0, 0].round().to(torch.uint8)
    return out, lab


def random_crop(
    shape: tuple[int, int, int], crop: int | tuple[int, int, int], rng: np.random.Generator
) -> tuple[slice, slice, slice]:
    """Random crop window of size ``crop`` (clipped to ``shape``) inside a volume of ``shape``."""
    c = (crop, crop, crop) if isinstance(crop, int) else tuple(crop)
    out = []
    for n, k in zip(shape, c, strict=True):
        k = min(k, n)
        start = int(rng.integers(0, n - k + 1))
        out.append(slice(start, start + k))
    return out[0], out[1], out[2]


def cube_symmetry(x: torch.Tensor, perm: tuple[int, ...], flips: tuple[int, ...]) -> torch.Tensor:
    """Permute and flip the last three (spatial) axes of ``x``.

    Parameters
    ----------
    x : Tensor, shape (..., x, y, z)
    perm : tuple of 3 int
        A permutation of ``(0, 1, 2)``.
    flips : tuple of int
        Spatial axes (0–2, after the permutation) to reverse.
    """
    lead = x.ndim - 3
    y = x.permute(*range(lead), *(lead + p for p in perm))
    return torch.flip(y, [lead + f for f in flips]) if flips else y
