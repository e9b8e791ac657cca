"""The temporal subspace of a dictionary and its balanced form (paper 2.1, 2.4).

The rank-``k`` temporal basis ``Φ`` (:func:`subspace_basis`) and its balanced form
``Φ̃ = Φ F_kᴴ``, ``α̃ = F_k α`` (paper 2.4, Schauman et al. 2025) with ``F_k`` the unitary DFT of
length ``k`` (:func:`balance_basis`, :func:`balance_coefficients`,
:func:`unbalance_coefficients`).  The basis every method uses, taken from a sequence's dictionary,
is :func:`spurig_core.physics.dictionary.default_basis`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .epg import intraop_threads

__all__ = [
    "balance_basis",
    "balance_coefficients",
    "basis_energy",
    "dft_matrix",
    "fix_phase",
    "subspace_basis",
    "unbalance_basis",
    "unbalance_coefficients",
]


# ----------------------------------------------------------------------------------------------
# temporal subspace and basis balancing (paper 2.1, 2.4)
# ----------------------------------------------------------------------------------------------
def fix_phase(basis: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry real and positive (a reproducible SVD phase).

    Parameters
    ----------
    basis : Tensor, shape (tr, basis), complex

    Returns
    -------
    Tensor, shape (tr, basis)
        The same columns, each multiplied by a unit phase.
    """
    idx = basis.abs().argmax(dim=0)
    pivot = basis.gather(0, idx[None, :])
    return basis * (pivot.conj() / pivot.abs().clamp_min(torch.finfo(basis.real.dtype).tiny))


def _gram(signals: torch.Tensor) -> torch.Tensor:
    """``D Dᴴ`` (tr × tr, complex128) of the dictionary ``D = signalsᵀ`` (time × atoms)."""
    s = signals.to(torch.complex128)
    return s.T @ s.conj()


def _top_k(gram: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Top-``k`` eigenvectors of a Hermitian ``(tr, tr)`` Gram matrix and their energy fraction."""
    if gram.is_complex() and float(gram.imag.abs().max()) == 0.0:
        gram = gram.real  # real dictionaries (RF phase 0): the real solver is 4× cheaper
    # one thread: LAPACK's threaded solvers stall badly when other processes share the cores
    with intraop_threads(1):
        evals, evecs = torch.linalg.eigh(gram)  # ascending
    basis = evecs[:, -k:].flip(1).to(torch.complex128)
    energy = float(evals[-k:].sum() / evals.sum().clamp_min(1e-300))
    return fix_phase(basis).to(torch.complex64), energy


def subspace_basis(signals: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, float]:
    """Return the rank-``k`` temporal basis ``Φ`` of a dictionary (paper 2.1).

    Parameters
    ----------
    signals : Tensor, shape (n, tr), complex
        Dictionary atoms (rows).  ``D = signalsᵀ`` is the time × atoms dictionary.
    k : int
        Rank (``basis``; SPEC: 5).

    Returns
    -------
    basis : Tensor, shape (tr, basis), complex64
        Top-``k`` left singular vectors of ``D`` (orthonormal columns, by decreasing singular
        value), each with its largest-magnitude entry real positive (:func:`fix_phase`).
    energy : float
        Fraction of the dictionary's energy ``‖D‖²_F`` that the ``k`` vectors capture.
    """
    if signals.ndim != 2 or not 1 <= k <= signals.shape[1]:
        raise InputError(f"signals: expected (n, tr) with tr ≥ k = {k}, got {tuple(signals.shape)}")
    return _top_k(_gram(signals), k)


def basis_energy(basis: torch.Tensor, signals: torch.Tensor) -> float:
    """Fraction of ``‖signals‖²`` inside the span of the orthonormal ``basis`` ``(tr, basis)``."""
    s = signals.to(torch.complex128)
    c = s @ basis.to(torch.complex128).conj()
    return float((c.abs() ** 2).sum() / (s.abs() ** 2).sum())


def dft_matrix(k: int, *, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Unitary DFT ``F_k[m, n] = exp(−2πi m n / k) / √k``, shape ``(k, k)``."""
    m = torch.arange(k, dtype=torch.float64)
    f = torch.exp(-2j * math.pi * torch.outer(m, m) / k) / math.sqrt(k)
    return f.to(dtype)


def balance_basis(basis: torch.Tensor) -> torch.Tensor:
    """Balanced basis ``Φ̃ = Φ F_kᴴ`` (paper 2.4); ``(tr, basis)`` to ``(tr, basis)``."""
    f = dft_matrix(basis.shape[-1], dtype=basis.dtype).to(basis.device)
    return basis @ f.conj().T


def unbalance_basis(balanced: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`balance_basis`: ``Φ = Φ̃ F_k``."""
    f = dft_matrix(balanced.shape[-1], dtype=balanced.dtype).to(balanced.device)
    return balanced @ f


def balance_coefficients(coefficients: torch.Tensor) -> torch.Tensor:
    """``α̃ = F_k α`` along the first axis: ``(basis, ...)`` to ``(basis, ...)``.

    With :func:`balance_basis`, ``Φ̃ α̃ = Φ α``.
    """
    f = dft_matrix(coefficients.shape[0], dtype=coefficients.dtype).to(coefficients.device)
    return torch.tensordot(f, coefficients, dims=1)


def unbalance_coefficients(coefficients: Any, *, axis: int = 0) -> Any:
    """Unbalanced coefficients ``α = F_kᴴ α̃`` from balanced ones (SPEC §4, paper 2.4).

    The one implementation (metrics, figures and the napari plugin call it). ``F_k`` is the
    unitary DFT of length ``k`` (:func:`dft_matrix`), so ``F_kᴴ`` is the orthonormal inverse DFT
    along the basis axis; with :func:`balance_basis`, ``Φ̃ α̃ = Φ α``. Inverse of
    :func:`balance_coefficients`.

    Parameters
    ----------
    coefficients : Tensor, numpy array or dask array, shape (..., basis, x, y, z), complex
        Balanced coefficients ``α̃``. A dask array stays lazy (the basis axis becomes one chunk).
    axis : int
        The basis axis (``0`` for one volume ``(basis, x, y, z)``).

    Returns
    -------
    Tensor, numpy array or dask array, same shape
        ``α``, ordered like the singular vectors of ``Φ``; torch in, torch out (same device); a
        numpy result keeps single precision for single-precision input.
    """
    if coefficients.ndim < 1 or not -coefficients.ndim <= axis < coefficients.ndim:
        raise InputError(f"coefficients: no basis axis {axis} in shape {tuple(coefficients.shape)}")
    if isinstance(coefficients, torch.Tensor):
        return torch.fft.ifft(coefficients, dim=axis, norm="ortho")
    if hasattr(coefficients, "rechunk"):  # dask
        import dask.array as da

        whole = coefficients.rechunk({axis % coefficients.ndim: -1})
        return da.fft.ifft(whole, axis=axis, norm="ortho")
    a = np.asarray(coefficients)
    out = np.fft.ifft(a, axis=axis, norm="ortho")
    return out.astype(np.result_type(a.dtype, np.complex64), copy=False)
