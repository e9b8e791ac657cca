"""The shared operator contract suite (STYLE.md practice 3).

Every linear operator of spurig is registered in ``tests/test_operator_contract.py`` and must pass:

- :func:`assert_adjoint`: the dot-product test ``⟨A x, y⟩ = ⟨x, A^H y⟩`` (inner products in
  complex128) with explicit shape asserts on both sides;
- :func:`assert_gradient_is_adjoint`: the autograd vector–Jacobian product of ``forward`` equals
  ``adjoint`` applied to the cotangent, and (where supported) the forward-mode jvp equals
  ``forward``;
- :func:`assert_gram`: ``A.gram(x) = A^H (A x)`` (catches wrong fast normal operators).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from spurig_core.operators.base import LinearOperator

__all__ = [
    "assert_adjoint",
    "assert_gradient_is_adjoint",
    "assert_gram",
    "random_like_shape",
    "rel_err",
]


def random_like_shape(
    shape: Seq[int], generator: torch.Generator, dtype: torch.dtype = torch.complex64
) -> torch.Tensor:
    """Return a random ``shape`` tensor (complex normal for complex dtypes) from ``generator``."""
    shape = tuple(int(s) for s in shape)
    if dtype.is_complex:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        re = torch.randn(shape, generator=generator, dtype=real)
        im = torch.randn(shape, generator=generator, dtype=real)
        return torch.complex(re, im)
    return torch.randn(shape, generator=generator, dtype=dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return ``‖a − b‖ / ‖b‖`` computed in double precision."""
    a = a.detach().to(torch.complex128)
    b = b.detach().to(torch.complex128)
    den = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / (den if den > 0 else 1.0)


def _shapes(
    op: LinearOperator, in_shape: Seq[int] | None, out_shape: Seq[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ins = tuple(in_shape) if in_shape is not None else op.in_shape
    outs = tuple(out_shape) if out_shape is not None else op.out_shape
    assert ins is not None and outs is not None, f"{op.name}: give in_shape/out_shape"
    return tuple(int(s) for s in ins), tuple(int(s) for s in outs)


def _vdot(a: torch.Tensor, b: torch.Tensor) -> complex:
    return complex(
        torch.vdot(
            a.detach().reshape(-1).to(torch.complex128), b.detach().reshape(-1).to(torch.complex128)
        )
    )


def assert_adjoint(
    op: LinearOperator,
    in_shape: Seq[int] | None = None,
    out_shape: Seq[int] | None = None,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.complex64,
    rtol: float = 1e-4,
) -> None:
    """Dot-product test ``⟨A x, y⟩ = ⟨x, A^H y⟩`` with shape asserts.

    Parameters
    ----------
    op : LinearOperator
    in_shape, out_shape : tuple of int, optional
        Default ``op.in_shape`` / ``op.out_shape``.
    generator : torch.Generator
        Seeded source of the random ``x`` and ``y``.
    dtype : torch.dtype
        dtype of the random vectors (complex64; complex128 where the operator supports it).
    rtol : float
        Tolerance relative to ``‖A x‖ ‖y‖``.
    """
    ins, outs = _shapes(op, in_shape, out_shape)
    x = random_like_shape(ins, generator, dtype)
    y = random_like_shape(outs, generator, dtype)
    ax = op.forward(x)
    ahy = op.adjoint(y)
    assert tuple(ax.shape) == outs, f"{op.name}: forward gave {tuple(ax.shape)}, expected {outs}"
    assert tuple(ahy.shape) == ins, f"{op.name}: adjoint gave {tuple(ahy.shape)}, expected {ins}"
    lhs = _vdot(ax, y)  # <Ax, y> = y^H A x  (vdot conjugates its first argument: <a,b> = a^H b)
    rhs = _vdot(x, ahy)
    scale = float(torch.linalg.vector_norm(ax.to(torch.complex128))) * float(
        torch.linalg.vector_norm(y.to(torch.complex128))
    )
    assert scale > 0, f"{op.name}: forward returned zeros for a random input"
    err = abs(lhs - rhs) / scale
    assert err < rtol, f"{op.name}: adjoint test failed, |<Ax,y> - <x,A^H y>|/(|Ax||y|) = {err:.2e}"


def assert_gradient_is_adjoint(
    op: LinearOperator,
    in_shape: Seq[int] | None = None,
    out_shape: Seq[int] | None = None,
    *,
    generator: torch.Generator,
    rtol: float = 1e-4,
    check_jvp: bool = True,
) -> None:
    """Autograd vjp of ``forward`` equals ``adjoint`` of the cotangent; jvp equals ``forward``.

    Parameters
    ----------
    op : LinearOperator
    in_shape, out_shape : tuple of int, optional
    generator : torch.Generator
    rtol : float
        Relative tolerance (norm-wise).
    check_jvp : bool
        Also check forward-mode AD (``torch.autograd.forward_ad``).
    """
    ins, outs = _shapes(op, in_shape, out_shape)
    x = random_like_shape(ins, generator).requires_grad_(True)
    v = random_like_shape(outs, generator)
    y = op.forward(x)
    assert tuple(y.shape) == outs, f"{op.name}: forward gave {tuple(y.shape)}, expected {outs}"
    assert y.requires_grad, f"{op.name}: forward is not differentiable"
    (g,) = torch.autograd.grad(y, x, grad_outputs=v)
    ref = op.adjoint(v)
    assert tuple(g.shape) == ins
    err = rel_err(g, ref)
    assert err < rtol, f"{op.name}: vjp differs from the adjoint by {err:.2e}"
    if check_jvp:
        import torch.autograd.forward_ad as fwad

        t = random_like_shape(ins, generator)
        x0 = x.detach()
        with fwad.dual_level():
            dual = fwad.make_dual(x0, t)
            out = fwad.unpack_dual(op.forward(dual))
        assert out.tangent is not None, f"{op.name}: no forward-mode tangent"
        err = rel_err(out.tangent, op.forward(t))
        assert err < rtol, f"{op.name}: jvp differs from forward by {err:.2e}"
        assert rel_err(out.primal, op.forward(x0)) < rtol


def assert_gram(
    op: LinearOperator,
    in_shape: Seq[int] | None = None,
    *,
    generator: torch.Generator,
    rtol: float = 1e-4,
) -> None:
    """``op.gram(x)`` equals ``op.adjoint(op.forward(x))`` (norm-wise relative ``rtol``)."""
    ins, _ = _shapes(op, in_shape, op.out_shape or in_shape)
    x = random_like_shape(ins, generator)
    g = op.gram(x)
    ref = op.adjoint(op.forward(x))
    assert tuple(g.shape) == ins, f"{op.name}: gram gave {tuple(g.shape)}, expected {ins}"
    err = rel_err(g, ref)
    assert err < rtol, f"{op.name}: gram differs from A^H A by {err:.2e}"
