"""ESPIRiT coil maps against known smooth sensitivities, and the coil operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helper import random_like_shape, rel_err
from spurig_core.errors import InputError
from spurig_core.operators.coil_maps import CoilOperator, EspiritConfig, espirit
from spurig_core.progress import ProgressEvent

N = 24


def _positions(n: int) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij"), -1).astype(float)


def _smooth_maps(n: int, coils: int, seed: int = 0) -> np.ndarray:
    """Loop-like smooth sensitivities around the FOV with smooth, different phases."""
    rng = np.random.default_rng(seed)
    r = _positions(n)
    maps = []
    for c in range(coils):
        th = 2 * np.pi * c / coils
        centre = np.array([0.7 * n * np.cos(th), 0.7 * n * np.sin(th), (c % 2 - 0.5) * 0.6 * n])
        mag = np.exp(-((r - centre) ** 2).sum(-1) / (2 * (0.6 * n) ** 2))
        phase = r @ rng.uniform(-1, 1, 3) * np.pi / n + rng.uniform(0, 2 * np.pi)
        maps.append(mag * np.exp(1j * phase))
    return np.array(maps)


def _object(n: int) -> tuple[np.ndarray, np.ndarray]:
    r = _positions(n)
    inside = ((r / (np.array([0.4, 0.35, 0.3]) * n)) ** 2).sum(-1) < 1
    img = inside * (1 + 0.3 * np.cos(r[..., 0] / 3) * np.sin(r[..., 1] / 4))
    return img, inside


def _calibration(coil_images: np.ndarray, size: int) -> torch.Tensor:
    """Centre of k-space by numpy's FFT with fftshift (an independent route to SPEC §3)."""
    ax = (1, 2, 3)
    ks = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(coil_images, axes=ax), axes=ax), axes=ax)
    n = coil_images.shape[1]
    o = n // 2 - size // 2
    return torch.from_numpy(ks[:, o : o + size, o : o + size, o : o + size].astype(np.complex64))


def _agreement(est: np.ndarray, true: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Worst coil's magnitude correlation and relative-phase (complex) correlation in ``mask``.

    Both maps are normalised to unit root-sum-of-squares and referred to coil 0's phase.
    """

    def rel(m: np.ndarray) -> np.ndarray:
        m = m / np.maximum(np.sqrt((np.abs(m) ** 2).sum(0)), 1e-12)
        return m * np.conj(m[0]) / np.maximum(np.abs(m[0]), 1e-12)

    a, b = rel(true), rel(est)
    mags, cplx = [], []
    for c in range(true.shape[0]):
        x, y = a[c][mask], b[c][mask]
        mags.append(np.corrcoef(np.abs(x), np.abs(y))[0, 1])
        cplx.append(np.abs(np.vdot(x, y)) / (np.linalg.norm(x) * np.linalg.norm(y)))
    return float(min(mags)), float(min(cplx))


def test_espirit_recovers_smooth_maps() -> None:
    coils = 6
    true = _smooth_maps(N, coils)
    img, inside = _object(N)
    calib = _calibration(true * img, 12)
    events: list[ProgressEvent] = []
    est = espirit(calib, (N, N, N), config=EspiritConfig(kernel_width=5), callback=events.append)
    assert est.shape == (coils, N, N, N) and est.dtype == torch.complex64
    assert events and events[-1].step == events[-1].total
    e = est.numpy()
    mag, cplx = _agreement(e, true, inside)
    assert mag > 0.95 and cplx > 0.95, (mag, cplx)
    # unit norm over coils inside the object, zero far outside (eigenvalue crop)
    rss = np.sqrt((np.abs(e) ** 2).sum(0))
    assert np.allclose(rss[inside], 1.0, atol=1e-3)
    corner = np.zeros_like(inside)
    corner[:3, :3, :3] = True
    assert rss[corner].max() == 0.0
    # negative controls: the test is able to fail
    flipped = true[:, ::-1, ::-1, ::-1]
    assert (
        max(_agreement(flipped, true, inside)) < 0.95
        or min(_agreement(flipped, true, inside)) < 0.9
    )
    assert _agreement(np.conj(true), true, inside)[1] < 0.9


def test_espirit_is_scale_invariant_and_uses_the_central_region() -> None:
    coils = 4
    true = _smooth_maps(N, coils, seed=3)
    img, inside = _object(N)
    calib = _calibration(true * img, 16)
    cfg = EspiritConfig(kernel_width=4, max_calibration=12)
    a = espirit(calib, (N, N, N), config=cfg)
    b = espirit(1e3 * calib, (N, N, N), config=cfg)
    c = espirit(calib[:, 2:14, 2:14, 2:14], (N, N, N), config=cfg)  # the same central 12³
    assert rel_err(a[:, inside], b[:, inside]) < 1e-3
    assert rel_err(a[:, inside], c[:, inside]) < 1e-4


def test_espirit_on_the_simulated_head_array() -> None:
    """Against the simulator's true maps (Biot–Savart head array) of an analytic subject."""
    pytest.importorskip("spurig_core.simulation")
    from spurig_core.simulation import calibration_data
    from spurig_core.simulation.coils import head_array
    from spurig_core.simulation.phantom import analytic_subject

    n = 24
    subject = analytic_subject(n, seed=1)
    maps = head_array(n, 6, fov_mm=subject.fov_mm, mask=subject.head_mask, seed=2)
    pd = torch.from_numpy(subject.pd_complex())
    calib = calibration_data(pd, maps, 12)
    est = espirit(calib, (n, n, n), config=EspiritConfig(kernel_width=5)).numpy()
    brain = np.isin(np.asarray(subject.tissue), (1, 2, 3))
    assert brain.sum() > 100
    mag, cplx = _agreement(est, maps.numpy(), brain)
    assert mag > 0.95 and cplx > 0.95, (mag, cplx)


def test_espirit_noise_floor_keeps_noisy_calibrations_usable() -> None:
    """Strong calibration noise must not flood the signal space (every kernel kept = no maps)."""
    coils = 6
    true = _smooth_maps(N, coils, seed=5)
    img, inside = _object(N)
    calib = _calibration(true * img, 16).numpy()
    rng = np.random.default_rng(7)
    sigma = 0.02 * np.abs(calib[:, 8, 8, 8]).mean()  # 2 % of the k-space centre
    noise = rng.standard_normal(calib.shape) + 1j * rng.standard_normal(calib.shape)
    noisy = torch.from_numpy((calib + sigma * noise / np.sqrt(2)).astype(np.complex64))
    est = espirit(noisy, (N, N, N)).numpy()
    mag, cplx = _agreement(est, true, inside)
    assert mag > 0.95 and cplx > 0.95, (mag, cplx)


def test_espirit_rejects_bad_calibration() -> None:
    with pytest.raises(InputError, match="calibration"):
        espirit(torch.zeros(4, 8, 8), (16, 16, 16))
    with pytest.raises(InputError, match="zeros"):
        espirit(torch.zeros(4, 8, 8, 8, dtype=torch.complex64), (16, 16, 16))
    bad = torch.ones(4, 8, 8, 8, dtype=torch.complex64)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or Inf"):
        espirit(bad, (16, 16, 16))


def test_coil_operator_shapes_and_gram(rng: torch.Generator) -> None:
    maps = random_like_shape((3, 6, 5, 4), rng)
    s = CoilOperator(maps)
    x = random_like_shape((6, 5, 4), rng)
    y = s(x)
    assert y.shape == (3, 6, 5, 4)
    assert rel_err(y[1], maps[1] * x) < 1e-7
    sb = CoilOperator(maps, in_shape=(5, 6, 5, 4))
    xb = random_like_shape((5, 6, 5, 4), rng)
    assert sb(xb).shape == (3, 5, 6, 5, 4)
    assert rel_err(sb(xb)[2, 4], maps[2] * xb[4]) < 1e-7
    assert rel_err(sb.gram(xb), sb.adjoint(sb(xb))) < 1e-6
    with pytest.raises(InputError):
        CoilOperator(maps, in_shape=(5, 6, 5, 5))
    with pytest.raises(InputError, match="coil_maps"):
        CoilOperator(maps[0])
