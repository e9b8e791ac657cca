"""The 3D SPI trajectory: range, arm geometry, axis sets, group ordering, density, coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.io import load_scan
from spurig_core.simulation import trajectory as traj_mod
from spurig_core.simulation.trajectory import (
    TrajectoryConfig,
    default_samples,
    group_axes,
    spi_trajectory,
    spiral_arm,
)


@pytest.fixture(scope="module")
def k16() -> np.ndarray:
    return spi_trajectory(16, 48, 40).numpy()


def test_shape_dtype_and_range(k16: np.ndarray) -> None:
    assert k16.shape == (48, 40, default_samples(16), 3)
    assert k16.dtype == np.float32
    assert k16.min() >= -8.0 and k16.max() < 8.0
    # the arms reach (just inside) the matrix edge
    assert np.linalg.norm(k16, axis=-1).max() > 0.98 * 8.0
    # odd and anisotropic matrices stay inside [-N/2, N/2) on every axis
    k = spi_trajectory((9, 12, 10), 3, 5).numpy()
    for d, n in enumerate((9, 12, 10)):
        assert k[..., d].min() >= -n / 2 and k[..., d].max() < n / 2


def test_every_arm_starts_at_the_centre(k16: np.ndarray) -> None:
    np.testing.assert_array_equal(k16[:, :, 0], 0.0)


def test_arms_are_planar_and_contain_their_set_axis(k16: np.ndarray) -> None:
    axes = group_axes(48)
    assert np.array_equal(axes[:6], [0, 1, 2, 0, 1, 2])
    for g in range(48):
        a = axes[g]
        b, c = (a + 1) % 3, (a + 2) % 3
        for t in (0, 17, 39):
            kb, kc = k16[g, t, :, b].astype(np.float64), k16[g, t, :, c].astype(np.float64)
            # all (k_b, k_c) are parallel: the plane contains axis a
            cross = np.outer(kb, kc) - np.outer(kc, kb)
            assert np.abs(cross).max() < 1e-3 * 64
            # and the arm really extends along axis a and off it
            assert np.abs(k16[g, t, :, a]).max() > 1.0
            assert np.hypot(kb, kc).max() > 1.0


def test_prefixes_are_balanced_over_the_three_axes() -> None:
    axes = group_axes(48)
    for g in (4, 8, 16, 48):
        counts = np.bincount(axes[:g], minlength=3)
        assert counts.max() - counts.min() <= 1, (g, counts)
    assert np.array_equal(np.bincount(axes, minlength=3), [16, 16, 16])


def test_shorter_scans_are_the_first_groups(k16: np.ndarray) -> None:
    for g in (4, 8, 16):
        np.testing.assert_array_equal(spi_trajectory(16, g, 40).numpy(), k16[:g])


def test_all_arms_differ(k16: np.ndarray) -> None:
    ends = k16[:, :, -1].reshape(-1, 3)
    d = np.linalg.norm(ends[:, None] - ends[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 1e-3


def test_centre_is_oversampled_relative_to_the_edge(k16: np.ndarray) -> None:
    r = np.linalg.norm(k16.reshape(-1, 3), axis=-1)

    def density(lo: float, hi: float) -> float:
        return ((r >= lo) & (r < hi)).sum() / (4 / 3 * np.pi * (hi**3 - lo**3))

    assert density(1.0, 2.0) > 5.0 * density(6.5, 7.5)
    # the 2D arm itself advances slowly near the centre
    arm = spiral_arm(400, 10.0)
    step = np.linalg.norm(np.diff(arm, axis=0), axis=1)
    radial = np.diff(np.linalg.norm(arm, axis=1))
    assert radial[:20].mean() < 0.3 * radial[-20:].mean()
    assert step.max() < 0.5


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    az = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(az) * np.sin(polar), np.sin(az) * np.sin(polar), np.cos(polar)], -1)


def _largest_gap_deg(k: np.ndarray, groups: int, n: int, dirs: np.ndarray) -> float:
    """Mean over TRs of the largest angle from a direction on the sphere to the nearest sample."""
    gaps = []
    for t in range(k.shape[1]):
        p = k[:groups, t].reshape(-1, 3).astype(np.float64)
        r = np.linalg.norm(p, axis=1)
        p = p[r > n / 4] / r[r > n / 4, None]
        cos = np.clip((dirs @ p.T).max(axis=1), -1, 1)
        gaps.append(np.degrees(np.arccos(cos)).max())
    return float(np.mean(gaps))


def test_each_prefix_covers_k_space_better_than_random_angles(
    k16: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)

    def random_angles(groups, tr, cfg, total):  # iid uniform (φ, ψ): the baseline
        return rng.uniform(0, 2 * np.pi, (groups, tr)), rng.uniform(0, 2 * np.pi, (groups, tr))

    monkeypatch.setattr(traj_mod, "_angles", random_angles)
    k_rand = spi_trajectory(16, 48, 40).numpy()
    dirs = _fibonacci_sphere(400)
    for g, factor in ((4, 1.0), (8, 0.9), (16, 0.9), (48, 0.9)):
        ours = _largest_gap_deg(k16, g, 16, dirs)
        base = _largest_gap_deg(k_rand, g, 16, dirs)
        assert ours < factor * base, (g, ours, base)


def test_default_sizes_keep_files_within_budget() -> None:
    s = default_samples(64)
    per_group = 10 * 500 * s * 8 + 500 * s * 3 * 4  # k-space complex64 + trajectory float32
    assert 48 * per_group < 1.0e9
    assert 16 * per_group < 0.33e9


def test_bad_parameters_raise_input_error() -> None:
    with pytest.raises(InputError, match="edge"):
        TrajectoryConfig(edge=1.0)
    with pytest.raises(InputError, match="groups"):
        spi_trajectory(16, 0, 10)
    with pytest.raises(InputError, match="total_groups"):
        spi_trajectory(16, 10, 10, total_groups=4)


def test_validator_accepts_the_trajectory(tmp_path) -> None:
    from spurig_core.data import FispSequence, Scan
    from spurig_core.io import write_scan

    k = spi_trajectory(8, 2, 5)  # 5 TRs: a scan needs at least the basis rank (io_fields)
    scan = Scan(
        kspace=torch.zeros(1, 2, 5, k.shape[2], dtype=torch.complex64),
        trajectory=k,
        sequence=FispSequence(np.full(5, 10.0, np.float32)),
        matrix=(8, 8, 8),
        fov_mm=(220.0, 220.0, 220.0),
    )
    loaded = load_scan(write_scan(scan, tmp_path / "t.h5"))
    torch.testing.assert_close(loaded.trajectory, k)
