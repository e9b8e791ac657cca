"""Cohort work on a real ``dask.distributed`` cluster.

Byte-identical outputs to the serial run, reruns that skip finished work, a killed worker that
the scheduler replaces, one-line task failures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spurig_core import load_result
from spurig_core.cohort import Task, cluster, run_tasks, task_threads
from spurig_core.errors import InputError
from spurig_core.pipeline import evaluate_cohort, recon_cohort
from spurig_core.simulation import simulate

pytest.importorskip("distributed")

FAST = "[gridding]\nsteps = 150\ntrain_sets = 256\n[llr]\niterations = 4\n"
METHODS = ("llr", "adjoint")
TABLES = ("table1.md", "table1.csv", "table2.md", "table2.csv")
MAPS = ("coefficients", "t1_ms", "t2_ms", "pd")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for k in range(2):
        simulate(root / "test" / f"subj{k}.h5", matrix=16, coils=3, groups=4, seed=20 + k)
    (root / "fast.toml").write_text(FAST)
    return root


def _without_runtime(evaluations: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "runtime_s"} for e in evaluations]


def _stores(out: Path) -> list[Path]:
    return sorted(out.glob("*/*.zarr"))


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


def test_two_workers_give_the_serial_results_and_reruns_skip(
    scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = scans / "fast.toml"
    # one thread per task, serially (this process runs with 2) and in every worker: the sums of
    # the iGROG kernel's SGD, the NUFFT and LLR are split the same way, wherever a task runs
    threads_before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert task_threads() == task_threads(2) == 1
    serial = recon_cohort(
        scans, tmp_path / "serial", methods=METHODS, durations=("30s",), config=config
    )
    assert torch.get_num_threads() == threads_before  # the process's setting is restored
    evaluate_cohort(tmp_path / "serial", out_dir=tmp_path / "ev-serial")
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
    # one task per subject × method (+ one gridding per subject for the gridded method, on
    # LLR's own 2x grid: gridded-os2.pt)
    assert sorted(e.message for e in events) == sorted(
        [
            "subj0 gridding-os2",
            "subj0 llr",
            "subj0 adjoint",
            "subj1 gridding-os2",
            "subj1 llr",
            "subj1 adjoint",
        ]
    )
    assert sorted(p.name for p in (tmp_path / "par" / "subj0").glob("gridded*")) == [
        "gridded-os2.pt"
    ]
    for a, b in zip(serial, par, strict=True):  # bit for bit
        ra, rb = load_result(a), load_result(b)
        for name in MAPS:
            x, y = getattr(ra, name), getattr(rb, name)
            assert x is not None and y is not None and torch.equal(x, y), (a, name)
    evaluate_cohort(tmp_path / "par", out_dir=tmp_path / "ev-par", workers=2)
    ev_par, ev_serial = tmp_path / "ev-par", tmp_path / "ev-serial"
    figures = sorted(p.relative_to(ev_serial) for p in ev_serial.glob("figures/fig[23]_*.png"))
    assert len(figures) == 8
    for name in (*TABLES, *figures):  # byte for byte (runtimes and Figure 8 are wall times)
        assert (ev_par / name).read_bytes() == (ev_serial / name).read_bytes(), name
    metrics = [
        _without_runtime(json.loads((d / "evaluations.json").read_text()))
        for d in (ev_par, ev_serial)
    ]
    assert metrics[0] == metrics[1]

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


def test_simulate_cohort_on_two_workers_matches_the_serial_cohort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import h5py

    from spurig_core.pipeline import simulate_cohort

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    opts = dict(subjects=2, split="1/0/1", matrix=16, coils=2, groups=2, noise=None, seed=5)
    serial = simulate_cohort(tmp_path / "serial", **opts)
    par = simulate_cohort(tmp_path / "par", workers=2, **opts)
    assert "dashboard http" in capsys.readouterr().out
    assert [p.relative_to(tmp_path / "par") for p in par] == [
        p.relative_to(tmp_path / "serial") for p in serial
    ]
    for a, b in zip(serial, par, strict=True):
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            assert sorted(fa) == sorted(fb)
            for name in fa:
                if isinstance(fa[name], h5py.Dataset):
                    assert fa[name][()].tobytes() == fb[name][()].tobytes(), (a, name)
    stamps = [p.stat().st_mtime_ns for p in par]
    simulate_cohort(tmp_path / "par", workers=2, overwrite=True, **opts)  # all there: no task
    assert [p.stat().st_mtime_ns for p in par] == stamps


def _boom(subject: str) -> None:
    raise InputError(f"cannot read {subject}.h5")


def test_task_failures_and_memory_are_one_line_naming_the_subject(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert task_threads() == torch.get_num_threads() and task_threads(local=False) is None
    assert task_threads(2) == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(InputError, match=r"^environment OMP_NUM_THREADS='many' is not a number"):
        with cluster(2):
            pass


def _oom() -> None:
    raise MemoryError


def _write_or_die(path: Path, die: Path) -> Path:
    """Write ``path`` atomically; an attempt that finds ``die`` kills its worker halfway."""
    from spurig_core.outputs import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("half")
        if die.exists():
            die.unlink()  # this attempt only
            os.kill(os.getpid(), signal.SIGKILL)
        tmp.write_text(f"{path.name} complete")
    return path


def _always_die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_workers_are_retried_and_failures_name_the_subject(tmp_path: Path) -> None:
    """A worker killed halfway through a write: every output is still complete.

    The scheduler re-runs its task on another worker; a task that kills every worker it gets (as one
    using more memory than its worker's limit does) fails with one line naming it.
    """
    import dask

    with pytest.raises(InputError, match=r"^subjD llr: out of memory$"):
        run_tasks([Task("subjD llr", _oom)])  # serially
    die = tmp_path / "die"
    die.touch()
    tasks = [
        Task(f"subj{k} llr", _write_or_die, (tmp_path / f"subj{k}.txt", die)) for k in range(3)
    ]
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with cluster(workers=2, echo=None) as c:
            done = run_tasks(tasks, c)
            assert not die.exists()  # one attempt was killed
            assert sorted(done) == ["subj0 llr", "subj1 llr", "subj2 llr"]
            for k in range(3):
                assert (tmp_path / f"subj{k}.txt").read_text() == f"subj{k}.txt complete"
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
            with pytest.raises(InputError, match=r"^subjE llr: every worker that ran it died"):
                run_tasks([Task("subjE llr", _always_die)], c)


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
