"""T1 error (GM+WM) of evaluated stores, split by what each voxel borders.

    python tools/t1_by_boundary.py data/cohort48/test data/eval21 spurig-30s llr-2min ...

For each store name (``<label>-<duration>`` of ``tools/evaluate_models.py``; ``.zarr`` optional)
and each scan of TEST_DIR, the store ``EVAL_DIR/<scan>/<name>.zarr`` is matched (B1-corrected, as
the evaluation) and its relative T1 error is averaged over the GM and WM voxels of each class:
interior (every 6-neighbour of the same label), next to CSF, next to background or "other"
(scalp, dura), next to the other of GM/WM.  A voxel with several kinds of neighbour counts once,
in that order of precedence (CSF, then other, then GM/WM).  Prints a markdown table with each
class's share of the voxels; the last column is the error over all of them (pooled over the
scans, so within ≈ 0.01 point of the evaluation's mean of per-scan errors).  ``--signed`` prints
each cell as "bias / mean abs": the mean of the signed error ``(T̂1 − T1)/T1`` too, whose sign
says which way the voxels are pulled (e.g. GM toward WM's shorter T1 at their interface).
``--contrast`` adds the column "GM/WM contrast": over every pair of 6-neighbours, one GM and one
WM, ``Σ (T̂1_GM − T̂1_WM) / Σ (T1_GM − T1_WM)`` (pooled over the scans; pairs whose reference
T1 differ by less than :data:`MIN_STEP_MS` are left out): 1 keeps the interface's T1 step, a blur
across it lowers the ratio toward 0 (the adjoint's ≈ 0.03).

``--seeds S1,S2,…`` (one per scan, in the sorted order of TEST_DIR, as ``spurig simulate --seed``)
adds the row "noise-free partial-volume coefficients": each scan's subject re-simulated from its
seed (default :class:`~spurig_core.simulation.SimulationConfig` at the scan's matrix, as the
cohort's scans), its true time series projected on the subspace, no noise, no undersampling —
what a data-faithful reconstruction tends to as the data grow.  Its error is the floor that the
partial volume leaves at the interfaces against the scans' reference (the dictionary fit of each
mixed voxel's noise-free signal, ``simulation.scan.effective_reference``).  A seed whose subject
does not reproduce the scan's tissue labels is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spurig_core.errors import InputError
from spurig_core.io import load_result, load_scan
from spurig_core.matching import match_maps
from spurig_core.metrics import neighbour_labels
from spurig_core.physics import default_basis
from spurig_core.simulation import SimulationConfig
from spurig_core.simulation.scan import subject_of_seed, true_coefficients
from spurig_core.simulation.signals import signal_subspace

#: Row name of the re-simulated, noise-free coefficients (``--seeds``).
NOISE_FREE = "noise-free partial-volume coefficients"

GM, WM, CSF = 2, 3, 1
#: Smallest reference T1 step (ms) of a GM/WM pair counted by ``--contrast``.
MIN_STEP_MS = 50.0
CLASSES = ("GM interior", "GM next to WM", "GM next to CSF", "GM next to other")
CLASSES += ("WM interior", "WM next to GM", "WM next to CSF", "WM next to other")


def boundary_classes(tissue: np.ndarray, t1: np.ndarray) -> dict[str, np.ndarray]:
    """Return a boolean mask (x, y, z) per class of :data:`CLASSES` (edges replicated)."""
    found = neighbour_labels(torch.from_numpy(tissue))
    none = np.zeros(tissue.shape, bool)
    near = {lab: found[lab].numpy() if lab in found else none for lab in range(5)}
    out = {}
    for lab, name, other in ((GM, "GM", WM), (WM, "WM", GM)):
        base = (tissue == lab) & (t1 > 0)
        csf = base & near[CSF]
        oth = base & ~csf & (near[0] | near[4])
        pair = base & ~csf & ~oth & near[other]
        out[f"{name} interior"] = base & ~csf & ~oth & ~pair
        out[f"{name} next to CSF"] = csf
        out[f"{name} next to other"] = oth
        out[f"{name} next to {'WM' if lab == GM else 'GM'}"] = pair
    return out


def interface_pairs(tissue: np.ndarray, t1_hat: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Return ``(T̂1_GM − T̂1_WM, T1_GM − T1_WM)`` of every GM/WM 6-neighbour pair, shape (2, n).

    Pairs whose reference step is below :data:`MIN_STEP_MS` are left out.
    """
    est, ref = [], []
    for ax in range(3):
        n = tissue.shape[ax] - 1
        a_t, a_h, a_r = (np.take(v, range(n), axis=ax) for v in (tissue, t1_hat, t1))
        b_t, b_h, b_r = (np.take(v, range(1, n + 1), axis=ax) for v in (tissue, t1_hat, t1))
        for sign, sel in ((1.0, (a_t == GM) & (b_t == WM)), (-1.0, (a_t == WM) & (b_t == GM))):
            est.append(sign * (a_h - b_h)[sel])
            ref.append(sign * (a_r - b_r)[sel])
    out = np.stack([np.concatenate(est), np.concatenate(ref)])
    return out[:, np.abs(out[1]) >= MIN_STEP_MS]


def noise_free_t1(scan: Any, seed: int) -> np.ndarray:
    """Return the matched T1 (ms, (x, y, z)) of the noise-free coefficients of a scan's subject.

    Raises
    ------
    InputError
        When the subject of ``seed`` does not have the scan's tissue labels.
    """
    ref = scan.reference
    cfg = SimulationConfig(matrix=int(ref.tissue.shape[0]))
    subject = subject_of_seed(cfg, seed)
    if not np.array_equal(subject.tissue, ref.tissue.numpy()):
        raise InputError(
            f"{scan.path}: seed {seed} does not reproduce its subject (other tissue labels); "
            "give the seeds of the scans in TEST_DIR's sorted order"
        )
    images, basis, _ = signal_subspace(subject, scan.sequence, cfg)
    phi = default_basis(scan.sequence)
    coef = true_coefficients(images, basis, phi).to(torch.complex64)
    m = match_maps(coef, phi, b1=scan.b1, sequence=scan.sequence)
    return m.t1_ms.numpy()


def _seeds(text: str, scans: int) -> list[int]:
    """Parse ``--seeds`` (comma-separated integers, one per scan)."""
    try:
        seeds = [int(v) for v in text.split(",")] if text else []
    except ValueError:
        raise InputError(f"--seeds: expected integers like 2020,2021, got {text!r}") from None
    if seeds and len(seeds) != scans:
        raise InputError(f"--seeds: {len(seeds)} seeds for {scans} scans; give one per scan")
    return seeds


def _cell(err: np.ndarray, signed: bool, digits: int = 1) -> str:
    """``mean |e|`` in % (``"bias / mean |e|"`` when ``signed``); ``–`` for no voxels."""
    if not err.size:
        return "–"
    size = f"{100 * np.abs(err).mean():.{digits}f}"
    return f"{100 * err.mean():+.{digits}f} / {size}" if signed else size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("test_dir", type=Path)
    p.add_argument("eval_dir", type=Path)
    p.add_argument("stores", nargs="*")
    p.add_argument("--seeds", default="", help="the scans' simulation seeds (a noise-free row)")
    p.add_argument(
        "--signed", action="store_true", help="cells 'bias / mean abs': the signed error's mean too"
    )
    p.add_argument(
        "--contrast", action="store_true", help="a column: the GM/WM pairs' T1 step kept (ratio)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = [s.removesuffix(".zarr") for s in args.stores]
    scans = sorted(args.test_dir.glob("*.h5"))
    try:
        if not scans:
            raise InputError(f"{args.test_dir}: no *.h5 scans")
        seeds = _seeds(args.seeds, len(scans))
        if not names and not seeds:
            raise InputError("give store names, --seeds, or both")
        if seeds:
            names.append(NOISE_FREE)
        err: dict[str, dict[str, list[np.ndarray]]] = {n: {c: [] for c in CLASSES} for n in names}
        count = dict.fromkeys(CLASSES, 0)
        steps: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for i, path in enumerate(scans):
            scan = load_scan(path)
            ref = scan.reference
            if ref is None:
                raise InputError(f"{path}: no ground truth (reference/) to compare with")
            t1 = ref.t1_ms.numpy()
            masks = boundary_classes(ref.tissue.numpy(), t1)
            for c in CLASSES:
                count[c] += int(masks[c].sum())
            for n in names:
                if n == NOISE_FREE:
                    t1_n = noise_free_t1(scan, seeds[i])
                else:
                    r = load_result(args.eval_dir / path.stem / f"{n}.zarr")
                    m = match_maps(r.coefficients, r.basis, b1=scan.b1, sequence=scan.sequence)
                    t1_n = m.t1_ms.numpy()
                e = (t1_n - t1) / np.where(t1 > 0, t1, 1.0)
                for c in CLASSES:
                    err[n][c].append(e[masks[c]])
                if args.contrast:
                    steps[n].append(interface_pairs(ref.tissue.numpy(), t1_n, t1))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(count.values())
    print(
        "| store | "
        + " | ".join(f"{c} ({100 * count[c] / total:.0f} %)" for c in CLASSES)
        + " | all |"
        + (" GM/WM contrast |" if args.contrast else "")
    )
    print("|---" * (len(CLASSES) + 2 + args.contrast) + "|")
    for n in names:
        per = [np.concatenate(err[n][c]) for c in CLASSES]
        cells = [_cell(v, args.signed) for v in per]
        allv = np.concatenate(per)
        row = f"| {n} | " + " | ".join(cells) + f" | {_cell(allv, args.signed, 2)} |"
        if args.contrast:
            pairs = np.concatenate(steps[n], axis=1)
            row += f" {pairs[0].sum() / pairs[1].sum():.3f} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
