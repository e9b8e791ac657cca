"""Geometry of the oversampled Cartesian grid and the container for gridded k-space (paper 2.3.1).

iGROG (:mod:`spurig_core.operators.igrog`) moves every acquired sample to its nearest point of a
``×grid_oversampling`` Cartesian grid; the gridded encoding operator
(:mod:`spurig_core.operators.encoding`) then needs only FFTs.  Both agree on this module.

Grid convention
---------------
For an image matrix ``N`` (per axis) and oversampling ``os``, the grid has ``X = grid_size(N, os)``
points (even, ``≈ os·N``) and the effective oversampling is ``X / N``.  Grid index ``p ∈ [0, X)``
stands for the spatial frequency ``k = (p − X//2) · N / X`` in cycles per FOV, so that the FFT of
the image zero-padded to ``X`` voxels (centred as in SPEC §3) evaluates the forward model of SPEC §3
exactly at those frequencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["GRID_OVERSAMPLING", "GriddedData", "grid_shape", "grid_size", "nearest_grid_index"]

#: Default oversampling of the Cartesian grid (paper 2.2: 1.5): the one value that
#: ``GriddingConfig.grid_oversampling``, the NUFFT encoding's density weights and the memory
#: estimates default to.
GRID_OVERSAMPLING: float = 1.5


def grid_size(n: int, oversampling: float) -> int:
    """Points of the oversampled grid along an axis of ``n`` voxels (even, at least ``n``)."""
    x = max(n, math.ceil(n * oversampling))
    return x + (x % 2)


def grid_shape(matrix: tuple[int, int, int], oversampling: float) -> tuple[int, int, int]:
    """Oversampled grid shape ``(X, Y, Z)`` for an image ``matrix``."""
    return (
        grid_size(matrix[0], oversampling),
        grid_size(matrix[1], oversampling),
        grid_size(matrix[2], oversampling),
    )


def nearest_grid_index(
    k: torch.Tensor, matrix: tuple[int, int, int], shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest grid point of each k-space position.

    Parameters
    ----------
    k : Tensor, shape (..., 3), float
        Positions in cycles per FOV.
    matrix : tuple of 3 int
        Image matrix ``N``.
    shape : tuple of 3 int
        Grid shape ``(X, Y, Z)`` from :func:`grid_shape`.

    Returns
    -------
    index : Tensor, shape (...), int64
        Linear (C-order) index into the ``(X, Y, Z)`` grid.
    offset : Tensor, shape (..., 3), float32
        ``k − k_grid`` in cycles per FOV (the displacement from the grid point to the sample).
    """
    n = torch.tensor(matrix, dtype=torch.float64, device=k.device)
    g = torch.tensor(shape, dtype=torch.float64, device=k.device)
    p = torch.round(k.double() * g / n) + torch.div(g, 2, rounding_mode="floor")
    p = torch.minimum(torch.maximum(p, torch.zeros_like(p)), g - 1)
    k_grid = (p - torch.div(g, 2, rounding_mode="floor")) * n / g
    pi = p.long()
    index = (pi[..., 0] * shape[1] + pi[..., 1]) * shape[2] + pi[..., 2]
    return index, (k.double() - k_grid).float()


@dataclass(frozen=True, eq=False)
class GriddedData:
    """k-space moved onto the oversampled grid, one value per acquired sample.

    The layout of the acquisition is kept: sample ``(g, t, s)`` now sits at grid point
    ``index[g, t, s]`` (duplicates within a TR are kept and counted by the gram kernels).

    Attributes
    ----------
    values : Tensor, shape (coils, groups, tr, samples), complex64
        Gridded k-space values.
    index : Tensor, shape (groups, tr, samples), int64
        Linear index into the grid of shape ``grid``.
    grid : tuple of 3 int
        Oversampled grid shape ``(X, Y, Z)``.
    matrix : tuple of 3 int
        Image matrix ``(x, y, z)``.
    check : dict, optional
        The iGROG self-check of the kernel that produced the values
        (:func:`spurig_core.operators.igrog_check.check_gridding`), or ``None`` when not run.
    lipschitz : dict of str to float
        Step sizes ``‖A^H A‖₂`` of the gridded encoding, by
        :func:`~spurig_core.operators.step_size.step_key` (groups, density exponent, maps and
        basis checksum); shared by :meth:`first_groups` and :meth:`to` (issue #14).
    settings : dict, optional
        The gridding settings that made the data (``GriddingConfig`` as a dict;
        :func:`~spurig_core.operators.igrog.grid_scan` sets it), so that a reconstruction that
        reuses the data records what it ran on; ``None`` where unknown.
    """

    values: torch.Tensor
    index: torch.Tensor
    grid: tuple[int, int, int]
    matrix: tuple[int, int, int]
    check: dict[str, Any] | None = None
    lipschitz: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] | None = None

    def first_groups(self, groups: int) -> GriddedData:
        """Return the first ``groups`` groups (a shorter scan; the same ``lipschitz`` table)."""
        return GriddedData(
            self.values[:, :groups],
            self.index[:groups],
            self.grid,
            self.matrix,
            self.check,
            self.lipschitz,
            self.settings,
        )

    def to(self, device: torch.device | str) -> GriddedData:
        """Return the same data on ``device`` (the same ``lipschitz`` table)."""
        return GriddedData(
            self.values.to(device),
            self.index.to(device),
            self.grid,
            self.matrix,
            self.check,
            self.lipschitz,
            self.settings,
        )
