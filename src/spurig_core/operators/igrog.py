"""iGROG: implicit-GROG gridding of non-Cartesian k-space onto the oversampled grid (paper 2.3.1).

Every acquired sample moves to its nearest point of the ``×grid_oversampling`` Cartesian grid of
:mod:`spurig_core.operators.grid`.  Its value there is predicted, GRAPPA-like, from the ``n``
nearest samples of the same spiral arm (same group and TR) by a coil-mixing kernel

.. math::

    y(\\mathbf{k}_g) = G_\\psi(\\mathbf{d}_1, \\dots, \\mathbf{d}_n)\\,
    [y(\\mathbf{k}_g + \\mathbf{d}_1); \\dots; y(\\mathbf{k}_g + \\mathbf{d}_n)],
    \\qquad G_\\psi : \\mathbb{R}^{3n} \\to
    \\mathbb{C}^{\\mathrm{coils} \\times \\mathrm{coils}\\cdot n},

where ``d_i = k_{source i} − k_g`` (cycles/FOV).  The kernel family is an implicit neural
representation (INR): an MLP on random Fourier features of the displacements (Abraham et al.,
"Implicit Representation of GRAPPA Kernels", arXiv:2310.10823).  It is trained from the calibration
data only: targets at random positions inside the calibrated k-space cube, sources at
``target + d`` for displacement sets drawn from those that occur in the scan's trajectory, and
both evaluated from the calibration image by a type-2 NUFFT (band-limited interpolation of the
calibration region, as in Luo et al., MRM 2019, doi:10.1002/mrm.27801).

Three gridding variants are available for comparison:

* iGROG, ``n_sources=5`` with a learned kernel (the paper's setting),
* a learned kernel with ``n_sources=1`` (GROG-like single-source shift),
* the nearest-neighbour move with no kernel (``learned_kernel=False``, ``n_sources=1``).

Sources are searched among the ``2·search_window + 1`` readout neighbours of each sample (the
nearest samples of a spiral arm to a point are its neighbours along the readout).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, NotAvailableError
from ..progress import Callback, emit
from .grid import GriddedData, grid_shape, nearest_grid_index

if TYPE_CHECKING:
    from ..data import Scan

__all__ = [
    "GriddingConfig",
    "IGROGKernel",
    "calibration_image",
    "calibration_kspace",
    "find_sources",
    "grid",
    "grid_scan",
    "train_kernel",
]


@dataclass(frozen=True)
class GriddingConfig:
    """Tunables of iGROG kernel training and gridding (paper 2.3.1).

    Attributes
    ----------
    grid_oversampling : float
        Oversampling of the Cartesian grid (paper: 1.5).
    n_sources : int
        Source samples per target and coil (paper: 5).  ``1`` gives a GROG-like single shift.
    learned_kernel : bool
        ``False``: move samples to the nearest grid point without a kernel (needs ``n_sources=1``).
    search_window : int
        Readout neighbours on each side of a sample that are candidate sources.
    source_spacing : float
        ``> 0``: sources about this far apart along the readout (cycles/FOV, 0 to 2) instead of
        the ``n_sources`` nearest candidates (:func:`find_sources`); ``0``: the nearest ones
        (the setting before issue #20).  Default 0.5: a densely sampled readout (radial-like or
        oversampled arms) otherwise hands the kernel a tight, nearly collinear cluster of
        sources, whose fit amplifies noise (``benchmarks/RESULTS-igrog.md``: noise gain 1.52 for
        radial arms at 32³, 1.14 with 0.5); it lowered the A^H b error of the project's own
        scan too.
    hidden, layers : int
        Width and number of hidden ReLU layers of the kernel MLP.
    fourier_features : int
        Number of random Fourier frequencies (the MLP sees their sines and cosines and the raw
        displacements).
    fourier_scale : float
        Standard deviation of the Fourier frequencies, in cycles per (cycle/FOV) of displacement.
    prior_width : float
        Width (cycles/FOV) of the fixed smooth prior added to the learned kernel: each coil from
        its own sources with Gaussian weights ``softmax(−|d_i|²/prior_width²)`` (close to the
        nearest-neighbour move), so training starts from the no-kernel error; ``0`` disables it.
    steps : int
        Adam steps of kernel training.
    lr : float
        Initial learning rate (cosine decay to 5 % of it).
    batch : int
        Displacement sets (kernel evaluations) per step; each is applied to ``targets_per_set``
        target positions, so a step fits ``batch · targets_per_set`` calibration pairs.
    train_sets : int
        Displacement sets in the synthesised pool (5 % held out for validation).
    targets_per_set : int
        Random target positions per displacement set.
    calib_margin : float
        Distance, in cycles/FOV, kept between training sources and the edge of the calibration cube.
    grid_batch : int
        Samples per gridding batch (bounds memory: about ``grid_batch · coils² · n · 8`` bytes).
    seed : int
        Seed of the Fourier features, weights, pair synthesis and batches.
    device : str
        ``"cpu"`` or ``"cuda"``.
    ridge : float
        Weight (0 to 1) of the noise-aware term of the kernel fit: the training loss adds
        ``ridge · mean_c Σ_j |G_cj|²``, the noise power a target coil receives from unit white
        noise on its sources (the weight norm of GRAPPA's g-factor).  ``0``: no penalty.
    noise_matched : bool
        Fit the kernel on calibration sources that carry the acquired data's noise (what the
        calibration lacks of it is added; :mod:`~spurig_core.operators.igrog_noise`,
        :func:`grid_scan` measures it on the scan):
        a calibration far cleaner than one repetition of the acquisition otherwise lets the fit
        use large cancelling weights that amplify the acquisition's noise (GRAPPA's g-factor).
        Without the scan's k-space (:func:`train_kernel` called directly) nothing is added.
        Default off: on the simulator's scans (calibration as noisy as the data) it cost
        0.02–0.14 dB of gridded LLR (32³, independent and radial cells,
        ``benchmarks/RESULTS-igrog.md``); turn it on for a calibration from a separate,
        cleaner scan.
    pair_weight : {"signal", "global", "local"}
        Weight of each calibration pair in the (L1) loss, whose gradient has the same size for
        every pair whatever its magnitude: ``"global"`` (the setting before issue #20), all pairs
        alike, so the many weak, noise-dominated pairs near the edge of a large calibration cube
        pull as hard as the strong central ones; ``"signal"`` (default), each pair weighted by the
        RMS of its own sources (relative to the mean), so that the fit follows the high-SNR
        calibration data (measured at 32³ with a 32³ calibration: A^H b error 11.5 % → 8.5 %);
        ``"local"``, the inverse weight (measured worse).
    check : bool
        Run the self-check of :mod:`~spurig_core.operators.igrog_check` after training
        (:func:`grid_scan` stores it in :attr:`GriddedData.check`).
    check_samples : int
        Acquired samples of the self-check's NUFFT spot check (at least 256).
    max_rel_error : float
        Bound on the spot check's relative error (0 to 1): above it the check fails.
    max_error_ratio : float
        Bound (0 to 1) on the spot check's error over that of moving the same samples without a
        kernel: a kernel that barely beats the plain move fails the check.
    max_noise_gain : float
        Bound on the self-check's image-domain noise gain (at least 1): above it the check fails.
    max_data_error_ratio : float
        Bound (at least 1) on the kernel's error on the acquired data over its error on the
        calibration at the same positions (:func:`~spurig_core.operators.igrog_noise.
        data_consistency`): above it the calibration does not describe the data.
    """

    grid_oversampling: float = 1.5
    n_sources: int = 5
    learned_kernel: bool = True
    search_window: int = 6
    source_spacing: float = 0.5
    hidden: int = 256
    layers: int = 3
    fourier_features: int = 128
    fourier_scale: float = 0.1
    prior_width: float = 0.3
    steps: int = 3000
    lr: float = 2e-3
    batch: int = 128
    train_sets: int = 4096
    targets_per_set: int = 64
    calib_margin: float = 1.0
    grid_batch: int = 32768
    seed: int = 0
    device: str = "cpu"
    ridge: float = 0.0
    noise_matched: bool = False
    pair_weight: str = "signal"
    check: bool = True
    check_samples: int = 4096
    max_rel_error: float = 0.3
    max_error_ratio: float = 0.85
    max_noise_gain: float = 1.3
    max_data_error_ratio: float = 1.3

    def __post_init__(self) -> None:
        if self.grid_oversampling < 1.0:
            raise InputError(f"gridding.grid_oversampling: {self.grid_oversampling} is below 1")
        if self.n_sources < 1:
            raise InputError(f"gridding.n_sources: {self.n_sources} is below 1")
        if not self.learned_kernel and self.n_sources != 1:
            raise InputError("gridding.learned_kernel = false needs n_sources = 1")
        if 2 * self.search_window + 1 < self.n_sources:
            raise InputError(
                f"gridding.search_window: {self.search_window} gives fewer than "
                f"{self.n_sources} candidate sources"
            )
        for name in (
            "hidden",
            "layers",
            "fourier_features",
            "steps",
            "batch",
            "train_sets",
            "targets_per_set",
            "grid_batch",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"gridding.{name}: {getattr(self, name)} is below 1")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"gridding.device: {self.device!r} is not 'cpu' or 'cuda'")
        if self.pair_weight not in ("global", "signal", "local"):
            raise InputError(
                f"gridding.pair_weight: {self.pair_weight!r} is not 'global', 'signal' or 'local'"
            )
        if not 0.0 <= self.source_spacing <= 2.0:
            raise InputError(f"gridding.source_spacing: {self.source_spacing} is outside 0 to 2")
        if not 0.0 <= self.ridge <= 1.0:
            raise InputError(f"gridding.ridge: {self.ridge} is outside 0 to 1")
        if self.check_samples < 256:
            raise InputError(f"gridding.check_samples: {self.check_samples} is below 256")
        if not 0.0 < self.max_rel_error <= 1.0:
            raise InputError(f"gridding.max_rel_error: {self.max_rel_error} is outside (0, 1]")
        if not 0.0 < self.max_error_ratio <= 1.0:
            raise InputError(f"gridding.max_error_ratio: {self.max_error_ratio} is outside (0, 1]")
        if not self.max_noise_gain >= 1.0:
            raise InputError(f"gridding.max_noise_gain: {self.max_noise_gain} is below 1")
        if not self.max_data_error_ratio >= 1.0:
            raise InputError(
                f"gridding.max_data_error_ratio: {self.max_data_error_ratio} is below 1"
            )


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise NotAvailableError("gridding: device 'cuda' requested but CUDA is not available")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------
# the kernel INR
# ----------------------------------------------------------------------------------------------
class IGROGKernel(nn.Module):
    """The implicit kernel family ``G_ψ(d_1 … d_n)`` (an MLP on random Fourier features).

    Parameters
    ----------
    n_coils : int
        Number of coils (the kernel mixes all of them).
    n_sources : int
        Number of source samples ``n``.
    hidden, layers, fourier_features : int
        MLP width, number of hidden ReLU layers, number of Fourier frequencies.
    fourier_scale : float
        Standard deviation of the Fourier frequencies (cycles per cycle/FOV).
    seed : int
        Seed of the Fourier frequencies and initial weights.

    Attributes
    ----------
    history : list of float
        Training loss per step (normalised units).
    metrics : dict of str to float
        ``val_rel_error`` (held-out calibration pairs), ``nearest_rel_error`` (the same targets
        predicted by the nearest source, no kernel), ``reach`` (largest displacement, cycles/FOV).
    config : dict
        The :class:`GriddingConfig` it was trained with (plain dict).
    """

    freqs: torch.Tensor

    def __init__(
        self,
        n_coils: int,
        n_sources: int,
        *,
        hidden: int = 256,
        layers: int = 3,
        fourier_features: int = 128,
        fourier_scale: float = 0.1,
        prior_width: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_coils = int(n_coils)
        self.n_sources = int(n_sources)
        self.prior_width = float(prior_width)
        gen = torch.Generator().manual_seed(seed)
        d_in = 3 * self.n_sources
        self.register_buffer(
            "freqs", torch.randn(fourier_features, d_in, generator=gen) * fourier_scale
        )
        widths = [d_in + 2 * fourier_features] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            mods += [nn.Linear(a, b), nn.ReLU()]
        out = nn.Linear(hidden, 2 * self.n_coils * self.n_coils * self.n_sources)
        mods.append(out)
        self.mlp = nn.Sequential(*mods)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
            nn.init.normal_(out.weight, std=1e-3)
            nn.init.zeros_(out.bias)
        self.history: list[float] = []
        self.metrics: dict[str, float] = {}
        self.config: dict[str, Any] = {}

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """Kernels for a batch of displacement sets.

        Parameters
        ----------
        d : Tensor, shape (batch, n, 3), float32
            Source minus target position, cycles/FOV.

        Returns
        -------
        Tensor, shape (batch, coils, coils·n), complex64
            ``G`` with source index ``c·n + i`` (coil ``c``, source ``i``).
        """
        x = d.reshape(d.shape[0], 3 * self.n_sources)
        proj = (2 * math.pi) * x @ self.freqs.T
        h = self.mlp(torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=1))
        h = h.view(d.shape[0], 2, self.n_coils, self.n_coils * self.n_sources)
        g = torch.complex(h[:, 0], h[:, 1])
        if self.prior_width > 0:
            # smooth nearest-source prior: each coil from its own sources, Gaussian weights
            w = torch.softmax(-d.square().sum(-1) / self.prior_width**2, dim=-1)  # (batch, n)
            eye = torch.eye(self.n_coils, device=d.device, dtype=w.dtype)
            g = g + torch.kron(eye, torch.ones(1, self.n_sources, device=d.device)).mul(
                w.repeat(1, self.n_coils)[:, None, :]
            ).to(g.dtype)
        return g

    def predict(self, d: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Predict target values from source values.

        Parameters
        ----------
        d : Tensor, shape (batch, n, 3), float32
            Displacements (cycles/FOV).
        sources : Tensor, shape (batch, coils, n), complex64
            Source values.

        Returns
        -------
        Tensor, shape (batch, coils), complex64
        """
        g = self.forward(d)
        return torch.bmm(g, sources.reshape(sources.shape[0], -1, 1)).squeeze(-1)

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to rebuild the kernel (for results and checkpoints)."""
        return {
            "kind": "igrog-kernel/1",
            "n_coils": self.n_coils,
            "n_sources": self.n_sources,
            "config": dict(self.config),
            "metrics": dict(self.metrics),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> IGROGKernel:
        """Inverse of :meth:`checkpoint`.

        Raises
        ------
        InputError
            If ``state`` is not an iGROG kernel checkpoint or does not fit its configuration.
        """
        if not isinstance(state, dict) or state.get("kind") != "igrog-kernel/1":
            raise InputError("kernel checkpoint: not an iGROG kernel (kind 'igrog-kernel/1')")
        cfg = state.get("config", {})
        kernel = cls(
            state["n_coils"],
            state["n_sources"],
            hidden=cfg.get("hidden", 256),
            layers=cfg.get("layers", 3),
            fourier_features=cfg.get("fourier_features", 128),
            fourier_scale=cfg.get("fourier_scale", 0.1),
            prior_width=cfg.get("prior_width", 0.0),
        )
        try:
            kernel.load_state_dict(state["state_dict"])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"kernel checkpoint: weights do not fit: {first}") from None
        kernel.config = dict(cfg)
        kernel.metrics = dict(state.get("metrics", {}))
        return kernel.eval()


# ----------------------------------------------------------------------------------------------
# geometry: targets and sources along each arm
# ----------------------------------------------------------------------------------------------
def find_sources(
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    grid: tuple[int, int, int],
    *,
    n_sources: int,
    search_window: int,
    source_spacing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target grid point and source samples of every sample of a batch of arms.

    Parameters
    ----------
    trajectory : Tensor, shape (arms, samples, 3), float
        k-space positions in cycles/FOV (one arm = one group and TR).
    matrix : tuple of 3 int
        Image matrix.
    grid : tuple of 3 int
        Oversampled grid shape.
    n_sources : int
        Sources per target.
    search_window : int
        Candidates are the ``2·search_window + 1`` readout neighbours (window shifted at the ends).
    source_spacing : float
        ``> 0``: instead of the nearest candidates, take every ``m``-th readout sample around the
        sample itself, ``m = max(1, round(source_spacing / Δ))`` with ``Δ`` the local readout
        step (mean over 5 samples), so that the sources of a densely sampled readout are about
        ``source_spacing`` cycles/FOV apart rather than a tight, nearly collinear cluster (whose
        kernel amplifies noise); the set is shifted to fit at the ends of the arm.

    Returns
    -------
    index : Tensor, shape (arms, samples), int64
        Linear grid index of each sample's nearest grid point (the target).
    sources : Tensor, shape (arms, samples, n), int64
        Readout indices of the ``n`` candidates nearest to the target, in readout order.
    displacement : Tensor, shape (arms, samples, n, 3), float32
        ``k_source − k_target`` in cycles/FOV.
    """
    arms, ns, _ = trajectory.shape
    index, offset = nearest_grid_index(trajectory, matrix, grid)
    k_target = trajectory.double() - offset.double()
    dev = trajectory.device
    s = torch.arange(ns, device=dev)
    if n_sources == 1 and search_window == 0:
        src = s.expand(arms, ns).unsqueeze(-1)
    elif source_spacing > 0 and n_sources > 1:
        src = _strided_sources(trajectory, n_sources, source_spacing)
    else:
        width = min(2 * search_window + 1, ns)
        if width < n_sources:
            raise InputError(
                f"trajectory: arms of {ns} samples are shorter than n_sources = {n_sources}"
            )
        start = torch.clamp(s - search_window, 0, ns - width)
        cand = start[:, None] + torch.arange(width, device=dev)[None, :]  # (samples, width)
        kc = trajectory.double()[:, cand]  # (arms, samples, width, 3)
        dist = (kc - k_target[:, :, None, :]).square().sum(-1)
        near = torch.topk(dist, n_sources, dim=-1, largest=False).indices
        src = torch.gather(cand.expand(arms, ns, width), 2, near)
        src = torch.sort(src, dim=-1).values
    ks = torch.gather(trajectory.double(), 1, src.reshape(arms, -1, 1).expand(-1, -1, 3))
    disp = ks.view(arms, ns, -1, 3) - k_target[:, :, None, :]
    return index, src, disp.float()


def _strided_sources(trajectory: torch.Tensor, n: int, spacing: float) -> torch.Tensor:
    """Readout indices ``(arms, samples, n)`` of sources about ``spacing`` apart along the arm.

    Source ``j`` is the sample nearest to arc length ``base + j·spacing`` with
    ``base = L(s) − ((n − 1)//2)·spacing`` (shifted to fit inside the arm); indices are then made
    strictly increasing, so a readout sparser than ``spacing`` gives consecutive samples.
    """
    ns = int(trajectory.shape[1])
    dev = trajectory.device
    step = torch.linalg.vector_norm(torch.diff(trajectory.double(), dim=1), dim=-1)
    arc = torch.cat([torch.zeros_like(step[:, :1]), torch.cumsum(step, dim=1)], dim=1)  # (a, ns)
    total = arc[:, -1:]
    base = arc - ((n - 1) // 2) * spacing
    base = torch.minimum(base, total - (n - 1) * spacing).clamp_min(0.0)
    want = base[..., None] + spacing * torch.arange(n, device=dev, dtype=torch.float64)
    flat = want.reshape(want.shape[0], -1)
    right = torch.searchsorted(arc.contiguous(), flat.contiguous()).clamp(max=ns - 1)
    left = (right - 1).clamp(min=0)
    pick_left = (flat - torch.gather(arc, 1, left)) < (torch.gather(arc, 1, right) - flat)
    idx = torch.where(pick_left, left, right).view(want.shape)
    for j in range(1, n):  # strictly increasing
        idx[..., j] = torch.maximum(idx[..., j], idx[..., j - 1] + 1)
    over = (idx[..., -1] - (ns - 1)).clamp(min=0)  # shift back a set that ran past the end
    return idx - over[..., None]


def _flat_arms(trajectory: torch.Tensor) -> torch.Tensor:
    return trajectory.reshape(-1, trajectory.shape[-2], 3)


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


# ----------------------------------------------------------------------------------------------
# calibration data at arbitrary k
# ----------------------------------------------------------------------------------------------
def calibration_image(calibration: torch.Tensor) -> torch.Tensor:
    """Low-resolution coil images whose SPEC §3 transform at integer frequencies is ``calibration``.

    Parameters
    ----------
    calibration : Tensor, shape (coils, cx, cy, cz), complex
        ``calibration[c, i, j, l]`` at frequency ``(i − cx//2, j − cy//2, l − cz//2)`` cycles/FOV.

    Returns
    -------
    Tensor, shape (coils, cx, cy, cz), complex128
        Voxel ``r`` sits at ``(r − c//2)·matrix/c`` (full-resolution voxel units).
    """
    dims = (-3, -2, -1)
    x = torch.fft.ifftshift(calibration.to(torch.complex128), dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(x, dim=dims), dim=dims)


def calibration_kspace(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Band-limited interpolation of the calibration data at arbitrary frequencies (type-2 NUFFT).

    Parameters
    ----------
    image : Tensor, shape (coils, cx, cy, cz), complex
        From :func:`calibration_image`.
    k : Tensor, shape (points, 3), float
        Frequencies in cycles/FOV, inside ``[-c/2, c/2)`` per axis.

    Returns
    -------
    Tensor, shape (coils, points), complex128
        ``Σ_r image[c, r] exp(-2πi Σ_d k_d (r_d − c_d//2) / c_d)``; equals ``calibration`` at
        integer ``k``.
    """
    import finufft

    shape = image.shape[-3:]
    f = np.ascontiguousarray(image.detach().cpu().numpy().astype(np.complex128))
    pts = k.detach().cpu().double().numpy()
    xyz = [np.ascontiguousarray(2 * np.pi * pts[:, d] / shape[d]) for d in range(3)]
    out = finufft.nufft3d2(*xyz, f, isign=-1, eps=1e-9, modeord=0)
    return torch.from_numpy(np.asarray(out).reshape(image.shape[0], -1))


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def _check_inputs(trajectory: torch.Tensor, matrix: tuple[int, int, int]) -> None:
    if trajectory.ndim != 4 or trajectory.shape[-1] != 3:
        raise InputError(
            f"trajectory: shape {tuple(trajectory.shape)} is not (groups, tr, samples, 3)"
        )
    if len(matrix) != 3 or min(matrix) < 1:
        raise InputError(f"matrix: {matrix} is not three positive sizes")
    if not bool(torch.isfinite(trajectory).all()):
        raise InputError("trajectory: contains NaN or Inf")


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
    sets ``d`` of randomly chosen trajectory samples (:func:`find_sources`); target and source
    values from :func:`calibration_kspace`.  Data are divided by the RMS source magnitude for
    training (the kernel is linear in the data, so nothing needs undoing).  Each step evaluates
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
    if calibration.ndim != 4:
        raise InputError(
            f"calibration: shape {tuple(calibration.shape)} is not (coils, cx, cy, cz)"
        )
    if not bool(torch.isfinite(torch.view_as_real(calibration.to(torch.complex64))).all()):
        raise InputError("calibration: contains NaN or Inf")
    dev = _device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
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
    tgt, src, disp = (tgt / scale).to(dev), (src / scale).to(dev), disp.to(dev)
    emit(callback, "igrog-pairs", 32, 32, "training pairs ready")
    if not (source_noise >= 0.0 and math.isfinite(source_noise)):
        raise InputError(f"source_noise: {source_noise} is not a finite value >= 0")
    sigma = source_noise / scale / math.sqrt(2.0)  # per real component, normalised units
    # per-pair loss weights: 1 ("global"), the pair's own source RMS ("signal") or its inverse
    # ("local")
    rms = src.abs().square().mean(-1, keepdim=True).sqrt()  # (P, per, 1)
    if cfg.pair_weight == "signal":
        pair_w = rms / rms.mean()
    elif cfg.pair_weight == "local":
        pair_w = 1.0 / rms.clamp_min(1e-4)
    else:
        pair_w = torch.ones_like(rms)
    n_val = max(1, sets // 20)
    n_tr = sets - n_val

    def batch_predict(d: torch.Tensor, sv: torch.Tensor) -> torch.Tensor:
        # (b, n, 3), (b, per, coils·n) -> (b, per, coils)
        return torch.bmm(sv, kernel(d).transpose(1, 2))

    kernel = IGROGKernel(
        coils,
        n,
        hidden=cfg.hidden,
        layers=cfg.layers,
        fourier_features=cfg.fourier_features,
        fourier_scale=cfg.fourier_scale,
        prior_width=cfg.prior_width,
        seed=cfg.seed,
    ).to(dev)
    kernel.train()
    opt = torch.optim.Adam(kernel.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=0.05 * cfg.lr)
    emit(callback, "igrog-train", 0, cfg.steps, f"training the kernel on {sets} source sets")
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
            emit(
                callback,
                "igrog-train",
                step + 1,
                cfg.steps,
                f"kernel step {step + 1}",
                loss=kernel.history[-1],
            )
    kernel.eval()

    def rel_error(sl: slice) -> float:
        d, sv, tv = disp[sl], src[sl], tgt[sl]
        err = torch.cat(
            [batch_predict(d[i : i + 1024], sv[i : i + 1024]) for i in range(0, len(d), 1024)]
        )
        return float(torch.linalg.vector_norm(err - tv) / torch.linalg.vector_norm(tv))

    with torch.no_grad():
        vd, vs, vt = disp[n_tr:], src[n_tr:], tgt[n_tr:]
        near = vd.square().sum(-1).argmin(-1)  # (v,)
        cols = torch.arange(coils, device=dev)[None, :] * n + near[:, None]  # (v, coils)
        nearest = torch.gather(vs, 2, cols[:, None, :].expand(-1, per, -1))
        kernel.metrics = {
            "train_rel_error": rel_error(slice(0, min(n_tr, 1024))),
            "val_rel_error": rel_error(slice(n_tr, sets)),
            "nearest_rel_error": float(
                torch.linalg.vector_norm(nearest - vt) / torch.linalg.vector_norm(vt)
            ),
            "reach": float(reach.max()),
            "final_loss": kernel.history[-1] if kernel.history else float("nan"),
            "source_noise_rel": sigma * math.sqrt(2.0),  # relative to the RMS source
        }
    kernel.config = to_dict(cfg)
    return kernel


# ----------------------------------------------------------------------------------------------
# gridding
# ----------------------------------------------------------------------------------------------
def grid(
    kspace: torch.Tensor,
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    *,
    kernel: IGROGKernel | None = None,
    config: GriddingConfig | None = None,
    callback: Callback | None = None,
    kernel_eval: str = "auto",
) -> GriddedData:
    """Move every sample to its nearest oversampled grid point and compute its value there.

    With a kernel, the value is ``G(d_1 … d_n) · [sources]`` from the ``n = kernel.n_sources``
    nearest samples of the same arm; without one (``n_sources=1``), the sample's own value is used
    (nearest-neighbour move).

    Parameters
    ----------
    kspace : Tensor, shape (coils, groups, tr, samples), complex64
    trajectory : Tensor, shape (groups, tr, samples, 3), float32
        Cycles/FOV.
    matrix : tuple of 3 int
        Image matrix.
    kernel : IGROGKernel, optional
        From :func:`train_kernel`; ``None`` only with ``config.n_sources == 1``.
    config : GriddingConfig, optional
        ``grid_oversampling``, ``grid_batch`` and ``device`` are used (``n_sources`` and
        ``search_window`` come from the kernel when there is one).
    callback : Callback, optional
        Receives ``"grid"`` events.
    kernel_eval : str
        How the kernel is evaluated (:func:`~spurig_core.operators.igrog_eval.kernel_predictor`):
        ``"auto"`` (bfloat16 where the device has native bf16 products, else float32),
        ``"bf16"``, ``"fp32"``, or ``"reference"`` (:meth:`IGROGKernel.predict`, the path before
        issue #14).

    Returns
    -------
    GriddedData
        On ``config.device``; ``values`` (coils, groups, tr, samples) complex64.
    """
    cfg = config or GriddingConfig()
    _check_inputs(trajectory, matrix)
    if kspace.ndim != 4 or tuple(kspace.shape[1:]) != tuple(trajectory.shape[:3]):
        raise InputError(
            f"kspace: shape {tuple(kspace.shape)} does not fit trajectory "
            f"{tuple(trajectory.shape)} (expected (coils, groups, tr, samples))"
        )
    coils = int(kspace.shape[0])
    if kernel is None and cfg.n_sources != 1:
        raise InputError(f"gridding: n_sources = {cfg.n_sources} needs a trained kernel")
    if kernel is not None and kernel.n_coils != coils:
        raise InputError(f"kernel: trained for {kernel.n_coils} coils, the data have {coils}")
    dev = _device(cfg.device)
    n = kernel.n_sources if kernel is not None else 1
    # sources are searched as during training (the kernel only knows those configurations)
    window = int(kernel.config.get("search_window", cfg.search_window)) if kernel is not None else 0
    spacing = float(kernel.config.get("source_spacing", 0.0)) if kernel is not None else 0.0
    shape = grid_shape(matrix, cfg.grid_oversampling)
    g_, t_, ns = (int(s) for s in trajectory.shape[:3])
    arms_traj = _flat_arms(trajectory)
    arms_ksp = kspace.reshape(coils, -1, ns)
    n_arms = arms_traj.shape[0]
    values = torch.empty((coils, n_arms, ns), dtype=torch.complex64, device=dev)
    index = torch.empty((n_arms, ns), dtype=torch.int64, device=dev)
    if kernel is not None:
        if kernel.freqs.device != dev:  # leave the caller's kernel where it is
            kernel = copy.deepcopy(kernel).to(dev)
        kernel.eval()
        from .igrog_eval import kernel_predictor  # fast evaluation (issue #14)

        predict = kernel_predictor(kernel, kernel_eval)
    per = max(1, cfg.grid_batch // ns)
    total = math.ceil(n_arms / per)
    with torch.inference_mode():
        for b, a0 in enumerate(range(0, n_arms, per)):
            a1 = min(a0 + per, n_arms)
            tr = arms_traj[a0:a1].to(dev, torch.float32)
            ksp = arms_ksp[:, a0:a1].to(dev, torch.complex64)
            idx, src, disp = find_sources(
                tr, matrix, shape, n_sources=n, search_window=window, source_spacing=spacing
            )
            index[a0:a1] = idx
            if kernel is None:
                values[:, a0:a1] = ksp
            else:
                a = a1 - a0
                gathered = torch.gather(ksp, 2, src.reshape(1, a, -1).expand(coils, -1, -1))
                gathered = gathered.view(coils, a * ns, n).permute(1, 0, 2)  # (B, coils, n)
                out = predict(disp.reshape(-1, n, 3), gathered)  # (B, coils)
                values[:, a0:a1] = out.T.reshape(coils, a, ns)
            emit(callback, "grid", b + 1, total, f"gridded {a1}/{n_arms} arms")
    mat = (int(matrix[0]), int(matrix[1]), int(matrix[2]))
    return GriddedData(values.view(coils, g_, t_, ns), index.view(g_, t_, ns), shape, mat)


def grid_scan(
    scan: Scan, *, config: GriddingConfig | None = None, callback: Callback | None = None
) -> tuple[GriddedData, dict[str, float]]:
    """Train the kernel on the scan's calibration data (if needed) and grid its k-space.

    Parameters
    ----------
    scan : Scan
        Needs ``calibration`` unless ``config.learned_kernel`` is false.
    config : GriddingConfig, optional
    callback : Callback, optional
        Receives ``"igrog-train"`` and ``"grid"`` events.

    Returns
    -------
    gridded : GriddedData
        With ``check`` set to the self-check of the kernel on this scan
        (:func:`~spurig_core.operators.igrog_check.check_gridding`, its seconds in
        ``check["check_s"]``, the noise the fit was matched to in ``check["source_noise_rel"]``,
        relative to the RMS calibration source) when ``config.check`` is true and a kernel was
        trained.
    timings : dict of str to float
        ``kernel_training_s`` (0 without a kernel) and ``gridding_s`` — kept apart because the
        paper's reconstruction times include gridding but not kernel training.
    """
    cfg = config or GriddingConfig()
    kernel = None
    t0 = time.perf_counter()
    if cfg.learned_kernel:
        if scan.calibration is None:
            raise InputError(
                f"{scan.path or 'scan'}: no 'calibration' dataset, which the iGROG kernel needs"
            )
        if int(scan.calibration.shape[0]) != scan.n_coils:
            raise InputError(
                f"{scan.path or 'scan'}: calibration has {scan.calibration.shape[0]} coils, "
                f"k-space {scan.n_coils}"
            )
        noise = 0.0
        if cfg.noise_matched:
            from .igrog_noise import source_noise

            emit(callback, "igrog-train", 0, cfg.steps, "estimating the data's noise level")
            noise = source_noise(scan.kspace, scan.trajectory, scan.calibration, seed=cfg.seed)[
                "added_noise"
            ]
        emit(callback, "igrog-train", 0, cfg.steps, "extracting the kernel's training pairs")
        kernel = train_kernel(
            scan.calibration,
            scan.trajectory,
            scan.matrix,
            config=cfg,
            callback=callback,
            source_noise=noise,
        )
    t1 = time.perf_counter()
    emit(callback, "grid", 0, 0, "gridding k-space")
    gridded = grid(
        scan.kspace, scan.trajectory, scan.matrix, kernel=kernel, config=cfg, callback=callback
    )
    if gridded.values.is_cuda:
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    times = {"kernel_training_s": t1 - t0 if kernel is not None else 0.0, "gridding_s": t2 - t1}
    if kernel is not None and cfg.check and scan.calibration is not None:
        from .igrog_check import check_gridding

        emit(callback, "igrog-check", 0, 1, "gridding self-check")
        check = check_gridding(
            kernel, scan.calibration, scan.trajectory, scan.matrix, config=cfg, kspace=scan.kspace
        )
        check["check_s"] = time.perf_counter() - t2
        # the noise the fit was matched to, relative to the RMS calibration source (0: none)
        check["source_noise_rel"] = float(kernel.metrics.get("source_noise_rel", 0.0))
        gridded = dataclasses.replace(gridded, check=check)
        emit(callback, "igrog-check", 1, 1, "passed" if check["passed"] else "failed")
    return gridded, times
