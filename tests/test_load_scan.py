"""``load_scan`` rejects every malformed raw scan with one clear line; so does ``spurig recon``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from spurig_core import simulation as sim
from spurig_core.data import FispSequence
from spurig_core.errors import InputError
from spurig_core.io import load_scan, write_scan

SPURIG = Path(sys.executable).with_name("spurig")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = sim.SimulationConfig(
        matrix=8,
        coils=2,
        groups=2,
        noise=0.01,
        phantom="analytic",
        calibration=4,
        trajectory_config=sim.TrajectoryConfig(samples=32),
    )
    scan = sim.simulate_scan(cfg, seed=0, sequence=FispSequence(np.full(6, 20.0, np.float32)))
    return write_scan(scan, tmp_path_factory.mktemp("good") / "good.h5")


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    attrs = dict(f[name].attrs)
    del f[name]
    f.create_dataset(name, data=data)
    f[name].attrs.update(attrs)


def _edit(fn: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            fn(f)

    return apply


def _nan_kspace(f: h5py.File) -> None:
    k = f["kspace"][()]
    k[0, 1, 2, 3] = np.nan
    f["kspace"][...] = k


def _inf_trajectory(f: h5py.File) -> None:
    t = f["trajectory"][()]
    t[1, 0, 5, 2] = np.inf
    f["trajectory"][...] = t


def _out_of_range(f: h5py.File) -> None:
    t = f["trajectory"][()]
    t[0, 3, 7, 1] = 4.0  # +matrix/2 is outside [-4, 4)
    f["trajectory"][...] = t


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _not_hdf5(path: Path) -> None:
    path.write_text("this is not an HDF5 file\n")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing kspace": (_edit(lambda f: f.__delitem__("kspace")), r"missing dataset 'kspace'"),
    "missing trajectory": (
        _edit(lambda f: f.__delitem__("trajectory")),
        r"missing dataset 'trajectory'",
    ),
    "missing sequence": (
        _edit(lambda f: f.__delitem__("sequence")),
        r"missing dataset 'sequence/flip_angle_deg'",
    ),
    "kspace dtype": (
        _edit(lambda f: _replace(f, "kspace", f["kspace"][()].astype(np.complex128))),
        r"'kspace' has dtype complex128, expected complex64",
    ),
    "trajectory dtype": (
        _edit(lambda f: _replace(f, "trajectory", f["trajectory"][()].astype(np.float64))),
        r"'trajectory' has dtype float64, expected float32",
    ),
    "kspace ndim": (
        _edit(lambda f: _replace(f, "kspace", f["kspace"][()][0])),
        r"'kspace' has 3 dimensions",
    ),
    "trajectory shape": (
        _edit(lambda f: _replace(f, "trajectory", f["trajectory"][()][:, :, :-1])),
        r"'trajectory' has shape .* expected",
    ),
    "flip-angle shape": (
        _edit(lambda f: _replace(f, "sequence/flip_angle_deg", np.ones(5, np.float32))),
        r"'sequence/flip_angle_deg' has shape \(5,\), expected \(6,\)",
    ),
    "sequence attribute": (
        _edit(lambda f: f["sequence/flip_angle_deg"].attrs.__delitem__("tr_ms")),
        r"lacks attribute .*'tr_ms'",
    ),
    "coil maps shape": (
        _edit(lambda f: _replace(f, "coil_maps", f["coil_maps"][()][:, :4])),
        r"'coil_maps' has shape",
    ),
    "calibration coils": (
        _edit(lambda f: _replace(f, "calibration", f["calibration"][()][:1])),
        r"'calibration' has 1 coils",
    ),
    "b1 shape": (_edit(lambda f: _replace(f, "b1", f["b1"][()][:3])), r"'b1' has shape"),
    "tissue labels": (
        _edit(lambda f: _replace(f, "reference/tissue", np.full((8, 8, 8), 7, np.uint8))),
        r"labels above 4",
    ),
    "trajectory out of range": (_edit(_out_of_range), r"'trajectory' leaves \[-matrix/2"),
    "NaN in kspace": (_edit(_nan_kspace), r"'kspace' contains 1 NaN or Inf"),
    "Inf in trajectory": (_edit(_inf_trajectory), r"'trajectory' contains 1 NaN or Inf"),
    "unknown schema": (
        _edit(lambda f: f.attrs.__setitem__("schema", "spurig-raw/2")),
        r"unsupported schema 'spurig-raw/2'",
    ),
    "no schema": (_edit(lambda f: f.attrs.__delitem__("schema")), r"no 'schema' attribute"),
    "matrix attribute": (
        _edit(lambda f: f.attrs.__delitem__("matrix")),
        r"missing root attribute .*'matrix'",
    ),
    "truncated file": (_truncate, r"truncated"),
    "not HDF5": (_not_hdf5, r"not a readable HDF5 file"),
}


def _bad_copy(good: Path, tmp_path: Path, case: str) -> Path:
    bad = tmp_path / "bad.h5"
    shutil.copy(good, bad)
    CASES[case][0](bad)
    return bad


def test_the_good_file_loads(good: Path) -> None:
    scan = load_scan(good)
    assert scan.kspace.shape == (2, 2, 6, 32) and scan.reference is not None


@pytest.mark.parametrize("case", list(CASES))
def test_each_malformed_scan_is_rejected(good: Path, tmp_path: Path, case: str) -> None:
    bad = _bad_copy(good, tmp_path, case)
    with pytest.raises(InputError, match=CASES[case][1]) as info:
        load_scan(bad)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg  # one line that names the file


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such file"):
        load_scan(tmp_path / "absent.h5")


@pytest.mark.parametrize("case", ["missing kspace", "NaN in kspace", "truncated file", "absent"])
def test_recon_cli_rejects_bad_scans_cleanly(good: Path, tmp_path: Path, case: str) -> None:
    bad = tmp_path / "absent.h5" if case == "absent" else _bad_copy(good, tmp_path, case)
    out = tmp_path / "out.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    proc = subprocess.run(
        [str(SPURIG), "-q", "recon", str(bad), str(out), "--method", "adjoint"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and str(bad.name) in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if case == "absent" else ["bad.h5"])
