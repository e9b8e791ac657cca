"""The ``spurig`` command line (SPEC §2): argument parsing and progress display only.

All work happens in :mod:`spurig_core.pipeline`.  Any :class:`~spurig_core.errors.SpurigError`
(bad input, a missing capability, a cancelled run) ends with one line on stderr and exit status 2,
without a traceback; outputs are written atomically by the pipeline, so nothing partial remains.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import SpurigError

__all__ = ["main"]

METHODS = ("spurig", "hybrid", "llr", "llr-nufft", "adjoint")
DURATION_NAMES = ("6min", "2min", "1min", "30s")
STAGES = ("pretrain", "gleam", "finetune")


class _Progress:
    """Render :class:`~spurig_core.progress.ProgressEvent` s as one tqdm bar per stage."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bars: dict[str, Any] = {}

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        bar = self.bars.get(event.stage)
        if bar is None:
            bar = tqdm(
                total=event.total or None,
                desc=event.stage,
                unit="step",
                leave=True,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            self.bars[event.stage] = bar
        if event.total and bar.total != event.total:
            bar.total = event.total
        bar.n = event.step
        post = {k: f"{v:.4g}" for k, v in event.metrics.items()}
        if event.message:
            post["msg"] = event.message
        if post:
            bar.set_postfix(post, refresh=False)
        bar.refresh()
        if event.total and event.step >= event.total:
            bar.close()
            del self.bars[event.stage]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 2 and one-line errors (argparse's own default status is 2 too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"spurig: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="spurig",
        description="SPUR-iG 3D MRF reconstruction: simulate, reconstruct, "
        "match, evaluate, train, benchmark, view.",
    )
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("simulate", help="simulate a digital subject's full (R=1) scan")
    s.add_argument("out", type=Path, metavar="OUT.h5")
    s.add_argument("--matrix", type=int, default=64)
    s.add_argument("--coils", type=int, default=10)
    s.add_argument("--groups", type=int, default=48)
    s.add_argument(
        "--noise",
        type=float,
        default=None,
        help="noise standard deviation relative to the k-space centre (default: config)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--phantom", choices=("brain", "analytic"), default="brain")

    s = sub.add_parser("simulate-cohort", help="train/val/test subjects with different seeds")
    s.add_argument("out_dir", type=Path, metavar="DIR")
    s.add_argument("--subjects", type=int, default=44)
    s.add_argument("--split", default="36/4/4", help="train/val/test counts, e.g. 36/4/4")
    s.add_argument("--matrix", type=int, default=64)
    s.add_argument("--coils", type=int, default=10)
    s.add_argument("--groups", type=int, default=16, help="groups per subject (16 = 2 min)")
    s.add_argument("--noise", type=float, default=None)
    s.add_argument("--seed", type=int, default=1000)

    s = sub.add_parser("recon", help="reconstruct subspace coefficients")
    s.add_argument("scan", type=Path, metavar="SCAN.h5")
    s.add_argument("out", type=Path, metavar="OUT.zarr")
    s.add_argument("--method", required=True, choices=METHODS)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--groups", type=int, default=None)
    g.add_argument("--duration", choices=DURATION_NAMES, default=None)
    s.add_argument("--model", type=Path, default=None, metavar="CKPT")
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--save-iterations", action="store_true")
    s.add_argument("--config", type=Path, default=None, help="TOML with [gridding]/[llr] tables")

    s = sub.add_parser("match", help="B1-corrected dictionary matching: add T1, T2, PD maps")
    s.add_argument("result", type=Path, metavar="RESULT.zarr")
    s.add_argument(
        "--scan",
        type=Path,
        default=None,
        help="scan for the B1 map and sequence (default: the result's source)",
    )
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")

    s = sub.add_parser("evaluate", help="PSNR/SSIM per balanced coefficient and T1/T2 errors")
    s.add_argument("result", type=Path, metavar="RESULT.zarr")
    s.add_argument("--reference", type=Path, required=True, metavar="SCAN.h5")
    s.add_argument("--json", type=Path, default=None, metavar="OUT.json")

    s = sub.add_parser("evaluate-cohort", help="Tables 1-2, p-values and figures over many results")
    s.add_argument("results_dir", type=Path, metavar="DIR")
    s.add_argument("--out", type=Path, default=Path("evaluation"))

    s = sub.add_parser(
        "prepare-training", help="training examples (targets, A^H b, LLR inputs, DC data)"
    )
    s.add_argument("cohort", type=Path, metavar="COHORT_DIR", help="simulate-cohort output")
    s.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    s.add_argument("--durations", default="30s,1min,2min")
    s.add_argument("--splits", default="train,val,test")
    s.add_argument("--config", type=Path, default=None, help="TOML with [gridding]/[llr] tables")

    s = sub.add_parser("train", help="one of the three training stages")
    s.add_argument("--stage", required=True, choices=STAGES)
    s.add_argument("--config", required=True, type=Path, metavar="CFG.toml")
    s.add_argument("--resume", action="store_true")

    s = sub.add_parser("bench", help="side-by-side timing of the methods on one scan")
    s.add_argument("--matrix", type=int, default=64)
    s.add_argument("--groups", type=int, default=16)
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--scan", type=Path, default=None, help="use this scan instead of simulating")
    s.add_argument("--methods", default="adjoint,llr,llr-nufft,spurig")
    s.add_argument("--out", type=Path, default=None, help="write the table as Markdown here")

    s = sub.add_parser("export", help="NIfTI files of the maps and coefficient magnitudes")
    s.add_argument("result", type=Path, metavar="RESULT.zarr")
    s.add_argument("out_dir", type=Path, metavar="DIR")

    s = sub.add_parser("demo", help="the whole pipeline on the sample scan")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--tiny", action="store_true", help="a seconds-long configuration (tests)")

    s = sub.add_parser("gui", help="napari with the plugin's widgets docked")
    s.add_argument("files", nargs="*", type=Path)
    return p


def _version() -> str:
    from . import __version__

    return f"spurig {__version__}"


def _dispatch(args: argparse.Namespace, progress: _Progress) -> int:
    from . import pipeline

    cb = progress
    if args.command == "simulate":
        path = pipeline.simulate(
            args.out,
            matrix=args.matrix,
            coils=args.coils,
            groups=args.groups,
            noise=args.noise,
            seed=args.seed,
            phantom=args.phantom,
            callback=cb,
        )
        print(f"wrote {path}")
    elif args.command == "simulate-cohort":
        paths = pipeline.simulate_cohort(
            args.out_dir,
            subjects=args.subjects,
            split=args.split,
            matrix=args.matrix,
            coils=args.coils,
            groups=args.groups,
            noise=args.noise,
            seed=args.seed,
            callback=cb,
        )
        print(f"wrote {len(paths)} subjects under {args.out_dir}")
    elif args.command == "recon":
        result = pipeline.recon_file(
            args.scan,
            args.out,
            method=args.method,
            groups=args.groups,
            duration=args.duration,
            model=args.model,
            device=args.device,
            save_iterations=args.save_iterations,
            config=args.config,
            callback=cb,
        )
        progress.close()
        print(
            f"wrote {args.out} ({result.method}, {result.groups} groups, {result.runtime_s:.2f} s)"
        )
    elif args.command == "match":
        pipeline.match_file(args.result, scan=args.scan, device=args.device, callback=cb)
        progress.close()
        print(f"added t1_ms, t2_ms, pd to {args.result}")
    elif args.command == "evaluate":
        metrics = pipeline.evaluate_file(args.result, args.reference, json_path=args.json)
        progress.close()
        print(pipeline.format_metrics(metrics))
    elif args.command == "evaluate-cohort":
        out = pipeline.evaluate_cohort(args.results_dir, out_dir=args.out, callback=cb)
        print(f"wrote tables and figures under {out}")
    elif args.command == "prepare-training":
        done = pipeline.prepare_training(
            args.cohort,
            args.out_dir,
            durations=tuple(args.durations.split(",")),
            splits=tuple(args.splits.split(",")),
            config=args.config,
            callback=cb,
        )
        progress.close()
        print(f"prepared {len(done)} subjects under {args.out_dir}")
    elif args.command == "train":
        ckpt = pipeline.train(args.stage, args.config, resume=args.resume, callback=cb)
        progress.close()
        print(f"wrote {ckpt}")
    elif args.command == "bench":
        table = pipeline.bench(
            matrix=args.matrix,
            groups=args.groups,
            device=args.device,
            scan=args.scan,
            methods=tuple(args.methods.split(",")),
            out=args.out,
            callback=cb,
        )
        progress.close()
        print(table)
    elif args.command == "export":
        files = pipeline.export(args.result, args.out_dir)
        for f in files:
            print(f"wrote {f}")
    elif args.command == "demo":
        summary = pipeline.demo(args.out, tiny=args.tiny, callback=cb)
        progress.close()
        print(summary)
    elif args.command == "gui":
        pipeline.launch_gui([str(f) for f in args.files])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spurig`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    progress = _Progress(
        quiet=args.quiet or (not sys.stderr.isatty() and bool(os.environ.get("CI")))
    )
    try:
        return _dispatch(args, progress)
    except SpurigError as exc:
        progress.close()
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"spurig: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        progress.close()
        print(
            "spurig: error: out of memory (try a smaller matrix, fewer groups or --device cuda)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("spurig: interrupted; nothing partial was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
