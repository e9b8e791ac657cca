"""tools/t1_by_boundary.py: the boundary classes of the T1 analysis (issue 13, session 24)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "t1_by_boundary", Path(__file__).resolve().parents[1] / "tools" / "t1_by_boundary.py"
)
assert _spec is not None and _spec.loader is not None
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def test_classes_partition_gm_and_wm_by_their_neighbours() -> None:
    """Oracle by hand: GM in x < 4, WM in x ≥ 4, one CSF voxel inside the GM, scalp at z = 0."""
    tis = np.full((8, 6, 6), 2, dtype=np.int64)
    tis[4:] = 3
    tis[1, 3, 3] = 1
    tis[:, :, 0] = 4
    t1 = np.where(np.isin(tis, (2, 3)), 1000.0, 0.0)
    m = tool.boundary_classes(tis, t1)
    assert set(m) == set(tool.CLASSES)
    stack = np.stack([m[c] for c in tool.CLASSES])
    assert (stack.sum(0) == np.isin(tis, (2, 3))).all()  # every GM/WM voxel exactly once
    assert m["GM next to CSF"][0, 3, 3] and m["GM next to CSF"][1, 3, 4]
    assert m["GM next to CSF"].sum() == 6  # the CSF voxel's six neighbours
    assert m["GM next to other"][2, 2, 1] and m["WM next to other"][6, 2, 1]
    assert m["GM next to WM"][3, 2, 2] and m["WM next to GM"][4, 2, 2]
    assert not m["GM next to WM"][2, 2, 2] and m["GM interior"][2, 2, 2]
    assert m["WM interior"][6, 2, 2] and not m["WM interior"][4, 2, 2]
    # replicated edges: the volume's border is not a boundary
    assert m["WM interior"][7, 5, 5]


def test_noise_free_row_is_near_zero_and_a_wrong_seed_is_refused(tmp_path, capsys) -> None:
    """Round trip: a scan's own seed reproduces its reference, so the noise-free row is near zero.

    The scan's reference is the dictionary fit of each mixed voxel's noise-free signal, so the
    row's T1 error is only the dictionary grid's; another seed, or a seed count that is not one per
    scan, exits 2 with one line.
    """
    from spurig_core.io import write_scan
    from spurig_core.simulation import SimulationConfig, simulate_scan

    cfg = SimulationConfig(matrix=16, coils=2, groups=1)
    write_scan(simulate_scan(cfg, seed=3), tmp_path / "s.h5")
    assert tool.main([str(tmp_path), str(tmp_path), "--seeds", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    row = [ln for ln in out if ln.startswith(f"| {tool.NOISE_FREE}")]
    assert len(row) == 1
    assert float(row[0].rstrip(" |").split("|")[-1]) < 2.0  # % T1 over GM and WM
    assert tool.main([str(tmp_path), str(tmp_path), "--seeds", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 4 does not reproduce" in err[0]
    assert tool.main([str(tmp_path), str(tmp_path), "--seeds", "3,4"]) == 2
    assert "one per scan" in capsys.readouterr().err
    assert tool.main([str(tmp_path), str(tmp_path)]) == 2


def test_signed_cells_show_the_bias_and_the_mean_absolute_error() -> None:
    """Oracle by hand: errors +10 % and −30 % give bias −10 % and mean absolute 20 %."""
    e = np.array([0.1, -0.3])
    assert tool._cell(e, signed=False) == "20.0"
    assert tool._cell(e, signed=True) == "-10.0 / 20.0"
    assert tool._cell(e, signed=True, digits=2) == "-10.00 / 20.00"
    assert tool._cell(np.array([]), signed=True) == "–"


def test_interface_pairs_keep_the_gm_wm_step_by_hand() -> None:
    """Oracle by hand: GM (T1 1300) at x < 2, WM (800) at x ≥ 2 on a 4 × 1 × 1 line."""
    tis = np.array([2, 2, 3, 3]).reshape(4, 1, 1)
    t1 = np.array([1300.0, 1300.0, 800.0, 800.0]).reshape(4, 1, 1)
    pairs = tool.interface_pairs(tis, t1, t1)
    np.testing.assert_allclose(pairs, [[500.0], [500.0]])  # one pair, GM minus WM
    blurred = np.array([1300.0, 1200.0, 900.0, 800.0]).reshape(4, 1, 1)
    p = tool.interface_pairs(tis, blurred, t1)
    assert p[0].sum() / p[1].sum() == 0.6
    flipped = tool.interface_pairs(tis[::-1].copy(), blurred[::-1].copy(), t1[::-1].copy())
    np.testing.assert_allclose(flipped, p)  # WM before GM counts with the same sign
    t1_small = np.array([1300.0, 1300.0, 1280.0, 1280.0]).reshape(4, 1, 1)
    assert tool.interface_pairs(tis, t1_small, t1_small).shape == (2, 0)  # step below 50 ms


def test_contrast_column_of_a_scan_against_its_own_noise_free_row(tmp_path, capsys) -> None:
    """Round trip: the noise-free coefficients keep the interface's T1 step (ratio near 1)."""
    from spurig_core.io import write_scan
    from spurig_core.simulation import SimulationConfig, simulate_scan

    cfg = SimulationConfig(matrix=16, coils=2, groups=1)
    write_scan(simulate_scan(cfg, seed=3), tmp_path / "s.h5")
    assert tool.main([str(tmp_path), str(tmp_path), "--seeds", "3", "--contrast"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("GM/WM contrast |")
    row = next(ln for ln in out if ln.startswith(f"| {tool.NOISE_FREE}"))
    assert abs(float(row.rstrip(" |").split("|")[-1]) - 1.0) < 0.05
