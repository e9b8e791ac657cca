"""A simulated scan in memory: subject, head array, time series, k-space, calibration, noise.

:func:`simulate_scan` makes a subject (:mod:`.phantom`), its coil maps (:mod:`.coils`) and true
time series (:mod:`.signals`), the reference maps (:func:`effective_reference`), and scans it
(:func:`acquire_scan`: :mod:`.trajectory`, :mod:`.kspace`, noise).

Noise.  Complex white Gaussian noise with ``E|n|² = σ²`` per sample and
``σ = noise · RMS_{c,g,t} |kspace[c, g, t, 0]|``: relative to the RMS of the k-space centre (every
arm starts at ``k = 0``).  The calibration gets noise of the same relative level (relative to the
RMS of its centre sample over coils).  The default ``noise = 0.02`` was sized with a direct
density-compensated adjoint: at 32³, 16 groups, 10 coils its first coefficient image had an SNR of
4.4 / noise inside the head (220 at 0.02); as SNR ∝ √samples / (noise · N³) with 6·N samples per
arm, that is ≈ 0.78 / noise ≈ 40 at 64³ (≈ 70 for 48 groups, ≈ 20 for 4): noisy short scans and
a clean but not noiseless R = 1 reference, as in vivo.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import FispSequence, Reference, Scan
from ..progress import Callback, emit
from .coils import head_array
from .kspace import calibration_data, nufft_forward
from .phantom import Subject, analytic_subject, brain_subject
from .scan_config import SimulationConfig
from .signals import signal_subspace
from .trajectory import spi_trajectory

__all__ = [
    "acquire_scan",
    "effective_reference",
    "scan_of_subject",
    "scan_seeds",
    "simulate_scan",
    "subject_of_seed",
    "true_coefficients",
]


def scan_seeds(seed: int) -> tuple[int, int, int]:
    """Return the seeds of a scan's subject, coil array and k-space noise, derived from ``seed``.

    Every consumer that must reproduce one of the three streams of ``simulate --seed`` (the
    unseen-scan tool's subject, the re-drawn training noise) derives it here.
    """
    a, b, c = (int(v) for v in np.random.SeedSequence(int(seed)).generate_state(3))
    return a, b, c


def _add_noise(
    data: np.ndarray, sigma: float, rng: np.random.Generator, chunk: int = 1 << 22
) -> None:
    """Add complex white Gaussian noise with ``E|n|² = σ²`` in place (chunked)."""
    if sigma <= 0:
        return
    flat = data.reshape(-1)
    s = np.float32(sigma / np.sqrt(2.0))
    for i in range(0, flat.size, chunk):
        n = min(chunk, flat.size - i)
        noise = rng.standard_normal((2, n), dtype=np.float32) * s
        flat[i : i + n] += noise[0] + 1j * noise[1]


def subject_of_seed(config: SimulationConfig, seed: int) -> Subject:
    """Return the subject that :func:`simulate_scan` scans for ``config`` and ``seed``.

    Only ``config.phantom``, ``matrix`` and ``phantom_config`` decide it (not coils, groups or
    noise), so a tool can re-create a simulated scan's anatomy from its seed.
    """
    make = brain_subject if config.phantom == "brain" else analytic_subject
    return make(config.matrix, seed=scan_seeds(seed)[0], config=config.phantom_config)


def true_coefficients(images: torch.Tensor, basis: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Project a true time series on a subspace: ``Φ̃ᴴ m_t``, no noise, no undersampling.

    Parameters
    ----------
    images, basis : Tensor
        :func:`~.signals.signal_subspace`'s factors, shapes (rank, x, y, z) and (tr, rank).
    phi : Tensor, shape (tr, k), complex
        The subspace (e.g. :func:`~spurig_core.physics.default_basis`).

    Returns
    -------
    Tensor, shape (k, x, y, z), ``phi``'s dtype
    """
    return torch.einsum("tk,tj,jxyz->kxyz", phi.conj(), basis.to(phi.dtype), images.to(phi.dtype))


def effective_reference(
    subject: Subject,
    images: torch.Tensor,
    basis: torch.Tensor,
    sequence: FispSequence,
    *,
    purity: float = 0.95,
) -> Reference:
    """Return ``reference/`` maps whose one-compartment signal reproduces every voxel's true signal.

    Pure voxels (dominant compartment ≥ ``purity`` of the voxel's volume) keep that compartment's
    T1/T2.  In a mixed voxel the data carry the *sum* of the compartments' signals, which no single
    (T1, T2) reproduces exactly; its reference T1/T2/|PD| are the B1-aware dictionary fit of the
    true noise-free signal (as the paper's reference is the matched R = 1 reconstruction), so that
    the reference coefficients ``Φ̃^H (pd · signal(t1, t2, b1))`` of SPEC §5 describe what the scan
    encodes.  Labels stay those of the dominant compartment.

    Parameters
    ----------
    subject : Subject
    images : Tensor, shape (rank, x, y, z), complex64
        Coefficient images of the true time series (:func:`signal_subspace`).
    basis : Tensor, shape (tr, rank), complex64
        Its temporal factor.
    sequence : FispSequence
    purity : float
        Share of the dominant compartment above which a voxel counts as pure.
    """
    from ..matching import match_maps
    from ..physics import default_basis

    ref = subject.reference()
    total = subject.fractions.sum(axis=0)
    mixed = (ref.tissue.numpy() > 0) & (subject.fractions.max(axis=0) < purity * total)
    if not mixed.any():
        return ref
    phi = default_basis(sequence)
    coeffs = true_coefficients(images, basis, phi)
    mask = torch.from_numpy(mixed)
    fit = match_maps(coeffs, phi, b1=torch.from_numpy(subject.b1), mask=mask, sequence=sequence)
    phase = torch.from_numpy(np.exp(1j * subject.phase).astype(np.complex64))
    return Reference(
        t1_ms=torch.where(mask, fit.t1_ms, ref.t1_ms),
        t2_ms=torch.where(mask, fit.t2_ms, ref.t2_ms),
        pd=torch.where(mask, fit.pd.to(torch.complex64) * phase, ref.pd),
        tissue=ref.tissue,
    )


def simulate_scan(
    config: SimulationConfig | None = None,
    *,
    seed: int = 0,
    sequence: FispSequence | None = None,
    callback: Callback | None = None,
) -> Scan:
    """Simulate a subject and its SPI FISP-MRF scan in memory (SPEC §3 with ``reference/``).

    Parameters
    ----------
    config : SimulationConfig, optional
    seed : int
        Seeds the subject (pose, warp, parameters, phase, B1), the cable phases and the noise.
    sequence : FispSequence, optional
        Default sequence of SPEC §4 when ``None``.
    callback : Callback, optional
        Progress: stages ``"subject"``, ``"signals"``, ``"nufft"``.

    Returns
    -------
    Scan
        With ``calibration``, ``coil_maps``, ``b1`` and ``reference`` set.
    """
    cfg = config or SimulationConfig()
    seq = sequence or FispSequence.default()
    emit(callback, "subject", 0, 3, f"{cfg.phantom} subject {cfg.matrix}³")
    subject = subject_of_seed(cfg, seed)
    return scan_of_subject(subject, cfg, seed=seed, sequence=seq, callback=callback)


def scan_of_subject(
    subject: Subject,
    config: SimulationConfig,
    *,
    seed: int = 0,
    sequence: FispSequence | None = None,
    callback: Callback | None = None,
) -> Scan:
    """Scan a given subject: the coils, signals, reference and acquisition of :func:`simulate_scan`.

    The coil array and noise are seeded from ``seed`` exactly as :func:`simulate_scan` seeds them,
    so a subject changed before the scan (e.g. other relaxation times, ``tools/simulate_unseen.py``)
    gets the coils and noise that ``seed`` gives the unchanged one.

    Returns
    -------
    Scan
        With ``calibration``, ``coil_maps``, ``b1`` and ``reference`` set.
    """
    cfg, seq = config, sequence or FispSequence.default()
    s_coils = scan_seeds(seed)[1]
    emit(callback, "subject", 1, 3, "coil array")
    maps = head_array(
        cfg.matrix,
        cfg.coils,
        fov_mm=subject.fov_mm,
        mask=subject.head_mask,
        config=cfg.coil_config,
        seed=s_coils,
        compressed=cfg.coil_compression,
    )
    emit(callback, "subject", 2, 3, "signals")
    images, basis, _ = signal_subspace(subject, seq, cfg, callback=callback)
    reference = effective_reference(subject, images, basis, seq, purity=cfg.purity)
    emit(callback, "subject", 3, 3, f"time-series rank {images.shape[0]}")
    return acquire_scan(
        subject,
        images,
        basis,
        maps,
        cfg,
        sequence=seq,
        reference=reference,
        seed=seed,
        callback=callback,
    )


def acquire_scan(
    subject: Subject,
    images: torch.Tensor,
    basis: torch.Tensor,
    coil_maps: torch.Tensor,
    config: SimulationConfig,
    *,
    sequence: FispSequence,
    reference: Reference | None = None,
    seed: int = 0,
    callback: Callback | None = None,
) -> Scan:
    """Scan a prepared subject: trajectory, k-space, calibration and noise (SPEC §3).

    The acquisition half of :func:`simulate_scan` (which calls it with the same arguments), so
    that one subject can be scanned with many trajectories, coil arrays, calibration sizes and
    noise levels (``benchmarks/bench_igrog_robustness.py``).

    Parameters
    ----------
    subject : Subject
        For the calibration image, FOV and B1.
    images, basis : Tensor
        The subject's time-series factors (:func:`signal_subspace`).
    coil_maps : Tensor, shape (coils, x, y, z), complex64
    config : SimulationConfig
        ``groups``, ``trajectory_config``, ``calibration``, ``noise``, ``calibration_noise``,
        ``nufft_eps`` and ``group_chunk`` are used.
    sequence : FispSequence
    reference : Reference, optional
        Written as the scan's ``reference``.
    seed : int
        The noise seed is derived from it as in :func:`simulate_scan`.
    callback : Callback, optional
        ``"nufft"`` progress.

    Returns
    -------
    Scan
    """
    cfg, seq, maps = config, sequence, coil_maps
    s_noise = scan_seeds(seed)[2]
    traj = spi_trajectory(cfg.matrix, cfg.groups, seq.n_tr, cfg.trajectory_config)
    kspace = nufft_forward(
        images, maps, traj, basis, eps=cfg.nufft_eps, group_chunk=cfg.group_chunk, callback=callback
    )
    pd = torch.from_numpy(subject.pd_complex())
    calib = calibration_data(pd, maps, cfg.calibration)
    rng = np.random.default_rng(s_noise)
    k_np, c_np = kspace.numpy(), calib.numpy()
    centre = float(np.sqrt(np.mean(np.abs(k_np[..., 0]) ** 2)))
    _add_noise(k_np, cfg.noise * centre, rng)
    cc = tuple(s // 2 for s in c_np.shape[1:])
    calib_centre = float(np.sqrt(np.mean(np.abs(c_np[:, cc[0], cc[1], cc[2]]) ** 2)))
    cal_noise = cfg.noise if cfg.calibration_noise is None else cfg.calibration_noise
    _add_noise(c_np, cal_noise * calib_centre, rng)
    fov = float(subject.fov_mm)
    return Scan(
        kspace=kspace,
        trajectory=traj,
        sequence=seq,
        matrix=subject.matrix,
        fov_mm=(fov, fov, fov),
        calibration=calib,
        coil_maps=maps,
        b1=torch.from_numpy(subject.b1),
        reference=reference,
    )
