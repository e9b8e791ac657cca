r"""Simulate a scan that no training configuration saw (issue 13's "unseen scan" check).

The project's simulator with three things changed from the training cohort (48³, 10 coils,
nominal tissue values, seeds 2000+): another seed, other relaxation times per tissue (scaled
by ``--t1-scale``/``--t2-scale``, one factor per label CSF, GM, WM, other — the ground truth
follows, since the reference is computed from the changed subject) and another coil count.

Run::

    .venv/bin/python tools/simulate_unseen.py data/unseen48/unseen.h5 --seed 9001 --coils 14

then reconstruct it like the test subjects (``tools/evaluate_models.py data/unseen48 EVAL``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from spurig_core.errors import InputError
from spurig_core.io import atomic_path, write_scan
from spurig_core.simulation import SimulationConfig, scan_of_subject
from spurig_core.simulation.scan import subject_of_seed


def _scales(text: str, name: str) -> np.ndarray:
    try:
        v = np.array([float(t) for t in text.split(",")], dtype=np.float32)
    except ValueError:
        raise InputError(f"{name} {text!r}: expected 4 comma-separated factors") from None
    if v.shape != (4,) or not np.isfinite(v).all() or (v < 0.25).any() or (v > 4).any():
        raise InputError(f"{name} {text!r}: expected 4 factors (CSF, GM, WM, other) in [0.25, 4]")
    return v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--matrix", type=int, default=48)
    p.add_argument("--coils", type=int, default=14)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--seed", type=int, default=9001)
    p.add_argument("--noise", type=float, default=0.025)
    p.add_argument("--t1-scale", default="0.9,1.15,1.2,1.1", help="CSF,GM,WM,other")
    p.add_argument("--t2-scale", default="1.0,0.9,1.1,1.2", help="CSF,GM,WM,other")
    args = p.parse_args(argv)
    try:
        t1s, t2s = _scales(args.t1_scale, "--t1-scale"), _scales(args.t2_scale, "--t2-scale")
        out = Path(args.out)
        if out.exists():
            raise InputError(f"{out}: exists (choose another name)")
        cfg = SimulationConfig(
            matrix=args.matrix, coils=args.coils, groups=args.groups, noise=args.noise
        )
        subj = subject_of_seed(cfg, args.seed)
        subj = dataclasses.replace(
            subj,
            t1_ms=subj.t1_ms * t1s[:, None, None, None],
            t2_ms=subj.t2_ms * t2s[:, None, None, None],
        )
        # the coils and noise simulate_scan would give this seed, on the changed subject
        scan = scan_of_subject(subj, cfg, seed=args.seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            write_scan(scan, tmp)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: seed {args.seed}, {args.coils} coils, T1 ×{t1s}, T2 ×{t2s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
