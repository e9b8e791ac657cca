"""The Markdown report, cohort evaluation and NIfTI export.

The tables (paper Tables 1–2, runtime) are :mod:`spurig_core.tables` (re-exported here).

Cohort layout read by :func:`evaluate_cohort`
---------------------------------------------
``results_dir`` holds result stores ``*.zarr`` (SPEC §5) at any depth, for example
``results_dir/<subject>/<method>_<duration>.zarr``.  Each store's ``source`` attribute names its
scan (``{"path": ..., "sha256": ...}``, written by ``spurig recon``).  The scan is read from that
path when it exists (a relative path is taken relative to the store's folder); otherwise a file
with the same name is looked for in the store's folder and its parents up to ``results_dir``.  The
scan must be simulated (have ``reference/``).  The method and the number of groups come from the
store's attributes; the subject is the scan's file stem.  Results of the ``adjoint`` method
provide the ``A^H b`` column of the figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Result
from .errors import InputError
from .io import atomic_path, load_result, load_scan, write_nifti
from .metrics import evaluate, reference_coefficients
from .progress import Callback, emit
from .tables import (
    METHOD_LABELS,
    Table,
    _duration_of,
    _durations,
    _label_of,
    _methods,
    runtime_table,
    table1,
    table2,
)

__all__ = [
    "METHOD_LABELS",
    "Section",
    "Table",
    "evaluate_cohort",
    "export_result",
    "runtime_table",
    "table1",
    "table2",
    "write_report",
]


# ----------------------------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One section of a Markdown report.

    Attributes
    ----------
    title : str
        The heading (level 2).
    body : str
        Markdown text.
    tables : tuple of Table
        Rendered after the body.
    figures : tuple of path
        Images linked after the tables (relative to the report when inside its folder).
    """

    title: str
    body: str = ""
    tables: tuple[Table, ...] = ()
    figures: tuple[str | Path, ...] = field(default=())


def write_report(
    path: str | Path,
    *sections: Section | tuple[str, str],
    title: str = "spurig report",
    intro: str = "",
) -> Path:
    """Write a Markdown report (``report.md`` of the demo and of cohort evaluation), atomically.

    Parameters
    ----------
    path : path-like
        The ``.md`` file.
    *sections : Section or (title, body)
        In order.
    title, intro : str
        The level-1 heading and a paragraph below it.

    Returns
    -------
    Path
        ``path``.
    """
    final = Path(path)
    base = final.parent.resolve()
    parts = [f"# {title}", ""]
    if intro:
        parts += [intro, ""]
    for sec in sections:
        if isinstance(sec, tuple):
            sec = Section(sec[0], sec[1])
        parts += [f"## {sec.title}", ""]
        if sec.body:
            parts += [sec.body.rstrip(), ""]
        for t in sec.tables:
            parts += [t.to_markdown()]
        for fig in sec.figures:
            p = Path(fig)
            try:
                rel = p.resolve().relative_to(base).as_posix()
            except ValueError:
                rel = p.as_posix()
            parts += [f"![{p.stem}]({rel})", ""]
    with atomic_path(final) as tmp:
        tmp.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    return final


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# cohort evaluation
# ----------------------------------------------------------------------------------------------
def _find_results(results_dir: Path) -> list[Path]:
    found = []
    for p in sorted(results_dir.rglob("*.zarr")):
        if (
            p.is_dir()
            and not p.name.startswith(".")
            and not any(
                q.suffix == ".zarr" for q in p.relative_to(results_dir).parents if q != Path(".")
            )
        ):
            found.append(p)
    return found


def _find_scan(store: Path, source: Mapping[str, Any] | None, results_dir: Path) -> Path:
    if not source or not source.get("path"):
        raise InputError(f"{store}: result has no 'source' attribute naming its scan")
    named = Path(str(source["path"]))
    if not named.is_absolute():
        named = store.parent / named
    if named.is_file():
        return named
    folder = store.parent
    root = results_dir.resolve()
    while True:
        cand = folder / named.name
        if cand.is_file():
            return cand
        if folder.resolve() == root or folder.parent == folder:
            break
        folder = folder.parent
    raise InputError(f"{store}: its scan {source['path']} was not found (nor beside the result)")


def _pooled_eval(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One evaluation whose per-slice PSNR/SSIM lists pool those of several subjects."""
    out: dict[str, Any] = {}
    for metric in ("psnr", "ssim"):
        k = len(group[0][f"{metric}_slices"])
        out[f"{metric}_slices"] = [
            [v for e in group for v in e[f"{metric}_slices"][j]] for j in range(k)
        ]
    return out


def _variant_figures(evals: Sequence[Mapping[str, Any]], fig_dir: Path) -> list[Path]:
    """Draw Figure 4 (training variants) and Figure 5 (unroll steps) per duration.

    The figures are drawn when the results hold more than one variant: variants are told apart by
    their ``label`` (the plain ``spurig`` result is "Full"), steps by the model's ``unroll_steps``.
    A label with "steps" in it belongs to the steps sweep (Figure 5), not to Figure 4.
    """
    from . import figures_charts as charts

    paths: list[Path] = []
    trained = [e for e in evals if e.get("method") == "spurig" and "psnr_slices" in e]
    for duration in _durations(trained):
        here = [e for e in trained if _duration_of(e) == duration]
        by_label: dict[str, list[Mapping[str, Any]]] = {}
        for e in here:
            if "steps" not in str(e.get("label") or ""):
                by_label.setdefault(str(e.get("label") or "Full"), []).append(e)
        if len(by_label) > 1:
            variants = {lab: _pooled_eval(g) for lab, g in by_label.items()}
            paths.append(
                charts.ablation_figure(
                    variants,
                    fig_dir / f"fig4_ablation_{duration}.png",
                    title=f"Training variants, {duration}",
                )
            )
        by_steps: dict[int, list[Mapping[str, Any]]] = {}
        for e in here:
            if "unroll_steps" in e and "steps" in str(e.get("label") or ""):
                by_steps.setdefault(int(e["unroll_steps"]), []).append(e)
        swept = set(by_steps)
        for e in here:  # the shipped model joins a sweep only at a step count it lacks
            if "unroll_steps" in e and not e.get("label") and int(e["unroll_steps"]) not in swept:
                by_steps.setdefault(int(e["unroll_steps"]), []).append(e)
        if len(by_steps) > 1:
            paths.append(
                charts.steps_figure(
                    {n: _pooled_eval(g) for n, g in by_steps.items()},
                    fig_dir / f"fig5_steps_{duration}.png",
                    title=f"Unroll steps, {duration}",
                )
            )
    return paths


def _evaluate_stores(
    stores: Sequence[tuple[int, Path]], root: Path
) -> list[tuple[int, dict[str, Any], Path, str | None, torch.Tensor | None]]:
    """Evaluate result stores (one task of :func:`evaluate_cohort`: the stores of one folder).

    Returns, per store, ``(position, evaluation, scan path, note, reference coefficients)``.
    """
    scans: dict[Path, Any] = {}
    refs: dict[tuple[Path, bytes], torch.Tensor] = {}
    out = []
    for pos, store in stores:
        res = load_result(store, lazy=True)
        scan_path = _find_scan(store, res.source, root).resolve()
        if scan_path not in scans:
            scans[scan_path] = load_scan(scan_path)
        scan = scans[scan_path]
        note = None
        if res.source and res.source.get("sha256") and scan.sha256 != res.source["sha256"]:
            note = f"{store.name}: scan {scan_path.name} changed since reconstruction"
        key = (scan_path, res.basis.numpy().tobytes())
        if key not in refs and scan.reference is not None:
            refs[key] = reference_coefficients(
                scan.reference, res.basis, b1=scan.b1, sequence=scan.sequence
            )
        e = evaluate(res, scan, reference_coeffs=refs.get(key))
        e["store"] = str(store.relative_to(root))
        unroll = (res.config or {}).get("unroll") or {}
        if "steps" in unroll:
            e["unroll_steps"] = int(unroll["steps"])
        out.append((pos, e, scan_path, note, refs.get(key)))
    return out


def _evaluate_all(
    stores: Sequence[Path], root: Path, client: Any, callback: Callback | None
) -> list[tuple[int, dict[str, Any], Path, str | None, torch.Tensor | None]]:
    """Run :func:`_evaluate_stores` per folder as tasks, in the order of ``stores``.

    The tasks run through :func:`spurig_core.cohort.run_tasks`.
    """
    from .cohort import Task, run_tasks

    folders: dict[Path, list[tuple[int, Path]]] = {}
    for pos, store in enumerate(stores):
        folders.setdefault(store.parent, []).append((pos, store))
    tasks = [
        Task(str(folder.relative_to(root)), _evaluate_stores, args=(group, root))
        for folder, group in folders.items()
    ]
    done = run_tasks(tasks, client, callback=callback, stage="evaluate")
    return sorted((item for t in tasks for item in done[t.key]), key=lambda item: item[0])


def evaluate_cohort(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    callback: Callback | None = None,
    figures: bool = True,
    alpha: float = 0.05,
    client: Any = None,
) -> Path:
    """Evaluate every result under ``results_dir``; write tables, figures and ``report.md``.

    The expected layout is in the module notes.  Writes into ``out_dir``: ``evaluations.json``
    (one :func:`~spurig_core.metrics.evaluate` dict per result, per-voxel lists dropped),
    ``table1.md``/``table1.csv``, ``table2.md``/``table2.csv`` (when results have maps),
    ``runtimes.md``/``runtimes.csv``, ``figures/*.png`` (per subject: Figure 2 panels of c1 and of
    the third unbalanced coefficient, Figure 3 panels of T1 and T2 when present; Figure 8 speed-ups)
    and ``report.md`` linking them.

    Parameters
    ----------
    results_dir, out_dir : path-like
    callback : Callback, optional
        Receives ``emit(callback, "evaluate", i, n, name)`` per result.
    figures : bool
        Whether to draw the figures.
    alpha : float
        Significance level of the tables.
    client : distributed.Client, optional
        Evaluate the stores of each folder (subject) as a task on this cluster
        (:mod:`spurig_core.cohort`); the tables are the same as serially.

    Returns
    -------
    Path
        ``out_dir / "report.md"``.

    Raises
    ------
    InputError
        When ``results_dir`` holds no ``*.zarr`` store, or a store or its scan is unusable.
    """
    from . import figures as figs
    from . import figures_charts as charts

    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"results directory {root}: no such directory")
    stores = _find_results(root)
    if not stores:
        raise InputError(f"results directory {root}: no *.zarr result stores found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit(callback, "evaluate", 0, len(stores), stores[0].name)
    items = _evaluate_all(stores, root, client, callback)
    evals = [e for _, e, _, _, _ in items]
    notes = [note for _, _, _, note, _ in items if note]
    scans: dict[Path, Any] = {}
    panels: dict[str, Any] = {}  # subject -> figures.SubjectPanels
    for pos, e, scan_path, _, ref in items if figures else ():
        if ref is None:  # no ground truth: nothing to draw against
            continue
        subject = str(e.get("subject"))
        if subject not in panels:
            if scan_path not in scans:
                scans[scan_path] = load_scan(scan_path)
            panels[subject] = figs.SubjectPanels(scans[scan_path].reference, ref, name=subject)
        res = load_result(stores[pos], lazy=True)
        panels[subject].add(res, row=_duration_of(e), column=_label_of(e))
    emit(callback, "evaluate", len(stores), len(stores), "tables")

    sections: list[Section] = []
    t1 = table1(evals, alpha=alpha)
    _write_text(out / "table1.md", t1.to_markdown())
    _write_text(out / "table1.csv", t1.to_csv())
    sections.append(Section("Coefficients (Table 1)", tables=(t1,)))
    if any("t1_rel_error" in e for e in evals):
        t2 = table2(evals, alpha=alpha)
        _write_text(out / "table2.md", t2.to_markdown())
        _write_text(out / "table2.csv", t2.to_csv())
        sections.append(Section("T1 and T2 (Table 2)", tables=(t2,)))
    times: dict[str, dict[str, list[float]]] = {}
    for e in evals:
        times.setdefault(_duration_of(e), {}).setdefault(_label_of(e), []).append(e["runtime_s"])
    mean_times = {d: {m: float(np.mean(v)) for m, v in per.items()} for d, per in times.items()}
    base = "llr-nufft" if any("llr-nufft" in p for p in mean_times.values()) else "llr"
    rt = runtime_table(mean_times, baseline=base)
    _write_text(out / "runtimes.md", rt.to_markdown())
    _write_text(out / "runtimes.csv", rt.to_csv())
    fig_paths: list[Path] = []
    if figures:
        fig_dir = out / "figures"
        for _, sp in sorted(panels.items()):
            fig_paths += sp.draw(fig_dir)
        if any(base in per for per in mean_times.values()) and len(_methods(evals)) > 1:
            # Figure 8 compares reconstructions; A^H b is not one
            usable = {
                d: {m: t for m, t in per.items() if m != "adjoint"}
                for d, per in mean_times.items()
                if base in per
            }
            fig_paths.append(
                charts.speedup_figure(usable, fig_dir / "fig8_speedup.png", baseline=base)
            )
    if figures:
        fig_paths += _variant_figures(evals, out / "figures")
    sections.append(Section("Reconstruction time", tables=(rt,)))
    if fig_paths:
        sections.append(Section("Figures", figures=tuple(fig_paths)))
    if notes:
        sections.append(Section("Notes", "\n".join(f"- {n}" for n in notes)))
    slim = [{k: v for k, v in e.items() if not k.endswith("_voxels")} for e in evals]
    _write_text(out / "evaluations.json", json.dumps(slim, indent=1))
    intro = (
        f"{len(evals)} results of {len({p for _, _, p, _, _ in items})} scans under `{root}`; "
        "metrics of SPEC §5. "
        "Raw per-result metrics: `evaluations.json`."
    )
    return write_report(out / "report.md", *sections, title="spurig cohort evaluation", intro=intro)


# ----------------------------------------------------------------------------------------------
# NIfTI export
# ----------------------------------------------------------------------------------------------
def export_result(result: Result | str | Path, out_dir: str | Path) -> list[Path]:
    """Write a result's maps and coefficient magnitudes as NIfTI-1 (``spurig export``).

    Files (those whose data exist): ``t1_ms.nii.gz``, ``t2_ms.nii.gz``, ``pd.nii.gz`` (float32,
    shape (x, y, z), ms / arbitrary units) and ``coefficients_abs.nii.gz``: the magnitudes of the
    balanced coefficients as one 4D volume (x, y, z, basis), coefficient ``j`` in volume ``j``.
    Voxel size from the result; the affine puts voxel ``r`` at ``(r − matrix//2) · voxel_size`` mm
    (:func:`spurig_core.io.nifti_affine`).  Every file is written atomically.

    Parameters
    ----------
    result : Result or path-like
        A result, or the path of a ``*.zarr`` store.
    out_dir : path-like
        Created when missing.

    Returns
    -------
    list of Path
        The files written, in the order above.
    """
    res = load_result(result, lazy=True) if isinstance(result, (str, Path)) else result
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vox = tuple(float(v) for v in res.voxel_size_mm)
    if len(vox) != 3 or min(vox) <= 0:
        raise InputError(f"result: voxel_size_mm must be 3 positive numbers, got {vox}")
    voxel = (vox[0], vox[1], vox[2])
    files = []
    for name in ("t1_ms", "t2_ms", "pd"):
        t = getattr(res, name)
        if t is not None:
            files.append(write_nifti(t.detach().cpu().numpy(), out / f"{name}.nii.gz", voxel))
    mags = res.coefficients.detach().abs().cpu().numpy()  # (basis, x, y, z)
    files.append(write_nifti(np.moveaxis(mags, 0, -1), out / "coefficients_abs.nii.gz", voxel))
    return files
