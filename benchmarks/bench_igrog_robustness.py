"""iGROG robustness matrix: gridded vs NUFFT on scans the kernel was not tuned for (issue #20).

One brain subject (``--matrix``, default 32³) is scanned many times with ``acquire_scan``, each
time changing one factor of the project's default acquisition (arm shape, readout samples,
rotation scheme, calibration size, coil array and compression, noise), plus the "independent
scan" combination of the issue (another variable-density spiral and rotation scheme, 20³
calibration, 10 virtual coils from a 12-element array, another noise level).  For every cell:

* ``A^H b NRMSE``: gridded adjoint (iGROG kernel trained on the cell's own noisy calibration,
  applied to noise-free k-space) vs the NUFFT adjoint of the same noise-free k-space, both with
  the data term's density weights (``γ = 0.5``); the no-kernel move's figure is the floor set by
  moving samples onto the ×1.5 grid;
* ``noise gain``: image RMS of the gridded adjoint of pure complex white noise over that of the
  NUFFT adjoint of the same noise (same weights and coil maps): the g-factor of the gridding;
* the self-check of :mod:`spurig_core.operators.igrog_check` (held-out and spot-check errors, its
  own noise-gain estimate, pass/fail);
* on the cells named by ``--llr-cells``: mean PSNR (c1–c5) of FISTA-LLR on the gridded data and of
  LLR-NUFFT (same iterations, threshold and data weights) against the ground truth.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_igrog_robustness.py --quick
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_igrog_robustness.py \
        --llr-cells default,independent --out benchmarks/RESULTS-igrog.md --json rob.json

``--quick`` runs three cells with a short kernel training (minutes); ``--cells`` picks cells;
``--gridding KEY=VALUE`` overrides :class:`GriddingConfig` fields (e.g. ``ridge=0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spurig_core.data import FispSequence, Scan
from spurig_core.operators.encoding import GriddedSubspaceEncoding, SubspaceNUFFTEncoding
from spurig_core.operators.igrog import GriddingConfig, grid
from spurig_core.operators.igrog_check import check_gridding
from spurig_core.operators.igrog_noise import source_noise
from spurig_core.operators.igrog_train import train_kernel
from spurig_core.physics import default_basis
from spurig_core.simulation import (
    SimulationConfig,
    acquire_scan,
    effective_reference,
    signal_subspace,
)
from spurig_core.simulation.coils import CoilConfig, head_array
from spurig_core.simulation.phantom import brain_subject
from spurig_core.simulation.trajectory import TrajectoryConfig

#: A 12-element and a 32-element head array (the default has 24 elements).
ARRAY12 = CoilConfig(ring_elements=(6, 4, 2), ring_elevation_deg=(-10.0, 30.0, 65.0))
ARRAY32 = CoilConfig(ring_elements=(12, 10, 6, 4), ring_elevation_deg=(-15.0, 15.0, 40.0, 65.0))


def cells(n: int) -> dict[str, dict[str, Any]]:
    """Return the matrix: name → changes from the default scan (``traj`` a TrajectoryConfig)."""
    t = TrajectoryConfig
    return {
        "default": {},
        "spiral 1 turn": {"traj": t(turns=1.0)},
        "spiral 3 turns": {"traj": t(turns=3.0)},
        "spiral 4 turns, 8N": {"traj": t(turns=4.0, samples=8 * n)},
        "radial arms": {"traj": t(arm="radial")},
        "stack-of-spirals arms": {"traj": t(arm="stack")},
        "arc-length readout": {"traj": t(sampling="arc")},
        "readout 4N": {"traj": t(samples=4 * n)},
        "readout 8N": {"traj": t(samples=8 * n)},
        "golden rotations": {"traj": t(rotation="golden")},
        "random rotations": {"traj": t(rotation="random")},
        "calibration 16³": {"calib": 16},
        "calibration 20³": {"calib": 20},
        "calibration 32³": {"calib": 32},
        "8 coils from 24": {"coils": 8},
        "16 coils from 24": {"coils": 16},
        "10 coils from 12": {"coil_config": ARRAY12},
        "24 coils uncompressed": {"coils": 24, "compressed": False},
        "32 coils uncompressed": {"coils": 32, "compressed": False, "coil_config": ARRAY32},
        "noise 0": {"noise": 0.0},
        "noise 0.005": {"noise": 0.005},
        "noise 0.05": {"noise": 0.05},
        "noise-free calibration": {"cal_noise": 0.0},
        "independent": {
            "traj": t(turns=2.5, density=1.3, samples=8 * n, rotation="golden"),
            "calib": 20,
            "coil_config": ARRAY12,
            "noise": 0.01,
        },
    }


QUICK = ("default", "independent", "calibration 16³")


def _subject(n: int, seed: int, cache: Path | None) -> tuple[Any, ...]:
    path = None if cache is None else cache / f"subject-{n}-{seed}.pt"
    if path is not None and path.exists():
        return tuple(torch.load(path, weights_only=False))
    subj = brain_subject(n, seed=int(np.random.SeedSequence(seed).generate_state(3)[0]))
    seq = FispSequence.default()
    cfg = SimulationConfig(matrix=n)
    images, basis, _ = signal_subspace(subj, seq, cfg)
    ref = effective_reference(subj, images, basis, seq, purity=cfg.purity)
    out = (subj, images, basis, ref)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def build_scans(
    n: int, groups: int, seed: int, cell: dict[str, Any], cache: Path | None
) -> tuple[Scan, Scan]:
    """Return the cell's noisy scan and the same scan without noise (same calibration noise)."""
    subj, images, basis, ref = _subject(n, seed, cache)
    coil_cfg = cell.get("coil_config", CoilConfig())
    coils = int(cell.get("coils", 10))
    s_coils = int(np.random.SeedSequence(seed).generate_state(3)[1])
    maps = head_array(
        n,
        coils,
        fov_mm=subj.fov_mm,
        mask=subj.head_mask,
        config=coil_cfg,
        seed=s_coils,
        compressed=bool(cell.get("compressed", True)),
    )
    noise = float(cell.get("noise", 0.02))
    cfg = SimulationConfig(
        matrix=n,
        coils=coils,
        groups=groups,
        noise=noise,
        calibration=int(cell.get("calib", 24)),
        trajectory_config=cell.get("traj", TrajectoryConfig()),
        calibration_noise=cell.get("cal_noise"),
        coil_config=coil_cfg,
    )
    seq = FispSequence.default()
    noisy = acquire_scan(subj, images, basis, maps, cfg, sequence=seq, reference=ref, seed=seed)
    # only the k-space of the noise-free scan is used (the kernel learns from noisy.calibration)
    clean_cfg = dataclasses.replace(cfg, noise=0.0)
    clean = acquire_scan(
        subj, images, basis, maps, clean_cfg, sequence=seq, reference=ref, seed=seed
    )
    return noisy, clean


def _compressed(noisy: Scan, clean: Scan, coils: int) -> tuple[Scan, Scan]:
    """Compress both scans with the noisy calibration's SVD (what a scanner pipeline would do)."""
    from spurig_core.operators.coil_maps import compress_scan, compression_matrix

    n_in = int(noisy.kspace.shape[0])
    assert noisy.calibration is not None
    a = compression_matrix(noisy.calibration.reshape(n_in, -1).numpy(), coils)
    return compress_scan(noisy, coils, matrix=a), compress_scan(clean, coils, matrix=a)


def _nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def readout_spacing(traj: torch.Tensor) -> float:
    """Largest step between consecutive readout samples (cycles/FOV).

    A readout counts as Nyquist-sampled up to 1.1 (the project's default arm: 1.05 at 6·N).
    """
    return float(torch.linalg.vector_norm(torch.diff(traj[:2], dim=2), dim=-1).max())


def measure(noisy: Scan, clean: Scan, gcfg: GriddingConfig, seed: int) -> dict[str, Any]:
    """A^H b NRMSE (noise-free), noise gain and the self-check of one cell."""
    matrix = tuple(int(m) for m in noisy.matrix)
    assert noisy.calibration is not None and noisy.coil_maps is not None
    t0 = time.perf_counter()
    sigma = 0.0
    if gcfg.noise_matched:  # as grid_scan does: the fit sees the acquisition's noise
        sigma = source_noise(noisy.kspace, noisy.trajectory, noisy.calibration, seed=gcfg.seed)[
            "added_noise"
        ]
    kernel = train_kernel(
        noisy.calibration, noisy.trajectory, matrix, config=gcfg, source_noise=sigma
    )
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    check = check_gridding(
        kernel, noisy.calibration, noisy.trajectory, matrix, config=gcfg, kspace=noisy.kspace
    )
    t_check = time.perf_counter() - t0
    check["source_noise_rel"] = float(kernel.metrics.get("source_noise_rel", 0.0))
    basis = default_basis(noisy.sequence)
    maps = noisy.coil_maps
    nop = SubspaceNUFFTEncoding(noisy.trajectory, maps, basis, eps=1e-6, density_compensation=0.5)
    ref = nop.adjoint(nop.data_values(clean.kspace))
    gd = grid(clean.kspace, noisy.trajectory, matrix, kernel=kernel, config=gcfg)
    gop = GriddedSubspaceEncoding(gd, maps, basis)
    ahb_err = _nrmse(gop.adjoint_data(), ref)
    ahb_floor = _nrmse(gop.adjoint_data(clean.kspace), ref)  # the samples' own values, moved
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((2, *noisy.kspace.shape), generator=gen)
    noise = torch.complex(z[0], z[1]) / math.sqrt(2)
    del z
    gz = grid(noise, noisy.trajectory, matrix, kernel=kernel, config=gcfg)
    gain = float(
        torch.linalg.vector_norm(gop.adjoint_data(gz.values))
        / torch.linalg.vector_norm(nop.adjoint(nop.data_values(noise)))
    )
    return {
        "ahb_nrmse": ahb_err,
        "ahb_nrmse_nearest": ahb_floor,
        "noise_gain": gain,
        "check": check,
        "kernel_metrics": dict(kernel.metrics),
        "kernel_training_s": t_train,
        "check_s": t_check,
        "_kernel": kernel,
    }


def llr_pair(
    scan: Scan, kernel: Any, gcfg: GriddingConfig, acquired: Scan | None = None
) -> dict[str, Any]:
    """Return the mean PSNR (c1–c5) of gridded LLR and of LLR-NUFFT, and their difference.

    Both use all groups, the threshold of the nearest duration and the same settings.  With
    ``acquired`` (the scan before its compression to ``scan``), both run on it end to end
    through :func:`~spurig_core.pipeline.reconstruct`, which compresses it
    (``gridding.max_coils``) and trains its own kernel, as ``spurig recon`` does.
    """
    from spurig_core.config import to_dict
    from spurig_core.metrics import evaluate
    from spurig_core.pipeline import reconstruct

    out: dict[str, Any] = {}
    if acquired is not None:
        config = {"gridding": {**to_dict(gcfg), "max_coils": scan.n_coils}}
        for method in ("llr", "llr-nufft"):
            res = reconstruct(acquired, method=method, config=config)
            out[method] = float(np.mean(evaluate(res, acquired, per_voxel=False)["psnr"]))
            out["coil_compression"] = res.config.get("coil_compression")
        out["diff_db"] = out["llr"] - out["llr-nufft"]
        return out
    matrix = tuple(int(m) for m in scan.matrix)
    gd = grid(scan.kspace, scan.trajectory, matrix, kernel=kernel, config=gcfg)
    for method in ("llr", "llr-nufft"):
        res = reconstruct(scan, method=method, gridded=gd if method == "llr" else None)
        out[method] = float(np.mean(evaluate(res, scan, per_voxel=False)["psnr"]))
    out["diff_db"] = out["llr"] - out["llr-nufft"]
    return out


def _override(base: GriddingConfig, items: list[str]) -> GriddingConfig:
    changes: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        kind = type(getattr(base, key))
        changes[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
    return dataclasses.replace(base, **changes)


def _row(name: str, r: dict[str, Any]) -> str:
    c = r["check"]
    coils = r.get("coils")
    if coils and coils["acquired"] != coils["used"]:
        name = f"{name} → {coils['used']} virtual"
    llr = r.get("llr")
    llr_txt = (
        f"{llr['llr']:.2f} / {llr['llr-nufft']:.2f} / **{llr['diff_db']:+.2f}**" if llr else "–"
    )
    return (
        f"| {name} | {r['spacing']:.2f}{'' if r['nyquist'] else ' ✗'} | "
        f"{r['kernel_metrics']['reach']:.1f} | {100 * r['ahb_nrmse']:.2f} % | "
        f"{100 * r['ahb_nrmse_nearest']:.2f} % | {r['noise_gain']:.3f} | "
        f"{c['held_out_rel_error']:.3f} | {c['spot_rel_error']:.3f} "
        f"({c['spot_nearest_rel_error']:.3f}) | {c.get('spot_local_rel_error', float('nan')):.3f} "
        f"({c.get('spot_local_nearest_rel_error', float('nan')):.3f}) | {c['noise_gain']:.3f} | "
        f"{c.get('data_error_ratio', float('nan')):.2f} | {c.get('source_noise_rel', 0.0):.3f} | "
        f"{'pass' if c['passed'] else '**fail**'} | {llr_txt} |"
    )


def _table(rows: dict[str, dict[str, Any]], args: argparse.Namespace, gcfg: GriddingConfig) -> str:
    cmd = "OMP_NUM_THREADS={} .venv/bin/python benchmarks/bench_igrog_robustness.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "?"), " ".join(args.argv)
    )
    changed = {
        f.name: getattr(gcfg, f.name)
        for f in dataclasses.fields(gcfg)
        if getattr(gcfg, f.name) != f.default
    }
    lines = [
        f"## {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC — robustness matrix, "
        f"{args.matrix}³, {args.groups} groups",
        "",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; shared CPU",
        f"- command: `{cmd}`",
        f"- gridding: GriddingConfig defaults{' except ' + str(changed) if changed else ''}",
        "",
        "| cell | max readout step (✗ > 1) | reach | A^H b NRMSE iGROG | A^H b NRMSE no kernel "
        "| noise gain | held-out err. | spot err. (no kernel) | local spot err. (no kernel) "
        "| check noise gain | data/cal err. ratio | matched noise | check "
        "| LLR / LLR-NUFFT / diff dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, r) for name, r in rows.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--matrix", type=int, default=32)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="three cells, 600 kernel steps")
    ap.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    ap.add_argument("--llr-cells", default="", help="cells that also get the LLR pair")
    ap.add_argument("--gridding", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--virtual-coils",
        type=int,
        default=None,
        help="SVD-compress scans with more channels to this many virtual coils (every method; "
        "default: gridding.max_coils, as spurig recon; 0: never)",
    )
    ap.add_argument("--cache", type=Path, default=None, help="folder for the simulated subject")
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--render", type=Path, nargs="+", default=None, help="only print the table of JSON files"
    )
    import sys

    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if args.render:
        rows = {}
        for path in args.render:
            rows.update(json.loads(path.read_text()))
        print(_table(rows, args, GriddingConfig()))
        return
    all_cells = cells(args.matrix)
    names = list(QUICK) if args.quick else list(all_cells)
    if args.cells in all_cells:  # one cell whose name has a comma ("spiral 4 turns, 8N")
        names = [args.cells]
    elif args.cells:
        names = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in names if c not in all_cells]
    if unknown:
        ap.error(f"unknown cells {unknown}; known: {', '.join(all_cells)}")
    gcfg = GriddingConfig(steps=600) if args.quick else GriddingConfig()
    gcfg = _override(gcfg, args.gridding)
    llr_cells = (
        {args.llr_cells}
        if args.llr_cells in all_cells
        else {c.strip() for c in args.llr_cells.split(",") if c.strip()}
    )
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        t0 = time.perf_counter()
        noisy, clean = build_scans(args.matrix, args.groups, args.seed, all_cells[name], args.cache)
        acquired = noisy
        k = gcfg.max_coils if args.virtual_coils is None else args.virtual_coils
        if 0 < k < noisy.n_coils:  # as reconstruct() does (gridding.max_coils)
            noisy, clean = _compressed(noisy, clean, k)
        r = measure(noisy, clean, gcfg, args.seed)
        r["coils"] = {"acquired": acquired.n_coils, "used": noisy.n_coils}
        kernel = r.pop("_kernel")
        r["spacing"] = readout_spacing(noisy.trajectory)
        r["nyquist"] = r["spacing"] <= 1.1
        if name in llr_cells:
            r["llr"] = llr_pair(noisy, kernel, gcfg, None if acquired is noisy else acquired)
        r["cell_s"] = time.perf_counter() - t0
        rows[name] = r
        print(json.dumps({"cell": name, **r}, default=float), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1, default=float))
    text = _table(rows, args, gcfg)
    print(text)
    if args.out is not None:
        prev = args.out.read_text() if args.out.exists() else "# iGROG benchmark results\n"
        args.out.write_text(prev.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
