"""Fast evaluation of the iGROG kernel INR at gridding time (issue #14).

:func:`~spurig_core.operators.igrog.grid` evaluates the kernel MLP once per acquired sample (3 M
samples at 64³, 2 min), which made gridding 78 % of a SPUR-iG reconstruction.  The reference path,
:meth:`IGROGKernel.predict <.igrog_kernel.IGROGKernel.predict>`, builds the complex
kernel ``G`` (batch × coils × coils·n) and the smooth prior as dense Kronecker products before the
product with the sources; about 40 % of its time went there, not into the MLP.  The predictor
here computes the same ``y = G s`` without forming ``G``:

* the MLP's real output ``H = [Re G; Im G]`` (batch, 2·coils, coils·n) meets the sources as one
  real batched product with ``[Re s, Im s]`` (batch, coils·n, 2), in float32;
* the prior ``Σ_i w_i s[c, i]`` (each coil from its own sources) is added as a weighted sum;
* in ``"bf16"`` mode the Fourier features, the four linear layers and that product run in bfloat16
  (float32 accumulation in oneDNN, the CPU's ``avx512_bf16`` instructions where present; the
  products are rounded to bfloat16, a relative error of about 0.1–0.3 % per predicted value), the
  prior in float32.

Modes: ``"reference"`` (``kernel.predict`` itself), ``"fp32"``, ``"bf16"`` and ``"auto"``
(``"bf16"`` where the device has native bfloat16 matmuls, else ``"fp32"``).  Times, memory and the
A^H b accuracy of each mode are in ``benchmarks/RESULTS-igrog.md`` ("Gridding speed (issue #14)").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

if TYPE_CHECKING:
    from .igrog_kernel import IGROGKernel

__all__ = ["KERNEL_EVAL_MODES", "KernelPredictor", "bf16_supported", "kernel_predictor"]

#: Accepted values of the ``kernel_eval`` option of :func:`~spurig_core.operators.igrog.grid`.
KERNEL_EVAL_MODES = ("auto", "bf16", "fp32", "reference")

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix products (CPU: oneDNN's bf16 ISA check)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class KernelPredictor:
    """``y = G_ψ(d) s`` of a trained :class:`~.igrog_kernel.IGROGKernel` without forming ``G``.

    See the module notes.

    Parameters
    ----------
    kernel : IGROGKernel
        The trained kernel (its weights are copied, in ``dtype``, on their device).
    dtype : torch.dtype
        ``torch.float32`` or ``torch.bfloat16``: precision of the features and the linear layers.
    """

    def __init__(self, kernel: IGROGKernel, dtype: torch.dtype = torch.float32) -> None:
        self.n = int(kernel.n_sources)
        self.coils = int(kernel.n_coils)
        self.prior_width = float(kernel.prior_width)
        self.dtype = dtype
        self.freqs = kernel.freqs.detach().float()
        layers = [m for m in kernel.mlp if isinstance(m, nn.Linear)]
        self.layers = [(m.weight.detach().to(dtype), m.bias.detach().to(dtype)) for m in layers]

    def hidden(self, d: torch.Tensor) -> torch.Tensor:
        """Last-layer output ``[Re G; Im G]``, shape (batch, 2·coils, coils·n), in ``dtype``."""
        x = d.reshape(d.shape[0], 3 * self.n).float()
        proj = (2 * math.pi) * x @ self.freqs.T
        h = torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=1).to(self.dtype)
        for w, b in self.layers[:-1]:
            h = torch.relu_(F.linear(h, w, b))
        w, b = self.layers[-1]
        return F.linear(h, w, b).view(d.shape[0], 2 * self.coils, self.coils * self.n)

    def __call__(self, d: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Predicted target values.

        Parameters
        ----------
        d : Tensor, shape (batch, n, 3), float32
            Source minus target positions, cycles/FOV.
        sources : Tensor, shape (batch, coils, n), complex64
            Source values (any strides).

        Returns
        -------
        Tensor, shape (batch, coils), complex64
            Equal to ``kernel.predict(d, sources)`` up to the rounding of ``dtype``.
        """
        bsz, c = d.shape[0], self.coils
        g = self.hidden(d)
        s = torch.view_as_real(sources.reshape(bsz, c * self.n).to(torch.complex64))
        # (batch, 2c, 2) = [Re G; Im G] · [Re s, Im s], in dtype (float32 accumulation)
        p = torch.bmm(g, s.to(self.dtype)).float()
        re = p[:, :c, 0] - p[:, c:, 1]
        im = p[:, :c, 1] + p[:, c:, 0]
        y = torch.complex(re, im)
        if self.prior_width > 0:  # each coil from its own sources, Gaussian weights
            w = torch.softmax(-d.float().square().sum(-1) / self.prior_width**2, dim=-1)
            y = y + (sources.reshape(bsz, c, self.n) * w[:, None, :]).sum(-1)
        return y


def kernel_predictor(kernel: IGROGKernel, mode: str = "auto") -> Predictor:
    """Return the kernel's prediction ``(d, sources) → y`` in one of :data:`KERNEL_EVAL_MODES`.

    Parameters
    ----------
    kernel : IGROGKernel
        Trained kernel, on the device to compute on.
    mode : str
        ``"reference"``: :meth:`IGROGKernel.predict` (the path before issue #14); ``"fp32"`` or
        ``"bf16"``: :class:`KernelPredictor`; ``"auto"``: ``"bf16"`` where
        :func:`bf16_supported`, else ``"fp32"``.

    Raises
    ------
    InputError
        For an unknown ``mode``.
    """
    if mode not in KERNEL_EVAL_MODES:
        raise InputError(
            f"gridding.kernel_eval: {mode!r} is not one of {', '.join(KERNEL_EVAL_MODES)}"
        )
    if mode == "reference":
        return kernel.predict
    if mode == "auto":
        mode = "bf16" if bf16_supported(kernel.freqs.device) else "fp32"
    return KernelPredictor(kernel, torch.bfloat16 if mode == "bf16" else torch.float32)
