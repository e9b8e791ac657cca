"""What defines a simulated scan: :class:`SimulationConfig` (subject, coils, trajectory, noise).

The tunables of the parts live beside their code (:class:`~.phantom.PhantomConfig`,
:class:`~.coils.CoilConfig`, :class:`~.trajectory.TrajectoryConfig`); this config ties them
together with the sizes, the noise level and the accuracy of the simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import InputError
from .coils import CoilConfig
from .phantom import PhantomConfig
from .trajectory import TrajectoryConfig

__all__ = ["SimulationConfig"]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated scan (written into nothing but reproducible from seed).

    Attributes
    ----------
    matrix : int
        Isotropic image matrix ``N``.
    coils : int
        Virtual coils after SVD compression.
    groups : int
        Groups written (the first ``groups`` of the 48-group acquisition).
    noise : float
        Noise standard deviation relative to the RMS of the k-space centre (see module notes).
    phantom : {"brain", "analytic"}
        ICBM152 anatomy or nested ellipsoids.
    calibration : int
        Edge ``cx = cy = cz`` of the Cartesian calibration region (clipped to the matrix).
    svd_tol : float
        Largest discarded energy fraction of the time-series SVD.
    nufft_eps : float
        finufft tolerance.
    exact_max : int
        Up to this many (voxel, compartment) pairs, every signal is simulated exactly; above it, the
        table interpolation is used.
    table_points : tuple of 3 int
        Table points over ``(T1, T2, B1)`` per compartment.
    group_chunk : int
        Groups per NUFFT call (bounds memory).
    purity : float
        A voxel whose dominant compartment holds at least this share of its volume keeps that
        compartment's T1/T2 in ``reference/``; mixed voxels get effective values (see
        :func:`effective_reference`).
    phantom_config, coil_config, trajectory_config
        Tunables of the subject, the head array and the trajectory.
    calibration_noise : float or None
        Relative noise of the calibration data (``None``: the same as ``noise``).
    coil_compression : bool
        ``False``: the physical elements' maps (``coils`` must equal the array's element count),
        normalised to unit root-sum-of-squares, instead of SVD-compressed virtual coils.
    """

    matrix: int = 64
    coils: int = 10
    groups: int = 48
    noise: float = 0.02
    phantom: Literal["brain", "analytic"] = "brain"
    calibration: int = 24
    svd_tol: float = 1e-5
    nufft_eps: float = 1e-4
    exact_max: int = 8192
    table_points: tuple[int, int, int] = (5, 5, 161)
    group_chunk: int = 16
    purity: float = 0.95
    phantom_config: PhantomConfig = field(default_factory=PhantomConfig)
    coil_config: CoilConfig = field(default_factory=CoilConfig)
    trajectory_config: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    calibration_noise: float | None = None
    coil_compression: bool = True

    def __post_init__(self) -> None:
        """Raise InputError naming the first option (``--matrix``, ``--groups``, …) out of range."""
        cn = self.calibration_noise
        if cn is not None and not (cn >= 0 and np.isfinite(cn)):
            raise InputError(f"calibration_noise: must be a finite number >= 0, got {cn}")
        if self.matrix < 4:
            raise InputError(f"--matrix: must be at least 4, got {self.matrix}")
        if not 1 <= self.groups <= 48:
            raise InputError(f"--groups: choose 1 to 48, got {self.groups}")
        if self.coils < 1:
            raise InputError(f"--coils: must be at least 1, got {self.coils}")
        if not (self.noise >= 0 and np.isfinite(self.noise)):
            raise InputError(f"--noise: must be a finite number >= 0, got {self.noise}")
        if self.phantom not in ("brain", "analytic"):
            raise InputError(f"phantom: choose brain or analytic, got {self.phantom!r}")
        if self.calibration < 1 or not 0 < self.svd_tol < 1:
            raise InputError("simulation config: calibration >= 1 and 0 < svd_tol < 1")
        if min(self.table_points) < 2 or self.group_chunk < 1:
            raise InputError("simulation config: table_points >= 2 each and group_chunk >= 1")
