r"""What each step of a trained unrolled model does, per tissue class (issue 5).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_denoiser_steps.py MODEL.pt SUBJECT_DIR \
        [--duration 2min] [--json OUT.json]

``SUBJECT_DIR`` is a prepared subject (``spurig prepare-training``: ``example.pt`` and
``dc-<duration>.pt``, prepared with the model's data term).  From the model's initialisation
``α_0 = s·A^H b`` the script runs the model's steps one at a time and, after each gradient (DC)
half-step and after each denoiser, prints the mean PSNR over c1–c5 (SPEC §5 metric against the
subject's target coefficients) and the mean L1 per voxel (real + imaginary parts, averaged over the
coefficients) inside each tissue class (0 background, 1 CSF, 2 GM, 3 WM, 4 other).  A denoiser that
has learned nothing leaves both unchanged; the difference between the ``dc`` and ``denoiser`` rows
of a step is that step's learned contribution.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from spurig_core.metrics import coefficient_metrics
from spurig_core.recon.unrolled import estimate_lipschitz
from spurig_core.recon.unrolled_io import load_model
from spurig_core.training.datasets import load_example

TISSUES = ("background", "CSF", "GM", "WM", "other")


def row(alpha: torch.Tensor, target: torch.Tensor, tissue: torch.Tensor) -> dict[str, float]:
    """Mean PSNR c1–c5 (dB) and the L1 per voxel of each tissue class."""
    l1 = torch.view_as_real(alpha - target).abs().sum(-1)  # (basis, x, y, z)
    t = tissue.long()
    out = {"psnr": float(np.mean(coefficient_metrics(alpha, target, tissue)["psnr"]))}
    for k, name in enumerate(TISSUES):
        out[name] = float(l1[:, t == k].mean()) if bool((t == k).any()) else float("nan")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("subject")
    p.add_argument("--duration", default="2min")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    net, _meta = load_model(a.model)
    ex = load_example(a.subject, durations=[a.duration])
    dc = ex.dc[a.duration]
    op = dc.build_operator()
    rows: list[dict[str, object]] = []
    with torch.no_grad():
        lip = estimate_lipschitz(op, dc.ahb, iters=net.cfg.power_iters)
        alpha = dc.x0
        rows.append({"step": 0, "state": "x0", **row(alpha, ex.target, ex.tissue)})
        for i in range(net.cfg.steps):
            half = net.dc_half(op, dc.ahb, alpha, i, lip)
            rows.append({"step": i + 1, "state": "dc", **row(half, ex.target, ex.tissue)})
            alpha = net.denoiser(i)(half, i + 1)
            rows.append({"step": i + 1, "state": "denoiser", **row(alpha, ex.target, ex.tissue)})
    print("| step | state | PSNR c1–c5 (dB) | " + " | ".join(f"L1 {t}" for t in TISSUES) + " |")
    print("|---|---|---|" + "---|" * len(TISSUES))
    for r in rows:
        vals = " | ".join(f"{float(r[t]):.4f}" for t in TISSUES)  # type: ignore[arg-type]
        print(f"| {r['step']} | {r['state']} | {float(r['psnr']):.2f} | {vals} |")  # type: ignore[arg-type]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"model": a.model, "subject": a.subject, "duration": a.duration, "rows": rows}, f
            )


if __name__ == "__main__":
    main()
