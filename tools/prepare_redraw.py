r"""Prepare a simulated cohort with re-drawable noise for the v2 training recipe (issue 13).

For every scan ``COHORT/<split>/subjNNN.h5`` (simulation seed ``seed_base + NNN``, as
``spurig simulate-cohort`` numbers them) writes ``OUT/<split>/subjNNN/`` with ``example.pt``,
``dc-<duration>.pt`` and ``noise-<duration>.pt`` (:mod:`spurig_core.training.redraw`).  Subjects
already prepared are skipped, so an interrupted run resumes; ``--watch`` keeps polling for scans
that a running ``simulate-cohort`` has not written yet.  ``--gridded-dir EVAL`` also writes
``EVAL/<subject>/gridded.pt`` for the test split, so ``tools/evaluate_models.py EVAL`` reconstructs
with the same pinned gridding as training.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python tools/prepare_redraw.py data/cohort48 data/prepared48v2 \
        --config configs/cpu48v2/prepare.toml --splits train,val,test --gridded-dir data/eval48v2

Two processes side by side: the same command with ``--shard 0/2`` and ``--shard 1/2`` (each takes
the subjects whose number is 0 or 1 modulo 2, so the two never touch the same files; every file
is written atomically and ``example.pt`` last, so a subject counts as done only when complete).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from spurig_core.config import from_dict, read_toml
from spurig_core.errors import InputError
from spurig_core.operators.encoding import EncodingConfig
from spurig_core.operators.igrog import GriddingConfig
from spurig_core.training.redraw import RedrawConfig, prepare_redraw_subject


def _todo(
    cohort: Path, out: Path, splits: list[str], shard: tuple[int, int] = (0, 1)
) -> list[tuple[str, Path]]:
    found = []
    for split in splits:
        for scan in sorted((cohort / split).glob("subj*.h5")):
            if int(scan.stem[4:]) % shard[1] != shard[0]:
                continue
            if not (out / split / scan.stem / "example.pt").exists():
                found.append((split, scan))
    return found


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` → ``(I, N)``, with ``0 <= I < N`` (one-line ``InputError`` otherwise)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected I/N with 0 <= I < N") from None
    if not 0 <= i < n:
        raise InputError(f"--shard {text!r}: expected I/N with 0 <= I < N")
    return i, n


def run(args: argparse.Namespace) -> int:
    cfg = read_toml(args.config)
    gcfg = from_dict(GriddingConfig, cfg.get("gridding", {}), where="gridding")
    ecfg = from_dict(EncodingConfig, cfg.get("encoding", {}), where="encoding")
    rcfg = from_dict(RedrawConfig, cfg.get("redraw", {}), where="redraw")
    cohort, out = Path(args.cohort), Path(args.out)
    splits = [s for s in args.splits.split(",") if s]
    idle = 0.0
    while True:
        todo = _todo(cohort, out, splits, parse_shard(args.shard))
        if not todo:
            if not args.watch or idle > args.watch:
                return 0
            time.sleep(20)
            idle += 20
            continue
        idle = 0.0
        split, scan = todo[0]
        seed = rcfg.seed_base + int(scan.stem[4:])
        gout = None
        if args.gridded_dir and split == "test":
            gout = Path(args.gridded_dir) / scan.stem / "gridded.pt"
        t = prepare_redraw_subject(
            scan,
            out / split / scan.stem,
            seed=seed,
            noise=rcfg.noise,
            durations=rcfg.durations,
            draws=rcfg.draws,
            gridding=gcfg,
            encoding=ecfg,
            gridded_out=gout,
        )
        print(
            f"{time.strftime('%H:%M:%S')} {split}/{scan.stem}: kernel {t['kernel_s']:.0f} s, "
            f"gridding {t['grid_s']:.0f} s, total {t['total_s']:.0f} s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cohort")
    p.add_argument("out")
    p.add_argument("--config", required=True)
    p.add_argument("--splits", default="train,val,test")
    p.add_argument("--gridded-dir", default="")
    p.add_argument(
        "--shard",
        default="0/1",
        help="I/N: the subjects whose number is I modulo N (parallel runs)",
    )
    p.add_argument("--watch", type=float, default=0.0, help="poll this long for new scans (s)")
    args = p.parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
