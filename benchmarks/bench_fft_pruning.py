"""Whether the gridded gram's zero-padded FFTs can be pruned on the CPU (issue 4, gram ≥ 50× goal).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fft_pruning.py [--matrix 64] [--basis 5]

The gridded gram pads ``(basis, N, N, N)`` coefficient maps (one coil) to the ×1.5 grid, FFTs,
mixes, inverse-FFTs and crops (``GriddedSubspaceEncoding._pad_fft``).  Only ``N`` of the ``1.5 N``
input lines along each axis are non-zero, so a separable FFT that skips the zero lines does
``(N² + N·X + X²) / (3 X²)`` ≈ 70 % of the 1D transforms of a full ``fftn``.  This script times,
in CPU seconds of one thread: the full ``torch.fft.fftn`` over the three axes; the pruned
separable version (three ``torch.fft.fft`` calls on growing buffers); a half-pruned version (2D
FFT on the ``N`` non-zero slabs, then the last axis); and a single 1D FFT along the first and the
last axis of the full buffer.  All versions are checked to give the same result.

Since torch runs a 1D FFT along a strided (non-last) axis several times slower per line than
along the last one, two further pruned versions make every pass contiguous by permute-copying
between the passes (issue #14, 2026-12-05): ``pruned_contiguous_2d`` (the first axis as the last
one, then one 2D FFT over the other two) and ``pruned_contiguous_1d`` (three 1D passes, each on
the last axis).  Both return the ordinary ``(kx, ky, kz)`` layout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch


def _cpu_seconds(f: Callable[[], object], repeats: int = 5) -> float:
    f()
    t0 = time.process_time()
    for _ in range(repeats):
        f()
    return (time.process_time() - t0) / repeats


def _contiguous_variants(
    x: torch.Tensor, x_len: int, c: slice
) -> dict[str, Callable[[], torch.Tensor]]:
    """Pruned forward FFTs of ``pad(x)`` whose every pass runs along the last (contiguous) axis.

    Parameters
    ----------
    x : Tensor, shape (basis, N, N, N), complex64
    x_len : int
        Grid size ``X``.
    c : slice
        Where the ``N`` image lines sit in the grid.

    Returns
    -------
    dict of str to callable
        Each returns the ``(basis, X, X, X)`` spectrum (a reused buffer).
    """
    nb, n = x.shape[0], x.shape[1]

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=torch.complex64)

    p1, q1 = zeros(nb, n, n, x_len), zeros(nb, n, n, x_len)  # (y, z, kx)
    p2, q2 = zeros(nb, n, x_len, x_len), zeros(nb, n, x_len, x_len)  # (z, kx, ky)
    p3, p3b, out = (zeros(nb, x_len, x_len, x_len) for _ in range(3))

    def first_axis() -> torch.Tensor:
        p1[..., c] = x.permute(0, 2, 3, 1)
        return torch.fft.fft(p1, dim=-1, out=q1)

    def pruned_contiguous_2d() -> torch.Tensor:
        p3[:, :, c, c] = first_axis().permute(0, 3, 1, 2)
        return torch.fft.fft2(p3, dim=(-2, -1), out=out)

    def pruned_contiguous_1d() -> torch.Tensor:
        p2[..., c] = first_axis().permute(0, 2, 3, 1)
        p3b[..., c] = torch.fft.fft(p2, dim=-1, out=q2).permute(0, 2, 3, 1)
        return torch.fft.fft(p3b, dim=-1, out=out)

    return {f.__name__: f for f in (pruned_contiguous_2d, pruned_contiguous_1d)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matrix", type=int, default=64)
    p.add_argument("--basis", type=int, default=5)
    a = p.parse_args()
    n, nb = a.matrix, a.basis
    x_len = n * 3 // 2
    o = (x_len - n) // 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(nb, n, n, n, dtype=torch.complex64, generator=g)
    full = torch.zeros(nb, x_len, x_len, x_len, dtype=torch.complex64)
    out = torch.empty_like(full)
    b1 = torch.zeros(nb, n, n, x_len, dtype=torch.complex64)
    b2 = torch.zeros(nb, n, x_len, x_len, dtype=torch.complex64)
    b3 = torch.zeros_like(b2)  # border stays zero: only its centre is written
    c = slice(o, o + n)

    def fftn_full() -> torch.Tensor:
        full[:, c, c, c] = x
        return torch.fft.fftn(full, dim=(-3, -2, -1), out=out)

    def pruned_separable() -> torch.Tensor:
        b1[..., c] = x
        b2[:, :, c, :] = torch.fft.fft(b1, dim=-1)
        full[:, c] = torch.fft.fft(b2, dim=-2)
        return torch.fft.fft(full, dim=-3, out=out)

    def pruned_slabs() -> torch.Tensor:
        b3[:, :, c, c] = x
        full[:, c] = torch.fft.fftn(b3, dim=(-2, -1))
        return torch.fft.fft(full, dim=-3, out=out)

    contiguous = _contiguous_variants(x, x_len, c)
    ref = fftn_full().clone()
    for f in (pruned_separable, pruned_slabs, *contiguous.values()):
        err = float((f() - ref).abs().max() / ref.abs().max())
        assert err < 1e-5, (f.__name__, err)
    res = {
        "threads": torch.get_num_threads(),
        "shape": [nb, x_len, x_len, x_len],
        "fftn_full_s": _cpu_seconds(fftn_full),
        "pruned_separable_s": _cpu_seconds(pruned_separable),
        "pruned_slabs_s": _cpu_seconds(pruned_slabs),
        **{f"{k}_s": _cpu_seconds(f) for k, f in contiguous.items()},
        "fft_first_axis_s": _cpu_seconds(lambda: torch.fft.fft(full, dim=-3, out=out)),
        "fft_last_axis_s": _cpu_seconds(lambda: torch.fft.fft(full, dim=-1, out=out)),
        "line_fraction_pruned": (n * n + n * x_len + x_len * x_len) / (3 * x_len * x_len),
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
