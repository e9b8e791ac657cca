"""The v2 training recipe (issue 13): DC formulations, re-drawn noise, the resumable run."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from spurig_core.config import to_dict
from spurig_core.errors import InputError
from spurig_core.io import save_checkpoint
from spurig_core.operators.base import LinearOperator
from spurig_core.recon.dc import cg_dc, gradient_dc
from spurig_core.recon.unrolled import UnrollConfig, UnrolledRecon, estimate_lipschitz, scaled_init
from spurig_core.recon.unrolled_io import load_model
from spurig_core.training.datasets import DCData, Example, save_example
from spurig_core.training.losses import recipe_loss
from spurig_core.training.recipe import RecipeTrainer, load_recipe_config, run_recipe
from spurig_core.training.redraw import NOISE_KIND, load_noise, scan_noise
from test_training import SEQ, N
from test_unrolled import make_problem, tiny_cfg


# ----------------------------------------------------------------------------------------------
# DC formulations
# ----------------------------------------------------------------------------------------------
def test_cg_dc_solves_the_proximal_system() -> None:
    op, _, b = make_problem(n=8, seed=3)
    ahb = op.adjoint(b)
    z = torch.randn(ahb.shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    lam = 0.3 * estimate_lipschitz(op, ahb, iters=20)
    x = cg_dc(op, ahb, z, lam, 60)
    # the normal equations hold: (A^H A + λ) x = A^H b + λ z
    res = op.gram(x) + lam * x - (ahb + lam * z)
    assert float(res.norm() / (ahb + lam * z).norm()) < 1e-4
    # zero iterations leave z, and more iterations never move away from the solution
    assert torch.equal(cg_dc(op, ahb, z, lam, 0), z)
    e = [float((cg_dc(op, ahb, z, lam, k) - x).norm()) for k in (1, 3, 9)]
    assert e[0] > e[1] > e[2]


def test_gradient_dc_steps_compose() -> None:
    op, _, b = make_problem(n=8, seed=4)
    ahb = op.adjoint(b)
    mu = 1.0 / estimate_lipschitz(op, ahb)
    x0 = ahb * 0.5
    one = gradient_dc(op, ahb, x0, mu)
    torch.testing.assert_close(one, x0 - mu * (op.gram(x0) - ahb))
    torch.testing.assert_close(gradient_dc(op, ahb, x0, mu, 2), gradient_dc(op, ahb, one, mu))


def test_cg_model_round_trip_and_old_configs_default_to_gradient(tmp_path: Path) -> None:
    from spurig_core.recon.unrolled_io import model_state

    cfg = tiny_cfg(steps=2, dc="cg", dc_steps=2, lambda_init=0.2)
    model = UnrolledRecon(cfg)
    assert model.log_lam.shape == (2,)
    op, _truth, b = make_problem(n=N, tr=SEQ.n_tr, seed=0)
    st = model_state(model, sequence=SEQ, basis=op.phi, extra={"stage": "recipe"})
    save_checkpoint(st, tmp_path / "m.pt")
    back, meta = load_model(tmp_path / "m.pt", method="spurig")
    assert meta["config"].dc == "cg" and meta["config"].dc_steps == 2
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    with torch.no_grad():
        torch.testing.assert_close(back(op, ahb, x0), model(op, ahb, x0))
    # a config written before these fields existed reads as the shipped gradient DC
    old = to_dict(tiny_cfg(steps=2))
    for k in ("dc", "dc_steps", "lambda_init"):
        old.pop(k)
    plain = UnrolledRecon(tiny_cfg(steps=2))
    st = model_state(plain, sequence=SEQ, basis=op.phi, extra={"stage": "gleam"})
    st["config"] = old
    save_checkpoint(st, tmp_path / "old.pt")
    again, meta = load_model(tmp_path / "old.pt", method="spurig")
    assert meta["config"].dc == "gradient" and not hasattr(again, "log_lam")
    with pytest.raises(InputError, match="dc"):
        UnrollConfig(dc="admm")


# ----------------------------------------------------------------------------------------------
# noise regeneration
# ----------------------------------------------------------------------------------------------
def test_scan_noise_is_the_simulators_noise() -> None:
    from spurig_core.simulation import SimulationConfig, simulate_scan

    base = SimulationConfig(matrix=16, coils=2, groups=1)
    noisy = simulate_scan(base, seed=11)
    clean = simulate_scan(dataclasses.replace(base, noise=0.0), seed=11)
    n, sigma = scan_noise(noisy.kspace, 11, base.noise)
    resid = noisy.kspace - n - clean.kspace
    assert float(resid.abs().max()) < 1e-3 * float(n.abs().max())
    assert sigma == pytest.approx(float(n.abs().pow(2).mean().sqrt()), rel=0.02)
    # another seed's noise is not this scan's
    wrong, _ = scan_noise(noisy.kspace, 12, base.noise)
    assert float((noisy.kspace - wrong - clean.kspace).abs().max()) > float(n.abs().max())


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def _subject(root: Path, name: str, seed: int, draws: int = 3) -> None:
    op, truth, b = make_problem(n=N, tr=SEQ.n_tr, seed=seed)
    g = torch.Generator().manual_seed(50 + seed)
    clean_b = op(truth)
    noises = [b - clean_b] + [
        0.01 * torch.randn(b.shape, dtype=torch.complex64, generator=g) * op.mask[None]
        for _ in range(draws - 1)
    ]
    ahb = op.adjoint(b)
    b_norm = float(b.abs().norm())
    x0, s = scaled_init(op, ahb, b_norm)
    ax = torch.linspace(-1, 1, N)
    r2 = sum(t**2 for t in torch.meshgrid(ax, ax, ax, indexing="ij"))
    tissue = torch.where(r2 < 0.6, torch.where(r2 < 0.2, 3, 2), torch.where(r2 < 0.8, 1, 0))
    payload = {"type": "cartesian-test", "maps": op.maps, "phi": op.phi, "mask": op.mask}
    dc = DCData(ahb, b_norm, s, estimate_lipschitz(op, ahb, iters=20), payload)
    ex = Example(
        name, truth, tissue.to(torch.uint8), op.phi, SEQ, {"adjoint-1min": x0}, {"1min": dc}
    )
    d = save_example(ex, root / name)
    clean = op.adjoint(clean_b)
    save_checkpoint(
        {
            "kind": NOISE_KIND,
            "version": 1,
            "clean": clean,
            "draws": torch.stack([op.adjoint(n) for n in noises]),
            "b_norms": torch.tensor([float((clean_b + n).abs().norm()) for n in noises]).double(),
            "sigma": 0.01,
        },
        d / "noise-1min.pt",
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import test_training  # noqa: F401  (registers the "cartesian-test" operator)

    root = tmp_path_factory.mktemp("recipe")
    _subject(root / "train", "s0", 0)
    _subject(root / "train", "s1", 1)
    _subject(root / "val", "s2", 2)
    return root


def _config(cohort: Path, out: Path, **kw: object) -> Path:
    cfg = {
        "data_dir": str(cohort),
        "out_dir": str(out),
        "duration": "1min",
        "pretrain_updates": 4,
        "gleam_updates": 4,
        "finetune_updates": 2,
        "refresh_every": 4,
        "val_every": 5,
        "lr": 3e-3,
        "bf16": False,
        "model": to_dict(tiny_cfg(steps=2)),
        **kw,
    }
    p = out.parent / f"{out.name}.toml"
    p.write_text(tomli_w.dumps(cfg))
    return p


def test_noise_draws_add_up_to_the_scan(cohort: Path) -> None:
    nz = load_noise(cohort / "train" / "s0", "1min")
    from spurig_core.training.datasets import load_dc

    dc = load_dc(cohort / "train" / "s0", "1min")
    torch.testing.assert_close(nz.ahb(0), dc.ahb, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(nz.ahb(1), dc.ahb)


def test_first_cache_is_the_dc_only_unroll(cohort: Path, tmp_path: Path) -> None:
    cfg = load_recipe_config(_config(cohort, tmp_path / "run", fresh_noise=False))
    tr = RecipeTrainer(cfg)
    tr.refresh(identity=True)
    s = tr.train[0]
    dc = s.ex.dc["1min"]
    a = dc.x0
    for i in range(2):  # identity denoiser: the states are plain gradient steps
        a = a - (op_step := 1.0 / s.lip) * (s.op.gram(a) - dc.ahb)
        torch.testing.assert_close(s.states[i], a, rtol=1e-4, atol=1e-5)
    assert op_step > 0


def test_recipe_loss_counts_magnitudes() -> None:
    t = torch.ones((5, 4, 4, 4), dtype=torch.complex64)
    tis = torch.zeros((4, 4, 4), dtype=torch.uint8)
    rot = t * 1j  # same magnitude, other phase
    assert float(recipe_loss(rot, t, tis, magnitude_weight=1.0)) == pytest.approx(
        float(recipe_loss(rot, t, tis, magnitude_weight=0.0))
    )
    big = t * 2
    assert float(recipe_loss(big, t, tis, magnitude_weight=1.0)) > float(
        recipe_loss(big, t, tis, magnitude_weight=0.0)
    )


def test_run_selects_by_psnr_and_resumes(cohort: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    cfg_path = _config(cohort, tmp_path / "run")
    model_path = run_recipe(cfg_path, log=lines.append)
    _model, meta = load_model(model_path, method="spurig")
    assert meta["stage"] == "recipe" and meta["duration"] == "1min"
    import csv

    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(r["update"]) for r in rows] == [0, 5, 10]
    assert rows[0]["phase"] == "dc-only" and rows[-1]["phase"] == "finetune"
    best = max(float(r["val_psnr"]) for r in rows)
    from spurig_core.io import load_checkpoint

    assert load_checkpoint(model_path)["best_val_psnr"] == pytest.approx(best)
    # raising the update count and resuming continues from update 10, not from scratch
    text = cfg_path.read_text().replace("finetune_updates = 2", "finetune_updates = 7")
    cfg_path.write_text(text)
    lines.clear()
    run_recipe(cfg_path, resume=True, log=lines.append)
    assert lines[0].startswith("resumed at update 10")
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(r["update"]) for r in rows] == [0, 5, 10, 15]
    assert np.isfinite([float(r["val_psnr"]) for r in rows]).all()
    # resuming a finished run returns its model without training (or loading the subjects)
    lines.clear()
    assert run_recipe(cfg_path, resume=True, log=lines.append) == model_path
    assert lines == [f"finished at update 15 of 15: {model_path}"]


def test_rolling_refresh_takes_subjects_in_turn_and_new_ones_join(tmp_path: Path) -> None:
    import test_training  # noqa: F401  (registers the "cartesian-test" operator)

    root = tmp_path / "grow"
    for k in range(3):
        _subject(root / "train", f"s{k}", k)
    cfg = load_recipe_config(_config(root, tmp_path / "run", refresh_subjects=2))
    tr = RecipeTrainer(cfg)
    tr.refresh(identity=True)
    assert [s.ex.name for s in tr.rolling()] == ["s0", "s1"]
    assert [s.ex.name for s in tr.rolling()] == ["s2", "s0"]
    before = [s.states[0].clone() for s in tr.train]
    tr.refresh(identity=True, subjects=tr.rolling())  # s1, s2: new noise draws, s0 kept
    assert torch.equal(tr.train[0].states[0], before[0])
    # a subject prepared while the run goes on joins at the next refresh, states first
    _subject(root / "train", "s3", 3)
    assert [s.ex.name for s in tr.discover()] == ["s3"] and not tr.train[-1].states
    assert tr.discover() == []
    assert "s3" in [s.ex.name for s in tr.rolling()]


def test_subjects_prepared_during_end_to_end_training_join(tmp_path: Path) -> None:
    import test_training  # noqa: F401  (registers the "cartesian-test" operator)

    root = tmp_path / "grow"
    _subject(root / "train", "s0", 0)
    _subject(root / "val", "s2", 2)
    lines: list[str] = []

    def log(line: str) -> None:  # a subject finishes preparing while the run validates
        lines.append(line)
        if len(lines) == 1:
            _subject(root / "train", "s1", 1)

    kw = {"pretrain_updates": 0, "gleam_updates": 0, "finetune_updates": 6, "val_every": 3}
    run_recipe(_config(root, tmp_path / "run", refresh_every=2, **kw), log=log)
    assert any(ln.startswith("update 0: 1 new training subjects (2)") for ln in lines), lines


def test_cosine_learning_rate_falls_to_its_floor() -> None:
    from spurig_core.training.recipe import RecipeConfig

    cfg = RecipeConfig(
        "d",
        "o",
        pretrain_updates=10,
        gleam_updates=90,
        lr=1e-3,
        lr_schedule="cosine",
        lr_min_ratio=0.1,
    )
    assert cfg.lr_at(0) == pytest.approx(1e-3)
    assert cfg.lr_at(50) == pytest.approx(0.55e-3)
    assert cfg.lr_at(100) == pytest.approx(1e-4) and cfg.lr_at(500) == pytest.approx(1e-4)
    assert RecipeConfig("d", "o").lr_at(77) == 1e-3  # constant by default
    with pytest.raises(InputError, match="lr_schedule"):
        RecipeConfig("d", "o", lr_schedule="step")


# ----------------------------------------------------------------------------------------------
# the model's domain
# ----------------------------------------------------------------------------------------------
def test_domain_warning_names_what_is_outside() -> None:
    from spurig_core.recon.domain import SHIPPED_DOMAIN, check_domain

    meta = {"domain": SHIPPED_DOMAIN}
    vox = (220 / 48,) * 3
    assert check_domain(meta, matrix=(48, 48, 48), voxel_mm=vox, duration="2min") is None
    line = check_domain(meta, matrix=(48, 48, 48), voxel_mm=(1.0,) * 3, duration="2min")
    assert line is not None and "\n" not in line
    assert "voxel 1.00×1.00×1.00 mm (trained 4.58×4.58×4.58 mm)" in line
    line = check_domain(meta, matrix=(64, 64, 64), voxel_mm=vox, duration="6min", where="m.pt")
    assert line is not None and line.startswith("m.pt: scan outside")
    assert "matrix (64, 64, 64)" in line and "duration 6min" in line
    assert check_domain({"domain": None}, matrix=(8, 8, 8), voxel_mm=(9.0,) * 3) is None


def test_the_domain_check_counts_groups_not_the_nearest_name() -> None:
    """1 group is nearest to 15 s (2 groups) but is not 15 s: a 15-s model warns, naming it."""
    from spurig_core.recon.domain import SHIPPED_DOMAIN, check_domain

    meta = {"domain": {**SHIPPED_DOMAIN, "durations": ["15s"]}}
    vox, m = (220 / 48,) * 3, (48, 48, 48)
    assert check_domain(meta, matrix=m, voxel_mm=vox, duration="15s", groups=2) is None
    line = check_domain(meta, matrix=m, voxel_mm=vox, duration="15s", groups=1)
    assert line is not None and "duration 1 group (trained 15s)" in line
    line = check_domain(meta, matrix=m, voxel_mm=vox, duration="30s", groups=4)
    assert line is not None and "duration 30s (trained 15s)" in line
    line = check_domain(meta, matrix=m, voxel_mm=vox, duration="1min", groups=6)
    assert line is not None and "duration 6 groups (trained 15s)" in line


def test_shipped_model_warns_for_another_voxel_size() -> None:
    from types import SimpleNamespace

    from spurig_core.pipeline import _domain_warning
    from spurig_core.recon.trained import load_method_model

    loaded = load_method_model(None, method="spurig", duration="2min")
    assert loaded.meta["domain"]["matrix"] == [48, 48, 48]
    inside = SimpleNamespace(fov_mm=(220.0,) * 3, matrix=(48, 48, 48))
    _domain_warning(loaded, inside, "2min")  # type: ignore[arg-type]
    assert loaded.meta["warning"] is None
    outside = SimpleNamespace(fov_mm=(240.0,) * 3, matrix=(240, 240, 240))
    _domain_warning(loaded, outside, "2min")  # type: ignore[arg-type]
    assert "training domain" in loaded.meta["warning"] and "voxel 1.00" in loaded.meta["warning"]


def test_a_duration_without_a_shipped_model_takes_the_nearest_and_warns() -> None:
    """15 s, which the SPEC does not name, takes the nearest shipped model and warns.

    The SPEC's durations keep their own files (hybrid has only 2 min: 30 s stays an error).
    """
    from types import SimpleNamespace

    from spurig_core.errors import InputError
    from spurig_core.pipeline import _domain_warning
    from spurig_core.recon.trained import MODELS_DIR, load_method_model

    if (MODELS_DIR / "spurig-15s.pt").exists():
        pytest.skip("a 15-s model is shipped")
    loaded = load_method_model(None, method="spurig", duration="15s")
    assert loaded.path.name == "spurig-30s.pt"
    _domain_warning(loaded, SimpleNamespace(fov_mm=(220.0,) * 3, matrix=(48, 48, 48)), "15s")  # type: ignore[arg-type]
    assert "duration 15s (trained 30s)" in loaded.meta["warning"]
    with pytest.raises(InputError, match="no shipped hybrid model for the 30s scan"):
        load_method_model(None, method="hybrid", duration="30s")


def test_model_file_stands_in_only_for_durations_the_spec_does_not_name(tmp_path: Path) -> None:
    """tools/evaluate_models.py and the pipeline pick a model file by the same rule."""
    from spurig_core.recon.trained import model_file

    for name in ("spurig-2min.pt", "spurig-30s.pt", "hybrid-2min.pt"):
        (tmp_path / name).write_bytes(b"")
    assert model_file("spurig", "2min", tmp_path) == tmp_path / "spurig-2min.pt"
    assert model_file("spurig", "15s", tmp_path) == tmp_path / "spurig-30s.pt"
    assert model_file("hybrid", "15s", tmp_path) == tmp_path / "hybrid-2min.pt"
    assert model_file("spurig", "1min", tmp_path) is None  # a SPEC duration: its own file only
    assert model_file("spurig", "3min", tmp_path) is None
    (tmp_path / "spurig-15s.pt").write_bytes(b"")
    assert model_file("spurig", "15s", tmp_path) == tmp_path / "spurig-15s.pt"
    empty = tmp_path / "none"
    empty.mkdir()
    assert model_file("spurig", "15s", empty) is None


def test_recipe_model_records_its_domain(cohort: Path, tmp_path: Path) -> None:
    from spurig_core.io import load_checkpoint

    cfg = _config(cohort, tmp_path / "dom", pretrain_updates=1, gleam_updates=0)
    path = run_recipe(cfg, log=lambda _m: None)
    dom = load_checkpoint(path)["domain"]
    assert dom["matrix"] == [N, N, N] and dom["durations"] == ["1min"]
    _, meta = load_model(path, method="spurig")
    assert meta["domain"] == dom


def test_grid_many_is_grid_of_each() -> None:
    from spurig_core.operators.igrog import GriddingConfig, grid
    from spurig_core.operators.igrog_train import train_kernel
    from spurig_core.simulation import SimulationConfig, simulate_scan
    from spurig_core.training.redraw import grid_many

    scan = simulate_scan(SimulationConfig(matrix=16, coils=2, groups=1), seed=3)
    cfg = GriddingConfig(steps=5, hidden=16, train_sets=256, batch=16, check=False, grid_batch=4096)
    kernel = train_kernel(scan.calibration, scan.trajectory, scan.matrix, config=cfg)
    other = scan.kspace * 0.5j
    # grid()'s fast bf16 kernel evaluation (issue 14) differs by ~0.3 %; compare with the exact one
    exact = (
        {"kernel_eval": "reference"} if "kernel_eval" in inspect.signature(grid).parameters else {}
    )
    index, vals = grid_many(
        [scan.kspace, other], scan.trajectory, scan.matrix, kernel, cfg, extra=1, extra_sigma=1.0
    )
    for k, v in zip((scan.kspace, other), vals[:2], strict=True):
        ref = grid(k, scan.trajectory, scan.matrix, kernel=kernel, config=cfg, **exact)
        torch.testing.assert_close(v, ref.values, rtol=1e-4, atol=1e-5)
        assert torch.equal(index, ref.index)
    assert vals[2].abs().mean() > 0 and len(vals) == 3


def test_cube_symmetry_is_a_48_element_group_action() -> None:
    from spurig_core.training.augment import cube_symmetry

    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 2, 3, 4)
    y = cube_symmetry(x, (2, 0, 1), (0, 2))
    assert y.shape == (2, 4, 2, 3)
    # y[b, i, j, k] = x[b, j, 2 − k, 3 − i]: new x = old z (flipped), new y = old x, new z = old y
    assert y[1, 0, 1, 2] == x[1, 1, 0, 3] and y[0, 3, 0, 0] == x[0, 0, 2, 0]
    assert torch.equal(cube_symmetry(x, (0, 1, 2), ()), x)
    assert sorted(cube_symmetry(x, (1, 2, 0), (1,)).flatten().tolist()) == x.flatten().tolist()


def test_a_model_grids_the_scan_as_its_training_data_were(tmp_path: Path) -> None:
    from spurig_core.io import load_checkpoint, save_checkpoint
    from spurig_core.pipeline import reconstruct
    from spurig_core.recon.trained import MODELS_DIR, load_method_model
    from spurig_core.simulation import simulate

    state = load_checkpoint(MODELS_DIR / "spurig-30s.pt")
    # as the recipe records it: the data-defining fields of the training data's gridding
    state["gridding"] = {"hidden": 64, "steps": 40, "train_sets": 128, "source_spacing": 0.0}
    model = save_checkpoint(state, tmp_path / "m.pt")
    loaded = load_method_model(model, method="dc-only", duration="30s")
    assert loaded.gridding == state["gridding"]
    scan = simulate(tmp_path / "s.h5", matrix=16, coils=3, groups=4, seed=5, phantom="analytic")
    res = reconstruct(scan, method="dc-only", model=model)
    g = res.config["gridding"]
    assert (g["hidden"], g["steps"], g["train_sets"], g["source_spacing"]) == (64, 40, 128, 0.0)
    assert g["check"] is True  # the self-check is this run's, not the training data's
    # the user's [gridding] overrides still win; a model without the record grids by default
    res = reconstruct(scan, method="dc-only", model=model, config={"gridding": {"steps": 30}})
    assert (res.config["gridding"]["hidden"], res.config["gridding"]["steps"]) == (64, 30)
    assert load_method_model(None, method="hybrid", duration="2min").gridding == {}  # v1 model


@pytest.mark.parametrize("shared", [True, False])
def test_a_truncated_unroll_is_the_first_steps_of_the_trained_one(shared: bool, tmp_path: Path):
    from spurig_core.recon.unrolled_io import model_state, truncate_unroll

    torch.manual_seed(3)
    model = UnrolledRecon(tiny_cfg(steps=3, share_weights=shared)).eval()
    with torch.no_grad():  # not the identity (zero head) and not the same in every step
        for d in model.denoisers:
            d.unet.out.weight.normal_(0, 0.05)
        model.log_mu.copy_(torch.tensor([0.1, -0.2, 0.3]))
    op, _truth, b = make_problem(n=N, tr=SEQ.n_tr, seed=0)
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    lip = estimate_lipschitz(op, ahb, iters=20)
    with torch.no_grad():
        x = x0
        for i in range(2):  # the trained 3-step model, stopped after step 2
            x = model.denoiser(i)(model.dc_half(op, ahb, x, i, lip), i + 1)
        st = model_state(model, sequence=SEQ, basis=op.phi, extra={"stage": "recipe"})
        cut = truncate_unroll(st, 2, {"why": "test"})
        assert cut["unroll_steps"] == {"trained": 3, "kept": 2, "why": "test"}
        back, meta = load_model(save_checkpoint(cut, tmp_path / "cut.pt"), method="spurig")
        assert meta["config"].steps == 2
        torch.testing.assert_close(back(op, ahb, x0, lipschitz=lip), x)
    with pytest.raises(InputError, match="between 1 and the trained 3"):
        truncate_unroll(st, 4)


def test_preparing_a_short_duration_grids_only_its_groups(tmp_path: Path) -> None:
    from spurig_core.benchmark import load_gridded
    from spurig_core.operators.igrog import GriddingConfig
    from spurig_core.simulation import simulate
    from spurig_core.training.datasets import load_dc
    from spurig_core.training.redraw import prepare_redraw_subject

    path = tmp_path / "s.h5"
    simulate(path, matrix=16, coils=3, groups=8, seed=5, phantom="analytic")
    cfg = GriddingConfig(steps=5, hidden=16, train_sets=256, batch=16, check=False)
    kw = {"seed": 5, "durations": ["30s"], "draws": 2, "gridding": cfg}
    prepare_redraw_subject(path, tmp_path / "cut", **kw)  # grids the 4 groups of 30 s
    full = tmp_path / "gridded.pt"
    prepare_redraw_subject(path, tmp_path / "whole", gridded_out=full, **kw)  # all 8, kept
    assert load_gridded(full)[0].values.shape[1] == 8
    cut, whole = load_dc(tmp_path / "cut", "30s"), load_dc(tmp_path / "whole", "30s")
    torch.testing.assert_close(
        cut.ahb, whole.ahb, rtol=2e-3, atol=2e-3 * float(whole.ahb.abs().max())
    )
    assert cut.b_norm == pytest.approx(whole.b_norm, rel=1e-4)
    nz = load_noise(tmp_path / "cut", "30s")  # the scan's own noise, cut to the same groups
    torch.testing.assert_close(nz.ahb(0), cut.ahb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        nz.clean,
        load_noise(tmp_path / "whole", "30s").clean,
        rtol=2e-3,
        atol=2e-3 * float(nz.clean.abs().max()),
    )


def saved_two_step(
    tmp_path: Path,
    *,
    shared: bool,
    seed: int,
    log_mu: tuple[float, float],
    problem_seed: int = 0,
) -> tuple[UnrolledRecon, Path, LinearOperator, torch.Tensor]:
    """Save a 2-step model with random output heads and the given ``log_mu``, as a recipe file.

    Returns the model, its file, and the problem ``(A, b)`` whose basis the file records.
    """
    from spurig_core.recon.unrolled_io import model_state

    torch.manual_seed(seed)
    model = UnrolledRecon(tiny_cfg(steps=2, share_weights=shared)).eval()
    with torch.no_grad():
        for d in model.denoisers:
            d.unet.out.weight.normal_(0, 0.05)
        model.log_mu.copy_(torch.tensor(log_mu))
    op, _truth, b = make_problem(n=N, tr=SEQ.n_tr, seed=problem_seed)
    st = model_state(model, sequence=SEQ, basis=op.phi, extra={"stage": "recipe"})
    return model, save_checkpoint(st, tmp_path / "short.pt"), op, b


@pytest.mark.parametrize("shared", [True, False])
def test_a_longer_unroll_continues_a_shorter_ones_file(shared: bool, tmp_path: Path) -> None:
    """A 4-step run started from a 2-step file continues it.

    Its first 2 steps are the file's model; the later ones repeat the file's last denoiser and
    step size (not the untrained defaults).
    """
    from types import SimpleNamespace

    from spurig_core.training.stages import Trainer

    short, path, op, b = saved_two_step(tmp_path, shared=shared, seed=5, log_mu=(0.25, -0.4))
    long = UnrolledRecon(tiny_cfg(steps=4, share_weights=False)).eval()
    Trainer._init_from(SimpleNamespace(model=long), path)  # type: ignore[arg-type]
    torch.testing.assert_close(long.log_mu.detach(), torch.tensor([0.25, -0.4, -0.4, -0.4]))
    last = short.denoisers[-1].state_dict()
    for i, d in enumerate(long.denoisers):
        want = short.denoiser(min(i, 1)).state_dict() if not shared else last
        for k, v in d.state_dict().items():
            assert torch.equal(v, want[k]), (i, k)
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    lip = estimate_lipschitz(op, ahb, iters=20)
    with torch.no_grad():
        x = x0
        for i in range(2):
            x = long.denoiser(i)(long.dc_half(op, ahb, x, i, lip), i + 1)
        torch.testing.assert_close(x, short(op, ahb, x0, lipschitz=lip))


def test_training_takes_the_step_size_inference_reads(tmp_path: Path) -> None:
    """The L of a training subject equals the value stored with the same gridding for inference.

    Training rebuilds the operator from the prepared payload (placeholder values, int32 index);
    inference builds it from the gridding and stores ``step_size_of``'s value
    (``attach_step_sizes``).  Both must give the same ``L``, or the learned steps ``exp(ρ_i)/L``
    change meaning between training and use; the unroll's former 8 power iterations do not.
    """
    from spurig_core.benchmark import load_gridded
    from spurig_core.config import from_dict
    from spurig_core.operators.encoding import EncodingConfig
    from spurig_core.operators.igrog import GriddingConfig
    from spurig_core.operators.step_size import attach_step_sizes, step_key
    from spurig_core.simulation import simulate
    from spurig_core.training.datasets import load_dc
    from spurig_core.training.redraw import prepare_redraw_subject

    path = tmp_path / "s.h5"
    simulate(path, matrix=16, coils=3, groups=4, seed=7, phantom="analytic")
    cfg = GriddingConfig(steps=5, hidden=16, train_sets=256, batch=16, check=False)
    full = tmp_path / "gridded.pt"
    prepare_redraw_subject(
        path, tmp_path / "ex", seed=7, durations=["30s"], draws=1, gridding=cfg, gridded_out=full
    )
    dc = load_dc(tmp_path / "ex", "30s")
    trained = dc.step_size(dc.build_operator(), power_iters=8)
    gridded, _ = load_gridded(full)
    gridded.lipschitz.clear()
    maps, basis = dc.operator["coil_maps"], dc.operator["basis"]
    enc = from_dict(EncodingConfig, dc.operator["encoding"], where="encoding")
    attach_step_sizes(gridded, maps, basis, groups=[4], config=enc)
    stored = gridded.lipschitz[step_key(4, enc.density_compensation, maps, basis)]
    assert trained == pytest.approx(stored, rel=1e-5)
    power = estimate_lipschitz(dc.build_operator(), dc.ahb, iters=8)
    assert power < stored * (1 - 1e-3)  # what training used before: below the stored value


def test_new_steps_can_start_as_identity_denoisers(tmp_path: Path) -> None:
    """``new_steps = "identity"``: the added steps' denoisers pass their input through.

    So the longer unroll is the file's model followed by DC half-steps with the file's last
    step size.
    """
    from types import SimpleNamespace

    from spurig_core.training.recipe import RecipeConfig
    from spurig_core.training.stages import Trainer

    short, path, op, b = saved_two_step(
        tmp_path, shared=True, seed=6, log_mu=(0.1, -0.3), problem_seed=1
    )
    long = UnrolledRecon(tiny_cfg(steps=4, share_weights=False)).eval()
    Trainer._init_from(SimpleNamespace(model=long), path, "identity")  # type: ignore[arg-type]
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    lip = estimate_lipschitz(op, ahb, iters=20)
    with torch.no_grad():
        want = short(op, ahb, x0, lipschitz=lip)
        for i in (2, 3):
            want = long.dc_half(op, ahb, want, i, lip)
        torch.testing.assert_close(long(op, ahb, x0, lipschitz=lip), want)
    assert float(long.denoisers[3].unet.out.weight.abs().sum()) == 0.0
    assert float(long.denoisers[1].unet.out.weight.abs().sum()) > 0.0
    with pytest.raises(InputError, match="new_steps"):
        RecipeConfig(data_dir="d", out_dir="o", new_steps="zero")
    with pytest.raises(InputError, match="a denoiser per step"):
        RecipeConfig(data_dir="d", out_dir="o", new_steps="identity")
