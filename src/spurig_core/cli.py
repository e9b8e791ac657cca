"""The ``spurig`` command line (SPEC §2): argument parsing and progress display only.

All work happens in :mod:`spurig_core.pipeline` (ISMRMRD and DICOM in :mod:`spurig_core.exchange`).
Any :class:`~spurig_core.errors.SpurigError` (bad input, a missing capability, a cancelled run)
ends with one line on stderr and exit status 2, without a traceback; outputs are written
atomically by the pipeline, so nothing partial remains.  Ctrl-C and SIGTERM end with one line and
status 130 or 143 after the same cleanup: a write in progress is discarded, outputs finished
before are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .durations import DURATIONS, MODEL_DURATIONS
from .errors import SpurigError
from .recon.methods import METHODS, NAMES

__all__ = ["launch_gui", "main"]

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


_RECON_CONFIG_HELP = "TOML with [gridding], [encoding], [llr] and [denoiser] tables"


def _add_overwrite(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output of another kind (an input is never replaced)",
    )


def _add_cluster(s: argparse.ArgumentParser) -> None:
    """``--workers N | --scheduler ADDRESS``: the command's tasks on a dask.distributed cluster."""
    g = s.add_mutually_exclusive_group()
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run the tasks on a local dask cluster of N worker processes (started and stopped "
        "by the command)",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the tasks on a running dask.distributed scheduler, e.g. tcp://host:8786",
    )


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
    _add_overwrite(s)

    s = sub.add_parser("simulate-cohort", help="train/val/test subjects with different seeds")
    s.add_argument("out_dir", type=Path, metavar="DIR")
    s.add_argument("--subjects", type=int, default=44)
    s.add_argument("--split", default="36/4/4", help="train/val/test counts, e.g. 36/4/4")
    s.add_argument("--matrix", type=int, default=64)
    s.add_argument("--coils", type=int, default=10)
    s.add_argument("--groups", type=int, default=16, help="groups per subject (16 = 2 min)")
    s.add_argument("--noise", type=float, default=None)
    s.add_argument("--seed", type=int, default=1000)
    _add_overwrite(s)
    _add_cluster(s)

    s = sub.add_parser("recon", help="reconstruct subspace coefficients")
    s.add_argument("scan", type=Path, metavar="SCAN.h5")
    s.add_argument("out", type=Path, metavar="OUT.zarr")
    s.add_argument(
        "--method",
        required=True,
        choices=NAMES,
        help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()),
    )
    g = s.add_mutually_exclusive_group()
    g.add_argument("--groups", type=int, default=None)
    g.add_argument("--duration", choices=tuple(DURATIONS), default=None)
    s.add_argument("--model", type=Path, default=None, metavar="CKPT")
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--save-iterations", action="store_true")
    s.add_argument("--config", type=Path, default=None, help=_RECON_CONFIG_HELP)
    s.add_argument(
        "--on-bad-gridding",
        choices=("warn", "fallback", "error"),
        default="warn",
        help="when the iGROG self-check fails: warn, use the NUFFT data term, or stop",
    )
    _add_overwrite(s)

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
    _add_overwrite(s)

    s = sub.add_parser("evaluate-cohort", help="Tables 1-2, p-values and figures over many results")
    s.add_argument("results_dir", type=Path, metavar="DIR")
    s.add_argument("--out", type=Path, default=Path("evaluation"))
    _add_overwrite(s)
    _add_cluster(s)

    s = sub.add_parser(
        "recon-cohort", help="every scan of a cohort folder x method x duration (dask tasks)"
    )
    s.add_argument("cohort", type=Path, metavar="DIR", help="folder with *.h5 scans (any depth)")
    s.add_argument("out_dir", type=Path, metavar="OUT")
    s.add_argument("--methods", default="spurig,dc-only,llr,adjoint")
    s.add_argument("--durations", default=",".join(MODEL_DURATIONS))
    s.add_argument("--config", type=Path, default=None, help=_RECON_CONFIG_HELP)
    s.add_argument("--no-match", action="store_true", help="skip dictionary matching (T1/T2/PD)")
    _add_overwrite(s)
    _add_cluster(s)

    s = sub.add_parser(
        "prepare-training", help="training examples (targets, A^H b, LLR inputs, DC data)"
    )
    s.add_argument("cohort", type=Path, metavar="COHORT_DIR", help="simulate-cohort output")
    s.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    s.add_argument("--durations", default=",".join(MODEL_DURATIONS[::-1]))
    s.add_argument("--splits", default="train,val,test")
    s.add_argument("--config", type=Path, default=None, help="TOML with [gridding]/[llr] tables")
    _add_overwrite(s)
    _add_cluster(s)

    s = sub.add_parser("train", help="one of the three training stages")
    s.add_argument("--stage", required=True, choices=STAGES)
    s.add_argument("--config", required=True, type=Path, metavar="CFG.toml")
    s.add_argument("--resume", action="store_true")
    _add_overwrite(s)

    s = sub.add_parser("bench", help="side-by-side timing of the methods on one scan")
    s.add_argument("--matrix", type=int, default=64)
    s.add_argument("--groups", type=int, default=16)
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--scan", type=Path, default=None, help="use this scan instead of simulating")
    s.add_argument("--methods", default="adjoint,llr,llr-nufft,spurig,dc-only")
    s.add_argument("--out", type=Path, default=None, help="write the table as Markdown here")
    s.add_argument(
        "--gram-repeats",
        type=int,
        default=3,
        help="timed gram applications of each operator in the micro-benchmark (median; "
        "0 skips it: at 220³ one NUFFT gram takes minutes)",
    )
    _add_overwrite(s)

    s = sub.add_parser("export", help="NIfTI files of the maps and coefficient magnitudes")
    s.add_argument("result", type=Path, metavar="RESULT.zarr")
    s.add_argument("out_dir", type=Path, metavar="DIR")
    _add_overwrite(s)
    _add_scanner_commands(sub)

    s = sub.add_parser("demo", help="the whole pipeline on the sample scan")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--tiny", action="store_true", help="a seconds-long configuration (tests)")
    _add_overwrite(s)

    s = sub.add_parser("gui", help="napari with the plugin's widgets docked")
    s.add_argument("files", nargs="*", type=Path)
    return p


def _add_scanner_commands(sub: Any) -> None:
    """``import-ismrmrd``, ``export-ismrmrd``, ``export-dicom`` (README: Your own scanner data)."""
    s = sub.add_parser("import-ismrmrd", help="an ISMRMRD raw file to a spurig scan")
    s.add_argument("raw", type=Path, metavar="RAW.h5")
    s.add_argument("out", type=Path, metavar="SCAN.h5")
    s.add_argument(
        "--map",
        default=None,
        metavar="group=C,tr=C",
        help="encoding counters of the group and of the time point (default "
        "group=repetition,tr=kspace_encode_step_1)",
    )
    s.add_argument(
        "--traj-scale",
        default=None,
        metavar="S",
        help="factor from the file's trajectory units to cycles/FOV, one or Sx,Sy,Sz (default 1; "
        "normalised [-0.5, 0.5) units need the matrix size)",
    )
    s.add_argument(
        "--sequence", type=Path, default=None, metavar="SEQ.json", help="sequence values (JSON)"
    )
    s.add_argument("--coils", type=int, default=None, metavar="K", help="SVD-compress to K coils")
    _add_overwrite(s)

    s = sub.add_parser("export-ismrmrd", help="a spurig scan as an ISMRMRD raw file")
    s.add_argument("scan", type=Path, metavar="SCAN.h5")
    s.add_argument("out", type=Path, metavar="RAW.h5")
    _add_overwrite(s)

    s = sub.add_parser("export-dicom", help="T1, T2 and PD maps as DICOM parametric maps")
    s.add_argument("result", type=Path, metavar="RESULT.zarr")
    s.add_argument("out_dir", type=Path, metavar="DIR")
    s.add_argument("--scan", type=Path, default=None, help="scan with the patient/study header")
    s.add_argument("--patient-id", default=None)
    s.add_argument("--patient-name", default=None, help="DICOM form, e.g. Doe^Jane")
    s.add_argument("--study-uid", default=None, help="StudyInstanceUID to file the series under")
    s.add_argument("--series-number", type=int, default=100)
    _add_overwrite(s)


def _scanner(args: argparse.Namespace) -> None:
    """Run one of :func:`_add_scanner_commands`' commands."""
    from . import exchange

    if args.command == "import-ismrmrd":
        report = exchange.import_ismrmrd(
            args.raw,
            args.out,
            mapping=args.map,
            traj_scale=args.traj_scale,
            sequence=args.sequence,
            coils=args.coils,
            overwrite=args.overwrite,
        )
        print("\n".join(report.lines()))
    elif args.command == "export-ismrmrd":
        print(f"wrote {exchange.export_ismrmrd(args.scan, args.out, overwrite=args.overwrite)}")
    else:
        files = exchange.export_dicom(
            args.result,
            args.out_dir,
            scan=args.scan,
            patient_id=args.patient_id,
            patient_name=args.patient_name,
            study_uid=args.study_uid,
            series_number=args.series_number,
            overwrite=args.overwrite,
        )
        for f in files:
            print(f"wrote {f}")


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
            overwrite=args.overwrite,
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
            overwrite=args.overwrite,
            workers=args.workers,
            scheduler=args.scheduler,
        )
        progress.close()
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
            overwrite=args.overwrite,
            on_bad_gridding=args.on_bad_gridding,
        )
        progress.close()
        groups = f"{result.groups} group{'' if result.groups == 1 else 's'}"
        print(f"wrote {args.out} ({result.method}, {groups}, {result.runtime_s:.2f} s)")
        if result.model:  # which model file ran, by content (issue #15)
            print(f"model {result.model['file']} sha256 {result.model['sha256']}")
    elif args.command == "match":
        pipeline.match_file(args.result, scan=args.scan, device=args.device, callback=cb)
        progress.close()
        print(f"added t1_ms, t2_ms, pd to {args.result}")
    elif args.command == "evaluate":
        metrics = pipeline.evaluate_file(
            args.result, args.reference, json_path=args.json, overwrite=args.overwrite
        )
        progress.close()
        print(pipeline.format_metrics(metrics))
    elif args.command == "evaluate-cohort":
        out = pipeline.evaluate_cohort(
            args.results_dir,
            out_dir=args.out,
            callback=cb,
            overwrite=args.overwrite,
            workers=args.workers,
            scheduler=args.scheduler,
        )
        progress.close()
        print(f"wrote tables and figures under {out}")
    elif args.command == "recon-cohort":
        stores = pipeline.recon_cohort(
            args.cohort,
            args.out_dir,
            methods=tuple(m for m in args.methods.split(",") if m),
            durations=tuple(d for d in args.durations.split(",") if d),
            config=args.config,
            match=not args.no_match,
            callback=cb,
            overwrite=args.overwrite,
            workers=args.workers,
            scheduler=args.scheduler,
        )
        progress.close()
        print(f"{len(stores)} results under {args.out_dir}")
    elif args.command == "prepare-training":
        done = pipeline.prepare_training(
            args.cohort,
            args.out_dir,
            durations=tuple(args.durations.split(",")),
            splits=tuple(args.splits.split(",")),
            config=args.config,
            callback=cb,
            overwrite=args.overwrite,
            workers=args.workers,
            scheduler=args.scheduler,
        )
        progress.close()
        print(f"prepared {len(done)} subjects under {args.out_dir}")
    elif args.command == "train":
        ckpt = pipeline.train(
            args.stage, args.config, resume=args.resume, callback=cb, overwrite=args.overwrite
        )
        progress.close()
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
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
            overwrite=args.overwrite,
            gram_repeats=args.gram_repeats,
        )
        progress.close()
        print(table)
    elif args.command == "export":
        files = pipeline.export(args.result, args.out_dir, overwrite=args.overwrite)
        for f in files:
            print(f"wrote {f}")
    elif args.command == "demo":
        summary = pipeline.demo(args.out, tiny=args.tiny, callback=cb, overwrite=args.overwrite)
        progress.close()
        print(summary)
    elif args.command == "gui":
        launch_gui([str(f) for f in args.files])
    elif args.command in ("import-ismrmrd", "export-ismrmrd", "export-dicom"):
        _scanner(args)
    return 0


def launch_gui(files: list[str]) -> None:
    """``spurig gui``: napari with the plugin's widgets docked and ``files`` opened.

    The command line is the only part of ``spurig_core`` that imports the plugin: the engine
    never does (``tests/test_methods_registry.py`` imports it with napari blocked).
    """
    from napari_spurig import launch  # raises NotAvailableError without napari or Qt

    launch(files)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def _redeliver(unraisable: Any) -> None:
    """``sys.unraisablehook``: an interrupt that landed in a finaliser is sent again.

    Python ignores exceptions raised in ``__del__`` methods and weakref callbacks, so a Ctrl-C or
    SIGTERM arriving while one runs would be lost; the signal is re-sent from another thread,
    to be raised at the main thread's next step.
    """
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        sig = signal.SIGTERM if isinstance(unraisable.exc_value, _Terminated) else signal.SIGINT
        threading.Timer(0.01, os.kill, (os.getpid(), sig)).start()
        return
    sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` for the block (main thread only).

    An interrupt is never lost to a finaliser (:func:`_redeliver`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    old_hook, sys.unraisablehook = sys.unraisablehook, _redeliver
    try:
        yield
    finally:
        sys.unraisablehook = old_hook
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _interrupted(exc: KeyboardInterrupt, progress: _Progress) -> int:
    """Clean up after Ctrl-C or SIGTERM (further ones ignored meanwhile); the exit status."""
    from .outputs import settle_background_io

    main = threading.current_thread() is threading.main_thread()
    old = [(s, signal.signal(s, signal.SIG_IGN)) for s in (signal.SIGINT, signal.SIGTERM) if main]
    try:
        progress.close()
        settle_background_io()  # zarr I/O the interrupt left running: no "Task was destroyed"
        what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(
            f"spurig: {what}; nothing half-written was left behind (finished outputs were kept)",
            file=sys.stderr,
        )
    finally:
        for sig, handler in old:
            if handler is not None:
                signal.signal(sig, handler)
    return 143 if isinstance(exc, _Terminated) else 130


#: torch's messages for an allocation that failed (CPU allocator, CUDA caching allocator).
_ALLOCATION_FAILED = re.compile(r"can't allocate memory|out of memory|not enough memory", re.I)


def _leave_now(status: int) -> None:
    """Flush the standard streams and end the process without Python's or C++'s exit handlers."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spurig`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    progress = _Progress(
        quiet=args.quiet or (not sys.stderr.isatty() and bool(os.environ.get("CI")))
    )
    try:
        with _sigterm_as_interrupt():
            return _dispatch(args, progress)
    except SpurigError as exc:
        progress.close()
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"spurig: error: {msg}", file=sys.stderr)
        if exc.abandon_process:
            _leave_now(2)
        return 2
    except MemoryError:
        progress.close()
        print(
            "spurig: error: out of memory (try a smaller matrix, fewer groups or --device cuda)",
            file=sys.stderr,
        )
        return 2
    except RuntimeError as exc:  # torch reports a failed allocation as RuntimeError
        text = str(exc).strip()
        if not _ALLOCATION_FAILED.search(text):
            raise
        progress.close()
        first = text.splitlines()[0][:200]
        print(
            f"spurig: error: out of memory ({first}); try a smaller matrix, fewer groups or "
            "another device",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as exc:
        return _interrupted(exc, progress)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
