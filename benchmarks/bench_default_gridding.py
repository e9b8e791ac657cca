"""The gridded methods of ``spurig bench`` on the default gridding instead of the model's (#14).

``spurig bench`` grids a scan once with the SPUR-iG model's gridding settings (those of its
training data); this runs the same bench for the gridded methods with the default
``GriddingConfig`` settings, to show what that choice costs or gains in time and PSNR.

Run::

    .venv/bin/python benchmarks/bench_default_gridding.py --scan scan64.h5 --groups 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spurig_core.benchmark import bench, format_table
from spurig_core.config import to_dict
from spurig_core.operators.igrog import GriddingConfig, data_fields


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scan", required=True)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--methods", default="llr,spurig,dc-only")
    p.add_argument("--json", default="", help="also write the report here")
    args = p.parse_args(argv)
    settings = data_fields(to_dict(GriddingConfig()))
    report = bench(
        scan=args.scan,
        groups=args.groups,
        methods=tuple(args.methods.split(",")),
        gram=False,
        config={"gridding": settings},
    )
    print(json.dumps(settings))
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
