"""Make the sample scan of the README, ``spurig demo`` and the napari sample (deterministic).

The scan is a 48³ brain subject (ICBM152 anatomy, seed 7) scanned with the first 16 groups (the
2 min scan) of the default SPI FISP-MRF acquisition, 10 virtual coils; ≈ 0.19 GB, so it is not
shipped but simulated once (about a minute on 2 cores) and cached here.

Usage::

    .venv/bin/python sample_data/make_sample.py [--out sample_data/spurig_sample_48.h5] [--force]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spurig_core import simulation


def main() -> None:
    ap = argparse.ArgumentParser(description="simulate the spurig sample scan")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / simulation.SAMPLE_NAME)
    ap.add_argument("--force", action="store_true", help="simulate again even if the file exists")
    args = ap.parse_args()
    if args.out.exists() and not args.force:
        print(f"{args.out} exists (use --force to simulate it again)")
        return
    path = simulation.simulate(args.out, **simulation.SAMPLE)  # type: ignore[arg-type]
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
