"""Inference precision of the trained networks (issue #14).

:func:`network_autocast` is the context in which :func:`spurig_core.pipeline.reconstruct` runs a
method with a trained model: bfloat16 autocast on a device with native bfloat16 products (CPUs with
``avx512_bf16``/AMX, CUDA GPUs that support it), float32 elsewhere.  Only the UNet's convolutions
and linear layers are cast: the :class:`~spurig_core.recon.networks.Denoiser` keeps its whitening
in float32, and the DC steps (complex FFTs and per-point products) have no autocast ops.

Measured on the 2-min model, 32³ scan (``benchmarks/bench_unet_inference.py``,
``benchmarks/RESULTS.md``, 2026-12-05): UNet passes 2.8× faster on the CPU, mean PSNR c1–c5
+0.002 dB, coefficients within 0.14 % (NRMSE) of float32.  Channels-last 3D was slower on this CPU
(weights only).  At 48³ (``benchmarks/bench_unet_paths.py``, 2026-12-05, loaded machine):
float32 1.7 s, bf16 0.7 s, bf16 + channels-last 0.55 s, bf16 +
``torch.compile`` 0.5 s per UNet pass after a 239 s compile, every path within 0.0004 dB of
float32: the compile costs more than it saves in any one process, so it is not used.  With the
UNet's input converted too, channels-last 3D is 19–23 % faster per UNet pass at 48³ and 64³ and
7 % on the denoiser stage of a 48³ reconstruction, PSNR within 0.001 dB: :data:`CHANNELS_LAST`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..operators.igrog_eval import bf16_supported

__all__ = ["CHANNELS_LAST", "network_autocast"]

#: Run 3D UNets in ``torch.channels_last_3d`` inside :func:`network_autocast` (issue #14).
CHANNELS_LAST = True


def _channels_last(module: torch.nn.Module, args: tuple[Any, ...]) -> Any:
    """Forward pre-hook: a 3D UNet's weights (once) and its 5D input in channels-last 3D."""
    from .networks import UNet

    if not isinstance(module, UNet) or not args or getattr(args[0], "ndim", 0) != 5:
        return None
    if not getattr(module, "_spurig_channels_last", False):
        for p in module.parameters():  # the 3D convolutions' weights
            if p.ndim == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        module._spurig_channels_last = True  # type: ignore[assignment]
    x = args[0].contiguous(memory_format=torch.channels_last_3d)
    return (x, *args[1:])


@contextlib.contextmanager
def _bf16_channels_last(device: torch.device) -> Any:
    hook = None
    if CHANNELS_LAST and device.type == "cpu":  # measured on the CPU only
        from torch.nn.modules.module import register_module_forward_pre_hook

        hook = register_module_forward_pre_hook(_channels_last)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    finally:
        if hook is not None:
            hook.remove()


def network_autocast(device: torch.device, enabled: bool = True) -> Any:
    """bfloat16 autocast on ``device`` where it is native (else a no-op context).

    With :data:`CHANNELS_LAST`, 3D UNets on the CPU run in channels-last 3D inside the context
    (their weights are converted in place on first use; 2D UNets, CUDA and float32 inference are
    left alone).

    Parameters
    ----------
    device : torch.device
        Where the network runs.
    enabled : bool
        ``False`` gives the no-op context (float32 inference).
    """
    if enabled and bf16_supported(device):
        return _bf16_channels_last(device)
    return contextlib.nullcontext()
