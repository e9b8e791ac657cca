"""Inference precision of the trained networks (issue #14).

:func:`network_autocast` is the context in which :func:`spurig_core.pipeline.reconstruct` runs a
method with a trained model: bfloat16 autocast on a device with native bfloat16 products (CPUs with
``avx512_bf16``/AMX, CUDA GPUs that support it), float32 elsewhere.  Only the UNet's convolutions
and linear layers are cast: the :class:`~spurig_core.recon.networks.Denoiser` keeps its whitening
in float32, and the DC steps (complex FFTs and per-point products) have no autocast ops.

Measured on the 2-min model, 32³ scan (``benchmarks/bench_unet_inference.py``,
``benchmarks/RESULTS.md``, 2026-12-05): UNet passes 2.8× faster on the CPU, mean PSNR c1–c5
+0.002 dB, coefficients within 0.14 % (NRMSE) of float32.  Channels-last 3D was slower on this CPU
and is not used.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..operators.igrog_eval import bf16_supported

__all__ = ["network_autocast"]


def network_autocast(device: torch.device, enabled: bool = True) -> Any:
    """bfloat16 autocast on ``device`` where it is native (else a no-op context).

    Parameters
    ----------
    device : torch.device
        Where the network runs.
    enabled : bool
        ``False`` gives the no-op context (float32 inference).
    """
    if enabled and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
