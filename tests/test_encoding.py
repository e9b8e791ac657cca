"""Oracle tests of the subspace encodings: direct sums, explicit matrices, NUFFT vs gridded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helper import random_like_shape, rel_err
from spurig_core._checkpoint import all_finite
from spurig_core.errors import InputError
from spurig_core.operators.encoding import (
    EncodingConfig,
    GriddedSubspaceEncoding,
    SubspaceNUFFTEncoding,
    _sq_norm,
    adjoint_scale,
)
from spurig_core.operators.grid import GriddedData, grid_shape, nearest_grid_index

MATRIX = (6, 6, 4)
COILS, GROUPS, TR, SAMPLES, BASIS = 3, 2, 5, 16, 3

#: The plain data term ½‖Aα − b‖² (no density compensation): comparable with the NUFFT encoding.
PLAIN = EncodingConfig(density_compensation=0.0)


def _setup(g: torch.Generator, matrix=MATRIX, duplicates: bool = True):
    n = torch.tensor(matrix, dtype=torch.float32)
    traj = (torch.rand((GROUPS, TR, SAMPLES, 3), generator=g) - 0.5) * n
    if duplicates:  # the same k-space point twice within a TR and across TRs
        traj[:, :, 1] = traj[:, :, 0]
        traj[1, 2] = traj[0, 2]
    grid = grid_shape(matrix, 1.5)
    index, _ = nearest_grid_index(traj, matrix, grid)
    values = random_like_shape((COILS, GROUPS, TR, SAMPLES), g)
    maps = random_like_shape((COILS, *matrix), g)
    basis = random_like_shape((TR, BASIS), g)
    return traj, GriddedData(values, index, grid, matrix), maps, basis


def _grid_frequencies(gd: GriddedData) -> torch.Tensor:
    p = torch.stack(torch.unravel_index(gd.index, gd.grid), -1).double()
    g = torch.tensor(gd.grid, dtype=torch.float64)
    return (p - torch.div(g, 2, rounding_mode="floor")) * torch.tensor(gd.matrix) / g


def _direct_encoding(alpha, maps, basis, k) -> np.ndarray:
    """SPEC §3 with m_t = Σ_k Φ̃[t,k] α_k, all in complex128 numpy."""
    alpha, maps, basis = (np.asarray(t, dtype=np.complex128) for t in (alpha, maps, basis))
    k = np.asarray(k, dtype=np.float64)
    n = np.array(alpha.shape[1:])
    pos = np.stack(np.meshgrid(*[np.arange(s) - s // 2 for s in n], indexing="ij"), -1)
    pos = pos.reshape(-1, 3)
    g, t, s, _ = k.shape
    out = np.zeros((maps.shape[0], g, t, s), dtype=np.complex128)
    for ti in range(t):
        m_t = np.tensordot(basis[ti], alpha, axes=(0, 0)).reshape(-1)  # (voxels,)
        ph = np.exp(-2j * np.pi * (k[:, ti].reshape(-1, 3) / n) @ pos.T)  # (g·s, voxels)
        for c in range(maps.shape[0]):
            out[c, :, ti] = (ph @ (maps[c].reshape(-1) * m_t)).reshape(g, s)
    return out


def test_gridded_forward_matches_direct_sum(rng: torch.Generator) -> None:
    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    alpha = random_like_shape((BASIS, *MATRIX), rng)
    ref = _direct_encoding(alpha, maps, basis, _grid_frequencies(gd))
    out = op(alpha).numpy()
    assert out.shape == (COILS, GROUPS, TR, SAMPLES)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_nufft_encoding_matches_direct_sum(rng: torch.Generator) -> None:
    traj, _, maps, basis = _setup(rng)
    op = SubspaceNUFFTEncoding(traj, maps, basis, eps=1e-6)
    alpha = random_like_shape((BASIS, *MATRIX), rng)
    ref = _direct_encoding(alpha, maps, basis, traj)
    assert np.linalg.norm(op(alpha).numpy() - ref) / np.linalg.norm(ref) < 1e-5


def test_gridded_equals_nufft_at_grid_points(rng: torch.Generator) -> None:
    _, gd, maps, basis = _setup(rng)
    grid_op = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    nufft_op = SubspaceNUFFTEncoding(_grid_frequencies(gd).float(), maps, basis, eps=1e-6)
    alpha = random_like_shape((BASIS, *MATRIX), rng)
    assert rel_err(grid_op(alpha), nufft_op(alpha)) < 1e-5
    assert rel_err(grid_op.adjoint(gd.values), nufft_op.adjoint(gd.values)) < 1e-5
    assert rel_err(grid_op.gram(alpha), nufft_op.gram(alpha)) < 1e-5


@pytest.mark.parametrize(("sparse", "density"), [(False, 0.0), (True, 0.0), (True, 1.0)])
def test_gridded_gram_equals_explicit_normal_matrix(
    sparse: bool, density: float, rng: torch.Generator
) -> None:
    matrix = (4, 2, 2)
    _, gd, maps, basis = _setup(rng, matrix)
    op = GriddedSubspaceEncoding(
        gd,
        maps,
        basis,
        config=EncodingConfig(sparse=sparse, chunk=40, density_compensation=density),
    )
    n_in = BASIS * 4 * 2 * 2
    eye = torch.eye(n_in, dtype=torch.complex64).reshape(n_in, BASIS, *matrix)
    a = torch.stack([op(e).reshape(-1) for e in eye], 1).to(torch.complex128)  # (out, in)
    normal = a.conj().T @ a
    gram_cols = torch.stack([op.gram(e).reshape(-1) for e in eye], 1).to(torch.complex128)
    assert rel_err(gram_cols, normal) < 1e-5
    # and it is Hermitian positive semi-definite, as a normal operator must be
    assert rel_err(gram_cols, gram_cols.conj().T) < 1e-5
    assert float(
        torch.linalg.eigvalsh(0.5 * (gram_cols + gram_cols.conj().T)).min()
    ) > -1e-3 * float(normal.abs().max())


def test_kernels_count_duplicates(rng: torch.Generator) -> None:
    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    ref = np.zeros((BASIS, BASIS, int(np.prod(gd.grid))), dtype=np.complex128)
    phi = basis.numpy().astype(np.complex128)
    idx = gd.index.numpy()
    for g in range(GROUPS):
        for t in range(TR):
            for s in range(SAMPLES):
                ref[:, :, idx[g, t, s]] += np.outer(phi[t].conj(), phi[t])
    kern = op.kernels.reshape(BASIS, BASIS, -1).numpy()
    assert np.abs(kern - ref).max() < 1e-5 * np.abs(ref).max()
    # duplicates really occurred in this set-up
    assert len(np.unique(idx)) < idx.size


def test_projected_data_and_adjoint_data(rng: torch.Generator) -> None:
    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    proj = op.project()
    assert proj.shape == (COILS, BASIS, *gd.grid)
    ref = np.zeros((COILS, BASIS, int(np.prod(gd.grid))), dtype=np.complex128)
    b, idx, phi = gd.values.numpy(), gd.index.numpy(), basis.numpy()
    for g in range(GROUPS):
        for t in range(TR):
            for s in range(SAMPLES):
                ref[:, :, idx[g, t, s]] += np.conj(phi[t])[None, :] * b[:, g, t, s, None]
    assert np.abs(proj.reshape(COILS, BASIS, -1).numpy() - ref).max() < 1e-5 * np.abs(ref).max()
    ahb = op.adjoint(gd.values)
    assert rel_err(op.adjoint_data(), ahb) < 1e-6
    assert rel_err(op.adjoint_projected(proj), ahb) < 1e-6
    other = random_like_shape(gd.values.shape, rng)
    assert rel_err(op.adjoint_data(other), op.adjoint(other)) < 1e-6
    # the cached A^H b is not handed out by reference
    first = op.adjoint_data()
    first.zero_()
    assert float(op.adjoint_data().abs().sum()) > 0


def test_dense_and_sparse_kernels_agree(rng: torch.Generator) -> None:
    _, gd, maps, basis = _setup(rng)
    dense = GriddedSubspaceEncoding(gd, maps, basis, config=EncodingConfig(sparse=False))
    sparse = GriddedSubspaceEncoding(gd, maps, basis, config=EncodingConfig(sparse=True))
    assert not dense.sparse and sparse.sparse
    x = random_like_shape((BASIS, *MATRIX), rng)
    assert rel_err(sparse.gram(x), dense.gram(x)) < 1e-6
    # interleaving adjoint and gram keeps the sparse work buffer valid
    sparse.adjoint(gd.values)
    assert rel_err(sparse.gram(x), dense.gram(x)) < 1e-6
    assert torch.equal(sparse.kernels, dense.kernels)


def test_gram_mixes_several_coils_at_a_time_exactly(
    rng: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coils mixed one, two (3 coils: a short last group) and all at a time = coil by coil."""
    from spurig_core.operators import encoding

    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=EncodingConfig(sparse=True, chunk=7))
    x = random_like_shape((BASIS, *MATRIX), rng)
    per_coil = BASIS * round(op.sampled_fraction * op.n_grid) * 8  # bytes of one coil
    results = {}
    monkeypatch.setattr(encoding, "_MIX_GRID_BUFFERS", 0)  # the budget is _MIX_BYTES alone
    for budget in (per_coil - 1, 2 * per_coil, 1 << 30):
        monkeypatch.setattr(encoding, "_MIX_BYTES", budget)
        results[op._coils_per_mix()] = op.gram(x)
    assert sorted(results) == [1, 2, COILS]
    assert rel_err(results[2], results[1]) < 1e-6
    assert rel_err(results[COILS], results[1]) < 1e-6
    # the coil-by-coil path of one block (chunk 0, as on CUDA) gives the same gram
    one_block = GriddedSubspaceEncoding(
        gd, maps, basis, config=EncodingConfig(sparse=True, chunk=0)
    )
    assert rel_err(one_block.gram(x), results[1]) < 1e-6
    # the zeroed work buffer survives an adjoint in between (it writes the same buffer)
    op.adjoint(gd.values)
    assert rel_err(op.gram(x), results[COILS]) < 1e-6


def test_buffers_are_not_aliased(rng: torch.Generator) -> None:
    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    x1, x2 = random_like_shape((BASIS, *MATRIX), rng), random_like_shape((BASIS, *MATRIX), rng)
    g1 = op.gram(x1)
    keep = g1.clone()
    op.gram(x2)
    op.forward(x2)
    assert torch.equal(g1, keep)
    op.release_buffers()
    assert rel_err(op.gram(x1), keep) < 1e-6


def test_adjoint_scale_matches_its_definition(rng: torch.Generator) -> None:
    traj, gd, maps, basis = _setup(rng)
    for op in (
        GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN),
        SubspaceNUFFTEncoding(traj, maps, basis, eps=1e-6),
    ):
        b = gd.values
        s = adjoint_scale(op, b)
        direct = float(b.abs().pow(2).sum().sqrt() / op(op.adjoint(b)).abs().pow(2).sum().sqrt())
        assert abs(s - direct) < 1e-4 * direct
        assert adjoint_scale(op, b, ahb=op.adjoint(b)) == pytest.approx(s, rel=1e-6)
    assert adjoint_scale(op, torch.zeros_like(b)) == 0.0


def test_gradient_through_a_data_consistency_step(rng: torch.Generator) -> None:
    """The gradient of ½‖Aα − b‖² is A^H(Aα − b) computed with the fast gram (unrolled training)."""
    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    alpha = random_like_shape((BASIS, *MATRIX), rng).requires_grad_(True)
    loss = 0.5 * (op(alpha) - gd.values).abs().pow(2).sum()
    loss.backward()
    ref = op.gram(alpha.detach()) - op.adjoint_data()
    assert rel_err(alpha.grad, ref) < 1e-4
    # a DC step made of gram and the cached A^H b is differentiable too
    a2 = alpha.detach().clone().requires_grad_(True)
    step = a2 - 0.1 * (op.gram(a2) - op.adjoint_data())
    v = random_like_shape(step.shape, rng)
    (g,) = torch.autograd.grad(step, a2, grad_outputs=v)
    assert rel_err(g, v - 0.1 * op.gram(v)) < 1e-4


def test_bad_inputs_are_rejected(rng: torch.Generator) -> None:
    traj, gd, maps, basis = _setup(rng)
    with pytest.raises(InputError, match="basis"):
        GriddedSubspaceEncoding(gd, maps, basis[:-1])
    with pytest.raises(InputError, match="coil maps"):
        GriddedSubspaceEncoding(gd, maps[:, :-1], basis)
    with pytest.raises(InputError, match="values"):
        GriddedSubspaceEncoding(
            GriddedData(gd.values[:-1], gd.index, gd.grid, gd.matrix), maps, basis
        )
    bad_index = gd.index.clone()
    bad_index[0, 0, 0] = int(np.prod(gd.grid))
    with pytest.raises(InputError, match="index"):
        GriddedSubspaceEncoding(GriddedData(gd.values, bad_index, gd.grid, gd.matrix), maps, basis)
    with pytest.raises(InputError, match="trajectory"):
        SubspaceNUFFTEncoding(traj[..., :2], maps, basis)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    nan = gd.values.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        op.adjoint_data(nan)
    with pytest.raises(InputError, match="GriddedSubspaceEncoding"):
        op.gram(random_like_shape((BASIS + 1, *MATRIX), rng))


@pytest.mark.cuda
def test_encodings_on_cuda_match_cpu(rng: torch.Generator) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    traj, gd, maps, basis = _setup(rng)
    alpha = random_like_shape((BASIS, *MATRIX), rng)
    cpu = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    gpu = GriddedSubspaceEncoding(gd.to("cuda"), maps.cuda(), basis.cuda(), config=PLAIN)
    assert rel_err(gpu.gram(alpha.cuda()).cpu(), cpu.gram(alpha)) < 1e-5
    assert rel_err(gpu.adjoint_data().cpu(), cpu.adjoint_data()) < 1e-5
    ncpu = SubspaceNUFFTEncoding(traj, maps, basis, eps=1e-6)
    ngpu = SubspaceNUFFTEncoding(traj.cuda(), maps.cuda(), basis.cuda(), eps=1e-6)
    assert rel_err(ngpu(alpha.cuda()).cpu(), ncpu(alpha)) < 1e-4
    assert rel_err(ngpu.adjoint(gd.values.cuda()).cpu(), ncpu.adjoint(gd.values)) < 1e-4


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_density_compensation_weights_the_data_term(gamma: float, rng: torch.Generator) -> None:
    """``W^{1/2} A`` with ``w ∝ n(p)^{-γ}`` (mean 1) against a hand-built weighted encoding."""
    _, gd, maps, basis = _setup(rng)
    plain = GriddedSubspaceEncoding(gd, maps, basis, config=PLAIN)
    op = GriddedSubspaceEncoding(gd, maps, basis, config=EncodingConfig(density_compensation=gamma))
    idx = gd.index.reshape(-1)
    counts = torch.bincount(idx, minlength=int(np.prod(gd.grid))).double()
    w = counts[idx] ** -gamma
    w = (w / w.mean()).reshape(gd.index.shape)
    assert op.weights is not None and rel_err(op.weights, w) < 1e-6
    assert plain.weights is None
    alpha = random_like_shape((BASIS, *MATRIX), rng)
    sw = w.sqrt().to(torch.complex64)
    assert rel_err(op(alpha), plain(alpha) * sw) < 1e-5
    # data side: A_w^H (W^{1/2} b) = A^H W b, and ‖W^{1/2} b‖ is the norm-matching ‖b‖
    assert rel_err(op.adjoint_data(), plain.adjoint(gd.values * sw * sw)) < 1e-5
    assert op.data_norm() == pytest.approx(float(torch.linalg.vector_norm(gd.values * sw)), 1e-5)
    assert rel_err(op.adjoint_projected(op.project()), op.adjoint_data()) < 1e-5
    # the weights flatten the kernel energy: duplicates no longer dominate the gram
    tr_plain = plain.kernels.diagonal(dim1=0, dim2=1).real.sum(-1).reshape(-1)
    tr_w = op.kernels.diagonal(dim1=0, dim2=1).real.sum(-1).reshape(-1)
    hit = tr_plain > 0
    spread = lambda t: float(t[hit].max() / t[hit].min())  # noqa: E731
    assert spread(tr_w) < spread(tr_plain)


def test_density_compensation_rejects_out_of_range() -> None:
    with pytest.raises(InputError, match="density_compensation"):
        EncodingConfig(density_compensation=1.5)


def test_nufft_and_gridded_density_weights_agree(rng: torch.Generator) -> None:
    """On samples at grid points, the weighted NUFFT and gridded encodings are the same operator."""
    _, gd, maps, basis = _setup(rng)
    cfg = EncodingConfig(density_compensation=0.5)
    grid_op = GriddedSubspaceEncoding(gd, maps, basis, config=cfg)
    nufft_op = SubspaceNUFFTEncoding(
        _grid_frequencies(gd).float(), maps, basis, eps=1e-6, density_compensation=0.5
    )
    assert grid_op.weights is not None and nufft_op.weights is not None
    assert rel_err(nufft_op.weights, grid_op.weights) < 1e-6
    alpha = random_like_shape((BASIS, *MATRIX), rng)
    assert rel_err(grid_op(alpha), nufft_op(alpha)) < 1e-5
    assert rel_err(grid_op.gram(alpha), nufft_op.gram(alpha)) < 1e-5
    b = nufft_op.data_values(gd.values)
    assert rel_err(nufft_op.adjoint(b), grid_op.adjoint_data()) < 1e-5
    with pytest.raises(InputError, match="density_compensation"):
        SubspaceNUFFTEncoding(_grid_frequencies(gd).float(), maps, basis, density_compensation=2)


def test_data_norm_is_the_complex128_norm_and_the_nan_check_stays(rng: torch.Generator) -> None:
    """Issue #14: the blocked float32/float64 norm equals the complex128 norm.

    The NaN/Inf check of the own values runs once, that of other values every time.
    """
    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis)
    assert op.weights is not None
    want = float(torch.linalg.vector_norm((gd.values * op.weights.sqrt()).to(torch.complex128)))
    assert op.data_norm() == pytest.approx(want, rel=1e-7)
    assert op.data_norm() == pytest.approx(want, rel=1e-7)  # second call: check skipped
    fresh = GriddedSubspaceEncoding(gd, maps, basis)
    fresh.adjoint_data()  # computes the norm from the same weighted values
    assert fresh.data_norm() == op.data_norm()
    big = torch.randn(3, 70_001, dtype=torch.complex64, generator=rng) * 1e3  # blocks + a tail
    assert math.sqrt(_sq_norm(big)) == pytest.approx(
        float(torch.linalg.vector_norm(big.to(torch.complex128))), rel=1e-7
    )
    bad = gd.values.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or Inf"):
        op.adjoint_data(bad)
    nan_own = GriddedSubspaceEncoding(GriddedData(bad, gd.index, gd.grid, gd.matrix), maps, basis)
    with pytest.raises(InputError, match="NaN or Inf"):
        nan_own.data_norm()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
def test_all_finite_agrees_with_the_elementwise_check(bad: float | None) -> None:
    """The one-reduction check: any NaN/Inf is found, finite values whose sum overflows pass."""
    x = torch.ones(5, 1000, dtype=torch.complex64)
    if bad is None:
        x[0, :4] = 3e38  # finite, but the sum is inf: settled element by element
    else:
        x[3, 777] = complex(1.0, bad)
    assert all_finite(x) == bool(torch.isfinite(torch.view_as_real(x)).all()) == (bad is None)
    assert all_finite(torch.empty(0))


def test_kernel_sums_are_exact_with_many_duplicates() -> None:
    """Issue #14: the sparse count-matrix build of ``K`` matches a float64 sum over the samples.

    Thousands of samples fall on a few grid points (where float32 accumulation drifted).
    """
    from spurig_core.operators.pairs import pair_product, sample_pairs

    gen = torch.Generator().manual_seed(3)
    g, t, s, n_grid, m = 4, 50, 300, 20, 9
    index = torch.randint(0, n_grid, (g, t, s), generator=gen)
    outer = torch.randn(t, m, dtype=torch.complex64, generator=gen)
    want = torch.zeros(n_grid, m, dtype=torch.complex128)
    src = outer.to(torch.complex128)[None, :, None, :].expand(g, t, s, m).reshape(-1, m)
    want.index_add_(0, index.reshape(-1), src)
    pairs = sample_pairs(index)
    assert torch.equal(pairs.points, torch.unique(index))
    got = pair_product(pairs, outer)
    assert got.dtype == torch.complex64 and got.shape == (pairs.points.numel(), m)
    assert rel_err(got.to(torch.complex128), want[pairs.points]) < 1e-6


def test_weighted_adjoint_data_matches_the_direct_sum(rng: torch.Generator) -> None:
    """Issue #14 (session 29): ``A^H W^{1/2} b`` one coil at a time, in reused work buffers.

    The own data's ``A^H b`` equals a float64 sum of ``conj(Φ̃) w b`` over each grid point's
    samples (adjoint FFT applied by the generic path), ``adjoint(data_values())`` and the
    generic adjoint after a gram has used the same buffers.
    """
    _, gd, maps, basis = _setup(rng)
    op = GriddedSubspaceEncoding(gd, maps, basis)  # density weights (γ = 0.75)
    w = op.weights
    assert w is not None
    ref = np.zeros((COILS, BASIS, int(np.prod(gd.grid))), dtype=np.complex128)
    b, idx, phi = gd.values.numpy(), gd.index.numpy(), basis.numpy()
    wn = w.double().numpy()
    for g in range(GROUPS):
        for t in range(TR):
            for s in range(SAMPLES):
                ref[:, :, idx[g, t, s]] += (
                    np.conj(phi[t])[None, :] * wn[g, t, s] * b[:, g, t, s, None]
                )
    proj = torch.from_numpy(ref.reshape(COILS, BASIS, *gd.grid)).to(torch.complex64)
    want = op.adjoint_projected(proj)
    got = op.adjoint_data()
    assert rel_err(got, want) < 1e-5
    assert rel_err(op.adjoint(op.data_values()), want) < 1e-5
    op.gram(got)  # the gram shares the z buffer; the projection's buffers are reused below
    assert rel_err(op.adjoint(op.data_values()), want) < 1e-5
    fresh = GriddedSubspaceEncoding(gd, maps, basis)
    norm = fresh.data_norm()  # before A^H b: the same per-coil sums
    assert norm == pytest.approx(
        float(torch.linalg.vector_norm((gd.values * w.sqrt()).to(torch.complex128))), rel=1e-7
    )
    assert rel_err(fresh.adjoint_data(), got) == 0.0


def test_sample_pairs_keys_are_the_same_in_int32_and_int64() -> None:
    """Issue #14 (session 29): int32 sort keys where ``points · tr`` fits, int64 beyond.

    The grouping is the same either way, and stable: a pair's samples in acquisition order.
    """
    from spurig_core.operators.pairs import sample_pairs

    gen = torch.Generator().manual_seed(5)
    g, t, s = 3, 50, 40
    index = torch.randint(0, 30, (g, t, s), generator=gen)
    small = sample_pairs(index)
    offset = 2**31 // t  # every key beyond int32
    big = sample_pairs(index + offset)
    assert torch.equal(big.points, small.points + offset)
    for name in ("perm", "pair_start", "pair_tr", "point_start"):
        assert torch.equal(getattr(big, name), getattr(small, name)), name
    flat = index.reshape(-1)
    tr = torch.arange(t).view(1, t, 1).expand(g, t, s).reshape(-1)
    for u in range(int(small.pair_tr.numel())):
        members = small.perm[small.pair_start[u] : small.pair_start[u + 1]].long()
        assert torch.all(members.diff() > 0)  # acquisition order
        assert len(set(flat[members].tolist())) == 1 and len(set(tr[members].tolist())) == 1
