"""FISTA: convergence to the least-squares solution, the Beck–Teboulle rate, progress, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurig_core.errors import Cancelled, InputError
from spurig_core.operators.base import DiagonalOperator, LinearOperator
from spurig_core.progress import ProgressEvent
from spurig_core.recon.fista import fista, lipschitz_constant


class MatrixOperator(LinearOperator):
    """``x ↦ M x`` for a dense complex matrix, acting on tensors of ``shape``."""

    def __init__(self, m: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__(shape, (m.shape[0],), name="Matrix")
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_in(x)
        return self.m @ x.reshape(-1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_out(y)
        assert self.in_shape is not None
        return (self.m.mH @ y).reshape(self.in_shape)


def _problem(
    seed: int = 0, rows: int = 90, shape: tuple[int, ...] = (2, 3, 2, 2), cond: float = 6.0
) -> tuple[MatrixOperator, torch.Tensor, np.ndarray]:
    """Return a well-posed least-squares problem with known conditioning."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    u, _ = np.linalg.qr(rng.standard_normal((rows, n)) + 1j * rng.standard_normal((rows, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n)))
    s = np.geomspace(cond, 1.0, n)
    m = (u * s) @ v.conj().T
    b = rng.standard_normal(rows) + 1j * rng.standard_normal(rows)
    op = MatrixOperator(torch.from_numpy(m.astype(np.complex64)), shape)
    return op, torch.from_numpy(b.astype(np.complex64)), m


def _objective(m: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    r = m @ x.reshape(-1).astype(np.complex128) - b
    return 0.5 * float(np.vdot(r, r).real)


def test_lipschitz_constant_is_squared_spectral_norm() -> None:
    op, b, m = _problem()
    ref = np.linalg.norm(m, 2) ** 2
    lip = lipschitz_constant(op, op.adjoint(b), iters=200, safety=1.0)
    assert abs(lip - ref) < 1e-3 * ref
    assert lipschitz_constant(op, op.adjoint(b), iters=200, safety=1.1) == pytest.approx(1.1 * lip)


def test_least_squares_converges_to_lstsq() -> None:
    op, b, m = _problem()
    ahb = op.adjoint(b)
    res = fista(op, ahb, iterations=300)
    ref = np.linalg.lstsq(m, b.numpy().astype(np.complex128), rcond=None)[0]
    err = np.linalg.norm(res.x.numpy().reshape(-1) - ref) / np.linalg.norm(ref)
    assert err < 1e-4
    assert res.x.shape == ahb.shape and res.x.dtype == torch.complex64


def test_objective_decreases_within_the_beck_teboulle_bound() -> None:
    op, b, m = _problem(seed=1, cond=20.0)
    ahb = op.adjoint(b)
    bb = b.numpy().astype(np.complex128)
    x_star = np.linalg.lstsq(m, bb, rcond=None)[0]
    f_star = _objective(m, bb, x_star)
    res = fista(op, ahb, iterations=40, save_iterations=True)
    assert res.iterations is not None
    f = np.array([_objective(m, bb, it.numpy()) for it in res.iterations])
    assert f[-1] < f[0]
    assert f[-1] < f[1] < f[0]
    # Beck & Teboulle 2009, theorem 4.4: F(x_k) − F* ≤ 2 L ‖x_0 − x*‖² / (k + 1)²
    d0 = np.linalg.norm(x_star) ** 2  # x_0 = 0
    k = np.arange(1, len(f))
    bound = 2 * res.lipschitz * d0 / (k + 1) ** 2
    assert np.all(f[1:] - f_star <= bound + 1e-4 * abs(f_star))


def test_prox_closed_form_soft_threshold() -> None:
    """The minimiser of ½‖c x − b‖² + λ‖x‖₁ (complex) is x = soft(c b, λ) / c²."""
    g = torch.Generator().manual_seed(2)
    b = torch.randn(4, 5, 6, dtype=torch.complex64, generator=g)
    c, lam = 1.7, 0.8
    op = DiagonalOperator(torch.full((4, 5, 6), c, dtype=torch.complex64))

    def soft(v: torch.Tensor, step: float) -> torch.Tensor:
        mag = v.abs()
        return torch.where(mag > lam * step, v * (1 - lam * step / mag.clamp_min(1e-30)), 0)

    res = fista(op, op.adjoint(b), prox=soft, iterations=100)
    cb = c * b
    ref = torch.where(cb.abs() > lam, cb * (1 - lam / cb.abs()), 0) / c**2
    torch.testing.assert_close(res.x, ref, atol=1e-5, rtol=1e-5)


def test_saved_iterations_and_progress_events() -> None:
    op, b, _ = _problem(seed=3)
    ahb = op.adjoint(b)
    x0 = torch.ones_like(ahb)
    events: list[ProgressEvent] = []
    res = fista(
        op, ahb, iterations=7, x0=x0, save_iterations=True, callback=events.append, stage="test"
    )
    assert res.iterations is not None
    assert res.iterations.shape == (8, *ahb.shape)
    assert res.iterations.device.type == "cpu"
    torch.testing.assert_close(res.iterations[0], x0)
    torch.testing.assert_close(res.iterations[-1], res.x)
    assert [e.step for e in events] == list(range(1, 8))
    assert all(e.total == 7 and e.stage == "test" for e in events)
    for i, e in enumerate(events):
        torch.testing.assert_close(e.data, res.iterations[i + 1])
    assert torch.equal(x0, torch.ones_like(ahb))  # the initialisation is not modified
    assert fista(op, ahb, iterations=7, x0=x0).iterations is None


def test_cancel_stops_the_solver() -> None:
    op, b, _ = _problem(seed=4)
    calls: list[int] = []

    def cb(event: ProgressEvent) -> None:
        calls.append(event.step)
        if event.step == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        fista(op, op.adjoint(b), iterations=40, callback=cb)
    assert calls == [1, 2, 3]


def test_bad_inputs() -> None:
    op, b, _ = _problem(seed=5)
    ahb = op.adjoint(b)
    with pytest.raises(InputError, match="shape"):
        fista(op, ahb.reshape(-1))
    with pytest.raises(InputError, match="x0"):
        fista(op, ahb, x0=torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(InputError, match="iterations"):
        fista(op, ahb, iterations=-1)
    zero = DiagonalOperator(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(InputError, match="norm"):
        fista(zero, torch.zeros(3, dtype=torch.complex64))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_input() -> None:
    op, b, m = _problem(seed=6)
    gop = MatrixOperator(op.m.cuda(), (2, 3, 2, 2))
    res = fista(gop, gop.adjoint(b.cuda()), iterations=300, save_iterations=True)
    assert res.x.device.type == "cuda"
    ref = np.linalg.lstsq(m, b.numpy().astype(np.complex128), rcond=None)[0]
    err = np.linalg.norm(res.x.cpu().numpy().reshape(-1) - ref) / np.linalg.norm(ref)
    assert err < 1e-4
