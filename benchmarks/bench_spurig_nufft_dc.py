r"""A shipped model on NUFFT data consistency instead of its gridded one (issue 13, session 11).

Separates what the gridded data term costs from what the denoiser does: every scan of
``TEST_DIR`` is reconstructed with ``METHODS`` at ``DURATION`` with the data term forced to the
NUFFT (the term the ``on_bad_gridding="fallback"`` path builds, same density weighting), matched
and evaluated against its ground truth; compare with the gridded stores of
``tools/evaluate_models.py``.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_spurig_nufft_dc.py data/cohort48/test 1min
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

import spurig_core.recon.data_term as data_term
from spurig_core.io import load_scan
from spurig_core.pipeline import evaluate, match, reconstruct


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("test_dir", type=Path)
    p.add_argument("duration")
    p.add_argument("--methods", default="spurig")
    args = p.parse_args(argv)
    build = data_term.build_data_term

    def nufft_term(kind: str, *a: Any, **k: Any) -> Any:
        return build("nufft", *a, **k)

    data_term.build_data_term = nufft_term  # read by pipeline.reconstruct at each call
    for m in args.methods.split(","):
        rows = []
        for path in sorted(args.test_dir.glob("*.h5")):
            scan, t0 = load_scan(path), time.perf_counter()
            res = match(reconstruct(scan, method=m, duration=args.duration), scan)
            e = evaluate(res, scan)
            rows.append((np.mean(e["psnr"]), 100 * e["t1_rel_error"], 100 * e["t2_rel_error"]))
            print(
                f"{path.stem} {m} {args.duration}, NUFFT DC: PSNR {rows[-1][0]:.2f} dB, "
                f"T1 {rows[-1][1]:.1f} %, T2 {rows[-1][2]:.1f} % "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        a = np.array(rows)
        print(
            f"mean {m}: PSNR {a[:, 0].mean():.2f} dB, T1 {a[:, 1].mean():.1f} %, "
            f"T2 {a[:, 2].mean():.1f} %"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
