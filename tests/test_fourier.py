"""Oracle tests of the Fourier operators against independent references (numpy, direct sums)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helper import random_like_shape, rel_err
from spurig_core.errors import InputError
from spurig_core.operators.fourier import (
    NUFFT,
    FFTOperator,
    PadOperator,
    apply_linear,
    crop3,
    fft3c,
    ifft3c,
    pad3,
)


def _direct_forward(image: np.ndarray, k: np.ndarray) -> np.ndarray:
    """SPEC §3 written out: ``Σ_r m(r) exp(-2πi k·(r − N//2)/N)`` in complex128."""
    n = np.array(image.shape[-3:])
    grids = np.meshgrid(*[np.arange(s) - s // 2 for s in n], indexing="ij")
    pos = np.stack(grids, -1).reshape(-1, 3).astype(np.float64)  # (voxels, 3)
    phase = np.exp(-2j * np.pi * (k.reshape(-1, 3) / n) @ pos.T)  # (M, voxels)
    flat = image.reshape(-1, pos.shape[0]).astype(np.complex128)
    return (flat @ phase.T).reshape(*image.shape[:-3], *k.shape[:-1])


@pytest.mark.parametrize("shape", [(8, 8, 8), (2, 6, 4, 10), (7, 6, 5), (5, 9, 3)])
def test_fft3c_matches_numpy_fftshift(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    ax = (-3, -2, -1)
    ref = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=ax), axes=ax), axes=ax)
    out = fft3c(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    back = ifft3c(torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-10 * np.abs(x).max())


def test_fft3c_is_the_spec_forward_model_at_integer_frequencies() -> None:
    rng = np.random.default_rng(1)
    n = (6, 5, 4)
    m = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    q = np.stack(np.meshgrid(*[np.arange(s) - s // 2 for s in n], indexing="ij"), -1)
    ref = _direct_forward(m, q.astype(np.float64))
    out = fft3c(torch.from_numpy(m)).numpy()
    assert np.abs(out - ref).max() < 1e-5 * np.abs(ref).max()


def test_fft_norms_and_operator_scaling(rng: torch.Generator) -> None:
    x = random_like_shape((8, 8, 8), rng, torch.complex128)
    y = fft3c(x)
    assert rel_err(ifft3c(y), x) < 1e-12
    # unscaled forward: Parseval gives ||y||² = N ||x||²
    n = 8**3
    assert abs(float(y.abs().pow(2).sum() / x.abs().pow(2).sum()) - n) < 1e-8 * n
    op = FFTOperator((8, 8, 8), unitary=True)
    assert rel_err(op.adjoint(op.forward(x)), x) < 1e-12
    assert rel_err(op.forward(x), y / n**0.5) < 1e-12
    plain = FFTOperator((8, 8, 8))
    assert rel_err(plain.gram(x), n * x) < 1e-12


def test_pad_crop_centring() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5).to(torch.complex64)
    y = pad3(x, (8, 8, 9))
    assert y.shape == (2, 8, 8, 9)
    # image centre voxel (N//2) lands on the grid centre (X//2)
    assert y[1, 4, 4, 4] == x[1, 1, 2, 2]
    assert float(y.abs().sum()) == float(x.abs().sum())
    assert torch.equal(crop3(y, (3, 4, 5)), x)
    op = PadOperator((2, 3, 4, 5), (8, 8, 9))
    assert torch.equal(op.H(op(x)), x)
    with pytest.raises(InputError):
        pad3(x, (2, 8, 8))


def test_padded_fft_evaluates_spec_model_at_grid_frequencies() -> None:
    """grid.py's convention: index p of the X-point grid ↔ frequency (p − X//2)·N/X."""
    rng = np.random.default_rng(2)
    n, grid = (6, 6, 4), (10, 8, 6)
    m = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    big = fft3c(pad3(torch.from_numpy(m), grid)).numpy()
    p = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), -1).astype(float)
    k = (p - np.array(grid) // 2) * np.array(n) / np.array(grid)
    ref = _direct_forward(m, k)
    assert np.abs(big - ref).max() < 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("matrix", [(8, 8, 8), (6, 7, 5)])
def test_nufft_matches_direct_dft(matrix: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(3)
    n = np.array(matrix)
    k = rng.uniform(-0.5, 0.5, (3, 40, 3)) * n  # within [-N/2, N/2)
    m = (rng.standard_normal((2, *matrix)) + 1j * rng.standard_normal((2, *matrix))).astype(
        np.complex64
    )
    op = NUFFT(torch.from_numpy(k).float(), matrix, batch=(2,), eps=1e-6)
    out = op(torch.from_numpy(m)).numpy()
    ref = _direct_forward(m, k.astype(np.float32).astype(np.float64))
    assert out.shape == (2, 3, 40)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5
    # adjoint vs the direct adjoint sum
    y = (rng.standard_normal((2, 3, 40)) + 1j * rng.standard_normal((2, 3, 40))).astype(
        np.complex64
    )
    grids = np.meshgrid(*[np.arange(s) - s // 2 for s in matrix], indexing="ij")
    pos = np.stack(grids, -1).reshape(-1, 3)
    ph = np.exp(2j * np.pi * pos @ (k.astype(np.float32).reshape(-1, 3) / n).T)  # (voxels, M)
    ref_adj = (y.reshape(2, -1).astype(np.complex128) @ ph.T).reshape(2, *matrix)
    adj = op.adjoint(torch.from_numpy(y)).numpy()
    assert np.linalg.norm(adj - ref_adj) / np.linalg.norm(ref_adj) < 1e-5


def test_nufft_on_integer_frequencies_equals_fft3c(rng: torch.Generator) -> None:
    matrix = (8, 6, 4)
    q = torch.stack(torch.meshgrid(*[torch.arange(s) - s // 2 for s in matrix], indexing="ij"), -1)
    x = random_like_shape(matrix, rng)
    op = NUFFT(q.float(), matrix, eps=1e-6)
    assert rel_err(op(x), fft3c(x)) < 1e-5


def test_nufft_accuracy_follows_eps_and_chunking(rng: torch.Generator) -> None:
    matrix = (12, 12, 12)
    k = (torch.rand((500, 3), generator=rng) - 0.5) * 12
    x = random_like_shape((3, *matrix), rng)
    ref = torch.from_numpy(_direct_forward(x.numpy(), k.double().numpy()))
    errs = [rel_err(NUFFT(k, matrix, batch=(3,), eps=e)(x), ref) for e in (1e-2, 1e-4, 1e-6)]
    assert errs[0] < 1e-2 and errs[1] < 1e-4 and errs[2] < 1e-5
    assert errs[2] < errs[1] < errs[0]
    chunked = NUFFT(k, matrix, batch=(3,), eps=1e-6, n_trans=2)
    assert rel_err(chunked(x), ref) < 1e-5
    # plans are reused: a second call gives the same answer
    assert torch.equal(chunked(x), chunked(x))


def test_nufft_rejects_bad_trajectories() -> None:
    with pytest.raises(InputError, match="NaN"):
        NUFFT(torch.tensor([[0.0, float("nan"), 0.0]]), (8, 8, 8))
    with pytest.raises(InputError, match="exceeds"):
        NUFFT(torch.tensor([[0.0, 20.0, 0.0]]), (8, 8, 8))
    with pytest.raises(InputError, match="trajectory"):
        NUFFT(torch.zeros(5, 2), (8, 8, 8))


def test_gradient_of_a_loss_through_nufft(rng: torch.Generator) -> None:
    """d/dx ½‖A x − b‖² = A^H (A x − b): what data-consistency training relies on."""
    matrix = (6, 6, 6)
    k = (torch.rand((2, 50, 3), generator=rng) - 0.5) * 6
    op = NUFFT(k, matrix, eps=1e-6)
    x = random_like_shape(matrix, rng).requires_grad_(True)
    b = random_like_shape((2, 50), rng)
    loss = 0.5 * (op(x) - b).abs().pow(2).sum()
    loss.backward()
    ref = op.adjoint(op(x.detach()) - b)
    assert rel_err(x.grad, ref) < 1e-4
    # double backward (gradient of a gradient) goes through the operator again
    x2 = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(0.5 * (op(x2) - b).abs().pow(2).sum(), x2, create_graph=True)
    v = random_like_shape(matrix, rng)
    (hv,) = torch.autograd.grad(g, x2, grad_outputs=v)
    assert rel_err(hv, op.adjoint(op(v))) < 1e-4


def test_apply_linear_without_grad_is_plain_call() -> None:
    x = torch.ones(3, dtype=torch.complex64)
    out = apply_linear(x, lambda t: 2 * t, lambda t: 2 * t)
    assert not out.requires_grad and torch.equal(out, 2 * x)
