"""The acquisition simulator: a digital subject scanned with 3D SPI FISP-MRF (paper 2.4, SPEC §3).

Forward model (SPEC §3, exactly)::

    kspace[c, g, t, s] = Σ_r S_c(r) m_t(r) exp(−2πi k·(r − matrix//2) / matrix)
    k = trajectory[g, t, s]

with ``m_t(r) = exp(iφ(r)) Σ_j f_j(r) PD_j(r) signal_t(T1_j(r), T2_j(r), B1(r))`` summed over the
compartments ``j`` of the voxel (partial volume).  It is evaluated with finufft (type 2,
``isign=−1``, points ``2π k_d / matrix_d``; cufinufft when CUDA is there) through a *high-rank* SVD
of the true per-voxel time series: ``X ≈ C Uᴴ`` with the rank ``r`` chosen so that the discarded
energy ``Σ_{i>r} σ_i² / Σ σ_i²`` is below ``svd_tol`` (1e-5).  This is not the ``k = 5`` subspace
of the reconstruction, so the data carry the model mismatch a real scan has.

Signals come from :func:`spurig_core.physics.simulate_signals` (EPG).  When the subject has many
(voxel, compartment) pairs, each compartment's signals are interpolated trilinearly from a table
over ``(log T1, log T2, B1)`` spanning the compartment's parameter range (``table_points``, default
5 × 5 × 161: B1 needs the fine axis, CSF's long T2 makes its signal vary fast with B1).  Measured
on a 32³ brain subject: per-voxel relative error ≤ 3.2e-4 (median 8.5e-5, overall 1.0e-4), i.e.
an energy error ~1e-8, far below the SVD truncation (1e-5) and the noise;
``tests/test_simulation.py`` checks ≤ 1e-3.  Interpolation is linear in the table, ``X = D W T``
(``D`` the voxel phases, ``W`` sparse fraction × PD × trilinear weights, ``T`` the table), so the
Gram ``Xᴴ X = Tᴴ (Wᵀ W) T`` and the coefficients ``C = D W (T U)`` are computed without ever
forming ``X``.

Noise.  Complex white Gaussian noise with ``E|n|² = σ²`` per sample and
``σ = noise · RMS_{c,g,t} |kspace[c, g, t, 0]|``: relative to the RMS of the k-space centre (every
arm starts at ``k = 0``).  The calibration gets noise of the same relative level (relative to the
RMS of its centre sample over coils).  The default ``noise = 0.02`` was sized with a direct
density-compensated adjoint: at 32³, 16 groups, 10 coils its first coefficient image had an SNR of
4.4 / noise inside the head (220 at 0.02); as SNR ∝ √samples / (noise · N³) with 6·N samples per
arm, that is ≈ 0.78 / noise ≈ 40 at 64³ (≈ 70 for 48 groups, ≈ 20 for 4): noisy short scans and
a clean but not noiseless R = 1 reference, as in vivo.

Calibration (SPEC §3): the fully sampled Cartesian centre ``(coils, cx, cy, cz)`` of a
proton-density weighted scan (image ``S_c · Σ_j f_j PD_j exp(iφ)``), at the integer frequencies
``(i − cx//2, j − cy//2, l − cz//2)``; computed exactly with an FFT.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import sparse

from .coils import CoilConfig, head_array
from .data import Reference, Scan, Sequence
from .errors import InputError
from .phantom import COMPARTMENTS, PhantomConfig, Subject, analytic_subject, brain_subject
from .progress import Callback, emit
from .trajectory import TrajectoryConfig, spi_trajectory

__all__ = [
    "SimulationConfig",
    "acquire_scan",
    "calibration_data",
    "effective_reference",
    "nufft_forward",
    "sample_scan_path",
    "signal_subspace",
    "simulate",
    "simulate_cohort",
    "simulate_scan",
]


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


# ----------------------------------------------------------------------------------------------
# per-voxel signals and their SVD
# ----------------------------------------------------------------------------------------------
def _signals(
    t1: np.ndarray,
    t2: np.ndarray,
    b1: np.ndarray,
    sequence: Sequence,
    callback: Callback | None = None,
) -> np.ndarray:
    from .physics import simulate_signals

    return simulate_signals(
        torch.from_numpy(t1.astype(np.float32)),
        torch.from_numpy(t2.astype(np.float32)),
        torch.from_numpy(b1.astype(np.float32)),
        sequence,
        callback=callback,
    ).numpy()


def _axis_grid(lo: float, hi: float, n: int) -> tuple[np.ndarray, float, float]:
    """``n`` table points over ``[lo, hi]`` (widened a little so that ``hi > lo``)."""
    if hi - lo < 1e-6 * max(abs(hi), 1.0):
        lo, hi = lo - 1e-3 * max(abs(lo), 1.0), hi + 1e-3 * max(abs(hi), 1.0)
    return np.linspace(lo, hi, n), lo, (hi - lo) / (n - 1)


def _trilinear(
    coords: list[np.ndarray], los: list[float], steps: list[float], shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Corner indices (flat) and weights of trilinear interpolation, each (n, 8)."""
    base, frac = [], []
    for c, lo, h, n in zip(coords, los, steps, shape, strict=True):
        u = np.clip((c - lo) / h, 0.0, n - 1.0)
        i0 = np.minimum(np.floor(u).astype(np.int64), n - 2)
        base.append(i0)
        frac.append(u - i0)
    idx, wts = [], []
    for corner in range(8):
        bits = [(corner >> d) & 1 for d in range(3)]
        ii = [b + bit for b, bit in zip(base, bits, strict=True)]
        w = np.ones_like(frac[0])
        for f, bit in zip(frac, bits, strict=True):
            w = w * (f if bit else 1.0 - f)
        idx.append((ii[0] * shape[1] + ii[1]) * shape[2] + ii[2])
        wts.append(w)
    return np.stack(idx, axis=1), np.stack(wts, axis=1)


def _atoms(
    subject: Subject, sequence: Sequence, cfg: SimulationConfig, callback: Callback | None
) -> tuple[np.ndarray, sparse.csr_matrix, np.ndarray]:
    """Voxels, weights and signal table with ``X = diag(exp(iφ)) W T``.

    Returns
    -------
    voxels : ndarray, shape (n,), int64
        Flat indices of the voxels with tissue.
    W : csr_matrix, shape (n, atoms), float64
        Fraction × PD (× interpolation weight) of each atom in each voxel.
    T : ndarray, shape (atoms, tr), complex64
        Signals of the atoms (PD = 1).
    """
    frac = subject.fractions.reshape(len(COMPARTMENTS), -1)
    voxels = np.flatnonzero(frac.sum(axis=0) > 0)
    row_of = np.full(frac.shape[1], -1, dtype=np.int64)
    row_of[voxels] = np.arange(voxels.size)
    b1 = subject.b1.reshape(-1)
    pairs = [(j, np.flatnonzero(frac[j] > 0)) for j in range(len(COMPARTMENTS))]
    n_pairs = sum(v.size for _, v in pairs)
    rows, cols, vals, tables = [], [], [], []
    offset = 0
    if n_pairs <= cfg.exact_max:
        t1 = np.concatenate([subject.t1_ms[j].reshape(-1)[v] for j, v in pairs])
        t2 = np.concatenate([subject.t2_ms[j].reshape(-1)[v] for j, v in pairs])
        bb = np.concatenate([b1[v] for _, v in pairs])
        table = _signals(t1, t2, bb, sequence, callback)
        for j, v in pairs:
            rows.append(row_of[v])
            cols.append(offset + np.arange(v.size))
            vals.append(frac[j, v] * subject.pd[j].reshape(-1)[v])
            offset += v.size
        tables.append(table)
    else:
        shape = cfg.table_points
        all_t1, all_t2, all_b1, specs = [], [], [], []
        for j, v in pairs:
            if v.size == 0:
                continue
            params = [
                np.log(subject.t1_ms[j].reshape(-1)[v]),
                np.log(subject.t2_ms[j].reshape(-1)[v]),
                b1[v].astype(np.float64),
            ]
            grids, los, steps = zip(
                *[
                    _axis_grid(float(p.min()), float(p.max()), n)
                    for p, n in zip(params, shape, strict=True)
                ],
                strict=True,
            )
            g1, g2, gb = np.meshgrid(*grids, indexing="ij")
            all_t1.append(np.exp(g1).ravel())
            all_t2.append(np.exp(g2).ravel())
            all_b1.append(gb.ravel())
            idx, wts = _trilinear(params, list(los), list(steps), shape)
            weight = (frac[j, v] * subject.pd[j].reshape(-1)[v])[:, None] * wts
            rows.append(np.repeat(row_of[v], 8))
            cols.append((offset + idx).ravel())
            vals.append(weight.ravel())
            offset += g1.size
            specs.append(j)
        tables.append(
            _signals(
                np.concatenate(all_t1),
                np.concatenate(all_t2),
                np.concatenate(all_b1),
                sequence,
                callback,
            )
        )
    w = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(voxels.size, offset),
    )
    return voxels, w, np.concatenate(tables, axis=0)


def signal_subspace(
    subject: Subject,
    sequence: Sequence | None = None,
    config: SimulationConfig | None = None,
    *,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """High-rank SVD of the subject's true per-voxel time series ``m_t(r)``.

    Parameters
    ----------
    subject : Subject
    sequence : Sequence, optional
        Default sequence of SPEC §4 when ``None``.
    config : SimulationConfig, optional
        ``svd_tol``, ``exact_max`` and ``table_points`` are used.
    callback : Callback, optional
        Progress of the signal simulation.

    Returns
    -------
    images : Tensor, shape (rank, x, y, z), complex64
        Coefficient images ``C`` (zero outside the subject).
    basis : Tensor, shape (tr, rank), complex64
        Temporal factor such that ``m_t(r) = Σ_j images[j, r] · basis[t, j]`` (``basis = conj(U)``).
    discarded : float
        Energy fraction of the time series left out (``≤ svd_tol``).
    """
    cfg = config or SimulationConfig()
    seq = sequence or Sequence.default()
    voxels, w, table = _atoms(subject, seq, cfg, callback)
    t = table.astype(np.complex128)
    m = (w.T @ w).tocsr()  # (atoms, atoms), real
    gram = t.conj().T @ (m @ t)  # (tr, tr) = Xᴴ X
    gram = (gram + gram.conj().T) / 2
    lam, vec = np.linalg.eigh(gram)
    lam, vec = np.clip(lam[::-1], 0.0, None), vec[:, ::-1]
    total = float(lam.sum())
    tail = np.concatenate([np.cumsum(lam[::-1])[::-1][1:], [0.0]]) / max(total, 1e-300)
    rank = int(np.argmax(tail <= cfg.svd_tol)) + 1
    u = vec[:, :rank]
    coeff = w @ (t @ u)  # (n, rank)
    coeff *= np.exp(1j * subject.phase.reshape(-1)[voxels])[:, None]
    images = np.zeros((rank, int(np.prod(subject.matrix))), dtype=np.complex64)
    images[:, voxels] = coeff.T
    return (
        torch.from_numpy(images.reshape(rank, *subject.matrix)),
        torch.from_numpy(u.conj().astype(np.complex64)),
        float(tail[rank - 1]),
    )


# ----------------------------------------------------------------------------------------------
# NUFFT forward model and calibration
# ----------------------------------------------------------------------------------------------
def _nufft_backend() -> str:
    if torch.cuda.is_available():
        try:
            import cufinufft  # noqa: F401

            return "cufinufft"
        except ImportError:
            pass
    return "finufft"


def nufft_forward(
    images: torch.Tensor,
    coil_maps: torch.Tensor,
    trajectory: torch.Tensor,
    basis: torch.Tensor,
    *,
    eps: float = 1e-6,
    group_chunk: int = 4,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The forward model of SPEC §3 for images in a temporal factorisation.

    ``kspace[c, g, t, s] = Σ_j basis[t, j] Σ_r S_c(r) images[j, r] exp(−2πi k·(r − N//2)/N)``.

    Parameters
    ----------
    images : Tensor, shape (rank, x, y, z), complex64
        Coefficient images.
    coil_maps : Tensor, shape (coils, x, y, z), complex64
    trajectory : Tensor, shape (groups, tr, samples, 3), float32
        Cycles per FOV.
    basis : Tensor, shape (tr, rank), complex64
    eps : float
        finufft tolerance.
    group_chunk : int
        Groups per NUFFT call.
    callback : Callback, optional
        ``emit(callback, "nufft", groups_done, groups)``.

    Returns
    -------
    Tensor, shape (coils, groups, tr, samples), complex64
    """
    rank, *mat = images.shape
    coils = coil_maps.shape[0]
    groups, tr, samples, _ = trajectory.shape
    if tuple(coil_maps.shape[1:]) != tuple(mat) or basis.shape != (tr, rank):
        raise InputError(
            f"nufft_forward: images {tuple(images.shape)}, coil maps "
            f"{tuple(coil_maps.shape)} and basis {tuple(basis.shape)} do not fit"
        )
    out = np.empty((coils, groups, tr, samples), dtype=np.complex64)
    img = images.detach().cpu().numpy().astype(np.complex64)
    maps = coil_maps.detach().cpu().numpy().astype(np.complex64)
    bt = basis.detach().cpu().numpy().astype(np.complex64)
    scale = (2.0 * np.pi / np.asarray(mat, dtype=np.float64)).astype(np.float32)
    backend = _nufft_backend()
    if backend == "cufinufft":
        try:
            return _nufft_forward_cuda(img, maps, trajectory, bt, eps, group_chunk, callback)
        except Exception as exc:  # an unusable GPU build must not stop a simulation
            import warnings

            warnings.warn(
                f"cufinufft failed ({exc}); simulating with finufft on the CPU",
                RuntimeWarning,
                stacklevel=2,
            )
    import finufft

    nthreads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads()
    plan = finufft.Plan(
        2,
        tuple(int(m) for m in mat),
        n_trans=rank,
        eps=eps,
        isign=-1,
        dtype="complex64",
        modeord=0,
        nthreads=nthreads,
    )
    traj = trajectory.detach().cpu().numpy()
    for g0 in range(0, groups, group_chunk):
        g1 = min(groups, g0 + group_chunk)
        pts = traj[g0:g1].reshape(-1, 3)
        plan.setpts(*[np.ascontiguousarray(pts[:, d] * scale[d]) for d in range(3)])
        for c in range(coils):
            f = plan.execute(np.ascontiguousarray(img * maps[c][None]))  # (rank, M)
            f = f.reshape(rank, g1 - g0, tr, samples)
            for g in range(g1 - g0):  # per group: small temporaries
                # out[t, s] = Σ_j bt[t, j] f[j, t, s], batched over t as (t, 1, j) @ (t, j, s)
                ft = f[:, g].transpose(1, 0, 2)  # (tr, rank, samples), a view
                out[c, g0 + g] = np.matmul(bt[:, None, :], ft)[:, 0, :]
        emit(callback, "nufft", g1, groups, f"groups {g1}/{groups}")
    return torch.from_numpy(out)


def _nufft_forward_cuda(
    img: np.ndarray,
    maps: np.ndarray,
    trajectory: torch.Tensor,
    bt: np.ndarray,
    eps: float,
    group_chunk: int,
    callback: Callback | None,
) -> torch.Tensor:
    """:func:`nufft_forward` on the GPU with cufinufft (same conventions)."""
    import cufinufft

    rank, *mat = img.shape
    groups, tr, samples, _ = trajectory.shape
    dev = torch.device("cuda")
    scale = torch.tensor([2.0 * np.pi / m for m in mat], dtype=torch.float32, device=dev)
    plan = cufinufft.Plan(
        2, tuple(int(m) for m in mat), n_trans=rank, eps=eps, isign=-1, dtype="complex64"
    )
    img_d = torch.from_numpy(img).to(dev)
    maps_d = torch.from_numpy(maps).to(dev)
    bt_d = torch.from_numpy(bt).to(dev)
    out = torch.empty((maps.shape[0], groups, tr, samples), dtype=torch.complex64)
    for g0 in range(0, groups, group_chunk):
        g1 = min(groups, g0 + group_chunk)
        pts = trajectory[g0:g1].reshape(-1, 3).to(dev) * scale
        plan.setpts(*[pts[:, d].contiguous() for d in range(3)])
        for c in range(maps.shape[0]):
            f = plan.execute((img_d * maps_d[c][None]).contiguous())
            f = f.reshape(rank, g1 - g0, tr, samples)
            out[c, g0:g1] = torch.einsum("tj,jgts->gts", bt_d, f).cpu()
        emit(callback, "nufft", g1, groups, f"groups {g1}/{groups}")
    return out


def calibration_data(
    image: torch.Tensor, coil_maps: torch.Tensor, size: int | tuple[int, int, int]
) -> torch.Tensor:
    """Fully sampled Cartesian k-space centre of the coil images ``S_c · image`` (SPEC §3).

    ``calib[c, i, j, l] = Σ_r S_c(r) image(r) exp(−2πi k·(r − N//2)/N)`` at
    ``k = (i − cx//2, j − cy//2, l − cz//2)``, computed exactly with an FFT.

    Parameters
    ----------
    image : Tensor, shape (x, y, z), complex64
    coil_maps : Tensor, shape (coils, x, y, z), complex64
    size : int or tuple of 3 int
        ``(cx, cy, cz)``, each at most the matrix.

    Returns
    -------
    Tensor, shape (coils, cx, cy, cz), complex64
    """
    mat = tuple(image.shape)
    cs = (int(size),) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    cs = tuple(min(c, n) for c, n in zip(cs, mat, strict=True))
    spec = torch.fft.fftn(coil_maps * image[None], dim=(1, 2, 3))
    out = spec
    for d, (n, c) in enumerate(zip(mat, cs, strict=True)):
        k = torch.arange(c) - c // 2
        # Σ_r x(r) e^{−2πi k (r − n//2)/n} = FFT(x)[k mod n] · e^{+2πi k (n//2)/n}
        ph = torch.exp(2j * torch.pi * k.double() * (n // 2) / n).to(torch.complex64)
        out = torch.index_select(out, d + 1, k % n)
        shape = [1, 1, 1, 1]
        shape[d + 1] = c
        out = out * ph.reshape(shape)
    return out.to(torch.complex64).contiguous()


# ----------------------------------------------------------------------------------------------
# a whole scan
# ----------------------------------------------------------------------------------------------
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


def effective_reference(
    subject: Subject,
    images: torch.Tensor,
    basis: torch.Tensor,
    sequence: Sequence,
    *,
    purity: float = 0.95,
) -> Reference:
    """``reference/`` maps whose single-compartment signal reproduces every voxel's true signal.

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
    sequence : Sequence
    purity : float
        Share of the dominant compartment above which a voxel counts as pure.
    """
    from .matching import match_maps
    from .physics import default_basis

    ref = subject.reference()
    total = subject.fractions.sum(axis=0)
    mixed = (ref.tissue.numpy() > 0) & (subject.fractions.max(axis=0) < purity * total)
    if not mixed.any():
        return ref
    phi = default_basis(sequence)
    coeffs = torch.einsum("tk,tj,jxyz->kxyz", phi.conj(), basis.to(phi.dtype), images.to(phi.dtype))
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
    sequence: Sequence | None = None,
    callback: Callback | None = None,
) -> Scan:
    """Simulate a subject and its SPI FISP-MRF scan in memory (SPEC §3 with ``reference/``).

    Parameters
    ----------
    config : SimulationConfig, optional
    seed : int
        Seeds the subject (pose, warp, parameters, phase, B1), the cable phases and the noise.
    sequence : Sequence, optional
        Default sequence of SPEC §4 when ``None``.
    callback : Callback, optional
        Progress: stages ``"subject"``, ``"signals"``, ``"nufft"``.

    Returns
    -------
    Scan
        With ``calibration``, ``coil_maps``, ``b1`` and ``reference`` set.
    """
    cfg = config or SimulationConfig()
    seq = sequence or Sequence.default()
    s_subject, s_coils, _ = (int(v) for v in np.random.SeedSequence(seed).generate_state(3))
    emit(callback, "subject", 0, 3, f"{cfg.phantom} subject {cfg.matrix}³")
    make = brain_subject if cfg.phantom == "brain" else analytic_subject
    subject = make(cfg.matrix, seed=s_subject, config=cfg.phantom_config)
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
    sequence: Sequence,
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
    sequence : Sequence
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
    s_noise = int(np.random.SeedSequence(seed).generate_state(3)[2])
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


def simulate(
    out_path: str | os.PathLike[str],
    *,
    matrix: int = 64,
    coils: int = 10,
    groups: int = 48,
    noise: float | None = None,
    seed: int = 0,
    phantom: str = "brain",
    config: SimulationConfig | None = None,
    compression: str | None = None,
    callback: Callback | None = None,
) -> Path:
    """Simulate a subject scanned with the full acquisition; write it (``spurig simulate``).

    Parameters
    ----------
    out_path : path-like
        Target HDF5 file (written atomically).
    matrix, coils, groups : int
        Image matrix, virtual coils, groups (1–48; the first groups of the R = 1 acquisition).
    noise : float, optional
        Relative noise level (see the module notes); the config's default when ``None``.
    seed : int
        Subject, coil phases and noise seed.
    phantom : {"brain", "analytic"}
    config : SimulationConfig, optional
        Base configuration; ``matrix``, ``coils``, ``groups``, ``noise`` and ``phantom``
        override it.
    compression : str, optional
        HDF5 filter (e.g. ``"gzip"``).
    callback : Callback, optional

    Returns
    -------
    Path
    """
    base = config or SimulationConfig()
    changes: dict[str, object] = {
        "matrix": int(matrix),
        "coils": int(coils),
        "groups": int(groups),
        "phantom": phantom,
    }
    if noise is not None:
        changes["noise"] = float(noise)
    cfg = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
    if cfg.coils > cfg.coil_config.n_elements:
        raise InputError(
            f"--coils: at most {cfg.coil_config.n_elements} (the array's elements), got {cfg.coils}"
        )
    from .io import write_scan

    scan = simulate_scan(cfg, seed=seed, callback=callback)
    return write_scan(scan, out_path, compression=compression)


def _split(split: str, subjects: int) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in split.split("/"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0:
        raise InputError(f"--split: expected three counts like 36/4/4, got {split!r}")
    if sum(parts) != subjects:
        raise InputError(f"--split: {split} adds up to {sum(parts)}, not --subjects {subjects}")
    return parts  # type: ignore[return-value]


def simulate_cohort(
    out_dir: str | os.PathLike[str],
    *,
    subjects: int = 44,
    split: str = "36/4/4",
    matrix: int = 64,
    coils: int = 10,
    groups: int = 16,
    noise: float | None = None,
    seed: int = 1000,
    phantom: str = "brain",
    config: SimulationConfig | None = None,
    callback: Callback | None = None,
) -> list[Path]:
    """Train/val/test subjects with different seeds (``spurig simulate-cohort``).

    Writes ``DIR/train/subj000.h5 …``, ``DIR/val/subj036.h5 …``, ``DIR/test/subj040.h5 …``; subject
    ``i`` uses seed ``seed + i``.  Existing files are kept (an interrupted cohort resumes).  The
    default of 16 groups is the 2 min scan: training uses at most 2 min of data (paper 2.3.2) and a
    64³ 16-group subject is ≈ 0.28 GB instead of 0.85 GB for 48 groups.

    Parameters
    ----------
    out_dir : path-like
    subjects : int
    split : str
        ``"train/val/test"`` counts adding up to ``subjects``.
    matrix, coils, groups, noise, seed, phantom, config
        As :func:`simulate`.
    callback : Callback, optional
        ``emit(callback, "cohort", done, subjects)`` after each subject.

    Returns
    -------
    list of Path
    """
    n_train, n_val, n_test = _split(split, subjects)
    out = Path(out_dir)
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    paths = []
    for i, part in enumerate(names):
        path = out / part / f"subj{i:03d}.h5"
        if not path.exists():
            simulate(
                path,
                matrix=matrix,
                coils=coils,
                groups=groups,
                noise=noise,
                seed=seed + i,
                phantom=phantom,
                config=config,
            )
        paths.append(path)
        emit(callback, "cohort", i + 1, len(names), f"{part}/{path.name}")
    return paths


# ----------------------------------------------------------------------------------------------
# the sample scan
# ----------------------------------------------------------------------------------------------
#: Parameters of the sample scan (README, ``spurig demo``, the napari sample).
SAMPLE = {"matrix": 48, "coils": 10, "groups": 16, "seed": 7, "phantom": "brain"}
SAMPLE_NAME = "spurig_sample_48.h5"


def _sample_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("SPURIG_SAMPLE_DIR")
    if env:
        dirs.append(Path(env))
    repo = Path(__file__).resolve().parents[2] / "sample_data"
    if repo.is_dir():
        dirs.append(repo)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spurig"
    dirs.append(cache)
    return dirs


def sample_scan_path(*, create: bool = True, callback: Callback | None = None) -> Path:
    """The sample scan (48³, 16 groups, 10 coils, brain subject, seed 7), made on first use.

    Looked up in ``$SPURIG_SAMPLE_DIR``, the checkout's ``sample_data/`` and ``~/.cache/spurig``;
    when absent it is simulated deterministically into the first writable of them
    (``sample_data/make_sample.py`` does the same).

    Parameters
    ----------
    create : bool
        Simulate the file when it is missing (else raise).
    callback : Callback, optional
        Progress of the simulation.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        When the file is missing and ``create`` is false or no directory is writable.
    """
    dirs = _sample_dirs()
    for d in dirs:
        if (d / SAMPLE_NAME).exists():
            return d / SAMPLE_NAME
    if not create:
        raise InputError(f"sample scan {SAMPLE_NAME}: not found in {', '.join(map(str, dirs))}")
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.W_OK):
                continue
        except OSError:
            continue
        return simulate(d / SAMPLE_NAME, callback=callback, **SAMPLE)  # type: ignore[arg-type]
    raise InputError(
        f"sample scan {SAMPLE_NAME}: no writable directory among {', '.join(map(str, dirs))}"
    )
