"""FISP-MRF signal physics (SPEC §4, paper 2.4), by topic.

- :mod:`.epg`: the EPG simulation of the steady-state signals (:func:`simulate_signals`).
- :mod:`.subspace`: the temporal basis ``Φ`` of a dictionary and its balanced form
  ``Φ̃ = Φ F_kᴴ``, ``α̃ = F_k α``.
- :mod:`.dictionary`: dictionaries over a (T1, T2, B1) grid and the basis of a sequence
  (:func:`default_basis`); their disk cache is :mod:`spurig_core.io_cache`.

The names other modules use are re-exported here (``from spurig_core.physics import
default_basis``).
"""

from __future__ import annotations

from .dictionary import (
    BASIS_GRID,
    KEEP_SIGNALS_MAX,
    Dictionary,
    DictionaryGrid,
    build_dictionary,
    default_basis,
    load_dictionary,
    unbalanced_basis,
)
from .epg import (
    STATES_PER_T2_TR,
    auto_states,
    epg_group,
    exact_states,
    intraop_threads,
    simulate_signals,
)
from .subspace import (
    balance_basis,
    balance_coefficients,
    basis_energy,
    dft_matrix,
    fix_phase,
    subspace_basis,
    unbalance_basis,
    unbalance_coefficients,
)

__all__ = [
    "BASIS_GRID",
    "KEEP_SIGNALS_MAX",
    "STATES_PER_T2_TR",
    "Dictionary",
    "DictionaryGrid",
    "auto_states",
    "balance_basis",
    "balance_coefficients",
    "basis_energy",
    "build_dictionary",
    "default_basis",
    "dft_matrix",
    "epg_group",
    "exact_states",
    "fix_phase",
    "intraop_threads",
    "load_dictionary",
    "simulate_signals",
    "subspace_basis",
    "unbalance_basis",
    "unbalance_coefficients",
    "unbalanced_basis",
]
