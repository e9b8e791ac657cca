"""Dictionaries of the EPG signals over a (T1, T2, B1) grid, and the basis taken from them.

:class:`DictionaryGrid` (the grid), :class:`Dictionary` (the atoms compressed in a temporal
basis), :func:`build_dictionary` (simulate and compress, no cache), :func:`load_dictionary` (the
same through the disk cache of :mod:`spurig_core.io_cache`) and the basis of a sequence
(:func:`unbalanced_basis` ``Φ``, :func:`default_basis` ``Φ̃ = Φ F_kᴴ``, paper 2.4), the top-``k``
subspace of the dictionary over :data:`BASIS_GRID`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .. import io_cache
from ..data import FispSequence
from ..errors import InputError
from ..progress import Callback
from .epg import _steady_state, intraop_threads
from .subspace import _top_k, balance_basis

__all__ = [
    "BASIS_GRID",
    "KEEP_SIGNALS_MAX",
    "Dictionary",
    "DictionaryGrid",
    "build_dictionary",
    "default_basis",
    "load_dictionary",
    "unbalanced_basis",
]


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
        """Raise InputError unless the T1, T2 and B1 ranges and the steps are positive."""
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
        """Return the ``(T1, T2)`` pairs with ``T2 < T1``, each ``(n_pairs,)``, T1-major order."""
        t1, t2 = np.meshgrid(self.t1_values(), self.t2_values(), indexing="ij")
        keep = t2 < t1
        return t1[keep], t2[keep]

    def atoms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """T1, T2, B1 of every atom, each shape ``(atoms,)``: B1-major, the same pairs per B1."""
        t1, t2 = self.pairs()
        b1 = self.b1_values()
        return np.tile(t1, b1.size), np.tile(t2, b1.size), np.repeat(b1, t1.size)

    def key(self) -> str:
        """Return a short hash of the grid (for caches)."""
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
        :meth:`FispSequence.key` of the sequence simulated.
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
    sequence: FispSequence | None = None,
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
    sequence : FispSequence, optional
        ``None``: :meth:`FispSequence.default`.
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
    seq = FispSequence.default() if sequence is None else sequence
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
        with intraop_threads(1):
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
# cached on disk (spurig_core.io_cache): dictionaries and the basis of a sequence
# ----------------------------------------------------------------------------------------------
def load_dictionary(
    sequence: FispSequence | None = None,
    grid: DictionaryGrid | None = None,
    *,
    basis: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
) -> Dictionary:
    """Return ``sequence``'s dictionary over ``grid``, compressed, from the cache or built once.

    Parameters
    ----------
    sequence : FispSequence, optional
        ``None``: :meth:`FispSequence.default`.
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
        On the CPU; cached on disk (:func:`spurig_core.io_cache.cache_dir`) keyed by
        ``sequence.key()``, the grid and the basis.
    """
    seq = FispSequence.default() if sequence is None else sequence
    grd = DictionaryGrid() if grid is None else grid
    if basis is None:
        basis = unbalanced_basis(seq)
    name = io_cache.dictionary_file(seq.key(), grd.key(), basis)
    state = io_cache.cached(
        name,
        lambda: build_dictionary(
            seq, grd, basis=basis, device=device, callback=callback, keep_signals=False
        )._state(),
    )
    return Dictionary._from_state(state)


@functools.lru_cache(maxsize=8)
def _basis_state(seq_key: str, grid: DictionaryGrid, k: int, seq_json: str) -> dict[str, Any]:
    seq = FispSequence.from_dict(json.loads(seq_json))

    def make() -> dict[str, Any]:
        d = build_dictionary(seq, grid, k=k, keep_signals=False)
        return {"kind": "spurig-basis/1", "basis": d.basis, "energy": d.energy}

    return io_cache.cached(io_cache.basis_file(seq_key, grid.key(), k), make)


def unbalanced_basis(
    sequence: FispSequence | None = None, *, k: int = 5, grid: DictionaryGrid = BASIS_GRID
) -> torch.Tensor:
    """Return a sequence's unbalanced subspace ``Φ``: top-``k`` singular vectors of its dictionary.

    Returns
    -------
    Tensor, shape (tr, basis), complex64
        Cached in memory and on disk (:func:`spurig_core.io_cache.cache_dir`); see
        :data:`BASIS_GRID`.
    """
    seq = FispSequence.default() if sequence is None else sequence
    state = _basis_state(seq.key(), grid, k, json.dumps(seq.to_dict()))
    return state["basis"].clone()


def default_basis(
    sequence: FispSequence | None = None, *, k: int = 5, grid: DictionaryGrid = BASIS_GRID
) -> torch.Tensor:
    """Return the balanced basis ``Φ̃ = Φ F_kᴴ`` of a sequence (SPEC §4), used by every method.

    Parameters
    ----------
    sequence : FispSequence, optional
        ``None``: :meth:`FispSequence.default`.
    k : int
        Rank (5).
    grid : DictionaryGrid
        Dictionary the subspace is taken from (:data:`BASIS_GRID`).

    Returns
    -------
    Tensor, shape (tr, basis), complex64
        Orthonormal columns; deterministic (SVD phase fixed by
        :func:`~spurig_core.physics.subspace.fix_phase` before balancing).
    """
    return balance_basis(unbalanced_basis(sequence, k=k, grid=grid))
