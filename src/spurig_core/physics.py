"""FISP-MRF signal physics: EPG simulation, dictionary, temporal subspace and basis balancing.

The signal model is SPEC §4 (paper 2.4).  A *group* is a perfect inversion, ``ti_ms`` of free
relaxation, ``tr`` FISP repetitions (flip ``B1 · flip_angle_deg[t]`` about the x axis, RF phase 0,
echo at ``te_ms``, repetition ``tr_ms``, an unbalanced gradient that dephases one full cycle per
repetition) and ``rest_s`` of free relaxation.  Groups repeat identically; the magnetisation before
each inversion is the periodic steady state.  At the end of each group every configuration state
but the longitudinal ``Z0`` is taken as spoiled (the crusher of the inversion pulse), so a group
is an affine map of the starting longitudinal magnetisation ``z ↦ a z + b`` and the steady state
``z* = b / (1 − a)`` follows from two groups simulated side by side (``z = 0`` and ``z = 1``).

Extended phase graphs (EPG; Weigel, JMRI 41:266, 2015, doi:10.1002/jmri.24619) with RF phase 0 keep
``F±`` purely imaginary and ``Z`` real, so the states are stored as real tensors: ``F+(k) = i p_k``,
``F−(k) = −i q_k`` and ``Z_k`` for ``k = 0 … states−1``.  The signal of repetition ``t`` is the
transverse magnetisation ``Mx + i My = F+(0)`` at the echo (``exp(−TE/T2)`` after the pulse), so
after an excitation of ``Mz = +1`` by a small angle ``α`` the signal is ``−i sin α``: simulated
signals are purely imaginary, complex64.  Multiply by the proton density for the voxel signal.

Dictionary (``Dictionary``, ``DictionaryGrid``, ``build_dictionary``), the rank-``k`` temporal
basis ``Φ`` (``subspace_basis``) and its balanced form ``Φ̃ = Φ F_kᴴ``, ``α̃ = F_k α`` (paper 2.4,
Schauman et al. 2025) with ``F_k`` the unitary DFT of length ``k`` (``balance_basis``,
``balance_coefficients``, ``unbalance_coefficients``, ``default_basis``) live here too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Sequence
from .errors import InputError
from .progress import Callback, emit

__all__ = [
    "BASIS_GRID",
    "CACHE_VERSION",
    "KEEP_SIGNALS_MAX",
    "STATES_PER_T2_TR",
    "Dictionary",
    "DictionaryGrid",
    "auto_states",
    "balance_basis",
    "balance_coefficients",
    "basis_energy",
    "build_dictionary",
    "cache_dir",
    "default_basis",
    "dft_matrix",
    "epg_group",
    "exact_states",
    "fix_phase",
    "load_dictionary",
    "simulate_signals",
    "subspace_basis",
    "unbalance_basis",
    "unbalance_coefficients",
    "unbalanced_basis",
]

#: Orders kept per unit ``T2 / TR`` when ``states=None`` (automatic): ``states = ⌈4 T2 / TR⌉``
#: (at least 4, at most :func:`exact_states`).  Measured against the exact simulation (float64,
#: default sequence, T2 10–700 ms, T1 = 1.05 T2 and 5000 ms, B1 0.6, 1, 1.4): the largest error is
#: 4.6e-5 of the signal's peak (5e-6 with 5, 2.3e-4 with 3; float32 rounding alone is ~1e-5).  The
#: error falls faster than exponentially with the orders kept; long-T2 atoms are simulated exactly.
STATES_PER_T2_TR = 4.0


def exact_states(sequence: Sequence) -> int:
    """Configuration orders needed for an exact simulation of one group, ``⌈tr / 2⌉``.

    An order ``j`` present before repetition ``t`` needs ``j`` more gradient shifts to be read at
    ``k = 0``; since transverse states are spoiled after each group, only ``j ≤ min(t, tr−1−t)``
    can ever contribute, and that is at most ``⌈tr / 2⌉ − 1``.
    """
    return max(2, (sequence.n_tr + 1) // 2)


def auto_states(t2_ms: float, sequence: Sequence) -> int:
    """Orders kept for atoms with ``T2 ≤ t2_ms`` when ``states=None`` (:data:`STATES_PER_T2_TR`)."""
    k = math.ceil(STATES_PER_T2_TR * float(t2_ms) / sequence.tr_ms)
    return int(min(exact_states(sequence), max(4, k)))


# ----------------------------------------------------------------------------------------------
# EPG core
# ----------------------------------------------------------------------------------------------
def _as_1d(value: Any, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, str | bytes) or (
        isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool)
    ):
        raise InputError(f"{name}: expected real numbers, got {value!r:.40}")
    try:
        t = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            f"{name}: expected a number or an array of numbers, got {value!r:.40}"
        ) from None
    if t.ndim > 1:
        raise InputError(f"{name}: expected a scalar or shape (n,), got shape {tuple(t.shape)}")
    return t.reshape(-1)


def _check_params(t1: torch.Tensor, t2: torch.Tensor, b1: torch.Tensor) -> None:
    for name, v in (("t1_ms", t1), ("t2_ms", t2), ("b1", b1)):
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"{name}: contains NaN or Inf")
        if bool((v <= 0).any()):
            raise InputError(f"{name}: values must be positive")


def epg_group(
    t1_ms: torch.Tensor,
    t2_ms: torch.Tensor,
    b1: torch.Tensor,
    z0: torch.Tensor,
    sequence: Sequence,
    *,
    states: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate one FISP-MRF group with EPG, starting from longitudinal magnetisation ``z0``.

    Parameters
    ----------
    t1_ms, t2_ms, b1, z0 : Tensor, shape (n,), real
        Relaxation times in ms, relative B1+ and ``Mz`` before the inversion (``M0 = 1``).  All on
        the same device and of the same floating dtype, which the simulation uses.
    sequence : Sequence
        The group (SPEC §4).
    states : int, optional
        Configuration orders kept (``k = 0 … states−1``); higher orders are dropped.  ``None``:
        :func:`auto_states` of the largest T2.  Never more than :func:`exact_states` are used.

    Returns
    -------
    signals : Tensor, shape (n, tr), real
        ``Im F+(0)`` at each echo: the complex signal is ``1j * signals``.
    z_end : Tensor, shape (n,), real
        ``Mz`` at the end of the rest period (before the next inversion).
    """
    dtype, device = t1_ms.dtype, t1_ms.device
    n = t1_ms.shape[0]
    n_tr = sequence.n_tr
    if states is None:
        states = auto_states(float(t2_ms.max()), sequence) if n > 0 else 2
    k = max(2, min(int(states), exact_states(sequence)))
    fa = np.deg2rad(sequence.flip_angle_deg.astype(np.float64))
    alpha = torch.outer(torch.as_tensor(fa, dtype=dtype, device=device), b1)  # (tr, n)
    cos_a, sin_a = torch.cos(alpha), torch.sin(alpha)
    e2 = torch.exp(-sequence.tr_ms / t2_ms)
    e1 = torch.exp(-sequence.tr_ms / t1_ms)
    e2te = torch.exp(-sequence.te_ms / t2_ms)
    e1ti = torch.exp(-sequence.ti_ms / t1_ms)
    e1rest = torch.exp(-1000.0 * sequence.rest_s / t1_ms)

    # Per-repetition coefficients (RF rotation with the TR relaxation folded in), (tr, n) each.
    # In u = p + q, v = p − q the RF at phase 0 is  u' = cos α u − 2 sin α Z,  v' = v,
    # Z' = (sin α / 2) u + cos α Z;  then F relaxes by E2, Z by E1 (and Z0 recovers).
    cu = 0.5 * e2 * cos_a  # p' = cu·u + cz·Z + ½E2·v,  q' = cu·u + cz·Z − ½E2·v
    cz = -e2 * sin_a
    zu = 0.5 * e1 * sin_a  # Z' = zu·u + zz·Z (+ 1 − E1 for k = 0)
    zz = e1 * cos_a
    half_cos = 0.5 * cos_a
    half_e2 = 0.5 * e2
    rec = 1.0 - e1

    # States are stored order-major, (order, n), so that every operation runs over contiguous rows.
    # Sliding windows: p[j] lives at P[op + j], q[j] at Q[oq + j]; a gradient shift moves the
    # windows instead of the data (p shifts up: op −= 1; q shifts down: oq += 1).  Rows outside a
    # window are never written after being passed, so orders entering a window are still zero.
    P = torch.zeros(k + n_tr + 1, n, dtype=dtype, device=device)
    Q = torch.zeros(k + n_tr + 1, n, dtype=dtype, device=device)
    Z = torch.zeros(k, n, dtype=dtype, device=device)
    u = torch.empty(k, n, dtype=dtype, device=device)
    v = torch.empty(k, n, dtype=dtype, device=device)
    a = torch.empty(k, n, dtype=dtype, device=device)
    out = torch.empty(n_tr, n, dtype=dtype, device=device)
    op, oq = n_tr, 0
    # inversion (only Z0 survived the previous group's spoiling), then TI of free relaxation
    Z[0] = -z0 * e1ti + (1.0 - e1ti)
    for t in range(n_tr):
        # Orders above t are still empty; orders above n_tr − 1 − t cannot return to k = 0 before
        # the group ends (spoiled afterwards), so dropping them is exact.
        kt = min(k, t + 1, n_tr - t)
        p, q, zt = P[op : op + kt], Q[oq : oq + kt], Z[:kt]
        ut, vt, at = u[:kt], v[:kt], a[:kt]
        torch.add(p, q, out=ut)
        torch.sub(p, q, out=vt)
        # echo: F+(0) right after the pulse, decayed over TE.  F−(0) = conj F+(0), i.e. q0 = p0.
        torch.mul(ut[0], half_cos[t], out=out[t])
        out[t].addcmul_(zt[0], sin_a[t], value=-1.0).mul_(e2te)
        torch.mul(ut, cu[t], out=at)
        at.addcmul_(zt, cz[t])
        zt.mul_(zz[t]).addcmul_(ut, zu[t])
        zt[0] += rec
        # p'[j] = a[j] + v[j] becomes p[j+1] and q'[j] = a[j] − v[j] becomes q[j−1]: written in
        # place, then the windows move.
        torch.addcmul(at, vt, half_e2, out=p)
        torch.addcmul(at, vt, half_e2, value=-1.0, out=q)
        op -= 1
        oq += 1
        P[op] = Q[oq]  # new p[0] = q'[1] (F+(0) = conj F−(0) after the shift)
    z_end = Z[0] * e1rest + (1.0 - e1rest)
    return out.T, z_end


def simulate_signals(
    t1_ms: Any,
    t2_ms: Any,
    b1: Any = 1.0,
    sequence: Sequence | None = None,
    *,
    states: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Steady-state FISP-MRF signals of SPEC §4 for ``n`` parameter triples (EPG).

    Parameters
    ----------
    t1_ms, t2_ms : array-like or Tensor, shape (n,) or scalar
        Relaxation times in ms (positive).
    b1 : float or array-like, shape (n,)
        Relative B1+ scale of the flip angles (1 = nominal).
    sequence : Sequence, optional
        The acquisition; ``None`` means :meth:`Sequence.default`.
    states : int, optional
        EPG orders kept.  ``None`` (default): chosen per chunk from its largest T2 so that the
        truncation error stays below 5e-5 of the signal peak (:func:`auto_states`); atoms are
        simulated in order of increasing T2 for this.  ``states ≥ exact_states(sequence)`` is exact.
    device : str or torch.device
        Where to simulate (``"cpu"`` or ``"cuda"``).
    dtype : torch.dtype
        Real working precision, ``torch.float32`` or ``torch.float64``.
    chunk : int, optional
        Parameter triples simulated at once (bounds memory).  ``None``: ``min(2**18 / states,
        4096)`` on CPU (so that the working set stays in cache) and ``2**15`` on CUDA.  On the CPU,
        chunks run in ``torch.get_num_threads()`` parallel threads, each with one intra-op thread
        (the thread setting is restored afterwards).
    callback : Callback, optional
        Receives ``emit(callback, "simulate", done, n)`` after each chunk.

    Returns
    -------
    Tensor, shape (n, tr), complex64 (complex128 for ``dtype=torch.float64``)
        Transverse magnetisation ``Mx + i My`` at each echo for ``PD = 1``, in the periodic steady
        state of repeated groups.  Purely imaginary (RF phase 0, see the module notes).

    Raises
    ------
    InputError
        On mismatched shapes or non-positive / non-finite parameters.
    """
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    if sequence is not None and not isinstance(sequence, Sequence):
        raise InputError(f"sequence: expected a Sequence or None, got {type(sequence).__name__}")
    seq = Sequence.default() if sequence is None else sequence
    dev = torch.device(device)
    t1 = _as_1d(t1_ms, "t1_ms", dtype, dev)
    t2 = _as_1d(t2_ms, "t2_ms", dtype, dev)
    b = _as_1d(b1, "b1", dtype, dev)
    n = max(t1.shape[0], t2.shape[0], b.shape[0])
    if any(v.shape[0] not in (1, n) for v in (t1, t2, b)):
        raise InputError(
            f"t1_ms, t2_ms, b1: lengths {t1.shape[0]}, {t2.shape[0]}, {b.shape[0]} do not match"
        )
    t1, t2, b = (v.expand(n).contiguous() for v in (t1, t2, b))
    _check_params(t1, t2, b)
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    out = torch.zeros(n, seq.n_tr, dtype=cdtype, device=dev)
    _steady_state(
        t1, t2, b, seq, out.imag, states=states, chunk=chunk, callback=callback, stage="simulate"
    )
    return out


def _steady_state(
    t1: torch.Tensor,
    t2: torch.Tensor,
    b: torch.Tensor,
    seq: Sequence,
    out: torch.Tensor,
    *,
    states: int | None,
    chunk: int | None,
    callback: Callback | None,
    stage: str,
) -> None:
    """Write the steady-state ``Im F+(0)`` of validated ``(n,)`` parameters into ``out (n, tr)``.

    ``out`` may be a real view (``complex.imag``) and live on another device or dtype.
    """
    dtype, dev = t1.dtype, t1.device
    n = t1.shape[0]
    # orders per atom; atoms are simulated in chunks of equal order count
    if states is None:
        k_atom = torch.ceil(STATES_PER_T2_TR * t2.to(torch.float64) / seq.tr_ms)
        k_atom = k_atom.clamp(4, exact_states(seq)).to(torch.int64)
    else:
        k_atom = torch.full(
            (n,), min(int(states), exact_states(seq)), dtype=torch.int64, device=dev
        )
    order = torch.argsort(k_atom, stable=True)
    k_sorted = k_atom[order]
    k_np = k_sorted.cpu().numpy()
    chunks: list[tuple[int, int, int]] = []  # (start, stop, orders) over the sorted atoms
    i0 = 0
    while i0 < n:
        k_first = int(k_np[i0])
        if chunk is not None:
            step = max(1, int(chunk))
        elif dev.type == "cuda":
            step = 1 << 15
        else:  # keep the working set (six (orders, 2·chunk) arrays) within a few MB of cache,
            # the per-repetition coefficients (eight (tr, 2·chunk) arrays) near 130 MB, and at
            # least one chunk per thread
            step = max(64, min((1 << 18) // k_first, 4096, -(-n // torch.get_num_threads())))
        # a chunk runs at its largest order: do not mix in atoms that need > 25 % more orders
        stop = min(n, i0 + step, int(np.searchsorted(k_np, 1.25 * k_first, side="right")))
        stop = max(stop, i0 + 1)
        chunks.append((i0, stop, int(k_np[stop - 1])))
        i0 = stop

    def run(piece: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i0, stop, k = piece
        idx = order[i0:stop]
        m = idx.shape[0]
        # two groups side by side, z0 = 0 and z0 = 1: the group is affine in z0
        z0 = torch.zeros(2 * m, dtype=dtype, device=dev)
        z0[m:] = 1.0
        sig, z_end = epg_group(
            t1[idx].repeat(2), t2[idx].repeat(2), b[idx].repeat(2), z0, seq, states=k
        )
        b_aff, a_aff = z_end[:m], z_end[m:] - z_end[:m]
        z_ss = b_aff / (1.0 - a_aff)
        return idx, sig[:m] + z_ss[:, None] * (sig[m:] - sig[:m])

    def store(idx: torch.Tensor, s: torch.Tensor, done: int) -> None:
        out[idx.to(out.device)] = s.to(out.device, out.dtype)
        emit(callback, stage, done, n, f"{done}/{n} signals")

    workers = min(torch.get_num_threads(), len(chunks)) if dev.type == "cpu" else 1
    if workers <= 1:
        for piece in chunks:
            store(*run(piece), piece[1])
        return
    # CPU: many small element-wise operations per repetition scale badly with intra-op threads
    # (and collapse when other processes share the cores); run chunks in parallel threads instead.
    with _intraop_threads(1), ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run, piece) for piece in chunks]
        try:
            for piece, fut in zip(chunks, futures, strict=True):
                store(*fut.result(), piece[1])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


@contextlib.contextmanager
def _intraop_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# temporal subspace and basis balancing (paper 2.1, 2.4)
# ----------------------------------------------------------------------------------------------
def fix_phase(basis: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry real and positive (a reproducible SVD phase).

    Parameters
    ----------
    basis : Tensor, shape (tr, basis), complex

    Returns
    -------
    Tensor, shape (tr, basis)
        The same columns, each multiplied by a unit phase.
    """
    idx = basis.abs().argmax(dim=0)
    pivot = basis.gather(0, idx[None, :])
    return basis * (pivot.conj() / pivot.abs().clamp_min(torch.finfo(basis.real.dtype).tiny))


def _gram(signals: torch.Tensor) -> torch.Tensor:
    """``D Dᴴ`` (tr × tr, complex128) of the dictionary ``D = signalsᵀ`` (time × atoms)."""
    s = signals.to(torch.complex128)
    return s.T @ s.conj()


def _top_k(gram: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Top-``k`` eigenvectors of a Hermitian ``(tr, tr)`` Gram matrix and their energy fraction."""
    if gram.is_complex() and float(gram.imag.abs().max()) == 0.0:
        gram = gram.real  # real dictionaries (RF phase 0): the real solver is 4× cheaper
    # one thread: LAPACK's threaded solvers stall badly when other processes share the cores
    with _intraop_threads(1):
        evals, evecs = torch.linalg.eigh(gram)  # ascending
    basis = evecs[:, -k:].flip(1).to(torch.complex128)
    energy = float(evals[-k:].sum() / evals.sum().clamp_min(1e-300))
    return fix_phase(basis).to(torch.complex64), energy


def subspace_basis(signals: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, float]:
    """The rank-``k`` temporal basis ``Φ`` of a dictionary (paper 2.1).

    Parameters
    ----------
    signals : Tensor, shape (n, tr), complex
        Dictionary atoms (rows).  ``D = signalsᵀ`` is the time × atoms dictionary.
    k : int
        Rank (``basis``; SPEC: 5).

    Returns
    -------
    basis : Tensor, shape (tr, basis), complex64
        Top-``k`` left singular vectors of ``D`` (orthonormal columns, by decreasing singular
        value), each with its largest-magnitude entry real positive (:func:`fix_phase`).
    energy : float
        Fraction of the dictionary's energy ``‖D‖²_F`` that the ``k`` vectors capture.
    """
    if signals.ndim != 2 or not 1 <= k <= signals.shape[1]:
        raise InputError(f"signals: expected (n, tr) with tr ≥ k = {k}, got {tuple(signals.shape)}")
    return _top_k(_gram(signals), k)


def basis_energy(basis: torch.Tensor, signals: torch.Tensor) -> float:
    """Fraction of ``‖signals‖²`` inside the span of the orthonormal ``basis`` ``(tr, basis)``."""
    s = signals.to(torch.complex128)
    c = s @ basis.to(torch.complex128).conj()
    return float((c.abs() ** 2).sum() / (s.abs() ** 2).sum())


def dft_matrix(k: int, *, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Unitary DFT ``F_k[m, n] = exp(−2πi m n / k) / √k``, shape ``(k, k)``."""
    m = torch.arange(k, dtype=torch.float64)
    f = torch.exp(-2j * math.pi * torch.outer(m, m) / k) / math.sqrt(k)
    return f.to(dtype)


def balance_basis(basis: torch.Tensor) -> torch.Tensor:
    """Balanced basis ``Φ̃ = Φ F_kᴴ`` (paper 2.4); ``(tr, basis)`` to ``(tr, basis)``."""
    f = dft_matrix(basis.shape[-1], dtype=basis.dtype).to(basis.device)
    return basis @ f.conj().T


def unbalance_basis(balanced: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`balance_basis`: ``Φ = Φ̃ F_k``."""
    f = dft_matrix(balanced.shape[-1], dtype=balanced.dtype).to(balanced.device)
    return balanced @ f


def balance_coefficients(coefficients: torch.Tensor) -> torch.Tensor:
    """``α̃ = F_k α`` along the first axis: ``(basis, ...)`` to ``(basis, ...)``.

    With :func:`balance_basis`, ``Φ̃ α̃ = Φ α``.
    """
    f = dft_matrix(coefficients.shape[0], dtype=coefficients.dtype).to(coefficients.device)
    return torch.tensordot(f, coefficients, dims=1)


def unbalance_coefficients(coefficients: torch.Tensor) -> torch.Tensor:
    """``α = F_kᴴ α̃`` along the first axis (inverse of :func:`balance_coefficients`)."""
    f = dft_matrix(coefficients.shape[0], dtype=coefficients.dtype).to(coefficients.device)
    return torch.tensordot(f.conj().T, coefficients, dims=1)


# ----------------------------------------------------------------------------------------------
# dictionary
# ----------------------------------------------------------------------------------------------
def _geometric(lo: float, hi: float, step: float) -> np.ndarray:
    n = math.floor(math.log(hi / lo) / math.log1p(step) + 1e-9) + 1
    return lo * (1.0 + step) ** np.arange(n, dtype=np.float64)


@dataclass(frozen=True)
class DictionaryGrid:
    """The (T1, T2, B1) grid of a dictionary (paper 2.4).

    Attributes
    ----------
    t1_min_ms, t1_max_ms : float
        Range of the geometric T1 grid in ms.
    t2_min_ms, t2_max_ms : float
        Range of the geometric T2 grid in ms; only pairs with ``T2 < T1`` are kept.
    step : float
        Relative step of both geometric grids (0.05: each value 5 % above the previous).
    b1_min, b1_max, b1_step : float
        Linear B1 grid (relative flip-angle scale).
    """

    t1_min_ms: float = 100.0
    t1_max_ms: float = 5000.0
    t2_min_ms: float = 10.0
    t2_max_ms: float = 3000.0
    step: float = 0.05
    b1_min: float = 0.6
    b1_max: float = 1.4
    b1_step: float = 0.05

    def __post_init__(self) -> None:
        if not (0 < self.t1_min_ms <= self.t1_max_ms and 0 < self.t2_min_ms <= self.t2_max_ms):
            raise InputError("dictionary grid: T1/T2 ranges must be positive with min ≤ max")
        if self.step <= 0 or self.b1_step <= 0:
            raise InputError("dictionary grid: step and b1_step must be positive")
        if not 0 < self.b1_min <= self.b1_max:
            raise InputError("dictionary grid: B1 range must be positive with min ≤ max")

    def t1_values(self) -> np.ndarray:
        """T1 grid in ms, shape ``(n_t1,)``, float64."""
        return _geometric(self.t1_min_ms, self.t1_max_ms, self.step)

    def t2_values(self) -> np.ndarray:
        """T2 grid in ms, shape ``(n_t2,)``, float64."""
        return _geometric(self.t2_min_ms, self.t2_max_ms, self.step)

    def b1_values(self) -> np.ndarray:
        """B1 grid, shape ``(n_b1,)``, float64 (rounded to 1e-9)."""
        n = round((self.b1_max - self.b1_min) / self.b1_step) + 1
        return np.round(self.b1_min + self.b1_step * np.arange(n), 9)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``(T1, T2)`` pairs with ``T2 < T1``, each shape ``(n_pairs,)``, T1-major order."""
        t1, t2 = np.meshgrid(self.t1_values(), self.t2_values(), indexing="ij")
        keep = t2 < t1
        return t1[keep], t2[keep]

    def atoms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """T1, T2, B1 of every atom, each shape ``(atoms,)``: B1-major, the same pairs per B1."""
        t1, t2 = self.pairs()
        b1 = self.b1_values()
        return np.tile(t1, b1.size), np.tile(t2, b1.size), np.repeat(b1, t1.size)

    def key(self) -> str:
        """A short hash of the grid (for caches)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


#: Grid from which :func:`default_basis` takes the subspace: the default ranges at a 10 % T1/T2 step
#: and B1 step 0.1 (17,010 atoms instead of 120,054, so 7× faster to build).  On the full default
#: dictionary it captures the same energy as that dictionary's own top-5 subspace to within 1e-4
#: (``Dictionary.energy`` vs ``optimal_energy``; ``benchmarks/RESULTS-physics.md``).
BASIS_GRID = DictionaryGrid(step=0.10, b1_step=0.10)


@dataclass(frozen=True, eq=False)
class Dictionary:
    """A simulated dictionary and its compression in a temporal basis.

    Attributes
    ----------
    t1_ms, t2_ms, b1 : Tensor, shape (atoms,), float32
        Parameters of each atom (B1-major: ``atom = i_b1 · n_pairs + i_pair``).
    b1_values : Tensor, shape (n_b1,), float32
        The B1 grid.
    basis : Tensor, shape (tr, basis), complex64
        The orthonormal basis the compression refers to (by default the unbalanced ``Φ``).
    compressed : Tensor, shape (atoms, basis), complex64
        ``basisᴴ s`` of each atom ``s`` (``PD = 1``).
    signals : Tensor, shape (atoms, tr), complex64, optional
        The atoms themselves; ``None`` for large dictionaries (only the compression is kept).
    energy : float
        Fraction of the dictionary's energy inside ``basis``.
    optimal_energy : float
        The fraction its own top-``k`` subspace would capture (``energy`` when ``basis`` is it).
    sequence_key : str
        :meth:`Sequence.key` of the sequence simulated.
    grid : DictionaryGrid
    """

    t1_ms: torch.Tensor
    t2_ms: torch.Tensor
    b1: torch.Tensor
    b1_values: torch.Tensor
    basis: torch.Tensor
    compressed: torch.Tensor
    signals: torch.Tensor | None
    energy: float
    optimal_energy: float
    sequence_key: str
    grid: DictionaryGrid

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.t1_ms.shape[0])

    @property
    def n_pairs(self) -> int:
        """Number of (T1, T2) pairs per B1 value."""
        return self.n_atoms // int(self.b1_values.shape[0])

    def b1_slice(self, i_b1: int) -> slice:
        """Atom indices of the ``i_b1``-th B1 value."""
        return slice(i_b1 * self.n_pairs, (i_b1 + 1) * self.n_pairs)

    def _state(self) -> dict[str, Any]:
        return {
            "kind": "spurig-dictionary/1",
            "t1_ms": self.t1_ms,
            "t2_ms": self.t2_ms,
            "b1": self.b1,
            "b1_values": self.b1_values,
            "basis": self.basis,
            "compressed": self.compressed,
            "signals": self.signals,
            "energy": self.energy,
            "optimal_energy": self.optimal_energy,
            "sequence_key": self.sequence_key,
            "grid": asdict(self.grid),
        }

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Dictionary:
        return cls(
            t1_ms=state["t1_ms"],
            t2_ms=state["t2_ms"],
            b1=state["b1"],
            b1_values=state["b1_values"],
            basis=state["basis"],
            compressed=state["compressed"],
            signals=state["signals"],
            energy=float(state["energy"]),
            optimal_energy=float(state["optimal_energy"]),
            sequence_key=str(state["sequence_key"]),
            grid=DictionaryGrid(**state["grid"]),
        )


#: Dictionaries with more than this many signal samples (atoms × tr) keep only their compression.
KEEP_SIGNALS_MAX = 1 << 24


def build_dictionary(
    sequence: Sequence | None = None,
    grid: DictionaryGrid | None = None,
    *,
    basis: torch.Tensor | None = None,
    k: int = 5,
    keep_signals: bool | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
) -> Dictionary:
    """Simulate a dictionary over ``grid`` and compress it (no cache; see :func:`load_dictionary`).

    Parameters
    ----------
    sequence : Sequence, optional
        ``None``: :meth:`Sequence.default`.
    grid : DictionaryGrid, optional
        ``None``: ``DictionaryGrid()`` (the default 5 % grid, about 120,000 atoms).
    basis : Tensor, shape (tr, basis), complex64, optional
        Orthonormal basis to compress with; ``None``: the dictionary's own top-``k`` subspace
        (:func:`subspace_basis`, unbalanced).
    k : int
        Rank when ``basis`` is ``None``.
    keep_signals : bool, optional
        Keep the atoms; ``None``: only when ``atoms · tr ≤ KEEP_SIGNALS_MAX``.
    device : str or torch.device
        Where to simulate.
    callback : Callback, optional
        ``emit(callback, "dictionary", done, atoms)`` after each chunk of the simulation.

    Returns
    -------
    Dictionary
    """
    seq = Sequence.default() if sequence is None else sequence
    grd = DictionaryGrid() if grid is None else grid
    t1, t2, b1 = grd.atoms()
    n = t1.size
    if n == 0:
        raise InputError("dictionary grid: no (T1, T2) pair with T2 < T1")
    if basis is not None and (basis.ndim != 2 or basis.shape[0] != seq.n_tr):
        raise InputError(
            f"basis: expected shape ({seq.n_tr}, k) for this sequence, got {tuple(basis.shape)}"
        )
    keep = n * seq.n_tr <= KEEP_SIGNALS_MAX if keep_signals is None else bool(keep_signals)
    # the signals are purely imaginary: keep their imaginary parts (float32) while building
    imag = torch.empty(n, seq.n_tr, dtype=torch.float32)
    dev = torch.device(device)
    t1_t, t2_t, b1_t = (torch.as_tensor(v, dtype=torch.float32, device=dev) for v in (t1, t2, b1))
    _steady_state(
        t1_t, t2_t, b1_t, seq, imag, states=None, chunk=None, callback=callback, stage="dictionary"
    )
    gram = torch.zeros(seq.n_tr, seq.n_tr, dtype=torch.float64)
    for i0 in range(0, n, 1 << 13):
        r = imag[i0 : i0 + (1 << 13)].to(torch.float64)
        gram += r.T @ r
    if basis is None:
        basis, energy = _top_k(gram, k)
        optimal = energy
    else:
        with _intraop_threads(1):
            evals = torch.linalg.eigvalsh(gram)
        optimal = float(evals[-basis.shape[1] :].sum() / evals.sum().clamp_min(1e-300))
        basis = basis.detach().to("cpu", torch.complex64)
        b64 = basis.to(torch.complex128)
        energy = float((b64.conj().T @ gram.to(torch.complex128) @ b64).diagonal().real.sum())
        energy /= max(float(gram.diagonal().sum()), 1e-300)
    # compressed = basisᴴ s = (i r) @ conj(basis) = r @ Im(basis) + i r @ Re(basis), in real
    # arithmetic (a complex copy of r would double the peak memory)
    compressed = torch.complex(imag @ basis.imag, imag @ basis.real)
    signals = torch.complex(torch.zeros_like(imag), imag) if keep else None
    return Dictionary(
        t1_ms=torch.as_tensor(t1, dtype=torch.float32),
        t2_ms=torch.as_tensor(t2, dtype=torch.float32),
        b1=torch.as_tensor(b1, dtype=torch.float32),
        b1_values=torch.as_tensor(grd.b1_values(), dtype=torch.float32),
        basis=basis,
        compressed=compressed.to(torch.complex64),
        signals=signals,
        energy=energy,
        optimal_energy=optimal,
        sequence_key=seq.key(),
        grid=grd,
    )


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------
#: Bumped whenever a change alters what is cached (the EPG, the grid or the basis conventions).
CACHE_VERSION = 2


def cache_dir() -> Path:
    """The on-disk cache: ``$SPURIG_CACHE``, else ``~/.cache/spurig``."""
    env = os.environ.get("SPURIG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spurig"


def _tensor_key(t: torch.Tensor) -> str:
    arr = t.detach().cpu().to(torch.complex64).numpy()
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:12]


def _cached(name: str, make: Any) -> dict[str, Any]:
    """Load ``name`` from the cache, or make it, store it atomically and return it."""
    from .io import atomic_path

    path = cache_dir() / name
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "kind" in state:
                return state
        except Exception:  # a broken cache file is rebuilt, never trusted
            pass
    state = make()
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError:  # a read-only cache must not stop the computation
        pass
    return state


def load_dictionary(
    sequence: Sequence | None = None,
    grid: DictionaryGrid | None = None,
    *,
    basis: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
) -> Dictionary:
    """The dictionary of ``sequence`` over ``grid``, compressed, from the cache or built once.

    Parameters
    ----------
    sequence : Sequence, optional
        ``None``: :meth:`Sequence.default`.
    grid : DictionaryGrid, optional
        ``None``: ``DictionaryGrid()``.
    basis : Tensor, shape (tr, basis), complex64, optional
        Basis of the compression; ``None``: the unbalanced basis of :func:`default_basis`
        (``Φ``), so that every dictionary of a sequence shares one subspace.
    device : str or torch.device
        Where to simulate when the cache has no entry.
    callback : Callback, optional
        Progress of a build (stage ``"dictionary"``).

    Returns
    -------
    Dictionary
        On the CPU; cached on disk (``cache_dir()``) keyed by ``sequence.key()``, the grid and
        the basis.
    """
    seq = Sequence.default() if sequence is None else sequence
    grd = DictionaryGrid() if grid is None else grid
    if basis is None:
        basis = unbalanced_basis(seq)
    name = f"dictionary-v{CACHE_VERSION}-{seq.key()}-{grd.key()}-{_tensor_key(basis)}.pt"
    state = _cached(
        name,
        lambda: build_dictionary(
            seq, grd, basis=basis, device=device, callback=callback, keep_signals=False
        )._state(),
    )
    return Dictionary._from_state(state)


@functools.lru_cache(maxsize=8)
def _basis_state(seq_key: str, grid: DictionaryGrid, k: int, seq_json: str) -> dict[str, Any]:
    seq = Sequence.from_dict(json.loads(seq_json))

    def make() -> dict[str, Any]:
        d = build_dictionary(seq, grid, k=k, keep_signals=False)
        return {"kind": "spurig-basis/1", "basis": d.basis, "energy": d.energy}

    return _cached(f"basis-v{CACHE_VERSION}-{seq_key}-{grid.key()}-k{k}.pt", make)


def unbalanced_basis(
    sequence: Sequence | None = None, *, k: int = 5, grid: DictionaryGrid = BASIS_GRID
) -> torch.Tensor:
    """The (unbalanced) subspace ``Φ`` of a sequence: top-``k`` singular vectors of its dictionary.

    Returns
    -------
    Tensor, shape (tr, basis), complex64
        Cached in memory and on disk (``cache_dir()``); see :data:`BASIS_GRID`.
    """
    seq = Sequence.default() if sequence is None else sequence
    state = _basis_state(seq.key(), grid, k, json.dumps(seq.to_dict()))
    return state["basis"].clone()


def default_basis(
    sequence: Sequence | None = None, *, k: int = 5, grid: DictionaryGrid = BASIS_GRID
) -> torch.Tensor:
    """The balanced basis ``Φ̃ = Φ F_kᴴ`` of a sequence (SPEC §4), used by every method.

    Parameters
    ----------
    sequence : Sequence, optional
        ``None``: :meth:`Sequence.default`.
    k : int
        Rank (5).
    grid : DictionaryGrid
        Dictionary the subspace is taken from (:data:`BASIS_GRID`).

    Returns
    -------
    Tensor, shape (tr, basis), complex64
        Orthonormal columns; deterministic (SVD phase fixed by :func:`fix_phase` before balancing).
    """
    return balance_basis(unbalanced_basis(sequence, k=k, grid=grid))
