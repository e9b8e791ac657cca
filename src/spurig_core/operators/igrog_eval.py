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

Memory traffic, not arithmetic, set the time of that path on a CPU with bf16 matrix units
(2026-12-06, ``benchmarks/RESULTS-igrog.md``), so the batch loop is arranged around the arrays:

* the Fourier features are built feature-major (every sine and cosine written contiguously,
  six times faster than into the columns of a row-major buffer) and read through a transpose;
* the large intermediates live in work buffers reused from batch to batch;
* the last layer's bias, ``b`` of ``G = W h + b``, is applied to the sources (``b s``, a small
  product) rather than added to the (batch, 2·coils·coils·n) output, a whole pass over the
  largest array of the gridding;
* the gridding gathers the sources as rows ``(batch, n, coils)`` and
  :meth:`KernelPredictor.batch_major` takes that layout as it is: ``G``'s columns are stored in
  the same (source, coil) order, so the sources reach the batched product after one cast
  (no transposed copy; issue #14, 2026-12-06: 0.3–0.5 s of a 64³ gridding).

Modes: ``"reference"`` (``kernel.predict`` itself), ``"fp32"``, ``"bf16"`` and ``"auto"``
(``"bf16"`` where the device has native bfloat16 matmuls, else ``"fp32"``).  Times, memory and the
A^H b accuracy of each mode are in ``benchmarks/RESULTS-igrog.md`` ("Gridding speed (issue #14)").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import InputError

if TYPE_CHECKING:
    from .igrog_kernel import IGROGKernel

__all__ = ["KERNEL_EVAL_MODES", "KernelPredictor", "bf16_supported", "kernel_predictor"]

#: Samples per block of the kernel's last layer and its product with the sources (bfloat16 and
#: CUDA paths): 4,096 × 1,000 values of ``G`` (8 MB in bfloat16) stay in cache between the two.
LAST_BLOCK = 4096
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
        self._freqs_2pi = ((2 * math.pi) * self.freqs).T.contiguous()  # (3n, features)
        layers = [m for m in kernel.mlp if isinstance(m, nn.Linear)]
        self.layers = [(m.weight.detach().to(dtype), m.bias.detach().to(dtype)) for m in layers]
        # G's columns in source-major order (source i, then coil): the order of gathered rows.
        # The last layer's bias, the (2·coils, n·coils) matrix it adds to every G, is applied to
        # the sources (one small float32 product with their (re, im) pairs) instead of added to
        # the (batch, 2·coils·coils·n) output
        bias = layers[-1].bias.detach().float()
        c, n = self.coils, self.n
        w_last = self.layers[-1][0]
        self._last_w_sm = (
            w_last.view(2 * c, c, n, -1).permute(0, 2, 1, 3).reshape(w_last.shape).contiguous()
        )
        bias_sm = bias.view(2 * c, c, n).permute(0, 2, 1).reshape(2 * c, n * c)
        self._last_b_sm = bias_sm.reshape(-1).to(dtype)
        eye = torch.eye(2, dtype=torch.float32, device=bias.device)
        self._bias_kron = torch.einsum("ok,rs->kros", bias_sm, eye).reshape(2 * n * c, 4 * c)
        # the same with the output's columns in (re/im, row) order, for the transposed product
        self._bias_kron_t = torch.einsum("ok,rs->krso", bias_sm, eye).reshape(2 * n * c, 4 * c)
        self._buffers: dict[str, torch.Tensor] = {}

    def _buf(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """Return a contiguous work buffer of ``shape``, a view of storage kept between batches.

        Reusing the large intermediates (features, hidden and output activations: ~100 MB per
        32 k-sample batch) spares the allocator fresh, page-faulting memory at every batch; the
        storage only grows, so batches of varying size (the distinct predictions of
        :func:`~spurig_core.operators.igrog.grid`) reuse it too.
        """
        size = math.prod(shape)
        b = self._buffers.get(name)
        if b is None or b.numel() < size or b.dtype != dtype or b.device != device:
            b = torch.empty(size, dtype=dtype, device=device)
            self._buffers[name] = b
        return b[:size].view(shape)

    def features(self, d: torch.Tensor) -> torch.Tensor:
        """MLP input ``[d, sin 2πfd, cos 2πfd]``, shape (batch, 3n + 2·features), in ``dtype``.

        Built feature-major (features × batch) so that every sine and cosine is written to
        contiguous memory (six times faster than into the columns of a row-major buffer), and
        returned as its transpose (a view): the first layer reads it as it is.
        """
        bsz, m = d.shape[0], 3 * self.n
        x = d.reshape(bsz, m).float()
        nf = self._freqs_2pi.shape[1]
        proj = self._buf("phases", (nf, bsz), torch.float32, d.device)  # float32 phases
        torch.mm(self._freqs_2pi.T, x.T, out=proj)
        ft = self._buf("features", (m + 2 * nf, bsz), self.dtype, d.device)
        ft[:m] = x.T
        if self.dtype == torch.float32:
            torch.sin(proj, out=ft[m : m + nf])
            torch.cos(proj, out=ft[m + nf :])
        else:  # in float32, then cast: sin/cos with a bf16 ``out`` take 1.8× as long (2026-12-06)
            trig = self._buf("trig", (nf, bsz), torch.float32, d.device)
            ft[m : m + nf].copy_(torch.sin(proj, out=trig))
            ft[m + nf :].copy_(torch.cos(proj, out=trig))
        return ft.T

    def hidden(
        self, d: torch.Tensor, *, bias: bool = True, source_major: bool = False
    ) -> torch.Tensor:
        """Last-layer output ``[Re G; Im G]``, shape (batch, 2·coils, coils·n), in ``dtype``.

        ``bias=False`` leaves out the last layer's bias (:meth:`batch_major` applies it to the
        sources instead: adding it here costs a pass over the largest array of the gridding).
        ``source_major=True`` orders the columns (source, coil) instead of (coil, source), the
        order :meth:`batch_major` uses.
        """
        h = self._activations(d)
        bsz = d.shape[0]
        w, b = self.layers[-1]
        if source_major:
            w, b = self._last_w_sm, self._last_b_sm
        o = self._buf("last", (bsz, w.shape[0]), self.dtype, d.device)
        g = torch.addmm(b, h, w.T, out=o) if bias else torch.mm(h, w.T, out=o)
        return g.view(bsz, 2 * self.coils, self.coils * self.n)

    def _activations(self, d: torch.Tensor) -> torch.Tensor:
        """Return the last hidden layer's output, shape (batch, hidden), in ``dtype``."""
        h = self.features(d)
        bsz = d.shape[0]
        for i, (w, b) in enumerate(self.layers[:-1]):
            o = self._buf(f"layer{i}", (bsz, w.shape[0]), self.dtype, d.device)
            h = torch.addmm(b, h, w.T, out=o).relu_()
        return h

    def _kernel_times_sources(self, d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``[Re G; Im G] · [Re s, Im s]`` per sample, shape (batch, 2·coils, 2), float32.

        ``G`` (the last layer without its bias, source-major columns) is made and used in
        blocks of :data:`LAST_BLOCK` samples, each still in cache when the batched product
        reads it, instead of written whole (65 MB per 32 k samples) and read back (issue #14,
        session 29: the pair of products 19.5 → 17.4 ms per 32 k samples in bfloat16).
        """
        bsz, c = d.shape[0], self.coils
        h = self._activations(d)
        w = self._last_w_sm
        blk = min(bsz, LAST_BLOCK)
        gb = self._buf("last", (blk, w.shape[0]), self.dtype, d.device)
        p = self._buf("products", (bsz, 2 * c, 2), self.dtype, d.device)
        for i in range(0, bsz, blk):
            e = min(bsz, i + blk)
            g = torch.mm(h[i:e], w.T, out=gb[: e - i])
            torch.bmm(g.view(e - i, 2 * c, c * self.n), s[i:e], out=p[i:e])
        return p.float()

    def batch_major(self, d: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Predicted target values from batch-major sources (the layout of a row gather).

        ``G``'s columns come in source-major order, so the sources enter the batched product as
        they are (one cast, no transposition), and the bias term is one product with their
        (re, im) pairs (issue #14).

        Parameters
        ----------
        d : Tensor, shape (batch, n, 3), float32
            Source minus target positions, cycles/FOV.
        sources : Tensor, shape (batch, n, coils), complex64
            Source values.

        Returns
        -------
        Tensor, shape (batch, coils), complex64
            Equal to ``kernel.predict(d, sources.transpose(1, 2))`` up to the rounding of
            ``dtype``.
        """
        bsz, c, n = d.shape[0], self.coils, self.n
        src = torch.view_as_real(sources.to(torch.complex64).contiguous()).view(bsz, n * c, 2)
        if self.dtype == torch.float32 and d.device.type == "cpu":
            g = self.hidden(d, bias=False, source_major=True)
            # [Re s; Im s]ᵀ · Gᵀ, (batch, 2, 2c): on an AVX2 CPU (float32 path) 4.4× faster than
            # G · s, whose (2c, n·c) × (n·c, 2) products MKL runs one by one (2026-12-06,
            # benchmarks/RESULTS-igrog.md, session 20)
            st = self._buf("sources", (bsz, 2, n * c), self.dtype, d.device)
            st.copy_(src.transpose(1, 2))
            pt = torch.bmm(st, g.transpose(1, 2))  # (batch, 2, 2c)
            pt.view(bsz, 4 * c).addmm_(src.view(bsz, 2 * n * c), self._bias_kron_t)
            p = pt.transpose(1, 2)  # (batch, 2c, 2), a view
        else:
            s = self._buf("sources", (bsz, n * c, 2), self.dtype, d.device)
            s.copy_(src)
            p = self._kernel_times_sources(d, s)  # (batch, 2c, 2): [Re G; Im G] · [Re s, Im s]
            p.view(bsz, 4 * c).addmm_(src.view(bsz, 2 * n * c), self._bias_kron)
        out = self._prior(d, src.view(bsz, n, 2 * c)).view(bsz, c, 2)
        out[..., 0] += p[:, :c, 0] - p[:, c:, 1]
        out[..., 1] += p[:, :c, 1] + p[:, c:, 0]
        return torch.view_as_complex(out)

    def _prior(self, d: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Return the smooth prior: each coil from its own sources, Gaussian weights, float32.

        ``src`` is (batch, n, 2·coils) float32; returns (batch, 2·coils).  One ``addcmul`` per
        source (three times faster than a batched (1, n) × (n, 2·coils) product on an AVX2 CPU,
        2026-12-06).
        """
        bsz = d.shape[0]
        if self.prior_width <= 0:
            return torch.zeros((bsz, src.shape[2]), dtype=torch.float32, device=d.device)
        w = torch.softmax(d.float().square().sum(-1).mul_(-1.0 / self.prior_width**2), dim=-1)
        out = src[:, 0] * w[:, :1]
        for i in range(1, self.n):
            out.addcmul_(src[:, i], w[:, i : i + 1])
        return out

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
        return self.batch_major(d, sources.transpose(1, 2))


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
