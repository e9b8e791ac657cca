"""Self-check of iGROG gridding: whether this scan is inside what the kernel can grid well.

After the kernel is trained (:func:`~.igrog_train.train_kernel`), three numbers
describe how well it grids *this* scan:

``held_out_rel_error``
    Relative error on held-out calibration pairs (5 % of the training displacement sets, targets
    at random calibration positions) — the kernel's own validation metric.
``spot_rel_error``
    A NUFFT spot check on ``check_samples`` (default 4096) randomly chosen acquired samples: each
    sample's real configuration (its target grid point and the positions of the sources
    :func:`~.igrog_sources.find_sources` picks for it) is translated to a random place
    inside the calibration cube (at most :data:`SPOT_RADIUS` from its centre), the exact values
    at the translated target and sources are taken from the calibration data by a type-2 NUFFT
    (:func:`~.igrog_sources.calibration_kspace`), and the kernel's prediction is
    compared with the exact target value.  Configurations whose reach does not fit inside the
    cube are counted in ``spot_coverage`` (the fraction that could be checked).  The kernel sees
    only displacements, so this measures its error on the scan's own geometry, sample-weighted as
    acquired.  ``spot_nearest_rel_error`` is the same for the no-kernel move.
``noise_gain``
    Image-domain noise amplification of the gridding, relative to moving the samples without a
    kernel (which matches the NUFFT adjoint's noise, ratio 1.00 in the benchmark): unit complex
    white noise on ``noise_arms`` random arms is gridded with the kernel and without, weighted
    by the data term's density weights ``√w`` (:func:`~spurig_core.operators.encoding.
    density_weights`, ``γ = 0.5``), scattered onto the oversampled grid, transformed and cropped
    to the image; the ratio of the two image RMS values.  Noise shared between neighbouring
    targets (the same sources) adds coherently there, so this is not the per-sample weight norm.

``data_rel_error`` / ``data_error_ratio``
    With the acquired k-space (:func:`~spurig_core.operators.igrog_noise.data_consistency`):
    acquired samples near the centre left out and predicted from their own arm, against the same
    geometry on the calibration, the acquisition's noise taken out.  The checks above test the
    kernel on the calibration it was fitted to; this one sees a calibration that does not describe
    the acquired data (another coil order or compression: measured 1.44–1.76 at 16³ for permuted
    coils, 0.69–0.75 for matching ones at noise 0.02 and 0.05).

The check *fails* when ``spot_rel_error > max_rel_error`` (0.3), when
``spot_rel_error > max_error_ratio · spot_nearest_rel_error`` (0.85: the kernel barely beats the
plain move), when ``noise_gain > max_noise_gain`` (1.3) or when
``data_error_ratio > max_data_error_ratio`` (1.3) — fields of
:class:`~spurig_core.operators.igrog.GriddingConfig`; the measurements behind these bounds are in
``benchmarks/RESULTS-igrog.md``.  :func:`gridding_warning` words the one-line message the
reconstruction prints, :func:`apply_gridding_check` is what ``reconstruct`` does with it.

What the check cannot see: it tests the kernel against the calibration it was trained on, so a
calibration that does not describe the acquired data (another coil compression, another
session) passes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .fourier import crop3, ifft3c
from .grid import grid_shape, nearest_grid_index

if TYPE_CHECKING:
    from .igrog import GriddingConfig
    from .igrog_kernel import IGROGKernel

__all__ = [
    "ON_BAD_GRIDDING",
    "SPOT_RADIUS",
    "apply_gridding_check",
    "check_gridding",
    "gridding_warning",
    "noise_gain",
    "spot_check",
]

#: Choices of ``--on-bad-gridding``: print the warning, use the NUFFT instead, or stop.
ON_BAD_GRIDDING = ("warn", "fallback", "error")
#: Largest distance (cycles/FOV, per axis) of the spot check's translated targets from the
#: k-space centre: where the calibration's SNR is high whatever the size of its cube.
SPOT_RADIUS = 6.0


def _arms(trajectory: torch.Tensor) -> torch.Tensor:
    return trajectory.reshape(-1, trajectory.shape[-2], 3).float().cpu()


def _displacements_at(
    kernel: IGROGKernel,
    arms: torch.Tensor,
    arm: torch.Tensor,
    sample: torch.Tensor,
    matrix: tuple[int, int, int],
    config: GriddingConfig,
) -> torch.Tensor:
    """Source displacements ``(m, n, 3)`` of the samples ``(arm, sample)``, as gridding finds them.

    ``arms`` is the trajectory ``(arms, samples, 3)``; sources are searched 256 arms at a time.
    """
    from .igrog_sources import find_sources

    grid = grid_shape(matrix, config.grid_oversampling)
    n = kernel.n_sources
    window = int(kernel.config.get("search_window", config.search_window))
    spacing = float(kernel.config.get("source_spacing", 0.0))
    disp = torch.empty((len(arm), n, 3))
    for i in range(0, len(arm), 256):  # bounded memory: 256 arms at a time
        _, _, d = find_sources(
            arms[arm[i : i + 256]],
            matrix,
            grid,
            n_sources=n,
            search_window=window,
            source_spacing=spacing,
        )
        disp[i : i + 256] = d[torch.arange(d.shape[0]), sample[i : i + 256]]
    return disp


def spot_check(
    kernel: IGROGKernel,
    calibration: torch.Tensor,
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    *,
    config: GriddingConfig,
    samples: int = 4096,
    seed: int = 0,
) -> dict[str, float]:
    """Kernel error on the scan's own sample configurations, against exact calibration k-space.

    Parameters
    ----------
    kernel : IGROGKernel
    calibration : Tensor, shape (coils, cx, cy, cz), complex
    trajectory : Tensor, shape (groups, tr, samples, 3), float
    matrix : tuple of 3 int
    config : GriddingConfig
        ``grid_oversampling``, ``calib_margin`` and ``search_window`` are used.
    samples : int
        Acquired samples to check.
    seed : int

    Returns
    -------
    dict
        ``spot_rel_error``, ``spot_nearest_rel_error``, ``spot_coverage`` (fraction of the drawn
        samples whose configuration fits inside the calibration cube), ``spot_samples``.
    """
    from .igrog_sources import calibration_image, calibration_kspace

    gen = torch.Generator().manual_seed(seed)
    arms = _arms(trajectory)
    a = torch.randint(arms.shape[0], (samples,), generator=gen)
    s = torch.randint(arms.shape[1], (samples,), generator=gen)
    n = kernel.n_sources
    disp = _displacements_at(kernel, arms, a, s, matrix, config)
    half = torch.tensor(calibration.shape[-3:], dtype=torch.float64) / 2 - 1 - config.calib_margin
    room = half[None, :] - disp.double().abs().amax(dim=1)  # (samples, 3)
    ok = (room > 0).all(dim=1)
    room = room.clamp(max=SPOT_RADIUS)  # the high-SNR centre: noise in a large cube's edge
    # would dominate the error
    coverage = float(ok.double().mean())
    out = {"spot_coverage": coverage, "spot_samples": float(int(ok.sum()))}
    if not bool(ok.any()):
        nan = float("nan")
        keys = ("", "_nearest", "_local", "_local_nearest")
        return {**out, **{f"spot{k}_rel_error": nan for k in keys}}
    d, room = disp[ok], room[ok]
    centre = (torch.rand(d.shape[0], 3, generator=gen, dtype=torch.float64) * 2 - 1) * room
    pts = torch.cat([centre[:, None], centre[:, None] + d.double()], dim=1)  # (m, 1 + n, 3)
    vals = calibration_kspace(calibration_image(calibration), pts.reshape(-1, 3))
    vals = vals.view(-1, d.shape[0], 1 + n).to(torch.complex64)  # (coils, m, 1 + n)
    target = vals[:, :, 0].T  # (m, coils)
    sources = vals[:, :, 1:].permute(1, 0, 2)  # (m, coils, n)
    dev = kernel.freqs.device
    with torch.inference_mode():
        pred = torch.cat(
            [
                kernel.predict(d[i : i + 4096].to(dev), sources[i : i + 4096].to(dev)).cpu()
                for i in range(0, d.shape[0], 4096)
            ]
        )
    near = d.square().sum(-1).argmin(-1)
    nearest = torch.gather(sources, 2, near[:, None, None].expand(-1, sources.shape[1], 1))[..., 0]
    norm = float(torch.linalg.vector_norm(target))
    # the same with every sample scaled by its own source RMS (weak, outer samples count fully)
    local = sources.abs().square().mean(dim=(1, 2)).sqrt().clamp_min(1e-30)[:, None]
    lnorm = float(torch.linalg.vector_norm(target / local))
    return {
        **out,
        "spot_rel_error": float(torch.linalg.vector_norm(pred - target)) / norm,
        "spot_nearest_rel_error": float(torch.linalg.vector_norm(nearest - target)) / norm,
        "spot_local_rel_error": float(torch.linalg.vector_norm((pred - target) / local)) / lnorm,
        "spot_local_nearest_rel_error": float(torch.linalg.vector_norm((nearest - target) / local))
        / lnorm,
    }


def noise_gain(
    kernel: IGROGKernel | None,
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    *,
    config: GriddingConfig,
    arms: int = 512,
    density_compensation: float = 0.5,
    seed: int = 0,
) -> float:
    """Image-domain noise amplification of the gridding relative to the no-kernel move.

    Parameters
    ----------
    kernel : IGROGKernel or None
        ``None`` gives 1 (the reference itself).
    trajectory : Tensor, shape (groups, tr, samples, 3), float
    matrix : tuple of 3 int
    config : GriddingConfig
        ``grid_oversampling`` and ``grid_batch`` are used.
    arms : int
        Random arms whose samples carry the noise.
    density_compensation : float
        ``γ`` of the data term's weights (those of ``EncodingConfig``).
    seed : int

    Returns
    -------
    float
        Ratio of the image RMS of gridded noise to that of the same noise moved without a kernel.
    """
    from .igrog import grid

    if kernel is None:
        return 1.0
    gen = torch.Generator().manual_seed(seed)
    index, sqrtw, shape = _weights(
        trajectory, matrix, config.grid_oversampling, density_compensation
    )
    all_arms = _arms(trajectory)
    pick = torch.randperm(all_arms.shape[0], generator=gen)[: min(arms, all_arms.shape[0])]
    traj = all_arms[pick][None]  # (1, arms, samples, 3)
    coils = kernel.n_coils
    z = torch.randn((2, coils, 1, *traj.shape[1:3]), generator=gen)
    noise = torch.complex(z[0], z[1])
    gridded = grid(noise, traj, matrix, kernel=kernel, config=config).values.cpu()
    idx, sw = index[pick].reshape(-1), sqrtw[pick].reshape(-1)

    def energy(values: torch.Tensor) -> float:
        return float(
            _coil_images(values.reshape(coils, -1), idx, sw, shape, matrix).abs().square().sum()
        )

    return math.sqrt(energy(gridded) / max(energy(noise), 1e-30))


def _weights(
    trajectory: torch.Tensor, matrix: tuple[int, int, int], oversampling: float, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """Grid index and ``√w`` of every sample (flat arms), and the grid shape."""
    from .encoding import density_weights

    arms = _arms(trajectory)
    shape = grid_shape(matrix, oversampling)
    index, _ = nearest_grid_index(arms, matrix, shape)
    w = density_weights(index[None], math.prod(shape), gamma)
    return index, torch.ones(index.shape) if w is None else w[0].sqrt(), shape


def _coil_images(
    values: torch.Tensor,
    idx: torch.Tensor,
    sw: torch.Tensor,
    shape: tuple[int, int, int],
    matrix: tuple[int, int, int],
) -> torch.Tensor:
    """Per-coil images (coils, x, y, z) of values scattered onto the grid with weights ``sw``."""
    out = torch.empty((values.shape[0], *matrix), dtype=torch.complex64)
    for c in range(values.shape[0]):
        k = torch.zeros(math.prod(shape), dtype=torch.complex64)
        k.index_add_(0, idx, values[c].reshape(-1) * sw)
        out[c] = crop3(ifft3c(k.view(shape), norm="forward"), matrix)
    return out


def check_gridding(
    kernel: IGROGKernel,
    calibration: torch.Tensor,
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    *,
    config: GriddingConfig,
    kspace: torch.Tensor | None = None,
) -> dict[str, Any]:
    """All self-check numbers of a trained kernel on its scan, and the verdict.

    Parameters
    ----------
    kernel : IGROGKernel
        Trained on ``calibration`` (its ``metrics`` give the held-out error).
    calibration : Tensor, shape (coils, cx, cy, cz), complex
    trajectory : Tensor, shape (groups, tr, samples, 3), float
    matrix : tuple of 3 int
    config : GriddingConfig
        ``check_samples``, ``max_rel_error``, ``max_noise_gain``, ``max_data_error_ratio`` and
        the geometry fields.
    kspace : Tensor, shape (coils, groups, tr, samples), complex, optional
        The acquired data: adds :func:`~spurig_core.operators.igrog_noise.data_consistency`
        (the kernel on the acquisition itself against the same geometry on the calibration).

    Returns
    -------
    dict
        ``held_out_rel_error``, ``held_out_nearest_rel_error``, the :func:`spot_check` entries,
        ``noise_gain``, the bounds ``max_rel_error`` / ``max_noise_gain``, ``passed`` (bool) and
        ``reasons`` (list of str, empty when passed).
    """
    if kernel.n_coils != int(calibration.shape[0]):
        raise InputError(
            f"gridding check: kernel has {kernel.n_coils} coils, calibration "
            f"{int(calibration.shape[0])}"
        )
    spot = spot_check(
        kernel,
        calibration,
        trajectory,
        matrix,
        config=config,
        samples=config.check_samples,
        seed=config.seed + 1,
    )
    gain = noise_gain(kernel, trajectory, matrix, config=config, seed=config.seed + 2)
    reasons = _kernel_reasons(spot, gain, config)
    data: dict[str, float] = {}
    if kspace is not None:
        from .igrog_noise import data_consistency

        data = data_consistency(
            kernel, calibration, kspace, trajectory, samples=config.check_samples, seed=config.seed
        )
        if data["data_error_ratio"] > config.max_data_error_ratio:  # NaN: nothing to compare
            reasons.append(
                f"kernel error on the acquired data {data['data_rel_error']:.3f} is "
                f"{data['data_error_ratio']:.1f} × that on the calibration (bound "
                f"{config.max_data_error_ratio:.1f}): the calibration does not describe the data"
            )
    return {
        "held_out_rel_error": float(kernel.metrics.get("val_rel_error", float("nan"))),
        "held_out_nearest_rel_error": float(kernel.metrics.get("nearest_rel_error", float("nan"))),
        **spot,
        "noise_gain": gain,
        **data,
        "max_rel_error": float(config.max_rel_error),
        "max_error_ratio": float(config.max_error_ratio),
        "max_noise_gain": float(config.max_noise_gain),
        "max_data_error_ratio": float(config.max_data_error_ratio),
        "passed": not reasons,
        "reasons": reasons,
    }


def _kernel_reasons(spot: dict[str, float], gain: float, config: GriddingConfig) -> list[str]:
    """Why the spot check's error or the noise gain fails its bounds (empty when they pass)."""
    reasons = []
    err = spot["spot_rel_error"]
    if not err <= config.max_rel_error:  # NaN (nothing checkable) fails too
        reasons.append(
            f"kernel error {err:.3f} on the scan's own sample geometry exceeds "
            f"{config.max_rel_error:.3f}"
        )
    elif not err <= config.max_error_ratio * spot["spot_nearest_rel_error"]:
        reasons.append(
            f"kernel error {err:.3f} is not below {config.max_error_ratio:.2f} × the no-kernel "
            f"move's {spot['spot_nearest_rel_error']:.3f}"
        )
    if gain > config.max_noise_gain:
        reasons.append(f"noise gain {gain:.2f} exceeds {config.max_noise_gain:.2f}")
    return reasons


def gridding_warning(check: dict[str, Any], method: str, *, fallback: bool = False) -> str:
    """Return the one-line message for a failed check (``""`` when it passed).

    Parameters
    ----------
    check : dict
        From :func:`check_gridding`.
    method : str
        The requested reconstruction method.
    fallback : bool
        Whether the NUFFT data term replaces the gridded one.
    """
    if check.get("passed", True):
        return ""
    why = "; ".join(check.get("reasons", [])) or "self-check failed"
    head = f"iGROG gridding self-check failed ({why})"
    from ..recon.methods import METHODS

    if method in METHODS and METHODS[method].needs_model:
        head += ": the model's input domain is not met"
    else:
        head += ": the gridded result may be worse than llr-nufft"
    if fallback:
        return head + "; falling back to the NUFFT data term"
    return head + "; --on-bad-gridding fallback uses the NUFFT data term instead"


def apply_gridding_check(
    gridded: Any,
    method: str,
    on_bad_gridding: str,
    record: dict[str, Any],
    callback: Any = None,
) -> bool:
    """Handle the self-check of a reconstruction's gridded data.

    Records the check in ``record["gridding_check"]`` (the result's ``config``); when it failed,
    logs the one-line :func:`gridding_warning` (logger ``spurig``, which the command line prints on
    stderr), sends it as an ``"igrog-check"`` progress message and stores it in
    ``record["gridding_warning"]``; ``record["gridding_fallback"]`` says whether the NUFFT data
    term replaced the gridded one (``"nufft"``) or not (``"none"``).

    Parameters
    ----------
    gridded : GriddedData
        Its ``check`` (``None``: nothing to do).
    method : str
        The requested method (for the wording).
    on_bad_gridding : {"warn", "fallback", "error"}
        ``"error"`` raises on a failed check; ``"fallback"`` asks for the NUFFT data term.
    record : dict
        The result's config record (updated in place).
    callback : Callback, optional

    Returns
    -------
    bool
        ``True`` when the caller must use the NUFFT encoding instead of the gridded one.

    Raises
    ------
    InputError
        ``on_bad_gridding="error"`` and the check failed, or an unknown ``on_bad_gridding``.
    """
    import logging

    from ..progress import emit

    if on_bad_gridding not in ON_BAD_GRIDDING:
        raise InputError(
            f"--on-bad-gridding: {on_bad_gridding!r} is not one of {', '.join(ON_BAD_GRIDDING)}"
        )
    check = getattr(gridded, "check", None)
    if check is None:
        return False
    record["gridding_check"] = dict(check)
    if check.get("passed", True):
        return False
    fallback = on_bad_gridding == "fallback"
    message = gridding_warning(check, method, fallback=fallback)
    if on_bad_gridding == "error":
        raise InputError(message.split("; --on-bad-gridding")[0] + " (--on-bad-gridding error)")
    logging.getLogger("spurig").warning(message)
    emit(callback, "igrog-check", 1, 1, message)
    record["gridding_warning"] = message
    record["gridding_fallback"] = "nufft" if fallback else "none"
    return fallback
