r"""Side-by-side cost of one normal-operator application ``A^H A``: NUFFT vs iGROG-gridded.

Run (from the repository root)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_operators.py \
        [--matrix 64] [--coils 10] [--groups 16] [--eps 1e-4 1e-3] [--repeats 3]

Configuration: ``matrix³`` image, ``coils`` coils, the first ``groups`` groups of the SPI trajectory
of :mod:`spurig_core.simulation.trajectory` (500 TRs, ``6·matrix`` samples per arm; a synthetic
spiral-like trajectory if that module is missing), a random orthonormal rank-5 basis, ×1.5
grid.  The gridded samples are the trajectory's nearest grid points (what iGROG outputs; the gram
cost does not depend on the gridded values).  Seconds are wall-clock medians; memory is the peak
resident set during the call minus the resident set before it (sampled every 2 ms), i.e. the working
memory of the call.  Also reports NUFFT accuracy against a direct non-uniform DFT (16³, SPEC §3) for
each ``eps``. The CPU is shared with other jobs: treat absolute seconds as noisy, ratios as the
result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from spurig_core.memory import PeakRSS
from spurig_core.operators.encoding import (
    EncodingConfig,
    GriddedSubspaceEncoding,
    SubspaceNUFFTEncoding,
)
from spurig_core.operators.grid import GriddedData, grid_shape, nearest_grid_index


def measure(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Wall seconds, process CPU seconds and peak extra MiB of one call of ``fn``."""
    with PeakRSS(0.002) as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    del out
    return dt, dc, mem.extra


def trajectory(matrix: int, groups: int, tr: int) -> tuple[torch.Tensor, str]:
    try:
        from spurig_core.simulation.trajectory import spi_trajectory
    except ImportError:
        pass
    else:
        name = "spurig_core.simulation.trajectory.spi_trajectory"
        return spi_trajectory(matrix, groups, tr), name
    samples = 6 * matrix  # synthetic: 2-turn spiral arms on golden-angle rotated planes
    s = torch.linspace(0, 1, samples)
    arm = torch.stack(
        [s * torch.cos(4 * math.pi * s), s * torch.sin(4 * math.pi * s), torch.zeros_like(s)], -1
    ) * (matrix / 2 - 0.5)
    out = torch.empty(groups, tr, samples, 3)
    g = torch.Generator().manual_seed(0)
    for gi in range(groups):
        for t in range(tr):
            q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
            out[gi, t] = arm @ q.T
    return out, "synthetic spiral"


def smooth_maps(matrix: int, coils: int) -> torch.Tensor:
    r = torch.stack(torch.meshgrid(*[torch.arange(matrix) - matrix // 2] * 3, indexing="ij"), -1)
    maps = []
    for c in range(coils):
        th = 2 * math.pi * c / coils
        centre = torch.tensor([0.7 * matrix * math.cos(th), 0.7 * matrix * math.sin(th), 0.0])
        mag = torch.exp(-((r - centre) ** 2).sum(-1) / (2 * (0.6 * matrix) ** 2))
        maps.append(mag * torch.exp(1j * (r[..., 0] * 0.05 * c + c)))
    m = torch.stack(maps).to(torch.complex64)
    return m / (m.abs() ** 2).sum(0).sqrt()


def nufft_accuracy(eps_list: list[float]) -> dict[str, float]:
    """Relative error of the NUFFT encoding vs a direct non-uniform DFT (16³, 1 coil, 2 TR)."""
    rng = np.random.default_rng(0)
    n = 16
    k = rng.uniform(-n / 2, n / 2, (1, 2, 400, 3)).astype(np.float32)
    alpha = rng.standard_normal((2, n, n, n)) + 1j * rng.standard_normal((2, n, n, n))
    basis = np.eye(2, dtype=np.complex64)
    pos = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij"), -1).reshape(-1, 3)
    ref = np.zeros((1, 1, 2, 400), dtype=np.complex128)
    for t in range(2):
        ph = np.exp(-2j * np.pi * (k[0, t].astype(np.float64) / n) @ pos.T)
        ref[0, 0, t] = ph @ alpha[t].reshape(-1)
    out = {}
    for eps in eps_list:
        op = SubspaceNUFFTEncoding(
            torch.from_numpy(k),
            torch.ones(1, n, n, n, dtype=torch.complex64),
            torch.from_numpy(basis),
            eps=eps,
        )
        y = op(torch.from_numpy(alpha.astype(np.complex64))).numpy()
        out[f"{eps:g}"] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--matrix", type=int, default=64)
    p.add_argument("--coils", type=int, default=10)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--tr", type=int, default=500)
    p.add_argument("--basis", type=int, default=5)
    p.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nufft-repeats", type=int, default=1)
    p.add_argument("--skip-nufft", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch and finufft threads")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    info: dict[str, object] = {
        "torch_threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": os.getloadavg(),
    }
    traj, source = trajectory(a.matrix, a.groups, a.tr)
    info.update(
        matrix=a.matrix,
        coils=a.coils,
        groups=a.groups,
        tr=a.tr,
        basis=a.basis,
        samples=int(traj.shape[2]),
        points=int(traj[..., 0].numel()),
        trajectory=source,
    )
    matrix = (a.matrix,) * 3
    maps = smooth_maps(a.matrix, a.coils)
    q, _ = torch.linalg.qr(torch.randn(a.tr, a.basis, dtype=torch.complex64))
    basis = q.contiguous()
    x = torch.randn(a.basis, *matrix, dtype=torch.complex64)
    rows: list[dict[str, object]] = []

    grid = grid_shape(matrix, 1.5)
    index, _ = nearest_grid_index(traj, matrix, grid)
    values = torch.zeros((a.coils, *index.shape), dtype=torch.complex64)
    gd = GriddedData(values, index, grid, matrix)
    info["grid"] = grid
    results: dict[object, torch.Tensor] = {}
    for sparse in (False, True):
        name = f"gridded ({'sparse' if sparse else 'dense'} K)"
        cfg = EncodingConfig(sparse=sparse)
        t_build, _, m_build = measure(
            lambda cfg=cfg: GriddedSubspaceEncoding(gd, maps, basis, config=cfg)
        )
        op = GriddedSubspaceEncoding(gd, maps, basis, config=cfg)
        info["sampled_fraction"] = op.sampled_fraction
        t_first, _, m_first = measure(lambda op=op: op.gram(x))
        ts, cs, ms = [], [], []
        for _ in range(a.repeats):
            t, c, m = measure(lambda op=op: op.gram(x))
            ts.append(t)
            cs.append(c)
            ms.append(m)
        results[name] = op.gram(x)
        rows.append(
            {
                "op": name,
                "setup_s": t_build,
                "setup_MiB": m_build,
                "first_s": t_first,
                "first_MiB": m_first,
                "gram_s": statistics.median(ts),
                "gram_min_s": min(ts),
                "gram_cpu_s": statistics.median(cs),
                "gram_MiB": max(ms),
                "kernel_MiB": op._kernel.numel() * 8 / 2**20,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del op

    if not a.skip_nufft:
        for eps in a.eps:
            name = f"NUFFT eps={eps:g}"
            t_build, _, m_build = measure(
                lambda eps=eps: SubspaceNUFFTEncoding(traj, maps, basis, eps=eps)
            )
            op = SubspaceNUFFTEncoding(traj, maps, basis, eps=eps, nthreads=a.threads)
            ts, cs, ms = [], [], []
            for _ in range(a.nufft_repeats):
                t, c, m = measure(lambda op=op, eps=eps: results.__setitem__(eps, op.gram(x)))
                ts.append(t)
                cs.append(c)
                ms.append(m)
            results.setdefault("ref", results[eps])
            rows.append(
                {
                    "op": name,
                    "setup_s": t_build,
                    "setup_MiB": m_build,
                    "gram_s": statistics.median(ts),
                    "gram_min_s": min(ts),
                    "gram_cpu_s": statistics.median(cs),
                    "gram_MiB": max(ms),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            del op
        grid = [r for r in rows if str(r["op"]).startswith("gridded")]
        grid_s = min(float(r["gram_s"]) for r in grid)  # type: ignore[arg-type]
        grid_c = min(float(r["gram_cpu_s"]) for r in grid)  # type: ignore[arg-type]
        for r in rows:
            if str(r["op"]).startswith("NUFFT"):
                r["wall_ratio_vs_gridded"] = float(r["gram_s"]) / grid_s  # type: ignore[arg-type]
                r["cpu_ratio_vs_gridded"] = float(r["gram_cpu_s"]) / grid_c  # type: ignore[arg-type]
        # The gridded gram is a different operator (samples moved to the grid): report how far
        # its output is from the NUFFT gram's, for scale only (iGROG accuracy is tested elsewhere).
        if "ref" in results:
            g = results["gridded (dense K)"]
            info["rel_diff_gridded_vs_nufft_gram"] = float(
                torch.linalg.vector_norm(g - results["ref"])
                / torch.linalg.vector_norm(results["ref"])
            )
    info["nufft_rel_error_vs_direct_dft_16cubed"] = nufft_accuracy([1e-3, 1e-4, 1e-6])
    info["loadavg_end"] = os.getloadavg()
    print(json.dumps({"info": info, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
