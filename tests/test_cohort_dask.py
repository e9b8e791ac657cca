"""Cohort work on a real ``dask.distributed`` cluster: the same outputs as serially, reruns that
skip finished work, a killed worker that the scheduler replaces, one-line task failures."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from spurig_core import load_result
from spurig_core.cohort import Task, cluster, run_tasks
from spurig_core.errors import InputError
from spurig_core.pipeline import evaluate_cohort, recon_cohort
from spurig_core.simulation import simulate

pytest.importorskip("distributed")

FAST = "[gridding]\nsteps = 150\ntrain_sets = 256\n[llr]\niterations = 4\n"
METHODS = ("llr", "adjoint")
TABLES = ("table1.md", "table1.csv", "table2.md", "table2.csv")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for k in range(2):
        simulate(root / "test" / f"subj{k}.h5", matrix=16, coils=3, groups=4, seed=20 + k)
    (root / "fast.toml").write_text(FAST)
    return root


def _one_thread() -> Any:
    """One torch and BLAS thread, as in a dask worker (for bit-identical sums)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _same_table(a: Path, b: Path) -> None:
    """Same rows and columns; text cells equal, numbers within 2 % (see the coefficient note)."""
    ra, rb = a.read_text().splitlines(), b.read_text().splitlines()
    assert len(ra) == len(rb) and ra[:1] == rb[:1], a.name
    for la, lb in zip(ra, rb, strict=True):
        ca, cb = re.split(r"[,|]", la), re.split(r"[,|]", lb)
        assert len(ca) == len(cb), a.name
        for x, y in zip(ca, cb, strict=True):
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                assert x == y, (a.name, x, y)
                continue
            assert abs(fx - fy) <= 0.02 * max(abs(fx), abs(fy)) + 1e-6, (a.name, x, y)


def _stores(out: Path) -> list[Path]:
    return sorted(out.glob("*/*.zarr"))


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


def test_two_workers_give_the_serial_results_and_reruns_skip(scans: Path, tmp_path: Path) -> None:
    config = scans / "fast.toml"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _one_thread():
            serial = recon_cohort(
                scans, tmp_path / "serial", methods=METHODS, durations=("30s",), config=config
            )
            evaluate_cohort(tmp_path / "serial", out_dir=tmp_path / "ev-serial")
    finally:
        torch.set_num_threads(threads)
    assert len(serial) == 4 and all(p.is_dir() for p in serial)

    events: list = []
    par = recon_cohort(
        scans,
        tmp_path / "par",
        methods=METHODS,
        durations=("30s",),
        config=config,
        workers=2,
        callback=events.append,
    )
    assert [p.relative_to(tmp_path / "par") for p in par] == [
        p.relative_to(tmp_path / "serial") for p in serial
    ]
    # one task per subject × method (+ one gridding per subject for the gridded method)
    assert sorted(e.message for e in events) == sorted(
        [
            "subj0 gridding",
            "subj0 llr",
            "subj0 adjoint",
            "subj1 gridding",
            "subj1 llr",
            "subj1 adjoint",
        ]
    )
    for a, b in zip(serial, par, strict=True):
        ra, rb = load_result(a), load_result(b)
        # Same code, same inputs; the iGROG kernel's SGD in another process may round differently
        # (thread pools, allocation order), so the comparison allows float-level differences.
        scale = float(ra.coefficients.abs().max())
        torch.testing.assert_close(ra.coefficients, rb.coefficients, rtol=1e-3, atol=1e-3 * scale)
        for ma, mb in ((ra.t1_ms, rb.t1_ms), (ra.t2_ms, rb.t2_ms)):
            assert ma is not None and mb is not None
            assert float((ma == mb).float().mean()) > 0.99
    evaluate_cohort(tmp_path / "par", out_dir=tmp_path / "ev-par", workers=2)
    for name in TABLES:
        _same_table(tmp_path / "ev-par" / name, tmp_path / "ev-serial" / name)

    # a rerun finds everything done: no task, nothing rewritten
    stamps = [p.stat().st_mtime_ns for p in par]
    again: list = []
    recon_cohort(
        scans,
        tmp_path / "par",
        methods=METHODS,
        durations=("30s",),
        config=config,
        workers=2,
        callback=again.append,
    )
    assert again == [] and [p.stat().st_mtime_ns for p in par] == stamps
    assert not _leftovers(tmp_path / "par")


def _boom(subject: str) -> None:
    raise InputError(f"cannot read {subject}.h5")


def test_task_failures_and_memory_are_one_line_naming_the_subject() -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, processes=False, resources={"memory": 1000}, dashboard_address=":0"
        ) as lc,
        Client(lc) as client,
    ):
        ok = run_tasks([Task("subjA x", max, (2, 3))], client)
        assert ok == {"subjA x": 3}
        with pytest.raises(InputError, match=r"^subjB llr: cannot read subjB\.h5$"):
            run_tasks([Task("subjB llr", _boom, ("subjB",))], client)
        big = Task("subjC llr", max, (1, 2), memory=2e6)
        with pytest.raises(
            InputError,
            match=r"^subjC llr: needs about 2\.0 MB but the largest "
            r"worker has 1\.0 kB",
        ):
            run_tasks([big], client)
    with pytest.raises(InputError, match="not both"):
        with cluster(2, "tcp://127.0.0.1:1"):
            pass
    with pytest.raises(InputError, match="--workers: 0"):
        with cluster(0):
            pass
    with cluster() as none:
        assert none is None  # no option: serial


def test_recon_cohort_cli_errors(scans: Path, tmp_path: Path) -> None:
    base = [
        sys.executable,
        "-m",
        "spurig_core.cli",
        "recon-cohort",
        str(scans),
        str(tmp_path / "o"),
    ]
    for extra, msg in (
        (["--methods", "llr,fancy"], "unknown method 'fancy'"),
        (["--durations", "45s"], "unknown duration '45s'"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
    ):
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _worker_pids(pid: int) -> list[int]:
    import psutil

    return [
        c.pid
        for c in psutil.Process(pid).children(recursive=True)
        if "spawn_main" in " ".join(c.cmdline()) or "forkserver" in " ".join(c.cmdline())
    ]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_cohort_completes(scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "spurig_core.cli",
        "-q",
        "recon-cohort",
        str(scans),
        str(out),
        "--methods",
        "llr,adjoint,spurig",
        "--durations",
        "30s",
        "--config",
        str(scans / "fast.toml"),
        "--workers",
        "2",
    ]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        t0 = time.monotonic()
        while not list(out.glob("*/gridded.pt")):  # work under way
            assert run.poll() is None, run.communicate()
            assert time.monotonic() - t0 < 600
            time.sleep(0.2)
        pids = _worker_pids(run.pid)
        assert len(pids) >= 2, pids
        os.kill(pids[0], signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr[-3000:]
    assert "dashboard http" in stdout and "6 results" in stdout
    stores = _stores(out)
    assert len(stores) == 6
    for s in stores:  # every output complete
        res = load_result(s)
        assert res.coefficients.shape == (5, 16, 16, 16) and res.t1_ms is not None
    assert not _leftovers(out)
