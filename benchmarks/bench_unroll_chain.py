r"""Per-step PSNR of a model's unroll and of one denoiser pass on the DC-only states (issue 13).

For each step ``i``: the DC-only state ``x_i`` (identity denoiser, the model's DC), the model's
denoiser applied once to it, ``f(x_i)``, and the model's own unroll (DC half-step and output).  A
denoiser that gains on training subjects and loses on held-out ones has memorised them.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_unroll_chain.py MODEL.pt \
        data/prepared48v2/val/subj019 [--duration 2min]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from spurig_core.metrics import coefficient_metrics
from spurig_core.recon.unrolled import estimate_lipschitz
from spurig_core.recon.unrolled_io import load_model
from spurig_core.training.datasets import load_example
from spurig_core.training.steps import amp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("subject")
    p.add_argument("--duration", default="2min")
    a = p.parse_args()
    m, _ = load_model(a.model)
    ex = load_example(a.subject, durations=[a.duration])
    dc = ex.dc[a.duration]
    op = dc.build_operator()

    def mpsnr(x: torch.Tensor) -> float:
        return float(np.mean(coefficient_metrics(x, ex.target, ex.tissue)["psnr"]))

    print("| step | DC-only x_i | f(x_i) | unroll DC half-step | unroll output |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        lip = estimate_lipschitz(op, dc.ahb, iters=m.cfg.power_iters)
        x, b = dc.x0, dc.x0
        for i in range(m.cfg.steps):
            x = m.dc_half(op, dc.ahb, x, i, lip)
            half = m.dc_half(op, dc.ahb, b, i, lip)
            with amp(True, x.device):
                fx = m.denoiser(i)(x, i + 1)
                b = m.denoiser(i)(half, i + 1)
            print(
                f"| {i + 1} | {mpsnr(x):.2f} | {mpsnr(fx):.2f} | {mpsnr(half):.2f} | "
                f"{mpsnr(b):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
