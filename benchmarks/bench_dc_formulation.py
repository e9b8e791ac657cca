r"""Noise-free ceiling and noise gain of the unroll's DC formulations (issue 13).

With an identity denoiser the unroll is linear in ``A^H b``, so a subject prepared with
``tools/prepare_redraw.py`` (clean ``A^H b`` and its noise kept apart) gives both numbers from two
runs of the same map: the noise-free ceiling (mean PSNR c1–c5 of the map applied to the clean
``A^H b``) and the noise gain (RMS of the map applied to the noise alone over the RMS of that noise
in the initialisation ``s·A^H b``); the noisy result is their sum.  ``s`` and ``L`` are those of the
noisy scan, as at inference.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dc_formulation.py \
        data/prepared48v2/test/subj020 --duration 2min
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from spurig_core.metrics import coefficient_metrics
from spurig_core.recon.dc import cg_dc, gradient_dc
from spurig_core.recon.unrolled import estimate_lipschitz
from spurig_core.training.datasets import load_example
from spurig_core.training.redraw import load_noise

#: (name, kind, blocks, per block, λ/L)
OPTIONS = [
    ("gradient, 1 step/block (shipped)", "gradient", 6, 1, 0.0),
    ("gradient, 2 steps/block", "gradient", 6, 2, 0.0),
    ("gradient, 3 steps/block", "gradient", 6, 3, 0.0),
    ("CG-DC, 2 it./block, λ = 0.05 L", "cg", 6, 2, 0.05),
    ("CG-DC, 2 it./block, λ = 0.2 L", "cg", 6, 2, 0.2),
    ("CG-DC, 3 it./block, λ = 0.1 L", "cg", 6, 3, 0.1),
    ("CG-DC, 5 it./block, λ = 0.1 L", "cg", 6, 5, 0.1),
    ("CG-DC, 5 it./block, λ = 0.5 L", "cg", 6, 5, 0.5),
]


def run_map(op, ahb, x0, kind, blocks, per, lam, lip):  # type: ignore[no-untyped-def]
    """Return the identity-denoiser unroll (linear in ``ahb`` and ``x0`` together)."""
    a = x0
    for _ in range(blocks):
        if kind == "cg":
            a = cg_dc(op, ahb, a, lam * lip, per)
        else:
            a = gradient_dc(op, ahb, a, 1.0 / lip, per)
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("subject")
    p.add_argument("--duration", default="2min")
    a = p.parse_args()
    ex = load_example(a.subject, durations=[a.duration])
    dc = ex.dc[a.duration]
    nz = load_noise(a.subject, a.duration)
    op = dc.build_operator()
    with torch.no_grad():
        lip = estimate_lipschitz(op, dc.ahb, iters=8)
        s = dc.scale
        noise = nz.draws[0]
        n_in = float(torch.linalg.vector_norm(s * noise))

        def mpsnr(x: torch.Tensor) -> float:
            return float(np.mean(coefficient_metrics(x, ex.target, ex.tissue)["psnr"]))

        print(json.dumps({"x0 noisy": mpsnr(s * dc.ahb), "x0 clean": mpsnr(s * nz.clean)}))
        print("| DC formulation | grams | noise-free PSNR (dB) | noisy PSNR (dB) | noise gain |")
        print("|---|---|---|---|---|")
        for name, kind, blocks, per, lam in OPTIONS:
            t0 = time.perf_counter()
            clean = run_map(op, nz.clean, s * nz.clean, kind, blocks, per, lam, lip)
            nout = run_map(op, noise, s * noise, kind, blocks, per, lam, lip)
            gain = float(torch.linalg.vector_norm(nout)) / n_in
            grams = blocks * (per + (1 if kind == "cg" else 0))
            print(
                f"| {name} | {grams} | {mpsnr(clean):.2f} | {mpsnr(clean + nout):.2f} | "
                f"{gain:.2f} |  <!-- {time.perf_counter() - t0:.0f} s -->",
                flush=True,
            )


if __name__ == "__main__":
    main()
