"""FISP-MRF signal physics: the EPG simulation of SPEC §4 (paper 2.4).

A *group* is a perfect inversion, ``ti_ms`` of free relaxation, ``tr`` FISP repetitions (flip
``B1 · flip_angle_deg[t]`` about the x axis, RF phase 0, echo at ``te_ms``, repetition ``tr_ms``,
an unbalanced gradient that dephases one full cycle per repetition) and ``rest_s`` of free
relaxation.  Groups repeat identically; the magnetisation before each inversion is the periodic
steady state.  At the end of each group every configuration state but the longitudinal ``Z0`` is
taken as spoiled (the crusher of the inversion pulse), so a group is an affine map of the starting
longitudinal magnetisation ``z ↦ a z + b`` and the steady state ``z* = b / (1 − a)`` follows from
two groups simulated side by side (``z = 0`` and ``z = 1``).

Extended phase graphs (EPG; Weigel, JMRI 41:266, 2015, doi:10.1002/jmri.24619) with RF phase 0 keep
``F±`` purely imaginary and ``Z`` real, so the states are stored as real tensors: ``F+(k) = i p_k``,
``F−(k) = −i q_k`` and ``Z_k`` for ``k = 0 … states−1``.  The signal of repetition ``t`` is the
transverse magnetisation ``Mx + i My = F+(0)`` at the echo (``exp(−TE/T2)`` after the pulse), so
after an excitation of ``Mz = +1`` by a small angle ``α`` the signal is ``−i sin α``: simulated
signals are purely imaginary, complex64.  Multiply by the proton density for the voxel signal.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch

from ..data import FispSequence
from ..errors import InputError
from ..progress import Callback, emit

__all__ = [
    "STATES_PER_T2_TR",
    "auto_states",
    "epg_group",
    "exact_states",
    "intraop_threads",
    "simulate_signals",
]

#: Orders kept per unit ``T2 / TR`` when ``states=None`` (automatic): ``states = ⌈4 T2 / TR⌉``
#: (at least 4, at most :func:`exact_states`).  Measured against the exact simulation (float64,
#: default sequence, T2 10–700 ms, T1 = 1.05 T2 and 5000 ms, B1 0.6, 1, 1.4): the largest error is
#: 4.6e-5 of the signal's peak (5e-6 with 5, 2.3e-4 with 3; float32 rounding alone is ~1e-5).  The
#: error falls faster than exponentially with the orders kept; long-T2 atoms are simulated exactly.
STATES_PER_T2_TR = 4.0


def exact_states(sequence: FispSequence) -> int:
    """Return configuration orders needed for an exact simulation of one group, ``⌈tr / 2⌉``.

    An order ``j`` present before repetition ``t`` needs ``j`` more gradient shifts to be read at
    ``k = 0``; since transverse states are spoiled after each group, only ``j ≤ min(t, tr−1−t)``
    can ever contribute, and that is at most ``⌈tr / 2⌉ − 1``.
    """
    return max(2, (sequence.n_tr + 1) // 2)


def auto_states(t2_ms: float, sequence: FispSequence) -> int:
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


class _Coefficients(NamedTuple):
    """What :func:`epg_group` needs per repetition ``(tr, n)`` or per atom ``(n,)``."""

    sin_a: torch.Tensor  # (tr, n)
    half_cos: torch.Tensor  # (tr, n)
    cu: torch.Tensor  # (tr, n)
    cz: torch.Tensor  # (tr, n)
    zu: torch.Tensor  # (tr, n)
    zz: torch.Tensor  # (tr, n)
    half_e2: torch.Tensor  # (n,)
    rec: torch.Tensor  # (n,)
    e2te: torch.Tensor  # (n,)
    e1ti: torch.Tensor  # (n,)
    e1rest: torch.Tensor  # (n,)


def _group_coefficients(
    t1_ms: torch.Tensor, t2_ms: torch.Tensor, b1: torch.Tensor, sequence: FispSequence
) -> _Coefficients:
    """Per-repetition coefficients of one group: the RF rotation with the TR relaxation folded in.

    In ``u = p + q``, ``v = p − q`` the RF at phase 0 is ``u' = cos α u − 2 sin α Z``, ``v' = v``,
    ``Z' = (sin α / 2) u + cos α Z``; then F relaxes by E2, Z by E1 (and Z0 recovers), so
    ``p' = cu·u + cz·Z + ½E2·v``, ``q' = cu·u + cz·Z − ½E2·v`` and ``Z' = zu·u + zz·Z``
    (``+ 1 − E1`` for ``k = 0``).  ``t1_ms, t2_ms, b1``: shape ``(n,)``, the working dtype.
    """
    dtype, device = t1_ms.dtype, t1_ms.device
    fa = np.deg2rad(sequence.flip_angle_deg.astype(np.float64))
    alpha = torch.outer(torch.as_tensor(fa, dtype=dtype, device=device), b1)  # (tr, n)
    cos_a, sin_a = torch.cos(alpha), torch.sin(alpha)
    e2 = torch.exp(-sequence.tr_ms / t2_ms)
    e1 = torch.exp(-sequence.tr_ms / t1_ms)
    return _Coefficients(
        sin_a=sin_a,
        half_cos=0.5 * cos_a,
        cu=0.5 * e2 * cos_a,
        cz=-e2 * sin_a,
        zu=0.5 * e1 * sin_a,
        zz=e1 * cos_a,
        half_e2=0.5 * e2,
        rec=1.0 - e1,
        e2te=torch.exp(-sequence.te_ms / t2_ms),
        e1ti=torch.exp(-sequence.ti_ms / t1_ms),
        e1rest=torch.exp(-1000.0 * sequence.rest_s / t1_ms),
    )


def epg_group(
    t1_ms: torch.Tensor,
    t2_ms: torch.Tensor,
    b1: torch.Tensor,
    z0: torch.Tensor,
    sequence: FispSequence,
    *,
    states: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate one FISP-MRF group with EPG, starting from longitudinal magnetisation ``z0``.

    Parameters
    ----------
    t1_ms, t2_ms, b1, z0 : Tensor, shape (n,), real
        Relaxation times in ms, relative B1+ and ``Mz`` before the inversion (``M0 = 1``).  All on
        the same device and of the same floating dtype, which the simulation uses.
    sequence : FispSequence
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
    c = _group_coefficients(t1_ms, t2_ms, b1, sequence)
    sin_a, half_cos, cu, cz, zu, zz, half_e2, rec = c[:8]  # (tr, n) and (n,) tensors

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
    Z[0] = -z0 * c.e1ti + (1.0 - c.e1ti)
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
        out[t].addcmul_(zt[0], sin_a[t], value=-1.0).mul_(c.e2te)
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
    z_end = Z[0] * c.e1rest + (1.0 - c.e1rest)
    return out.T, z_end


def simulate_signals(
    t1_ms: Any,
    t2_ms: Any,
    b1: Any = 1.0,
    sequence: FispSequence | None = None,
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
    sequence : FispSequence, optional
        The acquisition; ``None`` means :meth:`FispSequence.default`.
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
    if sequence is not None and not isinstance(sequence, FispSequence):
        got = type(sequence).__name__
        raise InputError(f"sequence: expected a FispSequence or None, got {got}")
    seq = FispSequence.default() if sequence is None else sequence
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


def _plan_chunks(
    k_np: np.ndarray, chunk: int | None, dev: torch.device
) -> list[tuple[int, int, int]]:
    """Chunks ``(start, stop, orders)`` over atoms sorted by their order count ``k_np (n,)``."""
    n = k_np.shape[0]
    chunks: list[tuple[int, int, int]] = []
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
    return chunks


def _steady_state(
    t1: torch.Tensor,
    t2: torch.Tensor,
    b: torch.Tensor,
    seq: FispSequence,
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
    chunks = _plan_chunks(k_atom[order].cpu().numpy(), chunk, dev)

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
    with intraop_threads(1), ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run, piece) for piece in chunks]
        try:
            for piece, fut in zip(chunks, futures, strict=True):
                store(*fut.result(), piece[1])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


@contextlib.contextmanager
def intraop_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
