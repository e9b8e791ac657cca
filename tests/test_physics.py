"""FISP-MRF physics (EPG signals) against independent references and analytic limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spurig_core.data import FispSequence
from spurig_core.errors import Cancelled, InputError
from spurig_core.physics import (
    Dictionary,
    DictionaryGrid,
    balance_basis,
    balance_coefficients,
    basis_energy,
    build_dictionary,
    default_basis,
    dft_matrix,
    epg_group,
    exact_states,
    load_dictionary,
    simulate_signals,
    subspace_basis,
    unbalance_basis,
    unbalance_coefficients,
    unbalanced_basis,
)


# ----------------------------------------------------------------------------------------------
# independent reference: brute-force isochromat Bloch simulation
# ----------------------------------------------------------------------------------------------
def _bloch_groups(
    t1: float, t2: float, b1: float, seq: FispSequence, *, n_groups: int, n_spins: int = 1024
) -> np.ndarray:
    """Signals of the last of ``n_groups`` repeated groups, from full relaxation (float64).

    ``n_spins`` isochromats spread uniformly over one dephasing cycle; each repetition rotates
    every spin with an explicit rotation matrix about x, relaxes it over TE / TR and dephases it by
    its own phase.  After each group the transverse magnetisation is spoiled and only the mean
    ``Mz`` carries over (ideal crusher), then a perfect inversion starts the next group.  With more
    spins than twice the repetitions, no configuration order can alias.
    """
    fa = np.deg2rad(seq.flip_angle_deg.astype(np.float64)) * b1
    phase = np.exp(1j * 2.0 * np.pi * np.arange(n_spins) / n_spins)

    def relax(m: np.ndarray, dt_ms: float) -> None:
        e1, e2 = math.exp(-dt_ms / t1), math.exp(-dt_ms / t2)
        m[0] *= e2
        m[1] *= e2
        m[2] = m[2] * e1 + (1.0 - e1)

    mz = 1.0
    sig = np.empty(seq.n_tr, dtype=np.complex128)
    for _ in range(n_groups):
        m = np.zeros((3, n_spins))
        m[2] = -mz
        relax(m, seq.ti_ms)
        for t in range(seq.n_tr):
            c, s = math.cos(fa[t]), math.sin(fa[t])
            rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
            m = rot @ m
            sig[t] = np.mean(m[0] + 1j * m[1]) * math.exp(-seq.te_ms / t2)
            relax(m, seq.tr_ms)
            mxy = (m[0] + 1j * m[1]) * phase
            m[0], m[1] = mxy.real, mxy.imag
        relax(m, 1000.0 * seq.rest_s)
        mz = float(m[2].mean())
    return sig


ORACLE_PARAMS = [
    (850.0, 50.0, 1.0),
    (1400.0, 80.0, 1.2),
    (4000.0, 1800.0, 0.7),
    (5000.0, 3000.0, 1.4),
    (300.0, 250.0, 0.6),
]


@pytest.fixture(scope="module")
def oracle_signals() -> np.ndarray:
    seq = FispSequence.default()
    return np.stack([_bloch_groups(*p, seq, n_groups=12) for p in ORACLE_PARAMS])


@pytest.mark.parametrize(
    ("dtype", "exact", "tol"),
    [(torch.float64, True, 1e-8), (torch.float64, False, 1e-4), (torch.float32, False, 1e-4)],
)
def test_epg_matches_isochromat_bloch_default_sequence(
    oracle_signals: np.ndarray, dtype: torch.dtype, exact: bool, tol: float
) -> None:
    seq = FispSequence.default()
    ref = oracle_signals
    t1, t2, b1 = (np.array(v) for v in zip(*ORACLE_PARAMS, strict=True))
    states = exact_states(seq) if exact else None
    sig = simulate_signals(t1, t2, b1, seq, dtype=dtype, states=states)
    assert sig.shape == (len(ORACLE_PARAMS), 500)
    assert sig.dtype == (torch.complex64 if dtype == torch.float32 else torch.complex128)
    err = np.abs(sig.numpy() - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert err.max() < tol, err
    assert np.abs(ref).max() > 0.1  # the signals are not trivial


def test_steady_state_equals_many_explicit_groups() -> None:
    seq = FispSequence.default()
    t1 = torch.tensor([300.0, 1400.0, 5000.0], dtype=torch.float64)
    t2 = torch.tensor([30.0, 80.0, 2000.0], dtype=torch.float64)
    b1 = torch.tensor([0.8, 1.0, 1.3], dtype=torch.float64)
    z = torch.ones(3, dtype=torch.float64)
    first = None
    for _ in range(25):
        sig, z = epg_group(t1, t2, b1, z, seq, states=exact_states(seq))
        first = sig if first is None else first
    ss = simulate_signals(t1, t2, b1, seq, states=exact_states(seq), dtype=torch.float64)
    assert torch.allclose(ss.real, torch.zeros_like(ss.real))
    assert (ss.imag - sig).abs().max() < 1e-12
    # the first group (from full relaxation) is measurably different: the test can fail
    assert (first - sig).abs().max() > 1e-3


def test_truncated_states_close_to_exact() -> None:
    seq = FispSequence.default()
    t1 = np.array([800.0, 1500.0, 4000.0])
    t2 = np.array([40.0, 100.0, 300.0])
    exact = simulate_signals(t1, t2, 1.0, seq, states=exact_states(seq), dtype=torch.float64)
    auto = simulate_signals(t1, t2, 1.0, seq, dtype=torch.float64)
    few = simulate_signals(t1, t2, 1.0, seq, states=4, dtype=torch.float64)
    peak = exact.abs().amax(dim=1)
    assert ((auto - exact).abs().amax(dim=1) / peak).max() < 5e-5
    assert ((few - exact).abs().amax(dim=1) / peak).max() > 1e-3


# ----------------------------------------------------------------------------------------------
# analytic limits
# ----------------------------------------------------------------------------------------------
def test_no_relaxation_90_degree_train() -> None:
    """Hand-derived EPG of an inverted spin: FID, nothing, spin echo tipped away, stim. echo."""
    seq = FispSequence(np.full(4, 90.0), tr_ms=10.0, te_ms=0.0, ti_ms=0.0, rest_s=0.0)
    inf = torch.tensor([1e30], dtype=torch.float64)
    sig, z_end = epg_group(
        inf,
        inf,
        torch.ones(1, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
        seq,
        states=8,
    )
    # inverted Mz = −1; 90° about x gives My = +1 (signal +i), then 0, 0 and a stimulated echo of ½
    assert torch.allclose(
        sig[0], torch.tensor([1.0, 0.0, 0.0, 0.5], dtype=torch.float64), atol=1e-12
    )
    # Mz after the 4th pulse: the spin echo refocused at pulse 4 (mean My = −½) is tipped into Mz
    assert abs(float(z_end[0]) + 0.5) < 1e-12


def test_saturation_train_with_full_spoiling_steady_state() -> None:
    """90° pulses, T2 ≪ TR and TE = 0: every pulse reads the current Mz, then recovery from 0."""
    tr, ti, rest = 20.0, 15.0, 0.3
    seq = FispSequence(np.full(6, 90.0), tr_ms=tr, te_ms=0.0, ti_ms=ti, rest_s=rest)
    t1 = 700.0
    sig = simulate_signals([t1], [1e-3], 1.0, seq, dtype=torch.float64)[0]
    e_tr, e_ti, e_rest = (math.exp(-d / t1) for d in (tr, ti, 1000 * rest))
    z_ss = 1.0 - e_tr * e_rest  # Mz before the inversion
    m0 = -z_ss * e_ti + 1.0 - e_ti
    expected = np.array([-m0] + [-(1.0 - e_tr)] * 5)  # signal = −i sin α Mz
    np.testing.assert_allclose(sig.real.numpy(), 0.0, atol=1e-15)
    np.testing.assert_allclose(sig.imag.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_inversion_recovery_zero_crossing() -> None:
    """Single small-flip readout, long rest: signal ∝ 1 − 2 exp(−TI/T1), zero at TI = T1 ln 2."""
    t1, t2, alpha = 900.0, 60.0, 1.0
    tis = t1 * math.log(2.0) * np.array([0.9, 1.0, 1.1])
    out = []
    for ti in tis:
        seq = FispSequence(np.array([alpha]), tr_ms=10.0, te_ms=2.0, ti_ms=ti, rest_s=30.0)
        out.append(complex(simulate_signals([t1], [t2], 1.0, seq, dtype=torch.float64)[0, 0]))
    sig = np.array(out)
    mz = 1.0 - 2.0 * np.exp(-tis / t1)  # fully relaxed before the inversion (rest ≫ T1)
    expected = -1j * math.sin(math.radians(alpha)) * mz * math.exp(-2.0 / t2)
    np.testing.assert_allclose(sig, expected, atol=1e-9)
    assert sig[0].imag > 0 > sig[2].imag  # the sign flips across TI = T1 ln 2
    assert abs(sig[1]) < 1e-9


def test_b1_scales_flip_angles() -> None:
    seq = FispSequence.default()
    a = simulate_signals([1000.0], [100.0], 1.2, seq)
    scaled = FispSequence(
        seq.flip_angle_deg * 1.2,
        tr_ms=seq.tr_ms,
        te_ms=seq.te_ms,
        ti_ms=seq.ti_ms,
        rest_s=seq.rest_s,
    )
    b = simulate_signals([1000.0], [100.0], 1.0, scaled)
    assert (a - b).abs().max() < 1e-5
    c = simulate_signals([1000.0], [100.0], 1.0, seq)
    assert (a - c).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------
# interface
# ----------------------------------------------------------------------------------------------
def test_default_sequence_shapes_and_broadcasting() -> None:
    sig = simulate_signals(torch.tensor([850.0, 1400.0]), [50.0, 80.0])
    assert sig.shape == (2, 500) and sig.dtype == torch.complex64
    per_atom = simulate_signals([850.0, 1400.0], [50.0, 80.0], [1.0, 1.0], FispSequence.default())
    assert torch.equal(sig, per_atom)
    # chunking and state ordering do not change the result
    rng = np.random.default_rng(5)
    t1 = rng.uniform(200, 3000, 40)
    t2 = t1 * rng.uniform(0.02, 0.5, 40)
    whole = simulate_signals(t1, t2, 0.9)
    pieces = simulate_signals(t1, t2, 0.9, chunk=7)
    assert (whole - pieces).abs().max() < 1e-6
    single = simulate_signals(t1[13:14], t2[13:14], 0.9)
    assert (whole[13] - single[0]).abs().max() < 1e-6


def test_bad_inputs_raise_input_error() -> None:
    with pytest.raises(InputError, match="lengths 2, 3, 1"):
        simulate_signals([1000.0, 900.0], [50.0, 40.0, 30.0])
    with pytest.raises(InputError, match="t1_ms"):
        simulate_signals([-1.0], [50.0])
    with pytest.raises(InputError, match="b1"):
        simulate_signals([1000.0], [50.0], float("nan"))
    with pytest.raises(InputError, match="dtype"):
        simulate_signals([1000.0], [50.0], dtype=torch.float16)


def test_progress_events() -> None:
    events = []
    simulate_signals(np.full(10, 1000.0), np.full(10, 50.0), chunk=4, callback=events.append)
    assert [e.step for e in events] == [4, 8, 10]
    assert all(e.stage == "simulate" and e.total == 10 for e in events)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    t1, t2 = [850.0, 4000.0], [50.0, 1800.0]
    cpu = simulate_signals(t1, t2, 1.1)
    gpu = simulate_signals(t1, t2, 1.1, device="cuda")
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() < 1e-5


# ----------------------------------------------------------------------------------------------
# dictionary, subspace and balancing
# ----------------------------------------------------------------------------------------------
SMALL_GRID = DictionaryGrid(step=0.3, b1_step=0.2)


def _short_sequence(n_tr: int = 120) -> FispSequence:
    fa = FispSequence.default().flip_angle_deg
    return FispSequence(np.concatenate([fa[:60], fa[200 : 200 + n_tr - 60]]))


@pytest.fixture(scope="module")
def small_dictionary() -> Dictionary:
    return build_dictionary(None, SMALL_GRID, keep_signals=True)


def test_grid_values() -> None:
    g = DictionaryGrid()
    t1, t2, b1 = g.t1_values(), g.t2_values(), g.b1_values()
    assert t1[0] == 100.0 and t1[-1] <= 5000.0 < t1[-1] * 1.05
    assert t2[0] == 10.0 and t2[-1] <= 3000.0 < t2[-1] * 1.05
    np.testing.assert_allclose(t1[1:] / t1[:-1], 1.05)
    np.testing.assert_allclose(b1, np.linspace(0.6, 1.4, 17), atol=1e-9)
    a1, a2, ab = g.atoms()
    assert (a2 < a1).all() and a1.size == a2.size == ab.size == 17 * g.pairs()[0].size
    assert g.key() != DictionaryGrid(step=0.1).key() and g.key() == DictionaryGrid().key()
    with pytest.raises(InputError, match="dictionary grid"):
        DictionaryGrid(step=0.0)


def test_subspace_basis_against_svd(small_dictionary: Dictionary) -> None:
    d = small_dictionary
    assert d.signals is not None
    phi, energy = subspace_basis(d.signals, 5)
    assert phi.shape == (500, 5) and phi.dtype == torch.complex64
    eye = torch.eye(5, dtype=torch.complex64)
    assert (phi.conj().T @ phi - eye).abs().max() < 1e-5
    assert energy > 0.99
    # independent reference: numpy's SVD of the time × atoms dictionary (same projector)
    sub = d.signals[::3]
    phi_sub, energy_sub = subspace_basis(sub, 5)
    u, sv, _ = np.linalg.svd(sub.numpy().T.astype(np.complex128), full_matrices=False)
    proj_ref = u[:, :5] @ u[:, :5].conj().T
    proj = (phi_sub @ phi_sub.conj().T).numpy()
    assert np.abs(proj - proj_ref).max() < 1e-5
    assert abs(energy_sub - (sv[:5] ** 2).sum() / (sv**2).sum()) < 1e-6
    # the phase convention: the largest entry of each column is real and positive
    top = phi.abs().argmax(dim=0)
    pivots = phi[top, torch.arange(5)]
    assert (pivots.imag.abs() < 1e-6).all() and (pivots.real > 0).all()
    # reproducible: the same basis from the atoms in another order
    perm = torch.randperm(d.n_atoms, generator=torch.Generator().manual_seed(3))
    phi2, _ = subspace_basis(d.signals[perm], 5)
    assert (phi2 - phi).abs().max() < 1e-4
    # the dictionary's own basis is this one, and the compression is basisᴴ s
    assert (d.basis - phi).abs().max() < 1e-4
    assert (d.compressed - d.signals @ d.basis.conj()).abs().max() < 1e-5
    assert abs(d.energy - basis_energy(d.basis, d.signals)) < 1e-5


def test_balancing_identities() -> None:
    k = 5
    f = dft_matrix(k, dtype=torch.complex128)
    f_ref = np.fft.fft(np.eye(k), norm="ortho")  # independent: numpy's unitary DFT
    assert np.abs(f.numpy() - f_ref).max() < 1e-12
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(50, k, dtype=torch.complex128, generator=g))
    alpha = torch.randn(k, 4, 3, 2, dtype=torch.complex128, generator=g)
    phi_t = balance_basis(q)
    alpha_t = balance_coefficients(alpha)
    lhs = torch.einsum("tk,kxyz->txyz", phi_t, alpha_t)
    rhs = torch.einsum("tk,kxyz->txyz", q, alpha)
    assert (lhs - rhs).abs().max() < 1e-12
    assert (phi_t.conj().T @ phi_t - torch.eye(k, dtype=q.dtype)).abs().max() < 1e-12
    assert (unbalance_basis(phi_t) - q).abs().max() < 1e-12
    assert (unbalance_coefficients(alpha_t) - alpha).abs().max() < 1e-12
    # balancing spreads the energy: the balanced coefficients of a dictionary are more even
    assert not torch.allclose(phi_t, q)


def test_build_dictionary_with_given_basis(small_dictionary: Dictionary) -> None:
    d = small_dictionary
    bal = balance_basis(d.basis)
    d2 = build_dictionary(None, SMALL_GRID, basis=bal, keep_signals=False)
    assert d2.signals is None
    assert (d2.compressed - d.compressed @ dft_matrix(5).T).abs().max() < 1e-5
    assert abs(d2.energy - d.energy) < 1e-4
    assert abs(d2.optimal_energy - d.energy) < 1e-6 and d.optimal_energy == d.energy
    # a basis taken from a much coarser grid captures nearly the optimal energy (as BASIS_GRID)
    coarse = build_dictionary(None, DictionaryGrid(step=0.8, b1_step=0.4), keep_signals=False)
    d3 = build_dictionary(None, SMALL_GRID, basis=coarse.basis, keep_signals=False)
    assert d3.energy <= d3.optimal_energy
    assert d3.optimal_energy - d3.energy < 2e-3
    assert abs(d3.energy - basis_energy(coarse.basis, d.signals)) < 1e-5


def test_dictionary_cache_and_default_basis(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPURIG_CACHE", str(tmp_path))
    seq = _short_sequence()
    grid = DictionaryGrid(step=0.3, b1_step=0.4)
    events: list = []
    phi_t = default_basis(seq, grid=grid)
    assert phi_t.shape == (seq.n_tr, 5)
    phi = unbalanced_basis(seq, grid=grid)
    assert (balance_basis(phi) - phi_t).abs().max() < 1e-6
    assert len(list(tmp_path.glob("basis-*.pt"))) == 1
    d1 = load_dictionary(seq, grid, basis=phi, callback=events.append)
    assert events and events[-1].stage == "dictionary" and events[-1].step == d1.n_atoms
    files = list(tmp_path.glob("dictionary-*.pt"))
    assert len(files) == 1 and seq.key() in files[0].name
    assert (d1.basis - phi).abs().max() < 1e-6
    events.clear()
    d2 = load_dictionary(seq, grid, basis=phi, callback=events.append)
    assert not events  # read from the cache, not rebuilt
    assert torch.equal(d1.compressed, d2.compressed)
    files[0].write_bytes(b"truncated")  # a broken cache entry is rebuilt
    d3 = load_dictionary(seq, grid, basis=phi)
    assert torch.equal(d1.compressed, d3.compressed)
    assert not list(tmp_path.glob(".*tmp"))


def test_cancelled_dictionary_build_leaves_no_cache_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPURIG_CACHE", str(tmp_path))
    seq = _short_sequence()
    grid = DictionaryGrid(step=0.3, b1_step=0.4)
    g = torch.Generator().manual_seed(2)
    phi = torch.linalg.qr(torch.randn(seq.n_tr, 5, dtype=torch.complex64, generator=g))[0]

    def cancel(event: object) -> None:
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        load_dictionary(seq, grid, basis=phi, callback=cancel)
    assert not list(tmp_path.iterdir())
