"""What the training recipe validates and selects on (issue 13): PSNR and the T1/T2 maps."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.io import load_checkpoint, load_scan
from spurig_core.pipeline import reference_coefficients
from spurig_core.recon.data_term import scan_basis
from spurig_core.simulation import simulate
from spurig_core.training.losses import fingerprint_loss, recipe_loss
from spurig_core.training.recipe import load_recipe_config, run_recipe
from spurig_core.training.validation import (
    load_maps_reference,
    selection_score,
    val_metrics,
)
from test_recipe import _config, cohort  # noqa: F401  (the module's cohort fixture)


def _labels(shape: tuple[int, ...]) -> torch.Tensor:
    tis = torch.zeros(shape, dtype=torch.uint8)
    tis[..., : shape[-1] // 2] = 2  # GM
    tis[..., -1] = 4  # other: not counted
    return tis


def test_fingerprint_loss_measures_directions_in_grey_and_white_matter() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn((5, 4, 4, 4), dtype=torch.complex64, generator=g)
    tis = _labels((4, 4, 4))
    # a voxel's norm is its PD: scaling it (by a positive factor per voxel) costs nothing
    scale = 0.5 + torch.rand((1, 4, 4, 4), generator=g)
    assert float(fingerprint_loss(t * scale, t, tis)) == pytest.approx(0.0, abs=1e-6)
    # another direction costs, and only where the labels count
    other = t.clone()
    other[1] = -other[1]
    assert float(fingerprint_loss(other, t, tis)) > 0.1
    outside = t.clone()
    outside[:, :, :, 2:] = torch.randn((5, 4, 4, 2), dtype=torch.complex64, generator=g)
    assert float(fingerprint_loss(outside, t, tis)) == pytest.approx(0.0, abs=1e-6)
    # a batch gives the mean over its voxels; the weight adds it to the recipe loss
    batched = fingerprint_loss(
        other[None].expand(2, -1, -1, -1, -1),
        t[None].expand(2, -1, -1, -1, -1),
        tis[None].expand(2, -1, -1, -1),
    )
    assert float(batched) == pytest.approx(float(fingerprint_loss(other, t, tis)), rel=1e-5)
    base = float(recipe_loss(other, t, tis))
    assert float(recipe_loss(other, t, tis, fingerprint_weight=2.0)) == pytest.approx(
        base + 2 * float(fingerprint_loss(other, t, tis)), rel=1e-5
    )
    # no grey or white matter: zero, with a gradient path
    x = t.clone().requires_grad_(True)
    none = fingerprint_loss(x, t, torch.zeros((4, 4, 4), dtype=torch.uint8))
    none.backward()
    assert float(none.detach()) == 0.0 and x.grad is not None


def test_fingerprint_loss_weighs_tissues_as_told() -> None:
    """Per-label weights: GM only is the mean over GM; (3, 1) the weighted voxel mean."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn((5, 4, 4, 4), dtype=torch.complex64, generator=g)
    x = torch.randn((5, 4, 4, 4), dtype=torch.complex64, generator=g)
    tis = _labels((4, 4, 4))
    u = lambda a: a / torch.linalg.vector_norm(a, dim=0, keepdim=True)  # noqa: E731
    dist = torch.linalg.vector_norm(u(x) - u(t), dim=0)
    gm, wm = dist[tis == 2], dist[tis == 3]
    only_gm = fingerprint_loss(x, t, tis, (0.0, 0.0, 1.0))
    assert float(only_gm) == pytest.approx(float(gm.mean()), rel=1e-5)
    both = float(fingerprint_loss(x, t, tis, (0.0, 0.0, 3.0, 1.0, 0.0)))
    expect = (3 * gm.sum() + wm.sum()) / (3 * gm.numel() + wm.numel())
    assert both == pytest.approx(float(expect), rel=1e-5)
    assert float(fingerprint_loss(x, t, tis)) == pytest.approx(
        float(torch.cat([gm, wm]).mean()), rel=1e-5
    )
    with pytest.raises(InputError, match="weights"):
        fingerprint_loss(x, t, tis, (0.0, 0.0, -1.0, 1.0))


def test_selection_score_rules() -> None:
    base = {"psnr": 24.0, "t1": 0.2, "t2": 0.3}
    assert selection_score(base, base, "psnr") == 24.0
    assert selection_score(base, base, "error-ratio") == pytest.approx(-1.0)
    half = {"psnr": 24.0 + 20 * math.log10(2), "t1": 0.1, "t2": 0.15}
    assert selection_score(half, base, "error-ratio") == pytest.approx(-0.5)
    # worse maps can outweigh a better image
    sharper = {"psnr": 25.0, "t1": 0.3, "t2": 0.45}
    assert selection_score(sharper, base, "error-ratio") < selection_score(
        base, base, "error-ratio"
    )
    with pytest.raises(InputError, match="val_scans"):
        selection_score({"psnr": 24.0}, {"psnr": 23.0}, "error-ratio")
    with pytest.raises(InputError, match="select"):
        selection_score(base, base, "ssim")


@pytest.fixture(scope="module")
def scan16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("valscans")
    return simulate(root / "s2.h5", matrix=16, coils=2, groups=2, seed=1, phantom="analytic")


def test_matching_the_reference_coefficients_recovers_the_maps(scan16: Path) -> None:
    """Oracle: the ground truth's own coefficients match to its T1/T2; noise raises the errors."""
    scan = load_scan(scan16)
    target = reference_coefficients(scan)
    ex = SimpleNamespace(
        target=target,
        tissue=scan.reference.tissue,
        basis=scan_basis(scan, torch.device("cpu")),
        sequence=scan.sequence,
    )
    ref = load_maps_reference(scan16.parent, "s2")
    exact = val_metrics(target, ex, ref)
    assert exact["t1"] < 0.05 and exact["t2"] < 0.05 and exact["psnr"] > 60
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(target.shape, dtype=torch.complex64, generator=g)
    noisy = val_metrics(target + 0.1 * target.abs().max() * noise, ex, ref)
    assert noisy["t1"] > 2 * exact["t1"] and noisy["t2"] > 2 * exact["t2"]
    assert noisy["psnr"] < exact["psnr"] - 20
    assert set(val_metrics(target, ex)) == {"psnr"}  # without a reference: PSNR only
    with pytest.raises(InputError, match="does not exist"):
        load_maps_reference(scan16.parent, "nobody")
    # the maps and B1 are those load_scan reads; a scan without ground truth is refused
    assert torch.equal(ref.reference.t1_ms, scan.reference.t1_ms)
    assert torch.equal(ref.reference.tissue, scan.reference.tissue)
    assert ref.b1 is not None and scan.b1 is not None and torch.equal(ref.b1, scan.b1)
    import shutil

    import h5py

    bare = scan16.parent / "bare" / "s2.h5"
    bare.parent.mkdir(exist_ok=True)
    shutil.copy(scan16, bare)
    with h5py.File(bare, "a") as f:
        del f["reference"]
    with pytest.raises(InputError, match="no reference"):
        load_maps_reference(bare.parent, "s2")


def test_run_selects_on_the_maps_and_records_them(
    cohort: Path,  # noqa: F811
    scan16: Path,
    tmp_path: Path,
) -> None:
    with pytest.raises(InputError, match="val_scans"):
        load_recipe_config(_config(cohort, tmp_path / "bad", select="error-ratio"))
    with pytest.raises(InputError, match="select"):
        load_recipe_config(_config(cohort, tmp_path / "bad2", select="ssim"))
    for bad in ([0.0, 0.0, -1.0, 1.0, 0.0], [0.0] * 5):
        with pytest.raises(InputError, match="fingerprint_tissues"):
            load_recipe_config(_config(cohort, tmp_path / "bad4", fingerprint_tissues=bad))
    noval = tmp_path / "noval"
    noval.mkdir()
    (noval / "train").symlink_to(cohort / "train")
    with pytest.raises(InputError, match="validation subjects"):
        run_recipe(
            _config(noval, tmp_path / "bad3", val_scans=str(scan16.parent), select="error-ratio")
        )
    cfg = _config(
        cohort,
        tmp_path / "run",
        val_scans=str(scan16.parent),
        select="error-ratio",
        fingerprint_weight=0.5,
    )
    lines: list[str] = []
    model_path = run_recipe(cfg, log=lines.append)
    assert "T1" in lines[0] and "T2" in lines[0]
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(r["update"]) for r in rows] == [0, 5, 10]
    assert float(rows[0]["val_score"]) == pytest.approx(-1.0)  # the DC-only state
    best = max(rows, key=lambda r: float(r["val_score"]))
    meta = load_checkpoint(model_path)
    assert meta["select"] == "error-ratio"
    got = meta["best_val_metrics"]
    assert got["t1"] == pytest.approx(float(best["val_t1"]))
    assert got["psnr"] == pytest.approx(float(best["val_psnr"]))
    assert meta["best_val_psnr"] == pytest.approx(float(best["val_psnr"]))
