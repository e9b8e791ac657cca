"""The linear-operator algebra every operator of spurig builds on (STYLE.md practice 2).

An operator maps a tensor of ``in_shape`` to a tensor of ``out_shape`` (plain tensors, no tuples):

>>> import torch
>>> from spurig_core.operators.base import DiagonalOperator
>>> D = DiagonalOperator(torch.tensor([1.0, 2.0]))
>>> (D.H @ D)(torch.ones(2))
tensor([1., 4.])

``A @ B`` composes, ``A.H`` is the adjoint, ``A + B`` and ``c * A`` combine, ``A.gram(x)`` applies
the normal operator ``A^H A`` (subclasses override it where a faster form exists, e.g. the FFT-based
gridded subspace gram), and :meth:`LinearOperator.opnorm` estimates ``‖A‖₂`` by power iteration.
Subclasses check the shapes of what they receive and name themselves in the error.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from ..errors import InputError

__all__ = [
    "AdjointOperator",
    "ComposedOperator",
    "DiagonalOperator",
    "IdentityOperator",
    "LinearOperator",
    "ScaledOperator",
    "SumOperator",
]

Shape = tuple[int, ...]


class LinearOperator:
    """Base class: implement :meth:`forward` and :meth:`adjoint`, or the kernels ``_fwd``/``_adj``.

    A subclass that implements the kernels ``_fwd(x)`` and ``_adj(y)`` (and optionally a fast
    ``_gram(x)``) gets :meth:`forward`, :meth:`adjoint` and :meth:`gram` from here: the shape is
    checked, the kernel runs without autograd, and autograd uses the exact adjoint kernel as its
    vector-Jacobian product (:func:`~spurig_core.operators.fourier.apply_linear`).

    Parameters
    ----------
    in_shape, out_shape : tuple of int, optional
        Shapes of the domain and range; ``None`` skips the check.
    name : str, optional
        Used in error messages; defaults to the class name.
    """

    def __init__(
        self,
        in_shape: Seq[int] | None = None,
        out_shape: Seq[int] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.in_shape: Shape | None = (
            tuple(int(s) for s in in_shape) if in_shape is not None else None
        )
        self.out_shape: Shape | None = (
            tuple(int(s) for s in out_shape) if out_shape is not None else None
        )
        self.name = name or type(self).__name__

    # -- to implement: forward and adjoint, or the kernels _fwd and _adj (and _gram) -----------
    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: implement forward or _fwd")

    def _adj(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: implement adjoint or _adj")

    def _gram(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # optional: a faster A^H A kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator: ``in_shape → out_shape``."""
        from .fourier import apply_linear

        self.check_in(x)
        return apply_linear(x, self._fwd, self._adj)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint: ``out_shape → in_shape``."""
        from .fourier import apply_linear

        self.check_out(y)
        return apply_linear(y, self._adj, self._fwd)

    # -- derived ---------------------------------------------------------------------------------
    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normal operator ``A^H A``.

        Uses the subclass's ``_gram`` kernel when it has one (self-adjoint, so it is its own vjp),
        else ``adjoint(forward(x))``.
        """
        if type(self)._gram is LinearOperator._gram:
            return self.adjoint(self.forward(x))
        from .fourier import apply_linear

        self.check_in(x)
        return apply_linear(x, self._gram, self._gram)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the forward operator: ``A(x)`` is ``A.forward(x)``."""
        return self.forward(x)

    @property
    def H(self) -> LinearOperator:
        """The adjoint operator."""
        return AdjointOperator(self)

    def __matmul__(self, other: LinearOperator | torch.Tensor) -> LinearOperator | torch.Tensor:
        """Compose with an operator (``A @ B``) or apply to a tensor (``A @ x`` is ``A(x)``)."""
        if isinstance(other, LinearOperator):
            return ComposedOperator(self, other)
        if isinstance(other, torch.Tensor):
            return self.forward(other)
        return NotImplemented

    def __add__(self, other: LinearOperator) -> LinearOperator:
        """Return the sum operator ``A + B`` (a :class:`SumOperator`)."""
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __mul__(self, scalar: complex | float) -> LinearOperator:
        """Return the scaled operator ``c * A`` (a :class:`ScaledOperator`; also ``A * c``)."""
        if isinstance(scalar, LinearOperator | torch.Tensor):
            return NotImplemented
        return ScaledOperator(self, scalar)

    __rmul__ = __mul__

    def __neg__(self) -> LinearOperator:
        """Return ``-A``, the operator scaled by ``-1``."""
        return ScaledOperator(self, -1.0)

    def __sub__(self, other: LinearOperator) -> LinearOperator:
        """Return ``A - B`` as the sum of ``A`` and ``-1 * B``."""
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __repr__(self) -> str:
        """Show the operator's name and its input and output shapes."""
        return f"{self.name}(in={self.in_shape}, out={self.out_shape})"

    # -- helpers for subclasses ------------------------------------------------------------------
    def _check(self, t: torch.Tensor, shape: Shape | None, what: str) -> None:
        if shape is not None and tuple(t.shape) != shape:
            raise InputError(f"{self.name}: {what} has shape {tuple(t.shape)}, expected {shape}")

    def check_in(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` has ``in_shape``."""
        self._check(x, self.in_shape, "input")

    def check_out(self, y: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``y`` has ``out_shape``."""
        self._check(y, self.out_shape, "adjoint input")

    def opnorm(
        self,
        x0: torch.Tensor | None = None,
        *,
        iters: int = 30,
        rtol: float = 1e-4,
        generator: torch.Generator | None = None,
    ) -> float:
        """Estimate the spectral norm ``‖A‖₂`` by power iteration on :meth:`gram`.

        Parameters
        ----------
        x0 : Tensor, shape in_shape, optional
            Start vector (random complex64 of ``in_shape`` when omitted).
        iters : int
            Maximum number of iterations.
        rtol : float
            Stop when the estimate changes by less than this relative amount.
        generator : torch.Generator, optional
            Seeded generator for the random start.
        """
        if x0 is None:
            if self.in_shape is None:
                raise InputError(f"{self.name}: opnorm needs x0 when in_shape is unknown")
            x0 = torch.randn(self.in_shape, dtype=torch.complex64, generator=generator)
        x = x0 / torch.linalg.vector_norm(x0)
        est = 0.0
        for _ in range(iters):
            y = self.gram(x)
            new = float(torch.linalg.vector_norm(y))
            if new == 0.0:
                return 0.0
            x = y / new
            if abs(new - est) <= rtol * new:
                est = new
                break
            est = new
        return est**0.5


class AdjointOperator(LinearOperator):
    """``A.H``: swaps forward and adjoint."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.out_shape, op.in_shape, name=f"{op.name}.H")
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the wrapped operator's adjoint."""
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the wrapped operator's forward."""
        return self.op.forward(y)

    @property
    def H(self) -> LinearOperator:
        """The wrapped operator itself (``A.H.H`` is ``A``)."""
        return self.op


class ComposedOperator(LinearOperator):
    """``A @ B``: applies ``B`` then ``A``."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        if a.in_shape is not None and b.out_shape is not None and a.in_shape != b.out_shape:
            raise InputError(
                f"cannot compose {a.name} (input {a.in_shape}) with {b.name} (output {b.out_shape})"
            )
        super().__init__(b.in_shape, a.out_shape, name=f"({a.name} @ {b.name})")
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``B``, then ``A``."""
        return self.a.forward(self.b.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply ``(A B)^H = B^H A^H``: ``A``'s adjoint, then ``B``'s."""
        return self.b.adjoint(self.a.adjoint(y))


class SumOperator(LinearOperator):
    """``A + B`` (same domain and range)."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        for s, t, what in (
            (a.in_shape, b.in_shape, "inputs"),
            (a.out_shape, b.out_shape, "outputs"),
        ):
            if s is not None and t is not None and s != t:
                raise InputError(f"cannot add {a.name} and {b.name}: {what} {s} and {t} differ")
        super().__init__(
            a.in_shape or b.in_shape, a.out_shape or b.out_shape, name=f"({a.name} + {b.name})"
        )
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A x + B x``."""
        return self.a.forward(x) + self.b.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``A^H y + B^H y``."""
        return self.a.adjoint(y) + self.b.adjoint(y)


class ScaledOperator(LinearOperator):
    """``c * A`` for a (complex) scalar ``c``."""

    def __init__(self, op: LinearOperator, scalar: complex | float) -> None:
        super().__init__(op.in_shape, op.out_shape, name=f"{scalar}*{op.name}")
        self.op, self.scalar = op, scalar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``c A x``."""
        return self.scalar * self.op.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``conj(c) A^H y``."""
        c = self.scalar.conjugate() if isinstance(self.scalar, complex) else self.scalar
        return c * self.op.adjoint(y)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``|c|² A^H A x``, using the wrapped operator's own normal operator."""
        return abs(self.scalar) ** 2 * self.op.gram(x)


class IdentityOperator(LinearOperator):
    """The identity on tensors of ``shape``."""

    def __init__(self, shape: Seq[int] | None = None) -> None:
        super().__init__(shape, shape, name="Identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` itself after checking its shape."""
        self.check_in(x)
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``y`` itself after checking its shape."""
        self.check_out(y)
        return y


class DiagonalOperator(LinearOperator):
    """Elementwise multiplication by ``d`` (broadcasting allowed on the input side).

    Parameters
    ----------
    d : Tensor
        The diagonal; the output is ``d * x``.
    in_shape : tuple of int, optional
        Shape of the input when it broadcasts against ``d`` (defaults to ``d.shape``).
    """

    def __init__(self, d: torch.Tensor, in_shape: Seq[int] | None = None) -> None:
        in_shape = tuple(in_shape) if in_shape is not None else tuple(d.shape)
        out_shape = torch.broadcast_shapes(tuple(d.shape), in_shape)
        super().__init__(in_shape, out_shape, name="Diagonal")
        self.d = d
        self._sum_dims: tuple[int, ...] = ()
        if tuple(out_shape) != in_shape:
            # Adjoint of a broadcast is a sum over the broadcast dimensions.
            pad = len(out_shape) - len(in_shape)
            padded = (1,) * pad + in_shape
            self._sum_dims = tuple(
                i
                for i, (o, s) in enumerate(zip(out_shape, padded, strict=True))
                if s == 1 and o != 1
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``d * x`` (broadcast to ``out_shape``)."""
        self.check_in(x)
        return self.d * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``conj(d) * y``, summed over the broadcast axes back to ``in_shape``."""
        self.check_out(y)
        out = self.d.conj() * y if self.d.is_complex() else self.d * y
        if self._sum_dims:
            out = out.sum(dim=self._sum_dims, keepdim=True)
        assert self.in_shape is not None
        return out.reshape(self.in_shape)
