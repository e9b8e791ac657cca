"""T1 error (GM+WM) of evaluated stores, split by what each voxel borders.

    python tools/t1_by_boundary.py data/cohort48/test data/eval21 spurig-30s llr-2min ...

For each store name (``<label>-<duration>`` of ``tools/evaluate_models.py``; ``.zarr`` optional)
and each scan of TEST_DIR, the store ``EVAL_DIR/<scan>/<name>.zarr`` is matched (B1-corrected, as
the evaluation) and its relative T1 error is averaged over the GM and WM voxels of each class:
interior (every 6-neighbour of the same label), next to CSF, next to background or "other"
(scalp, dura), next to the other of GM/WM.  A voxel with several kinds of neighbour counts once,
in that order of precedence (CSF, then other, then GM/WM).  Prints a markdown table with each
class's share of the voxels; the last column is the error over all of them (pooled over the
scans, so within ≈ 0.01 point of the evaluation's mean of per-scan errors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from spurig_core.errors import InputError
from spurig_core.io import load_result, load_scan
from spurig_core.matching import match_maps
from spurig_core.metrics import neighbour_labels

GM, WM, CSF = 2, 3, 1
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("test_dir", type=Path)
    p.add_argument("eval_dir", type=Path)
    p.add_argument("stores", nargs="+")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = [s.removesuffix(".zarr") for s in args.stores]
    scans = sorted(args.test_dir.glob("*.h5"))
    try:
        if not scans:
            raise InputError(f"{args.test_dir}: no *.h5 scans")
        err: dict[str, dict[str, list[np.ndarray]]] = {n: {c: [] for c in CLASSES} for n in names}
        count = dict.fromkeys(CLASSES, 0)
        for path in scans:
            scan = load_scan(path)
            ref = scan.reference
            if ref is None:
                raise InputError(f"{path}: no ground truth (reference/) to compare with")
            t1 = ref.t1_ms.numpy()
            masks = boundary_classes(ref.tissue.numpy(), t1)
            for c in CLASSES:
                count[c] += int(masks[c].sum())
            for n in names:
                r = load_result(args.eval_dir / path.stem / f"{n}.zarr")
                m = match_maps(r.coefficients, r.basis, b1=scan.b1, sequence=scan.sequence)
                e = np.abs(m.t1_ms.numpy() - t1) / np.where(t1 > 0, t1, 1.0)
                for c in CLASSES:
                    err[n][c].append(e[masks[c]])
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(count.values())
    print(
        "| store | "
        + " | ".join(f"{c} ({100 * count[c] / total:.0f} %)" for c in CLASSES)
        + " | all |"
    )
    print("|---" * (len(CLASSES) + 2) + "|")
    for n in names:
        per = [np.concatenate(err[n][c]) for c in CLASSES]
        cells = [f"{100 * v.mean():.1f}" if v.size else "–" for v in per]
        print(f"| {n} | " + " | ".join(cells) + f" | {100 * np.concatenate(per).mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
