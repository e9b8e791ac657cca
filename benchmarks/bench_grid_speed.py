"""Gridding speed (issue #14): the kernel evaluation modes of ``grid()`` side by side.

For one scan and one trained iGROG kernel, grids the scan with each ``kernel_eval`` mode of
:func:`spurig_core.operators.igrog.grid` (``reference`` = ``IGROGKernel.predict``, the path before
issue #14; ``fp32`` and ``bf16`` = :class:`spurig_core.operators.igrog_eval.KernelPredictor`),
interleaved over ``--repeats`` rounds in one process, and reports per mode:

* gridding seconds (median) and the ratio to ``reference`` measured in the same rounds;
* peak extra resident memory during gridding (sampled every 10 ms);
* ``values NRMSE vs reference``: the gridded values against the reference mode's;
* ``A^H b NRMSE vs NUFFT``: the gridded adjoint (no density weights) against the NUFFT adjoint of
  the raw k-space (the scan's basis, its true coil maps), as in the issue.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_grid_speed.py --scan scan.h5 \
        --kernel kernel.pt --repeats 3 --out benchmarks/RESULTS-igrog.md

``--kernel`` is a ``torch.save`` of ``IGROGKernel.checkpoint()``; without it the kernel is trained
(default :class:`GriddingConfig`).  ``--groups`` grids only the first groups.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from pathlib import Path

import torch

from spurig_core.io import load_scan
from spurig_core.memory import PeakRSS
from spurig_core.operators.encoding import (
    EncodingConfig,
    GriddedSubspaceEncoding,
    SubspaceNUFFTEncoding,
)
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.operators.igrog_kernel import IGROGKernel
from spurig_core.operators.igrog_train import train_kernel
from spurig_core.physics import default_basis

MODES = ("reference", "fp32", "bf16")


def _nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan", type=Path, required=True)
    ap.add_argument("--kernel", type=Path, default=None)
    ap.add_argument("--groups", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    scan = load_scan(args.scan)
    if args.groups:
        scan = scan.first_groups(args.groups)
    cfg = GriddingConfig(check=False)
    if args.kernel is not None:
        kernel = IGROGKernel.from_checkpoint(torch.load(args.kernel, weights_only=True))
    else:
        assert scan.calibration is not None
        kernel = train_kernel(scan.calibration, scan.trajectory, scan.matrix, config=cfg)
    modes = tuple(args.modes.split(","))
    times: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, float] = {m: 0.0 for m in modes}
    values: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for m in modes:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                gd = grid(
                    scan.kspace,
                    scan.trajectory,
                    scan.matrix,
                    kernel=kernel,
                    config=cfg,
                    kernel_eval=m,
                )
                times[m].append(time.perf_counter() - t0)
            peaks[m] = max(peaks[m], mem.peak - mem.base)
            values[m] = gd.values
            index = gd.index
            del gd
    basis = default_basis(scan.sequence)
    assert scan.coil_maps is not None
    maps = scan.coil_maps
    nufft = SubspaceNUFFTEncoding(scan.trajectory, maps, basis)
    ref_ahb = nufft.adjoint(scan.kspace)
    del nufft
    from spurig_core.operators.grid import GriddedData, grid_shape

    rows = []
    med = {m: sorted(v)[len(v) // 2] for m, v in times.items()}
    for m in modes:
        gd = GriddedData(values[m], index, grid_shape(scan.matrix, 1.5), scan.matrix)
        op = GriddedSubspaceEncoding(
            gd, maps, basis, config=EncodingConfig(density_compensation=0.0)
        )
        ahb = op.adjoint(values[m])
        rows.append(
            {
                "mode": m,
                "gridding_s": med[m],
                "all_s": times[m],
                "speedup_vs_reference": med.get("reference", float("nan")) / med[m],
                "peak_extra_MiB": peaks[m],
                "values_nrmse_vs_reference": (
                    _nrmse(values[m], values["reference"]) if "reference" in values else None
                ),
                "ahb_nrmse_vs_nufft": _nrmse(ahb, ref_ahb),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    samples = int(scan.trajectory[..., 0].numel())
    report = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scan": str(args.scan),
        "matrix": list(scan.matrix),
        "groups": int(scan.trajectory.shape[0]),
        "samples": samples,
        "threads": torch.get_num_threads(),
        "kernel_val_rel_error": kernel.metrics.get("val_rel_error"),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.out:
        lines = [
            "",
            f"#### {report['date']}: {scan.matrix[0]}³, {report['groups']} groups, "
            f"{samples} samples, {report['threads']} thread(s)",
            "",
            "| kernel_eval | gridding s (median) | × vs reference | peak extra MiB | "
            "values NRMSE vs reference | A^H b NRMSE vs NUFFT |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            vr = r["values_nrmse_vs_reference"]
            lines.append(
                f"| {r['mode']} | {r['gridding_s']:.2f} | {r['speedup_vs_reference']:.2f} | "
                f"{r['peak_extra_MiB']:.0f} | {'–' if vr is None else f'{100 * vr:.3f} %'} | "
                f"{100 * r['ahb_nrmse_vs_nufft']:.3f} % |"
            )
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
