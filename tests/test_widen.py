"""Widening a trained UNet (recon/widen.py): the wide network computes the narrow one's function.

Oracle: the narrow network itself, on random inputs, with every part of it non-trivial (random
output head, FiLM and GroupNorm affine parameters, several unroll indices).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.recon.networks import UNet, UNetConfig
from spurig_core.recon.unrolled import UnrolledRecon, estimate_lipschitz, scaled_init
from spurig_core.recon.widen import copy_map, widen_unet
from test_recipe import saved_two_step
from test_unrolled import tiny_cfg


def trained_like(cfg: UNetConfig, seed: int) -> UNet:
    """Return a UNet whose head, FiLM and GroupNorm parameters are away from their defaults."""
    torch.manual_seed(seed)
    net = UNet(cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
            film = getattr(m, "film", None)
            if film is not None:
                film.weight.normal_(0.0, 0.05)
                film.bias.normal_(0.0, 0.2)
        net.out.weight.normal_(0.0, 0.1)
        net.out.bias.normal_(0.0, 0.1)
    return net


@pytest.mark.parametrize(
    ("dim", "width", "factor", "conditioned"),
    [(3, 16, 2, True), (3, 8, 2, True), (3, 8, 4, False), (2, 16, 2, True)],
)
def test_the_wide_network_computes_the_narrow_ones_function(
    dim: int, width: int, factor: int, conditioned: bool
) -> None:
    cfg = UNetConfig(dim=dim, base_width=width, conditioned=conditioned)  # type: ignore[arg-type]
    narrow = trained_like(cfg, seed=width + factor)
    wide = widen_unet(narrow, factor, seed=3)
    assert wide.cfg.base_width == factor * width
    n_narrow = sum(p.numel() for p in narrow.parameters())
    assert sum(p.numel() for p in wide.parameters()) > 3 * n_narrow
    shape = (2, 10, *([20] * dim))  # not a multiple of 8: the padding path too
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([1.0, 3.0])
    with torch.no_grad():
        want, got = narrow(x, idx), wide(x, idx)
    residual = float((want - x).norm())
    assert residual > 0.1 * float(x.norm())  # the narrow network is far from the identity
    assert float((got - want).norm()) < 1e-5 * residual


def test_copies_are_grouped_like_the_narrow_groups_and_learn_apart() -> None:
    """Each wide GroupNorm group holds copies of one narrow group; the copies' gradients differ."""
    src = copy_map(16, 8, 2)
    assert src.tolist()[:8] == [0, 1, 0, 1, 2, 3, 2, 3]
    assert sorted(src.tolist()) == sorted(list(range(16)) * 2)
    narrow = trained_like(UNetConfig(base_width=8), seed=0)
    wide = widen_unet(narrow, 2, seed=0)
    x = torch.randn(1, 10, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    wide(x, torch.ones(1)).square().mean().backward()
    assert copy_map(8, 8, 2).tolist()[:4] == [0, 0, 1, 1]  # level 0 of width 8 → 16
    g = wide.enc[0].conv1.weight.grad  # the copies 0 and 1 of channel 0, from the 10 inputs
    assert g is not None
    assert not torch.allclose(g[0], g[1], rtol=1e-3, atol=0.0)
    w = wide.enc[0].conv1.weight.detach()
    assert torch.equal(w[0], w[1])  # the same incoming weights: the same function
    split = wide.enc[0].conv2.weight.detach()[:, [0, 1]]  # outgoing weights: split unevenly
    assert not torch.allclose(split[:, 0], split[:, 1])
    want = narrow.enc[0].conv2.weight.detach()[copy_map(8, 8, 2)][:, 0]
    torch.testing.assert_close(split.sum(1), want)  # the copies' shares add up to the original


def test_widening_refuses_what_it_cannot_preserve() -> None:
    with pytest.raises(InputError, match="at least 2"):
        widen_unet(UNet(UNetConfig(base_width=8)), 1)
    with pytest.raises(InputError, match="GroupNorm groups"):
        widen_unet(UNet(UNetConfig(base_width=4)), 2)  # 4 groups at 4 channels, 8 at 8
    with pytest.raises(InputError, match="squeeze-excitation"):
        widen_unet(UNet(UNetConfig(base_width=40, levels=2)), 2)  # 40 // 16 = 2, 80 // 16 = 5


def test_a_wider_run_starts_from_a_narrow_file_with_the_same_reconstruction(
    tmp_path: Path,
) -> None:
    """``init`` of a narrower file: the run's model is the file's, widened (recipe and stages)."""
    from spurig_core.training.stages import Trainer

    narrow, path, op, b = saved_two_step(tmp_path, shared=False, seed=4, log_mu=(0.2, -0.3))
    cfg = tiny_cfg(steps=2, share_weights=False)
    wide_cfg = type(cfg)(**{**cfg.__dict__, "network": UNetConfig(base_width=16)})
    wide = UnrolledRecon(wide_cfg).eval()
    Trainer._init_from(SimpleNamespace(model=wide), path)  # type: ignore[arg-type]
    assert wide.denoisers[1].unet.cfg.base_width == 16
    assert wide.cfg.network.base_width == 16
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    lip = estimate_lipschitz(op, ahb, iters=20)
    with torch.no_grad():
        want = narrow(op, ahb, x0, lipschitz=lip)
        torch.testing.assert_close(wide(op, ahb, x0, lipschitz=lip), want, rtol=1e-4, atol=1e-5)
    odd = UnrolledRecon(type(cfg)(**{**cfg.__dict__, "network": UNetConfig(base_width=12)}))
    with pytest.raises(InputError, match="multiple"):
        Trainer._init_from(SimpleNamespace(model=odd), path)  # type: ignore[arg-type]
