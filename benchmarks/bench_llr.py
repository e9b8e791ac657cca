"""Benchmark of the classical reconstructions (issue 4): LLR prox and FISTA-LLR, NUFFT vs gridded.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_llr.py prox [--matrix 64]
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_llr.py recon [--matrix 64] [--groups 16]
        [--coils 10] [--iterations 40] [--nufft-iterations N]

``prox``: seconds of one LLR proximal step on ``(5, N, N, N)`` complex64 coefficients with 10³
patches and a random shift, through the 5×5 Gram eigendecomposition and through a batched SVD.

``recon``: FISTA-LLR on the same acquisition with the NUFFT encoding (``llr-nufft``) and with the
gridded encoding (``llr``).  The timing does not depend on the k-space values, so the data are white
noise on the real SPI trajectory (``spurig_core.simulation.trajectory``), with the simulated head
coil maps and a 5-dimensional basis of the default sequence; gridding is nearest-neighbour
(``n_sources = 1``, no kernel) and its time is reported separately.  The NUFFT reconstruction can be
cut short with ``--nufft-iterations`` (and the power iteration to the same count); the per-iteration
time is then extrapolated to the full count and reported as such.  Each phase runs in a fresh
process so that its peak resident memory (``ru_maxrss`` growth) is its own.  The machines are
shared: see the foreign load printed with each result.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from spurig_core.memory import peak_rss_mb


def _load() -> float:
    return os.getloadavg()[0]


def _prox_worker(matrix: int, method: str, repeats: int, q: Any) -> None:
    from spurig_core.recon.llr import llr_prox, random_shift

    g = torch.Generator().manual_seed(0)
    x = torch.randn((5, matrix, matrix, matrix), dtype=torch.complex64, generator=g)
    tau = 0.5 * float(torch.linalg.vector_norm(x)) / (x[0].numel() / 1000) ** 0.5 / 5**0.5
    llr_prox(x, tau, block=10, shift=(1, 2, 3), method=method)  # warm-up
    before = peak_rss_mb()
    times = []
    for _ in range(repeats):
        shift = random_shift(10, g)
        t0 = time.perf_counter()
        llr_prox(x, tau, block=10, shift=shift, method=method)
        times.append(time.perf_counter() - t0)
    q.put(
        {
            "method": method,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "peak_extra_MB": peak_rss_mb() - before,
        }
    )


def _basis(k: int = 5) -> torch.Tensor:
    from spurig_core.physics import simulate_signals

    t1 = np.geomspace(300, 5000, 24)
    t2 = np.geomspace(20, 2500, 24)
    tt1, tt2 = np.meshgrid(t1, t2, indexing="ij")
    ok = tt2 < tt1
    sig = simulate_signals(tt1[ok], tt2[ok], 1.0).to(torch.complex128)
    u = torch.linalg.svd(sig.T, full_matrices=False)[0][:, :k]
    f = torch.fft.fft(torch.eye(k, dtype=torch.complex128), norm="ortho")
    return (u @ f.conj().T).to(torch.complex64)


def _setup(
    matrix: int, groups: int, coils: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from spurig_core.simulation.coils import head_array
    from spurig_core.simulation.trajectory import spi_trajectory

    traj = spi_trajectory(matrix, groups, 500)
    maps = head_array(matrix, coils)
    g = torch.Generator().manual_seed(1)
    ksp = torch.randn((coils, *traj.shape[:3]), dtype=torch.complex64, generator=g)
    return traj, maps, _basis(), ksp


def _recon_worker(
    kind: str, matrix: int, groups: int, coils: int, iterations: int, power: int, q: Any
) -> None:
    from spurig_core.operators.encoding import GriddedSubspaceEncoding, SubspaceNUFFTEncoding
    from spurig_core.operators.igrog import GriddingConfig, grid
    from spurig_core.recon.classical import llr_recon
    from spurig_core.recon.llr import LLRConfig

    traj, maps, basis, ksp = _setup(matrix, groups, coils)
    before = peak_rss_mb()
    load0 = _load()
    t0 = time.perf_counter()
    extra: dict[str, float] = {}
    if kind == "nufft":
        op = SubspaceNUFFTEncoding(traj, maps, basis)
        ahb = op.adjoint(ksp)
        kw: dict[str, Any] = {"b": ksp, "ahb": ahb}
    else:
        cfg = GriddingConfig(learned_kernel=False, n_sources=1)
        tg = time.perf_counter()
        gridded = grid(ksp, traj, (matrix,) * 3, config=cfg)
        extra["gridding_s"] = time.perf_counter() - tg
        tb = time.perf_counter()
        op = GriddedSubspaceEncoding(gridded, maps, basis)
        extra["kernel_build_s"] = time.perf_counter() - tb
        kw = {"ahb": op.adjoint_data(), "b_norm": op.data_norm()}
    t_setup = time.perf_counter() - t0
    cfg_llr = LLRConfig(iterations=iterations, power_iterations=power)
    t1 = time.perf_counter()
    res = llr_recon(op, **kw, threshold=0.05, config=cfg_llr)
    t_llr = time.perf_counter() - t1
    q.put(
        {
            "kind": kind,
            "setup_s": t_setup,
            "llr_s": t_llr,
            "iterations": iterations,
            "power_iterations": power,
            "total_s": t_setup + t_llr,
            "peak_extra_MB": peak_rss_mb() - before,
            "load_before": load0,
            "load_after": _load(),
            "finite": bool(torch.isfinite(res.coefficients).all()),
            **extra,
        }
    )


def _run(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("prox", "recon"))
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--coils", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--power-iterations", type=int, default=30)
    ap.add_argument(
        "--nufft-iterations",
        type=int,
        default=None,
        help="cut the NUFFT run to this many FISTA and power iterations, extrapolate",
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-nufft", action="store_true")
    args = ap.parse_args(argv)
    print(
        f"# torch {torch.__version__}, threads {torch.get_num_threads()}, load {_load():.2f}",
        flush=True,
    )
    if args.what == "prox":
        for method in ("eigh", "svd"):
            r = _run(_prox_worker, args.matrix, method, args.repeats)
            print(json.dumps({"matrix": args.matrix, **r}), flush=True)
        return 0
    g = _run(
        _recon_worker,
        "gridded",
        args.matrix,
        args.groups,
        args.coils,
        args.iterations,
        args.power_iterations,
    )
    print(
        json.dumps({"matrix": args.matrix, "groups": args.groups, "coils": args.coils, **g}),
        flush=True,
    )
    if args.skip_nufft:
        return 0
    n_it = args.nufft_iterations or args.iterations
    n_pw = min(args.power_iterations, n_it) if args.nufft_iterations else args.power_iterations
    n = _run(_recon_worker, "nufft", args.matrix, args.groups, args.coils, n_it, n_pw)
    if args.nufft_iterations:
        per_gram = n["llr_s"] / (n_it + n_pw + 1)  # + 1: the gram of the norm-matching scale
        full = per_gram * (args.iterations + args.power_iterations + 1)
        n["llr_s_extrapolated"] = full
        n["total_s_extrapolated"] = n["setup_s"] + full
    print(
        json.dumps({"matrix": args.matrix, "groups": args.groups, "coils": args.coils, **n}),
        flush=True,
    )
    nt = n.get("total_s_extrapolated", n["total_s"])
    gt = g["total_s"]  # gridding is inside setup_s
    print(f"# speed-up gridded vs NUFFT (total incl. setup/gridding): {nt / gt:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
