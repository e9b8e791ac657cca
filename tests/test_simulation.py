"""The acquisition simulator: forward model against a direct DFT, signals, noise, files, cohorts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spurig_core import simulation as sim
from spurig_core.config import from_dict, to_dict
from spurig_core.data import FispSequence
from spurig_core.errors import InputError
from spurig_core.io import load_scan
from spurig_core.physics import simulate_signals
from spurig_core.simulation.phantom import analytic_subject
from spurig_core.simulation.signals import _atoms

SHORT = FispSequence(np.array([15.0, 40.0, 70.0, 30.0, 10.0], np.float32))


def _direct_dft(image: np.ndarray, k: np.ndarray) -> np.ndarray:
    """SPEC §3 by definition: Σ_r image(r) exp(−2πi k·(r − N//2)/N), complex128.

    image : (..., x, y, z); k : (m, 3) → (..., m)
    """
    mat = image.shape[-3:]
    pos = np.stack(np.meshgrid(*[np.arange(n) - n // 2 for n in mat], indexing="ij"), -1)
    phase = np.exp(-2j * np.pi * (k[:, None, :] / np.asarray(mat) * pos.reshape(1, -1, 3)).sum(-1))
    return image.reshape(*image.shape[:-3], -1).astype(np.complex128) @ phase.T


@pytest.mark.parametrize("matrix", [(8, 8, 8), (7, 9, 8)])
def test_nufft_forward_matches_direct_dft(matrix: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    rank, coils, groups, tr, samples = 3, 2, 2, 3, 20

    def crandn(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)

    images, maps, basis = crandn(rank, *matrix), crandn(coils, *matrix), crandn(tr, rank)
    half = np.asarray(matrix) / 2
    traj = rng.uniform(-half, half, (groups, tr, samples, 3)).astype(np.float32)
    traj[0, 0, 0] = -half  # the edge of the range
    out = sim.nufft_forward(
        torch.from_numpy(images),
        torch.from_numpy(maps),
        torch.from_numpy(traj),
        torch.from_numpy(basis),
        eps=1e-7,
        group_chunk=1,
    ).numpy()
    assert out.shape == (coils, groups, tr, samples) and out.dtype == np.complex64
    ref = np.empty(out.shape, np.complex128)
    for g in range(groups):
        for t in range(tr):
            m_t = (images * basis[t][:, None, None, None]).sum(0)  # (x, y, z)
            ref[:, g, t] = _direct_dft(maps * m_t[None], traj[g, t].astype(np.float64))
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_calibration_matches_direct_dft() -> None:
    rng = np.random.default_rng(1)
    mat = (8, 7, 6)
    image = (rng.standard_normal(mat) + 1j * rng.standard_normal(mat)).astype(np.complex64)
    maps = (rng.standard_normal((2, *mat)) + 1j * rng.standard_normal((2, *mat))).astype(
        np.complex64
    )
    size = (4, 5, 3)
    cal = sim.calibration_data(torch.from_numpy(image), torch.from_numpy(maps), size).numpy()
    assert cal.shape == (2, *size)
    freqs = np.stack(np.meshgrid(*[np.arange(c) - c // 2 for c in size], indexing="ij"), -1)
    ref = _direct_dft(maps * image[None], freqs.reshape(-1, 3).astype(np.float64)).reshape(
        cal.shape
    )
    np.testing.assert_allclose(cal, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def _exact_series(subject, sequence) -> np.ndarray:
    """Independent m_t(r): per-voxel EPG per compartment, fraction-weighted — (x·y·z, tr)."""
    frac = subject.fractions.reshape(4, -1)
    out = np.zeros((frac.shape[1], sequence.n_tr), np.complex128)
    b1 = subject.b1.reshape(-1)
    for j in range(4):
        v = np.flatnonzero(frac[j] > 0)
        sig = simulate_signals(
            subject.t1_ms[j].reshape(-1)[v],
            subject.t2_ms[j].reshape(-1)[v],
            b1[v],
            sequence,
            dtype=torch.float64,
        ).numpy()
        out[v] += (frac[j, v] * subject.pd[j].reshape(-1)[v])[:, None] * sig
    return out * np.exp(1j * subject.phase.reshape(-1))[:, None]


def test_whole_simulated_scan_matches_direct_dft() -> None:
    """Subject, coils, partial volume, signals and the NUFFT together against the definition."""
    cfg = sim.SimulationConfig(
        matrix=8,
        coils=3,
        groups=1,
        noise=0.0,
        phantom="analytic",
        svd_tol=1e-12,
        nufft_eps=1e-7,
        calibration=4,
    )
    scan = sim.simulate_scan(cfg, seed=5, sequence=SHORT)
    seed = int(np.random.SeedSequence(5).generate_state(3)[0])
    subject = analytic_subject(8, seed=seed)
    series = _exact_series(subject, SHORT)  # (voxels, tr)
    maps = scan.coil_maps.numpy()
    traj = scan.trajectory.numpy()
    ref = np.empty(scan.kspace.shape, np.complex128)
    for t in range(SHORT.n_tr):
        img = maps * series[:, t].reshape(8, 8, 8)[None]
        ref[:, 0, t] = _direct_dft(img, traj[0, t].astype(np.float64))
    got = scan.kspace.numpy()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    # the reference maps belong to the same subject: pure voxels keep their compartment's PD
    # (mixed ones get the effective single-compartment fit, with the voxel's phase)
    frac = subject.fractions
    pure = frac.max(axis=0) >= sim.SimulationConfig().purity * frac.sum(axis=0)
    got_pd, want_pd = scan.reference.pd.numpy(), subject.pd_complex()
    np.testing.assert_allclose(got_pd[pure], want_pd[pure], rtol=1e-6)
    mixed = ~pure & (scan.reference.tissue.numpy() > 0)
    assert mixed.any()
    np.testing.assert_allclose(np.angle(got_pd[mixed] * np.conj(want_pd[mixed])), 0, atol=1e-5)
    np.testing.assert_array_equal(scan.b1.numpy(), subject.b1)


def test_effective_reference_reproduces_mixed_voxels() -> None:
    """SPEC §5 reference coefficients describe what the scan encodes, partial volume included."""
    from spurig_core.metrics import reference_coefficients
    from spurig_core.physics import default_basis

    cfg = sim.SimulationConfig(matrix=16, phantom="analytic")
    subject = analytic_subject(16, seed=3)
    images, basis, _ = sim.signal_subspace(subject, None, cfg)
    phi = default_basis()
    true = torch.einsum("tk,tj,jxyz->kxyz", phi.conj(), basis, images)
    b1 = torch.from_numpy(subject.b1)

    def err(ref: object) -> float:
        rc = reference_coefficients(ref, phi, b1=b1)  # type: ignore[arg-type]
        return float((true - rc).norm() / true.norm())

    dominant = err(subject.reference())
    effective = err(sim.effective_reference(subject, images, basis, FispSequence.default()))
    assert effective < 0.5 * dominant
    assert effective < 0.1


def test_subspace_rank_and_table_interpolation() -> None:
    subject = analytic_subject(16, seed=2)
    seq = FispSequence.default()
    exact = _exact_series(subject, seq)
    inside = np.abs(exact).sum(axis=1) > 0
    # every signal simulated: the SVD keeps more than the reconstruction's 5 and drops < svd_tol
    cfg = sim.SimulationConfig(matrix=16, exact_max=10**9)
    images, basis, discarded = sim.signal_subspace(subject, seq, cfg)
    rank = images.shape[0]
    assert discarded <= cfg.svd_tol and rank > 5
    approx = images.numpy().reshape(rank, -1).T @ basis.numpy().T  # (voxels, tr)
    rel = np.linalg.norm(approx[inside] - exact[inside], axis=1) / np.linalg.norm(
        exact[inside], axis=1
    )
    overall = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
    assert overall < 1.5 * np.sqrt(cfg.svd_tol), overall
    assert np.median(rel) < 3e-3
    # the default (T1, T2, B1) table: interpolated series within 1e-3 of EPG in every voxel
    table_cfg = sim.SimulationConfig(matrix=16, exact_max=0)
    voxels, w, table = _atoms(subject, seq, table_cfg, None)
    assert table.shape[0] == 4 * int(np.prod(table_cfg.table_points))
    phase = np.exp(1j * subject.phase.reshape(-1)[voxels])[:, None]
    x = (w @ table.astype(np.complex128)) * phase
    ex = exact[voxels]
    rel = np.linalg.norm(x - ex, axis=1) / np.linalg.norm(ex, axis=1)
    assert rel.max() < 1e-3, rel.max()


def test_noise_level_follows_its_definition() -> None:
    base = sim.SimulationConfig(
        matrix=8,
        coils=2,
        groups=2,
        noise=0.0,
        phantom="analytic",
        trajectory_config=sim.TrajectoryConfig(samples=64),
    )
    clean = sim.simulate_scan(base, seed=3, sequence=SHORT)
    noisy = sim.simulate_scan(dataclasses.replace(base, noise=0.05), seed=3, sequence=SHORT)
    centre = np.sqrt(np.mean(np.abs(clean.kspace.numpy()[..., 0]) ** 2))
    diff = (noisy.kspace - clean.kspace).numpy()
    sigma = np.sqrt(np.mean(np.abs(diff) ** 2))
    assert abs(sigma / (0.05 * centre) - 1) < 0.05
    assert abs(diff.real.std() / diff.imag.std() - 1) < 0.1
    cal_diff = (noisy.calibration - clean.calibration).numpy()
    assert np.abs(cal_diff).max() > 0


def _adjoint(scan, phi: np.ndarray) -> np.ndarray:
    """Direct NUFFT adjoint with known coil maps: Σ_c S_c* F_tᴴ (w Φ_tᴴ y_c) → (basis, x, y, z)."""
    import finufft

    n = scan.matrix[0]
    k = scan.trajectory.numpy().reshape(-1, 3).astype(np.float64)
    kr = scan.trajectory.numpy()
    w = np.linalg.norm(kr, axis=-1) ** 2 + 0.5  # |k|² density compensation (3D projections)
    y = scan.kspace.numpy()  # (coils, groups, tr, samples)
    data = np.einsum("tj,cgts,gts->cjgts", phi.conj(), y, w).reshape(-1, k.shape[0])
    img = finufft.nufft3d1(
        *(2 * np.pi * k[:, d] / n for d in range(3)),
        data.astype(np.complex128),
        (n, n, n),
        isign=1,
        eps=1e-6,
    )
    img = img.reshape(y.shape[0], phi.shape[1], n, n, n)
    return np.einsum("cxyz,cjxyz->jxyz", scan.coil_maps.numpy().conj(), img)


def test_round_trip_adjoint_correlates_with_truth() -> None:
    cfg = sim.SimulationConfig(matrix=16, coils=4, groups=2, noise=0.01, phantom="analytic")
    scan = sim.simulate_scan(cfg, seed=11)
    # Φ: top-5 SVD of a small dictionary around the tissue values
    t1, t2 = np.meshgrid(np.geomspace(400, 5000, 14), np.geomspace(30, 2000, 14), indexing="ij")
    dic = simulate_signals(t1.ravel(), t2.ravel(), 1.0).numpy().T  # (tr, atoms)
    phi = np.linalg.svd(dic, full_matrices=False)[0][:, :5]
    est = _adjoint(scan, phi)
    seed = int(np.random.SeedSequence(11).generate_state(3)[0])
    subject = analytic_subject(16, seed=seed)
    truth = (_exact_series(subject, FispSequence.default()) @ phi.conj()).T.reshape(5, 16, 16, 16)
    head = subject.head_mask

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        return float(abs(np.vdot(x, y)) / np.linalg.norm(x) / np.linalg.norm(y))

    # complex correlation of the first two coefficient images inside the head
    assert corr(est[0][head], truth[0][head]) > 0.9
    assert corr(est[1][head], truth[1][head]) > 0.8
    # the adjoint of pure noise is not correlated with the truth
    noise_scan = dataclasses.replace(scan, kspace=torch.randn_like(scan.kspace))
    assert corr(_adjoint(noise_scan, phi)[0][head], truth[0][head]) < 0.3


def test_simulate_writes_a_valid_deterministic_file(tmp_path) -> None:
    kw = dict(matrix=16, coils=4, groups=2, noise=0.01, seed=2, phantom="analytic")
    p1 = sim.simulate(tmp_path / "a.h5", **kw)
    scan = load_scan(p1)
    assert scan.kspace.shape[:3] == (4, 2, 500) and scan.matrix == (16, 16, 16)
    assert scan.fov_mm == (220.0, 220.0, 220.0)
    assert scan.calibration is not None and scan.calibration.shape == (4, 16, 16, 16)
    assert scan.coil_maps is not None and scan.b1 is not None and scan.reference is not None
    rss = scan.coil_maps.abs().pow(2).sum(0).sqrt()
    torch.testing.assert_close(rss, torch.ones_like(rss), atol=1e-5, rtol=0)
    assert set(scan.reference.tissue.unique().tolist()) == {0, 1, 2, 3, 4}
    assert scan.sequence.same_as(FispSequence.default())
    again = load_scan(sim.simulate(tmp_path / "b.h5", **kw))
    torch.testing.assert_close(again.kspace, scan.kspace, rtol=0, atol=0)
    other = load_scan(sim.simulate(tmp_path / "c.h5", **{**kw, "seed": 3}))
    assert not torch.allclose(other.kspace, scan.kspace)
    assert not list(tmp_path.glob(".*.tmp"))


def test_brain_scan_carries_model_mismatch(tmp_path) -> None:
    cfg = sim.SimulationConfig(matrix=16, coils=4, groups=1, noise=0.0)
    scan = sim.simulate_scan(cfg, seed=1)
    assert scan.reference is not None and (scan.reference.tissue == 3).any()
    assert torch.isfinite(torch.view_as_real(scan.kspace)).all()
    from spurig_core.simulation.phantom import brain_subject

    seed = int(np.random.SeedSequence(1).generate_state(3)[0])
    images, _, discarded = sim.signal_subspace(brain_subject(16, seed=seed), None, cfg)
    assert images.shape[0] > 5 and discarded <= cfg.svd_tol


def test_cohort_split_seeds_and_progress(tmp_path) -> None:
    events = []
    paths = sim.simulate_cohort(
        tmp_path,
        subjects=3,
        split="1/1/1",
        matrix=8,
        coils=2,
        groups=1,
        noise=0.0,
        phantom="analytic",
        callback=events.append,
    )
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "train/subj000.h5",
        "val/subj001.h5",
        "test/subj002.h5",
    ]
    a, b = (load_scan(p).reference.t1_ms for p in paths[:2])
    assert not torch.equal(a, b)  # different seeds
    assert [e.step for e in events if e.stage == "cohort"] == [1, 2, 3]
    mtime = paths[0].stat().st_mtime_ns
    sim.simulate_cohort(
        tmp_path, subjects=3, split="1/1/1", matrix=8, coils=2, groups=1, phantom="analytic"
    )
    assert paths[0].stat().st_mtime_ns == mtime  # existing subjects are kept
    with pytest.raises(InputError, match="split"):
        sim.simulate_cohort(tmp_path, subjects=3, split="2/2/2")
    with pytest.raises(InputError, match="split"):
        sim.simulate_cohort(tmp_path, subjects=3, split="a/b")


def test_config_validation_and_round_trip() -> None:
    cfg = sim.SimulationConfig(matrix=32, groups=16)
    assert from_dict(sim.SimulationConfig, to_dict(cfg)) == cfg
    for bad in ({"groups": 49}, {"noise": -1.0}, {"coils": 0}, {"matrix": 2}):
        with pytest.raises(InputError):
            sim.SimulationConfig(**bad)
    with pytest.raises(InputError, match="coils"):
        sim.simulate("unused.h5", matrix=8, coils=40, groups=1)


def test_sample_scan_lookup(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spurig_core.simulation import sample as sim

    monkeypatch.setenv("SPURIG_SAMPLE_DIR", str(tmp_path))
    monkeypatch.setattr(sim, "_sample_dirs", lambda: [tmp_path])
    with pytest.raises(InputError, match="not found"):
        sim.sample_scan_path(create=False)
    (tmp_path / sim.SAMPLE_NAME).write_bytes(b"x")
    assert sim.sample_scan_path(create=False) == tmp_path / sim.SAMPLE_NAME
