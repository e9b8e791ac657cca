"""A physical head receive array: circular loops, Biot–Savart fields, SVD compression.

Each element is a circular current loop of radius ``loop_radius_mm`` whose centre lies on an
ellipsoid around the head (the helmet of a head array) and whose axis points at the ellipsoid's
centre.  The elements sit on ``len(ring_elements)`` rings at the elevations ``ring_elevation_deg``
(angle above the equator of axis 2, the head-foot axis and the direction of B0); the array is open
towards the neck.

The field of a loop is the exact quasi-static Biot–Savart field of a circular current (complete
elliptic integrals ``K``, ``E``; Simpson et al., NASA/GSFC TM 2001, "Simple analytic expressions for
the magnetic field of a circular current loop").  By reciprocity the receive sensitivity of an
element is its ``B1⁻ ∝ (B_x − i B_y)`` for B0 along axis 2 (Hoult, Concepts Magn. Reson. 12:173,
2000, doi:10.1002/1099-0534(2000)12:4<173::AID-CMR1>3.0.CO;2-Q), the transverse field it would
produce. A per-element constant phase models cable lengths.

The physical array (12–32 elements) is compressed to ``coils`` virtual coils by the SVD of the
sensitivities inside the head (Buehrer et al., MRM 57:1131, 2007), as the paper's scans were
(2.4: 10 virtual coils); the virtual maps are normalised to unit root-sum-of-squares at every voxel
so that a coil-combined image equals the magnetisation ``m_t`` of SPEC §3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from ..errors import InputError

__all__ = [
    "CoilConfig",
    "compress",
    "element_positions",
    "head_array",
    "loop_field",
]


@dataclass(frozen=True)
class CoilConfig:
    """Geometry of the simulated head array.

    Attributes
    ----------
    ring_elements : tuple of int
        Elements per ring, from the lowest ring up (default 10 + 8 + 6 = 24 elements).
    ring_elevation_deg : tuple of float
        Elevation of each ring above the equator (degrees, towards +axis 2).
    semi_axes_mm : tuple of 3 float
        Semi-axes of the helmet ellipsoid on which the loop centres lie (mm, axes 0, 1, 2).
    loop_radius_mm : float
        Radius of each loop (mm).
    """

    ring_elements: tuple[int, ...] = (10, 8, 6)
    ring_elevation_deg: tuple[float, ...] = (-15.0, 25.0, 60.0)
    semi_axes_mm: tuple[float, float, float] = (105.0, 125.0, 110.0)
    loop_radius_mm: float = 38.0

    def __post_init__(self) -> None:
        """Raise InputError unless there are ≥ 2 rings, 12-32 elements and positive radii."""
        if len(self.ring_elements) != len(self.ring_elevation_deg) or len(self.ring_elements) < 2:
            raise InputError("coil config: need >= 2 rings with one elevation per ring")
        n = sum(self.ring_elements)
        if not 12 <= n <= 32:
            raise InputError(f"coil config: a head array has 12-32 elements, got {n}")
        if self.loop_radius_mm <= 0 or min(self.semi_axes_mm) <= 0:
            raise InputError("coil config: radii must be positive")

    @property
    def n_elements(self) -> int:
        """Number of physical elements."""
        return int(sum(self.ring_elements))


def element_positions(config: CoilConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centres and axes of the array's loops.

    Returns
    -------
    centres : ndarray, shape (elements, 3), float64
        Loop centres in mm (axes 0, 1, 2; origin at the FOV centre).
    normals : ndarray, shape (elements, 3), float64
        Unit loop axes (pointing at the head centre).
    """
    cfg = config or CoilConfig()
    a = np.asarray(cfg.semi_axes_mm, dtype=np.float64)
    centres, normals = [], []
    for ring, (n, elev) in enumerate(zip(cfg.ring_elements, cfg.ring_elevation_deg, strict=True)):
        el = np.deg2rad(elev)
        for i in range(n):
            az = 2.0 * np.pi * (i + 0.5 * (ring % 2)) / n  # neighbouring rings staggered
            d = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            p = a * d
            # the ellipsoid's inward surface normal
            nrm = -(p / a**2)
            centres.append(p)
            normals.append(nrm / np.linalg.norm(nrm))
    return np.asarray(centres), np.asarray(normals)


def loop_field(
    points_mm: np.ndarray, centre: np.ndarray, normal: np.ndarray, radius_mm: float
) -> np.ndarray:
    """Quasi-static magnetic field of a circular unit-current loop (exact, elliptic integrals).

    Parameters
    ----------
    points_mm : ndarray, shape (n, 3)
        Field points in mm.
    centre : ndarray, shape (3,)
        Loop centre in mm.
    normal : ndarray, shape (3,)
        Unit loop axis (right-hand rule for the current).
    radius_mm : float
        Loop radius in mm.

    Returns
    -------
    ndarray, shape (n, 3), float64
        ``B`` in units of ``μ0 I / (π · mm)``.
    """
    nrm = normal / np.linalg.norm(normal)
    d = points_mm - centre[None, :]
    z = d @ nrm
    radial = d - z[:, None] * nrm[None, :]
    rho = np.linalg.norm(radial, axis=1)
    a = float(radius_mm)
    r2 = rho**2 + z**2
    alpha2 = np.maximum(a**2 + r2 - 2.0 * a * rho, 1e-9)
    beta2 = a**2 + r2 + 2.0 * a * rho
    beta = np.sqrt(beta2)
    m = np.clip(1.0 - alpha2 / beta2, 0.0, 1.0 - 1e-12)
    kk, ee = special.ellipk(m), special.ellipe(m)
    bz = ((a**2 - r2) * ee + alpha2 * kk) / (2.0 * alpha2 * beta)
    safe = np.where(rho > 1e-9, rho, 1.0)
    brho = np.where(
        rho > 1e-9, z * ((a**2 + r2) * ee - alpha2 * kk) / (2.0 * alpha2 * beta * safe), 0.0
    )
    e_rho = np.where(rho[:, None] > 1e-9, radial / safe[:, None], 0.0)
    return brho[:, None] * e_rho + bz[:, None] * nrm[None, :]


def _physical_maps(
    matrix: tuple[int, int, int],
    fov_mm: tuple[float, float, float],
    cfg: CoilConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Receive sensitivities of the physical elements, shape (elements, x, y, z), complex128."""
    axes = [(np.arange(n) - n // 2) * (f / n) for n, f in zip(matrix, fov_mm, strict=True)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    centres, normals = element_positions(cfg)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=len(centres))
    maps = np.empty((len(centres), pts.shape[0]), dtype=np.complex128)
    for e, (c, n) in enumerate(zip(centres, normals, strict=True)):
        b = loop_field(pts, c, n, cfg.loop_radius_mm)
        maps[e] = (b[:, 0] - 1j * b[:, 1]) * np.exp(1j * phases[e])
    return maps.reshape(len(centres), *matrix)


def compress(maps: np.ndarray, coils: int, mask: np.ndarray | None = None) -> np.ndarray:
    """SVD coil compression to ``coils`` virtual coils, normalised to unit root-sum-of-squares.

    Parameters
    ----------
    maps : ndarray, shape (elements, x, y, z), complex
        Physical sensitivities.
    coils : int
        Virtual coils to keep (``1 … elements``).
    mask : ndarray, shape (x, y, z), bool, optional
        Voxels that define the compression (the head); all voxels when ``None``.

    Returns
    -------
    ndarray, shape (coils, x, y, z), complex64
        Virtual sensitivities with ``Σ_c |S_c|² = 1`` at every voxel.
    """
    n_el = maps.shape[0]
    if not 1 <= coils <= n_el:
        raise InputError(f"coils: choose 1 to {n_el} virtual coils, got {coils}")
    flat = maps.reshape(n_el, -1)
    sel = flat if mask is None else flat[:, mask.reshape(-1)]
    u, _, _ = np.linalg.svd(sel, full_matrices=False)
    virt = u[:, :coils].conj().T @ flat  # (coils, voxels)
    # fix each virtual coil's global phase: its mean over the mask is real and positive
    ref = virt if mask is None else virt[:, mask.reshape(-1)]
    ph = np.exp(-1j * np.angle(ref.sum(axis=1)))
    virt *= ph[:, None]
    rss = np.sqrt((np.abs(virt) ** 2).sum(axis=0))
    virt /= np.maximum(rss, 1e-12 * rss.max())
    return virt.reshape(coils, *maps.shape[1:]).astype(np.complex64)


def head_array(
    matrix: int | tuple[int, int, int],
    coils: int = 10,
    *,
    fov_mm: float | tuple[float, float, float] = 220.0,
    mask: np.ndarray | None = None,
    config: CoilConfig | None = None,
    seed: int = 0,
    compressed: bool = True,
) -> torch.Tensor:
    """Virtual-coil sensitivities of the simulated head array.

    Parameters
    ----------
    matrix : int or tuple of 3 int
        Image matrix ``(x, y, z)``; voxel ``r`` sits at ``(r − matrix//2) · fov/matrix`` mm.
    coils : int
        Virtual coils after SVD compression.
    fov_mm : float or tuple of 3 float
        Field of view in mm.
    mask : ndarray, shape (x, y, z), bool, optional
        The head (defines the compression); whole FOV when ``None``.
    config : CoilConfig, optional
        Array geometry.
    seed : int
        Seed of the per-element cable phases.
    compressed : bool
        ``False``: the physical elements' own maps (``coils`` must equal the element count),
        normalised to unit root-sum-of-squares, without SVD compression.

    Returns
    -------
    Tensor, shape (coils, x, y, z), complex64
        Smooth sensitivities with unit root-sum-of-squares at every voxel.
    """
    cfg = config or CoilConfig()
    mat = (
        (int(matrix),) * 3
        if isinstance(matrix, int | np.integer)
        else tuple(int(m) for m in matrix)
    )
    fov = (float(fov_mm),) * 3 if isinstance(fov_mm, int | float) else tuple(map(float, fov_mm))
    if coils > cfg.n_elements:
        raise InputError(f"coils: {coils} virtual coils exceed the {cfg.n_elements} array elements")
    if not compressed and coils != cfg.n_elements:
        raise InputError(
            f"coils: uncompressed maps need coils = {cfg.n_elements} (the array's elements), "
            f"got {coils}"
        )
    maps = _physical_maps(mat, fov, cfg, np.random.default_rng(seed))  # type: ignore[arg-type]
    if not compressed:
        rss = np.sqrt((np.abs(maps) ** 2).sum(axis=0))
        return torch.from_numpy((maps / np.maximum(rss, 1e-12 * rss.max())).astype(np.complex64))
    return torch.from_numpy(compress(maps, coils, mask))
