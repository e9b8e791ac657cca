"""What the viewer waits for when stepping through a large result: old vs new zarr chunks.

Writes one synthetic result (random coefficients, ``N³ × 5``) twice with the real writer
(:func:`spurig_core.io.save_result`): once with the layout before issue #19 (one chunk per
coefficient volume) and once with the current one (axial slabs of 16 planes,
:func:`spurig_core.io.result_chunks`); opens each as the napari reader does
(:func:`napari_spurig._layers.result_layers`, lazy dask) and times what napari reads for an axial
slice (``data[c, :, :, z]``): six slice steps and four coefficient switches (medians).

``--3d`` also times the first 3D view of one coefficient of the slab store in a headless napari
``ViewerModel`` (``dims.ndisplay = 3``: napari fetches the whole volume it draws; no GPU upload),
single-scale (level 0, 220³) against the reader's multiscale layer (coarsest level,
:mod:`napari_spurig._pyramid`), median of 3 fresh layers; ``--skip-old`` skips the old layout.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_viewer_slicing.py [N] [--dir DIR] \
        [--3d] [--skip-old]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from napari_spurig._layers import result_layers
from spurig_core import io
from spurig_core.data import Result


def _whole_volume(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*((1,) * (len(shape) - 3)), *shape[-3:]) if len(shape) > 3 else tuple(shape)


def _median_ms(fn, args: list[tuple[int, int]]) -> float:  # type: ignore[no-untyped-def]
    times = []
    for c, z in args:
        t = time.perf_counter()
        np.asarray(fn[c, :, :, z])
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _first_3d_ms(data: object, multiscale: bool) -> float:
    """Median time from adding an image layer to its 3D slice being loaded (napari ViewerModel)."""
    from napari.components import ViewerModel

    times = []
    for _ in range(3):
        viewer = ViewerModel()
        t = time.perf_counter()
        layer = viewer.add_image(data, multiscale=multiscale, contrast_limits=(0.0, 1.0))
        viewer.dims.ndisplay = 3
        np.asarray(layer._slice.image.raw)  # what the canvas would upload
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _report_3d(p: Path, n: int) -> None:
    from napari_spurig._pyramid import pyramid

    data = next(
        d for d, m, _ in result_layers(p) if m["metadata"]["spurig"]["kind"] == "coefficients"
    )
    level0 = (data[0] if isinstance(data, list) else data)[0]  # coefficient 0 (one slider stop)
    levels = pyramid(level0)  # what the reader builds from 128³ (here also below, to compare)
    print(f"\n| 3D view of one coefficient, {n}³ | volume drawn | first 3D view ms |")
    print("|---|---|---|")
    print(f"| single-scale (level 0) | {level0.shape} | {_first_3d_ms(level0, False):.0f} |")
    ms = _first_3d_ms(levels, True)
    print(f"| multiscale ({len(levels)} levels, coarsest) | {levels[-1].shape} | {ms:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=220)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/spurig-slicing"))
    ap.add_argument("--3d", dest="three_d", action="store_true")
    ap.add_argument("--skip-old", action="store_true")
    args = ap.parse_args()
    n = args.n
    args.dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    res = Result(
        coefficients=torch.randn(5, n, n, n, generator=g, dtype=torch.complex64),
        basis=torch.randn(500, 5, dtype=torch.complex64, generator=g),
        method="llr",
        groups=16,
        voxel_size_mm=(1.0, 1.0, 1.0),
    )
    current = io.result_chunks
    print("| chunks | result | write s | open s | slice step ms | coefficient switch ms |")
    print("|---|---|---|---|---|---|")
    layouts = [("whole volume (before)", _whole_volume), ("axial slabs of 16", current)]
    for label, chunks in layouts[1:] if args.skip_old else layouts:
        io.result_chunks = chunks  # type: ignore[assignment]
        p = args.dir / f"{'old' if chunks is _whole_volume else 'new'}{n}.zarr"
        shutil.rmtree(p, ignore_errors=True)
        t = time.perf_counter()
        io.save_result(res, p)
        t_write = time.perf_counter() - t
        io.result_chunks = current
        t = time.perf_counter()
        layers = result_layers(p)
        t_open = time.perf_counter() - t
        data = next(d for d, m, _ in layers if m["metadata"]["spurig"]["kind"] == "coefficients")
        data = data[0] if isinstance(data, list) else data  # multiscale: slices come from level 0
        step = _median_ms(data, [(0, z) for z in range(n // 2, n // 2 + 6)])
        switch = _median_ms(data, [(c, n // 2) for c in range(1, 5)])
        print(f"| {label} | {n}³×5 | {t_write:.1f} | {t_open:.1f} | {step:.0f} | {switch:.0f} |")
        if args.three_d and chunks is current:
            _report_3d(p, n)
        shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
