"""bf16 inference of the trained networks (issue #14): used where native, same quality as float32.

The oracle is the float32 reconstruction of the same scan by the same shipped model (the bf16
path switched off); the quality bound is the issue's: mean PSNR within 0.05 dB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from spurig_core import load_scan
from spurig_core.metrics import evaluate
from spurig_core.operators.igrog_eval import bf16_supported
from spurig_core.pipeline import reconstruct
from spurig_core.recon import inference
from spurig_core.recon.networks import UNet
from spurig_core.simulation import simulate

NO_KERNEL = {"gridding": {"learned_kernel": False, "n_sources": 1}}


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "tiny.h5"
    return simulate(path, matrix=16, coils=3, groups=4, seed=5, phantom="analytic")


def _run(scan: Path, method: str) -> tuple[torch.Tensor, list[bool], float]:
    seen: list[bool] = []

    def hook(module: torch.nn.Module, _args: object) -> None:
        if isinstance(module, UNet):
            seen.append(torch.is_autocast_enabled("cpu"))

    handle = register_module_forward_pre_hook(hook)
    try:
        res = reconstruct(scan, method=method, groups=4, config=NO_KERNEL)
    finally:
        handle.remove()
    m = evaluate(res, load_scan(scan), per_voxel=False)
    return res.coefficients, seen, float(sum(m["psnr"]) / len(m["psnr"]))


def test_network_autocast_is_off_when_disabled() -> None:
    with inference.network_autocast(torch.device("cpu"), enabled=False):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no native bf16 on this CPU")
def test_bf16_unet_keeps_the_reconstruction(tiny_scan: Path, monkeypatch) -> None:
    bf16, seen, psnr16 = _run(tiny_scan, "spurig")
    assert seen and all(seen)  # every UNet pass ran under bf16 autocast
    monkeypatch.setattr(inference, "bf16_supported", lambda device: False)  # the float32 path
    fp32, seen32, psnr32 = _run(tiny_scan, "spurig")
    assert seen32 and not any(seen32)
    assert bf16.dtype == torch.complex64
    err = float(torch.linalg.vector_norm(bf16 - fp32) / torch.linalg.vector_norm(fp32))
    assert 0 < err < 0.01
    assert abs(psnr16 - psnr32) < 0.05


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no native bf16 on this CPU")
def test_channels_last_3d_unet_keeps_the_reconstruction(tiny_scan: Path, monkeypatch) -> None:
    layouts: list[bool] = []

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Conv3d):  # runs after the UNet's conversion hook
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))

    monkeypatch.setattr(inference, "CHANNELS_LAST", True)
    handle = register_module_forward_pre_hook(hook)
    try:
        cl, _, psnr_cl = _run(tiny_scan, "spurig")
    finally:
        handle.remove()
    assert layouts and all(layouts)  # every 3D convolution saw a channels-last input
    monkeypatch.setattr(inference, "CHANNELS_LAST", False)
    plain, _, psnr_plain = _run(tiny_scan, "spurig")
    err = float(torch.linalg.vector_norm(cl - plain) / torch.linalg.vector_norm(plain))
    assert err < 0.01 and abs(psnr_cl - psnr_plain) < 0.05
