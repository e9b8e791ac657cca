"""The subject's true per-voxel time series and its high-rank SVD (paper 2.4).

``m_t(r) = exp(iφ(r)) Σ_j f_j(r) PD_j(r) signal_t(T1_j(r), T2_j(r), B1(r))`` summed over the
compartments ``j`` of the voxel (partial volume), factorised as ``X ≈ C Uᴴ`` with the rank ``r``
chosen so that the discarded energy ``Σ_{i>r} σ_i² / Σ σ_i²`` is below ``svd_tol`` (1e-5).  This is
not the ``k = 5`` subspace of the reconstruction, so the data carry the model mismatch a real scan
has.

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
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from ..data import FispSequence
from ..progress import Callback
from .phantom import COMPARTMENTS, Subject
from .scan_config import SimulationConfig

__all__ = ["signal_subspace"]


def _signals(
    t1: np.ndarray,
    t2: np.ndarray,
    b1: np.ndarray,
    sequence: FispSequence,
    callback: Callback | None = None,
) -> np.ndarray:
    from ..physics import simulate_signals

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


def _table_atoms(
    subject: Subject,
    pairs: list[tuple[int, np.ndarray]],
    frac: np.ndarray,
    row_of: np.ndarray,
    shape: tuple[int, int, int],
    sequence: FispSequence,
    callback: Callback | None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    """Return the atoms of :func:`_atoms` as trilinear tables over ``(log T1, log T2, B1)``.

    One ``shape`` table per compartment over its parameter range; each voxel weighs the eight
    corners around its parameters.  Returns the rows, columns and values of ``W`` (COO pieces),
    the table ``T`` ``(atoms, tr)`` and the number of atoms.
    """
    b1 = subject.b1.reshape(-1)
    rows, cols, vals = [], [], []
    all_t1, all_t2, all_b1 = [], [], []
    offset = 0
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
    table = _signals(
        np.concatenate(all_t1), np.concatenate(all_t2), np.concatenate(all_b1), sequence, callback
    )
    return rows, cols, vals, table, offset


def _atoms(
    subject: Subject, sequence: FispSequence, cfg: SimulationConfig, callback: Callback | None
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
    if n_pairs > cfg.exact_max:
        rows, cols, vals, table, offset = _table_atoms(
            subject, pairs, frac, row_of, cfg.table_points, sequence, callback
        )
    else:
        t1 = np.concatenate([subject.t1_ms[j].reshape(-1)[v] for j, v in pairs])
        t2 = np.concatenate([subject.t2_ms[j].reshape(-1)[v] for j, v in pairs])
        bb = np.concatenate([b1[v] for _, v in pairs])
        table = _signals(t1, t2, bb, sequence, callback)
        rows, cols, vals, offset = [], [], [], 0
        for j, v in pairs:
            rows.append(row_of[v])
            cols.append(offset + np.arange(v.size))
            vals.append(frac[j, v] * subject.pd[j].reshape(-1)[v])
            offset += v.size
    w = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(voxels.size, offset),
    )
    return voxels, w, table


def signal_subspace(
    subject: Subject,
    sequence: FispSequence | None = None,
    config: SimulationConfig | None = None,
    *,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """High-rank SVD of the subject's true per-voxel time series ``m_t(r)``.

    Parameters
    ----------
    subject : Subject
    sequence : FispSequence, optional
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
    seq = sequence or FispSequence.default()
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
