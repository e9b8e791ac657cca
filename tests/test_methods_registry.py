"""The method registry (recon/methods.py) drives the CLI, pipeline, report, figures and plugin.

``dc-only`` is the SPUR-iG unroll with an identity denoiser; one duration rule; the engine never
imports the plugin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spurig_core import pipeline
from spurig_core.cli import _parser, main
from spurig_core.durations import DURATIONS, nearest_duration
from spurig_core.errors import InputError
from spurig_core.io import load_result, load_scan
from spurig_core.metrics import evaluate
from spurig_core.operators.igrog import GriddingConfig, grid_scan
from spurig_core.recon.llr import LLRConfig
from spurig_core.recon.methods import METHODS, NAMES, get_method, gridded_names
from spurig_core.recon.trained import MODELS_DIR
from spurig_core.simulation import simulate

# seconds-long settings: nearest-neighbour gridding without a kernel, one FISTA iteration with a
# short power iteration
NO_KERNEL = {"learned_kernel": False, "n_sources": 1}
FAST = {"gridding": NO_KERNEL, "llr": {"iterations": 1, "power_iterations": 3}}
GROUPS = 4  # the 30 s duration: SPUR-iG and DC-only use the shipped spurig-30s.pt
HYBRID = MODELS_DIR / "hybrid-2min.pt"  # the only shipped hybrid model (any group count runs)


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reg") / "tiny.h5"
    return simulate(path, matrix=16, coils=3, groups=GROUPS, seed=5, phantom="analytic")


@pytest.fixture(scope="module")
def gridded(scan_path: Path) -> object:
    return grid_scan(load_scan(scan_path), config=GriddingConfig(**NO_KERNEL))[0]


@pytest.fixture(scope="module")
def results(scan_path: Path, gridded: object) -> dict:
    """Every registered method through ``pipeline.reconstruct`` (one shared gridding)."""
    scan = load_scan(scan_path)
    out = {}
    for name, m in METHODS.items():
        out[name] = pipeline.reconstruct(
            scan,
            method=name,
            groups=GROUPS,
            config=FAST,
            model=HYBRID if name == "hybrid" else None,
            gridded=gridded if m.gridded else None,
            save_iterations=True,
        )
    return out


def test_registry_entries_are_complete() -> None:
    assert NAMES == ("spurig", "hybrid", "dc-only", "llr", "llr-nufft", "adjoint")  # SPEC §2
    for m in METHODS.values():
        assert m.label and m.short and m.choice and m.summary
        assert m.data_term in ("gridded", "nufft")
        assert callable(m.runner())
        assert m.fallback is None or METHODS[m.fallback].data_term == "nufft"
        if m.model is not None:
            assert (MODELS_DIR / f"{m.model}-2min.pt").is_file()
    assert set(gridded_names()) == {"spurig", "hybrid", "dc-only", "llr"}
    with pytest.raises(InputError, match="method: 'fancy' is not one of spurig, hybrid, dc-only"):
        get_method("fancy")


def test_cli_offers_every_method() -> None:
    recon = _parser()._subparsers._group_actions[0].choices["recon"]  # type: ignore[union-attr]
    (action,) = [a for a in recon._actions if a.dest == "method"]
    assert tuple(action.choices) == NAMES


def test_every_method_runs_through_the_pipeline(results: dict, scan_path: Path) -> None:
    for name, res in results.items():
        assert res.method == name and res.groups == GROUPS
        assert res.coefficients.shape == (5, 16, 16, 16)
        assert bool(torch.isfinite(torch.view_as_real(res.coefficients)).all())
        assert (res.model is not None) == METHODS[name].needs_model, name
        assert ("gridding" in res.config) == METHODS[name].gridded, name
        assert res.iterations is not None
    # the adjoint's norm-matched scale and DC-only's first iterate share s·A^H b only in value
    # range; every method differs from the adjoint it starts from (except the adjoint itself)
    adj = results["adjoint"].coefficients
    for name in ("dc-only", "llr", "llr-nufft"):
        assert not torch.allclose(results[name].coefficients, adj), name


def test_dc_only_is_the_unroll_with_identity_denoiser(
    results: dict, scan_path: Path, gridded: object
) -> None:
    """dc-only = the model's number of gradient steps of 1/L from s·A^H b on its data term.

    ``L`` is the data term's (kept with the gridding, issue #14); the unroll's former 8-iteration
    power estimate from ``A^H b`` is within a few per cent of it.
    """
    from spurig_core.recon.data_term import build_data_term, coil_maps, scan_basis
    from spurig_core.recon.trained import load_method_model
    from spurig_core.recon.unrolled import estimate_lipschitz, scaled_init

    scan = load_scan(scan_path)
    cpu = torch.device("cpu")
    basis = scan_basis(scan, cpu)
    model = load_method_model(None, method="dc-only", duration="30s", basis=basis)
    assert model.path.name == "spurig-30s.pt"  # SPUR-iG's model of the duration
    term = build_data_term(
        "gridded",
        scan,
        coil_maps(scan, cpu),
        basis,
        overrides={},
        encoding=model.encoding,
        gridded=gridded,
    )
    cfg = model.meta["config"]
    x, _ = scaled_init(term.op, term.ahb, term.b_norm)
    lip = term.lipschitz
    assert lip is not None
    power = estimate_lipschitz(term.op, term.ahb, iters=cfg.power_iters)
    assert lip == pytest.approx(power, rel=0.03)  # two estimates of the same norm
    for _ in range(cfg.steps * cfg.dc_steps):  # dc_steps gradient steps per block
        x = x - (term.op.gram(x) - term.ahb) / lip
    res = pipeline.reconstruct(
        scan, method="dc-only", groups=GROUPS, gridded=gridded, save_iterations=True
    )
    assert res.iterations is not None and res.iterations.shape[0] == cfg.steps + 1
    assert res.config["denoiser"] == "identity" and res.config["unroll"]["mu_init"] == 1.0
    assert res.config["encoding"]["density_compensation"] == model.encoding["density_compensation"]
    torch.testing.assert_close(res.coefficients, x.to(torch.complex64), rtol=1e-4, atol=1e-6)
    # the trained network differs from its DC-only baseline only by its denoiser and steps
    spurig = results["spurig"]
    assert spurig.model == res.model
    assert not torch.equal(spurig.coefficients, res.coefficients)


def test_cli_recon_dc_only(scan_path: Path, tmp_path: Path) -> None:
    out, cfg = tmp_path / "dc.zarr", tmp_path / "fast.toml"
    cfg.write_text("[gridding]\nlearned_kernel = false\nn_sources = 1\n")
    args = ["-q", "recon", str(scan_path), str(out), "--method", "dc-only", "--duration", "30s"]
    assert main([*args, "--config", str(cfg)]) == 0
    res = load_result(out)
    assert res.method == "dc-only" and res.model is not None
    assert res.model["file"] == "spurig-30s.pt"


def test_report_and_figures_name_every_method(results: dict, scan_path: Path) -> None:
    from spurig_core.figures import _NAMES, _ordered_columns
    from spurig_core.report import METHOD_LABELS, table1

    scan = load_scan(scan_path)
    # a Table 1 of one subject from real results of every method
    evals = [{**evaluate(res, scan), "subject": "s1"} for res in results.values()]
    table = table1(evals)
    labels = [row[1] for row in table.rows]
    assert [METHOD_LABELS[n] for n in NAMES] == [m.label for m in METHODS.values()]
    assert all(min(e["psnr"]) > 5.0 for e in evals)
    for name in NAMES:
        assert METHOD_LABELS[name] in labels, name
        assert _NAMES[name] == METHODS[name].short
    assert "DC only" in labels
    cols = _ordered_columns({"30s": {n: None for n in reversed(NAMES)}})
    assert cols == ["adjoint", *(n for n in NAMES if n != "adjoint")]


def test_plugin_menu_is_the_registry(scan_path: Path, tmp_path: Path) -> None:
    from napari_spurig._jobs import METHODS as MENU
    from napari_spurig._jobs import ReconstructParams

    assert tuple(MENU.values()) == NAMES
    assert list(MENU) == [m.choice for m in METHODS.values()]
    for name in NAMES:
        ReconstructParams(scan_path, tmp_path / f"{name}.zarr", method=name).validate()


def test_one_duration_rule() -> None:
    for name, groups in DURATIONS.items():
        assert nearest_duration(groups) == name
    assert nearest_duration(12) == "2min" and nearest_duration(6) == "1min"  # ties: longer
    assert nearest_duration(30) == "2min" and nearest_duration(33) == "6min"
    assert nearest_duration(1) == "7.5s" and nearest_duration(3) == "30s"  # tie: longer
    assert nearest_duration(1, among=("2min", "1min", "30s")) == "30s"
    assert nearest_duration(500) == "6min"
    assert nearest_duration(30, among=("30s", "1min")) == "1min"
    cfg = LLRConfig()
    for groups in (3, 5, 6, 11, 12, 13, 30, 33, 40):
        want = cfg.thresholds[nearest_duration(groups, among=cfg.thresholds)]
        assert cfg.threshold_for(groups=groups) == want


def test_engine_imports_without_the_plugin() -> None:
    """The engine never imports napari or the plugin (``launch_gui`` lives in the CLI)."""
    code = """
import sys
sys.modules["napari"] = None
sys.modules["napari_spurig"] = None
import spurig_core
from spurig_core import (benchmark, cli, cohort, cohort_jobs, demo, figures, pipeline,
                         report)
from spurig_core.recon import dc_only, methods, trained
cli._parser()
assert not any(m.startswith(("napari", "qtpy", "PyQt")) for m in sys.modules if sys.modules[m])
assert not hasattr(pipeline, "launch_gui") and hasattr(cli, "launch_gui")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_llr_grids_on_its_own_finer_grid(
    scan_path: Path, gridded: object, results: dict, caplog
) -> None:
    """LLR's 2x grid (Method.grid_oversampling) unless the user says otherwise; no shared grid."""
    import logging

    from spurig_core.memory import recon_estimates
    from spurig_core.operators.grid import grid_shape
    from spurig_core.recon.trained import gridding_groups

    scan = load_scan(scan_path)
    fine, coarse = list(grid_shape((16, 16, 16), 2.0)), list(grid_shape((16, 16, 16), 1.5))
    assert fine != coarse and METHODS["llr"].grid_oversampling == 2.0
    llr = pipeline.reconstruct(scan, method="llr", groups=GROUPS, config=FAST)
    assert llr.config["grid"] == fine and llr.config["gridding"]["grid_oversampling"] == 2.0
    # LLR-NUFFT counts its density weights on the same grid (the same problem), the adjoint not
    assert results["llr-nufft"].config["density_grid_oversampling"] == 2.0
    assert results["adjoint"].config["density_grid_oversampling"] == 1.5
    dc = pipeline.reconstruct(scan, method="dc-only", groups=GROUPS, config=FAST)
    assert dc.config["grid"] == coarse  # the model's training data's grid
    user = {**FAST, "gridding": {**NO_KERNEL, "grid_oversampling": 1.5}}
    assert pipeline.reconstruct(scan, method="llr", config=user).config["grid"] == coarse
    # the callers that grid once (demo, bench, recon-cohort) grid once per group
    groups = gridding_groups(["spurig", "dc-only", "llr", "adjoint"], "30s", overrides=FAST)
    assert [(g["grid_oversampling"], names) for g, names in groups] == [
        (1.5, ("spurig", "dc-only")),
        (2.0, ("llr",)),
    ]
    assert all(g["n_sources"] == 1 for g, _ in groups)  # the user's settings in every group
    (one,) = gridding_groups(["spurig", "llr"], "30s", overrides=user)
    assert one[1] == ("spurig", "llr")
    # a gridding reused on another grid than the method's settings ask for is said, not hidden
    with caplog.at_level(logging.WARNING, logger="spurig"):
        reused = pipeline.reconstruct(scan, method="llr", config=FAST, gridded=gridded)
    assert reused.config["grid"] == coarse
    assert f"llr: the gridded data are on a {'x'.join(map(str, coarse))} grid" in caplog.text
    # the memory check counts the method's own grid
    sizes = {"matrix": (64, 64, 64), "coils": 10, "groups": 16, "tr": 500, "samples": 300}
    need = {m: max(b for _, b in recon_estimates(method=m, **sizes)) for m in ("llr", "spurig")}
    assert need["llr"] > need["spurig"]
