"""Digital subjects (analytic and ICBM152 anatomy) and the simulated head coil array."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.simulation.coils import (
    CoilConfig,
    compress,
    element_positions,
    head_array,
    loop_field,
)
from spurig_core.simulation.phantom import (
    COMPARTMENTS,
    TISSUE_VALUES,
    PhantomConfig,
    Subject,
    analytic_subject,
    brain_subject,
)


@pytest.fixture(scope="module")
def brain() -> Subject:
    return brain_subject(32, seed=3)


@pytest.fixture(scope="module")
def ellipsoids() -> Subject:
    return analytic_subject(16, seed=1)


def _check_consistency(s: Subject) -> None:
    assert s.fractions.shape == (4, *s.matrix) and s.fractions.dtype == np.float32
    assert s.fractions.min() >= 0 and s.fractions.sum(axis=0).max() <= 1 + 1e-5
    ref = s.reference()
    lab = ref.tissue.numpy()
    assert ref.tissue.dtype == torch.uint8 and set(np.unique(lab)) == {0, 1, 2, 3, 4}
    t1, t2 = ref.t1_ms.numpy(), ref.t2_ms.numpy()
    assert (t1[lab == 0] == 0).all() and (t2[lab == 0] == 0).all()
    for label in COMPARTMENTS:
        nominal = TISSUE_VALUES[label]
        sel = lab == label
        # smooth variation of about ±10 % around the nominal value, mean close to it
        assert np.abs(t1[sel] / nominal.t1_ms - 1).max() <= 0.1 + 1e-5
        assert np.abs(t2[sel] / nominal.t2_ms - 1).max() <= 0.1 + 1e-5
        assert abs(t1[sel].mean() / nominal.t1_ms - 1) < 0.06
        assert abs(t2[sel].mean() / nominal.t2_ms - 1) < 0.06
        # the label is the dominant compartment
        j = COMPARTMENTS.index(label)
        assert (s.fractions[j][sel] >= s.fractions[:, sel].max(axis=0) - 1e-6).all()
    # pd: complex, |pd| is the fraction-weighted proton density
    pd = ref.pd.numpy()
    assert pd.dtype == np.complex64
    np.testing.assert_allclose(np.abs(pd), (s.fractions * s.pd).sum(axis=0), rtol=1e-4, atol=1e-6)
    pure = s.fractions.max(axis=0) > 0.9
    wm, csf = (lab == 3) & pure, (lab == 1) & pure
    assert wm.any()
    if csf.any():  # thin CSF layers are all partial volume at 16³
        np.testing.assert_allclose(np.abs(pd[csf]), TISSUE_VALUES[1].pd, rtol=0.11)
    np.testing.assert_allclose(np.abs(pd[wm]), TISSUE_VALUES[3].pd, rtol=0.11)
    assert s.b1.min() >= 0.8 - 1e-6 and s.b1.max() <= 1.2 + 1e-6 and s.b1.max() - s.b1.min() > 0.2


def test_analytic_subject_is_consistent(ellipsoids: Subject) -> None:
    _check_consistency(ellipsoids)
    # partial volume exists at the boundaries
    total = ellipsoids.fractions.sum(axis=0)
    assert ((total > 0.05) & (total < 0.95)).any()


def test_brain_subject_is_consistent(brain: Subject) -> None:
    _check_consistency(brain)


def test_brain_has_plausible_anatomy(brain: Subject) -> None:
    vox_ml = (brain.fov_mm / 32) ** 3 / 1000.0
    gm, wm, csf = (brain.fractions[j].sum() * vox_ml for j in (1, 2, 0))
    # adult brain volumes, after the template scale 0.85–0.95 (≈ 0.6–0.86 of the volume)
    assert 350 < gm < 900 and 250 < wm < 700 and 60 < csf < 600, (gm, wm, csf)
    # the "other tissue" shell encloses the brain: rays from the FOV edge meet label 4 first
    lab = brain.tissue
    c = 16
    for ray in (lab[:, c, c], lab[::-1, c, c], lab[c, :, c], lab[c, ::-1, c], lab[c, c, ::-1]):
        first = ray[np.flatnonzero(ray)[0]]
        assert first == 4
    # the head fits into the FOV with a margin (no wrap-around)
    mask = brain.head_mask
    assert (
        not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    )
    # parameter maps vary smoothly within a tissue (no voxel-to-voxel noise)
    t1_wm = brain.t1_ms[2]
    assert np.abs(np.diff(t1_wm, axis=0)).max() < 0.05 * TISSUE_VALUES[3].t1_ms


def test_subjects_are_seeded(ellipsoids: Subject, brain: Subject) -> None:
    again = analytic_subject(16, seed=1)
    np.testing.assert_array_equal(again.t1_ms, ellipsoids.t1_ms)
    other = brain_subject(32, seed=4)
    assert not np.allclose(other.fractions, brain.fractions)  # a different pose and warp
    same = brain_subject(32, seed=3)
    np.testing.assert_array_equal(same.fractions, brain.fractions)


def test_bad_phantom_parameters() -> None:
    with pytest.raises(InputError, match="matrix"):
        analytic_subject(2)
    with pytest.raises(InputError, match="variation"):
        PhantomConfig(variation=1.5)


# ----------------------------------------------------------------------------------------------
# coils
# ----------------------------------------------------------------------------------------------
def _biot_savart(
    points: np.ndarray, centre: np.ndarray, normal: np.ndarray, radius: float, segments: int = 4000
) -> np.ndarray:
    """Oracle: the Biot–Savart sum over a finely discretised loop (units μ0 I/(π mm))."""
    e1 = np.cross(normal, [1.0, 0.0, 0.0])
    if np.linalg.norm(e1) < 0.1:
        e1 = np.cross(normal, [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    th = np.linspace(0, 2 * np.pi, segments, endpoint=False) + np.pi / segments
    wire = centre + radius * (np.cos(th)[:, None] * e1 + np.sin(th)[:, None] * e2)
    dl = radius * (2 * np.pi / segments) * (-np.sin(th)[:, None] * e1 + np.cos(th)[:, None] * e2)
    r = points[:, None, :] - wire[None]
    b = np.cross(dl[None], r) / np.linalg.norm(r, axis=-1, keepdims=True) ** 3
    return b.sum(axis=1) / 4.0  # μ0 I/(4π) = (μ0 I/π) / 4


def test_loop_field_matches_biot_savart() -> None:
    rng = np.random.default_rng(0)
    centre = np.array([80.0, -20.0, 10.0])
    normal = np.array([-1.0, 0.3, 0.2])
    normal /= np.linalg.norm(normal)
    pts = rng.uniform(-60, 60, (40, 3))
    pts[0] = centre + 25.0 * normal  # on the axis
    exact = loop_field(pts, centre, normal, 38.0)
    oracle = _biot_savart(pts, centre, normal, 38.0)
    np.testing.assert_allclose(exact, oracle, rtol=1e-4, atol=1e-6 * np.abs(oracle).max())


def test_array_geometry() -> None:
    cfg = CoilConfig()
    centres, normals = element_positions(cfg)
    assert centres.shape == (cfg.n_elements, 3) and 12 <= cfg.n_elements <= 32
    assert len(set(np.round(centres[:, 2]))) >= 2  # two rings or more
    # every loop faces the head centre
    assert ((-centres * normals).sum(axis=1) > 0).all()
    with pytest.raises(InputError, match="12-32"):
        CoilConfig(ring_elements=(4, 4), ring_elevation_deg=(0.0, 30.0))


def test_compressed_maps_are_normalised_smooth_and_cover_the_head(brain: Subject) -> None:
    mask = brain.head_mask
    maps = head_array(32, 10, mask=mask, seed=2).numpy()
    assert maps.shape == (10, 32, 32, 32) and maps.dtype == np.complex64
    rss = np.sqrt((np.abs(maps) ** 2).sum(axis=0))
    np.testing.assert_allclose(rss, 1.0, atol=1e-5)
    # smooth inside the head: neighbouring voxels differ little
    for axis in (1, 2, 3):
        d = np.abs(np.diff(maps, axis=axis))
        inner = mask[:-1] if axis == 1 else mask[:, :-1] if axis == 2 else mask[:, :, :-1]
        assert np.percentile(d[:, inner], 99) < 0.15
    # every virtual coil contributes; the strongest ones are localised (not all flat)
    power = (np.abs(maps[:, mask]) ** 2).mean(axis=1)
    assert power.min() > 1e-3
    # compression to 10 of 24 keeps most of the physical array's energy in the head (≈ 0.89)
    from spurig_core.simulation.coils import _physical_maps

    phys = _physical_maps(
        (32, 32, 32), (220.0, 220.0, 220.0), CoilConfig(), np.random.default_rng(0)
    )[:, mask]
    s = np.linalg.svd(phys, compute_uv=False)
    assert (s[:10] ** 2).sum() / (s**2).sum() > 0.85
    # the physical array covers the head: its RSS varies less than 20× inside the head
    prss = np.sqrt((np.abs(phys) ** 2).sum(axis=0))
    assert prss.max() / prss.min() < 20
    with pytest.raises(InputError, match="virtual coils"):
        compress(np.ones((3, 4, 4, 4), np.complex64), 5)
