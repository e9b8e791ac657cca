"""Coil compression of a whole scan (:func:`spurig_core.operators.coil_maps.compress_scan`)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from spurig_core.data import FispSequence
from spurig_core.errors import InputError
from spurig_core.io import load_scan, write_scan
from spurig_core.operators.coil_maps import compress_scan, compression_matrix, virtual_coils
from spurig_core.operators.igrog import GriddingConfig, grid_scan
from spurig_core.pipeline import reconstruct
from spurig_core.recon.methods import method_gridding
from spurig_core.simulation import SimulationConfig, simulate_scan


@pytest.fixture(scope="module")
def scan():
    cfg = SimulationConfig(matrix=16, coils=8, groups=2, phantom="analytic", calibration=12)
    seq = FispSequence(flip_angle_deg=FispSequence.default().flip_angle_deg[::10])
    return simulate_scan(cfg, seed=2, sequence=seq)


def _energy(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x) ** 2)


def test_virtual_coils_keep_more_calibration_energy_than_any_physical_subset(scan):
    out = compress_scan(scan, 4)
    assert out.kspace.shape == (4, *scan.kspace.shape[1:])
    assert out.calibration.shape == (4, *scan.calibration.shape[1:])
    assert out.coil_maps.shape == (4, *scan.coil_maps.shape[1:])
    kept = _energy(out.calibration)
    per_coil = sorted((_energy(c) for c in scan.calibration), reverse=True)
    assert kept > sum(per_coil[:4])  # the SVD beats the four strongest physical channels
    assert kept <= _energy(scan.calibration) * (1 + 1e-5)  # a projection never adds energy
    assert scan.kspace.shape[0] == 8  # the input scan is unchanged


def test_all_virtual_coils_are_a_unitary_mix_that_keeps_the_coil_combined_adjoint(scan):
    out = compress_scan(scan, 8)
    # sum_c conj(S'_c) y'_c = sum_c conj(S_c) y_c when A is unitary: the SENSE-combined data agree
    # (the k-space of every coil weighted by the map value at the centre voxel stands in for it)
    centre = tuple(s // 2 for s in scan.matrix)
    w0, w1 = scan.coil_maps[(slice(None), *centre)], out.coil_maps[(slice(None), *centre)]
    a = torch.einsum("c,ck->k", w0.conj(), scan.kspace.reshape(8, -1))
    b = torch.einsum("c,ck->k", w1.conj(), out.kspace.reshape(8, -1))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_white_noise_stays_white_with_the_same_variance(scan):
    gen = torch.Generator().manual_seed(0)
    shape = scan.kspace.shape
    z = torch.randn((2, *shape), generator=gen)
    noise = dataclasses.replace(scan, kspace=torch.complex(z[0], z[1]) / 2**0.5)
    out = compress_scan(noise, 4, matrix=None)
    flat = out.kspace.reshape(4, -1)
    cov = flat @ flat.conj().T / flat.shape[1]
    tol = 5 / flat.shape[1] ** 0.5  # five standard errors of a sample variance
    assert torch.allclose(cov.diagonal().real, torch.ones(4), atol=tol)
    off = cov - torch.diag(cov.diagonal())
    assert float(off.abs().max()) < tol


def test_an_impossible_coil_count_is_one_clear_error(scan):
    with pytest.raises(InputError, match="choose 1 to 8 virtual coils"):
        compress_scan(scan, 9)
    with pytest.raises(InputError, match="compression matrix"):
        compress_scan(scan, 4, matrix=torch.eye(4, 8, dtype=torch.complex64).numpy()[:3])


# ---------------------------------------------------------------------------------------------
# gridding.max_coils: every method reconstructs the same compressed scan (issue #20)
# ---------------------------------------------------------------------------------------------
FAST = {"gridding": {"steps": 60, "train_sets": 128, "check": False}, "llr": {"iterations": 3}}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    # LLR's singular-value thresholds and 2-thread finufft (not bit-reproducible) let two runs
    # on the same data differ slightly; a different channel mix would differ by tens of percent
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.fixture(scope="module")
def many_coils():
    cfg = SimulationConfig(matrix=16, coils=20, groups=2, phantom="analytic", calibration=16)
    seq = FispSequence(flip_angle_deg=FispSequence.default().flip_angle_deg[::10])
    return simulate_scan(cfg, seed=3, sequence=seq)


def test_the_compression_is_a_function_of_the_data_not_of_the_singular_vectors_phases(scan):
    data = scan.calibration.reshape(8, -1).numpy()
    a = compression_matrix(data, 4)
    lead = a[np.arange(4), np.abs(a).argmax(axis=1)]
    assert np.allclose(lead.imag, 0, atol=1e-6) and (lead.real > 0).all()
    # a global phase or a reordering of the samples leaves the singular subspaces alone,
    # so the matrix must not change (LAPACK returns each vector with an arbitrary phase)
    perm = np.random.default_rng(0).permutation(data.shape[1])
    for other in (data * np.exp(0.7j), data[:, perm]):
        assert np.allclose(compression_matrix(other, 4), a, atol=1e-5)


def test_virtual_coils_compress_only_above_max_coils(scan, many_coils):
    assert virtual_coils(scan, 16) is scan
    assert virtual_coils(many_coils, 0) is many_coils  # 0: never
    out = virtual_coils(many_coils, 16)
    assert out.kspace.shape[0] == out.coil_maps.shape[0] == out.calibration.shape[0] == 16
    again = virtual_coils(many_coils, 16)
    assert torch.equal(out.kspace, again.kspace) and torch.equal(out.coil_maps, again.coil_maps)


def test_grid_scan_refuses_more_channels_than_max_coils(many_coils):
    cfg = GriddingConfig(steps=10, train_sets=64)
    with pytest.raises(InputError, match=r"20 channels, more than gridding.max_coils = 16"):
        grid_scan(many_coils, config=cfg)


def test_every_method_reconstructs_the_compressed_scan_and_records_it(many_coils, tmp_path):
    path = tmp_path / "many.h5"
    write_scan(many_coils, path)
    results = {m: reconstruct(path, method=m, config=FAST) for m in ("llr", "llr-nufft")}
    for res in results.values():
        assert res.config["coil_compression"] == {"acquired": 20, "virtual": 16}
        assert res.source["path"] == str(path)  # the acquired file, not the compressed copy
    # the NUFFT method on the compressed scan equals the NUFFT method on a pre-compressed file
    small = tmp_path / "small.h5"
    write_scan(virtual_coils(load_scan(path), 16), small)
    ref = reconstruct(small, method="llr-nufft", config=FAST)
    assert "coil_compression" not in ref.config
    assert _rel(ref.coefficients, results["llr-nufft"].coefficients) < 1e-2
    # a gridding of the compressed scan (on LLR's own grid) is reused; one of another channel
    # count is refused
    gcfg = GriddingConfig(**{**FAST["gridding"], **method_gridding("llr")})
    gridded, _ = grid_scan(virtual_coils(load_scan(path), 16), config=gcfg)
    again = reconstruct(path, method="llr", config=FAST, gridded=gridded)
    assert _rel(again.coefficients, results["llr"].coefficients) < 2e-2
    off = {**FAST, "gridding": {**FAST["gridding"], "max_coils": 0}}
    with pytest.raises(InputError, match=r"gridded data: 16 coils, the scan .* 20"):
        reconstruct(path, method="llr", config=off, gridded=gridded)


def test_max_coils_below_zero_is_one_line_and_exit_2(many_coils, tmp_path):
    path = tmp_path / "many.h5"
    write_scan(many_coils, path)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[gridding]\nmax_coils = -1\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spurig_core.cli",
            "recon",
            str(path),
            str(tmp_path / "r.zarr"),
            "--method",
            "adjoint",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "max_coils" in proc.stderr and ">= 0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.zarr").exists()
