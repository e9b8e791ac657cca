"""Cohort tables (paper Tables 1–2), the Markdown report, cohort evaluation and NIfTI export.

Tables are built from :func:`spurig_core.metrics.evaluate` dictionaries (one per method × duration ×
subject).  Each table renders as Markdown (the paper's layout, ``mean ± std``, the SPUR-iG entry in
bold where it is significantly better than every baseline) and as CSV (long format, one row per
method × duration × metric × coefficient with mean, std, n and the Wilcoxon p-value against
SPUR-iG).

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

import csv
import io as _io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Result
from .errors import InputError
from .io import atomic_path, load_result, load_scan, write_nifti
from .metrics import evaluate, reference_coefficients, wilcoxon_p
from .progress import Callback, emit

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

#: Display names of the methods (SPEC §2), in table order.
METHOD_LABELS: dict[str, str] = {
    "spurig": "SPUR-iG (ours)",
    "hybrid": "Hybrid 2D/3D",
    "llr": "LLR (iGROG)",
    "llr-nufft": "LLR (NUFFT)",
    "adjoint": "A^H b",
}
OURS = "spurig"


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """A rendered table: Markdown cells for reading and long-format records for CSV.

    Attributes
    ----------
    header : tuple of str
        Column titles of the Markdown table.
    rows : tuple of tuple of str
        Markdown cells (``"**…**"`` marks significance).
    records : tuple of dict
        One flat dictionary per value (CSV rows), with the same keys in every record.
    caption : str
        One paragraph that says what the numbers are.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    records: tuple[dict[str, Any], ...] = ()
    caption: str = ""

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown, caption below."""
        lines = [
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" for _ in self.header) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """The long-format records as CSV (header line first; empty string when no records)."""
        if not self.records:
            return ""
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.records[0]), lineterminator="\n")
        w.writeheader()
        for r in self.records:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        return buf.getvalue()


def _duration_of(e: Mapping[str, Any]) -> str:
    return e.get("duration") or f"{int(e.get('groups', 0))} groups"


def _label_of(e: Mapping[str, Any]) -> str:
    return str(e.get("label") or e.get("method") or "?")


def _durations(evals: Sequence[Mapping[str, Any]]) -> list[str]:
    found: dict[str, int] = {}
    for e in evals:
        found[_duration_of(e)] = int(e.get("groups", 0))
    return sorted(found, key=lambda d: -found[d])


def _methods(evals: Sequence[Mapping[str, Any]]) -> list[str]:
    found = {_label_of(e) for e in evals}
    order = list(METHOD_LABELS)
    return sorted(found, key=lambda m: (order.index(m) if m in order else len(order), m))


def _index(evals: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    """(duration, method, subject) -> evaluation; the first of duplicates wins (with a warning)."""
    out: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for i, e in enumerate(evals):
        key = (_duration_of(e), _label_of(e), str(e.get("subject") or f"#{i}"))
        if key in out:
            warnings.warn(f"duplicate evaluation for {key}; keeping the first", stacklevel=3)
            continue
        out[key] = e
    return out


def _values(
    idx: Mapping[tuple[str, str, str], Mapping[str, Any]], duration: str, method: str, get: Any
) -> dict[str, np.ndarray]:
    """subject -> values (ndarray) for one duration and method; ``get(e)`` picks them."""
    out = {}
    for (d, m, s), e in idx.items():
        if d == duration and m == method:
            v = get(e)
            if v is not None:
                out[s] = np.asarray(v, dtype=np.float64).reshape(-1)
    return out


def _pooled(per_subject: Mapping[str, np.ndarray]) -> np.ndarray:
    if not per_subject:
        return np.zeros(0)
    return np.concatenate([per_subject[s] for s in sorted(per_subject)])


def _paired_p(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Wilcoxon p over the subjects both methods have (subjects of unequal length are skipped)."""
    common = [s for s in sorted(set(a) & set(b)) if a[s].size == b[s].size]
    if not common:
        return math.nan
    return wilcoxon_p(
        np.concatenate([a[s] for s in common]), np.concatenate([b[s] for s in common])
    )


def _stat(v: np.ndarray) -> tuple[float, float, int]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std()), int(v.size)


def _significance(
    values: Mapping[str, Mapping[str, np.ndarray]],
    methods: Sequence[str],
    higher_better: bool,
    alpha: float,
) -> tuple[dict[str, float], bool]:
    """p-values of ours vs each baseline and whether ours is significantly better than all."""
    if OURS not in values or not values[OURS]:
        return {}, False
    ps: dict[str, float] = {}
    better_all = True
    mo = _stat(_pooled(values[OURS]))[0]
    for m in methods:
        if m == OURS or not values.get(m):
            continue
        p = _paired_p(values[OURS], values[m])
        ps[m] = p
        mb = _stat(_pooled(values[m]))[0]
        better = mo > mb if higher_better else mo < mb
        if not (better and p < alpha):  # nan compares False
            better_all = False
    return ps, better_all and bool(ps)


def _cell(mean: float, std: float, fmt: str, bold: bool) -> str:
    if not math.isfinite(mean):
        return "–"
    s = f"{mean:{fmt}} ± {std:{fmt}}"
    return f"**{s}**" if bold else s


def table1(evals: Sequence[Mapping[str, Any]], *, alpha: float = 0.05) -> Table:
    """Paper Table 1: PSNR and SSIM per balanced coefficient, mean ± std across slices.

    Slices of all subjects are pooled per duration and method.  SPUR-iG (``"spurig"``) entries are
    bold where a two-sided Wilcoxon signed-rank test on paired slices (same subject, same slice)
    gives ``p < alpha`` against every other method and its mean is higher.

    Parameters
    ----------
    evals : sequence of dict
        :func:`spurig_core.metrics.evaluate` dictionaries (``psnr_slices``, ``ssim_slices``,
        ``method`` or ``label``, ``groups``/``duration``, ``subject``).
    alpha : float
        Significance level.

    Returns
    -------
    Table
        Rows duration × method; records with keys ``duration, method, metric, coefficient, mean,
        std, n, p_vs_spurig, bold``.
    """
    if not evals:
        raise InputError("table1: no evaluations given")
    idx = _index(evals)
    k = max(len(e.get("psnr_slices", [])) for e in evals)
    methods = _methods(evals)
    header = (
        "duration",
        "method",
        *(f"PSNR c{j + 1} (dB)" for j in range(k)),
        *(f"SSIM c{j + 1}" for j in range(k)),
    )
    cells: dict[tuple[str, str], list[str]] = {}
    records: list[dict[str, Any]] = []
    for d in _durations(evals):
        for metric, fmt in (("psnr", ".1f"), ("ssim", ".3f")):
            for j in range(k):
                vals = {
                    m: _values(
                        idx,
                        d,
                        m,
                        lambda e, j=j, metric=metric: (
                            e[f"{metric}_slices"][j]
                            if j < len(e.get(f"{metric}_slices", []))
                            else None
                        ),
                    )
                    for m in methods
                }
                ps, sig = _significance(vals, methods, True, alpha)
                for m in methods:
                    if not vals[m]:
                        continue
                    mean, std, n = _stat(_pooled(vals[m]))
                    cells.setdefault((d, m), []).append(_cell(mean, std, fmt, sig and m == OURS))
                    records.append(
                        {
                            "duration": d,
                            "method": m,
                            "metric": metric,
                            "coefficient": f"c{j + 1}",
                            "mean": mean,
                            "std": std,
                            "n": n,
                            "p_vs_spurig": ps.get(m),
                            "bold": sig and m == OURS,
                        }
                    )
    rows = tuple((d, METHOD_LABELS.get(m, m), *c) for (d, m), c in cells.items())
    caption = (
        "PSNR (dB) and SSIM of the magnitudes of the balanced subspace coefficients, mean ± "
        "std across axial brain slices pooled over subjects. Bold: SPUR-iG significantly "
        f"higher than every other method (paired two-sided Wilcoxon signed-rank, p < {alpha})."
    )
    return Table(header, rows, tuple(records), caption)


def table2(evals: Sequence[Mapping[str, Any]], *, alpha: float = 0.05) -> Table:
    """Paper Table 2: relative T1 and T2 errors in %, mean ± std across GM and WM voxels.

    Voxels of all subjects are pooled per duration and method.  SPUR-iG entries are bold where a
    paired two-sided Wilcoxon signed-rank test over voxels gives ``p < alpha`` against every other
    method and its mean is lower.  Needs per-voxel errors (``t1_rel_error_voxels``) for the tests
    and the std; evaluations without maps are skipped.

    Returns
    -------
    Table
        Rows methods, columns duration × (T1, T2); records with keys ``duration, method,
        parameter, mean_percent, std_percent, n, p_vs_spurig, bold``.
    """
    with_maps = [e for e in evals if "t1_rel_error" in e]
    if not with_maps:
        raise InputError("table2: no evaluation has T1/T2 maps (run spurig match first)")
    idx = _index(with_maps)
    methods = _methods(with_maps)
    durations = _durations(with_maps)
    header = ("method", *(f"{d} {p} (%)" for d in durations for p in ("T1", "T2")))
    table: dict[str, list[str]] = {m: [] for m in methods}
    records: list[dict[str, Any]] = []
    for d in durations:
        for p in ("t1", "t2"):
            vals = {
                m: _values(idx, d, m, lambda e, p=p: e.get(f"{p}_rel_error_voxels"))
                for m in methods
            }
            ps, sig = _significance(vals, methods, False, alpha)
            for m in methods:
                if vals[m]:
                    mean, std, n = _stat(_pooled(vals[m]))
                else:  # only means stored: average of the subjects' means
                    means = [
                        e[f"{p}_rel_error"] for (dd, mm, _), e in idx.items() if dd == d and mm == m
                    ]
                    mean, std, n = (float(np.mean(means)) if means else math.nan), math.nan, 0
                table[m].append(
                    _cell(100 * mean, 100 * std, ".1f", sig and m == OURS)
                    if math.isfinite(std) or not math.isfinite(mean)
                    else f"{100 * mean:.1f}"
                )
                records.append(
                    {
                        "duration": d,
                        "method": m,
                        "parameter": p.upper(),
                        "mean_percent": 100 * mean,
                        "std_percent": 100 * std,
                        "n": n,
                        "p_vs_spurig": ps.get(m),
                        "bold": sig and m == OURS,
                    }
                )
    rows = tuple((METHOD_LABELS.get(m, m), *c) for m, c in table.items())
    caption = (
        "Relative errors |T − T_ref| / T_ref of T1 and T2 in %, mean ± std across grey- and "
        "white-matter voxels (CSF excluded) pooled over subjects. Bold: SPUR-iG "
        f"significantly lower than every other method (paired Wilcoxon, p < {alpha})."
    )
    return Table(header, rows, tuple(records), caption)


def runtime_table(
    times: Mapping[str, Mapping[str, float]], *, baseline: str = "llr-nufft"
) -> Table:
    """Reconstruction times and speed-ups relative to ``baseline`` (paper Figure 8's numbers).

    Parameters
    ----------
    times : mapping duration -> mapping method -> seconds
        Wall times (for example from ``spurig bench`` or the results' ``runtime_s``).
    baseline : str
        The method the ratios refer to (``t_baseline / t_method``); ratios are blank where it is
        missing.
    """
    methods = _methods([{"method": m} for per in times.values() for m in per])
    header = (
        "duration",
        *(f"{METHOD_LABELS.get(m, m)} (s)" for m in methods),
        *(f"speed-up {METHOD_LABELS.get(m, m)}" for m in methods),
    )
    rows, records = [], []
    for d, per in times.items():
        base = per.get(baseline)
        secs = [f"{per[m]:.2f}" if m in per else "–" for m in methods]
        ratios = [
            f"×{base / per[m]:.1f}" if (base and m in per and per[m] > 0) else "–" for m in methods
        ]
        rows.append((d, *secs, *ratios))
        for m in methods:
            if m in per:
                records.append(
                    {
                        "duration": d,
                        "method": m,
                        "seconds": float(per[m]),
                        "speedup_vs_" + baseline.replace("-", "_"): (base / per[m])
                        if (base and per[m] > 0)
                        else None,
                    }
                )
    cap = (
        "Reconstruction wall time (gridding included, kernel training excluded); "
        f"speed-up = t({baseline}) / t(method)."
    )
    return Table(header, tuple(rows), tuple(records), cap)


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
    """Figure 4 (training variants of the trained method) and Figure 5 (unroll steps) per
    duration, when the results hold more than one variant: variants are told apart by their
    ``label`` (the plain ``spurig`` result is "Full"), steps by the model's ``unroll_steps``."""
    from . import figures as figs

    paths: list[Path] = []
    trained = [e for e in evals if e.get("method") == "spurig" and "psnr_slices" in e]
    for duration in _durations(trained):
        here = [e for e in trained if _duration_of(e) == duration]
        by_label: dict[str, list[Mapping[str, Any]]] = {}
        for e in here:
            by_label.setdefault(str(e.get("label") or "Full"), []).append(e)
        if len(by_label) > 1:
            variants = {lab: _pooled_eval(g) for lab, g in by_label.items()}
            paths.append(
                figs.ablation_figure(
                    variants,
                    fig_dir / f"fig4_ablation_{duration}.png",
                    title=f"Training variants, {duration}",
                )
            )
        by_steps: dict[int, list[Mapping[str, Any]]] = {}
        for e in here:
            if "unroll_steps" in e and (not e.get("label") or "steps" in str(e.get("label"))):
                by_steps.setdefault(int(e["unroll_steps"]), []).append(e)
        if len(by_steps) > 1:
            paths.append(
                figs.steps_figure(
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
    """:func:`_evaluate_stores` per folder as tasks (:func:`spurig_core.cohort.run_tasks`), in
    the order of ``stores``."""
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
                figs.speedup_figure(usable, fig_dir / "fig8_speedup.png", baseline=base)
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
