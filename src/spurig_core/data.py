"""Frozen data containers with documented shapes: :class:`FispSequence`, :class:`Scan`, ``Result``.

Shape vocabulary (used in every docstring of the package)
---------------------------------------------------------
``(coils, x, y, z)``
    coil sensitivities / coil images; ``x, y, z`` are image axes 0, 1, 2.
``(coils, groups, tr, samples)``
    measured k-space; ``groups`` acquisition groups of ``tr`` repetitions, ``samples`` per
    spiral arm.
``(groups, tr, samples, 3)``
    trajectory in cycles per FOV (grid units), each coordinate in ``[-matrix/2, matrix/2)``.
``(basis, x, y, z)``
    subspace coefficient maps (``basis = k = 5``).
``(tr,)`` / ``(n, tr)``
    one signal / ``n`` signals over the repetitions.
``(tr, basis)``
    a temporal basis (``Φ`` or the balanced ``Φ̃``).

Complex data are native ``torch.complex64``; times are in ms, flip angles in degrees, lengths in mm
at every public boundary (SPEC §3–§5).  File formats live in :mod:`spurig_core.io` only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from os import PathLike

__all__ = [
    "FispSequence",
    "Reference",
    "Result",
    "Scan",
]


def default_flip_angles_deg(n_tr: int = 500) -> np.ndarray:
    """Return the default flip-angle train of SPEC §4 (Cao's TGAS-SPI lineage, OpenMRF ``cao``).

    Returns
    -------
    ndarray, shape (tr,), float32
        Flip angles in degrees: ``10 + 20 sin(π(n+1)/200)`` for ``n < 200``,
        ``90 sin(π(n−199)/200)`` for ``200 ≤ n < 400`` and ``10`` afterwards.
    """
    n = np.arange(n_tr, dtype=np.float64)
    fa = np.where(
        n < 200,
        10.0 + 20.0 * np.sin(np.pi * (n + 1) / 200.0),
        np.where(n < 400, 90.0 * np.sin(np.pi * (n - 199) / 200.0), 10.0),
    )
    return fa.astype(np.float32)


@dataclass(frozen=True, eq=False)
class FispSequence:
    """A FISP-MRF group: inversion, ``ti_ms``, ``tr`` FISP repetitions, ``rest_s`` (SPEC §4).

    Attributes
    ----------
    flip_angle_deg : ndarray, shape (tr,), float32
        Nominal flip angle of each repetition in degrees (scaled by B1 in the simulation).
    tr_ms, te_ms, ti_ms : float
        Repetition time, echo time and inversion delay in ms.
    rest_s : float
        Free relaxation after the last repetition of a group, in s.
    """

    flip_angle_deg: np.ndarray
    tr_ms: float = 12.5
    te_ms: float = 1.7
    ti_ms: float = 20.0
    rest_s: float = 1.2

    def __post_init__(self) -> None:
        """Freeze the flip angles as float32, make the timings floats and check SPEC §4 ranges."""
        from .errors import InputError
        from .io_fields import check_sequence

        try:
            fa = np.asarray(self.flip_angle_deg, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(
                f"sequence: flip_angle_deg = {self.flip_angle_deg!r:.40} is not an array of "
                "numbers (degrees)"
            ) from None
        fa = np.ascontiguousarray(fa)
        fa.setflags(write=False)
        object.__setattr__(self, "flip_angle_deg", fa)
        for name in ("tr_ms", "te_ms", "ti_ms", "rest_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise InputError(f"sequence: {name} = {v!r:.40} is not a number")
            object.__setattr__(self, name, float(v))
        # physical ranges of SPEC §4 (io_fields.FIELDS): TE < TR, flips in [0, 180], …
        check_sequence(
            fa, {n: getattr(self, n) for n in ("tr_ms", "te_ms", "ti_ms", "rest_s")}, "sequence"
        )

    @classmethod
    def default(cls) -> FispSequence:
        """Return the default sequence (SPEC §4): 500 TRs, TR 12.5, TE 1.7, TI 20 ms, rest 1.2 s."""
        return cls(default_flip_angles_deg(500))

    @property
    def n_tr(self) -> int:
        """Number of repetitions per group."""
        return int(self.flip_angle_deg.shape[0])

    def key(self) -> str:
        """Return a short hash identifying the sequence (for dictionary caches and model cards)."""
        h = hashlib.sha256(self.flip_angle_deg.tobytes())
        h.update(np.array([self.tr_ms, self.te_ms, self.ti_ms, self.rest_s]).tobytes())
        return h.hexdigest()[:16]

    def same_as(self, other: FispSequence, *, rtol: float = 1e-5) -> bool:
        """Whether ``other`` is the same acquisition (same train and timings)."""
        return (
            self.n_tr == other.n_tr
            and np.allclose(self.flip_angle_deg, other.flip_angle_deg, rtol=rtol, atol=1e-4)
            and np.allclose(
                [self.tr_ms, self.te_ms, self.ti_ms, self.rest_s],
                [other.tr_ms, other.te_ms, other.ti_ms, other.rest_s],
                rtol=rtol,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for JSON/TOML attributes)."""
        return {
            "flip_angle_deg": [float(v) for v in self.flip_angle_deg],
            "tr_ms": self.tr_ms,
            "te_ms": self.te_ms,
            "ti_ms": self.ti_ms,
            "rest_s": self.rest_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FispSequence:
        """Inverse of :meth:`to_dict`."""
        return cls(
            np.asarray(d["flip_angle_deg"], dtype=np.float32),
            tr_ms=d["tr_ms"],
            te_ms=d["te_ms"],
            ti_ms=d["ti_ms"],
            rest_s=d["rest_s"],
        )


@dataclass(frozen=True, eq=False)
class Reference:
    """Ground truth of a simulated subject (``reference/`` of SPEC §3).

    Attributes
    ----------
    t1_ms, t2_ms : Tensor, shape (x, y, z), float32
        Relaxation times in ms (0 outside the object).  In simulated partial-volume voxels they
        are the effective single-compartment values whose signal best matches the voxel's mixture
        (:func:`spurig_core.simulation.effective_reference`); labels keep the dominant compartment.
    pd : Tensor, shape (x, y, z), complex64
        Proton density with its phase.
    tissue : Tensor, shape (x, y, z), uint8
        0 background, 1 CSF, 2 grey matter, 3 white matter, 4 other tissue.
    """

    t1_ms: torch.Tensor
    t2_ms: torch.Tensor
    pd: torch.Tensor
    tissue: torch.Tensor

    #: Tissue labels of SPEC §3.
    LABELS: ClassVar[dict[int, str]] = {0: "background", 1: "CSF", 2: "GM", 3: "WM", 4: "other"}


@dataclass(frozen=True, eq=False)
class Scan:
    """A raw MRF scan (SPEC §3), validated by :func:`spurig_core.io.load_scan`.

    Attributes
    ----------
    kspace : Tensor, shape (coils, groups, tr, samples), complex64
    trajectory : Tensor, shape (groups, tr, samples, 3), float32
        Cycles per FOV, each coordinate in ``[-matrix/2, matrix/2)``.
    sequence : FispSequence
    matrix : tuple of 3 int
    fov_mm : tuple of 3 float
    calibration : Tensor, shape (coils, cx, cy, cz), complex64, optional
        Fully sampled Cartesian centre of k-space of a low-resolution calibration scan.
    coil_maps : Tensor, shape (coils, x, y, z), complex64, optional
    b1 : Tensor, shape (x, y, z), float32, optional
        Relative B1+ (1 = nominal).
    reference : Reference, optional
        Ground truth (simulated scans only).
    path : Path, optional
        Where the scan was read from.
    sha256 : str, optional
        Checksum of the file it was read from.
    """

    kspace: torch.Tensor
    trajectory: torch.Tensor
    sequence: FispSequence
    matrix: tuple[int, int, int]
    fov_mm: tuple[float, float, float]
    calibration: torch.Tensor | None = None
    coil_maps: torch.Tensor | None = None
    b1: torch.Tensor | None = None
    reference: Reference | None = None
    path: Path | None = None
    sha256: str | None = None

    @property
    def n_coils(self) -> int:
        """Number of (virtual) coils."""
        return int(self.kspace.shape[0])

    @property
    def n_groups(self) -> int:
        """Number of acquisition groups in the file."""
        return int(self.kspace.shape[1])

    @property
    def n_tr(self) -> int:
        """Repetitions per group."""
        return int(self.kspace.shape[2])

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm (``fov_mm / matrix``)."""
        return (
            self.fov_mm[0] / self.matrix[0],
            self.fov_mm[1] / self.matrix[1],
            self.fov_mm[2] / self.matrix[2],
        )

    def first_groups(self, groups: int) -> Scan:
        """Return a copy cut to ``groups`` leading groups (retrospective undersampling, paper 2.4).

        Raises
        ------
        InputError
            If ``groups`` is not in ``1 … n_groups``.
        """
        from .errors import InputError

        if not 1 <= groups <= self.n_groups:
            raise InputError(
                f"cannot use {groups} groups: the scan has {self.n_groups} "
                f"(choose 1 to {self.n_groups})"
            )
        return dataclasses.replace(
            self,
            kspace=self.kspace[:, :groups],
            trajectory=self.trajectory[:groups],
        )


@dataclass(frozen=True, eq=False)
class Result:
    """A reconstruction and, after matching, its quantitative maps (SPEC §5).

    Attributes
    ----------
    coefficients : Tensor, shape (basis, x, y, z), complex64
        Balanced subspace coefficients ``α̃``.
    basis : Tensor, shape (tr, basis), complex64
        The balanced basis ``Φ̃`` the coefficients refer to.
    method : str
        A name of :data:`spurig_core.recon.methods.METHODS` (``"spurig"``, ``"dc-only"``, ...).
    groups : int
        Number of leading groups used.
    runtime_s : float
        Reconstruction wall time (gridding included, kernel training excluded).
    device : str
        ``"cpu"`` or ``"cuda"``.
    voxel_size_mm : tuple of 3 float
        For viewers and NIfTI export.
    model : dict, optional
        ``{"file": name, "sha256": ...}`` where a trained model was used.
    source : dict, optional
        ``{"path": ..., "sha256": ...}`` of the scan.
    config : dict
        The configuration that made the result (written into the store).
    iterations : Tensor, shape (n, basis, x, y, z), complex64, optional
        The initialisation and each unroll/FISTA iterate.
    t1_ms, t2_ms : Tensor, shape (x, y, z), float32, optional
        Quantitative maps after matching, 0 outside the object.
    pd : Tensor, shape (x, y, z), float32, optional
        Proton density magnitude after matching.
    timings : dict of str to float
        Extra timings in s (e.g. ``{"kernel_training_s": …, "gridding_s": …}``).
    """

    coefficients: torch.Tensor
    basis: torch.Tensor
    method: str
    groups: int
    runtime_s: float = 0.0
    device: str = "cpu"
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    model: dict[str, str] | None = None
    source: dict[str, str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    iterations: torch.Tensor | None = None
    t1_ms: torch.Tensor | None = None
    t2_ms: torch.Tensor | None = None
    pd: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def matrix(self) -> tuple[int, int, int]:
        """Image matrix ``(x, y, z)``."""
        s = self.coefficients.shape[-3:]
        return (int(s[0]), int(s[1]), int(s[2]))

    def replace(self, **changes: Any) -> Result:
        """Return a copy with some fields changed (e.g. the maps after matching)."""
        return dataclasses.replace(self, **changes)

    def save(self, path: str | PathLike[str]) -> Path:
        """Write the zarr store of SPEC §5 atomically (temporary name, then rename)."""
        from .io import save_result

        return save_result(self, path)
