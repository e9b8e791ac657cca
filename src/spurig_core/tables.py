"""Cohort tables: paper Tables 1–2 and the runtime table, as Markdown and long-format CSV.

Tables are built from :func:`spurig_core.metrics.evaluate` dictionaries (one per method × duration ×
subject).  Each table renders as Markdown (the paper's layout, ``mean ± std``, the SPUR-iG entry in
bold where it is significantly better than every baseline) and as CSV (long format, one row per
method × duration × metric × coefficient with mean, std, n and the Wilcoxon p-value against
SPUR-iG).  Rows follow the method registry (:data:`spurig_core.recon.methods.METHODS`) and carry
its labels; :mod:`spurig_core.report` writes them into ``report.md``.
"""

from __future__ import annotations

import csv
import io as _io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .durations import DURATIONS
from .errors import InputError
from .metrics_stats import wilcoxon_p
from .recon.methods import METHODS

__all__ = ["METHOD_LABELS", "OURS", "Table", "runtime_table", "table1", "table2"]

#: Display names of the methods (the registry's labels, SPEC §2), in table order.
METHOD_LABELS: dict[str, str] = {m.name: m.label for m in METHODS.values()}
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
        """Return the table as GitHub-flavoured Markdown, caption below."""
        lines = [
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" for _ in self.header) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Return the long-format records as CSV (header line first; "" if there are no records)."""
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
    """Return subject -> values (ndarray) for one duration and method; ``get(e)`` picks them."""
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
    # longest first, as Tables 1-2 (unnamed durations last, in their given order)
    for d, per in sorted(times.items(), key=lambda kv: -DURATIONS.get(kv[0], 0)):
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
