"""Benchmark: simulate one subject (default 64³, 48 groups, 10 coils) on CPU.

Reports wall time, CPU time, per-stage wall times, peak resident memory and the file size, plus
the machine's load (the project's machines are shared, so wall time depends on the neighbours).

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_simulate.py [--matrix 64] [--groups 48]
        [--coils 10] [--keep OUT.h5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from spurig_core import simulation
from spurig_core.memory import peak_rss_mb
from spurig_core.progress import ProgressEvent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--groups", type=int, default=48)
    ap.add_argument("--coils", type=int, default=10)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--phantom", default="brain", choices=("brain", "analytic"))
    ap.add_argument("--keep", type=Path, default=None, help="keep the simulated file here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    # wall time of each stage, closed by the event that ends it
    marks = {"coil array": "phantom", "signals": "coil maps"}
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    last = [t0]

    def close(name: str) -> None:
        now = time.perf_counter()
        stages[name] = round(now - last[0], 1)
        last[0] = now

    def callback(ev: ProgressEvent) -> None:
        if ev.stage == "subject" and ev.message in marks:
            close(marks[ev.message])
        elif ev.stage == "subject" and ev.message.startswith("time-series rank"):
            close(f"signals + SVD ({ev.message})")
        elif ev.stage == "nufft" and ev.step >= ev.total:
            close("nufft")

    load_before = os.getloadavg()
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "bench.h5"
        simulation.simulate(
            out,
            matrix=args.matrix,
            coils=args.coils,
            groups=args.groups,
            seed=args.seed,
            phantom=args.phantom,
            callback=callback,
        )
        wall = time.perf_counter() - t0
        close("noise + calibration + write")
        size = out.stat().st_size
    cpu = time.process_time() - cpu0
    peak_mb = peak_rss_mb()
    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "matrix": args.matrix,
        "groups": args.groups,
        "coils": args.coils,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(peak_mb),
        "file_mb": round(size / 1e6),
        "load_avg_before": [round(v, 1) for v in load_before],
        "load_avg_after": [round(v, 1) for v in os.getloadavg()],
        "stages_wall_s": stages,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
