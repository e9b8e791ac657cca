"""iGROG: kernel training, geometry, gridding accuracy against exact k-space, A^H b against NUFFT.

Test data: the analytic subject, the simulated head array and the SPI trajectory of the project
(few TRs), k-space from two coefficient images through a temporal basis.  Every accuracy check uses
an independent oracle: the SPEC §3 forward model evaluated here with finufft (type 2, complex128,
eps 1e-10) at the grid frequencies, and the NUFFT encoding for ``A^H b``.
"""

from __future__ import annotations

import dataclasses

import finufft
import numpy as np
import pytest
import torch

from spurig_core.data import FispSequence, Scan
from spurig_core.errors import InputError
from spurig_core.operators.encoding import GriddedSubspaceEncoding, SubspaceNUFFTEncoding
from spurig_core.operators.grid import grid_shape, nearest_grid_index
from spurig_core.operators.igrog import GriddingConfig, grid, grid_scan
from spurig_core.operators.igrog_kernel import IGROGKernel
from spurig_core.operators.igrog_sources import calibration_image, calibration_kspace, find_sources
from spurig_core.operators.igrog_train import train_kernel
from spurig_core.simulation import calibration_data, nufft_forward
from spurig_core.simulation.coils import head_array
from spurig_core.simulation.phantom import analytic_subject
from spurig_core.simulation.trajectory import spi_trajectory

N = 32
MATRIX = (N, N, N)
COILS, GROUPS, TR, CAL = 8, 2, 12, 20
# small but real training: a few hundred steps (CPU, shared machine)
CFG5 = GriddingConfig(n_sources=5, steps=800, train_sets=1024, seed=0)
CFG1 = dataclasses.replace(CFG5, n_sources=1)
CFG0 = GriddingConfig(n_sources=1, learned_kernel=False)


def _exact(images: np.ndarray, k: np.ndarray) -> np.ndarray:
    """SPEC §3 forward model of ``images (batch, N, N, N)`` at ``k (points, 3)``, complex128."""
    xyz = [np.ascontiguousarray(2 * np.pi * k[:, d] / N, dtype=np.float64) for d in range(3)]
    f = np.ascontiguousarray(images, dtype=np.complex128)
    return finufft.nufft3d2(*xyz, f, isign=-1, eps=1e-10, modeord=0)


def _grid_k(index: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """Frequencies (cycles/FOV) of linear grid indices, per the convention of operators/grid.py."""
    p = np.stack(np.unravel_index(index.reshape(-1).numpy(), shape), -1).astype(np.float64)
    g = np.asarray(shape, dtype=np.float64)
    return (p - g // 2) * N / g


def _nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.fixture(scope="module")
def data() -> dict:
    subject = analytic_subject(N, seed=3)
    pd = torch.from_numpy(subject.pd_complex())
    maps = head_array(N, COILS, fov_mm=subject.fov_mm, mask=subject.head_mask, seed=1)
    traj = spi_trajectory(N, GROUPS, TR)
    gen = torch.Generator().manual_seed(5)
    # two coefficient images (the PD and a smoothly modulated copy) and an orthonormal basis
    c = torch.arange(N, dtype=torch.float32) - N // 2
    ramp = torch.exp(1j * 2 * torch.pi * c / N / 2)[:, None, None] * torch.cos(c / 9)[None, :, None]
    images = torch.stack([pd, (pd * ramp).to(torch.complex64)])
    basis = torch.linalg.qr(torch.randn(TR, 2, dtype=torch.complex64, generator=gen))[0]
    kspace = nufft_forward(images, maps, traj, basis, eps=1e-7)
    calib = calibration_data(pd, maps, CAL)
    coil_images = (maps[:, None] * images[None]).numpy()  # (coils, 2, N, N, N)
    return {
        "pd": pd,
        "maps": maps,
        "traj": traj,
        "basis": basis,
        "kspace": kspace,
        "calib": calib,
        "coil_images": coil_images,
    }


@pytest.fixture(scope="module")
def kernels(data: dict) -> dict:
    events: list = []
    k5 = train_kernel(data["calib"], data["traj"], MATRIX, config=CFG5, callback=events.append)
    k1 = train_kernel(data["calib"], data["traj"], MATRIX, config=CFG1)
    return {"k5": k5, "k1": k1, "events": events}


@pytest.fixture(scope="module")
def gridded(data: dict, kernels: dict) -> dict:
    out = {}
    for name, kernel, cfg in (
        ("a", kernels["k5"], CFG5),
        ("b", kernels["k1"], CFG1),
        ("c", None, CFG0),
    ):
        out[name] = grid(data["kspace"], data["traj"], MATRIX, kernel=kernel, config=cfg)
    return out


# -- conventions and geometry ----------------------------------------------------------------------
def test_calibration_interpolation_is_exact_at_integer_frequencies(data: dict) -> None:
    calib = data["calib"]
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, CAL, (50, 3), generator=gen)
    k = (idx - CAL // 2).double()
    got = calibration_kspace(calibration_image(calib), k)
    want = calib[:, idx[:, 0], idx[:, 1], idx[:, 2]].to(torch.complex128)
    assert _nrmse(got, want) < 1e-5
    # and it agrees with the full-resolution k-space near the centre (band-limited interpolation)
    kc = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 6 - 3
    exact = torch.from_numpy(_exact((data["maps"] * data["pd"]).numpy(), kc.numpy()))
    assert _nrmse(calibration_kspace(calibration_image(calib), kc), exact) < 0.05


def test_find_sources_against_brute_force(data: dict) -> None:
    traj = data["traj"].reshape(-1, data["traj"].shape[2], 3)[:3]
    shape = grid_shape(MATRIX, 1.5)
    index, src, disp = find_sources(traj, MATRIX, shape, n_sources=5, search_window=6)
    ref_index, offset = nearest_grid_index(traj, MATRIX, shape)
    assert torch.equal(index, ref_index)
    ns = traj.shape[1]
    for a in range(traj.shape[0]):
        for s in (0, 1, 7, ns // 2, ns - 1):
            target = traj[a, s].double() - offset[a, s].double()
            lo = min(max(s - 6, 0), ns - 13)
            cand = torch.arange(lo, lo + 13)
            d2 = (traj[a, cand].double() - target).square().sum(-1)
            want = torch.sort(cand[torch.argsort(d2)[:5]]).values
            assert torch.equal(src[a, s], want)
            assert torch.allclose(disp[a, s].double(), traj[a, want].double() - target, atol=1e-5)


def test_nearest_neighbour_move_keeps_values(data: dict, gridded: dict) -> None:
    g = gridded["c"]
    assert torch.equal(g.values, data["kspace"])
    ref, _ = nearest_grid_index(data["traj"], MATRIX, grid_shape(MATRIX, 1.5))
    assert torch.equal(g.index, ref)
    assert g.grid == grid_shape(MATRIX, 1.5) and g.matrix == MATRIX
    for name in ("a", "b"):
        assert torch.equal(gridded[name].index, ref)
        assert gridded[name].values.shape == data["kspace"].shape
        assert gridded[name].values.dtype == torch.complex64


# -- kernel training -------------------------------------------------------------------------------
def test_training_loss_decreases_and_reports_progress(kernels: dict) -> None:
    h = kernels["k5"].history
    assert len(h) == CFG5.steps
    assert np.mean(h[-20:]) < 0.7 * np.mean(h[:20])
    # training-pair extraction reports "igrog-pairs" before the steps (issue #14)
    assert {e.stage for e in kernels["events"]} <= {"igrog-pairs", "igrog-train"}
    ev = [e for e in kernels["events"] if e.stage == "igrog-train"]
    assert ev
    assert ev[-1].step == ev[-1].total == CFG5.steps and "loss" in ev[-1].metrics
    m = kernels["k5"].metrics
    assert m["val_rel_error"] < 0.6 * m["nearest_rel_error"], m


def test_kernel_predicts_exact_heldout_targets(data: dict, kernels: dict) -> None:
    """G on exact (full-resolution) source values vs the exact target, at unseen positions."""
    gen = torch.Generator().manual_seed(11)
    arms = spi_trajectory(N, 3, 4)[2].float()  # a group the kernel was not trained on
    _, _, disp = find_sources(
        arms,
        MATRIX,
        grid_shape(MATRIX, 1.5),
        n_sources=5,
        search_window=CFG5.search_window,
        source_spacing=CFG5.source_spacing,  # the sources the kernel is trained and used with
    )
    disp = disp.reshape(-1, 5, 3)
    disp = disp[torch.randperm(disp.shape[0], generator=gen)[:300]]
    targets = (torch.rand(300, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 5.0
    pts = torch.cat([targets[:, None], targets[:, None] + disp.double()], 1).reshape(-1, 3)
    vals = _exact((data["maps"] * data["pd"]).numpy(), pts.numpy()).reshape(COILS, 300, 6)
    vals = torch.from_numpy(vals).to(torch.complex64)
    tgt = vals[:, :, 0].T
    src = vals[:, :, 1:].permute(1, 0, 2)
    with torch.no_grad():
        pred = kernels["k5"].predict(disp, src)
    nearest = src[torch.arange(300), :, disp.square().sum(-1).argmin(-1)]
    err, err_nn = _nrmse(pred, tgt), _nrmse(nearest, tgt)
    # measured with the default spaced sources and signal-weighted fit (issue #20): 0.214 vs
    # 0.338 (ratio 0.63); the sources 0.5 cycles/FOV apart trade a little noise-free accuracy
    # for a much lower noise gain on dense readouts
    assert err < 0.7 * err_nn, (err, err_nn)


# -- gridding accuracy -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exact_grid(data: dict, gridded: dict) -> torch.Tensor:
    """Exact k-space (SPEC §3, finufft here) at the grid point of every sample."""
    k = _grid_k(gridded["a"].index, gridded["a"].grid)
    ci = data["coil_images"]
    exact = np.stack([_exact(ci[:, j], k) for j in range(2)], 1)  # (coils, 2, points)
    exact = exact.reshape(COILS, 2, GROUPS, TR, -1)
    phi = data["basis"].numpy()  # (tr, 2)
    return torch.from_numpy(np.einsum("tj,cjgts->cgts", phi, exact)).to(torch.complex64)


def test_gridded_values_match_exact_kspace_at_grid_points(
    gridded: dict, exact_grid: torch.Tensor
) -> None:
    err = {n: _nrmse(gridded[n].values, exact_grid) for n in "abc"}
    # most of the energy sits in the densely sampled centre, where the 5 nearest samples of an arm
    # almost coincide, so n=5 gains little over the learned single shift there; both beat no kernel
    assert err["a"] < 0.1, err
    assert err["a"] < 0.95 * err["b"], err
    assert err["a"] < 0.5 * err["c"], err


def test_gridded_adjoint_matches_nufft_adjoint(
    data: dict, gridded: dict, exact_grid: torch.Tensor
) -> None:
    """The key check of the issue: gridded A^H b vs NUFFT A^H b, with the gain over (b) and (c).

    Moving samples to a ×1.5 grid changes the point-spread function, so even exact values at the
    grid points give a gridded ``A^H b`` that differs from the NUFFT one (``floor``, ~5 % here).
    The gridding error itself is measured against the gridded adjoint of those exact values.
    """
    maps, basis = data["maps"], data["basis"]
    ref = SubspaceNUFFTEncoding(data["traj"], maps, basis, eps=1e-6).adjoint(data["kspace"])
    op = GriddedSubspaceEncoding(gridded["a"], maps, basis)  # same index for all variants
    exact_ahb = op.adjoint(exact_grid)
    floor = _nrmse(exact_ahb, ref)
    vs_nufft, vs_exact = {}, {}
    for n in "abc":
        ahb = op.adjoint(gridded[n].values)
        vs_nufft[n], vs_exact[n] = _nrmse(ahb, ref), _nrmse(ahb, exact_ahb)
    msg = f"floor {floor:.4f}, vs NUFFT {vs_nufft}, vs exact gridded {vs_exact}"
    assert vs_exact["a"] < 0.02, msg
    assert vs_exact["a"] < vs_exact["b"] and vs_exact["a"] < 0.5 * vs_exact["c"], msg
    assert vs_nufft["a"] < 1.05 * floor and vs_nufft["a"] < vs_nufft["c"], msg


# -- API, checkpoints, errors ----------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path, data: dict, kernels: dict) -> None:
    from spurig_core.io import load_checkpoint, save_checkpoint

    path = save_checkpoint(kernels["k5"].checkpoint(), tmp_path / "k.pt")
    again = IGROGKernel.from_checkpoint(load_checkpoint(path))
    d = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(d), kernels["k5"](d))
    assert again.config["n_sources"] == 5 and again.metrics == kernels["k5"].metrics
    with pytest.raises(InputError, match="kernel checkpoint"):
        IGROGKernel.from_checkpoint({"kind": "something else"})


def test_grid_scan_reports_timings_and_progress(data: dict) -> None:
    scan = Scan(
        kspace=data["kspace"],
        trajectory=data["traj"],
        sequence=FispSequence([10.0] * TR),
        matrix=MATRIX,
        fov_mm=(220.0,) * 3,
        calibration=data["calib"],
    )
    events: list = []
    cfg = dataclasses.replace(CFG5, steps=3, train_sets=256, hidden=32, grid_batch=500)
    gd, timings = grid_scan(scan, config=cfg, callback=events.append)
    assert set(timings) == {"kernel_training_s", "gridding_s"}
    assert timings["kernel_training_s"] > 0 and timings["gridding_s"] > 0
    stages = [e.stage for e in events]
    assert "igrog-train" in stages and "grid" in stages
    grid_events = [e for e in events if e.stage == "grid"]
    assert grid_events[-1].step == grid_events[-1].total > 1  # batched
    assert gd.values.shape == data["kspace"].shape
    gd0, t0 = grid_scan(scan, config=CFG0)
    assert t0["kernel_training_s"] == 0.0 and torch.equal(gd0.values, data["kspace"])
    with pytest.raises(InputError, match="calibration"):
        grid_scan(dataclasses.replace(scan, calibration=None), config=cfg)


def test_batching_does_not_change_the_result(data: dict, kernels: dict) -> None:
    a = grid(
        data["kspace"][:, :1],
        data["traj"][:1],
        MATRIX,
        kernel=kernels["k5"],
        config=dataclasses.replace(CFG5, grid_batch=10**6),
    )
    b = grid(
        data["kspace"][:, :1],
        data["traj"][:1],
        MATRIX,
        kernel=kernels["k5"],
        config=dataclasses.replace(CFG5, grid_batch=100),
    )
    assert torch.allclose(a.values, b.values, rtol=1e-4, atol=1e-4 * float(a.values.abs().max()))


def test_bad_input_is_reported(data: dict, kernels: dict) -> None:
    ksp, traj = data["kspace"], data["traj"]
    with pytest.raises(InputError, match="needs a trained kernel"):
        grid(ksp, traj, MATRIX, config=CFG5)
    with pytest.raises(InputError, match="coils"):
        grid(ksp[:3], traj, MATRIX, kernel=kernels["k5"], config=CFG5)
    with pytest.raises(InputError, match="kspace"):
        grid(ksp[:, :1], traj, MATRIX, config=CFG0)
    with pytest.raises(InputError, match="NaN"):
        grid(ksp, traj * float("nan"), MATRIX, config=CFG0)
    with pytest.raises(InputError, match="too small"):
        train_kernel(data["calib"][:, 6:12, 6:12, 6:12], traj, MATRIX, config=CFG5)
    with pytest.raises(InputError, match="n_sources"):
        GriddingConfig(n_sources=5, learned_kernel=False)
    with pytest.raises(InputError, match="device"):
        GriddingConfig(device="tpu")


@pytest.mark.cuda
def test_cuda_matches_cpu(data: dict, kernels: dict) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ksp, traj = data["kspace"][:, :1], data["traj"][:1]
    cpu = grid(ksp, traj, MATRIX, kernel=kernels["k5"], config=CFG5)
    gpu = grid(
        ksp, traj, MATRIX, kernel=kernels["k5"], config=dataclasses.replace(CFG5, device="cuda")
    )
    assert kernels["k5"].freqs.device.type == "cpu"  # the caller's kernel stays put
    assert torch.equal(gpu.index.cpu(), cpu.index)
    assert _nrmse(gpu.values.cpu(), cpu.values) < 1e-4
    k = train_kernel(
        data["calib"], traj, MATRIX, config=dataclasses.replace(CFG5, steps=50, device="cuda")
    )
    assert k.freqs.device.type == "cuda" and np.isfinite(k.metrics["val_rel_error"])
