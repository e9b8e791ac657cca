"""Run the self-contained micro-benchmarks of ``benchmarks/`` and print a summary table.

Usage (from the repository root; ``make bench`` runs ``--quick`` after ``spurig bench``)::

    .venv/bin/python benchmarks/run_all.py [--quick | --full] [--only NAME,...] [--list]
        [--timeout S] [--log-dir DIR] [--out SUMMARY.md]

Each benchmark script runs in its own subprocess (so that its peak memory and its threads are its
own), with its output streamed as it comes.  ``--quick`` (the default) runs every script at a
small size -- 16³-32³ volumes, a few coils and groups -- so the whole set takes a few minutes on
2 CPU cores and shows that each benchmark works; ``--full`` runs the sizes of the commands quoted
in ``benchmarks/RESULTS*.md`` (64³, 10 coils, 16-48 groups: hours on 2 CPU cores).  The
benchmarks that need prepared training data or trained models (``bench_dataterm``,
``bench_denoiser_capacity``, ``bench_denoiser_steps``) are listed as skipped with what they need.

The exit status is 1 when any benchmark fails or runs past ``--timeout``, 2 on bad options.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BENCHES", "Bench", "Outcome", "main", "run_one", "summary_table"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    """One benchmark invocation: script, quick and full arguments, or why it cannot run alone."""

    name: str
    script: str
    quick: str = ""
    full: str = ""
    needs: str = ""


@dataclass(frozen=True)
class Outcome:
    """What one benchmark run gave: ``status`` is ok, FAILED (rc N), TIMEOUT or skipped."""

    bench: Bench
    status: str
    seconds: float
    args: tuple[str, ...]

    @property
    def failed(self) -> bool:
        return self.status.startswith(("FAILED", "TIMEOUT"))


BENCHES: tuple[Bench, ...] = (
    Bench(
        "operators",
        "bench_operators.py",
        "--matrix 24 --coils 4 --groups 2 --repeats 1 --eps 1e-3",
        "--repeats 2",
    ),
    Bench("fft-pruning", "bench_fft_pruning.py", "--matrix 32", "--matrix 64"),
    Bench("llr-prox", "bench_llr.py", "prox --matrix 24 --repeats 2", "prox --matrix 64"),
    Bench(
        "llr-recon",
        "bench_llr.py",
        "recon --matrix 16 --groups 2 --coils 2 --iterations 3 --power-iterations 3 --repeats 1",
        "recon --matrix 64 --groups 16 --coils 10 --nufft-iterations 1",
    ),
    Bench(
        "igrog",
        "bench_igrog.py",
        "--matrix 24 --coils 4 --groups 2 --tr 12 --calibration 16 --phantom analytic --steps 100",
        "--matrix 64 --coils 10 --groups 16 --tr 500 --calibration 24 --phantom brain --steps 3000",
    ),
    Bench("physics", "bench_physics.py", "--atoms 500 --matrix 16", "--atoms 20000 --matrix 64"),
    Bench(
        "simulate",
        "bench_simulate.py",
        "--matrix 16 --groups 2 --coils 2 --phantom analytic",
        "--matrix 64 --groups 48 --coils 10",
    ),
    Bench(
        "training",
        "bench_training.py",
        "--n 16 --width 8 --steps 2 --coils 2",
        "--n 48 --width 16 --steps 6 --coils 2",
    ),
    Bench("dataterm", "bench_dataterm.py", needs="a scan and its gridded data (SCAN GRIDDED.pt)"),
    Bench(
        "denoiser-capacity",
        "bench_denoiser_capacity.py",
        needs="prepared training data (spurig prepare-training)",
    ),
    Bench(
        "denoiser-steps", "bench_denoiser_steps.py", needs="a trained model and a prepared subject"
    ),
)


def run_one(bench: Bench, args: tuple[str, ...], timeout: float, log: Path | None) -> Outcome:
    """Run one benchmark script in a subprocess, streaming its output (and into ``log``).

    Parameters
    ----------
    bench : Bench
        The benchmark.
    args : tuple of str
        Its command-line arguments.
    timeout : float
        Seconds after which the subprocess is killed and the run counts as failed.
    log : Path or None
        A file that receives the script's stdout and stderr.
    """
    cmd = [sys.executable, str(ROOT / "benchmarks" / bench.script), *args]
    print(f"\n=== {bench.name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    assert proc.stdout is not None  # mypy: stdout=PIPE
    try:
        with open(log, "w") if log is not None else open(os.devnull, "w") as sink:
            for line in proc.stdout:
                print("  | " + line, end="", flush=True)
                sink.write(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - t0
    if rc != 0 and seconds >= timeout:
        status = f"TIMEOUT ({timeout:.0f} s)"
    else:
        status = "ok" if rc == 0 else f"FAILED (rc {rc})"
    return Outcome(bench, status, seconds, args)


def summary_table(outcomes: list[Outcome]) -> str:
    """Return the results as a Markdown table: benchmark, status, wall seconds, arguments."""
    lines = ["| benchmark | status | wall s | arguments |", "|---|---|---|---|"]
    for o in outcomes:
        secs = "–" if o.status.startswith("skipped") else f"{o.seconds:.1f}"
        args = f"`{' '.join(o.args)}`" if o.args else "–"
        lines.append(f"| {o.bench.name} | {o.status} | {secs} | {args} |")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, minutes (default)")
    size.add_argument("--full", action="store_true", help="the sizes of benchmarks/RESULTS*.md")
    p.add_argument("--only", default="", help="comma-separated benchmark names (see --list)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    p.add_argument("--log-dir", type=Path, default=None, help="one NAME.log per benchmark")
    p.add_argument("--out", type=Path, default=None, help="write the summary table here")
    a = p.parse_args(argv)
    names = {b.name for b in BENCHES}
    a.only = [n for n in a.only.split(",") if n]
    unknown = sorted(set(a.only) - names)
    if unknown:
        p.error(
            f"--only: unknown benchmark {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    if a.timeout is None:
        a.timeout = 24 * 3600.0 if a.full else 600.0
    elif a.timeout <= 0:
        p.error(f"--timeout: {a.timeout} must be > 0 seconds")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return 1 when one failed, else 0."""
    a = _parse(argv)
    selected = [b for b in BENCHES if not a.only or b.name in a.only]
    if a.list:
        for b in BENCHES:
            print(f"{b.name:18} {b.script:28} {b.needs and 'needs ' + b.needs}")
        return 0
    if a.log_dir is not None:
        a.log_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for b in selected:
        if b.needs:
            outcomes.append(Outcome(b, f"skipped (needs {b.needs})", 0.0, ()))
            continue
        args = tuple((b.full if a.full else b.quick).split())
        log = a.log_dir / f"{b.name}.log" if a.log_dir is not None else None
        outcomes.append(run_one(b, args, a.timeout, log))
    table = summary_table(outcomes)
    print(f"\n## benchmarks/run_all.py --{'full' if a.full else 'quick'}\n\n{table}")
    if a.out is not None:
        a.out.write_text(table + "\n")
    failed = [o.bench.name for o in outcomes if o.failed]
    if failed:
        print(f"run_all: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
