"""Screenshots of the napari plugin for the README (``make screenshots``; needs a display).

Opens the shipped 32³ sample in ``spurig gui``'s viewer, reconstructs it with SPUR-iG and LLR
(30 s, iterations saved, matched; cached in ``$SPURIG_SCREENSHOT_DIR`` or ``/tmp/spurig-shots``)
and writes full-window PNGs to ``docs/images/``:

- ``viewer_t1.png``: the sample result's T1 map (axial, colorbar, ms) with the Reconstruct form;
- ``compare_coefficients.png``, ``compare_maps.png``, ``compare_iterations.png``: the Compare
  widget's views and metrics table;
- ``train_form.png``: the Train form.

Usage::

    xvfb-run -a -s "-screen 0 1700x1050x24" .venv/bin/python tools/screenshots.py
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
SIZE = (1650, 1000)


def _results(scan: Path) -> list[Path]:
    """SPUR-iG and LLR results of the sample scan (30 s, iterations saved, matched), cached."""
    from spurig_core import pipeline

    cache = Path(os.environ.get("SPURIG_SCREENSHOT_DIR", "/tmp/spurig-shots"))
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for method in ("spurig", "llr"):
        p = cache / f"{method}_30s.zarr"  # short names: panel titles fit a 3-wide grid
        if not p.exists():
            r = pipeline.reconstruct(scan, method=method, duration="30s", save_iterations=True)
            pipeline.match(r, scan).save(p)
        out.append(p)
    return out


def _raise_dock(viewer, name: str) -> None:  # type: ignore[no-untyped-def]
    from qtpy.QtWidgets import QDockWidget

    for dock in viewer.window._qt_window.findChildren(QDockWidget):
        if dock.windowTitle() == name:
            dock.raise_()


def _shot(viewer, name: str) -> None:  # type: ignore[no-untyped-def]
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(path=str(OUT / name), canvas_only=False, flash=False)
    print(f"wrote {OUT / name}")


def _run(job) -> object:  # type: ignore[no-untyped-def]
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value


def main() -> None:
    import napari

    import napari_spurig
    from napari_spurig._compare_job import compare_job
    from napari_spurig._sample_data import sample_path

    OUT.mkdir(parents=True, exist_ok=True)
    scan = sample_path("scan")
    results = _results(scan)
    viewer = napari_spurig.make_viewer(show=True)
    viewer.window._qt_window.resize(*SIZE)
    viewer.open_sample("spurig", "result")
    viewer.reset_view()
    _raise_dock(viewer, "Reconstruct")
    _shot(viewer, "viewer_t1.png")

    compare = viewer.window.dock_widgets["Compare"]
    compare.scan.value = scan
    for p in results:
        compare.add_result(p)
    output = _run(compare_job(scan, results, factor=5.0, cancel=threading.Event()))
    compare._on_done(output)
    _raise_dock(viewer, "Compare")
    for view, name in (
        ("coefficients", "compare_coefficients.png"),
        ("T1/T2", "compare_maps.png"),
        ("iterations", "compare_iterations.png"),
    ):
        compare.view.value = view
        compare.show_view(view)
        if view == "iterations":
            viewer.dims.set_point(0, 4)  # SPUR-iG's 5th step next to LLR's 5th FISTA iterate
        viewer.reset_view()
        _shot(viewer, name)
    _raise_dock(viewer, "Train")
    _shot(viewer, "train_form.png")
    viewer.close()
    del napari


if __name__ == "__main__":
    main()
