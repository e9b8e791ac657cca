"""The fuzz table of issue #15: every bad input is one clean line and exit status 2.

Each case (tables in ``tests/fuzz_files.py``: raw HDF5 scans and zarr results;
``tests/fuzz_calls.py``: TOML configs, checkpoints, command-line paths, the Python API, exchange
formats) mutates a copy of a valid 16³ input or makes a bad API call, runs the real command
in-process (``spurig_core.cli.main``) or the API, and checks that

- the CLI exits with status 2 and prints exactly one stderr line ``spurig: error: ...`` containing
  the expected text (which names the field), and no traceback (an API call raises
  :class:`~spurig_core.errors.InputError` with one such line);
- every file under the case's folder is byte-for-byte unchanged (sha256) and nothing was added
  (no partial output, no temporary folder left behind).

The napari readers get the same damaged stores and must show one error notification and raise one
InputError line, or warn (NaN coefficients, no reference maps).  The table grows with every new
reader: add a row.  Case counts per area are in ``benchmarks/RESULTS-fuzz.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from fuzz_calls import API, CHECKPOINTS, CONFIGS, EXCHANGE, PATHS
from fuzz_files import (
    RAW,
    ZARR,
    Base,
    Case,
    _copy,
    _huge,
    _tree,
    chunk,
    put,
    write_text,
    zattr,
    zwrite,
)
from spurig_core import cli, pipeline
from spurig_core import simulation as sim
from spurig_core.data import FispSequence, Scan
from spurig_core.errors import InputError
from spurig_core.io import load_result, load_scan, write_scan


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    d = tmp_path_factory.mktemp("fuzz-base")
    cfg = sim.SimulationConfig(
        matrix=16,
        coils=2,
        groups=2,
        noise=0.01,
        phantom="analytic",
        calibration=6,
        trajectory_config=sim.TrajectoryConfig(samples=32),
    )
    seq = FispSequence(np.linspace(5, 60, 6).astype(np.float32))
    scan_path = write_scan(sim.simulate_scan(cfg, seed=0, sequence=seq), d / "scan.h5")
    scan = load_scan(scan_path)
    assert scan.reference is not None
    res = pipeline.reconstruct(scan, method="adjoint", save_iterations=True)
    ref = scan.reference
    res = res.replace(t1_ms=ref.t1_ms.clone(), t2_ms=ref.t2_ms.clone(), pd=ref.pd.abs())
    res.save(d / "result.zarr")
    g = torch.Generator().manual_seed(0)
    big = Scan(
        kspace=torch.randn(16, 1, 5, 1, generator=g, dtype=torch.complex64),
        trajectory=torch.zeros(1, 5, 1, 3),
        sequence=FispSequence(np.full(5, 20.0, np.float32)),
        matrix=(256, 256, 256),
        fov_mm=(220.0, 220.0, 220.0),
        calibration=torch.randn(16, 6, 6, 6, generator=g, dtype=torch.complex64),
    )
    big_path = write_scan(big, d / "big.h5")
    return Base(scan_path, d / "result.zarr", big_path, scan, load_result(d / "result.zarr"))


def _check(case: Case, tmp: Path, base: Base, capsys: pytest.CaptureFixture[str]) -> None:
    call = case.make(tmp, base)
    before = _tree(tmp)
    if callable(call):
        with pytest.raises(InputError) as info:
            call()
        assert type(info.value) is InputError
        line = str(info.value)
        assert "\n" not in line.strip(), line
    else:
        capsys.readouterr()
        rc = cli.main(["-q", *map(str, call)])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2, err
        assert len(lines) == 1 and lines[0].startswith("spurig: error: "), err
        assert "Traceback" not in err
        line = lines[0]
    assert case.expect in line, line
    assert _tree(tmp) == before, "an input changed or an output was left behind"


# ----------------------------------------------------------------------------------------------
# the tests
# ----------------------------------------------------------------------------------------------
ALL = RAW + ZARR + CONFIGS + CHECKPOINTS + PATHS + API + EXCHANGE


@pytest.mark.parametrize("case", ALL, ids=[f"{c.area}: {c.name}" for c in ALL])
def test_fuzz_case(
    case: Case,
    base: Base,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    _check(case, tmp_path, base, capsys)


def test_table_size_per_area() -> None:
    counts: dict[str, int] = {}
    for c in ALL:
        counts[c.area] = counts.get(c.area, 0) + 1
    assert counts["raw"] >= 40 and counts["zarr"] >= 25 and counts["config"] >= 15
    assert counts["checkpoint"] >= 5 and counts["api"] >= 20 and counts["cli"] >= 5
    assert len({(c.area, c.name) for c in ALL}) == len(ALL)


def test_base_inputs_pass_the_same_commands(
    base: Base, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unmutated inputs succeed, so each refusal above comes from its mutation."""
    scan = _copy(base.scan, tmp_path / "scan.h5")
    result = _copy(base.result, tmp_path / "r.zarr")
    for argv in (
        ["evaluate", result, "--reference", scan],
        ["export", result, tmp_path / "nifti"],
        ["recon", scan, tmp_path / "o.zarr", "--method", "adjoint"],
    ):
        assert cli.main(["-q", *map(str, argv)]) == 0, capsys.readouterr().err
    cfg = tmp_path / "c.toml"
    cfg.write_text("[llr]\niterations = 2\n[gridding]\nlearned_kernel = false\nn_sources = 1\n")
    argv = ["recon", scan, tmp_path / "llr.zarr", "--method", "llr", "--config", cfg]
    assert cli.main(["-q", *map(str, argv)]) == 0, capsys.readouterr().err
    assert pipeline.reconstruct(str(scan), method="adjoint", groups=1).groups == 1
    capsys.readouterr()
    argv = ["recon", scan, tmp_path / "one.zarr", "--method", "adjoint", "--duration", "7.5s"]
    assert cli.main(["-q", *map(str, argv)]) == 0, capsys.readouterr().err
    assert "(adjoint, 1 group, " in capsys.readouterr().out
    assert load_result(result).t1_ms is not None


def test_overflow_limit_is_the_float32_sum_of_squares() -> None:
    """The magnitude rule refuses exactly when ``Σ|x|²`` leaves float32 (3.4e38), no earlier."""
    from spurig_core.io_fields import check_magnitude

    check_magnitude(np.array([1.8e19, 1.0, 0.0, 0.0], np.float32), "x", "t")  # 3.24e38: fits
    check_magnitude(np.array([1.0e19] * 3, np.complex64), "x", "t")  # 3e38: fits
    with pytest.raises(InputError, match=r"sum of squares 3.61e\+38 exceeds"):
        check_magnitude(np.array([1.9e19, 1.0], np.float32), "x", "t")
    with pytest.raises(InputError, match="exceeds"):
        check_magnitude(np.array([1.1e19] * 3, np.complex64), "x", "t")


# ----------------------------------------------------------------------------------------------
# napari readers: a damaged file is an error notification plus one InputError line
# ----------------------------------------------------------------------------------------------
NAPARI = [
    ("garbage zarr.json", write_text("zarr.json", "{"), "zarr.json is not valid JSON"),
    ("truncated chunk", chunk("coefficients", "truncate"), "'coefficients' cannot be decoded"),
    ("garbage T1 chunk", chunk("t1_ms", "garbage"), "'t1_ms' cannot be decoded"),
    ("deleted chunk", chunk("coefficients", "delete"), "missing 1 of its 5 chunks"),
    ("declared 1e5³", _huge, "matrix = 100000 is outside [1, 1024] voxels"),
    ("groups string", zattr("groups", "2"), "attribute 'groups' = '2'"),
    ("voxel NaN", zattr("voxel_size_mm", [1, float("nan"), 1]), "'voxel_size_mm'"),
]


def _records() -> list[Any]:
    from napari.utils.notifications import notification_manager

    return notification_manager.records


@pytest.mark.parametrize("name,mutate,expect", NAPARI, ids=[n[0] for n in NAPARI])
def test_napari_result_reader_refuses(
    name: str, mutate: Callable[[Path], None], expect: str, base: Base, tmp_path: Path
) -> None:
    from napari.utils.notifications import NotificationSeverity

    from napari_spurig._reader import get_result_reader

    r = _copy(base.result, tmp_path / "r.zarr")
    mutate(r)
    before = _tree(tmp_path)
    reader = get_result_reader(str(r))
    assert reader is not None
    seen = len(_records())
    with pytest.raises(InputError) as info:
        reader(str(r))
    assert type(info.value) is InputError and expect in str(info.value)
    assert "\n" not in str(info.value)
    shown = [n for n in _records()[seen:] if n.severity == NotificationSeverity.ERROR]
    assert len(shown) == 1 and expect in shown[0].message
    assert _tree(tmp_path) == before


def test_napari_scan_reader_refuses_bad_values(base: Base, tmp_path: Path) -> None:
    from napari_spurig._reader import get_scan_reader

    p = _copy(base.scan, tmp_path / "s.h5")
    with h5py.File(p, "r+") as f:
        put("reference/t1_ms", (1, 1, 1), -1.0)(f)
    reader = get_scan_reader(str(p))
    assert reader is not None
    with pytest.raises(InputError, match=r"'reference/t1_ms' has 1 values below 0"):
        reader(str(p))


def test_napari_warns_on_nan_coefficients(base: Base, tmp_path: Path) -> None:
    from napari.utils.notifications import NotificationSeverity

    from napari_spurig._reader import get_result_reader

    r = _copy(base.result, tmp_path / "r.zarr")
    zwrite("coefficients", (2, 3, 4, 5), np.nan)(r)
    reader = get_result_reader(str(r))
    assert reader is not None
    seen = len(_records())
    layers = reader(str(r))
    coefficients = [d for d, meta, _ in layers if meta["name"] == "r |α̃|"]
    assert [d.shape for d in coefficients] == [(5, 16, 16, 16)]
    warned = [n for n in _records()[seen:] if n.severity == NotificationSeverity.WARNING]
    assert len(warned) == 1 and "'coefficients' contains 1 NaN or Inf" in warned[0].message


def test_napari_warns_on_scan_without_reference(base: Base, tmp_path: Path) -> None:
    from napari.utils.notifications import NotificationSeverity

    from napari_spurig._reader import get_scan_reader

    p = _copy(base.scan, tmp_path / "s.h5")
    with h5py.File(p, "r+") as f:
        del f["reference"], f["b1"]
    reader = get_scan_reader(str(p))
    assert reader is not None
    seen = len(_records())
    assert reader(str(p)) == [(None,)]
    warned = [n for n in _records()[seen:] if n.severity == NotificationSeverity.WARNING]
    assert len(warned) == 1 and "no reference maps" in warned[0].message


def test_napari_viewer_shows_one_error_for_a_damaged_store(
    make_napari_viewer: Any, base: Base, tmp_path: Path
) -> None:
    """Through a real viewer: the open fails, nothing is added, one error notification names it."""
    from napari.utils.notifications import NotificationSeverity

    viewer = make_napari_viewer()
    r = _copy(base.result, tmp_path / "r.zarr")
    chunk("coefficients", "truncate")(r)
    seen = len(_records())
    with pytest.raises(Exception) as info:  # napari wraps the reader's error in ReaderPluginError
        viewer.open(str(r), plugin="spurig")
    cause = info.value.__cause__ or info.value
    assert isinstance(cause, InputError) and "'coefficients' cannot be decoded" in str(cause)
    assert len(viewer.layers) == 0
    shown = [n for n in _records()[seen:] if n.severity == NotificationSeverity.ERROR]
    assert len(shown) == 1 and "'coefficients' cannot be decoded" in shown[0].message
    good = _copy(base.result, tmp_path / "good.zarr")
    assert "good |α̃|" in [layer.name for layer in viewer.open(str(good), plugin="spurig")]
