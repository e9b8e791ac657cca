"""Make the sample data of the README, ``spurig demo`` and the napari plugin (deterministic).

Default: the 48³ demo scan (ICBM152 anatomy, seed 7; the first 16 groups = the 2 min scan of the
default SPI FISP-MRF acquisition, 10 virtual coils); ≈ 0.19 GB, so it is not shipped but
simulated once (about a minute on 2 cores) and cached here.

``--small``: the small sample that IS shipped (napari's File › Open Sample › spurig "32³ sample
scan"/"32³ sample result"): a 32³ scan (4 coils, 4 groups = the 30 s scan, gzip; ≈ 18 MB) and its
SPUR-iG reconstruction with the shipped 30 s model, matched (T1/T2/PD).

Usage::

    .venv/bin/python sample_data/make_sample.py [--small] [--out PATH] [--force]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spurig_core import simulation
from spurig_core.simulation import sample

HERE = Path(__file__).parent


def make_small(out: Path, force: bool) -> None:
    """Simulate the 32³ sample scan into ``out`` and write its matched SPUR-iG result beside it."""
    from napari_spurig._sample_data import SMALL, SMALL_RESULT
    from spurig_core import pipeline

    if out.exists() and not force:
        print(f"{out} exists (use --force to simulate it again)")
    else:
        print(f"wrote {simulation.simulate(out, **SMALL)}")
    result = pipeline.reconstruct(out, method="spurig", duration="30s")
    matched = pipeline.match(result, out)
    print(f"wrote {matched.save(out.parent / SMALL_RESULT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description="simulate the spurig sample data")
    ap.add_argument("--small", action="store_true", help="the shipped 32³ scan and its result")
    ap.add_argument("--out", type=Path, default=None, help="scan file to write")
    ap.add_argument("--force", action="store_true", help="simulate again even if the file exists")
    args = ap.parse_args()
    if args.small:
        from napari_spurig._sample_data import SMALL_NAME

        make_small(args.out or HERE / SMALL_NAME, args.force)
        return
    out = args.out or HERE / sample.SAMPLE_NAME
    if out.exists() and not args.force:
        print(f"{out} exists (use --force to simulate it again)")
        return
    path = simulation.simulate(out, **sample.SAMPLE)  # type: ignore[arg-type]
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
