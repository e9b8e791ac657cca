r"""How fast the viewer's Cancel answers in kernel training and gridding, and where progress stalls.

Runs the Reconstruct widget's job (:func:`napari_spurig._jobs.reconstruct_job`, the engine in a
helper thread with a progress callback) on a scan, requests a cancel after the ``k``-th progress
event of a stage, and prints the seconds until ``Cancelled`` arrives and the largest gaps between
consecutive progress events before it (a gap is how long a cancel could wait there).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_viewer_cancel.py METHOD SCAN DURATION \
        [STAGE:K,...]      # default igrog-pairs:5,igrog-train:3,grid:2
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from napari_spurig._jobs import ReconstructParams, reconstruct_job
from spurig_core.errors import Cancelled


def run(params: ReconstructParams, stage: str, after: int) -> None:
    """Cancel after the ``after``-th event of ``stage`` (step > 0); print latency and gaps."""
    cancel = threading.Event()
    t0 = last = time.monotonic()
    prev, gaps, t_cancel, seen = "start", [], 0.0, 0
    try:
        for ev in reconstruct_job(params, cancel):
            now = time.monotonic()
            here = f"{ev.stage} {ev.step}/{ev.total} {ev.message}"
            gaps.append((now - last, prev, here))
            last, prev = now, here
            if ev.stage == stage and ev.step > 0:
                seen += 1
                if seen == after and not cancel.is_set():
                    t_cancel = time.monotonic()
                    cancel.set()
                    print(f"  cancel requested at {here!r}, t = {now - t0:.1f} s", flush=True)
    except Cancelled:
        print(f"  cancelled {time.monotonic() - t_cancel:.2f} s after the request; largest gaps:")
        for g, a, b in sorted(gaps, reverse=True)[:4]:
            print(f"    {g:6.1f} s  {a!r} -> {b!r}", flush=True)
        return
    print("  finished without a cancel", flush=True)


def main() -> None:
    method, scan, duration = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    plan = sys.argv[4] if len(sys.argv) > 4 else "igrog-pairs:5,igrog-train:3,grid:2"
    with tempfile.TemporaryDirectory() as tmp:
        params = ReconstructParams(
            scan_path=scan, output_path=Path(tmp) / "x.zarr", method=method, duration=duration
        )
        for item in plan.split(","):
            stage, k = item.split(":")
            print(f"cancel in {stage}", flush=True)
            run(params, stage, int(k))


if __name__ == "__main__":
    main()
