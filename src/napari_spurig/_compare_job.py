"""The Compare widget's job, headless: the QA views of several results against a reference.

:func:`compare_job` loads a simulated scan's ground truth and the chosen result stores and builds
the layers of four views, all with readable names (they are the panel titles; plain words, not
``|α̃|``: napari's canvas font draws no combining tilde):

``coefficients``
    Reference and each result's ``|α̃|`` in the top row, their magnified errors below.
``T1/T2``
    Reference and each matched result's T1 [ms], the T1 error in %, T2 [ms], the T2 error in %.
``difference``
    Two results A and B: ``|α̃_A| − |α̃_B|`` and, when both are matched, ``T1_A − T1_B`` and
    ``T2_A − T2_B`` in ms (diverging colormap, symmetric limits); made by :func:`difference_layers`.
``iterations``
    Each result's saved iterates (``--save-iterations``: SPUR-iG's unroll steps, FISTA's iterates
    of LLR) side by side on one ``iteration`` slider, with their magnified errors below, and the
    PSNR of every step against the reference (:attr:`CompareOutput.step_psnr`).

It also returns the metrics table (PSNR/SSIM and T1/T2 errors overall and per tissue) computed
by :func:`spurig_core.pipeline.evaluate`, so the numbers agree with ``spurig evaluate``.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import (
    T1_COLORMAP,
    T1_LIMITS_MS,
    T2_COLORMAP,
    T2_LIMITS_MS,
    TISSUE_COLORS,
    LayerDataTuple,
    black_zero,
    coefficient_layer,
    error_layer,
    magnitude_limits,
)

__all__ = [
    "ERROR_LIMITS_PCT",
    "VIEWS",
    "CompareOutput",
    "compare_job",
    "difference_layers",
    "result_labels",
]

#: The views of the Compare widget, in the order of its selector.
VIEWS: tuple[str, ...] = ("coefficients", "T1/T2", "difference", "iterations")
#: Colour range of the relative T1/T2 error maps (%).
ERROR_LIMITS_PCT = (0.0, 50.0)

Event = Any


@dataclass
class CompareOutput:
    """What the Compare widget shows.

    Attributes
    ----------
    layers : list of layer data tuples
        The ``coefficients`` view: reference ``|α̃|``, each result's ``|α̃|``, the reference
        tissue labels, then each result's magnified error (a ``(2, n + 1)`` grid).
    rows : list of dict
        One row per result: ``name``, ``method``, ``groups``, ``psnr``/``ssim`` (per coefficient)
        and their means, ``t1_rel_error``/``t2_rel_error`` and ``per_tissue`` (``None`` / empty
        when the result is not matched), as :func:`spurig_core.pipeline.evaluate` returns them.
    metrics : list of dict
        The raw dictionaries returned by ``pipeline.evaluate``.
    views : dict
        View name (:data:`VIEWS`) → its layer data tuples (``coefficients`` is :attr:`layers`).
    grids : dict
        View name → napari grid shape ``(rows, columns)``.
    step_psnr : dict
        Result label → mean PSNR (dB) of each saved iterate against the reference.
    labels : list of str
        The results' labels (panel titles), in order.
    paths : list of str
        The result stores, in order.
    voxel_size_mm : tuple of 3 float
    notes : list of str
        What a view could not show (e.g. results without maps).
    """

    layers: list[LayerDataTuple]
    rows: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    views: dict[str, list[LayerDataTuple]] = field(default_factory=dict)
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)
    step_psnr: dict[str, list[float]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    notes: list[str] = field(default_factory=list)


def result_labels(paths: list[str | Path]) -> list[str]:
    """Readable, unique panel titles: the store's name, with its folder when names repeat."""
    stems = [Path(p).name.removesuffix(".zarr") for p in paths]
    out = []
    for p, stem in zip(paths, stems, strict=True):
        out.append(stem if stems.count(stem) == 1 else f"{Path(p).parent.name}/{stem}")
    if len(set(out)) < len(out):  # same folder names too: number them
        out = [f"{i + 1}: {s}" for i, s in enumerate(out)]
    return out


def _mean(values: Any) -> float | None:
    if values is None:
        return None
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(a.mean()) if a.size else None


def _image(data: Any, name: str, vox: Any, cmap: Any, limits: Any, kind: str) -> LayerDataTuple:
    from ._layers import _units

    meta = {
        "name": name,
        "scale": tuple(float(v) for v in vox),
        "units": _units(3),
        "colormap": cmap,
        "contrast_limits": tuple(float(v) for v in limits),
        "metadata": {"spurig": {"kind": "compare", "role": kind}},
    }
    return (np.asarray(data, dtype=np.float32), meta, "image")


def _tissue(tissue: np.ndarray, name: str, vox: Any) -> LayerDataTuple:
    from ._layers import _units

    meta = {
        "name": name,
        "scale": tuple(float(v) for v in vox),
        "units": _units(3),
        "colormap": TISSUE_COLORS,
        "metadata": {"spurig": {"kind": "compare", "role": "tissue"}},
    }
    return (tissue, meta, "labels")


def _rel_error_pct(value: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``100 |value − ref| / ref`` where the reference is positive, 0 elsewhere."""
    out = np.zeros_like(ref, dtype=np.float32)
    inside = ref > 0
    out[inside] = 100.0 * np.abs(value[inside] - ref[inside]) / ref[inside]
    return out


def _maps_view(
    scan: Any, results: list[Any], labels: list[str], vox: Any
) -> tuple[list[LayerDataTuple], tuple[int, int], list[str]]:
    """Layers of the T1/T2 view (4 rows: T1, T1 error %, T2, T2 error %) and its grid."""
    ref = scan.reference
    tissue = ref.tissue.numpy().astype(np.uint8)
    matched = [(lab, r) for lab, r in zip(labels, results, strict=True) if r.t1_ms is not None]
    notes = [
        f"{lab}: no T1/T2 maps (run Quantitative maps › Match)"
        for lab, r in zip(labels, results, strict=True)
        if r.t1_ms is None
    ]
    rows: list[LayerDataTuple] = []
    for key, unit, cmap, limits in (
        ("t1_ms", "T1", T1_COLORMAP, T1_LIMITS_MS),
        ("t2_ms", "T2", black_zero(T2_COLORMAP), T2_LIMITS_MS),
    ):
        r_map = getattr(ref, key).numpy().astype(np.float32)
        r_map = np.where(tissue > 0, r_map, 0.0)
        rows.append(_image(r_map, f"reference · {unit} [ms]", vox, cmap, limits, unit.lower()))
        for lab, r in matched:
            rows.append(
                _image(
                    np.asarray(getattr(r, key)),
                    f"{lab} · {unit} [ms]",
                    vox,
                    cmap,
                    limits,
                    unit.lower(),
                )
            )
        rows.append(_tissue(tissue, f"reference tissue · {unit} row", vox))
        for lab, r in matched:
            err = _rel_error_pct(np.asarray(getattr(r, key), np.float32), r_map)
            rows.append(
                _image(err, f"{lab} · Δ{unit} [%]", vox, "magma", ERROR_LIMITS_PCT, "error")
            )
    return rows, (4, len(matched) + 1), notes


def _pad_steps(stack: np.ndarray, n: int) -> np.ndarray:
    """``stack`` (steps, ...) padded to ``n`` steps by repeating its last iterate."""
    if stack.shape[0] >= n:
        return stack
    pad = np.repeat(stack[-1:], n - stack.shape[0], axis=0)
    return np.concatenate([stack, pad], axis=0)


#: Largest iterate stack (complex values) the iterations view reads (≈ 400 MB).
MAX_ITERATION_VALUES = 50_000_000


def _iterations_view(
    scan: Any,
    paths: list[str | Path],
    labels: list[str],
    ref_mag: np.ndarray,
    limits: tuple[float, float],
    factor: float,
    reference_coeffs: Any,
) -> tuple[list[LayerDataTuple], tuple[int, int], dict[str, list[float]], list[str]]:
    """Show the iterates side by side with their errors below, and each step's mean PSNR."""
    import torch

    from spurig_core.io import load_result, result_iterations_shape
    from spurig_core.metrics import evaluate

    stacks: list[tuple[str, np.ndarray]] = []
    psnr: dict[str, list[float]] = {}
    notes = []
    for lab, path in zip(labels, paths, strict=True):
        shape = result_iterations_shape(path)
        if shape is None:
            notes.append(f"{lab}: no saved iterations (Reconstruct with 'save iterations')")
            continue
        if int(np.prod(shape)) > MAX_ITERATION_VALUES:
            notes.append(f"{lab}: iterations {shape} too large for the iterations view")
            continue
        r = load_result(path)
        assert r.iterations is not None
        its = r.iterations.numpy()
        steps = []
        for k in range(its.shape[0]):
            step = r.replace(coefficients=torch.from_numpy(its[k]), t1_ms=None, t2_ms=None, pd=None)
            m = evaluate(step, scan, reference_coeffs=reference_coeffs, per_voxel=False)
            steps.append(float(np.mean(m["psnr"])))
        psnr[lab] = steps
        stacks.append((lab, np.abs(its).astype(np.float32)))
    if not stacks:
        return [], (1, 1), psnr, notes
    n = max(s.shape[0] for _, s in stacks)
    top, bottom = [], []
    vox = scan.voxel_size_mm
    for lab, s in stacks:
        s = _pad_steps(s, n)
        meta = {"kind": "compare", "role": "iterations"}
        top.append(
            coefficient_layer(
                s,
                name=f"{lab} · iterates",
                voxel_size_mm=vox,
                contrast_limits=limits,
                iterations=True,
                metadata=meta,
            )
        )
        err = factor * np.abs(s - ref_mag[None])
        bottom.append(
            coefficient_layer(
                err,
                name=f"{lab} · iterate error ×{factor:g}",
                voxel_size_mm=vox,
                contrast_limits=limits,
                iterations=True,
                metadata={**meta, "role": "error"},
            )
        )
    return [*top, *bottom], (2, len(stacks)), psnr, notes


def difference_layers(output: CompareOutput, a: int, b: int) -> list[LayerDataTuple]:
    """Return the ``difference`` view of results ``a`` and ``b`` (indices into ``output.paths``).

    Returns
    -------
    list of layer data tuples
        ``|α̃_A| − |α̃_B|`` (basis, x, y, z) and, when both are matched, ``T1_A − T1_B`` and
        ``T2_A − T2_B`` (ms); colormap ``PiYG`` (green: A larger), limits symmetric about 0.
    """
    from spurig_core.io import load_result

    ra, rb = (load_result(output.paths[i], lazy=True) for i in (a, b))
    la, lb = output.labels[a], output.labels[b]
    vox = output.voxel_size_mm
    da = ra.coefficients.abs().numpy() - rb.coefficients.abs().numpy()
    hi = float(np.percentile(np.abs(da), 99.5)) or 1.0
    lay = coefficient_layer(
        da.astype(np.float32),
        name=f"{la} − {lb} · coefficients",
        voxel_size_mm=vox,
        contrast_limits=(-hi, hi),
        metadata={"kind": "compare", "role": "difference"},
    )
    lay[1]["colormap"] = "PiYG"
    out = [lay]
    for key, unit, span in (("t1_ms", "T1", 500.0), ("t2_ms", "T2", 50.0)):
        xa, xb = getattr(ra, key), getattr(rb, key)
        if xa is None or xb is None:
            continue
        d = np.asarray(xa, np.float32) - np.asarray(xb, np.float32)
        out.append(
            _image(d, f"{la} − {lb} · {unit} [ms]", vox, "PiYG", (-span, span), "difference")
        )
    return out


def _row(name: str, result: Any, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "method": result.method,
        "groups": result.groups,
        "psnr": list(m.get("psnr", [])),
        "ssim": list(m.get("ssim", [])),
        "psnr_mean": _mean(m.get("psnr")),
        "ssim_mean": _mean(m.get("ssim")),
        "t1_rel_error": m.get("t1_rel_error"),
        "t2_rel_error": m.get("t2_rel_error"),
        "per_tissue": dict(m.get("per_tissue") or {}),
    }


def compare_job(
    scan_path: str | Path,
    result_paths: list[str | Path],
    *,
    factor: float = 5.0,
    cancel: threading.Event | None = None,
) -> Generator[Event, None, CompareOutput]:
    """Build every view: reference, each result, errors, maps, iterations and the metrics table.

    Parameters
    ----------
    scan_path : path-like
        A simulated scan with ``reference/`` (the ground truth).
    result_paths : list of path-like
        Result stores to compare (one or more), on the scan's grid.
    factor : float
        Error magnification (5 or 10).

    Yields
    ------
    ProgressEvent
        ``compare`` steps, one per result (and one for the reference).
    """
    from spurig_core.errors import Cancelled, InputError
    from spurig_core.io import load_result, load_scan
    from spurig_core.progress import ProgressEvent

    from ._jobs import engine

    if not result_paths:
        raise InputError("compare: choose at least one result")
    total = len(result_paths) + 2
    yield ProgressEvent("compare", 0, total, "reference coefficients")
    scan = load_scan(scan_path)
    if scan.reference is None:
        raise InputError(f"{scan_path}: no reference/ ground truth to compare against")
    ref = engine("reference_coefficients")(scan)
    ref_mag = ref.detach().abs().cpu().numpy().astype(np.float32)
    vox = scan.voxel_size_mm
    limits = magnitude_limits(ref_mag)
    labels = result_labels(list(result_paths))
    meta = {"kind": "compare", "role": "reference"}
    top = [
        coefficient_layer(
            ref_mag,
            name="reference · coefficients",
            voxel_size_mm=vox,
            contrast_limits=limits,
            metadata=meta,
        )
    ]
    errors: list[LayerDataTuple] = []
    rows, metrics, results = [], [], []
    for i, (rp, lab) in enumerate(zip(result_paths, labels, strict=True), start=1):
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled by the user")
        result = load_result(rp, lazy=True)
        if result.matrix != tuple(scan.matrix):
            raise InputError(f"{rp}: matrix {result.matrix} differs from the scan's {scan.matrix}")
        m = engine("evaluate")(result, scan)
        mag = result.coefficients.abs().numpy().astype(np.float32)
        rmeta = {"kind": "compare", "role": "result", "result_path": str(rp)}
        top.append(
            coefficient_layer(
                mag,
                name=f"{lab} · coefficients",
                voxel_size_mm=vox,
                contrast_limits=limits,
                metadata=rmeta,
            )
        )
        errors.append(
            error_layer(
                mag,
                ref_mag,
                factor=factor,
                name=f"{lab} · error ×{factor:g}",
                voxel_size_mm=vox,
                contrast_limits=limits,
            )
        )
        rows.append(_row(lab, result, m))
        metrics.append(m)
        results.append(result)
        yield ProgressEvent("compare", i, total, f"evaluated {lab}")
    tissue = _tissue(scan.reference.tissue.numpy().astype(np.uint8), "reference tissue", vox)
    coeff_view = [*top, tissue, *errors]
    maps, maps_grid, notes = _maps_view(scan, results, labels, vox)
    yield ProgressEvent("compare", total - 1, total, "iterations")
    its, its_grid, step_psnr, its_notes = _iterations_view(
        scan, list(result_paths), labels, ref_mag, limits, factor, ref
    )
    yield ProgressEvent("compare", total, total, "done")
    n = len(result_paths)
    return CompareOutput(
        layers=coeff_view,
        rows=rows,
        metrics=metrics,
        views={"coefficients": coeff_view, "T1/T2": maps, "iterations": its},
        grids={"coefficients": (2, n + 1), "T1/T2": maps_grid, "iterations": its_grid},
        step_psnr=step_psnr,
        labels=labels,
        paths=[str(p) for p in result_paths],
        voxel_size_mm=tuple(float(v) for v in vox),  # type: ignore[arg-type]
        notes=notes + its_notes,
    )
