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
        ({"maps_edge_weight": 1.0}, "needs maps_weights"),
        (
            {"maps_weights": [1.0, 1.0], "train_scans": str(scans), "maps_edge_weight": 101.0},
            "maps_edge_weight",
        ),
        ({"edge_weight": -1.0}, "edge_weight"),
    ):
        with pytest.raises(InputError, match=match):
            load_recipe_config(_config(cohort, tmp_path / "bad", **bad))
    cfg_path = _config(
        cohort,
        tmp_path / "run",
        maps_weights=[2.0, 0.5],
        train_scans="scans",
        fresh_noise=False,
        maps_edge_weight=0.5,
        edge_weight=1.5,
    )
    tr = RecipeTrainer(load_recipe_config(cfg_path))
    assert tr.maps_loss is not None and all(s.maps is not None for s in tr.train)
    assert tr.maps_loss.edge_weight == 0.5
    assert all(s.maps is None for s in tr.val)  # validation matches hard, as the evaluation
    s = tr.train[0]
    assert s.maps is not None
    out = _noisy(s.ex.target, 0.05)
    e1, e2 = tr.maps_loss(out, s.maps)
    base = recipe_loss(out, s.ex.target, s.ex.tissue, magnitude_weight=1.0, edge_weight=1.5)
    want = base + 2 * e1 + 0.5 * e2
    assert float(tr._loss(out, s.ex.target, s.ex.tissue, s.maps)) == pytest.approx(
        float(want), rel=1e-5
    )
    model_path = run_recipe(cfg_path, log=lambda _line: None)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert all(math.isfinite(float(r["train_loss"])) for r in rows[1:])
    cfg = load_checkpoint(model_path)["train_config"]
    assert cfg["maps_weights"] == [2.0, 0.5] and cfg["maps_sharpness"] == 0.01
    assert cfg["maps_edge_weight"] == 0.5 and cfg["edge_weight"] == 1.5


def _blur_across_labels(x: torch.Tensor, tissue: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Blur ``x`` across the interface of labels ``a`` and ``b`` only.

    Every voxel of ``a`` or ``b`` next to the other label is mixed 30 % with the mean of its
    neighbours of that label.
    """
    import numpy as np

    t = tissue.numpy()
    out = x.clone()
    for lab, other in ((a, b), (b, a)):
        acc = torch.zeros_like(x)
        n = np.zeros(t.shape)
        for ax in range(3):
            for sh in (-1, 1):
                nb = np.roll(t, sh, axis=ax) == other
                acc += torch.from_numpy(nb) * torch.roll(x, sh, dims=ax - 3)
                n += nb
        sel = torch.from_numpy((t == lab) & (n > 0))
        mean = acc / torch.from_numpy(np.maximum(n, 1))
        out = torch.where(sel, 0.7 * x + 0.3 * mean, out)
    return out


def test_edge_error_counts_the_blur_across_an_interface_not_a_uniform_bias() -> None:
    """Oracle: a 1-D two-tissue line, by hand."""
    from spurig_core.training.maps_loss import edge_error

    mask = torch.zeros(4, 1, 1, dtype=torch.bool)
    mask[:, 0, 0] = True
    ref = torch.tensor([1.0, 1.0, 2.0, 2.0]).reshape(4, 1, 1)
    assert float(edge_error(ref.reshape(-1) + 0.3, ref, mask)) == pytest.approx(0.0, abs=1e-7)
    blurred = torch.tensor([1.0, 1.2, 1.8, 2.0])  # the interface pair 0.6 instead of 1.0 apart
    # pairs (0,1): 0.2, (1,2): |0.6 - 1.0| = 0.4, (2,3): 0.2 -> mean 0.8 / 3
    assert float(edge_error(blurred, ref, mask)) == pytest.approx(0.8 / 3, rel=1e-6)
    mask[3] = False  # a pair leaving the mask does not count: (0,1), (1,2) -> 0.6 / 2
    assert float(edge_error(blurred[:3], ref, mask)) == pytest.approx(0.3, rel=1e-6)


def test_maps_edge_weight_adds_the_edge_term_to_each_map(setup) -> None:  # type: ignore[no-untyped-def]
    """The edge term is ``edge_weight × edge_error`` of each soft map.

    It grows with a blur across the GM/WM interface more than the per-voxel mean does.
    """
    from spurig_core.training.maps_loss import edge_error

    loss, tg, target, scan = setup
    basis = scan_basis(scan, torch.device("cpu"))
    edged = MatchedMapsLoss(basis, scan.sequence, atoms=16, edge_weight=2.0)
    r = scan.reference
    x = _noisy(target, 0.01, seed=5)
    lt1, lt2 = loss.soft_maps(x, tg)
    e1, e2 = loss(x, tg)
    f1, f2 = edged(x, tg)
    assert float(f1) == pytest.approx(float(e1 + 2 * edge_error(lt1, tg.log_t1, tg.mask)), rel=1e-5)
    assert float(f2) == pytest.approx(float(e2 + 2 * edge_error(lt2, tg.log_t2, tg.mask)), rel=1e-5)
    blur = _blur_across_labels(x, r.tissue, 2, 3)
    b1, _ = loss.soft_maps(blur, tg)
    grow_edge = float(edge_error(b1, tg.log_t1, tg.mask) - edge_error(lt1, tg.log_t1, tg.mask))
    grow_mean = float(loss(blur, tg)[0] - e1)
    assert grow_edge > grow_mean > 0
    # differentiable through the soft maps
    xg = x.clone().requires_grad_(True)
    sum(edged(xg, tg)).backward()  # type: ignore[union-attr]
    assert xg.grad is not None and bool(torch.isfinite(torch.view_as_real(xg.grad)).all())
    for bad in (-0.1, 101.0, math.nan):
        with pytest.raises(InputError, match="maps_edge_weight"):
            MatchedMapsLoss(basis, scan.sequence, edge_weight=bad)


def test_edge_l1_weighs_the_errors_differences_between_neighbours(setup) -> None:  # type: ignore[no-untyped-def]
    """Oracle: numpy differences of the error over the pairs touching GM/WM."""
    import numpy as np

    from spurig_core.training.losses import edge_l1

    _loss, _tg, target, scan = setup
    tissue = scan.reference.tissue
    assert float(edge_l1(target + 0.2 * target.abs().max(), target, tissue)) == pytest.approx(
        0.0, abs=1e-6
    )  # a uniform error has no edges
    x = _noisy(target, 0.02, seed=6)
    err = torch.view_as_real(x - target).numpy()  # (k, x, y, z, 2)
    quant = np.isin(tissue.numpy(), (2, 3))
    total, pairs = 0.0, 0
    for ax in range(3):
        d = np.abs(np.diff(err, axis=ax + 1)).sum(axis=(0, -1))
        n = quant.shape[ax] - 1
        w = np.take(quant, range(n), axis=ax) | np.take(quant, range(1, n + 1), axis=ax)
        total += float(d[w].sum())
        pairs += int(w.sum())
    assert float(edge_l1(x, target, tissue)) == pytest.approx(total / pairs, rel=1e-4)
    batched = edge_l1(
        x[None].repeat(2, 1, 1, 1, 1),
        target[None].repeat(2, 1, 1, 1, 1),
        tissue[None].repeat(2, 1, 1, 1),
    )
    assert float(batched) == pytest.approx(total / pairs, rel=1e-4)
    blur = _blur_across_labels(target, tissue, 2, 3)
    assert float(edge_l1(blur, target, tissue)) > 0
    want = recipe_loss(x, target, tissue) + 3 * edge_l1(x, target, tissue)
    assert float(recipe_loss(x, target, tissue, edge_weight=3.0)) == pytest.approx(
        float(want), rel=1e-6
    )
    with pytest.raises(InputError, match="differ"):
        edge_l1(x[:, :-1], target, tissue)
