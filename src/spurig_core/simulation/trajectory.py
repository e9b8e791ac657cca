"""3D spiral projection imaging (SPI) with tiny-golden-angle shuffling across three rotation axes.

One variable-density spiral arm is played per repetition (TR).  The arm is a 2D spiral in a plane
through the centre of k-space, from ``k = 0`` out to (just inside) the matrix edge ``N/2``, in
cycles per FOV (grid units of SPEC §3).  Every arm is rotated in 3D by two angles:

* ``φ`` about the *rotation axis* of its group's set (the plane always contains that axis), and
* ``ψ`` within its plane (an in-plane rotation of the spiral).

The ``n_groups`` groups are split into three sets that rotate about axes 0, 1 and 2 (the multi-axis
SPI of TGAS, Cao et al., MRM 88:133–150, 2022, doi:10.1002/mrm.29194): a single axis oversamples its
poles, three orthogonal ones cancel that bias.  Group ``g`` belongs to set ``g % 3`` and is the
``j = g // 3``-th group of its set, so any first ``G`` groups hold (almost) equally many groups of
each set — the 2 min / 1 min / 30 s scans (16 / 8 / 4 groups, R = 3 / 6 / 12, paper 2.4) are the
first groups of the 6 min (48-group, R = 1) one.

Angles (tiny-golden-angle shuffling).  Within a set, arm ``(j, t)`` (group ``j`` of the set,
repetition ``t``) gets the running index ``n = t · J + j`` with ``J`` groups per set, and

``φ = 2π · frac(n / (τ + M − 1))``  (the tiny golden angle ``ψ_M`` of Wundrak et al., MRM 2016,
doi:10.1002/mrm.25831, ``τ`` the golden ratio, ``M = tiny_golden_n``) and
``ψ = 2π · frac(n · g₂)``  with ``g₂ = 0.6823…`` the second 2D golden mean (Chan et al., MRM 2009,
doi:10.1002/mrm.21837) so that the pair ``(φ, ψ)`` is a low-discrepancy sequence.

For a fixed repetition ``t`` the first ``G`` groups of a set hold consecutive indices ``n``, which
golden sequences spread evenly for every ``G`` — each shorter scan is well covered — while
successive repetitions of one group step by a tiny golden angle times ``J`` (incoherent aliasing
along time).

Variable density.  The arm is ``r(τ) = k_max τ^density``, ``θ(τ) = 2π turns τ`` for ``τ ∈ [0, 1]``
sampled uniformly: ``density > 1`` slows the radial advance near the centre, which is therefore
oversampled relative to the edge (as the variable-density spirals of MRF).

Variants (for data from other scanners and simulators, and for the iGROG robustness benchmark;
the defaults give the trajectory above bit for bit):

* ``arm``: ``"spiral"`` (default), ``"radial"`` (a centre-out spoke with the same radial profile
  ``r(τ)``) or ``"stack"`` (a stack-of-spirals-like arm: the spiral lies in a plane at height
  ``h`` off the centre, ``|h| ≤ stack_extent · k_max``, radius ``√(k_max² − h²)``);
* ``sampling``: ``"uniform"`` in ``τ`` (default) or ``"arc"``, uniform in arc length (a
  gradient-limited readout: constant speed, so the centre is sampled far more sparsely);
* ``rotation``: ``"tga3"`` (default: the three-axis tiny-golden-angle scheme above),
  ``"golden"`` (one 3D golden-means sequence, Chan et al. 2009: plane normals spread over the
  sphere by the two 3D golden means, in-plane angle by the golden ratio, no axis sets) or
  ``"random"`` (uniformly random rotations, seeded by ``seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "ARMS",
    "AXIS_SETS",
    "ROTATIONS",
    "SAMPLINGS",
    "TrajectoryConfig",
    "arm_profile",
    "default_samples",
    "group_axes",
    "spi_trajectory",
    "spiral_arm",
]

#: Arm shapes of :class:`TrajectoryConfig` (``arm``).
ARMS = ("spiral", "radial", "stack")
#: Readout samplings of :class:`TrajectoryConfig` (``sampling``).
SAMPLINGS = ("uniform", "arc")
#: Rotation schemes of :class:`TrajectoryConfig` (``rotation``).
ROTATIONS = ("tga3", "golden", "random")
#: The two 3D golden means (Chan et al. 2009), for ``rotation="golden"``.
_G3 = (0.4656584742582157, 0.6823278038280193)

#: Number of rotation-axis sets (axes 0, 1, 2).
AXIS_SETS = 3
_GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0
#: Second of the 2D golden means (Chan et al. 2009): 0.6823278…
_G2 = 0.6823278038280193


def default_samples(matrix: int) -> int:
    """Default samples per spiral arm: ``6 · matrix`` (384 at 64³).

    Sized so that a 64³, 48-group, 10-coil scan is ≈ 0.85 GB (k-space 737 MB + trajectory 111 MB)
    and a 16-group one ≈ 0.28 GB: ``6·N`` samples give a readout spacing of about one cycle/FOV at
    the edge of a 2-turn arm.
    """
    return 6 * int(matrix)


@dataclass(frozen=True)
class TrajectoryConfig:
    """Tunables of the SPI trajectory.

    Attributes
    ----------
    samples : int or None
        Samples per arm; ``None`` means :func:`default_samples` of the matrix.
    turns : float
        Revolutions of the spiral arm from the centre to the edge.
    density : float
        Exponent of the radial advance ``r ∝ τ^density`` (``1`` = uniform Archimedean; ``> 1``
        oversamples the centre).
    edge : float
        Largest radius as a fraction of ``N/2`` (strictly below 1 keeps every coordinate in
        ``[-N/2, N/2)``).
    tiny_golden_n : int
        ``M`` of the tiny golden angle ``ψ_M = 2π / (τ + M − 1)`` used for ``φ``.
    arm : {"spiral", "radial", "stack"}
        Arm shape (module notes).
    sampling : {"uniform", "arc"}
        Readout sampling: uniform in ``τ`` or uniform in arc length.
    rotation : {"tga3", "golden", "random"}
        Rotation scheme of the arms.
    stack_extent : float
        ``arm="stack"``: largest plane height as a fraction of ``k_max`` (0 to 0.9).
    seed : int
        ``rotation="random"``: seed of the rotations.
    """

    samples: int | None = None
    turns: float = 2.0
    density: float = 1.6
    edge: float = 0.995
    tiny_golden_n: int = 7
    arm: str = "spiral"
    sampling: str = "uniform"
    rotation: str = "tga3"
    stack_extent: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        """Raise InputError naming the first trajectory field out of range or not a known choice."""
        if self.samples is not None and self.samples < 2:
            raise InputError(f"trajectory samples: need at least 2 per arm, got {self.samples}")
        if not 0 < self.edge < 1:
            raise InputError(f"trajectory edge: must lie in (0, 1), got {self.edge}")
        if self.turns <= 0 or self.density < 1:
            raise InputError("trajectory: turns must be > 0 and density >= 1")
        if self.tiny_golden_n < 1:
            raise InputError(f"trajectory tiny_golden_n: must be >= 1, got {self.tiny_golden_n}")
        for name, allowed in (("arm", ARMS), ("sampling", SAMPLINGS), ("rotation", ROTATIONS)):
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"trajectory {name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if not 0.0 <= self.stack_extent <= 0.9:
            raise InputError(f"trajectory stack_extent: choose 0 to 0.9, got {self.stack_extent}")


def spiral_arm(
    samples: int, kmax: float, *, turns: float = 2.0, density: float = 1.6
) -> np.ndarray:
    """One variable-density 2D spiral arm from the centre to radius ``kmax``.

    Parameters
    ----------
    samples : int
        Number of samples ``S``; the first one is at ``k = 0``.
    kmax : float
        Final radius in cycles per FOV.
    turns, density : float
        See :class:`TrajectoryConfig`.

    Returns
    -------
    ndarray, shape (samples, 2), float64
        In-plane coordinates ``(u, v)`` in cycles per FOV.
    """
    tau = np.linspace(0.0, 1.0, int(samples))
    r = kmax * tau**density
    theta = 2.0 * np.pi * turns * tau
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1)


def arm_profile(
    samples: int,
    kmax: float,
    *,
    arm: str = "spiral",
    sampling: str = "uniform",
    turns: float = 2.0,
    density: float = 1.6,
) -> np.ndarray:
    """One in-plane arm of any :data:`ARMS` shape with any :data:`SAMPLINGS` readout.

    Parameters
    ----------
    samples : int
        Number of samples ``S``; the first one is at ``k = 0``.
    kmax : float
        Final radius in cycles per FOV.
    arm : {"spiral", "radial", "stack"}
        ``"radial"``: a spoke along ``u`` with ``r(τ) = kmax τ^density``; ``"spiral"`` and
        ``"stack"``: :func:`spiral_arm` (the stack's plane height is applied by the caller).
    sampling : {"uniform", "arc"}
        Uniform in ``τ`` or uniform in arc length along the same curve.
    turns, density : float
        See :class:`TrajectoryConfig`.

    Returns
    -------
    ndarray, shape (samples, 2), float64
        In-plane coordinates ``(u, v)`` in cycles per FOV.
    """
    n = int(samples)
    if sampling == "uniform":
        if arm == "radial":
            r = kmax * np.linspace(0.0, 1.0, n) ** density
            return np.stack([r, np.zeros_like(r)], axis=-1)
        return spiral_arm(n, kmax, turns=turns, density=density)
    # uniform arc length: resample a finely sampled copy of the curve
    fine = arm_profile(64 * n, kmax, arm=arm, turns=turns, density=density)
    seg = np.linalg.norm(np.diff(fine, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    want = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(want, arc, fine[:, 0]), np.interp(want, arc, fine[:, 1])], axis=-1)


def _frames(groups: int, tr: int, cfg: TrajectoryConfig, total_groups: int) -> np.ndarray:
    """Orthonormal arm frames ``(e_u, e_v, e_w)`` as rows, shape (groups, tr, 3, 3).

    ``rotation="golden"``: running index ``n = t · total_groups + g`` (each repetition's first
    groups hold consecutive indices, as in the default scheme); plane normal ``e_w`` from the 3D
    golden means, in-plane angle ``2π frac(n/τ)``.  ``rotation="random"``: uniform random normals
    and angles from ``cfg.seed``.
    """
    if cfg.rotation == "golden":
        n = np.arange(tr)[None, :] * int(total_groups) + np.arange(groups)[:, None]
        z = 2.0 * np.mod(n * _G3[0], 1.0) - 1.0
        az = 2.0 * np.pi * np.mod(n * _G3[1], 1.0)
        psi = 2.0 * np.pi * np.mod(n / _GOLDEN, 1.0)
    else:
        rng = np.random.default_rng(cfg.seed)
        z = rng.uniform(-1.0, 1.0, (groups, tr))
        az = rng.uniform(0.0, 2.0 * np.pi, (groups, tr))
        psi = rng.uniform(0.0, 2.0 * np.pi, (groups, tr))
    s = np.sqrt(np.clip(1.0 - z**2, 0.0, None))
    w = np.stack([s * np.cos(az), s * np.sin(az), z], axis=-1)
    # a first in-plane direction: perpendicular to w and to the axis it is least aligned with
    ref = np.zeros_like(w)
    ref[np.arange(groups)[:, None], np.arange(tr)[None, :], np.abs(w).argmin(-1)] = 1.0
    a = np.cross(w, ref)
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b = np.cross(w, a)
    c, sn = np.cos(psi)[..., None], np.sin(psi)[..., None]
    return np.stack([c * a + sn * b, -sn * a + c * b, w], axis=-2)


def _stack_heights(groups: int, tr: int, cfg: TrajectoryConfig, total_groups: int) -> np.ndarray:
    """Plane heights (fractions of ``k_max``) of stack arms: a golden sequence in ±stack_extent."""
    n = np.arange(tr)[None, :] * int(total_groups) + np.arange(groups)[:, None]
    return cfg.stack_extent * (2.0 * np.mod(n / _GOLDEN + 0.5, 1.0) - 1.0)


def group_axes(groups: int) -> np.ndarray:
    """Rotation axis (0, 1 or 2) of each group: group ``g`` belongs to set ``g % 3``.

    Returns
    -------
    ndarray, shape (groups,), int64
    """
    return np.arange(int(groups), dtype=np.int64) % AXIS_SETS


def _angles(
    groups: int, tr: int, cfg: TrajectoryConfig, total_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """``φ`` and ``ψ`` (radians) of every arm, shape (groups, tr) each."""
    per_set = -(-int(total_groups) // AXIS_SETS)  # J: groups per set of the full acquisition
    g = np.arange(groups)
    j = g // AXIS_SETS
    t = np.arange(tr)
    n = t[None, :] * per_set + j[:, None]  # running index within the set
    tiny = 1.0 / (_GOLDEN + cfg.tiny_golden_n - 1.0)
    # an offset per axis set keeps the three sets from starting on the same plane
    offset = (g % AXIS_SETS)[:, None] / AXIS_SETS
    phi = 2.0 * np.pi * np.mod(n * tiny + offset * tiny, 1.0)
    psi = 2.0 * np.pi * np.mod(n * _G2 + offset, 1.0)
    return phi, psi


def spi_trajectory(
    matrix: int | tuple[int, int, int],
    groups: int = 48,
    tr: int = 500,
    config: TrajectoryConfig | None = None,
    *,
    total_groups: int | None = None,
) -> torch.Tensor:
    """Return the 3D SPI trajectory with tiny-golden-angle shuffling over three rotation axes.

    Parameters
    ----------
    matrix : int or tuple of 3 int
        Image matrix ``N`` (isotropic: the arm radius is set by the smallest axis).
    groups : int
        Number of groups ``G`` to return; they are the first ``G`` of the ``total_groups``-group
        acquisition.
    tr : int
        Repetitions per group.
    config : TrajectoryConfig, optional
        Arm shape and angle generator.
    total_groups : int, optional
        Size of the full acquisition whose first groups are returned (default ``max(groups, 48)``);
        it sets the per-set stride ``J`` of the angle sequence.

    Returns
    -------
    Tensor, shape (groups, tr, samples, 3), float32
        k-space positions in cycles per FOV; every coordinate lies in ``[-matrix/2, matrix/2)``.
    """
    cfg = config or TrajectoryConfig()
    mat = (
        (int(matrix),) * 3
        if isinstance(matrix, int | np.integer)
        else tuple(int(m) for m in matrix)
    )
    if len(mat) != 3 or min(mat) < 2:
        raise InputError(f"matrix: expected 3 sizes >= 2, got {matrix}")
    if groups < 1 or tr < 1:
        raise InputError(f"trajectory: need groups >= 1 and tr >= 1, got {groups} and {tr}")
    full = max(int(groups), 48) if total_groups is None else int(total_groups)
    if full < groups:
        raise InputError(f"trajectory: total_groups {full} is smaller than groups {groups}")
    samples = cfg.samples or default_samples(min(mat))
    kmax = cfg.edge * min(mat) / 2.0
    if cfg.arm != "spiral" or cfg.sampling != "uniform" or cfg.rotation != "tga3":
        out = _variant_arms(samples, kmax, groups, tr, cfg, full)
        return _clip_to_matrix(out, mat)
    arm = spiral_arm(samples, kmax, turns=cfg.turns, density=cfg.density)  # (S, 2)
    phi, psi = _angles(groups, tr, cfg, full)  # (G, T)
    # in-plane rotation by ψ: u' = u cos ψ − v sin ψ, v' = u sin ψ + v cos ψ
    cps, sps = np.cos(psi)[..., None], np.sin(psi)[..., None]
    u = cps * arm[None, None, :, 0] - sps * arm[None, None, :, 1]  # (G, T, S)
    v = sps * arm[None, None, :, 0] + cps * arm[None, None, :, 1]
    cph, sph = np.cos(phi)[..., None], np.sin(phi)[..., None]
    out = np.empty((groups, tr, samples, 3), dtype=np.float64)
    axes = group_axes(groups)
    for a in range(AXIS_SETS):
        sel = axes == a
        if not sel.any():
            continue
        b, c = (a + 1) % 3, (a + 2) % 3
        # the plane contains axis a; its other direction is cos φ e_b + sin φ e_c
        out[sel, ..., a] = v[sel]
        out[sel, ..., b] = u[sel] * cph[sel]
        out[sel, ..., c] = u[sel] * sph[sel]
    return _clip_to_matrix(out, mat)


def _clip_to_matrix(out: np.ndarray, mat: tuple[int, ...]) -> torch.Tensor:
    half = np.asarray(mat, dtype=np.float64) / 2.0
    # float32 rounding must not push a coordinate onto +N/2
    out = np.clip(out, -half, np.nextafter(half.astype(np.float32), np.float32(0)))
    return torch.from_numpy(out.astype(np.float32))


def _variant_arms(
    samples: int, kmax: float, groups: int, tr: int, cfg: TrajectoryConfig, full: int
) -> np.ndarray:
    """Arms of a non-default ``arm`` / ``sampling`` / ``rotation``, shape (G, T, S, 3), float64."""
    arm = arm_profile(
        samples, kmax, arm=cfg.arm, sampling=cfg.sampling, turns=cfg.turns, density=cfg.density
    )  # (S, 2)
    uvw = np.zeros((groups, tr, samples, 3), dtype=np.float64)
    uvw[..., 0], uvw[..., 1] = arm[:, 0], arm[:, 1]
    if cfg.arm == "stack":
        h = _stack_heights(groups, tr, cfg, full)[..., None]  # (G, T, 1)
        uvw[..., :2] *= np.sqrt(1.0 - h**2)[..., None]
        uvw[..., 2] = h * kmax
    if cfg.rotation != "tga3":
        return np.einsum("gtsi,gtij->gtsj", uvw, _frames(groups, tr, cfg, full))
    # the default three-axis scheme: in-plane ψ, then the plane about the set's axis by φ
    phi, psi = _angles(groups, tr, cfg, full)
    cps, sps = np.cos(psi)[..., None], np.sin(psi)[..., None]
    u = cps * uvw[..., 0] - sps * uvw[..., 1]
    v = sps * uvw[..., 0] + cps * uvw[..., 1]
    w = uvw[..., 2]
    cph, sph = np.cos(phi)[..., None], np.sin(phi)[..., None]
    out = np.empty_like(uvw)
    axes = group_axes(groups)
    for a in range(AXIS_SETS):
        sel = axes == a
        b, c = (a + 1) % 3, (a + 2) % 3
        out[sel, ..., a] = v[sel]
        out[sel, ..., b] = u[sel] * cph[sel] - w[sel] * sph[sel]
        out[sel, ..., c] = u[sel] * sph[sel] + w[sel] * cph[sel]
    return out
