"""``spurig demo``: the whole pipeline on the sample scan, in a few minutes on 2 CPU cores.

Steps: grid (iGROG), reconstruct with SPUR-iG and its DC-only baseline (when a shipped model fits
the scan), LLR and the adjoint, match (B1-corrected), evaluate against the ground truth, and
write into the output folder: one zarr store per result, NIfTI maps (``spurig export``), Figure
2/3-style panels, and ``report.md`` with the tables and timings.  ``tiny=True`` runs a
seconds-long configuration on a small analytic subject (used by the test suite).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from .errors import InputError, NotAvailableError
from .progress import Callback, emit

__all__ = ["run_demo"]


def _tiny_scan(out_dir: Path, callback: Callback | None) -> Path:
    from .simulation import simulate

    path = out_dir / "tiny_scan.h5"
    if not path.exists():
        simulate(path, matrix=20, coils=4, groups=4, seed=3, phantom="analytic", callback=callback)
    return path


def run_demo(out_dir: str | Path, *, tiny: bool = False, callback: Callback | None = None) -> str:
    """Run the demo; return a printable summary (also in ``out_dir/report.md``).

    Parameters
    ----------
    out_dir : path-like
        Output folder (created; existing files of the same names are replaced atomically).
    tiny : bool
        A seconds-long configuration for tests.
    callback : callable, optional
        Progress events of every stage.
    """
    from .config import from_dict
    from .durations import nearest_duration
    from .figures import SubjectPanels
    from .io import load_scan
    from .metrics import evaluate, reference_coefficients
    from .operators.coil_maps import virtual_coils
    from .operators.igrog import GriddingConfig, grid_scan
    from .pipeline import match, reconstruct
    from .recon.methods import METHODS
    from .recon.trained import gridding_groups
    from .report import Section, export_result, runtime_table, table1, table2, write_report
    from .simulation import sample_scan_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    scan_path = _tiny_scan(out, callback) if tiny else sample_scan_path(callback=callback)
    scan = load_scan(scan_path)
    if scan.reference is None:
        raise InputError(f"{scan_path}: the demo needs a simulated scan with reference/")
    duration = nearest_duration(scan.n_groups)
    overrides: dict[str, Any] = {}
    if tiny:
        overrides = {"gridding": {"steps": 200, "train_sets": 512}, "llr": {"iterations": 8}}

    # SPUR-iG beside its DC-only baseline (same data term and steps, identity denoiser)
    methods = ["spurig", "dc-only", "llr", "adjoint"]
    results = {}
    notes: list[str] = []
    # Grid once per distinct gridding (iGROG kernel training + gridding): SPUR-iG and DC only
    # share the model's (its training data's settings), LLR takes the same kernel settings on its
    # own finer grid (recon.methods); each result's runtime includes its gridding time, as in the
    # paper (kernel training excluded).
    emit(callback, "demo", 0, len(methods) + 2, "iGROG kernel training and gridding")
    shared: dict[str, tuple[Any, dict[str, float]]] = {}
    for settings, names in gridding_groups(methods, duration, overrides=overrides):
        gcfg = from_dict(GriddingConfig, settings, where="gridding")
        # the gridding of the scan reconstruct() will see (> gridding.max_coils compressed)
        done = grid_scan(virtual_coils(scan, gcfg.max_coils), config=gcfg, callback=callback)
        shared.update({name: done for name in names})
    for i, method in enumerate(methods):
        emit(callback, "demo", i, len(methods) + 2, f"reconstructing with {method}")
        gridded, grid_times = shared.get(method, (None, {}))
        try:
            res = reconstruct(
                scan, method=method, callback=callback, config=overrides, gridded=gridded
            )
        except (InputError, NotAvailableError) as exc:
            if not METHODS[method].needs_model:
                raise
            notes.append(f"{METHODS[method].short} skipped: {exc}")
            continue
        if gridded is not None:
            res = dataclasses.replace(
                res,
                runtime_s=res.runtime_s + grid_times["gridding_s"],
                timings={**res.timings, **grid_times, "gridding_reused": 0.0},
            )
        res = match(res, scan, callback=callback)
        res.save(out / f"{method}-{duration}.zarr")
        results[method] = res

    emit(callback, "demo", len(methods), len(methods) + 2, "evaluating and drawing")
    basis = next(iter(results.values())).basis
    ref = reference_coefficients(scan.reference, basis, b1=scan.b1, sequence=scan.sequence)
    evals = []
    for res in results.values():
        e = evaluate(res, scan, reference_coeffs=ref, per_voxel=True)
        e["subject"] = scan_path.stem
        evals.append(e)
    panels = SubjectPanels(scan.reference, ref, name=scan_path.stem)
    for res in results.values():
        panels.add(res)
    figures = panels.draw(out / "figures")
    best = "spurig" if "spurig" in results else "llr"
    nifti = export_result(results[best], out / f"nifti-{best}")
    if not tiny:
        # The plugin's "sample result": the best result, matched, beside the sample scan.
        try:
            results[best].save(scan_path.with_name(f"{scan_path.stem}-{best}.zarr"))
        except OSError:
            notes.append("could not cache the sample result beside the sample scan")
    times = {duration: {m: r.runtime_s for m, r in results.items()}}
    t1, t2 = table1(evals), table2(evals)
    rt = runtime_table(times, baseline="llr")
    sections = [
        Section("Coefficients (Table 1 style)", "", (t1,)),
        Section("Quantitative maps (Table 2 style)", "", (t2,)),
        Section("Reconstruction time", "Gridding included, iGROG kernel training excluded.", (rt,)),
        Section("Figures", "", (), tuple(figures)),
        Section("Files", "\n".join(f"- `{p.relative_to(out)}`" for p in nifti)),
    ]
    intro = (
        f"Scan `{scan_path}` ({scan.matrix[0]}³, {scan.n_groups} groups = {duration}, "
        f"{scan.n_coils} coils). " + " ".join(notes)
    )
    write_report(out / "report.md", *sections, title="spurig demo", intro=intro)
    emit(callback, "demo", len(methods) + 2, len(methods) + 2)

    lines = [f"spurig demo: {scan_path.name}, {duration}, results in {out}/"]
    for e in evals:
        lines.append(
            f"  {e['method']:>8}: PSNR c1 {e['psnr'][0]:.2f} dB, SSIM c1 {e['ssim'][0]:.3f}, "
            f"T1 err {100 * e.get('t1_rel_error', float('nan')):.1f} %, "
            f"T2 err {100 * e.get('t2_rel_error', float('nan')):.1f} %, "
            f"{results[e['method']].runtime_s:.1f} s"
        )
    lines += [f"  {n}" for n in notes]
    lines.append(f"  report: {out / 'report.md'} (total {time.perf_counter() - t_start:.0f} s)")
    return "\n".join(lines)
