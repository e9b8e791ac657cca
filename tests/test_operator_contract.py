"""Every linear operator of spurig passes the contract suite of ``tests/helper.py``.

To register an operator add ONE line to ``OPERATORS``: ``Case("name", factory)``, where
``factory(generator)`` builds a small instance (8³–16³, few TRs) whose ``in_shape``/``out_shape``
are set.  Every test below is parametrised over the whole list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from helper import assert_adjoint, assert_gradient_is_adjoint, assert_gram, random_like_shape
from spurig_core.errors import InputError
from spurig_core.operators.band_limited import band_limited
from spurig_core.operators.base import DiagonalOperator, IdentityOperator, LinearOperator
from spurig_core.operators.coil_maps import CoilOperator
from spurig_core.operators.encoding import (
    EncodingConfig,
    GriddedSubspaceEncoding,
    SubspaceNUFFTEncoding,
)
from spurig_core.operators.fourier import NUFFT, FFTOperator, PadOperator
from spurig_core.operators.grid import GriddedData, grid_shape, nearest_grid_index


@dataclass(frozen=True)
class Case:
    """A registered operator: ``factory(generator) -> LinearOperator`` and its tolerances."""

    name: str
    factory: Callable[[torch.Generator], LinearOperator]
    rtol: float = 1e-4
    jvp: bool = True


# -- small building blocks -------------------------------------------------------------------------
def _c(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return random_like_shape(shape, g)


def _trajectory(g: torch.Generator, matrix=(8, 8, 8), groups=2, tr=4, samples=24) -> torch.Tensor:
    n = torch.tensor(matrix, dtype=torch.float32)
    return (torch.rand((groups, tr, samples, 3), generator=g) - 0.5) * n


def _gridded(
    g: torch.Generator, matrix=(8, 8, 8), coils=3, groups=2, tr=4, samples=24
) -> GriddedData:
    grid = grid_shape(matrix, 1.5)
    index, _ = nearest_grid_index(_trajectory(g, matrix, groups, tr, samples), matrix, grid)
    return GriddedData(_c((coils, groups, tr, samples), g), index, grid, matrix)


def _gridded_encoding(
    g: torch.Generator, sparse: bool, density: float = 0.0
) -> GriddedSubspaceEncoding:
    gd = _gridded(g)
    return GriddedSubspaceEncoding(
        gd,
        _c((3, 8, 8, 8), g),
        _c((4, 5), g),
        config=EncodingConfig(sparse=sparse, chunk=300, density_compensation=density),
    )


def _weighted_encoding(g: torch.Generator) -> GriddedSubspaceEncoding:
    gd = _gridded(g)
    w = torch.rand(gd.index.shape, generator=g)
    w[..., ::5] = 0.0  # zero weights (the band-limited block's empty slots)
    return GriddedSubspaceEncoding(gd, _c((3, 8, 8, 8), g), _c((4, 5), g), weights=w)


def _band_limited(g: torch.Generator) -> GriddedSubspaceEncoding:
    gd = _gridded(g)
    maps = _c((3, 8, 8, 8), g)
    cfg = EncodingConfig(density_compensation=0.5)
    op = GriddedSubspaceEncoding(gd, maps, _c((4, 5), g), config=cfg)
    band = band_limited(op, maps, size=4)
    assert band is not None
    return band[0]


# -- the registry (one line per operator) ----------------------------------------------------
OPERATORS: list[Case] = [
    Case("identity", lambda g: IdentityOperator((2, 3, 4))),
    Case("diagonal", lambda g: DiagonalOperator(_c((3, 4, 5), g))),
    Case("diagonal-broadcast", lambda g: DiagonalOperator(_c((2, 3, 4, 5), g), in_shape=(3, 4, 5))),
    Case("composed", lambda g: DiagonalOperator(_c((2, 6, 5, 4), g)) @ FFTOperator((2, 6, 5, 4))),
    Case("sum", lambda g: FFTOperator((6, 6, 6)) + DiagonalOperator(_c((6, 6, 6), g))),
    Case("scaled", lambda g: (0.5 - 2.0j) * FFTOperator((6, 6, 6))),
    Case("adjoint", lambda g: FFTOperator((2, 6, 5, 4)).H),
    Case("fft", lambda g: FFTOperator((2, 8, 8, 8))),
    Case("fft-odd", lambda g: FFTOperator((7, 6, 5))),
    Case("fft-unitary", lambda g: FFTOperator((8, 8, 8), unitary=True)),
    Case("pad", lambda g: PadOperator((2, 8, 7, 8), (12, 12, 12))),
    Case("crop", lambda g: PadOperator((8, 8, 8), (12, 12, 12)).H),
    Case("nufft", lambda g: NUFFT(_trajectory(g), (8, 8, 8), batch=(2,), eps=1e-6)),
    Case(
        "nufft-chunked", lambda g: NUFFT(_trajectory(g), (8, 6, 5), batch=(3,), eps=1e-6, n_trans=2)
    ),
    Case("coils", lambda g: CoilOperator(_c((3, 8, 8, 8), g))),
    Case("coils-basis", lambda g: CoilOperator(_c((3, 8, 8, 8), g), in_shape=(5, 8, 8, 8))),
    Case("fft-coils", lambda g: FFTOperator((3, 8, 8, 8)) @ CoilOperator(_c((3, 8, 8, 8), g))),
    Case(
        "nufft-encoding",
        lambda g: SubspaceNUFFTEncoding(
            _trajectory(g), _c((3, 8, 8, 8), g), _c((4, 5), g), eps=1e-6
        ),
    ),
    Case(
        "nufft-encoding-dcf",
        lambda g: SubspaceNUFFTEncoding(
            _trajectory(g), _c((3, 8, 8, 8), g), _c((4, 5), g), eps=1e-6, density_compensation=1.0
        ),
    ),
    Case("gridded-encoding", lambda g: _gridded_encoding(g, sparse=False)),
    Case("gridded-encoding-sparse", lambda g: _gridded_encoding(g, sparse=True)),
    Case("gridded-encoding-dcf", lambda g: _gridded_encoding(g, sparse=True, density=0.5)),
    Case("gridded-encoding-weights", _weighted_encoding),
    Case("gridded-encoding-band", _band_limited),
]

_PARAMS = [pytest.param(case, id=case.name) for case in OPERATORS]


@pytest.mark.parametrize("case", _PARAMS)
def test_adjoint(case: Case, rng: torch.Generator) -> None:
    assert_adjoint(case.factory(rng), generator=rng, rtol=case.rtol)


@pytest.mark.parametrize("case", _PARAMS)
def test_gradient_is_adjoint(case: Case, rng: torch.Generator) -> None:
    assert_gradient_is_adjoint(case.factory(rng), generator=rng, rtol=case.rtol, check_jvp=case.jvp)


@pytest.mark.parametrize("case", _PARAMS)
def test_gram(case: Case, rng: torch.Generator) -> None:
    assert_gram(case.factory(rng), generator=rng, rtol=case.rtol)


@pytest.mark.parametrize("case", _PARAMS)
def test_adjoint_of_adjoint(case: Case, rng: torch.Generator) -> None:
    """``A.H`` is an operator too: it passes the dot test with the shapes swapped."""
    op = case.factory(rng)
    assert op.H.in_shape == op.out_shape and op.H.out_shape == op.in_shape
    assert_adjoint(op.H, generator=rng, rtol=case.rtol)


@pytest.mark.parametrize("case", _PARAMS)
def test_shape_check(case: Case, rng: torch.Generator) -> None:
    """A wrongly shaped input is rejected with an InputError naming the operator."""
    op = case.factory(rng)
    if type(op).__module__ == "spurig_core.operators.base":
        pytest.skip("the algebra defers shape checks to the operators it combines")
    assert op.in_shape is not None
    bad = _c((*op.in_shape[:-1], op.in_shape[-1] + 1), rng)
    with pytest.raises(InputError, match=op.name.split("(")[0].split(".")[0]):
        op.forward(bad)


@pytest.mark.parametrize("dtype", [torch.complex128])
@pytest.mark.parametrize("name", ["fft", "fft-odd", "pad", "coils", "diagonal", "composed"])
def test_adjoint_complex128(name: str, dtype: torch.dtype, rng: torch.Generator) -> None:
    """Operators without a single-precision backend pass the dot test in complex128 tightly."""
    case = next(c for c in OPERATORS if c.name == name)
    op = case.factory(rng)
    if isinstance(op, CoilOperator):
        op.maps = op.maps.to(torch.complex128)
    assert_adjoint(op, generator=rng, dtype=dtype, rtol=1e-10)
