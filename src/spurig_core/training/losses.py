"""Training losses: tissue-aware L1 (paper eq. 4), MS-SSIM on axial slices (eq. 6), GLEAM weights.

All losses take complex coefficient maps ``(basis, x, y, z)`` or ``(batch, basis, x, y, z)`` and
tissue labels ``(x, y, z)`` / ``(batch, x, y, z)`` of SPEC §3 (0 background, 1 CSF, 2 GM, 3 WM,
4 other).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "FINGERPRINT_WEIGHTS",
    "MS_SSIM_WEIGHTS",
    "QUANT_TISSUES",
    "TISSUE_WEIGHTS",
    "UNIFORM",
    "edge_l1",
    "fingerprint_loss",
    "gleam_weights",
    "ms_ssim",
    "ms_ssim_loss",
    "recipe_loss",
    "ssim_scales",
    "tissue_l1",
    "tissue_weight_map",
]

#: λ per tissue label (background, CSF, GM, WM, other): 10 for WM/GM, 1 otherwise (appendix A.2).
TISSUE_WEIGHTS: tuple[float, float, float, float, float] = (1.0, 1.0, 10.0, 10.0, 1.0)

#: Equal λ for every label (the recipe's default; PSNR counts every voxel alike).
UNIFORM: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)

#: Scale weights of MS-SSIM (Wang, Simoncelli & Bovik 2003), finest first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def tissue_weight_map(
    tissue: torch.Tensor, weights: tuple[float, ...] = TISSUE_WEIGHTS
) -> torch.Tensor:
    """Per-voxel weight ``λ_v`` of the tissue class of each voxel.

    Parameters
    ----------
    tissue : Tensor, shape (x, y, z) or (batch, x, y, z), integer
        Labels 0–4 (SPEC §3).
    weights : tuple of float
        ``λ`` for labels 0, 1, 2, … (labels beyond the tuple get the last weight).

    Returns
    -------
    Tensor, same shape as ``tissue``, float32
    """
    w = torch.tensor(weights, dtype=torch.float32, device=tissue.device)
    return w[tissue.long().clamp(0, len(weights) - 1)]


def tissue_l1(
    estimate: torch.Tensor,
    target: torch.Tensor,
    tissue: torch.Tensor,
    weights: tuple[float, ...] = TISSUE_WEIGHTS,
) -> torch.Tensor:
    """Tissue-aware spatially weighted L1 (paper eq. 4).

    ``Σ_v λ_v ‖α̂_v − α_v‖₁`` over the real and imaginary parts of every coefficient, divided by the
    number of voxels (so that the loss does not grow with the crop size).

    Parameters
    ----------
    estimate, target : Tensor, shape (basis, x, y, z) or (batch, basis, x, y, z), complex
    tissue : Tensor, shape (x, y, z) or (batch, x, y, z), integer
    weights : tuple of float
        See :data:`TISSUE_WEIGHTS`.

    Returns
    -------
    Tensor, scalar, float32
    """
    if estimate.shape != target.shape:
        raise InputError(
            f"tissue_l1: estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ"
        )
    if tissue.shape != estimate.shape[-3:] and tissue.shape != (
        estimate.shape[:1] + estimate.shape[-3:]
    ):
        raise InputError(
            f"tissue_l1: labels {tuple(tissue.shape)} do not match coefficients "
            f"{tuple(estimate.shape)}"
        )
    diff = torch.view_as_real(estimate - target).abs().sum(-1)  # (..., basis, x, y, z)
    w = tissue_weight_map(tissue, weights)
    if estimate.ndim == 5 and w.ndim == 4:
        w = w[:, None]
    return (diff * w).sum() / w.numel()


#: Labels whose T1/T2 errors the evaluation reports (GM, WM; SPEC §5).
QUANT_TISSUES: tuple[int, ...] = (2, 3)

#: Weights of :func:`fingerprint_loss` per label (background, CSF, GM, WM, other): GM and WM alike.
FINGERPRINT_WEIGHTS: tuple[float, ...] = tuple(float(i in QUANT_TISSUES) for i in range(5))


def _label_weights(tissue: torch.Tensor, weights: tuple[float, ...], name: str) -> torch.Tensor:
    """Per-voxel weight of each label (labels beyond ``weights``: 0), float32 like ``tissue``.

    Raises
    ------
    InputError
        When a weight is negative or not finite (``name`` names the term).
    """
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise InputError(f"{name}: weights {tuple(weights)} must be finite and >= 0")
    w = torch.tensor((*weights, 0.0), dtype=torch.float32, device=tissue.device)
    return w[tissue.long().clamp(0, len(weights))]


def fingerprint_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    tissue: torch.Tensor,
    weights: tuple[float, ...] = FINGERPRINT_WEIGHTS,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Weighted mean distance between the normalised coefficient vectors of GM and WM voxels.

    Dictionary matching reads a voxel's T1/T2 from the *direction* of its coefficient vector
    ``α_v`` (its norm is PD), so this term measures what the T1/T2 errors measure:
    ``Σ_v w_v ‖α̂_v/‖α̂_v‖ − α_v/‖α_v‖‖₂ / Σ_v w_v`` over the voxels whose label has a weight
    ``w > 0`` (0–2; 0 = same direction).  The L1 terms weigh a voxel by its signal, and GM/WM are
    a tenth of the head's signal.

    Parameters
    ----------
    estimate, target : Tensor, shape (basis, x, y, z) or (batch, basis, x, y, z), complex
    tissue : Tensor, shape (x, y, z) or (batch, x, y, z), integer
    weights : tuple of float
        ``w`` for labels 0, 1, 2, … (missing labels: 0); default GM and WM alike
        (:data:`FINGERPRINT_WEIGHTS`).  A larger GM weight aims the term at the cortex, where
        the denoiser's T2 error is (``benchmarks/RESULTS-models.md``, session 9).
    eps : float
        Floor of the norms (no voxel of these labels has a zero target).

    Returns
    -------
    Tensor, scalar, float32 (0 when no voxel has a weighted label)
    """
    if estimate.shape != target.shape:
        raise InputError(
            f"fingerprint_loss: estimate {tuple(estimate.shape)} and target "
            f"{tuple(target.shape)} differ"
        )
    axis = estimate.ndim - 4  # the basis axis
    wv = _label_weights(tissue, weights, "fingerprint_loss")
    mask = wv > 0
    if not bool(mask.any()):
        return estimate.real.sum() * 0.0

    def unit(a: torch.Tensor) -> torch.Tensor:
        return a / torch.linalg.vector_norm(a, dim=axis, keepdim=True).clamp_min(eps)

    dist = torch.linalg.vector_norm(unit(estimate) - unit(target), dim=axis)  # (..., x, y, z)
    wm = wv[mask]
    return (dist[mask].float() * wm).sum() / wm.sum()


def edge_l1(
    estimate: torch.Tensor,
    target: torch.Tensor,
    tissue: torch.Tensor,
    weights: tuple[float, ...] = FINGERPRINT_WEIGHTS,
) -> torch.Tensor:
    """L1 of the error's differences between 6-neighbours (a gradient-difference loss).

    ``Σ_(p,q) w_pq ‖(α̂_p − α̂_q) − (α_p − α_q)‖₁ / Σ_(p,q) w_pq`` over the real and imaginary
    parts of every coefficient and the neighbour pairs along the three axes, ``w_pq`` the larger
    of the two labels' weights.  An error that is the same in both voxels costs nothing, a blur
    across an interface (the two sides pulled toward each other) costs twice its size: the term
    weighs the high spatial frequencies of the error, which the per-voxel L1 weighs no more than
    the low ones (Mathieu, Couprie & LeCun 2016).

    Parameters
    ----------
    estimate, target : Tensor, shape (basis, x, y, z) or (batch, basis, x, y, z), complex
    tissue : Tensor, shape (x, y, z) or (batch, x, y, z), integer
    weights : tuple of float
        ``w`` for labels 0, 1, 2, … (missing labels: 0); default the pairs that touch GM or WM
        (:data:`FINGERPRINT_WEIGHTS`).

    Returns
    -------
    Tensor, scalar, float32 (0 when no pair has a weight)
    """
    if estimate.shape != target.shape:
        raise InputError(
            f"edge_l1: estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ"
        )
    wv = _label_weights(tissue, weights, "edge_l1")
    if estimate.ndim == 5 and wv.ndim == 4:
        wv = wv[:, None]
    err = torch.view_as_real(estimate - target)  # (..., basis, x, y, z, 2)
    total = err.sum() * 0.0
    norm = 0.0
    for axis in (-4, -3, -2):  # x, y, z of the re/im view
        n = err.shape[axis] - 1
        step = (err.narrow(axis, 1, n) - err.narrow(axis, 0, n)).abs().sum(-1)
        wa = wv.narrow(axis + 1, 0, n)
        wp = torch.maximum(wa, wv.narrow(axis + 1, 1, n))
        total = total + (step * wp).sum()
        norm += float(wp.sum())
    return total / max(norm, 1e-12)


def gleam_weights(steps: int, ratio: float = 10.0) -> torch.Tensor:
    """Geometric per-step weights ``λ_1 … λ_K`` with ``λ_K = ratio · λ_1`` and ``λ_K = 1``.

    Parameters
    ----------
    steps : int
        ``K`` unroll steps.
    ratio : float
        ``λ_K / λ_1`` (10 in appendix A.3).

    Returns
    -------
    Tensor, shape (steps,), float32
    """
    if steps == 1:
        return torch.ones(1)
    k = torch.arange(steps, dtype=torch.float64)
    return (ratio ** ((k - (steps - 1)) / (steps - 1))).float()


def _gauss_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filtering of ``(n, c, h, w)``."""
    c = x.shape[1]
    x = F.conv2d(x, g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim_scales(size: int, *, win: int = 11, max_scales: int = 5) -> tuple[int, int]:
    """Return the number of MS-SSIM scales and window size a ``size × size`` slice allows.

    The window is 11 (odd, at most ``size``); a scale ``m`` is used while the image at that scale
    (``size // 2**(m−1)``) is still at least one window wide.

    Returns
    -------
    scales : int
    win : int
    """
    w = min(win, size if size % 2 else size - 1)
    if w < 1:
        raise InputError(f"ms_ssim: slices of size {size} are too small")
    m = 1
    while m < max_scales and size // 2**m >= w:
        m += 1
    return m, w


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float | torch.Tensor,
    max_scales: int = 5,
    win: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Multi-scale SSIM of real images, with as many scales as the image size allows.

    Parameters
    ----------
    x, y : Tensor, shape (n, channels, h, w), real
    data_range : float or Tensor
        Dynamic range ``L`` (``C1 = (k1 L)²``, ``C2 = (k2 L)²``).
    max_scales : int
        At most this many scales (5 in Wang et al.; weights renormalised when fewer fit).
    win, sigma : int, float
        Gaussian window (valid filtering, as in Wang et al. and scikit-image's cropped mean).
    k1, k2 : float

    Returns
    -------
    Tensor, shape (n,)
        MS-SSIM per image (averaged over channels); with one scale this is plain SSIM.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise InputError(
            f"ms_ssim: images must both be (n, c, h, w), got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    scales, w = ssim_scales(min(x.shape[-2:]), win=win, max_scales=max_scales)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float32, device=x.device)
    weights = weights / weights.sum()
    g = _gauss_window(w, sigma, x.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    x, y = x.float(), y.float()
    vals = []
    for s in range(scales):
        mx, my = _filter(x, g), _filter(y, g)
        sxx = _filter(x * x, g) - mx * mx
        syy = _filter(y * y, g) - my * my
        sxy = _filter(x * y, g) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        if s == scales - 1:
            lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
            vals.append((lum * cs).flatten(2).mean(-1))
        else:
            vals.append(cs.flatten(2).mean(-1))
            x = F.avg_pool2d(x, 2)
            y = F.avg_pool2d(y, 2)
    stack = torch.stack(vals, 0).clamp_min(1e-6)  # (scales, n, c)
    out = torch.prod(stack ** weights[:, None, None], dim=0)
    return out.mean(-1)


def ms_ssim_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    *,
    slices: int = 30,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``1 − MS-SSIM`` of coefficient magnitudes on randomly chosen axial slices (appendix A.3).

    Parameters
    ----------
    estimate, target : Tensor, shape (basis, x, y, z), complex
    slices : int
        Axial slices (last axis) drawn without replacement (all when there are fewer).
    generator : torch.Generator, optional
        Seeded generator for the slice choice.

    Returns
    -------
    Tensor, scalar
        Averaged over the chosen slices; the data range is the target's maximum magnitude.
    """
    nz = estimate.shape[-1]
    if slices >= nz:
        idx = torch.arange(nz)
    else:
        idx = torch.randperm(nz, generator=generator)[:slices].sort().values
    idx = idx.to(estimate.device)
    e = estimate.index_select(-1, idx).abs().permute(3, 0, 1, 2)  # (slices, basis, x, y)
    t = target.index_select(-1, idx).abs().permute(3, 0, 1, 2)
    rng = target.abs().amax().detach().clamp_min(1e-12)
    return 1.0 - ms_ssim(e, t, data_range=rng).mean()


def recipe_loss(
    out: torch.Tensor,
    target: torch.Tensor,
    tissue: torch.Tensor,
    weights: tuple[float, ...] = UNIFORM,
    magnitude_weight: float = 1.0,
    fingerprint_weight: float = 0.0,
    fingerprint_tissues: tuple[float, ...] = FINGERPRINT_WEIGHTS,
    edge_weight: float = 0.0,
) -> torch.Tensor:
    """Tissue-weighted complex L1 plus the magnitude, GM/WM fingerprint and edge terms.

    ``tissue_l1 + magnitude_weight · L1(|out| − |target|) + fingerprint_weight ·``
    :func:`~.losses.fingerprint_loss` ``+ edge_weight ·`` :func:`edge_l1` (pairs touching GM/WM).

    Parameters
    ----------
    out, target : Tensor, shape (basis, x, y, z), complex64
    tissue : Tensor, shape (x, y, z), uint8
    weights : tuple of float
    magnitude_weight, fingerprint_weight : float
    fingerprint_tissues : tuple of float
        Per-label weights inside the fingerprint term (:func:`fingerprint_loss`).
    edge_weight : float
        Weight of :func:`edge_l1` (0: left out).

    Returns
    -------
    Tensor, scalar
    """
    loss = tissue_l1(out, target, tissue, weights)
    if magnitude_weight > 0:
        loss = loss + magnitude_weight * (out.abs() - target.abs()).abs().mean()
    if fingerprint_weight > 0:
        loss = loss + fingerprint_weight * fingerprint_loss(
            out, target, tissue, fingerprint_tissues
        )
    if edge_weight > 0:
        loss = loss + edge_weight * edge_l1(out, target, tissue)
    return loss
