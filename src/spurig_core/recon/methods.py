"""The reconstruction methods of ``spurig recon --method`` (SPEC §2): one registry.

Every list, label and branch that depends on the method reads :data:`METHODS` — the command line
(``--method`` choices), the argument checks, :func:`spurig_core.pipeline.reconstruct`, the cohort
jobs, the benchmark, the report tables, the figures and the napari plugin's menu.  Adding a
method is one new module with a ``run(term, ctx)`` function plus one :class:`Method` entry here
(``docs/DESIGN.md``, "Adding a reconstruction method", with ``dc-only`` as the worked example).

This module imports nothing heavy: the command line builds its parser from it, and ``run`` is a
``"module:function"`` string imported only when the method runs.

A run function has the signature ``run(term: DataTerm, ctx: RunContext) -> MethodOutput``
(:mod:`spurig_core.recon.data_term`): ``term`` holds the operator ``A``, ``A^H b`` and ``‖b‖₂``
built once by the pipeline for the method's :attr:`Method.data_term`; ``ctx`` the duration, the
config overrides, the loaded model (for methods with :attr:`Method.model`), the scan and basis,
the device and the progress callback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InputError

__all__ = [
    "METHODS",
    "NAMES",
    "Method",
    "get_method",
    "gridded_names",
    "method_gridding",
    "model_names",
]


@dataclass(frozen=True)
class Method:
    """One reconstruction method.

    Attributes
    ----------
    name : str
        The engine and command-line name (``--method NAME``, the result's ``method``).
    label : str
        Its name in the report tables (``report.METHOD_LABELS``).
    short : str
        Its name above the figure panels.
    choice : str
        Its entry in the napari plugin's method menu.
    data_term : {"gridded", "nufft"}
        ``"gridded"``: the iGROG-gridded encoding (FFT-based gram; the scan is gridded first, and
        the gridding can be shared between gridded methods); ``"nufft"``: the NUFFT encoding of
        the acquired trajectory.
    model : str or None
        The shipped model family whose checkpoint the method needs (``"spurig"`` or ``"hybrid"``:
        ``MODELS_DIR/<model>-<duration>.pt`` unless ``--model`` is given), or ``None``.  A model
        also brings the data term (``encoding``) it was trained with.
    run : str
        ``"module:function"`` of the run function (imported when the method runs).
    tables : tuple of str
        Override tables the run function reads beyond ``gridding`` and ``encoding`` (``"llr"``:
        the FISTA-LLR settings; the memory check counts ``llr.iterations`` saved iterates).
    fallback : str or None
        The method that replaces this one when the iGROG self-check fails and
        ``--on-bad-gridding fallback`` asks for the NUFFT data term (``None``: keep the name and
        run on the NUFFT data term).
    summary : str
        One line for ``--help`` and the docs.
    grid_oversampling : float or None
        The oversampling of the Cartesian grid the method's data are gridded on (a NUFFT method:
        the grid its density weights are counted on) when neither the user (``[gridding]``) nor a
        model says otherwise (``None``: the gridding default, ``GriddingConfig.grid_oversampling``).
        A gridded method may need a finer grid than the others: at 64³ LLR is 0.79 dB below
        LLR-NUFFT on the 1.5× grid and 0.46 dB on the 2× grid (both with their grid's weights;
        ``benchmarks/RESULTS-igrog.md``, sessions 16–18), while the shipped models were trained on
        1.5× data.  ``llr-nufft`` counts its weights on LLR's grid, so that the two solve the same
        problem.  Methods with different grids do not share one gridding.
    """

    name: str
    label: str
    short: str
    choice: str
    data_term: Literal["gridded", "nufft"]
    model: str | None
    run: str
    tables: tuple[str, ...] = ()
    fallback: str | None = None
    summary: str = ""
    grid_oversampling: float | None = None

    @property
    def gridded(self) -> bool:
        """Whether the method reconstructs from the iGROG-gridded scan."""
        return self.data_term == "gridded"

    @property
    def needs_model(self) -> bool:
        """Whether the method needs a trained model (shipped or ``--model``)."""
        return self.model is not None

    def runner(self) -> Callable[..., Any]:
        """Return the run function (imported now)."""
        module, _, func = self.run.partition(":")
        return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


_R = "spurig_core.recon"

#: The methods, in the order of SPEC §2 (tables list them in this order).
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="spurig",
            label="SPUR-iG (ours)",
            short="SPUR-iG",
            choice="SPUR-iG",
            data_term="gridded",
            model="spurig",
            run=f"{_R}.trained:run_model",
            summary="the unrolled network with a 3D denoiser (trained model)",
        ),
        Method(
            name="hybrid",
            label="Hybrid 2D/3D",
            short="Hybrid 2D/3D",
            choice="hybrid",
            data_term="gridded",
            model="hybrid",
            run=f"{_R}.trained:run_model",
            summary="the unrolled network with a slice-wise 2D denoiser (trained model)",
        ),
        Method(
            name="dc-only",
            label="DC only",
            short="DC only",
            choice="DC-only",
            data_term="gridded",
            model="spurig",
            run=f"{_R}.dc_only:run",
            summary="the SPUR-iG unroll's DC steps with the identity as denoiser (baseline)",
        ),
        Method(
            name="llr",
            label="LLR (iGROG)",
            short="LLR",
            choice="LLR",
            data_term="gridded",
            model=None,
            run=f"{_R}.classical:run_llr",
            tables=("llr",),
            fallback="llr-nufft",
            summary="FISTA with the locally-low-rank prior on the iGROG-gridded data (2× grid)",
            grid_oversampling=2.0,
        ),
        Method(
            name="llr-nufft",
            label="LLR (NUFFT)",
            short="LLR (NUFFT)",
            choice="LLR-NUFFT",
            data_term="nufft",
            model=None,
            run=f"{_R}.classical:run_llr",
            tables=("llr",),
            summary="FISTA-LLR with the NUFFT (the paper's slow baseline)",
            grid_oversampling=2.0,  # its density weights counted as LLR's: the same problem
        ),
        Method(
            name="adjoint",
            label="A^H b",
            short="A^H b",
            choice="adjoint",
            data_term="nufft",
            model=None,
            run=f"{_R}.classical:run_adjoint",
            summary="the norm-matched adjoint s·A^H b",
        ),
    )
}

#: The method names, in registry order.
NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: Any, *, what: str = "method") -> Method:
    """Return the registry entry of ``name``.

    Raises
    ------
    InputError
        ``"<what>: 'x' is not one of spurig, hybrid, …"`` for an unknown name.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise InputError(f"{what}: {name!r:.40} is not one of {', '.join(NAMES)}")
    return METHODS[name]


def gridded_names() -> tuple[str, ...]:
    """Return the methods that grid with iGROG (those with the same grid can share a gridding)."""
    return tuple(n for n, m in METHODS.items() if m.gridded)


def method_gridding(name: str) -> dict[str, Any]:
    """Return the gridding settings the method ``name`` sets itself (``{}`` if none).

    They sit between the gridding defaults and a model's or the user's settings.
    """
    grid = get_method(name).grid_oversampling
    return {} if grid is None else {"grid_oversampling": grid}


def model_names() -> tuple[str, ...]:
    """Return the methods that need a trained model."""
    return tuple(n for n, m in METHODS.items() if m.needs_model)
