"""The one finufft wrapper (issue #18): conventions of SPEC §3 and no other finufft caller."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import spurig_core
from spurig_core.errors import NotAvailableError
from spurig_core.operators.fourier import NUFFT, cufinufft_available, nufft_plan

SRC = Path(spurig_core.__file__).parent


def _direct_type2(image: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``Σ_r image[r] exp(−2πi k·(r − N//2)/N)`` by brute force: (points,)."""
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in image.shape], indexing="ij")
    pos = np.stack([g.reshape(-1) / n for g, n in zip(grids, image.shape, strict=True)], axis=1)
    return np.exp(-2j * np.pi * (k @ pos.T)) @ image.reshape(-1)


def _points(k: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    return [np.ascontiguousarray(2 * np.pi * k[:, d] / shape[d]) for d in range(3)]


def test_type2_plan_is_the_spec_forward_sum() -> None:
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)  # odd and even sizes
    image = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    k = rng.uniform(-2.5, 2.5, size=(40, 3))
    plan = nufft_plan(2, shape, eps=1e-12, dtype="complex128", nthreads=1)
    plan.setpts(*_points(k, shape))
    got = plan.execute(np.ascontiguousarray(image))
    np.testing.assert_allclose(got, _direct_type2(image, k), rtol=0, atol=1e-9)


def test_type1_plan_is_the_adjoint_of_type2() -> None:
    rng = np.random.default_rng(1)
    shape = (8, 6, 5)
    k = rng.uniform(-3.0, 3.0, size=(64, 3))
    x = rng.normal(size=(2, *shape)) + 1j * rng.normal(size=(2, *shape))
    y = rng.normal(size=(2, 64)) + 1j * rng.normal(size=(2, 64))
    fwd = nufft_plan(2, shape, n_trans=2, eps=1e-12, dtype="complex128", nthreads=1)
    adj = nufft_plan(1, shape, n_trans=2, eps=1e-12, dtype="complex128", nthreads=1)
    for plan in (fwd, adj):
        plan.setpts(*_points(k, shape))
    ax = fwd.execute(np.ascontiguousarray(x))
    ahy = adj.execute(np.ascontiguousarray(y))
    lhs, rhs = np.vdot(ax, y), np.vdot(x, ahy)
    assert abs(lhs - rhs) <= 1e-9 * abs(lhs)


def test_nufft_operator_uses_the_same_plans() -> None:
    """The operator's forward equals the wrapper's type 2 at the operator's precision."""
    gen = torch.Generator().manual_seed(2)
    shape = (8, 8, 8)
    traj = (torch.rand(3, 10, 3, generator=gen) - 0.5) * 6
    x = torch.randn(*shape, dtype=torch.complex64, generator=gen)
    op = NUFFT(traj, shape, eps=1e-6, nthreads=1)
    plan = nufft_plan(2, shape, eps=1e-6, nthreads=1)
    pts = _points(traj.reshape(-1, 3).double().numpy(), shape)
    plan.setpts(*[p.astype(np.float32) for p in pts])
    want = plan.execute(np.ascontiguousarray(x.numpy()))
    got = op.forward(x).reshape(-1).numpy()
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_gpu_plan_needs_cufinufft() -> None:
    if cufinufft_available():
        pytest.skip("cufinufft is installed")
    try:
        import cufinufft  # noqa: F401
    except ImportError:
        with pytest.raises(NotAvailableError, match="cufinufft"):
            nufft_plan(2, (4, 4, 4), gpu=True)
    else:  # pragma: no cover - cufinufft without CUDA
        pytest.skip("cufinufft is importable (no CUDA device)")


def test_only_the_fourier_module_calls_finufft() -> None:
    """Every finufft/cufinufft plan is made by ``operators.fourier.nufft_plan``."""
    callers = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("finufft", "cufinufft") for n in names):
                callers.append(str(path.relative_to(SRC)))
    assert sorted(set(callers)) == [str(Path("operators") / "fourier.py")]
