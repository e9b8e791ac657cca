"""The acquired data against the calibration: noise in calibration units, and consistency (#20).

:func:`source_noise` sets the noise of the noise-matched kernel fit; :func:`data_consistency` is
the part of the iGROG self-check (:mod:`~spurig_core.operators.igrog_check`) that looks at the
acquired data rather than at the calibration.

An iGROG kernel is fitted on calibration data and applied to the acquired k-space.  When the
calibration has a much higher signal-to-noise ratio than one repetition of the acquisition — a
separate calibration scan, a proton-density contrast against a small-flip-angle MRF echo, or a
simulator that adds noise to the two differently — the fit is free to use large, cancelling
weights (on weak virtual coils, on nearly collinear sources) that reproduce the clean calibration
exactly but amplify the acquisition's noise: GRAPPA's g-factor.  A GRAPPA fit is regularised for
this with a ridge; the equivalent for the INR is to fit it on calibration sources that carry the
noise the acquired sources will carry (``E‖G(s + n) − t‖`` instead of ``‖G s − t‖``).

:func:`source_noise` measures that noise, in the units of the calibration data:

``data_noise``
    RMS of the acquired samples in the outermost shell of k-space (``|k| ≥ shell · k_max``),
    where the signal has fallen well below the noise on a Nyquist-sampled readout: an upper
    bound on the per-sample noise standard deviation (the weak signal there adds to it).
``scale_ratio``
    ``‖calibration(k_i)‖ / ‖y_i‖`` over acquired samples ``k_i`` near the k-space centre (inside
    the calibration cube and :data:`~spurig_core.operators.igrog_check.SPOT_RADIUS`), with the
    calibration's values at those positions from its band-limited interpolation: converts the
    acquisition's units (and contrast, averaged over repetitions) to the calibration's.
``source_noise``
    ``scale_ratio · data_noise``: the noise the calibration sources should carry.
``calibration_noise``
    RMS of the calibration's own outermost shell (the corners of its cube, ``|k| ≥ 0.9`` of the
    largest): its noise, or — for a clean calibration — the weak signal there (an upper bound).
``added_noise``
    ``√max(0, source_noise² − calibration_noise²)``: what
    :func:`~.igrog_train.train_kernel` adds, so that the sources carry about the
    acquisition's noise — nothing much when the calibration is as noisy as the data (the
    simulator's scans: 32³, 20³ calibration: target 39.4, calibration's own 38.9 against a true
    37.5), nearly all of it for a noise-free calibration (39.2 and 8.9).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError

__all__ = ["data_consistency", "source_noise"]


def source_noise(
    kspace: torch.Tensor,
    trajectory: torch.Tensor,
    calibration: torch.Tensor,
    *,
    samples: int = 16384,
    shell: float = 0.9,
    seed: int = 0,
) -> dict[str, float]:
    """Noise of the acquired samples, expressed in the calibration data's units.

    Parameters
    ----------
    kspace : Tensor, shape (coils, groups, tr, samples), complex
    trajectory : Tensor, shape (groups, tr, samples, 3), float
        Cycles/FOV.
    calibration : Tensor, shape (coils, cx, cy, cz), complex
        SPEC §3 calibration data (same coils as ``kspace``).
    samples : int
        Acquired samples drawn at random for each of the two estimates.
    shell : float
        Inner radius of the noise shell as a fraction of the largest ``|k|`` (0.5 to 1).
    seed : int

    Returns
    -------
    dict of str to float
        ``data_noise``, ``scale_ratio``, ``source_noise``, ``calibration_noise``,
        ``added_noise`` (module notes) and ``shell_samples``, ``centre_samples`` (how many
        samples each estimate used); ``source_noise`` is 0 when no acquired sample lies near the
        centre.
    """
    from .igrog_check import SPOT_RADIUS
    from .igrog_sources import calibration_image, calibration_kspace

    if kspace.shape[0] != calibration.shape[0]:
        raise InputError(
            f"calibration: {calibration.shape[0]} coils, k-space {kspace.shape[0]} coils"
        )
    if not 0.5 <= shell < 1.0:
        raise InputError(f"noise shell: {shell} is outside [0.5, 1)")
    gen = torch.Generator().manual_seed(seed)
    coils = int(kspace.shape[0])
    ksp = kspace.reshape(coils, -1)
    traj = trajectory.reshape(-1, 3)
    radius = torch.linalg.vector_norm(traj.float(), dim=-1)
    k_max = float(radius.max())

    def draw(mask: torch.Tensor) -> torch.Tensor:
        where = torch.nonzero(mask).squeeze(1)
        pick = torch.randperm(where.numel(), generator=gen)[:samples]
        return where[pick]

    outer = draw(radius >= shell * k_max)
    y_out = ksp[:, outer].to(torch.complex128)
    data_noise = float(y_out.abs().square().mean().sqrt()) if outer.numel() else 0.0
    half = torch.tensor(calibration.shape[-3:], dtype=torch.float32) / 2 - 1
    inner = (traj.float().abs() < torch.clamp(half, max=SPOT_RADIUS)).all(dim=-1)
    centre = draw(inner & (radius > 0))
    out = {
        "shell_samples": float(outer.numel()),
        "centre_samples": float(centre.numel()),
        "calibration_noise": _corner_rms(calibration),
    }
    if centre.numel() == 0 or data_noise == 0.0:
        zero = {"data_noise": data_noise, "scale_ratio": 0.0, "source_noise": 0.0}
        return {**out, **zero, "added_noise": 0.0}
    y_in = ksp[:, centre].to(torch.complex128)
    cal = calibration_kspace(calibration_image(calibration), traj[centre].double())
    ratio = float(torch.linalg.vector_norm(cal) / torch.linalg.vector_norm(y_in).clamp_min(1e-300))
    if not math.isfinite(ratio):
        ratio = 0.0
    target = ratio * data_noise
    return {
        **out,
        "data_noise": data_noise,
        "scale_ratio": ratio,
        "source_noise": target,
        "added_noise": math.sqrt(max(target**2 - out["calibration_noise"] ** 2, 0.0)),
    }


def _corner_rms(calibration: torch.Tensor) -> float:
    """RMS of the calibration cube's outermost shell (``|k| ≥ 0.9 · max |k|``)."""
    axes = [torch.arange(c, dtype=torch.float64) - c // 2 for c in calibration.shape[-3:]]
    kx, ky, kz = torch.meshgrid(*axes, indexing="ij")
    radius = torch.sqrt(kx**2 + ky**2 + kz**2)
    shell = radius >= 0.9 * radius.max()
    return float(calibration[:, shell].to(torch.complex128).abs().square().mean().sqrt())


def _loo_offsets(n: int, stride: torch.Tensor) -> torch.Tensor:
    """Readout offsets ``(m, n)`` of ``n`` sources around a left-out sample, for strides ``m``.

    Stride 1: the ``n + 1`` nearest readout neighbours without the sample itself; stride ``m > 1``:
    ``n`` sources ``m`` apart with the sample in the middle of a gap (as the strided sources of
    :func:`~.igrog_sources.find_sources` with the target between two of them).
    """
    j = torch.arange(n, device=stride.device) - (n - 1) // 2
    off = stride[:, None] * j[None, :] + torch.div(stride, 2, rounding_mode="floor")[:, None]
    return torch.where((stride[:, None] == 1) & (off >= 0), off + 1, off)


def _loo_samples(
    arms: torch.Tensor,
    n: int,
    spacing: float,
    radius: float,
    cube: float,
    samples: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw at most ``samples`` left-out samples and their ``n`` sources at random.

    The left-out samples ``(arm, sample)`` have ``|k| < radius`` per axis; their sources are
    readout indices ``(m, n)``, all inside the arm and inside ``|k| < cube``.
    """
    ns = arms.shape[1]
    where = torch.nonzero((arms.abs() < radius).all(dim=-1))
    where = where[torch.randperm(where.shape[0], generator=gen)[: 4 * samples]]
    a, s = where[:, 0], where[:, 1]
    step = torch.linalg.vector_norm(arms[a, (s + 1).clamp(max=ns - 1)] - arms[a, s], dim=-1)
    stride = torch.ones_like(s)
    if spacing > 0:
        stride = torch.clamp(torch.round(spacing / step.clamp_min(1e-6)), min=1).long()
    src = s[:, None] + _loo_offsets(n, stride)
    ok = (src.min(dim=1).values >= 0) & (src.max(dim=1).values < ns)
    a, s, src = a[ok], s[ok], src[ok]
    ok = (arms[a[:, None], src].abs() < cube).all(dim=-1).all(dim=-1)
    return a[ok][:samples], s[ok][:samples], src[ok][:samples]


def data_consistency(
    kernel: Any,
    calibration: torch.Tensor,
    kspace: torch.Tensor,
    trajectory: torch.Tensor,
    *,
    samples: int = 4096,
    radius: float = 2.0,
    seed: int = 0,
) -> dict[str, float]:
    """Test if the calibration describes the acquired data: the kernel on the acquisition itself.

    Acquired samples near the k-space centre (``|k| < radius`` per axis, high SNR) are left out
    and predicted by the kernel from ``n`` other samples of their own arm (readout neighbours, or
    sources about ``source_spacing`` apart with the sample between two of them); the same
    geometry is evaluated on the calibration data (band-limited interpolation at the very same
    positions).  A kernel whose calibration describes the data predicts both equally well; a
    calibration from another coil compression, coil order, scaling or position predicts the
    calibration but not the data.  The calibration-only checks cannot see this.  The acquired
    data's noise (:func:`source_noise`'s ``data_noise``, ``σ``) is taken out of the data error:
    its expected energy ``σ² Σ (‖G_c‖² + 1)`` (the kernel's weights on noisy sources plus the
    target's own noise) is subtracted, so a noisier scan does not look inconsistent.

    Parameters
    ----------
    kernel : IGROGKernel
    calibration : Tensor, shape (coils, cx, cy, cz), complex
    kspace : Tensor, shape (coils, groups, tr, samples), complex
    trajectory : Tensor, shape (groups, tr, samples, 3), float
    samples : int
        Left-out samples to predict (at most).
    radius : float
        Largest ``|k|`` per axis (cycles/FOV) of the left-out samples; kept inside the
        calibration cube with room for the sources.
    seed : int

    Returns
    -------
    dict of str to float
        ``data_rel_error`` (acquired data, noise taken out), ``data_cal_rel_error`` (the same
        geometry on the calibration), their ratio ``data_error_ratio``, ``data_raw_rel_error``
        (noise left in) and ``data_samples``; NaN errors when no sample qualifies.
    """
    from .igrog_sources import calibration_image, calibration_kspace

    gen = torch.Generator().manual_seed(seed)
    n, coils = int(kernel.n_sources), int(kspace.shape[0])
    arms = trajectory.reshape(-1, trajectory.shape[-2], 3).float().cpu()
    ksp = kspace.reshape(coils, arms.shape[0], arms.shape[1])
    spacing = float(kernel.config.get("source_spacing", 0.0))
    half = float(min(calibration.shape[-3:])) / 2 - 2
    a, s, src = _loo_samples(arms, n, spacing, min(radius, half), half + 1, samples, gen)
    if a.numel() == 0:
        keys = ("data_rel_error", "data_raw_rel_error", "data_cal_rel_error", "data_error_ratio")
        return {"data_samples": 0.0, **dict.fromkeys(keys, float("nan"))}
    k_t = arms[a, s].double()  # (m, 3)
    k_s = arms[a[:, None], src].double()  # (m, n, 3)
    disp = (k_s - k_t[:, None]).float()
    y_t = ksp[:, a, s].T.to(torch.complex64)  # (m, coils)
    y_s = ksp[:, a[:, None], src].permute(1, 0, 2).to(torch.complex64)  # (m, coils, n)
    pts = torch.cat([k_t[:, None], k_s], dim=1).reshape(-1, 3)
    cal = calibration_kspace(calibration_image(calibration), pts)
    cal = cal.view(coils, -1, 1 + n).to(torch.complex64)
    c_t, c_s = cal[:, :, 0].T, cal[:, :, 1:].permute(1, 0, 2)
    dev = kernel.freqs.device

    def energies(sources: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
        err = sig = gain = 0.0  # ‖pred − target‖², ‖target‖², Σ_c ‖G_c‖²
        with torch.inference_mode():
            for i in range(0, disp.shape[0], 4096):
                g = kernel(disp[i : i + 4096].to(dev)).cpu()  # (b, coils, coils·n)
                sv = sources[i : i + 4096].reshape(g.shape[0], -1, 1)
                pred = torch.bmm(g, sv).squeeze(-1)
                err += float((pred - target[i : i + 4096]).abs().square().sum())
                sig += float(target[i : i + 4096].abs().square().sum())
                gain += float(g.abs().square().sum())
        return err, sig, gain

    err_d, sig_d, gain = energies(y_s, y_t)
    err_c, sig_c, _ = energies(c_s, c_t)
    sigma = source_noise(kspace, trajectory, calibration, seed=seed)["data_noise"]
    m_t = float(y_t.numel())
    noise_err = sigma**2 * (gain + m_t)  # E‖G n_s − n_t‖² for white noise of variance σ²
    e_raw = math.sqrt(err_d / max(sig_d, 1e-300))
    e_data = math.sqrt(max(err_d - noise_err, 0.0) / max(sig_d - sigma**2 * m_t, 1e-300))
    e_cal = math.sqrt(err_c / max(sig_c, 1e-300))
    return {
        "data_samples": float(a.numel()),
        "data_rel_error": e_data,
        "data_raw_rel_error": e_raw,
        "data_cal_rel_error": e_cal,
        "data_error_ratio": e_data / max(e_cal, 1e-12),
    }
