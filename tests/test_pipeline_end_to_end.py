"""End-to-end runs of the user-facing jobs on tiny data: demo, bench, prepare-training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from spurig_core import load_result
from spurig_core.benchmark import bench, format_table
from spurig_core.simulation import simulate

# Seconds-long settings: a short iGROG kernel fit and few FISTA iterations.
FAST = {"gridding": {"steps": 150, "train_sets": 256}, "llr": {"iterations": 4}}
# Faster still for the timing harness: nearest-neighbour gridding without a kernel.
NO_KERNEL = {"gridding": {"learned_kernel": False, "n_sources": 1}, "llr": {"iterations": 4}}


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "tiny.h5"
    return simulate(path, matrix=16, coils=3, groups=4, seed=5, phantom="analytic")


def test_demo_tiny_writes_results_figures_and_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spurig_core.cli", "-q", "demo", "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert "llr: PSNR c1" in proc.stdout and "adjoint: PSNR c1" in proc.stdout
    # the shipped 30 s model runs on the tiny 4-group scan (SPUR-iG is the demo's first method)
    assert "spurig: PSNR c1" in proc.stdout and "SPUR-iG skipped" not in proc.stdout
    for method in ("spurig", "llr", "adjoint"):
        res = load_result(tmp_path / f"{method}-30s.zarr")
        assert res.t1_ms is not None and res.t2_ms is not None  # matched
    report = (tmp_path / "report.md").read_text()
    assert "Table 1" in report or "PSNR" in report
    figs = sorted((tmp_path / "figures").glob("*.png"))
    assert len(figs) == 4
    for f in figs:
        w, h = Image.open(f).size
        assert w > 200 and h > 200
    assert list((tmp_path / "nifti-spurig").glob("*.nii.gz"))


def test_bench_runs_each_method_in_its_own_process(tiny_scan: Path) -> None:
    report = bench(scan=tiny_scan, groups=4, methods=("adjoint", "llr"), config=NO_KERNEL)
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"adjoint", "llr"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["runtime_s"] > 0 and r["peak_rss_mb"] > 0
        # the simulated scan has ground truth: quality is reported next to speed
        assert 0 < r["psnr"] < 100 and 0 < r["ssim"] <= 1
    assert rows["llr"]["psnr"] > rows["adjoint"]["psnr"]
    assert rows["llr"]["gridding_s"] > 0 and rows["adjoint"]["gridding_s"] == 0
    # one shared gridding: its seconds are added to the gridded method's runtime
    shared = report["gridding"]
    assert "error" not in shared and shared["peak_rss_mb"] > 0
    assert rows["llr"]["gridding_shared"] and not rows["adjoint"]["gridding_shared"]
    assert rows["llr"]["gridding_s"] == shared["gridding_s"]
    assert rows["llr"]["runtime_s"] > shared["gridding_s"]
    assert report["gram"]["gram_nufft_s"] > 0 and report["gram"]["gram_gridded_s"] > 0
    table = format_table(report)
    assert "| llr |" in table and "× vs LLR" in table and "One gram application" in table
    assert "iGROG, once for all gridded methods" in table
    assert f"| {rows['llr']['psnr']:.2f} |" in table


def test_bench_grids_once_per_grid(tiny_scan: Path) -> None:
    """The model's methods share the model's gridding; LLR gets its own on its 2x grid."""
    report = bench(
        scan=tiny_scan, groups=4, methods=("dc-only", "llr"), config=NO_KERNEL, gram_repeats=1
    )
    rows = {r["method"]: r for r in report["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    griddings = {tuple(g["methods"]): g for g in report["griddings"]}
    assert set(griddings) == {("dc-only",), ("llr",)}
    for name, g in griddings.items():
        assert "error" not in g and rows[name[0]]["gridding_s"] == g["gridding_s"]
    assert griddings[("llr",)]["gridding_config"]["grid_oversampling"] == 2.0
    assert griddings[("dc-only",)]["gridding_config"]["grid_oversampling"] == 1.5
    table = format_table(report)
    assert "iGROG, for llr (grid ×2):" in table and "iGROG, for dc-only (grid ×1.5):" in table
    assert "One gram application" in table  # on the model's gridding


def test_bench_reports_a_method_that_cannot_run(tiny_scan: Path) -> None:
    # only a 2-min hybrid model ships: the 4-group (30 s) scan has none
    report = bench(scan=tiny_scan, groups=4, methods=("hybrid",), gram_repeats=0, config=FAST)
    (row,) = report["rows"]
    assert "no shipped hybrid model for the 30s scan" in row["error"]
    table = format_table(report)
    assert "n/a" in table and "gram" not in report and "One gram application" not in table


def test_prepare_training_cli_rejects_an_empty_cohort(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spurig_core.cli", "prepare-training", str(tmp_path), "out"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no <split>/*.h5 scans" in proc.stderr and "Traceback" not in proc.stderr


def test_reconstruct_reuses_gridded_data(tiny_scan: Path) -> None:
    """Gridding once and passing ``gridded=`` gives what a fresh gridding gives (same seed)."""
    import torch

    from spurig_core import load_scan
    from spurig_core.config import from_dict
    from spurig_core.errors import InputError
    from spurig_core.operators.igrog import GriddingConfig, grid_scan
    from spurig_core.pipeline import reconstruct

    scan = load_scan(tiny_scan)
    # on LLR's own grid (Method.grid_oversampling), as a fresh gridding for LLR is
    settings = {**FAST["gridding"], "grid_oversampling": 2.0}
    gridded, _ = grid_scan(scan, config=from_dict(GriddingConfig, settings))
    fresh = reconstruct(scan, method="llr", groups=4, config=FAST)
    reused = reconstruct(scan, method="llr", groups=4, config=FAST, gridded=gridded)
    torch.testing.assert_close(reused.coefficients, fresh.coefficients, rtol=1e-4, atol=1e-5)
    assert reused.timings["gridding_reused"] == 1.0
    # a shorter scan takes the first groups of the gridded data (the kernel stays the whole
    # scan's: a fresh gridding of 2 groups would fit its kernel to their displacements only)
    short = reconstruct(scan, method="llr", groups=2, config=FAST, gridded=gridded)
    again = reconstruct(scan, method="llr", groups=2, config=FAST, gridded=gridded.first_groups(2))
    assert short.groups == 2
    torch.testing.assert_close(short.coefficients, again.coefficients)
    with pytest.raises(InputError, match="do not cover"):
        reconstruct(scan, method="llr", groups=4, gridded=gridded.first_groups(2))


def test_evaluate_models_tool_writes_results_and_tables(tiny_scan: Path, tmp_path: Path) -> None:
    """tools/evaluate_models.py on one tiny subject: stores per method/duration and Table 1."""
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    (test_dir / "subj.h5").symlink_to(tiny_scan)
    out = tmp_path / "eval"
    tool = Path(__file__).resolve().parents[1] / "tools" / "evaluate_models.py"
    cmd = [sys.executable, str(tool), str(test_dir), str(out), "--methods", "adjoint,spurig"]
    proc = subprocess.run([*cmd, "--durations", "30s"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "skip spurig 30s" in proc.stdout or (out / "subj" / "spurig-30s.zarr").exists()
    res = load_result(out / "subj" / "adjoint-30s.zarr")
    assert res.groups == 4 and res.t1_ms is not None
    assert "| 30s | A^H b |" in (out / "report" / "table1.md").read_text()
    bad = subprocess.run([*cmd, "--durations", "2min"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr
    # --shard I/N: alternate scans, so two processes never share a subject folder
    (test_dir / "subk.h5").symlink_to(tiny_scan)
    half = tmp_path / "half"
    part = [sys.executable, str(tool), str(test_dir), str(half), "--methods", "adjoint"]
    proc = subprocess.run(
        [*part, "--durations", "30s", "--shard", "1/2", "--no-report"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in half.iterdir()) == ["subk"]
    bad = subprocess.run([*part, "--shard", "2/2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--shard '2/2'" in bad.stderr


def test_evaluate_models_config_overrides_llr_under_its_own_label(
    tiny_scan: Path, tmp_path: Path
) -> None:
    """``--config`` hands its [llr] table to every reconstruction; [gridding] only its grid."""
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    (test_dir / "subj.h5").symlink_to(tiny_scan)
    out = tmp_path / "eval"
    tool = Path(__file__).resolve().parents[1] / "tools" / "evaluate_models.py"
    cfg = tmp_path / "llr.toml"
    cfg.write_text('[llr]\niterations = 3\nthresholds = { "30s" = 0.5 }\n')
    grid = tmp_path / "grid.toml"  # a small kernel: the test is about the overrides
    grid.write_text("[gridding]\nsteps = 150\ntrain_sets = 256\n")
    cmd = [sys.executable, str(tool), str(test_dir), str(out), "--durations", "30s", "--no-report"]
    cmd += ["--gridding", str(grid), "--methods", "llr"]

    def llr(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *extra], capture_output=True, text=True)

    proc = llr("--label", "LLR tau 0.5", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    res = load_result(out / "subj" / "LLR_tau_0.5-30s.zarr")
    assert res.config["label"] == "LLR tau 0.5"
    assert res.config["llr"]["iterations"] == 3 and res.config["llr"]["threshold_used"] == 0.5
    # LLR on its own 2x grid, cached apart; the kernel settings are --gridding's
    assert res.config["gridding"]["grid_oversampling"] == 2.0
    assert res.config["gridding"]["steps"] == 150 and res.config["grid"] == [32, 32, 32]
    assert sorted(p.name for p in (out / "subj").glob("gridded*.pt")) == ["gridded-os2.pt"]
    # [gridding] may set the grid (LLR on the models' 1.5x grid, under a label), nothing else
    coarse = tmp_path / "coarse.toml"
    coarse.write_text("[gridding]\ngrid_oversampling = 1.5\n")
    proc = llr("--label", "LLR 1.5x", "--config", str(coarse))
    assert proc.returncode == 0, proc.stderr
    res = load_result(out / "subj" / "LLR_1.5x-30s.zarr")
    assert res.config["grid"] == [24, 24, 24] and res.config["gridding"]["steps"] == 150
    assert (out / "subj" / "gridded.pt").is_file()
    bad = llr("--config", str(grid))
    assert bad.returncode == 2 and "[gridding] steps, train_sets not allowed" in bad.stderr
    assert not (out / "subj" / "llr-30s.zarr").exists()


def test_prepare_training_reuses_llr_inputs_for_another_data_term(
    tiny_scan: Path, tmp_path: Path
) -> None:
    """``[inputs] llr_from`` re-prepares a cohort for a new data term without re-running LLR."""
    from spurig_core.errors import InputError
    from spurig_core.pipeline import prepare_training
    from spurig_core.training.datasets import load_example

    cohort = tmp_path / "cohort"
    (cohort / "train").mkdir(parents=True)
    (cohort / "train" / "subj.h5").symlink_to(tiny_scan)
    grid = "[gridding]\nsteps = 150\ntrain_sets = 256\n[llr]\niterations = 4\n"
    first_cfg = tmp_path / "first.toml"
    first_cfg.write_text(grid)
    prepare_training(
        cohort, tmp_path / "p1", durations=("30s",), splits=("train",), config=first_cfg
    )
    second_cfg = tmp_path / "second.toml"
    second_cfg.write_text(
        grid + '[encoding]\ndensity_compensation = 0.75\n[inputs]\nllr_from = "p1"\n'
    )
    prepare_training(
        cohort, tmp_path / "p2", durations=("30s",), splits=("train",), config=second_cfg
    )
    a = load_example(tmp_path / "p1" / "train" / "subj", durations=("30s",))
    b = load_example(tmp_path / "p2" / "train" / "subj", durations=("30s",))
    assert torch.equal(a.inputs["llr-30s"], b.inputs["llr-30s"])  # reused, not recomputed
    assert not torch.allclose(a.inputs["adjoint-30s"], b.inputs["adjoint-30s"])
    assert a.dc["30s"].operator["encoding"]["density_compensation"] == 0.5
    assert b.dc["30s"].operator["encoding"]["density_compensation"] == 0.75
    bad = tmp_path / "bad.toml"
    bad.write_text('[inputs]\nllr_from = "nowhere"\n')
    with pytest.raises(InputError, match="llr_from"):
        prepare_training(cohort, tmp_path / "p3", durations=("30s",), config=bad)
    bad.write_text('[inputs]\nllr_form = "p1"\n')
    with pytest.raises(InputError, match="unknown key"):
        prepare_training(cohort, tmp_path / "p3", durations=("30s",), config=bad)
