r"""Reconstruct held-out test subjects with every method and duration; make Tables 1–2 (issue 5).

For each simulated scan ``TEST_DIR/*.h5`` the iGROG kernel is trained and the whole scan gridded
once per grid (:func:`spurig_core.operators.igrog.grid_scan`, default settings or ``--gridding
TOML``): the models' methods on the TOML's grid, LLR on its own 2× grid with the same kernel
settings (:func:`spurig_core.recon.trained.gridding_groups`).  Every duration takes the first
groups of that gridded data (:func:`spurig_core.pipeline.reconstruct` with ``gridded=``), so the
methods of one grid see exactly the same data.  Each result is matched (B1-corrected) and saved
as ``OUT_DIR/<subject>/<method>-<duration>.zarr``; existing stores are kept, so an interrupted
run resumes, and the gridded data are cached as ``OUT_DIR/<subject>/gridded.pt`` (LLR's:
``gridded-os2.pt``) for later runs (e.g. the trained methods after the baselines).  Finally
:func:`spurig_core.pipeline.evaluate_cohort` writes ``OUT_DIR/report/`` (Table 1 and 2 as Markdown
and CSV with Wilcoxon p-values, figures, ``evaluations.json``).

Runtimes in these stores exclude gridding (it is shared); ``spurig bench`` measures runtimes.

Run::

    OMP_NUM_THREADS=2 .venv/bin/python tools/evaluate_models.py data/cohort48/test data/eval48 \
        --methods adjoint,llr,spurig,hybrid --durations 2min,1min,30s

Two processes side by side: ``--shard 0/2 --no-report`` and ``--shard 1/2 --no-report`` take
alternate scans (each its own subject folders), then one run without ``--shard`` (every store
already there) writes the report.

``--model-dir DIR`` takes ``<method>-<duration>.pt`` from ``DIR`` instead of the shipped models
(by the pipeline's rule, :func:`spurig_core.recon.trained.model_file`: 15 s without its own file
takes the nearest duration's; missing ones are skipped with a note); ``--model CKPT`` uses one
checkpoint for the trained method; ``--label NAME`` stores results as ``NAME-<duration>`` and
shows them as their own column (ablation variants, e.g. ``--methods spurig --durations 1min
--model runs/.../model.pt --label "GLEAM w/o PT"``).  ``--config TOML`` passes the TOML's ``llr``
and ``encoding`` tables to every reconstruction (``spurig recon --config``), e.g. another LLR
threshold per duration under its own ``--label``; its ``[gridding]`` may set ``grid_oversampling``
only (e.g. LLR on the 1.5× grid under a label), the kernel settings stay ``--gridding``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from spurig_core.benchmark import load_gridded, save_gridded
from spurig_core.cohort_jobs import gridded_name
from spurig_core.config import from_dict, read_toml
from spurig_core.data import Scan
from spurig_core.errors import InputError
from spurig_core.io import load_result, load_scan
from spurig_core.operators.coil_maps import virtual_coils
from spurig_core.operators.grid import GriddedData
from spurig_core.operators.igrog import GriddingConfig, grid_scan
from spurig_core.overrides import read_overrides
from spurig_core.pipeline import evaluate_cohort, match, reconstruct
from spurig_core.recon.trained import MODELS_DIR, gridding_groups, model_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_redraw import parse_shard  # the tools' one I/N parser


def _gridded(
    scan: Scan, cache: Path, gcfg: GriddingConfig | None = None
) -> tuple[GriddedData, dict[str, float]]:
    """Grid the scan once (``gcfg``, default iGROG settings), cached on disk for later runs.

    The cache is plain data read weights-only (:func:`spurig_core.benchmark.load_gridded`); a cache
    of an older format (or an unreadable one) is replaced.
    """
    if cache.exists():
        try:
            return load_gridded(cache)
        except InputError as exc:
            print(f"re-gridding: {exc}", file=sys.stderr)
    gcfg = gcfg or GriddingConfig()
    gridded, times = grid_scan(virtual_coils(scan, gcfg.max_coils), config=gcfg)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_gridded(cache, gridded, times)
    return gridded, times


def _overrides(path: str) -> dict[str, Any] | None:
    """Read the ``llr``, ``encoding`` and ``denoiser`` tables of ``--config``, checked first.

    A ``gridding`` table may set ``grid_oversampling`` only (the grid of every method, e.g. LLR
    on the models' 1.5× grid under its own ``--label``): the kernel settings are cached per subject
    and set by ``--gridding``.
    """
    if not path:
        return None
    tables = read_overrides(path)
    other = sorted(set(tables.get("gridding") or {}) - {"grid_oversampling"})
    if other:
        raise InputError(
            f"--config {path}: [gridding] {', '.join(other)} not allowed here (use --gridding; "
            "[gridding] may set grid_oversampling only)"
        )
    return tables


def run(args: argparse.Namespace) -> int:
    test_dir, out_dir = Path(args.test_dir), Path(args.out_dir)
    part, parts = parse_shard(args.shard)
    scans = sorted(test_dir.glob("*.h5"))[: args.subjects or None]
    if not scans:
        raise InputError(f"{test_dir}: no *.h5 scans")
    scans = scans[part::parts]
    methods = [m for m in args.methods.split(",") if m]
    durations = [d for d in args.durations.split(",") if d]
    model_dir = Path(args.model_dir) if args.model_dir else MODELS_DIR
    base: dict[str, Any] = {}
    if args.gridding:  # the [gridding] table of a TOML (e.g. the training data's prepare.toml)
        base = dict(read_toml(args.gridding).get("gridding", {}))
        from_dict(GriddingConfig, base, where="gridding")  # checked before any work
    overrides = _overrides(args.config)
    for scan_path in scans:
        scan = load_scan(scan_path)
        todo = []
        for d in durations:
            for m in methods:
                label = args.label or m
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
                store = out_dir / scan_path.stem / f"{safe}-{d}.zarr"
                if store.exists():
                    continue
                model = None
                if m in ("spurig", "hybrid", "dc-only"):  # dc-only: that model's data term
                    fam = "spurig" if m == "dc-only" else m
                    model = Path(args.model) if args.model else model_file(fam, d, model_dir)
                    if model is None:
                        print(f"skip {m} {d}: no {m}-{d}.pt in {model_dir}", flush=True)
                        continue
                todo.append((d, m, label, model, store))
        if not todo:
            continue
        t0 = time.perf_counter()
        griddings: dict[str, tuple[GriddedData, dict[str, float]]] = {}
        for d, m, label, model, store in todo:
            gridded = None
            for settings, _ in gridding_groups([m], d, base=base, overrides=overrides):
                name = gridded_name(settings)  # one per grid: LLR's 2× grid is its own
                if name not in griddings:
                    gcfg = from_dict(GriddingConfig, settings, where="gridding")
                    griddings[name] = _gridded(scan, out_dir / scan_path.stem / name, gcfg)
                    times = griddings[name][1]
                    print(
                        f"{scan_path.stem} {name}: kernel {times['kernel_training_s']:.1f} s, "
                        f"gridding {times['gridding_s']:.1f} s",
                        flush=True,
                    )
                gridded = griddings[name][0]
            res = reconstruct(
                scan, method=m, duration=d, model=model, gridded=gridded, config=overrides
            )
            res = match(res, scan)
            if args.label:
                res = dataclasses.replace(res, config={**(res.config or {}), "label": label})
            res.save(store)
            check = load_result(store, lazy=True)
            print(
                f"  {label:>10} {d:>5}: {res.runtime_s:6.1f} s -> {store} "
                f"({tuple(check.coefficients.shape)})",
                flush=True,
            )
        print(f"{scan_path.stem}: {time.perf_counter() - t0:.0f} s", flush=True)
    if not args.no_report:
        report = evaluate_cohort(out_dir, out_dir=out_dir / "report")
        print(f"wrote {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("test_dir")
    p.add_argument("out_dir")
    p.add_argument("--methods", default="adjoint,llr,spurig,hybrid")
    p.add_argument("--durations", default="2min,1min,30s")
    p.add_argument("--subjects", type=int, default=0, help="at most this many scans (0: all)")
    p.add_argument("--model-dir", default="")
    p.add_argument("--model", default="")
    p.add_argument("--label", default="")
    p.add_argument(
        "--config", default="", help="TOML with [llr]/[encoding] overrides for every method"
    )
    p.add_argument("--no-report", action="store_true")
    p.add_argument(
        "--shard",
        default="0/1",
        help="I/N: every N-th scan from the I-th (parallel runs into the same OUT_DIR; "
        "write the report once at the end)",
    )
    p.add_argument(
        "--gridding", default="", help="TOML whose [gridding] table grids scans not yet cached"
    )
    args = p.parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
