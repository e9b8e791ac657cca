"""Validation metrics and checkpoint selection of the training recipe (issue 13).

The evaluation reports mean PSNR c1–c5 *and* the T1/T2 errors in grey and white matter (SPEC §5),
so a run that selects its checkpoint (and a shipped model its unrolled steps) on PSNR alone can
trade the maps for the background: the v3 models were 1.8 dB above LLR in PSNR with T1/T2 errors
above LLR's.  Here a validation output is scored on all three:

- ``"psnr"``: the mean PSNR c1–c5 (dB; higher is better) — the v3 rule;
- ``"error-ratio"``: each error as a fraction of the error at update 0 on the same validation
  subjects (the DC-only state, or the initial model of a run with ``init``), averaged —
  ``(10^{−ΔPSNR/20} + T1/T1₀ + T2/T2₀) / 3`` — and negated so that higher is better.  An output
  with the image error and both map errors halved scores −0.5; the update-0 state scores −1.

The T1/T2 errors need each validation subject's ground truth and B1 map, read from its simulated
scan (``val_scans``: ``<subject>.h5``); the output is matched as ``spurig match`` matches a result
(B1-corrected dictionary matching, :func:`spurig_core.matching.match_maps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..metrics import coefficient_metrics, quantitative_errors

__all__ = [
    "SELECT_RULES",
    "MapsReference",
    "load_maps_reference",
    "mean_metrics",
    "selection_score",
    "val_metrics",
]

#: Checkpoint selection rules (module notes).
SELECT_RULES = ("psnr", "error-ratio")


@dataclass(frozen=True)
class MapsReference:
    """What a validation subject's T1/T2 errors need from its scan.

    Attributes
    ----------
    reference : Reference
        Ground-truth T1/T2 (ms) and tissue labels.
    b1 : Tensor, shape (x, y, z), float32, or None
    """

    reference: Any
    b1: torch.Tensor | None


def load_maps_reference(folder: str | Path, name: str) -> MapsReference:
    """Read the ground truth and B1 of ``folder/<name>.h5`` (a simulated scan with ``reference/``).

    Only the image-space arrays are read (:func:`spurig_core.io_probe.scan_maps`, with
    :func:`~spurig_core.io.load_scan`'s checks of what it reads), not the k-space: a 48³ training
    scan is ≈ 220 MB, and a run with the maps term reads one per training subject at start-up.

    Raises
    ------
    InputError
        When the scan is missing or has no reference.
    """
    from ..data import Reference
    from ..io_probe import scan_maps

    path = Path(folder) / f"{name}.h5"
    if not path.exists():
        raise InputError(f"val_scans: {path} does not exist (the validation subject's scan)")
    _, maps = scan_maps(path)
    parts = ("t1_ms", "t2_ms", "pd", "tissue")
    if not all(f"reference/{k}" in maps for k in parts):
        raise InputError(f"val_scans: {path} has no reference/ (ground truth)")
    reference = Reference(**{k: torch.from_numpy(maps[f"reference/{k}"]) for k in parts})
    b1 = maps.get("b1")
    return MapsReference(reference, None if b1 is None else torch.from_numpy(b1))


@torch.no_grad()
def val_metrics(out: torch.Tensor, ex: Any, ref: MapsReference | None = None) -> dict[str, float]:
    """Mean PSNR c1–c5 (dB) of one output, and its T1/T2 errors (GM+WM, fractions) with ``ref``.

    Parameters
    ----------
    out : Tensor, shape (basis, x, y, z), complex
        The unroll's output for the subject ``ex`` (:class:`~.datasets.Example`).
    ex : Example
    ref : MapsReference, optional

    Returns
    -------
    dict
        ``{"psnr": dB}``, plus ``"t1"`` and ``"t2"`` when ``ref`` is given.
    """
    from ..matching import match_maps

    out = out.to(torch.complex64)
    res = {"psnr": float(np.mean(coefficient_metrics(out, ex.target, ex.tissue)["psnr"]))}
    if ref is not None:
        maps = match_maps(out, ex.basis, b1=ref.b1, sequence=ex.sequence)
        q = quantitative_errors(maps.t1_ms, maps.t2_ms, ref.reference, per_voxel=False)
        res["t1"], res["t2"] = float(q["t1_rel_error"]), float(q["t2_rel_error"])
    return res


def selection_score(metrics: dict[str, float], base: dict[str, float], rule: str) -> float:
    """Score of a validation (higher is better) under ``rule`` (module notes).

    Parameters
    ----------
    metrics, base : dict
        :func:`val_metrics` means of the output and of the state at update 0.
    rule : {"psnr", "error-ratio"}

    Raises
    ------
    InputError
        For an unknown rule, or ``"error-ratio"`` without T1/T2 in both dicts.
    """
    if rule == "psnr":
        return float(metrics["psnr"])
    if rule != "error-ratio":
        raise InputError(f"select: {rule!r} is not one of {', '.join(SELECT_RULES)}")
    if not all(k in d for d in (metrics, base) for k in ("t1", "t2")):
        raise InputError("select = 'error-ratio' needs T1/T2 errors: set val_scans")
    image = 10 ** (-(metrics["psnr"] - base["psnr"]) / 20)
    ratio = (image + metrics["t1"] / base["t1"] + metrics["t2"] / base["t2"]) / 3
    return -ratio if math.isfinite(ratio) else -math.inf


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of :func:`val_metrics` dicts (the validation subjects)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
