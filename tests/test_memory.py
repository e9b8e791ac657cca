"""The memory estimates of ``reconstruct`` (:func:`spurig_core.memory.recon_estimates`).

Oracles: the module table's formula written out by hand, the refusal measured at 220³ on LLR's
2× grid in session 30 (28.1 GB with the gram kernels counted on the whole grid), and the kernels
a real gridded data term stores.
"""

from __future__ import annotations

import pytest
import torch

from spurig_core.io import load_scan
from spurig_core.memory import recon_estimates
from spurig_core.operators.encoding import EncodingConfig, GriddedSubspaceEncoding
from spurig_core.operators.grid import grid_size
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.recon.data_term import scan_basis
from spurig_core.simulation import simulate

SIZES_220 = {"matrix": (220, 220, 220), "coils": 10, "groups": 16, "tr": 500, "samples": 1320}


def _data_term(method: str, **kw: object) -> float:
    """Bytes of the "gridded data consistency" step."""
    steps = dict(recon_estimates(method=method, **kw))  # type: ignore[arg-type]
    (need,) = [b for what, b in steps.items() if what.startswith("gridded data consistency")]
    return need


def _by_hand(n: int, coils: int, samples: int, grid_points: int, kernel_points: int) -> float:
    maps, iterates, kspace = 8 * coils * n, 8 * 5 * n * 6, 8 * coils * samples
    return 8 * (25 * kernel_points + 2 * 5 * grid_points) + maps + iterates + kspace


def test_gram_kernels_at_the_sampled_points_where_they_are_under_half_the_grid() -> None:
    """220³ on LLR's 2× grid: 10.6 M samples on 85 M points, so the kernels are stored sparse."""
    n, samples = 220**3, 16 * 500 * 1320
    g = grid_size(220, 2.0) ** 3
    assert samples < EncodingConfig.sparse_below * g
    sparse = _data_term("llr", **SIZES_220)
    assert sparse == pytest.approx(_by_hand(n, 10, samples, g, samples), rel=1e-12)
    dense = _data_term("llr", sparse=False, **SIZES_220)  # [encoding] sparse = false
    assert dense == pytest.approx(_by_hand(n, 10, samples, g, g), rel=1e-12)
    assert 28.0e9 < dense < 28.2e9  # the refusal of session 30 ("needs about 28.1 GB")
    assert sparse < 13.3e9
    assert _data_term("llr", sparse=True, **SIZES_220) == sparse


def test_gram_kernels_on_the_whole_grid_where_the_samples_could_cover_half_of_it() -> None:
    """64³, 2 min on the models' 1.5× grid: 3.07 M samples, 0.88 M points: counted dense."""
    sizes = {"matrix": (64, 64, 64), "coils": 10, "groups": 16, "tr": 500, "samples": 384}
    n, samples, g = 64**3, 16 * 500 * 384, grid_size(64, 1.5) ** 3
    need = _data_term("spurig", **sizes)
    assert need == pytest.approx(_by_hand(n, 10, samples, g, g), rel=1e-12)
    # forced sparse: at most every grid point, however many samples
    assert _data_term("spurig", sparse=True, **sizes) == need


@pytest.mark.parametrize("sparse", [None, True, False])
def test_the_estimate_holds_the_kernels_a_data_term_stores(tmp_path, sparse) -> None:
    path = simulate(tmp_path / "s.h5", matrix=16, coils=3, groups=2, seed=1, phantom="analytic")
    scan = load_scan(path)
    nn = GriddingConfig(n_sources=1, learned_kernel=False, check=False)
    gd = grid(scan.kspace, scan.trajectory, scan.matrix, config=nn)
    basis = scan_basis(scan, torch.device("cpu"))
    op = GriddedSubspaceEncoding(gd, scan.coil_maps, basis, config=EncodingConfig(sparse=sparse))
    stored = op._kernel.numel() // 25  # complex kernels per point: basis² = 25
    sizes = {
        "matrix": scan.matrix,
        "coils": 3,
        "groups": 2,
        "tr": scan.n_tr,
        "samples": int(scan.kspace.shape[3]),
    }
    g = op.n_grid
    need = _data_term("dc-only", sparse=sparse, oversampling=1.5, **sizes)
    n = 16**3
    counted = (need - _by_hand(n, 3, 2 * scan.n_tr * sizes["samples"], g, 0)) / (8 * 25)
    assert stored <= counted + 0.5
    assert (stored < g) == bool(op.sparse)
