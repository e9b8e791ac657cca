"""First 3D view of a large result in a real napari window: single-scale vs the reader's pyramid.

Writes one synthetic result (random coefficients and T1 map, ``N³``) with the real writer, opens
it as the reader does (:func:`napari_spurig._layers.result_layers`: multiscale from 128³) and,
for comparison, single-scale (``multiscale_min=None``), shows its T1 map in a napari window,
switches to 3D and times until the canvas has drawn it (``viewer.screenshot`` renders the canvas;
under Xvfb this is Mesa's software OpenGL, so absolute times are CPU rendering, not a GPU's).
Median of 3 fresh viewers each.

Usage::

    OMP_NUM_THREADS=1 xvfb-run -a .venv/bin/python benchmarks/bench_viewer_3d.py [N] [--dir DIR]
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


def _first_3d_s(p: Path, multiscale_min: int | None) -> tuple[float, str]:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_spurig._view import add_layers

    times = []
    shape = ""
    for _ in range(3):
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1200, 900)
        t1 = [t for t in result_layers(p, multiscale_min=multiscale_min) if "T1" in t[1]["name"]]
        QApplication.processEvents()
        t = time.perf_counter()
        (layer,) = add_layers(viewer, t1)
        viewer.dims.ndisplay = 3
        viewer.screenshot(canvas_only=True, flash=False)
        times.append(time.perf_counter() - t)
        shape = str(tuple(layer._slice.image.raw.shape))
        viewer.close()
    return float(np.median(times)), shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=220)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/spurig-3d"))
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
        t1_ms=torch.rand(n, n, n, generator=g) * 3000,
        t2_ms=torch.rand(n, n, n, generator=g) * 200,
        pd=torch.rand(n, n, n, generator=g),
    )
    p = args.dir / f"r{n}.zarr"
    shutil.rmtree(p, ignore_errors=True)
    io.save_result(res, p)
    print(f"| T1 map {n}³, first 3D view | volume drawn | s (median of 3) |")
    print("|---|---|---|")
    for label, lim in (("single-scale (before)", None), ("multiscale (reader default)", 128)):
        s, shape = _first_3d_s(p, lim)
        print(f"| {label} | {shape} | {s:.2f} |")
    shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
