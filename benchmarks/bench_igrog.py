"""Benchmark iGROG gridding (paper 2.3.1): kernel training and gridding s, peak memory, accuracy.

Simulates a subject (brain or analytic phantom, simulated head array, SPI trajectory, the default
FISP-MRF sequence) and grids it three ways:

(a) iGROG, ``n_sources=5``, learned kernel (the paper's setting);
(b) learned kernel with ``n_sources=1`` (GROG-like single-source shift);
(c) nearest-neighbour move, no kernel.

Accuracy, for each variant:

* ``values NRMSE``: gridded values vs the exact forward model (SPEC §3, finufft at eps 1e-6) at the
  grid points they were moved to;
* ``A^H b NRMSE``: :class:`GriddedSubspaceEncoding` adjoint of the gridded data vs the
  :class:`SubspaceNUFFTEncoding` adjoint of the raw data (5-column basis), as in the issue.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_igrog.py --matrix 64 --coils 10 \
        --groups 16 --out benchmarks/RESULTS-igrog.md

Timings are wall seconds on whatever else the machine is running (shared CPUs are noisy).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spurig_core.data import FispSequence
from spurig_core.memory import PeakRSS, peak_rss_mb
from spurig_core.operators.encoding import GriddedSubspaceEncoding, SubspaceNUFFTEncoding
from spurig_core.operators.grid import GriddedData
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.operators.igrog_train import train_kernel
from spurig_core.simulation import (
    SimulationConfig,
    calibration_data,
    nufft_forward,
    signal_subspace,
)
from spurig_core.simulation.coils import head_array
from spurig_core.simulation.phantom import analytic_subject, brain_subject
from spurig_core.simulation.trajectory import spi_trajectory


def _nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _grid_frequencies(gd: GriddedData) -> torch.Tensor:
    p = torch.stack(torch.unravel_index(gd.index, gd.grid), -1).double()
    g = torch.tensor(gd.grid, dtype=torch.float64)
    return ((p - torch.div(g, 2, rounding_mode="floor")) * torch.tensor(gd.matrix) / g).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--coils", type=int, default=10)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--tr", type=int, default=500)
    ap.add_argument("--calibration", type=int, default=24)
    ap.add_argument("--phantom", choices=["brain", "analytic"], default="brain")
    ap.add_argument("--steps", type=int, default=GriddingConfig.steps)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help=".npz of the simulated data (reused)")
    ap.add_argument(
        "--gridding",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a GriddingConfig field, e.g. source_spacing=0 (repeatable)",
    )
    args = ap.parse_args()

    n = args.matrix
    t0 = time.perf_counter()
    seq = FispSequence.default()
    if args.tr != seq.n_tr:
        seq = FispSequence(seq.flip_angle_deg[: args.tr])
    names = ("images", "sbasis", "maps", "traj", "kspace", "calib")
    if args.cache is not None and args.cache.exists():
        with np.load(args.cache) as f:
            images, sbasis, maps, traj, kspace, calib = (torch.from_numpy(f[k]) for k in names)
    else:
        make = brain_subject if args.phantom == "brain" else analytic_subject
        subject = make(n, seed=args.seed)
        maps = head_array(n, args.coils, fov_mm=subject.fov_mm, mask=subject.head_mask, seed=1)
        images, sbasis, _ = signal_subspace(subject, seq, SimulationConfig(matrix=n))
        traj = spi_trajectory(n, args.groups, seq.n_tr)
        kspace = nufft_forward(images, maps, traj, sbasis, eps=1e-6)
        calib = calibration_data(torch.from_numpy(subject.pd_complex()), maps, args.calibration)
        if args.cache is not None:
            arrays = dict(zip(names, (images, sbasis, maps, traj, kspace, calib), strict=True))
            np.savez(args.cache, **{k: v.numpy() for k, v in arrays.items()})
    basis = sbasis[:, :5].contiguous()
    t_sim = time.perf_counter() - t0
    print(f"simulated {tuple(kspace.shape)} (rank {images.shape[0]}) in {t_sim:.1f} s", flush=True)

    matrix = (n, n, n)
    changes: dict[str, object] = {}
    for item in args.gridding:
        key, _, value = item.partition("=")
        changes[key] = type(getattr(GriddingConfig, key))(value)
    base = GriddingConfig(steps=args.steps, device=args.device, seed=args.seed, **changes)
    variants = {
        "(a) iGROG n=5": base,
        "(b) learned n=1": dataclasses.replace(base, n_sources=1),
        "(c) nearest, no kernel": dataclasses.replace(base, n_sources=1, learned_kernel=False),
    }

    t0 = time.perf_counter()
    # both adjoints with the data term's density weights (γ = 0.5): A^H W b
    nufft_op = SubspaceNUFFTEncoding(traj, maps, basis, eps=1e-6, density_compensation=0.5)
    ref_ahb = nufft_op.adjoint(nufft_op.data_values(kspace))
    t_nufft_adj = time.perf_counter() - t0
    del nufft_op

    rows = []
    exact: torch.Tensor | None = None
    exact_ahb, floor = ref_ahb, float("nan")
    for name, cfg in variants.items():
        kernel = None
        train_s, train_mem, metrics = 0.0, 0.0, {}
        if cfg.learned_kernel:
            with PeakRSS(0.02) as mem:
                t0 = time.perf_counter()
                kernel = train_kernel(calib, traj, matrix, config=cfg)
                train_s = time.perf_counter() - t0
            train_mem, metrics = mem.extra, kernel.metrics
        with PeakRSS(0.02) as mem:
            t0 = time.perf_counter()
            gd = grid(kspace, traj, matrix, kernel=kernel, config=cfg)
            if gd.values.is_cuda:
                torch.cuda.synchronize()
            grid_s = time.perf_counter() - t0
        grid_mem = mem.extra
        gd = gd.to("cpu")
        if exact is None:  # the grid points are the same for every variant
            exact = nufft_forward(images, maps, _grid_frequencies(gd), sbasis, eps=1e-6)
            op = GriddedSubspaceEncoding(gd, maps, basis)
            exact_ahb = op.adjoint_data(exact)
            floor = _nrmse(exact_ahb, ref_ahb)
        val_err = _nrmse(gd.values, exact)
        op = GriddedSubspaceEncoding(gd, maps, basis)
        ahb = op.adjoint_data()
        ahb_err, ahb_grid_err = _nrmse(ahb, ref_ahb), _nrmse(ahb, exact_ahb)
        del op, ahb
        row = {
            "variant": name,
            "kernel_training_s": train_s,
            "gridding_s": grid_s,
            "train_peak_extra_MiB": train_mem,
            "grid_peak_extra_MiB": grid_mem,
            "values_nrmse": val_err,
            "ahb_nrmse": ahb_err,
            "ahb_vs_exact_grid_nrmse": ahb_grid_err,
            "kernel_val_rel_error": metrics.get("val_rel_error"),
            "kernel_nearest_rel_error": metrics.get("nearest_rel_error"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    peak_total = peak_rss_mb()
    samples = int(np.prod(kspace.shape[1:]))
    cmd = (
        "OMP_NUM_THREADS="
        + os.environ.get("OMP_NUM_THREADS", "?")
        + " .venv/bin/python benchmarks/bench_igrog.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v is not None and k not in ("out", "json", "cache", "gridding")
        )
        + "".join(f" --gridding {g}" for g in args.gridding)
    )
    lines = [
        f"## {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC — {n}³, {args.coils} coils, "
        f"{args.groups} groups × {seq.n_tr} TR × {kspace.shape[-1]} samples ({samples:,} samples)",
        "",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}; "
        "CPU shared with other jobs, so timings are noisy",
        f"- command: `{cmd}`",
        f"- phantom {args.phantom}, calibration {args.calibration}³, kernel steps {args.steps}, "
        f"grid ×{base.grid_oversampling}; NUFFT A^H b reference took {t_nufft_adj:.1f} s; "
        f"process peak RSS {peak_total:.0f} MiB",
        "",
        "| variant | kernel training s | gridding s | train peak extra MiB | grid peak extra MiB "
        "| values NRMSE | A^H b NRMSE vs NUFFT | A^H b NRMSE vs exact gridded "
        "| kernel held-out rel. error (no kernel) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kv = (
            f"{r['kernel_val_rel_error']:.3f} ({r['kernel_nearest_rel_error']:.3f})"
            if r["kernel_val_rel_error"] is not None
            else "–"
        )
        lines.append(
            f"| {r['variant']} | {r['kernel_training_s']:.1f} | {r['gridding_s']:.1f} | "
            f"{r['train_peak_extra_MiB']:.0f} | {r['grid_peak_extra_MiB']:.0f} | "
            f"{100 * r['values_nrmse']:.2f} % | {100 * r['ahb_nrmse']:.2f} % | "
            f"{100 * r['ahb_vs_exact_grid_nrmse']:.2f} % | {kv} |"
        )
    lines += [
        f"| exact values at the grid points | – | – | – | – | 0 | {100 * floor:.2f} % | 0 | – |",
        "",
        "'A^H b NRMSE vs NUFFT' compares with the NUFFT adjoint of the raw data; even exact values "
        "at the grid points (last row) differ from it, because moving the samples by up to "
        "1/3 grid unit changes the point-spread function.  'vs exact gridded' compares with the "
        "gridded adjoint of exact values at the same grid points (the gridding error alone).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        prev = args.out.read_text() if args.out.exists() else "# iGROG benchmark results\n"
        args.out.write_text(prev.rstrip("\n") + "\n\n" + text)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
