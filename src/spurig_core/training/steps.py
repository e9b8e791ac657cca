"""One optimisation step of each training stage (appendix A.2–A.4), without the bookkeeping.

:class:`spurig_core.training.stages.Trainer` calls these; the tests and
``benchmarks/bench_training.py`` call exactly the same functions.  Each does forward, loss and
``backward`` (the caller owns ``zero_grad`` and ``optimizer.step``) and returns the loss value.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch

from ..operators.base import LinearOperator
from ..recon.unrolled import UnrolledRecon
from .losses import TISSUE_WEIGHTS, gleam_weights, ms_ssim_loss, tissue_l1

if TYPE_CHECKING:
    from .configs import FinetuneConfig, GleamConfig

__all__ = ["amp", "gleam_backward", "pretrain_backward", "unrolled_backward"]


def amp(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on ``device`` when ``enabled`` and native there (whitening stays float32).

    On a device without native bfloat16 products (e.g. an AVX2-only CPU) the autocast is left out
    and the step runs in float32, as inference does (:mod:`spurig_core.recon.inference`): there
    oneDNN emulates bfloat16, and one 48³ UNet forward and backward took 59 s instead of 2.7 s in
    float32 (2026-12-06, AMD EPYC, 1 thread; ``benchmarks/RESULTS-training.md``).  The first such
    fallback on a device logs one line.
    """
    if not enabled or not _bf16_native(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


_NATIVE: dict[str, bool] = {}


def _bf16_native(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 products (cached; logs the first fallback)."""
    key = str(device)
    if key not in _NATIVE:
        from ..operators.igrog_eval import bf16_supported

        _NATIVE[key] = bf16_supported(torch.device(device))
        if not _NATIVE[key]:
            logging.getLogger("spurig").warning(
                "bf16 = true, but %s has no native bfloat16 products: training in float32 "
                "(emulated bfloat16 is ~20x slower)",
                key,
            )
    return _NATIVE[key]


def pretrain_backward(
    model: UnrolledRecon,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    tissue: torch.Tensor,
    index: torch.Tensor,
    *,
    weights: tuple[float, ...] = TISSUE_WEIGHTS,
    bf16: bool = False,
    scale: float = 1.0,
) -> float:
    """Forward, tissue-aware L1 and backward of one pretraining batch.

    Parameters
    ----------
    model : UnrolledRecon
        Its step-0 denoiser (the shared one) is trained.
    inputs, targets : Tensor, shape (batch, basis, x, y, z), complex64
    tissue : Tensor, shape (batch, x, y, z), uint8
    index : Tensor, shape (batch,)
        Pseudo unroll indices.
    weights : tuple of float
    bf16 : bool
    scale : float
        Multiplies the loss before ``backward`` (this process's share of a batch split over
        several processes, :mod:`.distributed`).

    Returns
    -------
    float
        The loss (the mean over this batch, unscaled).
    """
    with amp(bf16, inputs.device):
        out = model.denoiser(0)(inputs, index)
    loss = tissue_l1(out, targets, tissue, weights)
    (loss * scale if scale != 1.0 else loss).backward()
    return float(loss.detach())


def _final_loss(
    alpha: torch.Tensor,
    ex_target: torch.Tensor,
    tissue: torch.Tensor,
    cfg: GleamConfig | FinetuneConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    loss = tissue_l1(alpha, ex_target, tissue, cfg.tissue_weights)
    if cfg.ssim_weight > 0:
        loss = loss + cfg.ssim_weight * ms_ssim_loss(
            alpha, ex_target, slices=cfg.ssim_slices, generator=generator
        )
    return loss


def gleam_backward(
    model: UnrolledRecon,
    op: LinearOperator,
    ahb: torch.Tensor,
    x0: torch.Tensor,
    target: torch.Tensor,
    tissue: torch.Tensor,
    lipschitz: float,
    cfg: GleamConfig,
    *,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> float:
    """GLEAM (appendix A.3): per step, forward from the detached previous output, loss, backward.

    Only one step's graph is alive at a time; the loss of step ``i`` reaches only step ``i``'s
    parameters (and, with shared weights, the shared denoiser through step ``i`` alone).

    Parameters
    ----------
    model : UnrolledRecon
    op : LinearOperator
    ahb, x0, target : Tensor, shape (basis, x, y, z), complex64
    tissue : Tensor, shape (x, y, z)
    lipschitz : float
    cfg : GleamConfig
    scale : float
        Multiplies every loss before ``backward`` (``1 / accumulation``).
    generator : torch.Generator, optional
        For the MS-SSIM slice choice.

    Returns
    -------
    float
        ``Σ_k λ_k L_spatial(α_k) + λ_SSIM L_MS-SSIM(α_K)`` (unscaled).
    """
    n = model.cfg.steps
    w = gleam_weights(n, cfg.step_weight_ratio)
    alpha = x0
    total = 0.0
    for i in range(n):
        with amp(cfg.bf16, x0.device):
            alpha = model.step(op, ahb, alpha.detach(), i, lipschitz)
        if i == n - 1:
            loss = float(w[i]) * tissue_l1(alpha, target, tissue, cfg.tissue_weights)
            if cfg.ssim_weight > 0:
                loss = loss + cfg.ssim_weight * ms_ssim_loss(
                    alpha, target, slices=cfg.ssim_slices, generator=generator
                )
        else:
            loss = float(w[i]) * tissue_l1(alpha, target, tissue, cfg.tissue_weights)
        (loss * scale).backward()
        total += float(loss.detach())
    return total


def unrolled_backward(
    model: UnrolledRecon,
    op: LinearOperator,
    ahb: torch.Tensor,
    x0: torch.Tensor,
    target: torch.Tensor,
    tissue: torch.Tensor,
    lipschitz: float,
    cfg: FinetuneConfig,
    *,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> float:
    """Full unrolled training step (appendix A.4): loss on the final output only.

    With ``cfg.checkpointing`` every DC and denoiser step is recomputed in the backward pass
    (same gradients, less memory); otherwise the whole graph is kept (naive).

    Returns
    -------
    float
        The (unscaled) loss.
    """
    mode = "checkpoint" if cfg.checkpointing else "full"
    with amp(cfg.bf16, x0.device):
        alpha = model(op, ahb, x0, lipschitz=lipschitz, mode=mode)
    assert isinstance(alpha, torch.Tensor)
    loss = _final_loss(alpha, target, tissue, cfg, generator)
    (loss * scale).backward()
    return float(loss.detach())
