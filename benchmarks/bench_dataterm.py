r"""How fast the gridded data term converges, per density-compensation exponent γ (issue 5).

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_dataterm.py SCAN.h5 GRIDDED.pt \
        [--gammas 0.5,0.65,0.75,0.85,1.0] [--groups 16] [--steps 20] [--cg 12]

For each γ, on one simulated scan already gridded (``GRIDDED.pt`` as cached by
``tools/evaluate_models.py``), from the unrolled network's initialisation ``α_0 = s·A^H b``: the
mean PSNR over c1–c5 (SPEC §5 metric, against the reference coefficients) after 3, 6, 10, 20
gradient steps of ``1/L`` (what the unrolled network does with an identity denoiser) and after
each of the first conjugate-gradient iterations on the normal equations.  This is the
measurement behind the data term of the shipped SPUR-iG models (γ = 0.75,
benchmarks/RESULTS-models.md).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from spurig_core import load_scan
from spurig_core.benchmark import load_gridded
from spurig_core.metrics import coefficient_metrics
from spurig_core.operators.encoding import (
    EncodingConfig,
    GriddedSubspaceEncoding,
    adjoint_scale,
)
from spurig_core.pipeline import reference_coefficients
from spurig_core.recon.data_term import scan_basis as _scan_basis


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan")
    p.add_argument("gridded")
    p.add_argument("--gammas", default="0.5,0.65,0.75,0.85,1.0")
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cg", type=int, default=12)
    a = p.parse_args()
    scan = load_scan(a.scan)
    assert scan.reference is not None, "needs a simulated scan with reference/"
    g, _ = load_gridded(a.gridded)
    g = g.first_groups(a.groups)
    ref = reference_coefficients(scan)
    tissue = scan.reference.tissue

    def psnr(x: torch.Tensor) -> float:
        return round(float(np.mean(coefficient_metrics(x, ref, tissue)["psnr"])), 2)

    basis = _scan_basis(scan, torch.device("cpu"))
    for gamma in (float(v) for v in a.gammas.split(",")):
        cfg = EncodingConfig(density_compensation=gamma)
        op = GriddedSubspaceEncoding(g, scan.coil_maps, basis, config=cfg)
        ahb = op.adjoint_data()
        x0 = adjoint_scale(op, op.data_values(), ahb=ahb) * ahb
        lip = op.opnorm(iters=20) ** 2  # ‖A^H A‖ = ‖A‖²
        x, gd = x0.clone(), {0: psnr(x0)}
        for i in range(1, a.steps + 1):
            x = x - (op.gram(x) - ahb) / lip
            if i in (3, 6, 10, 20, a.steps):
                gd[i] = psnr(x)
        x = x0.clone()
        r = ahb - op.gram(x)
        d = r.clone()
        rs = float((r.conj() * r).sum().real)
        cg = []
        for _ in range(a.cg):
            ad = op.gram(d)
            step = rs / float((d.conj() * ad).sum().real)
            x, r = x + step * d, r - step * ad
            rn = float((r.conj() * r).sum().real)
            d, rs = r + (rn / rs) * d, rn
            cg.append(psnr(x))
        print(json.dumps({"gamma": gamma, "gradient_steps": gd, "cg": cg}), flush=True)


if __name__ == "__main__":
    main()
