"""Training machinery (paper 2.3.2, appendix A.2–A.4): losses, augmentation, the three stages."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from spurig_core.config import dump_toml, to_dict
from spurig_core.data import FispSequence
from spurig_core.errors import Cancelled, InputError
from spurig_core.recon.unrolled import UnrolledRecon, estimate_lipschitz, scaled_init
from spurig_core.recon.unrolled_io import load_model
from spurig_core.training.augment import (
    AugmentConfig,
    apply_affine,
    random_affine,
    random_crop,
    rotation_matrix,
)
from spurig_core.training.datasets import (
    DCData,
    Example,
    list_subjects,
    load_example,
    register_operator,
    save_example,
)
from spurig_core.training.losses import (
    gleam_weights,
    ms_ssim,
    ms_ssim_loss,
    ssim_scales,
    tissue_l1,
)
from spurig_core.training.stages import (
    FinetuneConfig,
    GleamConfig,
    PretrainConfig,
    gleam_backward,
    load_stage_config,
    run_stage,
    unrolled_backward,
)
from test_unrolled import CartesianSubspaceOp, make_problem, tiny_cfg


def _cartesian_builder(payload: dict, device: torch.device) -> CartesianSubspaceOp:
    return CartesianSubspaceOp(
        payload["maps"].to(device), payload["phi"].to(device), payload["mask"].to(device)
    )


register_operator("cartesian-test", _cartesian_builder)


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
def test_tissue_l1_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 6, 7, 4, dtype=torch.complex64, generator=g)
    b = torch.randn(5, 6, 7, 4, dtype=torch.complex64, generator=g)
    lab = torch.randint(0, 5, (6, 7, 4), generator=g).to(torch.uint8)
    lam = np.array([1.0, 1.0, 10.0, 10.0, 1.0])[lab.numpy()]
    d = (a - b).numpy()
    ref = ((np.abs(d.real) + np.abs(d.imag)) * lam[None]).sum() / lab.numel()
    assert float(tissue_l1(a, b, lab)) == pytest.approx(ref, rel=1e-5)
    # batched form is the mean over the batch of the same quantity
    ab = torch.stack([a, b]), torch.stack([b, a]), torch.stack([lab, lab])
    assert float(tissue_l1(*ab)) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(InputError):
        tissue_l1(a, b, lab[:3])


def test_gleam_weights_geometric() -> None:
    w = gleam_weights(6)
    assert w[-1] == pytest.approx(1.0) and w[-1] / w[0] == pytest.approx(10.0)
    ratios = w[1:] / w[:-1]
    torch.testing.assert_close(ratios, torch.full((5,), 10 ** (1 / 5)))
    assert gleam_weights(1).tolist() == [1.0]


def test_ssim_single_scale_matches_skimage() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (20, 20)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    assert ssim_scales(20) == (1, 11)
    ours = float(
        ms_ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None], data_range=1.0)[0]
    )
    ref = structural_similarity(
        x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ours == pytest.approx(ref, abs=2e-4)


def test_ms_ssim_scales_and_properties() -> None:
    assert ssim_scales(64) == (3, 11) and ssim_scales(176) == (5, 11) and ssim_scales(9) == (1, 9)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 48, 48, generator=g)
    assert torch.allclose(ms_ssim(x, x, data_range=1.0), torch.ones(2))
    y = x + 0.3 * torch.randn(x.shape, generator=g)
    z = x + 0.05 * torch.randn(x.shape, generator=g)
    assert bool((ms_ssim(x, y, data_range=1.0) < ms_ssim(x, z, data_range=1.0)).all())
    # complex coefficient volumes: loss 0 for identical volumes, positive and differentiable
    a = torch.randn(5, 16, 16, 12, dtype=torch.complex64, generator=g)
    assert float(ms_ssim_loss(a, a, slices=4)) == pytest.approx(0.0, abs=1e-5)
    e = (a + 0.5).requires_grad_(True)
    loss = ms_ssim_loss(e, a, slices=4, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert float(loss) > 0 and e.grad is not None and torch.isfinite(e.grad).all()


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------
def _vol(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(5, n, n, n, dtype=torch.complex64, generator=g)
    lab = torch.randint(0, 5, (n, n, n), generator=g).to(torch.uint8)
    return v, lab


def test_identity_and_translation() -> None:
    v, lab = _vol()
    eye = np.concatenate([np.eye(3), np.zeros((3, 1))], 1)
    (out,), olab = apply_affine([v], lab, eye)
    torch.testing.assert_close(out, v, rtol=1e-5, atol=1e-5)
    assert torch.equal(olab, lab)
    shift = eye.copy()
    shift[:, 3] = [2, 0, -1]  # output voxel r samples the input at r + (2, 0, -1)
    (out,), olab = apply_affine([v], lab, shift)
    torch.testing.assert_close(out[:, :-2, :, 1:], v[:, 2:, :, :-1], rtol=1e-5, atol=1e-5)
    assert torch.all(out[:, -2:] == 0)
    assert torch.equal(olab[:-2, :, 1:], lab[2:, :, :-1])


def test_rotation_by_90_degrees_is_rot90() -> None:
    v, lab = _vol(10)
    aff = np.concatenate([rotation_matrix(np.array([0, 0, 1.0]), 90), np.zeros((3, 1))], 1)
    (out,), olab = apply_affine([v], lab, aff)
    # out(r0, r1) = in(-r1, r0) about the centre: numpy's rot90 of the (0, 1) plane, k = -1
    ref = torch.rot90(v, k=-1, dims=(1, 2))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(olab, torch.rot90(lab, k=-1, dims=(0, 1)))


def test_random_affine_ranges_and_crop() -> None:
    rng = np.random.default_rng(0)
    cfg = AugmentConfig()
    for _ in range(50):
        a = random_affine(cfg, rng)
        m = a[:, :3]
        s = np.linalg.svd(m, compute_uv=False)
        assert np.allclose(s, s[0]) and 1 / 1.02 - 1e-9 <= s[0] <= 1 / 0.98 + 1e-9
        r = m * (1 / s[0]) ** -1 / s[0] ** 2  # rotation part
        angle = np.degrees(np.arccos(np.clip((np.trace(m / s[0]) - 1) / 2, -1, 1)))
        assert angle <= 15 + 1e-6 and np.all(np.abs(a[:, 3]) <= 5)
        assert r.shape == (3, 3)
    sl = random_crop((20, 10, 8), 9, rng)
    assert [s.stop - s.start for s in sl] == [9, 9, 8]


# ----------------------------------------------------------------------------------------------
# a tiny prepared cohort on disk
# ----------------------------------------------------------------------------------------------
N, TR = 16, 6
SEQ = FispSequence(np.linspace(5, 60, TR).astype(np.float32))


def _example(seed: int) -> Example:
    op, truth, b = make_problem(n=N, tr=TR, seed=seed)
    ahb = op.adjoint(b)
    b_norm = float(b.abs().norm())
    x0, s = scaled_init(op, ahb, b_norm)
    g = torch.Generator().manual_seed(100 + seed)
    ax = torch.linspace(-1, 1, N)
    r2 = sum(t**2 for t in torch.meshgrid(ax, ax, ax, indexing="ij"))
    tissue = torch.where(r2 < 0.6, torch.where(r2 < 0.2, 3, 2), torch.where(r2 < 0.8, 1, 0))

    def noisy(level: float) -> torch.Tensor:
        return truth + level * torch.randn(truth.shape, dtype=torch.complex64, generator=g)

    inputs = {
        "adjoint-1min": x0,
        "llr-30s": noisy(0.4),
        "llr-1min": noisy(0.3),
        "llr-2min": noisy(0.15),
    }
    payload = {"type": "cartesian-test", "maps": op.maps, "phi": op.phi, "mask": op.mask}
    dc = DCData(ahb, b_norm, s, estimate_lipschitz(op, ahb, iters=20), payload)
    return Example(f"s{seed}", truth, tissue.to(torch.uint8), op.phi, SEQ, inputs, {"1min": dc})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    save_example(_example(0), root / "train" / "s0")
    save_example(_example(1), root / "train" / "s1")
    save_example(_example(2), root / "val" / "s2")
    return root


def test_example_round_trip(cohort: Path) -> None:
    assert [p.name for p in list_subjects(cohort, "train")] == ["s0", "s1"]
    assert list_subjects(cohort, "test") == []
    ex = load_example(cohort / "train" / "s1", durations=["1min"])
    ref = _example(1)
    assert torch.equal(ex.target, ref.target) and torch.equal(ex.tissue, ref.tissue)
    assert ex.sequence.same_as(SEQ) and set(ex.inputs) == set(ref.inputs)
    op = ex.dc["1min"].build_operator()
    torch.testing.assert_close(op.gram(ex.target), ref.dc["1min"].build_operator().gram(ref.target))
    with pytest.raises(InputError, match="dc-2min"):
        load_example(cohort / "train" / "s1", durations=["2min"])
    with pytest.raises(InputError, match="no input"):
        ex.input("llr-6min")


def _write(path: Path, cfg: object) -> Path:
    path.write_text(dump_toml(cfg))
    return path


def _pre_cfg(cohort: Path, out: Path, **kw: object) -> PretrainConfig:
    base = dict(
        data_dir=str(cohort),
        out_dir=str(out),
        model=tiny_cfg(steps=3),
        epochs=2,
        batch_size=2,
        crop=12,
        steps_per_epoch=2,
        lr=2e-3,
        seed=7,
    )
    base.update(kw)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def test_pretraining_lowers_the_loss(cohort: Path, tmp_path: Path) -> None:
    cfg = _pre_cfg(
        cohort,
        tmp_path / "pre",
        epochs=3,
        steps_per_epoch=2,
        batch_size=2,
        crop=16,
        augment=AugmentConfig(enabled=False),
        lr=3e-3,
    )
    events = []
    model = run_stage("pretrain", _write(tmp_path / "pre.toml", cfg), callback=events.append)
    assert model.exists() and (tmp_path / "pre" / "last.pt").exists()
    rows = list(csv.DictReader(open(tmp_path / "pre" / "loss.csv")))
    assert len(rows) == 3 and (tmp_path / "pre" / "loss.png").stat().st_size > 1000
    val = [float(r["val_loss"]) for r in rows]
    assert val[-1] < val[0]
    assert [e.step for e in events] == list(range(1, 7)) and "loss" in events[0].metrics
    _loaded, meta = load_model(model)
    assert meta["stage"] == "pretrain" and meta["basis"].shape == (TR, 5)


def test_resume_continues_exactly(cohort: Path, tmp_path: Path) -> None:
    cfg = _pre_cfg(cohort, tmp_path / "a", steps_per_epoch=1)
    events: list = []
    run_stage("pretrain", _write(tmp_path / "a.toml", cfg), callback=events.append)
    straight = [e.metrics["loss"] for e in events]
    # interrupted run: cancel during the first step of epoch 2, then resume
    cfg_b = _pre_cfg(cohort, tmp_path / "b", steps_per_epoch=1)
    path_b = _write(tmp_path / "b.toml", cfg_b)
    got: list = []

    def cancel_in_epoch_two(ev: object) -> None:
        got.append(ev.metrics["loss"])  # type: ignore[attr-defined]
        if len(got) == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        run_stage("pretrain", path_b, callback=cancel_in_epoch_two)
    more: list = []
    run_stage("pretrain", path_b, resume=True, callback=more.append)
    resumed = got[:1] + [e.metrics["loss"] for e in more]
    assert resumed == straight and straight[0] != straight[1]
    with pytest.raises(InputError, match="nothing to resume"):
        run_stage(
            "pretrain", _write(tmp_path / "c.toml", _pre_cfg(cohort, tmp_path / "c")), resume=True
        )


def _unroll_args(cohort: Path) -> tuple:
    ex = load_example(cohort / "train" / "s0", durations=["1min"])
    dc = ex.dc["1min"]
    return dc.build_operator(), dc.ahb, dc.x0, ex.target, ex.tissue, dc.lipschitz


def test_gleam_does_not_backpropagate_across_steps(cohort: Path) -> None:
    torch.manual_seed(0)
    op, ahb, x0, target, tissue, lip = _unroll_args(cohort)
    model = UnrolledRecon(tiny_cfg(steps=3))
    cfg = GleamConfig(data_dir="", out_dir="", model=model.cfg, ssim_weight=0.5, ssim_slices=4)
    x0 = x0.clone().requires_grad_(True)
    gleam_backward(
        model, op, ahb, x0, target, tissue, lip, cfg, generator=torch.Generator().manual_seed(0)
    )
    assert x0.grad is None
    g_all = model.log_mu.grad.clone()
    # μ_1 only sees the loss of step 1: recompute that term alone
    model.zero_grad(set_to_none=True)
    a1 = model.step(op, ahb, x0.detach(), 0, lip)
    (float(gleam_weights(3)[0]) * tissue_l1(a1, target, tissue)).backward()
    assert model.log_mu.grad[1] == 0 and model.log_mu.grad[2] == 0
    torch.testing.assert_close(g_all[0], model.log_mu.grad[0], rtol=1e-4, atol=1e-8)
    assert bool((g_all != 0).all())


def test_checkpointed_finetuning_has_plain_gradients(cohort: Path) -> None:
    torch.manual_seed(0)
    args = _unroll_args(cohort)
    model = UnrolledRecon(tiny_cfg(steps=2))
    grads = []
    for ckpt in (False, True):
        cfg = FinetuneConfig(
            data_dir="", out_dir="", model=model.cfg, checkpointing=ckpt, ssim_slices=4
        )
        model.zero_grad(set_to_none=True)
        unrolled_backward(model, *args, cfg, generator=torch.Generator().manual_seed(3))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-7)


def test_three_stages_chain(cohort: Path, tmp_path: Path) -> None:
    pre = run_stage(
        "pretrain",
        _write(tmp_path / "p.toml", _pre_cfg(cohort, tmp_path / "p", epochs=1, steps_per_epoch=1)),
    )
    gcfg = GleamConfig(
        data_dir=str(cohort),
        out_dir=str(tmp_path / "g"),
        model=tiny_cfg(steps=2, share_weights=False),
        init=str(pre),
        epochs=1,
        accumulation=2,
        ssim_slices=4,
        lr=1e-3,
    )
    gl = run_stage("gleam", _write(tmp_path / "g.toml", gcfg))
    # GLEAM without weight sharing starts every step from the pretrained shared denoiser
    pm, _ = load_model(pre)
    gm, gmeta = load_model(gl)
    assert gmeta["stage"] == "gleam" and len(gm.denoisers) == 2
    fcfg = FinetuneConfig(
        data_dir=str(cohort),
        out_dir=str(tmp_path / "f"),
        model=tiny_cfg(steps=2, share_weights=False),
        init=str(gl),
        epochs=1,
        accumulation=4,
        ssim_slices=4,
        lr=1e-4,
    )
    # the stage's table may also sit under [finetune]
    (tmp_path / "f.toml").write_text(tomli_w.dumps({"finetune": to_dict(fcfg)}))
    assert load_stage_config("finetune", tmp_path / "f.toml") == fcfg
    ft = run_stage("finetune", tmp_path / "f.toml")
    fm, fmeta = load_model(ft)
    assert fmeta["stage"] == "finetune"
    rows = list(csv.DictReader(open(tmp_path / "f" / "loss.csv")))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["val_loss"]))
    with pytest.raises(InputError, match="unknown training stage"):
        run_stage("warmup", tmp_path / "f.toml")
    del pm, fm


def test_gridded_payload_rebuilds_the_real_encoding() -> None:
    from spurig_core.config import to_dict
    from spurig_core.operators.encoding import EncodingConfig, GriddedSubspaceEncoding
    from spurig_core.operators.grid import GriddedData, grid_shape

    g = torch.Generator().manual_seed(9)
    matrix = (8, 8, 8)
    grid = grid_shape(matrix, 1.5)
    n_grid = int(np.prod(grid))
    index = torch.randint(0, n_grid, (2, TR, 40), generator=g)
    values = torch.randn(2, 2, TR, 40, dtype=torch.complex64, generator=g)
    maps = torch.randn(2, *matrix, dtype=torch.complex64, generator=g)
    phi, _ = torch.linalg.qr(torch.randn(TR, 5, dtype=torch.complex64, generator=g))
    op = GriddedSubspaceEncoding(GriddedData(values, index, grid, matrix), maps, phi)
    payload = {
        "type": "gridded-subspace",
        "coil_maps": maps,
        "basis": phi,
        "index": index.to(torch.int32),
        "grid": list(grid),
        "matrix": list(matrix),
        "encoding": to_dict(op.config),
    }
    dc = DCData(op.adjoint_data(), 1.0, 1.0, 1.0, payload)
    rebuilt = dc.build_operator()
    x = torch.randn(5, *matrix, dtype=torch.complex64, generator=g)
    torch.testing.assert_close(rebuilt.gram(x), op.gram(x), rtol=1e-4, atol=1e-4)
    # a payload from before density compensation rebuilds the plain (unweighted) encoding
    legacy = {k: v for k, v in payload.items() if k != "encoding"}
    plain = GriddedSubspaceEncoding(
        GriddedData(values, index, grid, matrix),
        maps,
        phi,
        config=EncodingConfig(density_compensation=0.0),
    )
    rebuilt = DCData(dc.ahb, 1.0, 1.0, 1.0, legacy).build_operator()
    torch.testing.assert_close(rebuilt.gram(x), plain.gram(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="unknown operator type"):
        DCData(dc.ahb, 1.0, 1.0, 1.0, {"type": "nope"}).build_operator()


def test_model_records_its_data_term(tmp_path: Path) -> None:
    """A model file carries the gridded encoding it was trained with; inference reads it back."""
    from spurig_core.io import save_checkpoint
    from spurig_core.recon.trained import model_encoding

    enc = {"density_compensation": 0.5, "chunk": 16384}
    save_checkpoint({"kind": "spurig-model", "encoding": enc}, tmp_path / "m.pt")
    assert model_encoding(tmp_path / "m.pt") == enc
    save_checkpoint({"kind": "spurig-model"}, tmp_path / "old.pt")
    assert model_encoding(tmp_path / "old.pt") == {}  # not recorded: the defaults apply


@pytest.mark.parametrize("native", [True, False])
def test_amp_autocasts_only_where_bfloat16_is_native(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool
) -> None:
    """bf16 = true trains in bfloat16 where it is native and in float32 where it is emulated.

    On an AVX2-only CPU an emulated bfloat16 UNet step took 22× the float32 one (issue #14).
    """
    import logging

    import spurig_core.operators.igrog_eval as ie
    from spurig_core.training import steps

    monkeypatch.setattr(ie, "bf16_supported", lambda device: native)
    monkeypatch.setattr(steps, "_NATIVE", {})
    lin = torch.nn.Linear(4, 4)
    with caplog.at_level(logging.WARNING, logger="spurig"):
        for _ in range(2):
            with steps.amp(True, torch.device("cpu")):
                y = lin(torch.ones(2, 4))
            with steps.amp(False, torch.device("cpu")):
                z = lin(torch.ones(2, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    assert z.dtype == torch.float32
    fallbacks = [r for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(fallbacks) == (0 if native else 1)  # one line per device, not per step
