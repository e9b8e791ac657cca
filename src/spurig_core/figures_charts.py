"""Chart figures of the paper (4, 5 and 8): metric bars and curves and speed-ups, as PNG files.

Drawn headless like :mod:`spurig_core.figures` (the image-panel Figures 2 and 3), whose size,
``dpi``, method names and atomic writing they share: matplotlib's Agg
:class:`~matplotlib.figure.Figure` without pyplot state, safe in worker threads.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .figures import _NAMES, DPI, _ordered_columns, _save

__all__ = ["ablation_figure", "speedup_figure", "steps_figure"]


def _metric_stats(e: Mapping[str, Any], metric: str, j: int) -> tuple[float, float]:
    vals = e.get(f"{metric}_slices")
    if vals is not None and j < len(vals):
        v = np.asarray(vals[j], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            return float(v.mean()), float(v.std())
    try:
        return float(e[metric][j]), float(e.get(f"{metric}_std", [math.nan] * (j + 1))[j])
    except (KeyError, IndexError, TypeError):
        raise InputError(f"evaluation has no {metric.upper()} for coefficient c{j + 1}") from None


def ablation_figure(
    variants: Mapping[str, Mapping[str, Any]],
    out_path: str | Path,
    *,
    coefficient: int = 0,
    title: str = "",
) -> Path:
    """Paper Figure 4: PSNR (left) and SSIM (right) bars, mean ± std across slices, per variant.

    Parameters
    ----------
    variants : mapping label -> evaluation dict
        :func:`spurig_core.metrics.evaluate` output per training variant (e.g. ``"Full"``,
        ``"GLEAM"``, ``"GLEAM (no PT)"``), in display order.
    out_path : path-like
    coefficient : int
        Balanced coefficient (0-based; the paper shows c1).
    title : str

    Returns
    -------
    Path
        ``out_path``; 8 × 3.5 inches at 100 dpi.
    """
    if not variants:
        raise InputError("ablation_figure: no variants given")
    labels = list(variants)
    n = len(labels)

    def bars(ax: Any, stats: list[tuple[float, float]]) -> None:
        colors = [f"C{i % 10}" for i in range(n)]
        ax.bar(range(n), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3, color=colors)
        ax.set_xticks(range(n))
        ax.set_xticklabels(
            [textwrap.fill(t, 16) for t in labels], rotation=30, ha="right", fontsize=7
        )
        lo = min(m - s for m, s in stats if math.isfinite(m - s)) if stats else 0
        hi = max(m + s for m, s in stats if math.isfinite(m + s)) if stats else 1
        pad = 0.1 * max(hi - lo, 1e-6)
        ax.set_ylim(lo - pad, hi + pad)

    evals = [variants[lab] for lab in labels]
    fig = _psnr_ssim_figure(evals, coefficient, bars, title, bottom=0.3)
    return _save(fig, out_path)


def steps_figure(
    steps: Mapping[int, Mapping[str, Any]],
    out_path: str | Path,
    *,
    coefficient: int = 0,
    title: str = "",
) -> Path:
    """Paper Figure 5: PSNR and SSIM (mean ± std across slices) against the number of unroll steps.

    Parameters
    ----------
    steps : mapping int -> evaluation dict
        One :func:`spurig_core.metrics.evaluate` output per model (number of unroll steps).
    out_path, coefficient, title
        As for :func:`ablation_figure`.

    Returns
    -------
    Path
        ``out_path``; 8 × 3.5 inches at 100 dpi.
    """
    if not steps:
        raise InputError("steps_figure: no models given")
    xs = sorted(steps)

    def curve(ax: Any, stats: list[tuple[float, float]]) -> None:
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3)
        ax.set_xticks(xs)
        ax.set_xlabel("unroll steps", fontsize=8)
        ax.grid(alpha=0.3)

    fig = _psnr_ssim_figure([steps[x] for x in xs], coefficient, curve, title, bottom=0.15)
    return _save(fig, out_path)


def _psnr_ssim_figure(
    evals: Sequence[Mapping[str, Any]],
    coefficient: int,
    draw: Callable[[Any, list[tuple[float, float]]], None],
    title: str,
    *,
    bottom: float,
) -> Any:
    """Return an 8 × 3.5 in figure of PSNR (left) and SSIM (right) of ``evals``, drawn by ``draw``.

    ``draw(ax, stats)`` gets each axis and the (mean, std) across slices of coefficient
    ``coefficient`` per evaluation; labels, tick sizes, title and margins are set here.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.5), dpi=DPI)
    for k, (metric, unit) in enumerate((("psnr", "PSNR (dB)"), ("ssim", "SSIM"))):
        ax = fig.add_subplot(1, 2, k + 1)
        draw(ax, [_metric_stats(e, metric, coefficient) for e in evals])
        ax.set_ylabel(f"{unit}, c{coefficient + 1}", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=bottom, top=0.88, wspace=0.3)
    return fig


def speedup_figure(
    times: Mapping[str, Mapping[str, float]],
    out_path: str | Path,
    *,
    baseline: str = "llr-nufft",
    title: str = "",
) -> Path:
    """Paper Figure 8: speed-up ``t_baseline / t_method`` per duration, bars annotated with times.

    Parameters
    ----------
    times : mapping duration -> mapping method -> seconds
        Reconstruction wall times (e.g. from ``spurig bench``), durations in display order.
    out_path : path-like
    baseline : str
        The reference method (the paper: FISTA LLR with NUFFT, 40 iterations).
    title : str

    Returns
    -------
    Path
        ``out_path``; 8 × 4 inches at 100 dpi.

    Raises
    ------
    InputError
        When a duration lacks the baseline or a time is not positive.
    """
    from matplotlib.figure import Figure

    if not times:
        raise InputError("speedup_figure: no timings given")
    methods = _ordered_columns(times)
    for d, per in times.items():
        if baseline not in per:
            raise InputError(f"speedup_figure: duration {d!r} has no time for {baseline!r}")
        bad = [m for m, t in per.items() if not (t > 0 and math.isfinite(t))]
        if bad:
            raise InputError(f"speedup_figure: duration {d!r} has non-positive times for {bad}")
    fig = Figure(figsize=(8.0, 4.0), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    durations: Sequence[str] = list(times)
    for i, m in enumerate(methods):
        xs, ys, secs = [], [], []
        for k, d in enumerate(durations):
            if m in times[d]:
                xs.append(k + (i - (len(methods) - 1) / 2) * width)
                ys.append(times[d][baseline] / times[d][m])
                secs.append(times[d][m])
        bars = ax.bar(xs, ys, width=width * 0.95, label=_NAMES.get(m, m), color=f"C{i % 10}")
        for b, y, s in zip(bars, ys, secs, strict=True):
            ax.annotate(
                f"×{y:.1f}\n{s:.1f} s" if s < 100 else f"×{y:.1f}\n{s:.0f} s",
                (b.get_x() + b.get_width() / 2, y),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 1),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(durations)))
    ax.set_xticklabels(durations, fontsize=8)
    ax.set_ylabel(f"speed-up vs {_NAMES.get(baseline, baseline)}", fontsize=8)
    ax.set_yscale("log")
    ratios = [times[d][baseline] / t for d in durations for t in times[d].values()]
    ax.set_ylim(0.5 * min(min(ratios), 1.0), 4 * max(max(ratios), 1.0))
    ax.legend(fontsize=7, loc="upper right", ncols=len(methods))
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.1, top=0.9)
    return _save(fig, out_path)
