"""UNet inference paths on the CPU (issue #14): bf16 autocast, channels-last 3D, torch.compile.

The shipped ``spurig-2min`` denoiser is run on the scan's own initialisation ``s·A^H b`` (gridded
once, nearest-neighbour or with a given iGROG cache) with each path, interleaved over ``--repeats``
rounds in one process:

* ``fp32``: no autocast;
* ``bf16``: ``torch.autocast("cpu", torch.bfloat16)`` (what ``pipeline.reconstruct`` does now);
* ``bf16+cl``: bf16 with the weights and the UNet input in ``torch.channels_last_3d``;
* ``bf16+compile``: bf16 with ``torch.compile`` (inductor) of the UNet; its first call (the
  compile) is timed separately.

Per path: median seconds of one UNet pass, then one full ``reconstruct(method="spurig")`` per path
(the path applied by a forward pre-hook on the loaded denoiser) for the mean PSNR c1–c5 against
the scan's ground truth and the coefficient NRMSE against ``fp32``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_unet_paths.py --scan scan.h5 \
        [--gridded gridded.pt] [--groups 16] [--repeats 3] [--paths fp32,bf16,...] [--json out]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from spurig_core.benchmark import load_gridded
from spurig_core.io import load_scan
from spurig_core.metrics import evaluate
from spurig_core.operators.encoding import GriddedSubspaceEncoding
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.pipeline import reconstruct
from spurig_core.recon.networks import Denoiser
from spurig_core.recon.trained import load_method_model
from spurig_core.recon.unrolled import scaled_init

PATHS = ("fp32", "bf16", "bf16+cl", "bf16+compile")


def _prepare(unet: torch.nn.Module, path: str) -> Any:
    """Return the callable UNet of ``path`` (weights converted in place for channels-last)."""
    if "cl" in path.split("+"):
        unet.to(memory_format=torch.channels_last_3d)
    if path.endswith("compile"):
        return torch.compile(unet)
    return unet


def _ctx(path: str) -> Any:
    if path.startswith("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan", type=Path, required=True)
    ap.add_argument("--gridded", type=Path, default=None)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    paths = tuple(args.paths.split(","))
    scan = load_scan(args.scan).first_groups(args.groups)
    if args.gridded is not None:
        gd = load_gridded(args.gridded)[0].first_groups(args.groups)
    else:
        cfg = GriddingConfig(n_sources=1, learned_kernel=False, check=False)
        gd = grid(scan.kspace, scan.trajectory, scan.matrix, config=cfg)
    from spurig_core.recon.data_term import scan_basis

    basis = scan_basis(scan, torch.device("cpu"))
    loaded = load_method_model(None, method="spurig", duration="2min", basis=basis)
    net = loaded.network.eval()
    op = GriddedSubspaceEncoding(gd, scan.coil_maps, basis)
    x0, _ = scaled_init(op, op.adjoint_data(), op.data_norm())
    den: Denoiser = net.denoiser(0)
    # the UNet's input: the whitened channels of x0 (what Denoiser.forward feeds it)
    from spurig_core.recon.networks import complex_to_channels, whiten, whitening_stats

    x = complex_to_channels(x0[None])
    mean, w, _ = whitening_stats(x)
    z = whiten(x, mean, w)
    idx = torch.ones(1)
    out: dict[str, dict[str, Any]] = {p: {"pass_s": []} for p in paths}
    unets: dict[str, Any] = {}
    for p in paths:
        copy = type(den.unet)(den.cfg)
        copy.load_state_dict(den.unet.state_dict())
        copy.eval()
        unets[p] = _prepare(copy, p)
        zin = z.contiguous(memory_format=torch.channels_last_3d) if "cl" in p else z
        t0 = time.perf_counter()
        with torch.no_grad(), _ctx(p):
            unets[p](zin, idx)
        out[p]["first_call_s"] = time.perf_counter() - t0
    ref = None
    for _ in range(args.repeats):
        for p in paths:
            zin = z.contiguous(memory_format=torch.channels_last_3d) if "cl" in p else z
            t0 = time.perf_counter()
            with torch.no_grad(), _ctx(p):
                y = unets[p](zin, idx)
            out[p]["pass_s"].append(time.perf_counter() - t0)
            if p == "fp32":
                ref = y.float()
            elif ref is not None:
                out[p]["unet_nrmse_vs_fp32"] = float(
                    torch.linalg.vector_norm(y.float() - ref) / torch.linalg.vector_norm(ref)
                )
    coeffs: dict[str, torch.Tensor] = {}
    for p in paths:
        hook = register_module_forward_pre_hook(_swap_hook(unets[p]))
        try:
            # the pipeline applies bf16 autocast around the method itself
            with _no_autocast() if p == "fp32" else contextlib.nullcontext():
                t0 = time.perf_counter()
                res = reconstruct(scan, method="spurig", groups=args.groups, gridded=gd)
                out[p]["recon_s"] = time.perf_counter() - t0
        finally:
            hook.remove()
        m = evaluate(res, scan, per_voxel=False)
        out[p]["psnr"] = float(sum(m["psnr"]) / len(m["psnr"]))
        coeffs[p] = res.coefficients
    for p in paths:
        r = out[p]
        r["pass_median_s"] = sorted(r["pass_s"])[len(r["pass_s"]) // 2]
        if "fp32" in coeffs:
            d = coeffs[p] - coeffs["fp32"]
            r["nrmse_vs_fp32"] = float(
                torch.linalg.vector_norm(d) / torch.linalg.vector_norm(coeffs["fp32"])
            )
        print(json.dumps({"path": p, **r}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"scan": str(args.scan), "paths": out}, indent=1))


def _swap_hook(unet: Any) -> Any:
    """Forward pre-hook: the loaded denoiser runs ``unet`` (the path's) instead of its own."""

    def hook(module: torch.nn.Module, _args: object) -> None:
        if isinstance(module, Denoiser) and module.unet is not unet:
            module.unet = unet

    return hook


@contextlib.contextmanager
def _no_autocast() -> Any:
    """``pipeline.reconstruct`` without its bf16 autocast (the fp32 path)."""
    import spurig_core.recon.inference as inf

    orig = inf.network_autocast
    inf.network_autocast = lambda device, enabled=True: orig(device, enabled=False)
    try:
        yield
    finally:
        inf.network_autocast = orig


if __name__ == "__main__":
    main()
