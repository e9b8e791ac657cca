r"""Locally-low-rank (LLR) regularisation of subspace coefficients (paper 2.1, 2.5, appendix A.5).

The regulariser is a sum of nuclear norms over non-overlapping cubic patches,

.. math::  R(α) = \sum_p \|P_p\, \mathrm{shift}(α)\|_*,

where each patch ``P_p shift(α)`` is a ``(basis, block³)`` matrix (5 × 1000 for the paper's 10³
patches). The patches tile the volume after a random circular shift that is drawn anew at every call
(the paper's "random shifts per iteration", which hides the blocking artefacts of a fixed tiling).
When a side is not a multiple of ``block`` the volume is zero-padded up to one: a patch that sticks
out of the volume is then simply a smaller patch (the singular values of ``[X, 0]`` are those of
``X``), so the step stays the exact proximal operator of the shifted regulariser.

The proximal operator of ``τ‖X‖_*`` soft-thresholds the singular values,
``X ↦ U diag(max(σ − τ, 0)) V^H`` (Cai, Candès & Shen 2010, doi:10.1137/080738970). Because
``basis = k ≪ block³``, it is computed from each patch's ``k × k`` Gram matrix
``G = X X^H = U Σ² U^H``:
``X ↦ U diag(max(1 − τ/σ, 0)) U^H X``, which avoids the batched SVD of the ``k × block³`` matrices
(1.7–3× faster on the project's CPUs, same result; ``method="svd"`` keeps the SVD for reference).

Units: the threshold ``τ`` is absolute (same units as the singular values of the patches); the
normalisation that makes the configured thresholds transferable lives in
:func:`spurig_core.recon.classical.llr_recon`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..durations import DURATIONS, nearest_duration
from ..errors import InputError

__all__ = ["LLRConfig", "LocallyLowRank", "llr_prox", "nuclear_norm", "random_shift", "svt"]

#: The paper's singular-value thresholds per scan duration (appendix A.5).
PAPER_THRESHOLDS: dict[str, float] = {"6min": 5e-5, "2min": 1e-4, "1min": 1e-4, "30s": 1.5e-4}


@dataclass(frozen=True)
class LLRConfig:
    """Settings of the FISTA + LLR reconstruction (paper 2.5, appendix A.5).

    Attributes
    ----------
    iterations : int
        FISTA iterations (the paper: 40, "ensuring convergence").
    block : int
        Side of the cubic patches in voxels (the paper: 10, i.e. 10³ patches).
    thresholds : dict of str to float
        Singular-value threshold per scan duration (``"6min"``, ``"2min"``, ``"1min"``, ``"30s"``),
        relative to the scale fixed by ``threshold_reference`` (see
        :func:`spurig_core.recon.classical.llr_recon`). Defaults: tuned on the validation set
        (benchmarks/RESULTS-llr-tuning.md); the paper's values are ``PAPER_THRESHOLDS``.
    threshold_reference : {"max", "absolute"}
        ``"max"``: a threshold ``τ`` means ``τ · m`` where ``m`` is the largest voxel magnitude
        (ℓ2 over the basis) of the norm-matched adjoint ``s·A^H b`` in the units of the operator
        normalised to ``‖A‖₂ = 1``. ``"absolute"``: ``τ`` is used as it is in those units.
    init : {"adjoint", "zeros"}
        Start of FISTA: the norm-matched adjoint ``s·A^H b`` (appendix A.1) or zeros.
    random_shift : bool
        Draw a new random circular shift of the patch grid at every iteration.
    seed : int
        Seed of the generator of the shifts (and of the power iteration's start vector).
    power_iterations : int
        Maximum power iterations for the Lipschitz constant ``‖A‖₂²``.
    lipschitz_safety : float
        Factor (≥ 1) on the power-iteration estimate; the step is ``1 / (safety · ‖A‖₂²)``.
    method : {"eigh", "svd"}
        How the singular-value threshold is computed (same result; ``"eigh"`` is faster).
    """

    iterations: int = 40
    block: int = 10
    # Tuned per duration on held-out subjects as in paper 2.5 (issue 4), with the density-
    # compensated data term (EncodingConfig.density_compensation = 0.5): see
    # benchmarks/RESULTS-llr-tuning.md, configs/llr-tuned.toml and tools/tune_llr.py (both
    # validation subjects, T1+T2 criterion); 6min: the 2-min value times the paper's 6-min/2-min
    # ratio (0.5). The paper's own values, which act as almost no regularisation in this
    # normalisation, stay in PAPER_THRESHOLDS.
    thresholds: dict[str, float] = field(
        default_factory=lambda: {
            "6min": 0.015,
            "2min": 0.03,
            "1min": 0.03,
            "30s": 0.042,
            "15s": 0.042,  # issue 13's shorter duration, tuned 2026-12-06 (RESULTS-llr-tuning.md)
            "7.5s": 0.042,  # 1 group, named in session 21, tuned 2026-12-07 (RESULTS-llr-tuning.md)
        }
    )
    threshold_reference: Literal["max", "absolute"] = "max"
    init: Literal["adjoint", "zeros"] = "adjoint"
    random_shift: bool = True
    seed: int = 0
    power_iterations: int = 30
    lipschitz_safety: float = 1.02
    method: Literal["eigh", "svd"] = "eigh"

    def __post_init__(self) -> None:
        """Raise ValueError naming the first field out of its range or not one of its choices."""
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        if self.lipschitz_safety < 1.0:
            raise ValueError(f"lipschitz_safety must be >= 1, got {self.lipschitz_safety}")
        for name, value in self.thresholds.items():
            if name not in DURATIONS:
                raise ValueError(
                    f"thresholds: unknown duration {name!r} (known: {', '.join(DURATIONS)})"
                )
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"thresholds[{name!r}] must be finite and >= 0, got {value}")
        if self.threshold_reference not in ("max", "absolute"):
            raise ValueError(
                f"threshold_reference must be 'max' or 'absolute', got {self.threshold_reference!r}"
            )
        if self.init not in ("adjoint", "zeros"):
            raise ValueError(f"init must be 'adjoint' or 'zeros', got {self.init!r}")
        if self.method not in ("eigh", "svd"):
            raise ValueError(f"method must be 'eigh' or 'svd', got {self.method!r}")

    def threshold_for(self, *, duration: str | None = None, groups: int | None = None) -> float:
        """Return the configured threshold of a named duration, or of the one nearest ``groups``.

        For a number of groups that is not one of the paper's durations (48, 16, 8, 4), the
        threshold of the configured duration nearest it is used
        (:func:`spurig_core.durations.nearest_duration`, the rule the pipeline uses too).
        """
        if duration is not None:
            if duration not in self.thresholds:
                raise InputError(
                    f"llr: no threshold for duration {duration!r} (configured: "
                    f"{', '.join(self.thresholds) or 'none'})"
                )
            return self.thresholds[duration]
        if groups is None:
            raise InputError("llr: give a duration, a number of groups or a threshold")
        if groups < 1:
            raise InputError(f"llr: groups must be >= 1, got {groups}")
        if not self.thresholds:
            raise InputError("llr: no thresholds configured")
        return self.thresholds[nearest_duration(groups, among=self.thresholds)]


def svt(
    patches: torch.Tensor, tau: float | torch.Tensor, *, method: Literal["eigh", "svd"] = "eigh"
) -> torch.Tensor:
    """Singular-value soft threshold of a batch of wide matrices.

    Parameters
    ----------
    patches : Tensor, shape (n, basis, m), complex
        ``n`` matrices with ``basis ≤ m``.
    tau : float or Tensor (broadcast to ``(n, 1)``)
        Threshold, same units as the singular values.
    method : {"eigh", "svd"}
        ``"eigh"``: through the ``basis × basis`` Gram matrix (its eigendecomposition in double
        precision); ``"svd"``: a batched SVD.

    Returns
    -------
    Tensor, shape (n, basis, m), same dtype
        ``U diag(max(σ − τ, 0)) V^H`` for each matrix.
    """
    if patches.ndim != 3:
        raise InputError(f"svt: expected (n, basis, m) patches, got shape {tuple(patches.shape)}")
    if method == "svd":
        u, s, vh = torch.linalg.svd(patches, full_matrices=False)
        s = torch.clamp(s - tau, min=0.0)
        return u @ (s.to(u.dtype)[..., None] * vh)
    if method != "eigh":
        raise InputError(f"svt: unknown method {method!r} (use 'eigh' or 'svd')")
    work = torch.complex128 if patches.is_complex() else torch.float64
    gram = (patches @ patches.mH).to(work)
    w, u = torch.linalg.eigh(gram)
    sigma = torch.sqrt(torch.clamp(w, min=0.0))
    keep = sigma > tau
    factor = torch.where(keep, 1.0 - tau / torch.where(keep, sigma, 1.0), 0.0)
    m = (u * factor.to(u.dtype)[..., None, :]) @ u.mH
    return m.to(patches.dtype) @ patches


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


def _patch_view(vol: torch.Tensor, block: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    k, px, py, pz = vol.shape
    nb = (px // block, py // block, pz // block)
    v = vol.reshape(k, nb[0], block, nb[1], block, nb[2], block).permute(1, 3, 5, 0, 2, 4, 6)
    return v.reshape(nb[0] * nb[1] * nb[2], k, block**3), nb


def llr_prox(
    x: torch.Tensor,
    tau: float,
    *,
    block: int = 10,
    shift: Seq[int] = (0, 0, 0),
    method: Literal["eigh", "svd"] = "eigh",
    max_patches: int = 4096,
) -> torch.Tensor:
    """Proximal operator of ``τ Σ_p ‖P_p shift(x)‖_*`` (non-overlapping patches).

    Parameters
    ----------
    x : Tensor, shape (basis, x, y, z), complex
        Coefficient maps.
    tau : float
        Singular-value threshold (absolute; already multiplied by the step size).
    block : int
        Side of the cubic patches in voxels.
    shift : sequence of 3 int
        Circular shift (voxels along x, y, z) applied before tiling and undone afterwards.
    method : {"eigh", "svd"}
        See :func:`svt`.
    max_patches : int
        Patches thresholded at once (bounds the temporary memory; the result does not depend on it).

    Returns
    -------
    Tensor, shape (basis, x, y, z), same dtype and device as ``x``
    """
    if x.ndim != 4:
        raise InputError(f"llr: expected coefficients (basis, x, y, z), got shape {tuple(x.shape)}")
    if block < 1:
        raise InputError(f"llr: block must be >= 1, got {block}")
    if tau < 0 or not math.isfinite(tau):
        raise InputError(f"llr: threshold must be finite and >= 0, got {tau}")
    shift = tuple(int(s) for s in shift)
    if len(shift) != 3:
        raise InputError(f"llr: shift needs 3 values, got {shift}")
    k, nx, ny, nz = x.shape
    pad = (_padded(nx, block), _padded(ny, block), _padded(nz, block))
    rolled = torch.roll(x, shift, dims=(1, 2, 3)) if any(shift) else x
    if pad == (nx, ny, nz):
        buf = rolled.clone() if rolled is x else rolled
    else:
        buf = x.new_zeros((k, *pad))
        buf[:, :nx, :ny, :nz] = rolled
    del rolled
    per_slab = (pad[1] // block) * (pad[2] // block)
    slabs = max(1, max_patches // max(per_slab, 1))
    step = slabs * block
    for start in range(0, pad[0], step):
        view = buf[:, start : start + step]
        patches, nb = _patch_view(view, block)
        out = svt(patches, tau, method=method)
        del patches
        out = out.reshape(*nb, k, block, block, block).permute(3, 0, 4, 1, 5, 2, 6)
        view.copy_(out.reshape(view.shape))
        del out
    result = buf[:, :nx, :ny, :nz]
    if any(shift):
        result = torch.roll(result, tuple(-s for s in shift), dims=(1, 2, 3))
    elif result.shape != buf.shape:
        result = result.contiguous()
    return result


def nuclear_norm(x: torch.Tensor, *, block: int = 10, shift: Seq[int] = (0, 0, 0)) -> float:
    """``Σ_p ‖P_p shift(x)‖_*`` of coefficients ``x``, shape (basis, x, y, z) (for objectives)."""
    k, nx, ny, nz = x.shape
    pad = (_padded(nx, block), _padded(ny, block), _padded(nz, block))
    rolled = torch.roll(x, tuple(int(s) for s in shift), dims=(1, 2, 3))
    buf = x.new_zeros((k, *pad))
    buf[:, :nx, :ny, :nz] = rolled
    patches, _ = _patch_view(buf, block)
    return float(torch.linalg.svdvals(patches.to(torch.complex128)).sum())


def random_shift(block: int, generator: torch.Generator | None = None) -> tuple[int, int, int]:
    """Return a random shift in ``[0, block)³`` drawn from ``generator`` (a CPU generator)."""
    s = torch.randint(0, block, (3,), generator=generator)
    return (int(s[0]), int(s[1]), int(s[2]))


class LocallyLowRank:
    """The LLR proximal step as a FISTA ``prox(v, step)`` callable, with a new shift per call.

    Parameters
    ----------
    threshold : float
        Regularisation weight ``λ`` (absolute units); each call thresholds at ``λ · step``.
    block : int
        Side of the cubic patches in voxels.
    random_shift : bool
        Draw a new circular shift in ``[0, block)³`` at every call (paper A.5); otherwise no shift.
    seed : int
        Seed of the local generator of the shifts.
    method : {"eigh", "svd"}
        See :func:`svt`.

    Examples
    --------
    >>> prox = LocallyLowRank(0.1, block=4, seed=1)
    >>> x = torch.ones(5, 8, 8, 8, dtype=torch.complex64)
    >>> y = prox(x, 1.0)  # a rank-1 patch loses 0.1 of its singular value
    >>> bool(torch.allclose(y, x * (1 - 0.1 / (8 * 5**0.5))))
    True
    """

    def __init__(
        self,
        threshold: float,
        *,
        block: int = 10,
        random_shift: bool = True,
        seed: int = 0,
        method: Literal["eigh", "svd"] = "eigh",
    ) -> None:
        if threshold < 0 or not math.isfinite(threshold):
            raise InputError(f"llr: threshold must be finite and >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.block = int(block)
        self.random_shift = bool(random_shift)
        self.method: Literal["eigh", "svd"] = method
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_shift: tuple[int, int, int] = (0, 0, 0)

    def __call__(self, v: torch.Tensor, step: float) -> torch.Tensor:
        """``prox_{step·λ R}(v)`` for ``v`` of shape (basis, x, y, z)."""
        shift = random_shift(self.block, self.generator) if self.random_shift else (0, 0, 0)
        self.last_shift = shift
        return llr_prox(v, self.threshold * step, block=self.block, shift=shift, method=self.method)
