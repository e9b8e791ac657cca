"""Coil compression of a whole scan (:func:`spurig_core.operators.coil_maps.compress_scan`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spurig_core.data import FispSequence
from spurig_core.errors import InputError
from spurig_core.operators.coil_maps import compress_scan
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
