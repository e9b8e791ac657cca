"""Digital subjects: anatomy, tissue parameters, PD, phase and B1 (paper 2.4, SPEC §3–§4).

Two kinds of subject share the :class:`Subject` container:

* :func:`brain_subject` — real human anatomy from the ICBM 2009a nonlinear symmetric template
  (Fonov et al., NeuroImage 54:313, 2011, doi:10.1016/j.neuroimage.2010.07.033) and its grey- and
  white-matter probability maps, as shipped inside the nilearn wheel.  The template is brain-masked;
  CSF is the remainder of that (intracranial) mask, ``max(mask, GM+WM) − GM − WM``.  Outside it an
  "other tissue" shell (label 4) stands for skull and scalp.  Each subject gets a random pose
  (rotation), scale, translation and a smooth elastic warp, and is resampled (with supersampling, so
  that partial-volume fractions are area averages) onto the requested matrix over a 220 mm FOV.
* :func:`analytic_subject` — nested ellipsoids with the same labels, for fast unit tests.

Tissue values (3 T, ms; SPEC §4): WM 850/50, GM 1400/80, CSF 4000/1800.  "Other tissue" (label 4):
T1 500 ms, T2 70 ms — a fat-rich scalp / diploë mixture between fat (≈ 380/110 ms at 3 T) and muscle
(≈ 1400/35 ms), with relative proton density 0.9 in the scalp (outer ``scalp_mm``) and 0.1 in the
skull (inner ``skull_mm``; cortical bone gives almost no signal).  Relative proton densities of the
brain: CSF 1.0, GM 0.8, WM 0.7.  Within each compartment T1 and T2 vary smoothly by about ±10 %
(independent fields per compartment and parameter).  A voxel holds volume fractions of the four
compartments; its signal is the fraction-weighted sum of the compartments' signals (partial volume),
times ``exp(iφ)`` with a smooth phase ``φ``.  B1+ is a smooth, centre-bright field clipped to
``[0.8, 1.2]`` (3 T head, e.g. Sled & Pike, MRM 43:589, 2000).

Reference maps (``reference/`` of SPEC §3): ``tissue`` is the label of the largest compartment where
the compartments fill at least half the voxel (0 elsewhere); ``t1_ms``/``t2_ms`` are that dominant
compartment's values (0 where ``tissue == 0``); ``pd = Σ_j f_j PD_j · exp(iφ)`` everywhere.  A
simulated scan stores :func:`~spurig_core.simulation.scan.effective_reference` instead, which keeps
these values where the dominant compartment fills ≥ ``SimulationConfig.purity`` (0.95) of the
voxel and gives every other (mixed) voxel the dictionary fit of its noise-free signal.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..data import Reference
from ..errors import InputError

__all__ = [
    "COMPARTMENTS",
    "TISSUE_VALUES",
    "PhantomConfig",
    "Subject",
    "TissueValues",
    "analytic_subject",
    "brain_subject",
    "smooth_field",
    "template_paths",
]


@dataclass(frozen=True)
class TissueValues:
    """Nominal parameters of one tissue class.

    Attributes
    ----------
    name : str
    t1_ms, t2_ms : float
        Relaxation times in ms.
    pd : float
        Relative proton density.
    """

    name: str
    t1_ms: float
    t2_ms: float
    pd: float


#: Nominal values per tissue label (SPEC §3 labels, §4 values; label 4 documented above).
TISSUE_VALUES: dict[int, TissueValues] = {
    1: TissueValues("CSF", 4000.0, 1800.0, 1.0),
    2: TissueValues("GM", 1400.0, 80.0, 0.8),
    3: TissueValues("WM", 850.0, 50.0, 0.7),
    4: TissueValues("other", 500.0, 70.0, 0.9),
}
#: Labels of the compartments, in the order of :attr:`Subject.fractions`.
COMPARTMENTS: tuple[int, ...] = (1, 2, 3, 4)
_SKULL_PD = 0.1


@dataclass(frozen=True)
class PhantomConfig:
    """Tunables of the digital subjects.

    Attributes
    ----------
    fov_mm : float
        Isotropic field of view in mm (paper 2.4: 220 mm).
    variation : float
        Relative amplitude of the smooth T1/T2 variation within each compartment (0.1 = ±10 %).
    rotation_deg : float
        Largest rotation about each axis (uniform in ``±rotation_deg``).
    scale : tuple of 2 float
        Range of the isotropic scale of the template (the MNI template is larger than an average
        head; ``0.95`` keeps the rotated head with its scalp inside the 220 mm FOV).
    anisotropy : float
        Extra relative scale per axis (uniform in ``±anisotropy``).
    shift_mm : float
        Largest translation per axis in mm.
    warp_mm : float
        Standard deviation of the smooth elastic displacement per axis in mm.
    warp_points : int
        Control points per axis of the elastic warp (its smoothness: ≈ FOV / (points − 1)).
    skull_mm, scalp_mm : float
        Thickness of the skull and scalp layers of the "other tissue" shell in mm.
    phase_rad : float
        Amplitude of the smooth PD phase in radians.
    b1_range : tuple of 2 float
        Limits of the B1+ field.
    supersample : int
        Sub-voxel samples per axis for partial-volume fractions.
    """

    fov_mm: float = 220.0
    variation: float = 0.10
    rotation_deg: float = 6.0
    scale: tuple[float, float] = (0.85, 0.95)
    anisotropy: float = 0.03
    shift_mm: float = 4.0
    warp_mm: float = 2.5
    warp_points: int = 6
    skull_mm: float = 5.0
    scalp_mm: float = 5.0
    phase_rad: float = 1.0
    b1_range: tuple[float, float] = (0.8, 1.2)
    supersample: int = 2

    def __post_init__(self) -> None:
        """Raise InputError for a bad field of view, supersampling, variation or B1 range."""
        if self.fov_mm <= 0 or self.supersample < 1 or self.warp_points < 2:
            raise InputError("phantom config: fov_mm > 0, supersample >= 1, warp_points >= 2")
        if not 0 <= self.variation < 1:
            raise InputError(f"phantom variation: must lie in [0, 1), got {self.variation}")
        if not 0 < self.b1_range[0] <= self.b1_range[1]:
            raise InputError(f"phantom b1_range: expected 0 < lo <= hi, got {self.b1_range}")


@dataclass(frozen=True, eq=False)
class Subject:
    """A digital subject on the image grid.

    Attributes
    ----------
    fractions : ndarray, shape (4, x, y, z), float32
        Volume fractions of the compartments CSF, GM, WM, other (labels 1–4); their sum is ≤ 1.
    t1_ms, t2_ms : ndarray, shape (4, x, y, z), float32
        Relaxation times of each compartment in ms (smoothly varying).
    pd : ndarray, shape (4, x, y, z), float32
        Relative proton density of each compartment.
    phase : ndarray, shape (x, y, z), float32
        Smooth phase of the magnetisation in radians.
    b1 : ndarray, shape (x, y, z), float32
        Relative B1+ (flip-angle scale).
    fov_mm : float
        Isotropic field of view in mm.
    """

    fractions: np.ndarray
    t1_ms: np.ndarray
    t2_ms: np.ndarray
    pd: np.ndarray
    phase: np.ndarray
    b1: np.ndarray
    fov_mm: float = 220.0

    @property
    def matrix(self) -> tuple[int, int, int]:
        """Image matrix ``(x, y, z)``."""
        s = self.fractions.shape[1:]
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def tissue(self) -> np.ndarray:
        """Labels (x, y, z), uint8: the dominant compartment where the fractions sum ≥ 0.1.

        The low threshold keeps edge voxels of the head (which carry signal) inside the object, so
        the reference of SPEC §5 accounts for every voxel the scan encodes.
        """
        total = self.fractions.sum(axis=0)
        lab = np.asarray(COMPARTMENTS, dtype=np.uint8)[self.fractions.argmax(axis=0)]
        return np.where(total >= 0.1, lab, 0).astype(np.uint8)

    @property
    def head_mask(self) -> np.ndarray:
        """Voxels with any tissue, shape (x, y, z), bool."""
        return self.fractions.sum(axis=0) > 1e-3

    def pd_complex(self) -> np.ndarray:
        """``Σ_j f_j PD_j · exp(iφ)``, shape (x, y, z), complex64."""
        mag = (self.fractions * self.pd).sum(axis=0)
        return (mag * np.exp(1j * self.phase)).astype(np.complex64)

    def reference(self) -> Reference:
        """Return the ground-truth maps of SPEC §3 (``reference/``)."""
        lab = self.tissue
        dom = self.fractions.argmax(axis=0)[None]
        t1 = np.take_along_axis(self.t1_ms, dom, axis=0)[0]
        t2 = np.take_along_axis(self.t2_ms, dom, axis=0)[0]
        inside = lab > 0
        return Reference(
            t1_ms=torch.from_numpy(np.where(inside, t1, 0).astype(np.float32)),
            t2_ms=torch.from_numpy(np.where(inside, t2, 0).astype(np.float32)),
            pd=torch.from_numpy(self.pd_complex()),
            tissue=torch.from_numpy(lab),
        )


# ----------------------------------------------------------------------------------------------
# smooth random fields
# ----------------------------------------------------------------------------------------------
def smooth_field(
    shape: tuple[int, int, int], rng: np.random.Generator, *, points: int = 5
) -> np.ndarray:
    """Return a smooth random field scaled to ``max |field| = 1``.

    Gaussian white noise on a ``points³`` control grid over the volume, interpolated with cubic
    splines.

    Returns
    -------
    ndarray, shape (x, y, z), float32
    """
    coarse = rng.standard_normal((points, points, points))
    coords = np.meshgrid(
        *[np.linspace(0, points - 1, n) for n in shape], indexing="ij", sparse=True
    )
    full = ndimage.map_coordinates(coarse, np.broadcast_arrays(*coords), order=3, mode="nearest")
    full -= full.mean()
    return (full / max(np.abs(full).max(), 1e-12)).astype(np.float32)


def _vary(
    nominal: float, shape: tuple[int, int, int], rng: np.random.Generator, amount: float
) -> np.ndarray:
    return (nominal * (1.0 + amount * smooth_field(shape, rng))).astype(np.float32)


def _grid_mm(matrix: tuple[int, int, int], fov_mm: float) -> list[np.ndarray]:
    return [(np.arange(n) - n // 2) * (fov_mm / n) for n in matrix]


def _b1_field(
    matrix: tuple[int, int, int], cfg: PhantomConfig, rng: np.random.Generator
) -> np.ndarray:
    """Centre-bright B1+ in ``b1_range`` (quadratic fall-off, random centre and extent, ripple)."""
    lo, hi = cfg.b1_range
    ax = _grid_mm(matrix, cfg.fov_mm)
    centre = rng.uniform(-10.0, 10.0, 3)
    radii = np.array([95.0, 110.0, 100.0]) * rng.uniform(0.9, 1.1, 3)
    rho2 = sum(
        ((a - c) / r) ** 2
        for a, c, r in zip(np.meshgrid(*ax, indexing="ij", sparse=True), centre, radii, strict=True)
    )
    b1 = hi - (hi - lo) * np.clip(rho2, 0.0, 1.0) + 0.03 * smooth_field(matrix, rng)
    return np.clip(b1, lo, hi).astype(np.float32)


def _phase_field(
    matrix: tuple[int, int, int], cfg: PhantomConfig, rng: np.random.Generator
) -> np.ndarray:
    ax = _grid_mm(matrix, cfg.fov_mm)
    grads = rng.uniform(-1.0, 1.0, 3) * cfg.phase_rad / (cfg.fov_mm / 2)
    lin = sum(
        g * a for g, a in zip(grads, np.meshgrid(*ax, indexing="ij", sparse=True), strict=True)
    )
    return (
        rng.uniform(-np.pi, np.pi) + 0.5 * lin + 0.5 * cfg.phase_rad * smooth_field(matrix, rng)
    ).astype(np.float32)


def _finish(
    fractions: np.ndarray, pd_other: np.ndarray, cfg: PhantomConfig, rng: np.random.Generator
) -> Subject:
    """Attach parameter maps (±variation), PD, phase and B1 to compartment fractions."""
    matrix = fractions.shape[1:]
    total = fractions.sum(axis=0)
    over = np.maximum(total, 1.0)
    fractions = (fractions / over).astype(np.float32)
    t1 = np.stack(
        [_vary(TISSUE_VALUES[lab].t1_ms, matrix, rng, cfg.variation) for lab in COMPARTMENTS]
    )
    t2 = np.stack(
        [_vary(TISSUE_VALUES[lab].t2_ms, matrix, rng, cfg.variation) for lab in COMPARTMENTS]
    )
    pd = np.stack(
        [np.full(matrix, TISSUE_VALUES[lab].pd, np.float32) for lab in COMPARTMENTS[:3]]
        + [pd_other.astype(np.float32)]
    )
    return Subject(
        fractions=fractions,
        t1_ms=t1,
        t2_ms=t2,
        pd=pd,
        phase=_phase_field(matrix, cfg, rng),
        b1=_b1_field(matrix, cfg, rng),
        fov_mm=cfg.fov_mm,
    )


def _matrix3(matrix: int | tuple[int, int, int]) -> tuple[int, int, int]:
    mat = (
        (int(matrix),) * 3
        if isinstance(matrix, int | np.integer)
        else tuple(int(m) for m in matrix)
    )
    if len(mat) != 3 or min(mat) < 4:
        raise InputError(f"matrix: expected 3 sizes >= 4, got {matrix}")
    return mat  # type: ignore[return-value]


def _offsets(ss: int) -> np.ndarray:
    """Sub-voxel offsets (voxel units) of an ``ss³`` supersampling, shape (ss³, 3)."""
    o = (np.arange(ss) + 0.5) / ss - 0.5
    return np.stack(np.meshgrid(o, o, o, indexing="ij"), axis=-1).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# analytic phantom
# ----------------------------------------------------------------------------------------------
def analytic_subject(
    matrix: int | tuple[int, int, int], *, seed: int = 0, config: PhantomConfig | None = None
) -> Subject:
    """Nested ellipsoids with the labels of SPEC §3, for fast tests.

    From outside in: scalp and skull (other, label 4), a CSF layer, a grey-matter shell, a
    white-matter core with two CSF ventricles.  Semi-axes are fractions of the FOV, so the phantom
    looks the same at every matrix.

    Parameters
    ----------
    matrix : int or tuple of 3 int
        Image matrix.
    seed : int
        Seed of the smooth parameter variation, phase and B1.
    config : PhantomConfig, optional
        ``fov_mm``, ``variation``, ``phase_rad``, ``b1_range`` and ``supersample`` are used.

    Returns
    -------
    Subject
    """
    cfg = config or PhantomConfig()
    mat = _matrix3(matrix)
    rng = np.random.default_rng(seed)
    ss = max(cfg.supersample, 3)
    half = np.array([0.36, 0.42, 0.38])  # outer semi-axes as fractions of the FOV

    def inside(
        pts: np.ndarray, axes: np.ndarray, centre: tuple[float, ...] = (0, 0, 0)
    ) -> np.ndarray:
        return (((pts - np.asarray(centre)) / axes) ** 2).sum(axis=-1) <= 1.0

    ax = [np.arange(n) - n // 2 for n in mat]
    grid = np.stack(np.meshgrid(*ax, indexing="ij"), axis=-1).astype(np.float64)
    fr = np.zeros((5, *mat), dtype=np.float64)  # csf, gm, wm, skull, scalp
    for off in _offsets(ss):
        pts = (grid + off) / np.asarray(mat)  # FOV units, centred
        head = inside(pts, half)
        skull_in = inside(pts, half * 0.90)
        csf_out = inside(pts, half * 0.83)
        gm_out = inside(pts, half * 0.78)
        wm_out = inside(pts, half * 0.62)
        vent = inside(pts, half * np.array([0.10, 0.25, 0.12]), (0.05, 0.02, 0.02)) | inside(
            pts, half * np.array([0.10, 0.25, 0.12]), (-0.05, 0.02, 0.02)
        )
        fr[0] += (csf_out & ~gm_out) | vent
        fr[1] += gm_out & ~wm_out
        fr[2] += wm_out & ~vent
        fr[3] += skull_in & ~csf_out
        fr[4] += head & ~skull_in
    fr /= len(_offsets(ss))
    other = fr[3] + fr[4]
    pd_other = np.where(
        other > 0,
        (_SKULL_PD * fr[3] + TISSUE_VALUES[4].pd * fr[4]) / np.maximum(other, 1e-12),
        TISSUE_VALUES[4].pd,
    )
    fractions = np.stack([fr[0], fr[1], fr[2], other])
    return _finish(fractions, pd_other, cfg, rng)


# ----------------------------------------------------------------------------------------------
# ICBM152 brain
# ----------------------------------------------------------------------------------------------
def template_paths() -> dict[str, Path]:
    """Files of the ICBM152 2009a template (T1, GM, WM; 1 mm) inside the installed nilearn.

    Raises
    ------
    InputError
        When nilearn or the template files are missing.
    """
    try:
        import nilearn
    except ImportError:
        raise InputError("brain phantom: nilearn is not installed (pip install nilearn)") from None
    root = Path(nilearn.__file__).parent / "datasets" / "data"
    paths = {
        k: root / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")
    }
    for k, p in paths.items():
        if not p.exists():
            raise InputError(f"brain phantom: template file {p} ({k}) is missing from nilearn")
    return paths


@dataclass(frozen=True, eq=False)
class _Template:
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray  # intracranial fraction max(mask, gm + wm)
    dist: np.ndarray  # distance outside the mask in mm (0 inside)
    centre: np.ndarray  # voxel index of the head's bounding-box centre (after padding)


_PAD = 16


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    import nibabel as nib

    paths = template_paths()
    vols = {}
    for k, p in paths.items():
        img: Any = nib.load(str(p))
        zooms = img.header.get_zooms()[:3]
        if not np.allclose(zooms, 1.0):
            raise InputError(f"brain phantom: template {p.name} is not 1 mm isotropic ({zooms})")
        vols[k] = np.pad(np.asarray(img.dataobj, dtype=np.float32) / 255.0, _PAD)
    mask = vols["t1"] > 0
    gm, wm = vols["gm"], vols["wm"]
    brain = np.maximum(mask.astype(np.float32), np.clip(gm + wm, 0.0, 1.0))
    dist = ndimage.distance_transform_edt(~mask).astype(np.float32)
    idx = np.argwhere(mask)
    centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    return _Template(gm=gm, wm=wm, brain=brain, dist=dist, centre=centre)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ca, cb, cc = np.cos(angles_rad)
    sa, sb, sc = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def brain_subject(
    matrix: int | tuple[int, int, int], *, seed: int = 0, config: PhantomConfig | None = None
) -> Subject:
    """Make a subject with human anatomy from the ICBM152 2009a template, randomly posed and warped.

    Subject coordinates ``x`` (mm, voxel ``r`` at ``(r − matrix//2) · fov/matrix``) map to template
    coordinates ``R⁻¹ (x − shift) / scale + u(x)`` with a random rotation ``R``, per-axis scale,
    shift and a smooth displacement ``u`` (cubic interpolation of Gaussian control-point offsets).
    Each voxel averages ``supersample³`` trilinear samples of the 1 mm template (partial volume).

    Parameters
    ----------
    matrix : int or tuple of 3 int
        Image matrix over ``config.fov_mm``.
    seed : int
        Seed of the pose, warp, parameter variation, phase and B1.
    config : PhantomConfig, optional

    Returns
    -------
    Subject
    """
    cfg = config or PhantomConfig()
    mat = _matrix3(matrix)
    rng = np.random.default_rng(seed)
    tpl = _template()
    rot = _rotation(np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3)))
    scale = rng.uniform(*cfg.scale) * (1.0 + rng.uniform(-cfg.anisotropy, cfg.anisotropy, 3))
    shift = rng.uniform(-cfg.shift_mm, cfg.shift_mm, 3)
    ctrl = rng.standard_normal((3, *(cfg.warp_points,) * 3)) * cfg.warp_mm
    vox = cfg.fov_mm / np.asarray(mat, dtype=np.float64)
    ax = [np.arange(n) - n // 2 for n in mat]
    grid = np.stack(np.meshgrid(*ax, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float64)
    shell = cfg.skull_mm + cfg.scalp_mm
    acc = np.zeros((6, grid.shape[0]), dtype=np.float64)  # brain, gm, wm, skull, scalp (+spare)
    offs = _offsets(cfg.supersample)
    for off in offs:
        x = (grid + off) * vox  # subject mm
        # elastic displacement, evaluated on the control grid spanning the FOV
        cidx = (x / cfg.fov_mm + 0.5) * (cfg.warp_points - 1)
        disp = np.stack(
            [ndimage.map_coordinates(ctrl[d], cidx.T, order=3, mode="nearest") for d in range(3)],
            axis=1,
        )
        t = ((x - shift) @ rot) / scale + disp  # R⁻¹ = Rᵀ for row vectors: x @ R
        idx = (t + tpl.centre).T
        b = ndimage.map_coordinates(tpl.brain, idx, order=1, mode="constant", cval=0.0)
        d = ndimage.map_coordinates(tpl.dist, idx, order=1, mode="nearest")
        head = np.clip(shell + 0.5 - d, 0.0, 1.0)
        skull = np.clip(cfg.skull_mm + 0.5 - d, 0.0, 1.0)
        acc[0] += b
        acc[1] += ndimage.map_coordinates(tpl.gm, idx, order=1, mode="constant", cval=0.0)
        acc[2] += ndimage.map_coordinates(tpl.wm, idx, order=1, mode="constant", cval=0.0)
        acc[3] += np.clip(skull - b, 0.0, 1.0)
        acc[4] += np.clip(head - np.maximum(skull, b), 0.0, 1.0)
    acc /= len(offs)
    brain, gm, wm, skull, scalp = (a.reshape(mat) for a in acc[:5])
    gm = np.minimum(gm, brain)
    wm = np.minimum(wm, brain - gm)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    other = skull + scalp
    pd_other = np.where(
        other > 0,
        (_SKULL_PD * skull + TISSUE_VALUES[4].pd * scalp) / np.maximum(other, 1e-12),
        TISSUE_VALUES[4].pd,
    )
    fractions = np.stack([csf, gm, wm, other])
    if not math.isfinite(float(fractions.sum())):
        raise InputError("brain phantom: resampling produced non-finite fractions")
    return _finish(fractions, pd_other, cfg, rng)
