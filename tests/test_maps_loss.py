"""The soft-matched T1/T2 loss of the training recipe (issue 13): what the maps errors count."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.io import load_checkpoint, load_scan
from spurig_core.matching import match_maps
from spurig_core.metrics import quantitative_errors
from spurig_core.pipeline import reference_coefficients
from spurig_core.recon.data_term import scan_basis
from spurig_core.training.augment import cube_symmetry
from spurig_core.training.losses import recipe_loss
from spurig_core.training.maps_loss import MapsTargets, MatchedMapsLoss
from spurig_core.training.recipe import RecipeTrainer, load_recipe_config, run_recipe
from test_recipe import _config, cohort  # noqa: F401  (the module's cohort fixture)
from test_validation import scan16  # noqa: F401  (a simulated 16³ scan with its ground truth)


@pytest.fixture(scope="module")
def setup(scan16: Path) -> tuple[MatchedMapsLoss, MapsTargets, torch.Tensor, object]:  # noqa: F811
    scan = load_scan(scan16)
    target = reference_coefficients(scan)
    loss = MatchedMapsLoss(scan_basis(scan, torch.device("cpu")), scan.sequence, atoms=16)
    r = scan.reference
    assert r is not None
    tg = loss.targets(target, r.tissue, r.t1_ms, r.t2_ms, scan.b1)
    return loss, tg, target, scan


def _noisy(target: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(target.shape, dtype=torch.complex64, generator=g)
    return target + level * target.abs().max() * noise


def test_soft_matching_of_the_truth_recovers_the_reference(setup) -> None:  # type: ignore[no-untyped-def]
    """Oracle: the ground truth's own coefficients give its T1/T2 to within the grid's steps."""
    loss, tg, target, _scan = setup
    e1, e2 = loss(target, tg)
    assert float(e1) < 0.02 and float(e2) < 0.04  # the grid has 5 % steps
    # the per-voxel phase (and a global one) is not information the matching reads
    g = torch.Generator().manual_seed(3)
    phase = torch.exp(1j * 6.3 * torch.rand(target.shape[1:], generator=g)).to(torch.complex64)
    p1, p2 = loss(target * phase, tg)
    assert float(p1) == pytest.approx(float(e1), abs=1e-4)
    assert float(p2) == pytest.approx(float(e2), abs=1e-4)


def test_the_loss_tracks_the_evaluations_hard_matched_errors(setup) -> None:  # type: ignore[no-untyped-def]
    """Oracle: for noisy coefficients the soft ``|log T − log T_ref|`` is the evaluation's error."""
    loss, tg, target, scan = setup
    for level in (0.02, 0.05):  # errors of 2-7 %; near 1 % the 5 % grid's steps dominate
        x = _noisy(target, level)
        e1, e2 = loss(x, tg)
        basis = scan_basis(scan, torch.device("cpu"))
        maps = match_maps(x, basis, b1=scan.b1, sequence=scan.sequence, mask=tg.mask)
        q = quantitative_errors(maps.t1_ms, maps.t2_ms, scan.reference, per_voxel=False)
        assert float(e1) == pytest.approx(float(q["t1_rel_error"]), rel=0.1)
        assert float(e2) == pytest.approx(float(q["t2_rel_error"]), rel=0.1)
    assert float(loss(_noisy(target, 0.05), tg)[0]) > float(loss(_noisy(target, 0.02), tg)[0])


def test_gradient_agrees_with_finite_differences_and_descends(setup) -> None:  # type: ignore[no-untyped-def]
    loss, tg, target, _scan = setup
    x = _noisy(target, 0.02, seed=1).requires_grad_(True)
    e1, e2 = loss(x, tg)
    (e1 + e2).backward()
    assert x.grad is not None and bool(torch.isfinite(torch.view_as_real(x.grad)).all())
    assert float(x.grad[:, ~tg.mask].abs().max()) == 0.0  # only GM and WM count
    # a small step along the gradient: the change is the directional derivative
    d = x.grad / torch.linalg.vector_norm(x.grad)
    h = 1e-4 * float(target.abs().max())  # within the kinks of |·| and the atoms' switches
    with torch.no_grad():
        up = sum(loss(x + h * d, tg))
        down = sum(loss(x - h * d, tg))
        slope = float(up - down) / (2 * h)  # type: ignore[operator]
        grad_norm = float(torch.linalg.vector_norm(x.grad))
        # x.grad is dL/dRe + i dL/dIm, so the slope along its own direction is its norm
        assert slope == pytest.approx(grad_norm, rel=0.05)
        step = sum(loss(x - 100 * h * d, tg))  # a descent step lowers it
        assert float(step) < float(e1 + e2) - 50 * h * grad_norm  # type: ignore[arg-type]


def test_cube_symmetries_carry_the_targets_along(setup) -> None:  # type: ignore[no-untyped-def]
    loss, tg, target, _scan = setup
    x = _noisy(target, 0.02, seed=2)
    perm, flips = (2, 0, 1), (0, 2)
    moved = tg.transformed(lambda t: cube_symmetry(t, perm, flips))
    a = loss(x, tg)
    b = loss(cube_symmetry(x, perm, flips), moved)
    for u, v in zip(a, b, strict=True):
        assert float(u) == pytest.approx(float(v), rel=1e-5)
    # and a state that is not moved with them scores worse
    assert float(loss(x, moved)[0]) > 2 * float(a[0])


def test_refusals(setup) -> None:  # type: ignore[no-untyped-def]
    loss, _tg, target, scan = setup
    basis, seq = scan_basis(scan, torch.device("cpu")), scan.sequence
    with pytest.raises(InputError, match="maps_atoms"):
        MatchedMapsLoss(basis, seq, atoms=1)
    for bad in (0.0, 1.0, math.nan):
        with pytest.raises(InputError, match="maps_sharpness"):
            MatchedMapsLoss(basis, seq, sharpness=bad)
    r = scan.reference
    with pytest.raises(InputError, match="does not match"):
        loss.targets(target, r.tissue[:-1], r.t1_ms, r.t2_ms, None)
    with pytest.raises(InputError, match="no GM/WM"):
        loss.targets(target, torch.zeros_like(r.tissue), r.t1_ms, r.t2_ms, None)


def test_boundary_weight_reweights_the_mean_over_the_tissue_boundaries(setup) -> None:  # type: ignore[no-untyped-def]
    """Oracle: the weighted mean of the plain loss's per-voxel errors.

    The boundary voxels are those with a 6-neighbour of another label (numpy, edges replicated).
    """
    import numpy as np

    loss, tg, target, scan = setup
    basis = scan_basis(scan, torch.device("cpu"))
    heavy = MatchedMapsLoss(basis, scan.sequence, atoms=16, boundary_weight=4.0)
    r = scan.reference
    tw = heavy.targets(target, r.tissue, r.t1_ms, r.t2_ms, scan.b1)
    assert tg.weight is None and tw.weight is not None
    tis = r.tissue.numpy()
    pad = np.pad(tis, 1, mode="edge")
    edge = np.zeros(tis.shape, bool)
    for ax in range(3):
        for sh in (-1, 1):
            edge |= np.roll(pad, sh, axis=ax)[1:-1, 1:-1, 1:-1] != tis
    edge &= tg.mask.numpy()
    assert 0 < edge.sum() < tg.mask.sum()
    np.testing.assert_array_equal(tw.weight.numpy(), np.where(edge, 4.0, 1.0))
    x = _noisy(target, 0.03, seed=4)
    lt1, _ = loss.soft_maps(x, tg)
    d1 = (lt1 - tg.log_t1[tg.mask]).abs().numpy()
    w = np.where(edge[tg.mask.numpy()], 4.0, 1.0)
    e1, _ = heavy(x, tw)
    assert float(e1) == pytest.approx(float((w * d1).sum() / w.sum()), rel=1e-5)
    assert float(e1) != pytest.approx(float(loss(x, tg)[0]), rel=1e-3)
    moved = tw.transformed(lambda t: cube_symmetry(t, (1, 2, 0), (1,)))
    assert float(heavy(cube_symmetry(x, (1, 2, 0), (1,)), moved)[0]) == pytest.approx(float(e1))
    for bad in (0.5, 101.0, math.nan):
        with pytest.raises(InputError, match="maps_boundary_weight"):
            MatchedMapsLoss(basis, scan.sequence, boundary_weight=bad)


def test_recipe_adds_the_maps_term_and_records_it(
    cohort: Path,  # noqa: F811
    scan16: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("s0", "s1"):  # the tiny cohort's training subjects, with a 16³ ground truth
        (scans / f"{name}.h5").symlink_to(scan16)
    for bad, match in (
        ({"maps_weights": [1.0, 1.0]}, "train_scans"),
        ({"maps_weights": [1.0, -1.0], "train_scans": str(scans)}, "maps_weights"),
        ({"maps_weights": [1.0, 1.0, 1.0], "train_scans": str(scans)}, "maps_weights"),
        ({"maps_sharpness": 2.0}, "maps_sharpness"),
        ({"maps_atoms": 1}, "maps_atoms"),
    ):
        with pytest.raises(InputError, match=match):
            load_recipe_config(_config(cohort, tmp_path / "bad", **bad))
    cfg_path = _config(
        cohort, tmp_path / "run", maps_weights=[2.0, 0.5], train_scans="scans", fresh_noise=False
    )
    tr = RecipeTrainer(load_recipe_config(cfg_path))
    assert tr.maps_loss is not None and all(s.maps is not None for s in tr.train)
    assert all(s.maps is None for s in tr.val)  # validation matches hard, as the evaluation
    s = tr.train[0]
    assert s.maps is not None
    out = _noisy(s.ex.target, 0.05)
    e1, e2 = tr.maps_loss(out, s.maps)
    want = recipe_loss(out, s.ex.target, s.ex.tissue, magnitude_weight=1.0) + 2 * e1 + 0.5 * e2
    assert float(tr._loss(out, s.ex.target, s.ex.tissue, s.maps)) == pytest.approx(
        float(want), rel=1e-5
    )
    model_path = run_recipe(cfg_path, log=lambda _line: None)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert all(math.isfinite(float(r["train_loss"])) for r in rows[1:])
    cfg = load_checkpoint(model_path)["train_config"]
    assert cfg["maps_weights"] == [2.0, 0.5] and cfg["maps_sharpness"] == 0.01
