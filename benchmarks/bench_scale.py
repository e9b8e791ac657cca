"""Scaling out on this machine (issue 16; results in ``benchmarks/RESULTS-scale.md``).

Measures training samples/s with 1 and 2 processes and cohort recon with 1 and 2 dask workers.

Training: a prepared cohort of ``--subjects`` training subjects at ``--n``³ with a real gridded data
term (random k-space locations, as in ``tests/test_distributed.py``), the GLEAM stage (batch 1,
accumulation 4) and the pretraining stage (batch 8), each run by ``spurig train`` as one process
and by ``torchrun --nproc-per-node 2`` (gloo).  samples/s = samples seen / the epochs' wall time
(``loss.csv``: the time after start-up).  Cohort: ``--scans`` simulated scans at ``--n``³,
``spurig recon-cohort`` with ``--workers 1`` and ``--workers 2`` (wall time of the command,
start-up included).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --n 24 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spurig_core.config import dump_toml
from spurig_core.data import FispSequence
from spurig_core.operators.encoding import GriddedSubspaceEncoding
from spurig_core.operators.grid import GriddedData, grid_shape
from spurig_core.recon.networks import UNetConfig
from spurig_core.recon.unrolled import UnrollConfig, estimate_lipschitz, scaled_init
from spurig_core.training.datasets import DCData, Example, save_example
from spurig_core.training.stages import GleamConfig, PretrainConfig

TR, COILS = 6, 2


def example(n: int, seed: int) -> Example:
    """Return a prepared subject at ``n``³ with a gridded data term on random k-space locations."""
    g = torch.Generator().manual_seed(seed)
    matrix = (n, n, n)
    grid = grid_shape(matrix, 1.5)
    samples = n**3 // 8
    index = torch.randint(0, int(np.prod(grid)), (2, TR, samples), generator=g)
    maps = torch.randn(COILS, *matrix, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().pow(2).sum(0).sqrt()
    phi, _ = torch.linalg.qr(torch.randn(TR, 5, dtype=torch.complex64, generator=g))
    ax = torch.linspace(-1, 1, n)
    r2 = sum(t**2 for t in torch.meshgrid(ax, ax, ax, indexing="ij"))
    tissue = torch.where(r2 < 0.6, torch.where(r2 < 0.2, 3, 2), torch.where(r2 < 0.8, 1, 0))
    truth = (tissue > 0) * torch.randn(5, 1, 1, 1, dtype=torch.complex64, generator=g)
    zeros = torch.zeros(COILS, 2, TR, samples, dtype=torch.complex64)
    values = GriddedSubspaceEncoding(GriddedData(zeros, index, grid, matrix), maps, phi)(truth)
    op = GriddedSubspaceEncoding(GriddedData(values, index, grid, matrix), maps, phi)
    ahb = op.adjoint_data()
    x0, s = scaled_init(op, ahb, op.data_norm())
    payload = {
        "type": "gridded-subspace",
        "coil_maps": maps,
        "basis": phi,
        "index": index.to(torch.int32),
        "grid": [int(v) for v in grid],
        "matrix": list(matrix),
        "encoding": {"density_compensation": 0.0},
    }
    dc = DCData(ahb, op.data_norm(), s, estimate_lipschitz(op, ahb, iters=10), payload)
    noisy = {
        k: truth + lvl * torch.randn(truth.shape, dtype=torch.complex64, generator=g)
        for k, lvl in (("llr-30s", 0.4), ("llr-1min", 0.3), ("llr-2min", 0.15))
    }
    inputs = {"adjoint-1min": x0, **noisy}
    seq = FispSequence(np.linspace(5, 60, TR).astype(np.float32))
    return Example(f"s{seed}", truth, tissue.to(torch.uint8), phi, seq, inputs, {"1min": dc})


def _run(cmd: list[str], threads: int | None = 1) -> float:
    """Run ``cmd`` with ``OMP_NUM_THREADS=threads`` (unset: ``None``); return its CPU seconds.

    The CPU seconds are the user + system time that ``cmd`` and its children used.
    """
    import resource

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _train(cfg_path: Path, stage: str, procs: int) -> tuple[float, float]:
    """samples/s over the epochs' wall time, and CPU seconds per sample of the whole command."""
    cli = ["-m", "spurig_core.cli", "-q", "train", "--stage", stage, "--config", str(cfg_path)]
    if procs == 1:
        cmd = [sys.executable, *cli]
    else:
        run = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
        cmd = [sys.executable, *run, *cli]
    cpu = _run(cmd)
    rows = list(csv.DictReader(open(Path(cfg_path).with_suffix("") / "loss.csv")))
    samples = int(rows[-1]["samples"])
    return samples / sum(float(r["time_s"]) for r in rows), cpu / samples


def training(root: Path, n: int, subjects: int, epochs: int, repeats: int) -> list[str]:
    data = root / "data"
    for k in range(subjects):
        save_example(example(n, k), data / "train" / f"s{k}")
    save_example(example(n, 99), data / "val" / "s99")
    model = UnrollConfig(steps=3, network=UNetConfig(base_width=8))
    stages = {
        "pretrain": lambda out: PretrainConfig(
            data_dir=str(data),
            out_dir=out,
            model=model,
            epochs=epochs,
            batch_size=8,
            crop=min(n, 16),
            steps_per_epoch=2,
            seed=1,
        ),
        "gleam": lambda out: GleamConfig(
            data_dir=str(data),
            out_dir=out,
            model=model,
            epochs=epochs,
            accumulation=4,
            ssim_slices=4,
            seed=1,
        ),
    }
    lines = []
    for stage, make in stages.items():
        rate = {1: 0.0, 2: 0.0}
        cpu = {1: float("inf"), 2: float("inf")}
        for rep in range(repeats):  # alternate 1 and 2 processes; best of each (shared machine)
            for procs in (1, 2):
                cfg = root / f"{stage}-{procs}-{rep}.toml"
                cfg.write_text(dump_toml(make(str(cfg.with_suffix("")))))
                r, c = _train(cfg, stage, procs)
                rate[procs], cpu[procs] = max(rate[procs], r), min(cpu[procs], c)
        lines.append(
            f"| {stage} | {n}³ | {rate[1]:.3f} | {rate[2]:.3f} | {rate[2] / rate[1]:.2f}× "
            f"| {cpu[1]:.2f} | {cpu[2]:.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


def cohort(root: Path, n: int, scans: int, repeats: int) -> list[str]:
    from spurig_core.simulation import simulate

    for k in range(scans):
        simulate(root / "scans" / f"subj{k}.h5", matrix=n, coils=4, groups=4, seed=50 + k)
    fast = root / "fast.toml"
    fast.write_text("[gridding]\nsteps = 150\ntrain_sets = 256\n[llr]\niterations = 10\n")
    lines: list[str] = []
    wall = {1: float("inf"), 2: float("inf")}
    cpu = {1: float("inf"), 2: float("inf")}
    for rep in range(repeats):  # alternate 1 and 2 workers; best of each (shared machine)
        for workers in (1, 2):
            cmd = [
                sys.executable,
                "-m",
                "spurig_core.cli",
                "-q",
                "recon-cohort",
                str(root / "scans"),
                str(root / f"out-{workers}-{rep}"),
                "--methods",
                "llr,adjoint",
                "--durations",
                "30s",
                "--config",
                str(fast),
                "--workers",
                str(workers),
            ]
            t0 = time.perf_counter()
            used = _run(cmd, threads=None)  # each worker: cores // workers threads
            cpu[workers] = min(cpu[workers], used)
            wall[workers] = min(wall[workers], time.perf_counter() - t0)
    lines.append(
        f"| recon-cohort llr+adjoint 30s | {scans} × {n}³ | {wall[1]:.1f} s | {wall[2]:.1f} s "
        f"| {wall[1] / wall[2]:.2f}× | {cpu[1]:.0f} s | {cpu[2]:.0f} s |"
    )
    print(lines[-1], flush=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip", default="", help="training or cohort")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    if args.skip != "training":
        print(
            "| stage | volume | samples/s, 1 process | samples/s, 2 processes | speed-up "
            "| CPU s/sample, 1 | CPU s/sample, 2 |"
        )
        training(args.out / "train", args.n, args.subjects, args.epochs, args.repeats)
    if args.skip != "cohort":
        print("| job | cohort | 1 worker | 2 workers | speed-up | CPU s, 1 | CPU s, 2 |")
        cohort(args.out / "cohort", args.n, args.scans, args.repeats)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
