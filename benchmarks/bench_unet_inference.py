"""UNet inference options for SPUR-iG on the CPU (issue #14): time and PSNR, side by side.

One scan is gridded once (iGROG with a given kernel, or the nearest-neighbour move) and the shipped
model reconstructs it with each option, interleaved over ``--repeats`` rounds in one process:

* ``fp32``: the shipped path;
* ``bf16``: the whole reconstruction under ``torch.autocast("cpu", torch.bfloat16)`` (the
  :class:`~spurig_core.recon.networks.Denoiser` keeps its whitening in float32; the DC grams have
  no autocast ops and stay complex64);
* ``channels_last``: the network's weights in ``torch.channels_last_3d`` memory format (set by a
  forward pre-hook on the model that :func:`~spurig_core.pipeline.reconstruct` loads);
* ``bf16+channels_last``.

Per option: median reconstruction seconds, median denoiser seconds (all UNet passes, from
:class:`spurig_core.benchmark.StageClock`), mean PSNR c1–c5 against the scan's ground truth, and
the coefficient NRMSE against ``fp32``.  ``torch.compile`` is not in the table: on this 2-core
machine its compile time (minutes) exceeds what it could save per reconstruction.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_unet_inference.py --scan scan.h5 \
        --groups 16 --kernel kernel.pt --repeats 2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from spurig_core.benchmark import StageClock
from spurig_core.io import load_scan
from spurig_core.metrics import evaluate
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.operators.igrog_kernel import IGROGKernel
from spurig_core.pipeline import reconstruct
from spurig_core.recon.networks import Denoiser

OPTIONS = ("fp32", "bf16", "channels_last", "bf16+channels_last")


def _channels_last(module: torch.nn.Module, _args: object) -> None:
    """Forward pre-hook: a denoiser's weights in channels-last 3D format (once per model)."""
    if isinstance(module, Denoiser) and not getattr(module, "_channels_last", False):
        module.to(memory_format=torch.channels_last_3d)
        module._channels_last = True  # type: ignore[assignment]


def _nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan", type=Path, required=True)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--kernel", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    scan = load_scan(args.scan).first_groups(args.groups)
    if args.kernel is not None:
        kernel = IGROGKernel.from_checkpoint(torch.load(args.kernel, weights_only=True))
        cfg = GriddingConfig(check=False)
    else:
        kernel, cfg = None, GriddingConfig(n_sources=1, learned_kernel=False, check=False)
    gd = grid(scan.kspace, scan.trajectory, scan.matrix, kernel=kernel, config=cfg)
    results: dict[str, dict] = {o: {"recon_s": [], "denoiser_s": []} for o in OPTIONS}
    coeffs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for opt in OPTIONS:
            with contextlib.ExitStack() as stack:
                if "bf16" in opt:
                    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
                if "channels_last" in opt:
                    hook = register_module_forward_pre_hook(_channels_last)
                    stack.callback(hook.remove)
                clock = stack.enter_context(StageClock())
                t0 = time.perf_counter()
                res = reconstruct(scan, method="spurig", groups=args.groups, gridded=gd)
                results[opt]["recon_s"].append(time.perf_counter() - t0)
            results[opt]["denoiser_s"].append(clock.seconds["denoiser"])
            coeffs[opt] = res.coefficients
            if "psnr" not in results[opt]:
                m = evaluate(res, scan, per_voxel=False)
                results[opt]["psnr"] = float(sum(m["psnr"]) / len(m["psnr"]))
    rows = []
    for opt, r in results.items():
        rows.append(
            {
                "option": opt,
                "recon_s": sorted(r["recon_s"])[len(r["recon_s"]) // 2],
                "denoiser_s": sorted(r["denoiser_s"])[len(r["denoiser_s"]) // 2],
                "psnr": r["psnr"],
                "nrmse_vs_fp32": _nrmse(coeffs[opt], coeffs["fp32"]),
                "all_recon_s": r["recon_s"],
                "all_denoiser_s": r["denoiser_s"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"scan": str(args.scan), "groups": args.groups, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
