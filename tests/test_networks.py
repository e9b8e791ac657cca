"""Step-conditioned UNets (paper appendix A.1): shapes, whitening, FiLM, residual, 2D slicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.recon.networks import (
    AXIS_FLIPS,
    Denoiser,
    UNet,
    UNetConfig,
    channels_to_complex,
    complex_to_channels,
    sinusoidal_embedding,
    unwhiten,
    whiten,
    whitening_stats,
)


def _alpha(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.complex64, generator=g)


def _randomise_film(model: torch.nn.Module, seed: int = 3) -> None:
    """Random FiLM heads and output convolution (both start at zero), as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".film." in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "unet.out." in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("dim", [3, 2])
@pytest.mark.parametrize("shape", [(5, 16, 16, 16), (2, 5, 12, 16, 10)])
def test_shapes_and_dtype_round_trip(dim: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = Denoiser(UNetConfig(dim=dim, base_width=8))
    a = _alpha(shape)
    out = net(a, 2)
    assert out.shape == a.shape and out.dtype == torch.complex64
    assert torch.isfinite(out).all()


def test_bad_input_is_named() -> None:
    net = Denoiser(UNetConfig(base_width=8))
    with pytest.raises(InputError, match="Denoiser"):
        net(_alpha((4, 8, 8, 8)), 1)
    with pytest.raises(InputError, match="complex"):
        net(torch.zeros(5, 8, 8, 8), 1)


def test_channel_packing_is_exact_inverse() -> None:
    a = _alpha((2, 5, 4, 6, 3))
    x = complex_to_channels(a)
    assert x.shape == (2, 10, 4, 6, 3)
    # channel 2k is the real part, 2k+1 the imaginary part of coefficient k
    assert torch.equal(x[:, 4], a[:, 2].real) and torch.equal(x[:, 5], a[:, 2].imag)
    assert torch.equal(channels_to_complex(x), a)


def test_whitening_is_invertible_and_whitens() -> None:
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    mix = q @ np.diag(rng.uniform(0.05, 20, size=10)) @ q.T  # correlated, condition ≤ 400
    raw = rng.normal(size=(10, 20 * 20 * 20))
    x = torch.tensor(
        (mix @ raw + rng.normal(size=(10, 1)) * 7).reshape(1, 10, 20, 20, 20), dtype=torch.float32
    )
    mean, w, w_inv = whitening_stats(x)
    z = whiten(x, mean, w)
    # independent reference: numpy mean and (biased) covariance of the whitened data
    zf = z[0].reshape(10, -1).double().numpy()
    np.testing.assert_allclose(zf.mean(1), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(zf, bias=True), np.eye(10), atol=2e-3)
    # symmetric inverse square root of numpy's covariance
    evals, evecs = np.linalg.eigh(np.cov(x[0].reshape(10, -1).double().numpy(), bias=True))
    ref_w = evecs @ np.diag(evals**-0.5) @ evecs.T
    np.testing.assert_allclose(w[0].double().numpy(), ref_w, rtol=1e-3, atol=1e-6)
    back = unwhiten(z, mean, w_inv)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-3 * float(x.abs().max()) * 1e-2)


def test_whitening_survives_degenerate_channels() -> None:
    x = torch.zeros(1, 10, 6, 6, 6)
    x[:, 0] = 1.0  # constant channel, all others zero: covariance is zero
    mean, w, w_inv = whitening_stats(x)
    assert torch.isfinite(w).all() and torch.isfinite(w_inv).all()
    torch.testing.assert_close(unwhiten(whiten(x, mean, w), mean, w_inv), x)


def test_sinusoidal_embedding() -> None:
    e = sinusoidal_embedding(torch.tensor([0.0, 3.0]), 48)
    assert e.shape == (2, 48)
    torch.testing.assert_close(e[0, :24], torch.zeros(24))
    torch.testing.assert_close(e[0, 24:], torch.ones(24))
    assert e[1, 0] == pytest.approx(np.sin(3.0))


def test_film_changes_output_with_index_and_is_inert_when_zero() -> None:
    torch.manual_seed(1)
    net = Denoiser(UNetConfig(base_width=8))
    a = _alpha((5, 16, 16, 16), seed=2)
    with torch.no_grad():
        # fresh network: FiLM heads start at zero, so the index has no effect
        torch.testing.assert_close(net(a, 1), net(a, 5))
        _randomise_film(net)
        y1, y5 = net(a, 1), net(a, 5)
    assert float((y1 - y5).abs().max()) > 1e-3 * float(y1.abs().max())
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".film." in name:
                p.zero_()
        torch.testing.assert_close(net(a, 1), net(a, 6))


def test_unconditioned_network_has_no_film() -> None:
    cond = Denoiser(UNetConfig(base_width=8))
    unc = Denoiser(UNetConfig(base_width=8, conditioned=False))
    assert not any(".film." in n or "embed" in n for n, _ in unc.named_parameters())
    n_cond = sum(p.numel() for p in cond.parameters())
    n_unc = sum(p.numel() for p in unc.parameters())
    assert n_unc < n_cond
    a = _alpha((5, 8, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(unc(a, 1), unc(a, 4))


def test_residual_network_with_zero_head_is_identity() -> None:
    net = Denoiser(UNetConfig(base_width=8))
    a = _alpha((5, 16, 16, 8), seed=4) * 3 + 1
    with torch.no_grad():  # a fresh network: the head starts at zero
        torch.testing.assert_close(net(a, 3), a, rtol=1e-4, atol=1e-4)
        _randomise_film(net)
        assert float((net(a, 3) - a).abs().max()) > 1e-2
    legacy = Denoiser(UNetConfig(base_width=8, zero_head=False))
    assert float(legacy.unet.out.weight.abs().max()) > 0


def test_architecture_follows_appendix() -> None:
    cfg = UNetConfig(base_width=16)
    net = UNet(cfg)
    assert len(net.enc) == 4 and len(net.dec) == 3  # four encoder–decoder levels
    blk = net.enc[1]
    assert blk.norm1.num_groups == 8 and blk.conv1.kernel_size == (3, 3, 3)
    assert blk.se.fc1.out_features == 32 // 16  # squeeze-and-excitation, reduction 16
    assert net.embed is not None and net.embed[0].in_features == 48
    assert net.out.out_channels == 10


def test_2d_network_is_slicewise() -> None:
    torch.manual_seed(2)
    cfg = UNetConfig(dim=2, base_width=8, slice_chunk=3)
    net = Denoiser(cfg)
    _randomise_film(net)
    a = _alpha((5, 16, 16, 7), seed=6)
    with torch.no_grad():
        out = net(a, 2)
        # oracle: whiten the whole volume, run the 2D UNet on each axial slice, un-whiten
        x = complex_to_channels(a[None])
        mean, w, w_inv = whitening_stats(x)
        z = whiten(x, mean, w)
        ys = [net.unet(z[..., s], torch.tensor([2.0])) for s in range(7)]
        ref = channels_to_complex(unwhiten(torch.stack(ys, -1), mean, w_inv))[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # slices are independent: changing one slice leaves the others' outputs unchanged up to
    # the (volume-wide) whitening statistics, which we keep fixed by changing nothing else
    assert out.shape == a.shape


def test_bf16_autocast_runs_and_stays_close() -> None:
    torch.manual_seed(0)
    net = Denoiser(UNetConfig(base_width=8))
    a = _alpha((5, 16, 16, 16), seed=8)
    with torch.no_grad():
        ref = net(a, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(a, 2)
    assert low.dtype == torch.complex64
    rel = float((low - ref).abs().norm() / ref.abs().norm())
    assert rel < 0.05


def test_flip_mean_is_exactly_equivariant_to_every_axis_flip() -> None:
    """8 flips: the mean over the group of axis flips commutes with each of them.

    An odd-sized volume, so that the UNet's end padding breaks the plain network's equivariance.
    """
    torch.manual_seed(5)
    plain = Denoiser(UNetConfig(base_width=8))
    _randomise_film(plain)
    ens = Denoiser(UNetConfig(base_width=8, flips=8))
    ens.load_state_dict(plain.state_dict())  # the same weights: flips adds no parameters
    a = _alpha((5, 12, 10, 9), seed=9)
    with torch.no_grad():
        for axes in AXIS_FLIPS[1:]:
            ref = ens(a, 2).flip(axes)
            torch.testing.assert_close(ens(a.flip(axes), 2), ref, rtol=1e-4, atol=1e-4)
        assert float((plain(a.flip((-3,)), 2) - plain(a, 2).flip((-3,))).abs().max()) > 1e-3


def test_flip_mean_is_the_mean_of_the_flipped_passes() -> None:
    """Oracle: 2 flips = mean of the network on the volume and on its xyz flip, flipped back."""
    torch.manual_seed(6)
    plain = Denoiser(UNetConfig(base_width=8))
    _randomise_film(plain)
    two = Denoiser(UNetConfig(base_width=8, flips=2))
    two.load_state_dict(plain.state_dict())
    a = _alpha((2, 5, 8, 12, 8), seed=10)  # a batch
    with torch.no_grad():
        ref = 0.5 * (plain(a, 3) + plain(a.flip((-3, -2, -1)), 3).flip((-3, -2, -1)))
        torch.testing.assert_close(two(a, 3), ref, rtol=1e-4, atol=1e-4)
        assert float((two(a, 3) - plain(a, 3)).abs().max()) > 1e-3


@pytest.mark.parametrize(("dim", "flips"), [(3, 3), (3, 0), (3, 16), (2, 2)])
def test_bad_flips_are_refused(dim: int, flips: int) -> None:
    with pytest.raises(InputError, match="flips"):
        UNetConfig(dim=dim, flips=flips)  # type: ignore[arg-type]
