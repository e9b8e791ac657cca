"""Dictionary matching: round trips through the subspace, noise, B1 correction, masks and bases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spurig_core.config import from_dict
from spurig_core.errors import InputError
from spurig_core.matching import MatchingConfig, coefficient_mask, match_maps, match_vectors
from spurig_core.physics import (
    Dictionary,
    DictionaryGrid,
    balance_basis,
    balance_coefficients,
    build_dictionary,
    dft_matrix,
    simulate_signals,
)

GRID = DictionaryGrid(step=0.25, b1_step=0.1)  # about 2,700 atoms: B1 0.6, 0.7, …, 1.4
CFG = MatchingConfig(grid=GRID, voxel_chunk=64, atom_chunk=1000)


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    return build_dictionary(None, GRID, keep_signals=True)


def _coefficients(signals: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``(n, tr)`` signals to ``(basis, n, 1, 1)`` coefficient maps in ``basis``."""
    return (signals @ basis.conj()).T.reshape(basis.shape[1], -1, 1, 1).contiguous()


def _steps(found: torch.Tensor, true: torch.Tensor, step: float) -> torch.Tensor:
    """Distance in geometric grid steps."""
    return (torch.log(found / true) / np.log1p(step)).abs()


def test_noiseless_atoms_match_exactly(dictionary: Dictionary) -> None:
    d = dictionary
    assert d.signals is not None
    sel = torch.arange(0, d.n_atoms, 7)
    pd_true = torch.linspace(0.3, 3.0, sel.numel())
    sig = d.signals[sel] * pd_true[:, None].to(torch.complex64)
    basis = balance_basis(d.basis)
    coef = balance_coefficients(_coefficients(sig, d.basis))
    b1 = d.b1[sel].reshape(-1, 1, 1)
    mask = torch.ones(sel.numel(), 1, 1, dtype=torch.bool)
    r = match_maps(coef, basis, b1=b1, mask=mask, config=CFG, dictionary=d)
    assert r.t1_ms.shape == (sel.numel(), 1, 1) and r.t1_ms.dtype == torch.float32
    assert torch.equal(r.t1_ms.flatten(), d.t1_ms[sel])
    assert torch.equal(r.t2_ms.flatten(), d.t2_ms[sel])
    assert torch.equal(r.b1.flatten(), d.b1[sel])
    # PD is linear in the signal scale: the factor comes back
    assert ((r.pd.flatten() / pd_true) - 1).abs().max() < 1e-4
    assert (r.similarity > 0.9999).all()


def test_search_equals_brute_force_complex_similarity(dictionary: Dictionary) -> None:
    """Against numpy's argmax of |cᴴ x| / ‖c‖ over a complex (balanced) compression."""
    # the same atoms compressed with the balanced (complex) basis: cᴴ = (F_k c)ᴴ
    d = dataclasses.replace(
        dictionary,
        basis=balance_basis(dictionary.basis),
        compressed=dictionary.compressed @ dft_matrix(5).T,
    )
    assert d.compressed.imag.abs().max() > 0.01  # complex: the general (k²-feature) search
    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 5)) + 1j * rng.normal(size=(300, 5))
    b1_index = torch.as_tensor(rng.integers(0, d.b1_values.numel(), 300))
    atom, sim, pd = match_vectors(
        torch.as_tensor(x, dtype=torch.complex64), d, b1_index, config=CFG
    )
    comp = d.compressed.numpy().astype(np.complex128)
    for i in range(300):
        sl = d.b1_slice(int(b1_index[i]))
        c = comp[sl]
        score = np.abs(c.conj() @ x[i]) / np.linalg.norm(c, axis=1)
        j = int(np.argmax(score))
        # ties within float32 rounding may pick a neighbour with the same score
        assert score[int(atom[i]) - sl.start] >= score[j] * (1 - 1e-5)
        assert abs(float(sim[i]) - score[j] / np.linalg.norm(x[i])) < 1e-5
        assert abs(float(pd[i]) - score[j] / np.linalg.norm(c[j])) < 1e-4 * float(pd[i])


def test_balanced_and_unbalanced_coefficients_give_the_same_maps(dictionary: Dictionary) -> None:
    d = dictionary
    assert d.signals is not None
    sel = torch.arange(3, d.n_atoms, 11)
    g = torch.Generator().manual_seed(11)
    noise = 0.002 * torch.randn(sel.numel(), 500, dtype=torch.complex64, generator=g)
    sig = d.signals[sel] + noise
    alpha = _coefficients(sig, d.basis)
    r_unbal = match_maps(alpha, d.basis, config=CFG, dictionary=d)
    r_bal = match_maps(
        balance_coefficients(alpha), balance_basis(d.basis), config=CFG, dictionary=d
    )
    assert torch.equal(r_unbal.t1_ms, r_bal.t1_ms) and torch.equal(r_unbal.t2_ms, r_bal.t2_ms)
    assert (r_unbal.pd - r_bal.pd).abs().max() < 1e-4 * r_unbal.pd.max()


def test_noisy_signals_recover_t1_t2(dictionary: Dictionary) -> None:
    """Off-grid tissue-like parameters, complex noise at SNR 50 in every time point."""
    d = dictionary
    rng = np.random.default_rng(2)
    n = 120
    t1 = rng.uniform(600, 2000, n)
    t2 = rng.uniform(40, 150, n)
    sig = simulate_signals(t1, t2, 1.0)
    rms = sig.abs().pow(2).mean(dim=1, keepdim=True).sqrt()
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(n, 500, dtype=torch.complex64, generator=g) * rms / 50.0
    basis = balance_basis(d.basis)
    coef = _coefficients(sig + noise, basis)
    r = match_maps(coef, basis, config=CFG, dictionary=d)
    e1 = _steps(r.t1_ms.flatten(), torch.as_tensor(t1, dtype=torch.float32), GRID.step)
    e2 = _steps(r.t2_ms.flatten(), torch.as_tensor(t2, dtype=torch.float32), GRID.step)
    # off-grid truth is at most half a step from a grid value; noise may add a little
    assert float(e1.median()) < 0.75 and float(e2.median()) < 0.75
    assert float(e1.max()) <= 2.0 and float(e2.max()) <= 2.0
    # the same voxels without noise are within half a step (+ rounding)
    r0 = match_maps(_coefficients(sig, basis), basis, config=CFG, dictionary=d)
    assert float(_steps(r0.t1_ms.flatten(), torch.as_tensor(t1).float(), GRID.step).max()) < 0.6


def test_b1_aware_matching_beats_b1_unaware(dictionary: Dictionary) -> None:
    d = dictionary
    rng = np.random.default_rng(8)
    n = 60
    t1 = rng.uniform(700, 1800, n)
    t2 = rng.uniform(40, 120, n)
    sig = simulate_signals(t1, t2, 1.3)
    basis = balance_basis(d.basis)
    coef = _coefficients(sig, basis)
    b1_map = torch.full((n, 1, 1), 1.3)
    aware = match_maps(coef, basis, b1=b1_map, config=CFG, dictionary=d)
    unaware = match_maps(coef, basis, config=CFG, dictionary=d)
    assert torch.allclose(aware.b1, torch.tensor(1.3)) and torch.allclose(
        unaware.b1, torch.tensor(1.0)
    )
    t2_true = torch.as_tensor(t2, dtype=torch.float32)
    err_aware = (aware.t2_ms.flatten() / t2_true - 1).abs().mean()
    err_unaware = (unaware.t2_ms.flatten() / t2_true - 1).abs().mean()
    assert err_aware < 0.12  # within the grid's resolution
    assert err_unaware > 2 * err_aware
    assert aware.similarity.mean() > unaware.similarity.mean()


def test_mask_from_coefficient_energy(dictionary: Dictionary) -> None:
    d = dictionary
    assert d.signals is not None
    basis = d.basis
    obj = _coefficients(d.signals[100:164], basis).reshape(5, 4, 4, 4)
    coef = torch.zeros(5, 8, 4, 4, dtype=torch.complex64)
    coef[:, :4] = obj
    coef[:, 4:] = 1e-4 * obj.abs().max()  # faint background, below 5 % of the object
    mask = coefficient_mask(coef, threshold=0.05)
    assert mask[:4].all() and not mask[4:].any()
    r = match_maps(coef, basis, config=CFG, dictionary=d)
    assert torch.equal(r.mask, mask)
    assert (r.t1_ms[4:] == 0).all() and (r.t2_ms[4:] == 0).all() and (r.pd[4:] == 0).all()
    assert (r.t1_ms[:4] > 0).all()
    # an explicit mask wins
    explicit = torch.zeros(8, 4, 4, dtype=torch.bool)
    explicit[0, 0, 0] = True
    r2 = match_maps(coef, basis, mask=explicit, config=CFG, dictionary=d)
    assert int((r2.t1_ms > 0).sum()) == 1


def test_progress_and_bad_inputs(dictionary: Dictionary) -> None:
    d = dictionary
    assert d.signals is not None
    coef = _coefficients(d.signals[:200], d.basis)
    events: list = []
    match_maps(coef, d.basis, config=CFG, dictionary=d, callback=events.append)
    assert events and events[-1].stage == "match" and events[-1].step == events[-1].total
    with pytest.raises(InputError, match="coefficients"):
        match_maps(coef[:, :, 0], d.basis, dictionary=d)
    with pytest.raises(InputError, match="basis"):
        match_maps(coef, d.basis[:, :4], dictionary=d)
    with pytest.raises(InputError, match="b1"):
        match_maps(coef, d.basis, b1=torch.ones(3, 3, 3), dictionary=d)
    bad = coef.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        match_maps(bad, d.basis, dictionary=d)
    with pytest.raises(InputError, match="mask_threshold"):
        MatchingConfig(mask_threshold=2.0)


def test_matching_in_voxel_blocks_equals_one_block(dictionary: Dictionary) -> None:
    """Blocks of ``voxel_block`` voxels (bounded memory) give the maps of one block, B1 and all.

    The voxels are noisy signals with a B1 map that varies from voxel to voxel, so each block
    meets several B1 slices; the progress events count every masked voxel once, in order.
    """
    d = dictionary
    rng = np.random.default_rng(3)
    n = 300
    t1 = rng.uniform(400, 2500, n)
    t2 = rng.uniform(30, 200, n)
    b1 = rng.uniform(0.65, 1.35, n)
    sig = simulate_signals(t1, t2, b1)
    sig = sig + 0.02 * sig.abs().max() * torch.randn(sig.shape, dtype=torch.complex64)
    coef = _coefficients(sig, d.basis).reshape(5, 10, 6, 5)
    b1_map = torch.as_tensor(b1, dtype=torch.float32).reshape(10, 6, 5)
    mask = torch.ones(10, 6, 5, dtype=torch.bool)
    mask[0, 0] = False  # the blocks run over the masked voxels only
    whole = match_maps(coef, d.basis, b1=b1_map, mask=mask, config=CFG, dictionary=d)
    events: list = []
    small = dataclasses.replace(CFG, voxel_block=37)  # 8 blocks, the last one partial
    blocks = match_maps(
        coef, d.basis, b1=b1_map, mask=mask, config=small, dictionary=d, callback=events.append
    )
    for name in ("t1_ms", "t2_ms", "b1", "mask"):
        assert torch.equal(getattr(blocks, name), getattr(whole, name)), name
    for name in ("pd", "similarity"):
        assert torch.allclose(getattr(blocks, name), getattr(whole, name), rtol=1e-6), name
    steps = [e.step for e in events if e.stage == "match"]
    assert steps == sorted(steps) and steps[-1] == int(mask.sum()) == events[-1].total
    assert blocks.config["voxel_block"] == 37
    with pytest.raises(InputError, match="voxel_block"):
        MatchingConfig(voxel_block=0)


def test_config_round_trip() -> None:
    from spurig_core.config import to_dict

    cfg = MatchingConfig(grid=DictionaryGrid(step=0.1), mask_threshold=0.1)
    assert from_dict(MatchingConfig, to_dict(cfg)) == cfg


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(dictionary: Dictionary) -> None:
    d = dictionary
    assert d.signals is not None
    coef = _coefficients(d.signals[::5], d.basis)
    cpu = match_maps(coef, d.basis, config=CFG, dictionary=d)
    gpu = match_maps(coef, d.basis, config=CFG, dictionary=d, device="cuda")
    assert torch.equal(gpu.t1_ms.cpu(), cpu.t1_ms) and torch.equal(gpu.t2_ms.cpu(), cpu.t2_ms)


def test_basis_outside_the_dictionary_subspace_gets_its_own_compression(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SPURIG_CACHE", str(tmp_path))
    grid = DictionaryGrid(step=0.6, b1_step=0.4)
    d = build_dictionary(None, grid, keep_signals=True)
    assert d.signals is not None
    g = torch.Generator().manual_seed(5)
    other, _ = torch.linalg.qr(torch.randn(500, 5, dtype=torch.complex64, generator=g))
    sel = torch.arange(0, d.n_atoms, 3)
    coef = _coefficients(d.signals[sel], other)
    b1 = d.b1[sel].reshape(-1, 1, 1)
    mask = torch.ones(sel.numel(), 1, 1, dtype=torch.bool)
    r = match_maps(coef, other, b1=b1, mask=mask, config=MatchingConfig(grid=grid), dictionary=d)
    assert torch.equal(r.t1_ms.flatten(), d.t1_ms[sel])
    assert torch.equal(r.t2_ms.flatten(), d.t2_ms[sel])
    assert len(list(tmp_path.glob("dictionary-*.pt"))) == 1  # built once with that basis, cached
