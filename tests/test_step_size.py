"""The step size ``‖A^H A‖₂`` kept with the gridded data (issue #14).

Oracles: a long power iteration (300 grams, no early stop) for the norm; the old reconstruction
path (power iteration inside the method) for the reconstructions; a cache file written without the
step sizes for backward compatibility.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from spurig_core import benchmark
from spurig_core.benchmark import load_gridded, save_gridded
from spurig_core.io import load_checkpoint, load_scan, save_checkpoint
from spurig_core.operators.encoding import EncodingConfig, GriddedSubspaceEncoding
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.operators.step_size import (
    attach_step_sizes,
    coil_start,
    gram_norm,
    step_key,
    stored_step_size,
)
from spurig_core.pipeline import reconstruct
from spurig_core.recon import data_term
from spurig_core.recon.data_term import scan_basis
from spurig_core.recon.trained import gridding_groups, model_gridding
from spurig_core.simulation import simulate

NN = GriddingConfig(n_sources=1, learned_kernel=False, check=False)
FAST = {"gridding": {"learned_kernel": False, "n_sources": 1}, "llr": {"iterations": 6}}


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "tiny.h5"
    return simulate(path, matrix=16, coils=3, groups=4, seed=3, phantom="analytic")


@pytest.fixture(scope="module")
def setup(scan_path: Path):
    scan = load_scan(scan_path)
    gd = grid(scan.kspace, scan.trajectory, scan.matrix, config=NN)
    basis = scan_basis(scan, torch.device("cpu"))
    return scan, gd, basis


def _reference_norm(op: GriddedSubspaceEncoding) -> float:
    """``‖A^H A‖₂`` from 300 power iterations (no early stop) from a seeded random start."""
    return op.opnorm(iters=300, rtol=0.0, generator=torch.Generator().manual_seed(7)) ** 2


@pytest.mark.parametrize("groups", [4, 2])
def test_stored_value_is_the_norm_within_one_percent(setup, groups: int) -> None:
    scan, gd, basis = setup
    gd = grid(scan.kspace, scan.trajectory, scan.matrix, config=NN)  # a fresh table
    seconds = attach_step_sizes(gd, scan.coil_maps, basis, groups=(4, 2, 8))  # 8 does not fit
    assert seconds > 0 and len(gd.lipschitz) == 2
    key = step_key(groups, EncodingConfig().density_compensation, scan.coil_maps, basis)
    stored = stored_step_size(gd, key)
    assert stored is not None
    op = GriddedSubspaceEncoding(gd.first_groups(groups), scan.coil_maps, basis)
    ref = _reference_norm(op)
    # a Ritz value: never above the norm (float32 grams: 1e-4), and within 1 % below it
    assert ref * (1 - 1e-2) <= stored <= ref * (1 + 1e-4)


def test_lanczos_from_coil_start_converges_to_the_norm(setup) -> None:
    scan, gd, basis = setup
    op = GriddedSubspaceEncoding(gd, scan.coil_maps, basis)
    tight, grams = gram_norm(op, rtol=1e-9, max_iters=80, x0=coil_start(scan.coil_maps, 5))
    assert tight == pytest.approx(_reference_norm(op), rel=2e-3)
    assert grams > 4


@pytest.mark.parametrize("sparse", [True, False])
def test_centre_direction_is_the_top_eigenvector_of_the_central_kernels(setup, sparse) -> None:
    """Oracle: the dense kernel array, summed over the central 5³ grid points."""
    scan, gd, basis = setup
    cfg = EncodingConfig(sparse=sparse)
    op = GriddedSubspaceEncoding(gd, scan.coil_maps, basis, config=cfg)
    k = op.kernels  # (basis, basis, X, Y, Z), stored sparsely or not
    c = [n // 2 for n in k.shape[2:]]
    block = k[:, :, c[0] - 2 : c[0] + 3, c[1] - 2 : c[1] + 3, c[2] - 2 : c[2] + 3]
    _, vecs = torch.linalg.eigh(block.sum((-3, -2, -1)).to(torch.complex128))
    v = op.centre_direction()
    assert v.shape == (5,) and float(torch.linalg.vector_norm(v)) == pytest.approx(1.0, rel=1e-5)
    assert abs(complex(torch.vdot(vecs[:, -1].to(torch.complex64), v))) == pytest.approx(1.0, 1e-4)
    x0 = coil_start(scan.coil_maps, 5, v)
    torch.testing.assert_close(x0[2], v[2] * scan.coil_maps.conj().sum(0))


def test_key_names_groups_density_and_operator(setup) -> None:
    scan, _, basis = setup
    k = step_key(4, 0.5, scan.coil_maps, basis)
    assert k != step_key(2, 0.5, scan.coil_maps, basis)
    assert k != step_key(4, 0.0, scan.coil_maps, basis)
    assert k != step_key(4, 0.5, scan.coil_maps * 2, basis)
    assert k == step_key(4, 0.5, scan.coil_maps.clone(), basis.clone())


def _without_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch to the old path: no stored step size (the method runs its power iteration)."""
    monkeypatch.setattr(data_term, "_step_size", lambda g, m, b, e, timings: (None, timings))


@pytest.mark.parametrize("method", ["llr", "dc-only"])
def test_recon_with_the_stored_value_matches_the_old_path(
    setup, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan, gd, _ = setup
    new = reconstruct(scan, method=method, groups=4, gridded=gd, config=FAST)
    assert new.timings["step_size_s"] > 0  # computed with the data term, in its runtime
    again = reconstruct(scan, method=method, groups=4, gridded=gd, config=FAST)
    assert again.timings["step_size_s"] == 0.0  # then kept with the gridded data
    assert torch.equal(again.coefficients, new.coefficients)
    _without_stored(monkeypatch)
    old = reconstruct(scan, method=method, groups=4, gridded=gd, config=FAST)
    err = torch.linalg.vector_norm(new.coefficients - old.coefficients)
    assert float(err / torch.linalg.vector_norm(old.coefficients)) < 1e-2


def test_cache_keeps_the_step_sizes_and_old_caches_load(
    setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scan, _, basis = setup
    gd = grid(scan.kspace, scan.trajectory, scan.matrix, config=NN)
    attach_step_sizes(gd, scan.coil_maps, basis, groups=(4,))
    path = save_gridded(tmp_path / "gridded.pt", gd, {"gridding_s": 1.0})
    back, times = load_gridded(path)
    assert back.lipschitz == gd.lipschitz and times == {"gridding_s": 1.0}
    assert back.first_groups(2).lipschitz is back.lipschitz  # one table for every view
    # a cache of an older version: no "lipschitz" entry
    state = load_checkpoint(path)
    del state["lipschitz"]
    old_path = save_checkpoint(state, tmp_path / "old.pt")
    old, _ = load_gridded(old_path)
    assert old.lipschitz == {}
    with caplog.at_level(logging.DEBUG, logger="spurig"):
        res = reconstruct(scan, method="llr", groups=4, gridded=old, config=FAST)
    assert "no stored step size" in caplog.text
    assert res.timings["step_size_s"] > 0 and len(old.lipschitz) == 1


def test_bench_counts_the_shared_step_size_once_per_method(scan_path: Path, tmp_path: Path):
    # one gridding per grid: the models' methods on theirs, LLR on its 2x grid
    groups = gridding_groups(benchmark.GRIDDED_METHODS, "30s", overrides=FAST)
    assert [names for _, names in groups] == [("spurig", "hybrid", "dc-only"), ("llr",)]
    (models, _), (llr, _) = groups
    # gridded as the shipped model's training data was, the method's grid and the user's on top
    shipped = model_gridding(benchmark.GRIDDED_METHODS, "30s")
    assert shipped["hidden"] != GriddingConfig().hidden  # the test tells the two apart
    assert (llr["hidden"], llr["grid_oversampling"]) == (shipped["hidden"], 2.0)
    assert models["grid_oversampling"] == shipped.get("grid_oversampling", 1.5)
    caches, rows = {}, {}
    for method, settings in (("dc-only", models), ("llr", llr)):
        caches[method] = str(tmp_path / f"gridded-{method}.pt")
        rows[method] = benchmark._grid_worker(
            str(scan_path),
            4,
            "cpu",
            caches[method],
            config=FAST,
            methods=[method],
            gridding=settings,
        )
        used = rows[method]["gridding_config"]
        assert (used["hidden"], used["steps"]) == (shipped["hidden"], shipped["steps"])
        assert (used["learned_kernel"], used["n_sources"]) == (False, 1)
        assert used["grid_oversampling"] == settings["grid_oversampling"]
        # the step size of the method's encoding (LLR: γ = 0.5; dc-only: the model's), timed
        assert len(load_gridded(caches[method])[0].lipschitz) == 1
        # the Lanczos runs are charged; building the operators (again in each method) is not
        assert 0 < rows[method]["step_size_s"] < rows[method]["step_size_wall_s"]
    for method in ("llr", "dc-only"):
        row = benchmark._worker(
            str(scan_path), method, 4, "cpu", None, config=FAST, gridded=caches[method]
        )
        # no power iteration in the method: the shared step size of its encoding, in its runtime
        assert row["stage_calls"]["step_size"] == 0
        assert row["step_size_s"] == pytest.approx(rows[method]["step_size_s"])
        stages = sum(row[k] for k in ("step_size_s", "scale_s", "dc_s", "denoiser_s"))
        assert row["runtime_s"] >= row["gridding_s"] + stages
