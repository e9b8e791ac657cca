"""Training of the iGROG kernel from calibration data (paper 2.3.1, Figure 1).

Training pairs: targets at random positions inside the calibrated k-space cube, sources at
``target + d`` for displacement sets ``d`` drawn from those that occur in the scan's trajectory
(:func:`~spurig_core.operators.igrog_sources.find_sources`), both evaluated from the calibration
image (:func:`~spurig_core.operators.igrog_sources.calibration_kspace`).  The loop fits an
:class:`~spurig_core.operators.igrog_kernel.IGROGKernel` with Adam and reports held-out errors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from ..errors import InputError
from ..progress import Callback, emit
from .grid import grid_shape
from .igrog import GriddingConfig, _check_inputs, _device
from .igrog_kernel import IGROGKernel
from .igrog_sources import _flat_arms, calibration_image, calibration_kspace, find_sources

__all__ = ["train_kernel"]


def _sample_displacements(
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    grid: tuple[int, int, int],
    cfg: GriddingConfig,
    count: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Displacement sets ``(count, n, 3)`` of random samples of the trajectory.

    As many different arms (orientations) as possible: ``min(arms, count)`` random arms with
    ``ceil(count / arms)`` random samples each, processed in chunks of 256 arms (bounded memory).
    """
    arms = _flat_arms(trajectory).float().cpu()
    n_pick = min(arms.shape[0], count)
    per = math.ceil(count / n_pick)
    pick = torch.randperm(arms.shape[0], generator=gen)[:n_pick]
    out = []
    for i in range(0, n_pick, 256):
        a = pick[i : i + 256]
        _, _, disp = find_sources(
            arms[a],
            matrix,
            grid,
            n_sources=cfg.n_sources,
            search_window=cfg.search_window,
            source_spacing=cfg.source_spacing,
        )
        s = torch.randint(arms.shape[1], (len(a), per), generator=gen)
        out.append(disp[torch.arange(len(a))[:, None], s].reshape(-1, cfg.n_sources, 3))
    disp = torch.cat(out)
    return disp[torch.randperm(disp.shape[0], generator=gen)[:count]]


def train_kernel(
    calibration: torch.Tensor,
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    *,
    config: GriddingConfig | None = None,
    callback: Callback | None = None,
    source_noise: float = 0.0,
) -> IGROGKernel:
    """Train the iGROG kernel INR from calibration data (paper 2.3.1, Figure 1).

    Training pairs: targets at uniformly random (continuous) positions of the calibration cube,
    kept ``reach + calib_margin`` away from its edge; sources at ``target + d`` for displacement
    sets ``d`` of randomly chosen trajectory samples (:func:`~.igrog_sources.find_sources`);
    target and source values from :func:`~.igrog_sources.calibration_kspace`.  Data are divided
    by the RMS source magnitude for training (the kernel is linear in the data, so nothing needs
    undoing).  Each step evaluates
    ``batch`` displacement sets and applies each to its ``targets_per_set`` targets.  Loss: mean
    of ``|Re e| + |Im e|`` of the complex prediction error ``e`` (an L1 loss on real and imaginary
    parts); Adam with cosine learning-rate decay.

    Parameters
    ----------
    calibration : Tensor, shape (coils, cx, cy, cz), complex64
        Fully sampled Cartesian k-space centre (SPEC §3).
    trajectory : Tensor, shape (groups, tr, samples, 3), float32
        The scan's trajectory in cycles/FOV (only the displacement geometry is used).
    matrix : tuple of 3 int
        Image matrix.
    config : GriddingConfig, optional
    callback : Callback, optional
        Receives ``"igrog-train"`` events with the loss.
    source_noise : float
        Standard deviation, in the calibration's units, of complex white noise added afresh at
        every step to the training sources (not to the targets, nor to the held-out pairs): the
        acquired data's noise (:func:`~spurig_core.operators.igrog_noise.source_noise`), so that
        the fit weighs accuracy against noise amplification as a ridge-regularised GRAPPA fit
        does.  ``0``: clean calibration sources.

    Returns
    -------
    IGROGKernel
        In eval mode on ``config.device``, with ``history``, ``metrics`` and ``config`` filled in.

    Raises
    ------
    InputError
        Bad shapes, NaN/Inf, or a calibration region too small for the kernel's reach.
    """
    from ..config import to_dict

    cfg = config or GriddingConfig()
    _check_inputs(trajectory, matrix)
    _check_calibration(calibration)
    if not (source_noise >= 0.0 and math.isfinite(source_noise)):
        raise InputError(f"source_noise: {source_noise} is not a finite value >= 0")
    dev = _device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs = _training_pairs(calibration, trajectory, matrix, cfg, gen, callback)
    pairs = replace(pairs, disp=pairs.disp.to(dev), tgt=pairs.tgt.to(dev), src=pairs.src.to(dev))
    sigma = source_noise / pairs.scale / math.sqrt(2.0)  # per real component, normalised units
    n_tr = cfg.train_sets - max(1, cfg.train_sets // 20)  # 5 % held out for validation
    record = to_dict(cfg)
    coils = int(calibration.shape[0])
    kernel = IGROGKernel.from_config(coils, cfg.n_sources, record, seed=cfg.seed).to(dev)
    _fit(kernel, pairs, n_tr, sigma, cfg, gen, callback)
    kernel.eval()
    with torch.no_grad():
        kernel.metrics = _training_metrics(kernel, pairs, n_tr)
    kernel.metrics["source_noise_rel"] = sigma * math.sqrt(2.0)  # relative to the RMS source
    kernel.config = record
    return kernel


def _check_calibration(calibration: torch.Tensor) -> None:
    if calibration.ndim != 4:
        raise InputError(
            f"calibration: shape {tuple(calibration.shape)} is not (coils, cx, cy, cz)"
        )
    if not bool(torch.isfinite(torch.view_as_real(calibration.to(torch.complex64))).all()):
        raise InputError("calibration: contains NaN or Inf")


@dataclass(frozen=True)
class _Pairs:
    """Calibration training pairs, divided by ``scale`` (the RMS source magnitude).

    ``disp`` (P, n, 3) float32 displacement sets (cycles/FOV); ``tgt`` (P, per, coils) and
    ``src`` (P, per, coils·n) complex64 target and source values of ``per`` targets per set;
    ``reach`` (3,) float64, the largest displacement per axis.
    """

    disp: torch.Tensor
    tgt: torch.Tensor
    src: torch.Tensor
    scale: float
    reach: torch.Tensor


def _training_pairs(
    calibration: torch.Tensor,
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    cfg: GriddingConfig,
    gen: torch.Generator,
    callback: Callback | None,
) -> _Pairs:
    """Synthesise ``cfg.train_sets × cfg.targets_per_set`` pairs from the calibration (on CPU)."""
    grid = grid_shape(matrix, cfg.grid_oversampling)
    n, coils = cfg.n_sources, int(calibration.shape[0])
    sets, per = cfg.train_sets, cfg.targets_per_set
    disp = _sample_displacements(trajectory, matrix, grid, cfg, sets, gen)  # (P, n, 3)
    emit(callback, "igrog-pairs", 0, 32, "sampled the kernel's source displacements")
    reach = disp.abs().amax(dim=(0, 1)).double()
    cal_shape = torch.tensor(calibration.shape[-3:], dtype=torch.float64)
    half = cal_shape / 2 - 1 - cfg.calib_margin - reach
    if bool((half <= 0).any()):
        raise InputError(
            f"calibration: {tuple(calibration.shape[-3:])} is too small for kernels reaching "
            f"{float(reach.max()):.2f} cycles/FOV (need at least {int(2 * (reach.max() + 2)) + 1})"
        )
    targets = (torch.rand(sets, per, 3, generator=gen, dtype=torch.float64) * 2 - 1) * half
    pts = torch.cat([targets[:, :, None], targets[:, :, None] + disp.double()[:, None]], dim=2)
    image, flat = calibration_image(calibration), pts.reshape(-1, 3)
    pieces = []  # in 32 pieces, so that progress is reported (and a cancel answered) meanwhile
    for i, chunk in enumerate(flat.tensor_split(32)):
        pieces.append(calibration_kspace(image, chunk))
        emit(callback, "igrog-pairs", i + 1, 32, "extracting the kernel's training pairs")
    vals = torch.cat(pieces, dim=-1).view(coils, sets, per, 1 + n).to(torch.complex64)
    tgt = vals[..., 0].permute(1, 2, 0).contiguous()  # (P, per, coils)
    src = vals[..., 1:].permute(1, 2, 0, 3).reshape(sets, per, coils * n)  # (P, per, coils·n)
    scale = float(src.abs().square().mean().sqrt()) or 1.0
    emit(callback, "igrog-pairs", 32, 32, "training pairs ready")
    return _Pairs(disp, tgt / scale, src / scale, scale, reach)


def _pair_weights(src: torch.Tensor, mode: str) -> torch.Tensor:
    """Loss weight ``(P, per, 1)`` of each pair, from its sources ``src`` ``(P, per, coils·n)``.

    1 (``"global"``), the pair's source RMS relative to the mean (``"signal"``) or its inverse
    (``"local"``).
    """
    rms = src.abs().square().mean(-1, keepdim=True).sqrt()  # (P, per, 1)
    if mode == "signal":
        return rms / rms.mean()
    if mode == "local":
        return 1.0 / rms.clamp_min(1e-4)
    return torch.ones_like(rms)


def _fit(
    kernel: IGROGKernel,
    pairs: _Pairs,
    n_tr: int,
    sigma: float,
    cfg: GriddingConfig,
    gen: torch.Generator,
    callback: Callback | None,
) -> None:
    """Adam with cosine decay on the first ``n_tr`` sets; fills ``kernel.history``."""
    disp, src, tgt, dev = pairs.disp, pairs.src, pairs.tgt, pairs.src.device
    pair_w = _pair_weights(src, cfg.pair_weight)
    kernel.train()
    opt = torch.optim.Adam(kernel.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=0.05 * cfg.lr)
    emit(callback, "igrog-train", 0, cfg.steps, f"training the kernel on {len(disp)} source sets")
    every = max(1, cfg.steps // 100)
    last_emit = time.monotonic()  # also report (and so let a cancel in) at least every 0.5 s
    for step in range(cfg.steps):
        idx = torch.randint(n_tr, (min(cfg.batch, n_tr),), generator=gen).to(dev)
        g = kernel(disp[idx])
        sv = src[idx]
        if sigma > 0:  # the acquisition's noise on the sources (a fresh draw every step)
            z = torch.randn((2, *sv.shape), generator=gen).to(dev)
            sv = sv + torch.complex(z[0], z[1]) * sigma
        err = (torch.bmm(sv, g.transpose(1, 2)) - tgt[idx]) * pair_w[idx]
        loss = (err.real.abs() + err.imag.abs()).mean()
        if cfg.ridge > 0:  # noise-aware term: the mean squared weight norm of a target coil
            loss = loss + cfg.ridge * g.abs().square().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        kernel.history.append(float(loss.detach()))
        if (step + 1) % every == 0 or step + 1 == cfg.steps or time.monotonic() - last_emit > 0.5:
            last_emit = time.monotonic()
            msg = f"kernel step {step + 1}"
            emit(callback, "igrog-train", step + 1, cfg.steps, msg, loss=kernel.history[-1])


def _training_metrics(kernel: IGROGKernel, pairs: _Pairs, n_tr: int) -> dict[str, float]:
    """Relative errors on training and held-out pairs, and of the nearest source (no kernel)."""
    disp, src, tgt = pairs.disp, pairs.src, pairs.tgt
    n, per = kernel.n_sources, int(src.shape[1])

    def rel_error(sl: slice) -> float:
        d, sv, tv = disp[sl], src[sl], tgt[sl]
        err = torch.cat(
            [
                torch.bmm(sv[i : i + 1024], kernel(d[i : i + 1024]).transpose(1, 2))
                for i in range(0, len(d), 1024)
            ]
        )
        return float(torch.linalg.vector_norm(err - tv) / torch.linalg.vector_norm(tv))

    vd, vs, vt = disp[n_tr:], src[n_tr:], tgt[n_tr:]
    near = vd.square().sum(-1).argmin(-1)  # (v,)
    cols = torch.arange(kernel.n_coils, device=src.device)[None, :] * n + near[:, None]
    nearest = torch.gather(vs, 2, cols[:, None, :].expand(-1, per, -1))
    return {
        "train_rel_error": rel_error(slice(0, min(n_tr, 1024))),
        "val_rel_error": rel_error(slice(n_tr, len(disp))),
        "nearest_rel_error": float(
            torch.linalg.vector_norm(nearest - vt) / torch.linalg.vector_norm(vt)
        ),
        "reach": float(pairs.reach.max()),
        "final_loss": kernel.history[-1] if kernel.history else float("nan"),
    }
