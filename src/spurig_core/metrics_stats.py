"""Paired statistics of paper 2.5 and SPEC §5: Wilcoxon signed-rank tests between two methods.

Two-sided (or one-sided) Wilcoxon signed-rank tests (:func:`scipy.stats.wilcoxon`) between two
methods' paired per-slice or per-voxel values, as :func:`spurig_core.metrics.evaluate` keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["paired_tests", "wilcoxon_p"]


def wilcoxon_p(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    alternative: str = "two-sided",
) -> float:
    """p-value of the Wilcoxon signed-rank test of paired samples ``a`` and ``b``.

    Parameters
    ----------
    a, b : sequence of float, shape (n,)
        Paired values (the same slices or voxels evaluated for two methods).
    alternative : {"two-sided", "greater", "less"}
        As in :func:`scipy.stats.wilcoxon` (``"greater"``: ``a`` tends to exceed ``b``).

    Returns
    -------
    float
        The p-value; ``nan`` when every difference is zero or there are no finite pairs.

    Raises
    ------
    InputError
        When ``a`` and ``b`` have different lengths.
    """
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise InputError(f"wilcoxon: paired samples differ in length ({x.size} vs {y.size})")
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    if d.size == 0 or not np.any(d != 0):
        return math.nan
    return float(wilcoxon(x[ok], y[ok], alternative=alternative).pvalue)


def paired_tests(
    a: Mapping[str, Any], b: Mapping[str, Any], *, alternative: str = "two-sided"
) -> dict[str, Any]:
    """Wilcoxon p-values between two evaluations of the same scan (e.g. SPUR-iG vs LLR).

    Parameters
    ----------
    a, b : mapping
        :func:`~spurig_core.metrics.evaluate` dictionaries of the same subject (same brain
        slices and voxels).
    alternative : {"two-sided", "greater", "less"}
        Passed to :func:`wilcoxon_p` (``"greater"``: ``a``'s values tend to be larger).

    Returns
    -------
    dict
        ``"psnr"``, ``"ssim"``: list (basis,) of p-values over the paired slices; and, when both
        have per-voxel errors, ``"t1_rel_error"``, ``"t2_rel_error"``: p-values over the voxels.

    Raises
    ------
    InputError
        When the two evaluations cover different slices or voxel counts.
    """
    if a.get("slices") != b.get("slices"):
        raise InputError("paired_tests: the evaluations cover different slices (another scan?)")
    out: dict[str, Any] = {}
    for name in ("psnr", "ssim"):
        out[name] = [
            wilcoxon_p(x, y, alternative=alternative)
            for x, y in zip(a[f"{name}_slices"], b[f"{name}_slices"], strict=True)
        ]
    for name in ("t1_rel_error", "t2_rel_error"):
        va, vb = a.get(f"{name}_voxels"), b.get(f"{name}_voxels")
        if va is not None and vb is not None:
            out[name] = wilcoxon_p(va, vb, alternative=alternative)
    return out
