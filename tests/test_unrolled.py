"""Unrolled SPUR-iG reconstruction (paper eq. 2–3, appendix A.1) and model files."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from spurig_core.data import FispSequence
from spurig_core.errors import Cancelled, InputError
from spurig_core.io import save_checkpoint
from spurig_core.operators.base import LinearOperator
from spurig_core.recon.networks import UNetConfig
from spurig_core.recon.unrolled import UnrollConfig, UnrolledRecon, estimate_lipschitz, scaled_init
from spurig_core.recon.unrolled_io import load_model, model_state


class CartesianSubspaceOp(LinearOperator):
    """Test DC operator: ``y[c, t] = M_t ⊙ FFT(S_c Σ_k Φ[t, k] α_k)`` (orthonormal FFT).

    Domain ``(basis, x, y, z)``, range ``(coils, tr, x, y, z)``; a small, exact stand-in for the
    gridded subspace encoding.
    """

    def __init__(self, maps: torch.Tensor, phi: torch.Tensor, mask: torch.Tensor) -> None:
        c, *sp = maps.shape
        tr, k = phi.shape
        super().__init__((k, *sp), (c, tr, *sp), name="CartesianSubspaceOp")
        self.maps, self.phi, self.mask = maps, phi, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.einsum("tk,kxyz->txyz", self.phi, x)
        img = self.maps[:, None] * m[None]
        return self.mask[None] * torch.fft.fftn(img, dim=(-3, -2, -1), norm="ortho")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        img = torch.fft.ifftn(self.mask[None] * y, dim=(-3, -2, -1), norm="ortho")
        m = (self.maps.conj()[:, None] * img).sum(0)
        return torch.einsum("tk,txyz->kxyz", self.phi.conj(), m)


def make_problem(
    n: int = 16, coils: int = 2, tr: int = 6, k: int = 5, seed: int = 0, accel: float = 0.3
) -> tuple[CartesianSubspaceOp, torch.Tensor, torch.Tensor]:
    """Return a random operator, a smooth ground truth ``(k, n, n, n)`` and its noisy k-space."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.linspace(-1, 1, n)
    xx, yy, zz = torch.meshgrid(ax, ax, ax, indexing="ij")
    maps = torch.stack(
        [
            torch.exp(-((xx - c) ** 2 + yy**2) / 2) * torch.exp(1j * c * zz)
            for c in np.linspace(-0.5, 0.5, coils)
        ]
    ).to(torch.complex64)
    phi, _ = torch.linalg.qr(torch.randn(tr, k, dtype=torch.complex64, generator=g))
    mask = (torch.rand(tr, n, n, n, generator=g) < accel).to(torch.complex64)
    op = CartesianSubspaceOp(maps, phi, mask)
    r2 = xx**2 + yy**2 + zz**2
    blob = (r2 < 0.6).float()
    truth = torch.stack([blob * (1.0 + 0.3 * j * xx) * np.exp(0.4j * j) for j in range(k)])
    truth = truth.to(torch.complex64)
    b = op(truth)
    b = b + 0.01 * torch.randn(b.shape, dtype=torch.complex64, generator=g) * op.mask[None]
    return op, truth, b


def _zero_denoiser(model: UnrolledRecon) -> None:
    with torch.no_grad():
        for d in model.denoisers:
            d.unet.out.weight.zero_()
            d.unet.out.bias.zero_()


def tiny_cfg(**kw: object) -> UnrollConfig:
    net_keys = ("dim", "conditioned", "flips")
    net = UNetConfig(base_width=8, **{k: v for k, v in kw.items() if k in net_keys})
    rest = {k: v for k, v in kw.items() if k not in net_keys}
    return UnrollConfig(network=net, **rest)  # type: ignore[arg-type]


def test_scaled_init_matches_definition() -> None:
    op, _, b = make_problem()
    ahb = op.adjoint(b)
    x0, s = scaled_init(op, ahb, float(b.abs().norm()))
    # independent: ‖b‖ / ‖A A^H b‖ with the forward operator itself
    ref = float(b.abs().norm() / op(ahb).abs().norm())
    assert s == pytest.approx(ref, rel=1e-4)
    torch.testing.assert_close(x0, ahb * ref, rtol=1e-4, atol=1e-6)


def test_lipschitz_estimate() -> None:
    op, _, b = make_problem(n=8, seed=1)
    est = estimate_lipschitz(op, op.adjoint(b), iters=60)
    ref = op.opnorm(iters=300, rtol=1e-7, generator=torch.Generator().manual_seed(0)) ** 2
    assert est == pytest.approx(ref, rel=2e-2)
    assert estimate_lipschitz(op, op.adjoint(b), iters=4) <= ref * 1.001


def test_identity_denoiser_is_gradient_descent() -> None:
    torch.manual_seed(0)
    op, _, b = make_problem(seed=2)
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    model = UnrolledRecon(tiny_cfg(steps=4))
    _zero_denoiser(model)
    with torch.no_grad():
        model.log_mu.copy_(torch.tensor([0.0, -0.3, 0.2, 0.5]))
        lip = 3.7
        out = model(op, ahb, x0, lipschitz=lip)
        # oracle: plain gradient descent on ½‖Aα − b‖² using the forward operator explicitly
        a = x0.clone()
        for i in range(4):
            a = a - math.exp(float(model.log_mu[i])) / lip * op.adjoint(op(a) - b)
    torch.testing.assert_close(out, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_untrained_unroll_reduces_data_misfit() -> None:
    torch.manual_seed(0)
    op, _, b = make_problem(seed=3)
    model = UnrolledRecon(tiny_cfg(steps=3))
    _zero_denoiser(model)
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    out, its = model.reconstruct(op, ahb, b_norm=float(b.abs().norm()), save_iterations=True)
    assert its is not None and its.shape == (4, *x0.shape)
    res = [float((op(x) - b).abs().norm()) for x in its]
    assert all(r1 < r0 for r0, r1 in itertools.pairwise(res))
    torch.testing.assert_close(its[-1], out)
    torch.testing.assert_close(its[0], x0)


def test_progress_and_cancel() -> None:
    op, _, b = make_problem(n=8)
    model = UnrolledRecon(tiny_cfg(steps=3))
    events = []
    model.reconstruct(op, op.adjoint(b), b_norm=1.0, callback=events.append)
    assert [e.step for e in events] == [1, 2, 3] and events[0].stage == "unroll"
    assert events[-1].total == 3 and events[-1].data.shape == (5, 8, 8, 8)

    def stop(ev: object) -> None:
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        model.reconstruct(op, op.adjoint(b), b_norm=1.0, callback=stop)


def _grads(model: UnrolledRecon) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class _CountingOp(CartesianSubspaceOp):
    """The test operator, counting its grams."""

    grams = 0

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        self.grams += 1
        return super().gram(x)


@pytest.mark.parametrize("dc", ["gradient", "cg"])
def test_reconstruct_reuses_the_scale_gram(dc: str) -> None:
    """``reconstruct`` spends one gram fewer than scale + unroll, with the same result."""
    torch.manual_seed(0)
    op, _, b = make_problem(seed=4)
    cop = _CountingOp(op.maps, op.phi, op.mask)
    model = UnrolledRecon(tiny_cfg(steps=3, dc=dc, dc_steps=2))
    ahb, b_norm = op.adjoint(b), float(b.abs().norm())
    with torch.no_grad():
        out, _ = model.reconstruct(cop, ahb, b_norm=b_norm, lipschitz=2.0)
        used = cop.grams
        cop.grams = 0
        x0, _ = scaled_init(cop, ahb, b_norm)  # the path without reuse: scale, then the unroll
        ref = model(cop, ahb, x0, lipschitz=2.0)
    per_step = 2 if dc == "gradient" else 3  # CG: initial residual + 2 iterations
    assert cop.grams == 1 + 3 * per_step and used == cop.grams - 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    x0.requires_grad_(True)
    with pytest.raises(InputError, match="gram_x0"):
        model(cop, ahb, x0, lipschitz=2.0, gram_x0=torch.zeros_like(x0))


def test_checkpointed_unroll_gives_same_gradients() -> None:
    torch.manual_seed(0)
    op, truth, b = make_problem(n=8, seed=4)
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    model = UnrolledRecon(tiny_cfg(steps=3))
    grads = {}
    for mode in ("full", "checkpoint"):
        model.zero_grad(set_to_none=True)
        out = model(op, ahb, x0, lipschitz=2.0, mode=mode)
        (out - truth).abs().pow(2).mean().backward()
        grads[mode] = _grads(model)
    assert grads["full"].keys() == grads["checkpoint"].keys() and len(grads["full"]) > 10
    for name, g in grads["full"].items():
        torch.testing.assert_close(grads["checkpoint"][name], g, rtol=1e-4, atol=1e-7)


def test_gleam_mode_detaches_between_steps() -> None:
    torch.manual_seed(0)
    op, truth, b = make_problem(n=8, seed=5)
    ahb = op.adjoint(b)
    x0, _ = scaled_init(op, ahb, float(b.abs().norm()))
    x0 = x0.clone().requires_grad_(True)
    model = UnrolledRecon(tiny_cfg(steps=3))
    out = model(op, ahb, x0, lipschitz=2.0, mode="gleam")
    (out - truth).abs().mean().backward()
    assert x0.grad is None
    g = model.log_mu.grad
    assert g is not None and g[0] == 0 and g[1] == 0 and g[2] != 0
    model.zero_grad(set_to_none=True)
    out = model(op, ahb, x0, lipschitz=2.0, mode="full")
    (out - truth).abs().mean().backward()
    assert x0.grad is not None and bool((model.log_mu.grad != 0).all())


def test_separate_weights_per_step() -> None:
    shared = UnrolledRecon(tiny_cfg(steps=3))
    sep = UnrolledRecon(tiny_cfg(steps=3, share_weights=False))
    assert len(shared.denoisers) == 1 and len(sep.denoisers) == 3
    assert sep.denoiser(2) is not sep.denoiser(0) and shared.denoiser(2) is shared.denoiser(0)
    n_sh = sum(p.numel() for p in shared.parameters())
    n_sep = sum(p.numel() for p in sep.parameters())
    assert n_sep - 3 == 3 * (n_sh - 3)


def test_fewer_steps_and_bad_inputs() -> None:
    op, _, b = make_problem(n=8)
    model = UnrolledRecon(tiny_cfg(steps=2))
    ahb = op.adjoint(b)
    with pytest.raises(InputError, match="steps"):
        model(op, ahb, ahb, steps=3)
    with pytest.raises(InputError, match="x0"):
        model(op, ahb, ahb[:4])
    with pytest.raises(InputError, match="steps"):
        UnrollConfig(steps=0)


# ----------------------------------------------------------------------------------------------
# model files
# ----------------------------------------------------------------------------------------------
def _save(
    tmp_path,
    model: UnrolledRecon,
    seq: FispSequence,
    basis: torch.Tensor,
    name: str = "m.pt",
    **extra: object,
):
    return save_checkpoint(
        model_state(model, sequence=seq, basis=basis, extra=dict(extra)), tmp_path / name
    )


def test_load_model_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    seq = FispSequence(np.linspace(5, 60, 6).astype(np.float32))
    basis = torch.randn(6, 5, dtype=torch.complex64)
    model = UnrolledRecon(tiny_cfg(steps=2, share_weights=False, conditioned=False))
    path = _save(tmp_path, model, seq, basis, duration="1min")
    loaded, meta = load_model(path, basis=basis, sequence=seq)
    assert meta["warning"] is None and meta["duration"] == "1min"
    assert meta["config"] == model.cfg and meta["sequence"].same_as(seq)
    op, _, b = make_problem(n=8)
    ahb = op.adjoint(b)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(op, ahb, ahb, lipschitz=1.0), model(op, ahb, ahb, lipschitz=1.0)
        )


def test_flip_averaging_travels_with_the_model_file(tmp_path) -> None:
    """A file saved with ``flips = 2`` reconstructs with it.

    One without the key (the files before session 24) loads as the plain network; an unknown
    count is refused by name.
    """
    torch.manual_seed(1)
    seq = FispSequence(np.linspace(5, 60, 6).astype(np.float32))
    basis = torch.randn(6, 5, dtype=torch.complex64)
    model = UnrolledRecon(tiny_cfg(steps=2, share_weights=False, flips=2))
    for d in model.denoisers:  # a trained-like head, so that the flips change the output
        torch.nn.init.normal_(d.unet.out.weight, std=0.2)
    path = _save(tmp_path, model, seq, basis)
    loaded, meta = load_model(path, basis=basis, sequence=seq)
    assert meta["config"].network.flips == 2
    op, _, b = make_problem(n=8)
    ahb = op.adjoint(b)
    with torch.no_grad():
        out = loaded(op, ahb, ahb, lipschitz=1.0)
        torch.testing.assert_close(out, model(op, ahb, ahb, lipschitz=1.0))
    state = torch.load(path, weights_only=True)
    del state["config"]["network"]["flips"]
    torch.save(state, tmp_path / "old.pt")
    old, old_meta = load_model(tmp_path / "old.pt", basis=basis, sequence=seq)
    assert old_meta["config"].network.flips == 1
    with torch.no_grad():
        assert float((old(op, ahb, ahb, lipschitz=1.0) - out).abs().max()) > 1e-4
    state["config"]["network"]["flips"] = 3
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="flips"):
        load_model(tmp_path / "bad.pt", basis=basis, sequence=seq)


def test_load_model_rejects_what_does_not_fit(tmp_path) -> None:
    seq = FispSequence(np.linspace(5, 60, 6).astype(np.float32))
    basis = torch.randn(6, 5, dtype=torch.complex64)
    model = UnrolledRecon(tiny_cfg(steps=2))
    path = _save(tmp_path, model, seq, basis)
    # a basis of another shape
    with pytest.raises(InputError, match="basis of shape"):
        load_model(path, basis=torch.zeros(6, 4, dtype=torch.complex64))
    # another sequence: loads, with a warning
    other = FispSequence(np.linspace(5, 70, 6).astype(np.float32))
    _, meta = load_model(path, sequence=other)
    assert meta["warning"] is not None and "another sequence" in meta["warning"]
    # wrong kind
    save_checkpoint({"kind": "igrog-kernel"}, tmp_path / "k.pt")
    with pytest.raises(InputError, match="not a SPUR-iG model"):
        load_model(tmp_path / "k.pt")
    # truncated / corrupt file
    raw = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.pt"):
        load_model(tmp_path / "cut.pt")
    # missing file
    with pytest.raises(InputError):
        load_model(tmp_path / "nope.pt")
    # weights that do not match the stored config
    state = model_state(model, sequence=seq, basis=basis)
    state["config"]["network"]["base_width"] = 16
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="weights do not fit"):
        load_model(tmp_path / "bad.pt")
    # a sequence entry that does not match its key
    state = model_state(model, sequence=seq, basis=basis)
    state["sequence_key"] = "0" * 16
    save_checkpoint(state, tmp_path / "key.pt")
    with pytest.raises(InputError, match="sequence key"):
        load_model(tmp_path / "key.pt")
    # an unknown config field
    state = model_state(model, sequence=seq, basis=basis)
    state["config"]["colour"] = "blue"
    save_checkpoint(state, tmp_path / "field.pt")
    with pytest.raises(InputError, match="colour"):
        load_model(tmp_path / "field.pt")
