"""The LLR proximal step: oracle tests against an independent NumPy SVD reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spurig_core.config import from_dict, load_toml, to_dict
from spurig_core.errors import InputError
from spurig_core.recon.llr import (
    PAPER_THRESHOLDS,
    LLRConfig,
    LocallyLowRank,
    llr_prox,
    nuclear_norm,
    svt,
)


def _crandn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.complex64, generator=g)


def _svt_numpy(m: np.ndarray, tau: float) -> np.ndarray:
    u, s, vh = np.linalg.svd(m.astype(np.complex128), full_matrices=False)
    return (u * np.maximum(s - tau, 0.0)) @ vh


def _llr_numpy(x: np.ndarray, tau: float, block: int, shift: tuple[int, int, int]) -> np.ndarray:
    """Compute the reference: roll, visit every (possibly partial) patch, SVT it, roll back."""
    k, nx, ny, nz = x.shape
    r = np.roll(x.astype(np.complex128), shift, axis=(1, 2, 3))
    out = np.empty_like(r)
    for i in range(0, nx, block):
        for j in range(0, ny, block):
            for m in range(0, nz, block):
                p = r[:, i : i + block, j : j + block, m : m + block]
                res = _svt_numpy(p.reshape(k, -1), tau).reshape(p.shape)
                out[:, i : i + block, j : j + block, m : m + block] = res
    return np.roll(out, tuple(-s for s in shift), axis=(1, 2, 3))


def _low_rank_patches(n: int, k: int, m: int, seed: int) -> torch.Tensor:
    """Patches with a spread of singular values (some well above, some below 1)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, k, k, dtype=torch.complex128, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, m, k, dtype=torch.complex128, generator=g))
    s = torch.logspace(1, -2, k, dtype=torch.float64) * (
        1 + torch.rand(n, k, generator=g, dtype=torch.float64)
    )
    return (u * s[:, None, :].to(u.dtype)) @ v.mH


@pytest.mark.parametrize("method", ["eigh", "svd"])
@pytest.mark.parametrize("tau", [0.0, 0.05, 1.0, 30.0])
def test_svt_matches_numpy_svd(method: str, tau: float) -> None:
    p = _low_rank_patches(64, 5, 1000, seed=1)
    ref = np.stack([_svt_numpy(m, tau) for m in p.numpy()])
    got = svt(p.to(torch.complex64), tau, method=method).numpy()  # type: ignore[arg-type]
    err = np.abs(got - ref).max()
    sigma_max = float(torch.linalg.matrix_norm(p, ord=2).max())
    assert err <= 1e-5 * sigma_max, err  # float32 accuracy relative to the largest σ


def test_svt_eigh_equals_svd_on_random_patches() -> None:
    p = _crandn((200, 5, 1000), seed=2)
    tau = float(torch.linalg.svdvals(p).median())  # cuts through the spectrum
    a = svt(p, tau, method="eigh")
    b = svt(p, tau, method="svd")
    sigma_max = float(torch.linalg.matrix_norm(p, ord=2).max())
    assert float((a - b).abs().max()) < 1e-6 * sigma_max
    assert float((a - b).abs().max()) < 1e-4 * float(b.abs().max())


def test_rank_one_patch_kept_or_zeroed() -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.randn(5, dtype=torch.complex64, generator=g)
    v = torch.randn(1000, dtype=torch.complex64, generator=g)
    x = torch.outer(u, v).reshape(5, 10, 10, 10)
    sigma = float(torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v))
    small = llr_prox(x, 1e-3 * sigma, block=10)
    torch.testing.assert_close(small, x * (1 - 1e-3), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(llr_prox(x, 1.01 * sigma, block=10)) == 0


@pytest.mark.parametrize(
    ("shape", "block", "shift"),
    [
        ((5, 12, 12, 12), 6, (0, 0, 0)),
        ((5, 12, 12, 12), 6, (2, 5, 1)),
        ((3, 13, 11, 9), 5, (4, 0, 3)),
        ((5, 7, 8, 9), 10, (3, 2, 1)),
    ],
)
def test_llr_prox_matches_patchwise_reference(
    shape: tuple[int, ...], block: int, shift: tuple[int, int, int]
) -> None:
    x = _crandn(shape, seed=4)
    tau = 1.5
    got = llr_prox(x, tau, block=block, shift=shift)
    ref = _llr_numpy(x.numpy(), tau, block, shift)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_allclose(got.numpy(), ref, atol=5e-5, rtol=0)
    # the SVD path and a small max_patches give the same result
    alt = llr_prox(x, tau, block=block, shift=shift, method="svd", max_patches=1)
    torch.testing.assert_close(alt, got, atol=5e-5, rtol=0)


def test_prox_minimises_the_prox_objective() -> None:
    """prox(v) = argmin ½‖x − v‖² + τ R(x): random perturbations never do better."""
    v = _crandn((5, 8, 8, 8), seed=5)
    tau, block, shift = 2.0, 4, (1, 2, 3)
    p = llr_prox(v, tau, block=block, shift=shift)

    def obj(x: torch.Tensor) -> float:
        d = float(torch.linalg.vector_norm((x - v).to(torch.complex128)) ** 2)
        return 0.5 * d + tau * nuclear_norm(x, block=block, shift=shift)

    best = obj(p)
    g = torch.Generator().manual_seed(6)
    for eps in (1e-1, 1e-2):
        for _ in range(5):
            d = torch.randn(v.shape, dtype=torch.complex64, generator=g)
            assert obj(p + eps * d) > best
    assert best < obj(v)


def test_zero_threshold_is_identity_and_input_untouched() -> None:
    x = _crandn((5, 10, 10, 10), seed=7)
    before = x.clone()
    y = llr_prox(x, 0.0, block=5, shift=(1, 1, 1))
    torch.testing.assert_close(y, x, atol=2e-6, rtol=0)
    assert torch.equal(x, before)


def test_locally_low_rank_shifts_are_random_and_seeded() -> None:
    x = _crandn((5, 10, 10, 10), seed=8)
    a, b = LocallyLowRank(3.0, block=5, seed=11), LocallyLowRank(3.0, block=5, seed=11)
    shifts_a, shifts_b = [], []
    for _ in range(6):
        ya, yb = a(x, 1.0), b(x, 1.0)
        torch.testing.assert_close(ya, yb)
        shifts_a.append(a.last_shift)
        shifts_b.append(b.last_shift)
        torch.testing.assert_close(ya, llr_prox(x, 3.0, block=5, shift=a.last_shift))
    assert shifts_a == shifts_b
    assert len(set(shifts_a)) > 1
    assert all(0 <= s < 5 for sh in shifts_a for s in sh)
    # the step scales the threshold
    fixed = LocallyLowRank(3.0, block=5, random_shift=False)
    torch.testing.assert_close(fixed(x, 0.5), llr_prox(x, 1.5, block=5))


def test_bad_inputs_raise_input_error() -> None:
    with pytest.raises(InputError, match="basis, x, y, z"):
        llr_prox(torch.zeros(5, 4, 4, dtype=torch.complex64), 1.0)
    with pytest.raises(InputError, match="threshold"):
        llr_prox(torch.zeros(5, 4, 4, 4, dtype=torch.complex64), -1.0)
    with pytest.raises(InputError, match="threshold"):
        LocallyLowRank(float("nan"))


def test_config_defaults_roundtrip_and_lookup() -> None:
    cfg = LLRConfig()
    assert cfg.iterations == 40 and cfg.block == 10
    # The defaults are the values tuned on validation subjects and recorded in configs/.
    recorded = load_toml(
        LLRConfig, Path(__file__).parents[1] / "configs" / "llr-tuned.toml", table="llr"
    )
    assert cfg.thresholds == recorded.thresholds
    assert PAPER_THRESHOLDS == {"6min": 5e-5, "2min": 1e-4, "1min": 1e-4, "30s": 1.5e-4}
    paper = LLRConfig(thresholds=dict(PAPER_THRESHOLDS))
    assert from_dict(LLRConfig, to_dict(cfg)) == cfg
    tuned = from_dict(LLRConfig, {"thresholds": {"2min": 0.3}, "block": 8})
    assert tuned.threshold_for(duration="2min") == 0.3
    assert tuned.threshold_for(groups=16) == 0.3
    assert paper.threshold_for(groups=4) == 1.5e-4
    assert paper.threshold_for(groups=40) == 5e-5
    assert paper.threshold_for(groups=12) == 1e-4
    assert cfg.threshold_for(groups=4) == cfg.thresholds["30s"]
    with pytest.raises(InputError, match="duration"):
        tuned.threshold_for(duration="30s")
    with pytest.raises(InputError):
        from_dict(LLRConfig, {"thresholds": {"10min": 1.0}})
    with pytest.raises(InputError):
        from_dict(LLRConfig, {"block": 0})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prox_on_cuda_matches_cpu() -> None:
    x = _crandn((5, 20, 20, 20), seed=9)
    cpu = llr_prox(x, 2.0, block=10, shift=(3, 1, 4))
    gpu = llr_prox(x.cuda(), 2.0, block=10, shift=(3, 1, 4))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
