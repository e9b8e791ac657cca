"""Fast iGROG kernel evaluation (issue #14): the same predictions as ``IGROGKernel.predict``.

Oracles: the reference path (``IGROGKernel.predict``, which forms the complex kernel and its prior
explicitly) for the predictions and the gridded values, and the NUFFT encoding's adjoint of the raw
k-space for the gridded ``A^H b``: the fast modes must not move that error.
"""

from __future__ import annotations

import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.operators.encoding import (
    EncodingConfig,
    GriddedSubspaceEncoding,
    SubspaceNUFFTEncoding,
)
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.operators.igrog_eval import KernelPredictor, bf16_supported, kernel_predictor
from spurig_core.operators.igrog_kernel import IGROGKernel
from spurig_core.operators.igrog_train import train_kernel
from spurig_core.simulation import calibration_data, nufft_forward
from spurig_core.simulation.coils import head_array
from spurig_core.simulation.phantom import analytic_subject
from spurig_core.simulation.trajectory import spi_trajectory

N = 24
MATRIX = (N, N, N)
COILS, GROUPS, TR, CAL = 6, 2, 8, 20
CFG = GriddingConfig(steps=100, train_sets=256, seed=0, check=False)


def _nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.fixture(scope="module")
def data() -> dict:
    subject = analytic_subject(N, seed=2)
    pd = torch.from_numpy(subject.pd_complex())
    maps = head_array(N, COILS, fov_mm=subject.fov_mm, mask=subject.head_mask, seed=1)
    traj = spi_trajectory(N, GROUPS, TR)
    basis = torch.linalg.qr(
        torch.randn(TR, 2, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    )[0]
    images = torch.stack([pd, (0.5 * pd).roll(2, dims=0)]).to(torch.complex64)
    kspace = nufft_forward(images, maps, traj, basis, eps=1e-7)
    kernel = train_kernel(calibration_data(pd, maps, CAL), traj, MATRIX, config=CFG)
    return {"maps": maps, "traj": traj, "basis": basis, "kspace": kspace, "kernel": kernel}


def _displacements(kernel: IGROGKernel, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(count, kernel.n_sources, 3, generator=gen) * 0.8
    src = torch.randn(kernel.n_coils, count, kernel.n_sources, dtype=torch.complex64, generator=gen)
    return d, src.permute(1, 0, 2)  # strided, as grid() passes them


@pytest.mark.parametrize("prior", [True, False])
def test_predictor_matches_reference_prediction(data: dict, prior: bool) -> None:
    kernel = data["kernel"]
    if not prior:  # the same weights without the smooth prior term
        kernel = IGROGKernel.from_checkpoint(
            {**kernel.checkpoint(), "config": {**kernel.config, "prior_width": 0.0}}
        )
    d, src = _displacements(kernel, 3000)
    with torch.inference_mode():
        ref = kernel.predict(d, src)
        fp32 = KernelPredictor(kernel, torch.float32)(d, src)
        bf16 = KernelPredictor(kernel, torch.bfloat16)(d, src)
    assert fp32.dtype == torch.complex64 and fp32.shape == ref.shape
    assert _nrmse(fp32, ref) < 1e-5
    assert 0 < _nrmse(bf16, ref) < 5e-3  # bfloat16 rounding, and not silently float32


def test_batch_major_and_reused_buffers_give_the_same_predictions(data: dict) -> None:
    """The gridding's entry (sources as gathered rows) equals the reference, whatever the batch.

    The predictor keeps its work buffers between calls; a call of another size in between (the
    last, shorter batch of a gridding) must not leave stale rows behind.  ``hidden`` in the
    source-major order is the same ``G`` with its columns permuted.
    """
    kernel = data["kernel"]
    c, n = kernel.n_coils, kernel.n_sources
    d, src = _displacements(kernel, 3000)
    pred = KernelPredictor(kernel, torch.float32)
    with torch.inference_mode():
        ref = kernel.predict(d, src)
        first = pred.batch_major(d, src.transpose(1, 2)).clone()
        part = pred.batch_major(d[:700], src[:700].transpose(1, 2).contiguous()).clone()
        again = pred(d, src)
        g = pred.hidden(d[:50]).clone().view(50, 2 * c, c, n)
        g_sm = pred.hidden(d[:50], source_major=True).view(50, 2 * c, n, c)
    assert part.shape == (700, c)
    assert _nrmse(first, ref) < 1e-5
    torch.testing.assert_close(part, first[:700])
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(g_sm, g.transpose(2, 3))


def test_grid_modes_keep_the_adjoint_accuracy(data: dict) -> None:
    kernel, traj, ksp = data["kernel"], data["traj"], data["kspace"]
    out = {
        m: grid(ksp, traj, MATRIX, kernel=kernel, config=CFG, kernel_eval=m)
        for m in ("reference", "fp32", "bf16", "auto")
    }
    ref = out["reference"].values
    assert torch.equal(out["fp32"].index, out["reference"].index)
    assert _nrmse(out["fp32"].values, ref) < 1e-5
    assert _nrmse(out["bf16"].values, ref) < 5e-3
    auto = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    assert torch.equal(out["auto"].values, out[auto].values)
    nufft_ahb = SubspaceNUFFTEncoding(traj, data["maps"], data["basis"]).adjoint(ksp)
    enc = EncodingConfig(density_compensation=0.0)
    err = {
        m: _nrmse(
            GriddedSubspaceEncoding(g, data["maps"], data["basis"], config=enc).adjoint(g.values),
            nufft_ahb,
        )
        for m, g in out.items()
    }
    assert err["reference"] < 0.3  # a real (if briefly trained) kernel
    assert abs(err["fp32"] - err["reference"]) < 1e-5
    assert abs(err["bf16"] - err["reference"]) < 2e-3  # < 0.2 percentage points


def test_unknown_mode_is_one_line_input_error(data: dict) -> None:
    with pytest.raises(InputError, match="kernel_eval: 'fp16'"):
        kernel_predictor(data["kernel"], "fp16")
    with pytest.raises(InputError, match="kernel_eval"):
        grid(
            data["kspace"],
            data["traj"],
            MATRIX,
            kernel=data["kernel"],
            config=CFG,
            kernel_eval="half",
        )


@pytest.mark.cuda
def test_cuda_predictor_matches_cpu_reference(data: dict) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    kernel = data["kernel"]
    d, src = _displacements(kernel, 3000)
    with torch.inference_mode():
        ref = kernel.predict(d, src)
        gpu = IGROGKernel.from_checkpoint(kernel.checkpoint()).to("cuda")
        for mode, tol in (("fp32", 1e-4), ("bf16", 5e-3)):
            got = kernel_predictor(gpu, mode)(d.cuda(), src.cuda()).cpu()
            assert _nrmse(got, ref) < tol, mode


def test_grid_evaluates_each_distinct_prediction_once_with_the_same_values(data: dict) -> None:
    """Issue #14: consecutive samples with the same target and sources are predicted once.

    Oracle: the reference prediction of every sample from its own sources (no sharing).
    """
    from spurig_core.operators.grid import grid_shape
    from spurig_core.operators.igrog import _distinct_predictions
    from spurig_core.operators.igrog_sources import find_sources

    kernel, traj, ksp = data["kernel"], data["traj"], data["kspace"]
    window = int(kernel.config.get("search_window", CFG.search_window))
    spacing = float(kernel.config.get("source_spacing", 0.0))
    arms = traj.reshape(-1, traj.shape[-2], 3)
    idx, src, disp = find_sources(
        arms,
        MATRIX,
        grid_shape(MATRIX, CFG.grid_oversampling),
        n_sources=kernel.n_sources,
        search_window=window,
        source_spacing=spacing,
    )
    keep, run = _distinct_predictions(idx, src)
    n_distinct = int(run.max()) + 1
    assert n_distinct < idx.numel()  # the centre of each arm shares targets and sources
    # padded to a multiple of 2048 rows, or to the batch's samples (which bound the memory)
    assert keep.numel() in (idx.numel(), n_distinct + (-n_distinct % 2048))
    flat_src = src.reshape(-1, kernel.n_sources)
    # every sample's (target, sources) is that of the sample it copies, and copies go backwards
    assert torch.equal(idx.reshape(-1), idx.reshape(-1)[keep[run]])
    assert torch.equal(flat_src, flat_src[keep[run]])
    assert bool((keep[run] <= torch.arange(idx.numel())).all())
    # the gridded values equal the per-sample reference prediction
    coils, ns = ksp.shape[0], arms.shape[1]
    k = ksp.reshape(coils, -1, ns)
    gathered = torch.gather(k, 2, src.reshape(1, arms.shape[0], -1).expand(coils, -1, -1))
    gathered = gathered.view(coils, -1, kernel.n_sources).permute(1, 0, 2)
    with torch.no_grad():
        want = kernel.predict(disp.reshape(-1, kernel.n_sources, 3), gathered).T
    got = grid(ksp, traj, MATRIX, kernel=kernel, config=CFG, kernel_eval="reference")
    assert torch.equal(got.index.reshape(-1), idx.reshape(-1))
    assert _nrmse(got.values.reshape(coils, -1), want) < 1e-5
