"""Evaluation metrics of paper 2.5 and SPEC §5: coefficient PSNR/SSIM, T1/T2 errors, statistics.

Definitions (followed exactly by :func:`evaluate`)
---------------------------------------------------
Reference coefficients
    ``Φ̃ᴴ (pd · signal(t1, t2, b1))`` per voxel, with the EPG signals of SPEC §4
    (:func:`spurig_core.physics.simulate_signals`) for the reference maps of the scan
    (``reference/``) and the scan's own sequence and B1 map (B1 = 1 when absent).  Background voxels
    (tissue 0, or a non-positive T1 or T2) are 0.  Partial-volume voxels use the stored (dominant)
    T1/T2 values, so near tissue boundaries the reference is the single-compartment signal.
PSNR and SSIM
    Of the *magnitudes* ``|c_j|`` against ``|c_j^ref|`` for each balanced coefficient ``j``,
    computed per axial slice (the last axis, ``z``) over the slices that contain brain (any voxel
    of tissue 1–3), each over the whole slice.  The peak of coefficient ``j`` is the maximum of
    ``|c_j^ref|`` over the whole reference volume (one peak per coefficient, shared by all slices):
    ``PSNR = 10 log10(peak² / MSE_slice)`` in dB.  SSIM is scikit-image's
    :func:`~skimage.metrics.structural_similarity` in 2D on each slice with ``data_range = peak``
    and its defaults otherwise (7×7 uniform window, sample covariances, K1 = 0.01, K2 = 0.03; a
    smaller odd window only for slices under 7 voxels wide).  Tables report the mean ± standard
    deviation across slices (paper Table 1); the per-slice values are kept for the
    Wilcoxon tests.
T1/T2 errors
    ``|T − T_ref| / T_ref`` per voxel over grey and white matter (tissue 2–3; CSF and other tissue
    excluded), as fractions (not %); mean, standard deviation and per-voxel values, plus the mean
    per tissue (CSF, GM, WM) for reference.
Statistics
    Two-sided Wilcoxon signed-rank tests (:func:`scipy.stats.wilcoxon`) between two methods' paired
    per-slice or per-voxel values (:func:`spurig_core.metrics_stats.wilcoxon_p`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .data import FispSequence, Reference, Result, Scan
from .durations import duration_name
from .errors import InputError
from .progress import Callback, emit

__all__ = [
    "BRAIN_LABELS",
    "QUANT_LABELS",
    "brain_slices",
    "coefficient_metrics",
    "evaluate",
    "format_metrics",
    "neighbour_labels",
    "psnr",
    "quantitative_errors",
    "reference_coefficients",
]

#: Tissue labels that make a slice a brain slice (CSF, GM, WM; SPEC §5).
BRAIN_LABELS: tuple[int, ...] = (1, 2, 3)
#: Tissue labels over which T1/T2 errors are averaged (GM, WM; CSF excluded; SPEC §5).
QUANT_LABELS: tuple[int, ...] = (2, 3)
_TISSUE_NAMES = {1: "CSF", 2: "GM", 3: "WM"}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def brain_slices(tissue: Any, *, labels: Sequence[int] = BRAIN_LABELS) -> np.ndarray:
    """Return the indices of axial slices (last axis) holding any voxel with a label in ``labels``.

    Parameters
    ----------
    tissue : array-like or Tensor, shape (x, y, z), int
        Tissue labels of SPEC §3.

    Returns
    -------
    ndarray, shape (n_slices,), int64
    """
    t = _to_numpy(tissue)
    if t.ndim != 3:
        raise InputError(f"tissue: expected shape (x, y, z), got {t.shape}")
    has = np.isin(t, np.asarray(labels)).any(axis=(0, 1))
    return np.flatnonzero(has).astype(np.int64)


def neighbour_labels(tissue: torch.Tensor) -> dict[int, torch.Tensor]:
    """Return, per label of ``tissue``, the voxels with a 6-neighbour of that label.

    Parameters
    ----------
    tissue : Tensor, shape (x, y, z), integer labels (SPEC §3)
        The volume's edges are replicated, so its border is no boundary.

    Returns
    -------
    dict of int to Tensor, shape (x, y, z), bool
        One entry per label present.
    """
    t = tissue.long()
    idx = [torch.arange(-1, n + 1).clamp(0, n - 1) for n in t.shape]
    p = t[idx[0]][:, idx[1]][:, :, idx[2]]  # padded by one voxel, edges replicated
    nx, ny, nz = t.shape
    shifted = [p[lo : lo + nx, 1 : 1 + ny, 1 : 1 + nz] for lo in (0, 2)]
    shifted += [p[1 : 1 + nx, lo : lo + ny, 1 : 1 + nz] for lo in (0, 2)]
    shifted += [p[1 : 1 + nx, 1 : 1 + ny, lo : lo + nz] for lo in (0, 2)]
    return {int(lab): torch.stack([s == lab for s in shifted]).any(0) for lab in torch.unique(t)}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std; ``(inf, nan)`` when a value is infinite (a perfect slice)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if np.isinf(v).any():
        return float(v.mean()), math.nan
    return float(v.mean()), float(v.std())


def psnr(image: np.ndarray, reference: np.ndarray, peak: float) -> float:
    """``10 log10(peak² / mean((image − reference)²))`` in dB (``inf`` for identical inputs)."""
    diff = np.asarray(image, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(float(peak) ** 2 / mse)


def _ssim(image: np.ndarray, reference: np.ndarray, peak: float) -> float:
    from skimage.metrics import structural_similarity

    win = min(7, *image.shape)
    if win % 2 == 0:
        win -= 1
    if win < 3:
        return math.nan
    return float(
        structural_similarity(
            reference.astype(np.float64),
            image.astype(np.float64),
            data_range=float(peak),
            win_size=win,
        )
    )


# ----------------------------------------------------------------------------------------------
# reference coefficients
# ----------------------------------------------------------------------------------------------
def reference_coefficients(
    reference: Reference,
    basis: torch.Tensor,
    *,
    b1: torch.Tensor | float | None = None,
    sequence: FispSequence | None = None,
    chunk: int = 4096,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Return reference subspace coefficients ``Φ̃ᴴ (pd · signal(t1, t2, b1))`` (SPEC §5).

    Signals are simulated only for the distinct ``(t1, t2, b1)`` triples of the foreground voxels
    (tissue > 0 and T1, T2 > 0), ``chunk`` at a time; background voxels are 0.

    Parameters
    ----------
    reference : Reference
        Ground-truth ``t1_ms``, ``t2_ms`` (ms), ``pd`` (complex) and ``tissue``, shape (x, y, z).
    basis : Tensor, shape (tr, basis), complex64
        The (balanced) temporal basis ``Φ̃`` the coefficients refer to.
    b1 : Tensor, shape (x, y, z), float, or float, optional
        Relative B1+ (1 when ``None``).
    sequence : FispSequence, optional
        The acquisition (default sequence of SPEC §4 when ``None``).
    chunk : int
        Distinct parameter triples simulated at once (bounds memory).
    callback : Callback, optional
        Receives ``emit(callback, "reference", done, total)`` after each chunk.

    Returns
    -------
    Tensor, shape (basis, x, y, z), complex64

    Raises
    ------
    InputError
        When shapes disagree (maps, B1, or the basis length against the sequence).
    """
    t1 = _to_numpy(reference.t1_ms).astype(np.float32)
    t2 = _to_numpy(reference.t2_ms).astype(np.float32)
    tissue = _to_numpy(reference.tissue)
    pd = _to_numpy(reference.pd).astype(np.complex64)
    shape = t1.shape
    if t1.ndim != 3 or any(a.shape != shape for a in (t2, tissue, pd)):
        raise InputError(
            f"reference: t1_ms {t1.shape}, t2_ms {t2.shape}, pd {pd.shape} and tissue "
            f"{tissue.shape} must share one (x, y, z) shape"
        )
    _check_reference_values(t1, t2, tissue)
    if basis.ndim != 2:
        raise InputError(f"basis: expected shape (tr, basis), got {tuple(basis.shape)}")
    n_tr, k = (int(s) for s in basis.shape)
    seq = FispSequence.default() if sequence is None else sequence
    if seq.n_tr != n_tr:
        raise InputError(
            f"basis: has {n_tr} time points but the sequence has {seq.n_tr} repetitions"
        )
    b1_arr = _b1_map(b1, shape)
    fg = (tissue > 0) & (t1 > 0) & (t2 > 0) & (b1_arr > 0)
    out = np.zeros((k, *shape), dtype=np.complex64)
    idx = np.flatnonzero(fg)
    if idx.size == 0:
        return torch.from_numpy(out)
    # (t2, t1, b1) rows: np.unique sorts by T2 first, so each chunk holds similar T2 (EPG orders)
    triples = np.stack([t2.reshape(-1)[idx], t1.reshape(-1)[idx], b1_arr.reshape(-1)[idx]], axis=1)
    uniq, inverse = np.unique(triples, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    # Φ̃ᴴ s = Σ_t conj(Φ̃[t, j]) s[t]: rows of signals times conj(Φ̃)
    phi_conj = basis.detach().to("cpu", torch.complex64).conj()
    proj = _projected_signals(uniq, phi_conj, seq, max(1, int(chunk)), callback)
    vals = proj[inverse] * pd.reshape(-1)[idx][:, None]  # (n_fg, basis)
    flat = out.reshape(k, -1)
    flat[:, idx] = vals.T
    return torch.from_numpy(out)


def _b1_map(b1: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``b1`` (None: 1, a number, or a map of ``shape``) as a checked float32 map."""
    from .io_fields import check_magnitude, check_range

    if b1 is None:
        b1_arr = np.ones(shape, dtype=np.float32)
    elif isinstance(b1, (int, float)):
        b1_arr = np.full(shape, float(b1), dtype=np.float32)
    else:
        b1_arr = _to_numpy(b1).astype(np.float32)
        if b1_arr.shape != shape:
            raise InputError(f"b1: has shape {b1_arr.shape}, expected {shape}")
    check_magnitude(b1_arr, "b1", "reference", kind="map")
    check_range(b1_arr, "b1", "reference")
    return b1_arr


def _projected_signals(
    triples: np.ndarray,
    phi_conj: torch.Tensor,
    seq: Any,
    step: int,
    callback: Callback | None,
) -> np.ndarray:
    """``Φ̃ᴴ signal`` ``(n, basis)`` of ``(t2, t1, b1)`` rows ``(n, 3)``, ``step`` rows at a time."""
    from .physics import simulate_signals

    proj = np.empty((triples.shape[0], phi_conj.shape[1]), dtype=np.complex64)
    for i0 in range(0, triples.shape[0], step):
        u = torch.from_numpy(triples[i0 : i0 + step])
        sig = simulate_signals(u[:, 1], u[:, 0], u[:, 2], seq)
        proj[i0 : i0 + step] = (sig.to(torch.complex64) @ phi_conj).numpy()
        done = min(triples.shape[0], i0 + step)
        emit(callback, "reference", done, triples.shape[0], "reference coefficients")
    return proj


def _check_reference_values(t1: np.ndarray, t2: np.ndarray, tissue: np.ndarray) -> None:
    """Ground truth in its physical range (T1 0–10 000 ms, T2 0–5 000 ms, labels 0–4)."""
    from .io_fields import check_magnitude, check_range

    for name, a in (("reference/t1_ms", t1), ("reference/t2_ms", t2)):
        check_magnitude(a, name, "reference", kind="map")
        check_range(a, name, "reference")
    check_range(tissue, "reference/tissue", "reference")


# ----------------------------------------------------------------------------------------------
# coefficient metrics
# ----------------------------------------------------------------------------------------------
def coefficient_metrics(
    coefficients: torch.Tensor | np.ndarray,
    reference_coefficients: torch.Tensor | np.ndarray,
    tissue: torch.Tensor | np.ndarray,
) -> dict[str, Any]:
    """PSNR and SSIM of each coefficient's magnitude over the brain slices (SPEC §5, paper 2.5).

    Parameters
    ----------
    coefficients, reference_coefficients : Tensor or ndarray, shape (basis, x, y, z), complex
        Reconstructed and reference (balanced) coefficients.
    tissue : Tensor or ndarray, shape (x, y, z), int
        Tissue labels; slices (last axis) with any label 1–3 are evaluated.

    Returns
    -------
    dict
        ``"psnr"``, ``"ssim"``: list (basis,) of means over slices (dB / unitless);
        ``"psnr_std"``, ``"ssim_std"``: list (basis,) of standard deviations across slices
        (population, ``ddof=0``); ``"psnr_slices"``, ``"ssim_slices"``: list (basis,) of lists
        (n_slices,); ``"slices"``: the slice indices; ``"peak"``: list (basis,) of the peaks
        (maximum of the reference magnitude over the volume).

    Raises
    ------
    InputError
        When the shapes disagree or no slice contains brain.
    """
    rec = np.abs(_to_numpy(coefficients)).astype(np.float64)
    ref = np.abs(_to_numpy(reference_coefficients)).astype(np.float64)
    tis = _to_numpy(tissue)
    if rec.ndim != 4 or rec.shape != ref.shape:
        raise InputError(
            f"coefficients: shape {rec.shape} does not match the reference {ref.shape} "
            "(expected (basis, x, y, z))"
        )
    if tis.shape != rec.shape[1:]:
        raise InputError(
            f"tissue: shape {tis.shape} does not match the coefficients {rec.shape[1:]}"
        )
    slices = brain_slices(tis)
    if slices.size == 0:
        raise InputError("reference/tissue: no axial slice contains brain (labels 1-3)")
    out: dict[str, Any] = {
        "slices": [int(s) for s in slices],
        "peak": [],
        "psnr": [],
        "ssim": [],
        "psnr_std": [],
        "ssim_std": [],
        "psnr_slices": [],
        "ssim_slices": [],
    }
    for j in range(rec.shape[0]):
        peak = float(ref[j].max())
        if peak <= 0:
            raise InputError(
                f"reference coefficient c{j + 1} is zero everywhere; PSNR is undefined"
            )
        p = [psnr(rec[j, :, :, z], ref[j, :, :, z], peak) for z in slices]
        s = [_ssim(rec[j, :, :, z], ref[j, :, :, z], peak) for z in slices]
        out["peak"].append(peak)
        out["psnr_slices"].append(p)
        out["ssim_slices"].append(s)
        for name, vals in (("psnr", p), ("ssim", s)):
            mean, std = _mean_std(vals)
            out[name].append(mean)
            out[f"{name}_std"].append(std)
    return out


# ----------------------------------------------------------------------------------------------
# quantitative errors
# ----------------------------------------------------------------------------------------------
def quantitative_errors(
    t1_ms: torch.Tensor | np.ndarray,
    t2_ms: torch.Tensor | np.ndarray,
    reference: Reference,
    *,
    labels: Sequence[int] = QUANT_LABELS,
    per_voxel: bool = True,
) -> dict[str, Any]:
    """Relative errors ``|T − T_ref| / T_ref`` of T1 and T2 (SPEC §5, paper Table 2).

    Parameters
    ----------
    t1_ms, t2_ms : Tensor or ndarray, shape (x, y, z)
        Estimated maps in ms.
    reference : Reference
        Ground truth; voxels with tissue in ``labels`` and positive reference T1 and T2 count.
    labels : sequence of int
        Tissue labels averaged over (grey and white matter by default; CSF excluded).
    per_voxel : bool
        Whether to keep the per-voxel values (``"t1_rel_error_voxels"``, ``"t2_rel_error_voxels"``,
        in C order of the masked voxels, for paired statistics).

    Returns
    -------
    dict
        ``"t1_rel_error"``, ``"t2_rel_error"`` (means, fractions), ``"t1_rel_error_std"``,
        ``"t2_rel_error_std"`` (population std across voxels), ``"n_voxels"``, optionally the
        per-voxel lists, and ``"per_tissue"``: ``{"CSF"|"GM"|"WM": {"t1": mean, "t2": mean,
        "n_voxels": n}}`` (means are ``nan`` for an absent tissue).

    Raises
    ------
    InputError
        When the shapes disagree or no voxel has a label in ``labels``.
    """
    t1 = _to_numpy(t1_ms).astype(np.float64)
    t2 = _to_numpy(t2_ms).astype(np.float64)
    r1 = _to_numpy(reference.t1_ms).astype(np.float64)
    r2 = _to_numpy(reference.t2_ms).astype(np.float64)
    tis = _to_numpy(reference.tissue)
    if not (t1.shape == t2.shape == r1.shape == r2.shape == tis.shape):
        raise InputError(
            f"t1_ms/t2_ms: shapes {t1.shape}, {t2.shape} do not match the reference {r1.shape}"
        )
    valid = (r1 > 0) & (r2 > 0)
    e1 = np.zeros_like(t1)
    e2 = np.zeros_like(t2)
    e1[valid] = np.abs(t1[valid] - r1[valid]) / r1[valid]
    e2[valid] = np.abs(t2[valid] - r2[valid]) / r2[valid]
    mask = np.isin(tis, np.asarray(labels)) & valid
    n = int(mask.sum())
    if n == 0:
        raise InputError(
            f"reference/tissue: no voxel with labels {tuple(labels)} to evaluate T1/T2"
        )
    v1, v2 = e1[mask], e2[mask]
    out: dict[str, Any] = {
        "t1_rel_error": float(v1.mean()),
        "t2_rel_error": float(v2.mean()),
        "t1_rel_error_std": float(v1.std()),
        "t2_rel_error_std": float(v2.std()),
        "n_voxels": n,
    }
    if per_voxel:
        out["t1_rel_error_voxels"] = v1.tolist()
        out["t2_rel_error_voxels"] = v2.tolist()
    per: dict[str, dict[str, float | int]] = {}
    for lab, name in _TISSUE_NAMES.items():
        m = (tis == lab) & valid
        cnt = int(m.sum())
        per[name] = {
            "t1": float(e1[m].mean()) if cnt else math.nan,
            "t2": float(e2[m].mean()) if cnt else math.nan,
            "n_voxels": cnt,
        }
    out["per_tissue"] = per
    return out


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------
def evaluate(
    result: Result,
    scan: Scan,
    *,
    reference_coeffs: torch.Tensor | None = None,
    per_voxel: bool = True,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Return the metrics of SPEC §5 for one result against its simulated scan's ground truth.

    Parameters
    ----------
    result : Result
        Coefficients ``(basis, x, y, z)`` with their basis ``(tr, basis)`` and, after matching,
        ``t1_ms``/``t2_ms`` maps.
    scan : Scan
        The scan, with ``reference/`` (its sequence and B1 map are used for the reference signals).
    reference_coeffs : Tensor, shape (basis, x, y, z), complex64, optional
        Precomputed :func:`reference_coefficients` for this scan and basis (cohort evaluation
        reuses them across methods).
    per_voxel : bool
        Keep the per-voxel T1/T2 errors (needed for paired statistics; large for big volumes).
    callback : Callback, optional
        Progress of the reference simulation.

    Returns
    -------
    dict
        JSON-serialisable: ``method``, ``groups``, ``duration``, ``runtime_s``, ``subject`` (scan
        file stem), ``source``, the :func:`coefficient_metrics` entries (``psnr``, ``ssim`` — one
        float per coefficient — their ``_std`` and ``_slices``, ``slices``, ``peak``) and, when the
        result has maps, the :func:`quantitative_errors` entries.  PSNR is ``inf`` for a perfect
        slice (``json.dumps`` writes ``Infinity``).

    Raises
    ------
    InputError
        When the scan has no ``reference/``, or shapes do not match.
    """
    where = str(scan.path) if scan.path is not None else "scan"
    if scan.reference is None:
        raise InputError(
            f"{where}: has no reference/ ground truth; evaluation needs a simulated scan"
        )
    if tuple(result.matrix) != tuple(scan.matrix):
        raise InputError(
            f"result: matrix {result.matrix} does not match the scan's {tuple(scan.matrix)}"
        )
    if result.basis.ndim != 2 or result.basis.shape[1] != result.coefficients.shape[0]:
        raise InputError(
            f"result: basis {tuple(result.basis.shape)} does not fit coefficients "
            f"{tuple(result.coefficients.shape)}"
        )
    if int(result.basis.shape[0]) != scan.sequence.n_tr:
        raise InputError(
            f"result: basis has {int(result.basis.shape[0])} time points, the scan's sequence "
            f"has {scan.sequence.n_tr} repetitions"
        )
    ref = reference_coeffs
    if ref is None:
        ref = reference_coefficients(
            scan.reference, result.basis, b1=scan.b1, sequence=scan.sequence, callback=callback
        )
    elif tuple(ref.shape) != tuple(result.coefficients.shape):
        raise InputError(
            f"reference coefficients {tuple(ref.shape)} do not match the result "
            f"{tuple(result.coefficients.shape)}"
        )
    out: dict[str, Any] = {
        "method": result.method,
        "groups": int(result.groups),
        "duration": duration_name(result.groups),
        "runtime_s": float(result.runtime_s),
        "subject": scan.path.stem if scan.path is not None else None,
        "source": dict(result.source) if result.source else None,
    }
    label = (result.config or {}).get("label")
    if label:  # a variant of a method (e.g. an ablation), shown as its own column
        out["label"] = str(label)
    out.update(coefficient_metrics(result.coefficients, ref, scan.reference.tissue))
    if result.t1_ms is not None and result.t2_ms is not None:
        out.update(
            quantitative_errors(result.t1_ms, result.t2_ms, scan.reference, per_voxel=per_voxel)
        )
    return out


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Return a printable plain-text table of :func:`evaluate`'s metrics.

    Parameters
    ----------
    metrics : mapping
        An :func:`evaluate` dictionary.

    Returns
    -------
    str
        A header line (method, groups, runtime), one row each for PSNR (dB) and SSIM with one
        ``mean ± std`` column per balanced coefficient, and, when present, the T1/T2 relative errors
        in % over GM+WM and per tissue.
    """
    k = len(metrics.get("psnr", []))
    dur = metrics.get("duration")
    head = (
        f"method {metrics.get('method', '?')}, {metrics.get('groups', '?')} groups"
        + (f" ({dur})" if dur else "")
        + f", reconstruction {float(metrics.get('runtime_s', 0.0)):.1f} s, "
        + f"{len(metrics.get('slices', []))} brain slices"
    )
    cols = [f"c{j + 1}" for j in range(k)]
    rows = [["", *cols]]
    for name, unit, fmt in (
        ("psnr", "PSNR (dB)", "{:.2f} ± {:.2f}"),
        ("ssim", "SSIM", "{:.3f} ± {:.3f}"),
    ):
        if name in metrics:
            rows.append(
                [
                    unit,
                    *(
                        fmt.format(m, s)
                        for m, s in zip(metrics[name], metrics[f"{name}_std"], strict=True)
                    ),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    lines += [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    if "t1_rel_error" in metrics:
        lines += [
            "",
            f"T1 relative error (GM+WM): {100 * metrics['t1_rel_error']:.2f} ± "
            f"{100 * metrics['t1_rel_error_std']:.2f} %   ({metrics['n_voxels']} voxels)",
            f"T2 relative error (GM+WM): {100 * metrics['t2_rel_error']:.2f} ± "
            f"{100 * metrics['t2_rel_error_std']:.2f} %",
        ]
        per = metrics.get("per_tissue", {})
        parts = [
            f"{name} T1 {100 * v['t1']:.1f} % / T2 {100 * v['t2']:.1f} %"
            for name, v in per.items()
            if v.get("n_voxels")
        ]
        if parts:
            lines.append("per tissue: " + ", ".join(parts))
    return "\n".join(lines)
