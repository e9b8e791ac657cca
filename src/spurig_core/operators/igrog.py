r"""iGROG: implicit-GROG gridding of non-Cartesian k-space onto the oversampled grid (paper 2.3.1).

Every acquired sample moves to its nearest point of the ``×grid_oversampling`` Cartesian grid of
:mod:`spurig_core.operators.grid`.  Its value there is predicted, GRAPPA-like, from the ``n``
nearest samples of the same spiral arm (same group and TR) by a coil-mixing kernel

.. math::

    y(\mathbf{k}_g) = G_\psi(\mathbf{d}_1, \dots, \mathbf{d}_n)\,
    [y(\mathbf{k}_g + \mathbf{d}_1); \dots; y(\mathbf{k}_g + \mathbf{d}_n)],
    \qquad G_\psi : \mathbb{R}^{3n} \to
    \mathbb{C}^{\mathrm{coils} \times \mathrm{coils}\cdot n},

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

This module holds the configuration and the gridding itself; the parts live beside it:
:mod:`~spurig_core.operators.igrog_kernel` (the kernel INR),
:mod:`~spurig_core.operators.igrog_sources` (targets, sources and calibration values at any k),
:mod:`~spurig_core.operators.igrog_train` (kernel training), ``igrog_eval`` (fast kernel
evaluation), ``igrog_check`` and ``igrog_noise`` (self-checks and noise estimates).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, NotAvailableError
from ..progress import Callback, emit
from .grid import GRID_OVERSAMPLING, GriddedData, grid_shape
from .igrog_kernel import IGROGKernel
from .igrog_sources import _flat_arms, find_sources

if TYPE_CHECKING:
    from ..data import Scan

__all__ = ["GriddingConfig", "grid", "grid_scan"]


@dataclass(frozen=True)
class GriddingConfig:
    """Tunables of iGROG kernel training and gridding (paper 2.3.1).

    Attributes
    ----------
    grid_oversampling : float
        Oversampling of the Cartesian grid (paper: 1.5; :data:`.grid.GRID_OVERSAMPLING`).
    n_sources : int
        Source samples per target and coil (paper: 5).  ``1`` gives a GROG-like single shift.
    learned_kernel : bool
        ``False``: move samples to the nearest grid point without a kernel (needs ``n_sources=1``).
    search_window : int
        Readout neighbours on each side of a sample that are candidate sources.
    source_spacing : float
        ``> 0``: sources about this far apart along the readout (cycles/FOV, 0 to 2) instead of
        the ``n_sources`` nearest candidates (:func:`~.igrog_sources.find_sources`); ``0``: the
        nearest ones (the setting before issue #20).  Default 0.5: a densely sampled readout
        (radial-like or oversampled arms) otherwise hands the kernel a tight, nearly collinear
        cluster of sources, whose fit amplifies noise (``benchmarks/RESULTS-igrog.md``: noise
        gain 1.52 for radial arms at 32³, 1.14 with 0.5); it lowered the A^H b error of the
        project's own scan too.
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
        Without the scan's k-space (:func:`~.igrog_train.train_kernel` called directly) nothing
        is added.
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
    max_coils : int
        Scans with more channels are SVD-compressed to this many virtual coils before kernel
        training, for every method (:func:`~spurig_core.operators.coil_maps.virtual_coils`);
        ``0`` never compresses.  Default 16: uncompressed 24- and 32-channel scans lost 0.56 and
        1.56 dB of gridded LLR against LLR-NUFFT at 32³, compressed to 16 only 0.18–0.20 dB
        (``benchmarks/RESULTS-igrog.md``).  :func:`grid_scan` refuses a scan with more channels.
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

    grid_oversampling: float = GRID_OVERSAMPLING
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
    max_coils: int = 16
    check: bool = True
    check_samples: int = 4096
    max_rel_error: float = 0.3
    max_error_ratio: float = 0.85
    max_noise_gain: float = 1.3
    max_data_error_ratio: float = 1.3

    def __post_init__(self) -> None:
        """Raise InputError naming the first ``gridding.*`` field outside its allowed range."""
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
        if self.max_coils < 0:
            raise InputError(f"gridding.max_coils: {self.max_coils} is below 0")
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


def _check_inputs(trajectory: torch.Tensor, matrix: tuple[int, int, int]) -> None:
    if trajectory.ndim != 4 or trajectory.shape[-1] != 3:
        raise InputError(
            f"trajectory: shape {tuple(trajectory.shape)} is not (groups, tr, samples, 3)"
        )
    if len(matrix) != 3 or min(matrix) < 1:
        raise InputError(f"matrix: {matrix} is not three positive sizes")
    if not bool(torch.isfinite(trajectory).all()):
        raise InputError("trajectory: contains NaN or Inf")


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
        From :func:`~.igrog_train.train_kernel`; ``None`` only with ``config.n_sources == 1``.
    config : GriddingConfig, optional
        ``grid_oversampling``, ``grid_batch`` and ``device`` are used (``n_sources`` and
        ``search_window`` come from the kernel when there is one).
    callback : Callback, optional
        Receives ``"grid"`` events.
    kernel_eval : str
        How the kernel is evaluated (:func:`~spurig_core.operators.igrog_eval.kernel_predictor`):
        ``"auto"`` (bfloat16 where the device has native bf16 products, else float32),
        ``"bf16"``, ``"fp32"``, or ``"reference"`` (:meth:`~.igrog_kernel.IGROGKernel.predict`,
        the path before issue #14).

    Returns
    -------
    GriddedData
        On ``config.device``; ``values`` (coils, groups, tr, samples) complex64.
    """
    cfg = config or GriddingConfig()
    _check_grid_inputs(kspace, trajectory, matrix, kernel, cfg)
    coils = int(kspace.shape[0])
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
        from .igrog_eval import KernelPredictor, kernel_predictor  # fast evaluation (issue #14)

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
                keep, run = _distinct_predictions(idx, src)
                a = a1 - a0
                # the sources of the distinct (target, sources) sets only, as rows (source,
                # coil) of this batch's samples: one row gather, no transposed copies
                at = (torch.div(keep, ns, rounding_mode="floor") * ns)[:, None] + src.reshape(
                    -1, n
                )[keep]
                rows = ksp.reshape(coils, a * ns).T.contiguous()  # (samples, coils)
                gathered = rows.index_select(0, at.reshape(-1)).view(-1, n, coils)
                d = disp.reshape(-1, n, 3)[keep]
                if isinstance(predict, KernelPredictor):
                    out = predict.batch_major(d, gathered)  # (U, coils)
                else:
                    out = predict(d, gathered.transpose(1, 2))
                values[:, a0:a1] = out.index_select(0, run).T.reshape(coils, a, ns)
            emit(callback, "grid", b + 1, total, f"gridded {a1}/{n_arms} arms")
    mat = (int(matrix[0]), int(matrix[1]), int(matrix[2]))
    return GriddedData(values.view(coils, g_, t_, ns), index.view(g_, t_, ns), shape, mat)


#: The distinct predictions of a batch are padded to a multiple of this many rows, so that the
#: kernel network sees a few matrix shapes, not one per batch (oneDNN prepares each new shape:
#: about 1 s of a 64³ gridding's first call without the padding).
_ROWS_MULTIPLE = 2048


def _distinct_predictions(
    index: torch.Tensor, sources: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the samples to predict (unlike their predecessor) and whom every sample copies.

    Consecutive samples of an arm that share the target grid point *and* the source set have the
    same displacements and source values, hence the same predicted value: the kernel is
    evaluated once per run (issue #14: 34 % of a 64³ scan's samples, the centre of every arm being
    denser than the grid).

    Parameters
    ----------
    index : Tensor, shape (arms, samples), int64
        Target grid points.
    sources : Tensor, shape (arms, samples, n), int64
        Readout indices of the sources.

    Returns
    -------
    keep : Tensor, shape (U,), int64
        Flat (arm-major) positions of the samples to evaluate (padded with repeats of the first
        to a multiple of :data:`_ROWS_MULTIPLE`, or to the number of samples if that is less).
    run : Tensor, shape (arms · samples,), int64
        For every sample, its position in ``keep``.
    """
    arms, ns = index.shape
    flat = index.reshape(-1)
    src = sources.reshape(arms * ns, -1)
    new = torch.ones(arms * ns, dtype=torch.bool, device=index.device)
    new[1:] = (flat[1:] != flat[:-1]) | (src[1:] != src[:-1]).any(dim=1)
    new.view(arms, ns)[:, 0] = True  # an arm never copies the previous one
    keep = new.nonzero().squeeze(1)
    # repeats of the first, never read back; never more rows than the batch has samples (the
    # batch size bounds the gridding's memory)
    pad = min(-keep.numel() % _ROWS_MULTIPLE, arms * ns - keep.numel())
    if pad:
        keep = torch.cat([keep, keep[:1].expand(pad)])
    return keep, new.cumsum(0).sub_(1)


def _check_grid_inputs(
    kspace: torch.Tensor,
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    kernel: IGROGKernel | None,
    cfg: GriddingConfig,
) -> None:
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


#: GriddingConfig fields that do not change the gridded values: the self-check and its bounds,
#: where and in what batches it runs, and the channel limit (applied before gridding).
NOT_DATA_FIELDS = frozenset(
    {
        "check",
        "check_samples",
        "max_rel_error",
        "max_error_ratio",
        "max_noise_gain",
        "max_data_error_ratio",
        "device",
        "grid_batch",
        "max_coils",
    }
)


def data_fields(gridding: dict[str, Any] | None) -> dict[str, Any]:
    """Return the fields of a recorded gridding config that decide the gridded data.

    A model trained on data gridded with one configuration records it; reconstructing with the
    model grids the scan the same way (:func:`spurig_core.recon.data_term.build_data_term`) but
    keeps this run's self-check, device and batch settings.
    """
    return {k: v for k, v in (gridding or {}).items() if k not in NOT_DATA_FIELDS}


def grid_scan(
    scan: Scan, *, config: GriddingConfig | None = None, callback: Callback | None = None
) -> tuple[GriddedData, dict[str, float]]:
    """Train the kernel on the scan's calibration data (if needed) and grid its k-space.

    Parameters
    ----------
    scan : Scan
        Needs ``calibration`` unless ``config.learned_kernel`` is false, and at most
        ``config.max_coils`` channels (compress with
        :func:`~spurig_core.operators.coil_maps.virtual_coils` first, as every entry point does).
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
    if 0 < cfg.max_coils < scan.n_coils:
        raise InputError(
            f"{scan.path or 'scan'}: {scan.n_coils} channels, more than gridding.max_coils = "
            f"{cfg.max_coils}: compress it first (spurig_core.operators.coil_maps.virtual_coils)"
        )
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
        from .igrog_train import train_kernel

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
    from ..config import to_dict

    return dataclasses.replace(gridded, settings=to_dict(cfg)), times
