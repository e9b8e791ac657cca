"""Frozen configs of the training stages and the recipe, and their TOML.

The three stages are paper 2.3.2 and appendix A.2–A.4; :class:`RecipeConfig` is the v2 recipe's
(:mod:`.recipe`).  :mod:`.stages` runs the stages; a checkpoint records the stage's config as a
plain dict (:func:`spurig_core.config.to_dict`) so that ``--resume`` can refuse another config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict, load_toml
from ..errors import InputError
from ..recon.unrolled import UnrollConfig
from .augment import AugmentConfig
from .losses import FINGERPRINT_WEIGHTS, TISSUE_WEIGHTS, UNIFORM
from .validation import SELECT_RULES

__all__ = [
    "STAGES",
    "FinetuneConfig",
    "GleamConfig",
    "PretrainConfig",
    "RecipeConfig",
    "load_stage_config",
]


@dataclass(frozen=True)
class _Common:
    """Fields shared by the three stages.

    Attributes
    ----------
    data_dir : str
        Cohort directory with prepared subjects in ``train/``, ``val/`` (``test/`` unused here).
    out_dir : str
        Where checkpoints, the model and loss curves go.
    duration : str
        Scan duration the model is for (``"30s"``, ``"1min"``, ``"2min"``).
    model : UnrollConfig
    init : str
        Model file to start from (``""``: random initialisation, e.g. GLEAM "no PT").
    epochs : int
    lr : float
        Adam's initial learning rate (5e-3 in appendix A.1).
    lr_patience : int
        Validation epochs without improvement before the rate is multiplied by ``lr_factor``.
    lr_factor : float
    tissue_weights : tuple of float
        λ per label (eq. 4).
    bf16 : bool
        bfloat16 autocast inside the UNets (whitening, DC and losses stay float32), where the
        device has native bfloat16 products; float32 elsewhere (:func:`~.steps.amp`).
    seed : int
    device : str
    max_train : int
        Use at most this many training subjects (0: all).
    max_val : int
        Use at most this many validation subjects (0: all).
    """

    data_dir: str
    out_dir: str
    duration: str = "1min"
    model: UnrollConfig = field(default_factory=UnrollConfig)
    init: str = ""
    epochs: int = 100
    lr: float = 5e-3
    lr_patience: int = 20
    lr_factor: float = 0.5
    tissue_weights: tuple[float, ...] = TISSUE_WEIGHTS
    bf16: bool = False
    seed: int = 0
    device: str = "cpu"
    max_train: int = 0
    max_val: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"{type(self).__name__}.epochs: must be at least 1")
        if not self.lr > 0:
            raise InputError(f"{type(self).__name__}.lr: must be positive")


@dataclass(frozen=True)
class PretrainConfig(_Common):
    """Stage 1 (appendix A.2).

    Attributes
    ----------
    inputs : tuple of str
        Input types; ``"adjoint"`` means ``adjoint-<duration>``, ``"target"`` the target itself.
    indices : tuple of int
        Pseudo unroll index of each input type; ``0`` draws from ``target_index``.
    target_index : tuple of 2 int
        Range (inclusive) of the random index of the target input.
    batch_size : int
    crop : int
        Side of the random cubic crops (clipped to the volume).
    steps_per_epoch : int
        Batches per epoch (0: one per training subject and input type / batch size).
    augment : AugmentConfig
    """

    inputs: tuple[str, ...] = ("adjoint", "llr-30s", "llr-1min", "llr-2min", "target")
    indices: tuple[int, ...] = (1, 2, 2, 3, 0)
    target_index: tuple[int, int] = (4, 6)
    batch_size: int = 8
    crop: int = 96
    steps_per_epoch: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        """Run the common checks and require one index per pretraining input."""
        super().__post_init__()
        if len(self.inputs) != len(self.indices):
            raise InputError("PretrainConfig: inputs and indices must have the same length")


@dataclass(frozen=True)
class GleamConfig(_Common):
    """Stage 2 (appendix A.3).

    Attributes
    ----------
    accumulation : int
        Subjects per optimiser step (batch 1, gradient accumulation 4).
    step_weight_ratio : float
        ``λ_K / λ_1`` of the geometric step weights (10).
    ssim_weight : float
        ``λ_SSIM`` of the MS-SSIM term on the final output (0 disables it).
    ssim_slices : int
        Random axial slices for MS-SSIM (30).
    """

    accumulation: int = 4
    step_weight_ratio: float = 10.0
    ssim_weight: float = 1.0
    ssim_slices: int = 30


@dataclass(frozen=True)
class FinetuneConfig(_Common):
    """Stage 3 (appendix A.4): loss on the final output only.

    Attributes
    ----------
    accumulation, ssim_weight, ssim_slices
        As in :class:`GleamConfig`.
    checkpointing : bool
        Gradient checkpointing across DC and denoiser steps (``False``: naive full backprop).
    """

    accumulation: int = 4
    ssim_weight: float = 1.0
    ssim_slices: int = 30
    checkpointing: bool = True


STAGES: dict[str, type[_Common]] = {
    "pretrain": PretrainConfig,
    "gleam": GleamConfig,
    "finetune": FinetuneConfig,
}


def load_stage_config(stage: str, path: str | Path) -> _Common:
    """Read the stage's frozen config from a TOML file (top-level table, or ``[<stage>]``).

    A ``[distributed]`` table is not part of the stage's config (:mod:`.distributed`): the same
    run resumes with another number of processes or another backend.
    """
    if stage not in STAGES:
        raise InputError(f"unknown training stage {stage!r}: choose {', '.join(STAGES)}")
    from ..config import read_toml

    p = Path(path)
    data = read_toml(p)
    if isinstance(data.get(stage), dict):
        return load_toml(STAGES[stage], p, table=stage)
    top = {k: v for k, v in data.items() if k != "distributed"}
    return from_dict(STAGES[stage], top, where=f"config {p}", table="")


@dataclass(frozen=True)
class RecipeConfig:
    """Settings of :func:`run_recipe` (a TOML file, fields at top level).

    Attributes
    ----------
    data_dir, out_dir : str
        Prepared cohort (``tools/prepare_redraw.py``) and run directory (relative to the TOML).
    duration : str
    model : UnrollConfig
    init : str
        Model file to start from (``""``: a fresh, identity-initialised network).  When
        ``model.network.base_width`` is a multiple of the file's, the file's denoisers are
        widened first, computing the same function (:func:`~spurig_core.recon.widen.widen_unet`).
    new_steps : {"repeat", "identity"}
        Unrolled steps beyond ``init``'s: its last denoiser and step size, or (a denoiser per
        step only) that denoiser with a zeroed output layer, so each new step starts as the
        identity (:meth:`~spurig_core.training.stages.Trainer._init_from`).
    pretrain_updates, gleam_updates, finetune_updates : int
        Updates of each phase (module notes).
    refresh_every : int
        Updates between recomputations of the cached states.
    refresh_subjects : int
        Subjects whose states each refresh recomputes, in turn (``0``: all).  With 48 subjects
        a full refresh (12 grams and 6 denoiser passes each) costs minutes, far more than the
        updates between refreshes; a rolling refresh keeps the cache fresh at a fixed cost.
        Subjects prepared while the run goes on (``tools/prepare_redraw.py`` writing into
        ``data_dir``) join at the next refresh.
    lr_schedule : {"constant", "cosine"}
        ``"cosine"``: the learning rate of the cached phase falls from ``lr`` to
        ``lr_min_ratio × lr`` along a half cosine over ``pretrain_updates + gleam_updates``
        (v2's constant 1e-3 made the validation PSNR swing by ±1 dB between checkpoints).
    lr_min_ratio : float
    val_every : int
        Updates between validations (and checkpoints).
    val_scans : str
        Folder of the validation subjects' simulated scans (``<subject>.h5``, relative to the
        TOML): with it every validation also reports the T1/T2 errors (GM+WM) of the output
        (:mod:`.validation`); ``""``: PSNR only.
    select : {"psnr", "error-ratio"}
        How ``model.pt`` is chosen among the validations (:func:`.validation.selection_score`):
        best PSNR, or the lowest mean of the image, T1 and T2 errors, each relative to the
        state at update 0 (needs ``val_scans``).
    lr, finetune_lr : float
        Adam learning rates of phase 1 and 2.
    tissue_weights : tuple of float
        λ per label of the L1 term (uniform; the paper's ``1, 1, 10, 10, 1`` as an option).
    magnitude_weight : float
        Weight of the magnitude L1 term.
    fingerprint_weight : float
        Weight of :func:`~.losses.fingerprint_loss` (GM/WM coefficient directions, what the
        T1/T2 errors measure); ``0`` leaves it out (the v3 models).
    fingerprint_tissues : tuple of float
        Weight per label inside that term (background, CSF, GM, WM, other; default GM and WM
        alike, the v4 models); e.g. ``[0, 0, 3, 1, 0]`` aims it at the cortex.
    maps_weights : tuple of float
        Weights of the soft-matched T1 and T2 errors (:class:`~.maps_loss.MatchedMapsLoss`:
        mean ``|log T̂ − log T_ref|`` over GM and WM, what the evaluation's T1/T2 errors count);
        ``(0, 0)`` leaves the term out.
    maps_sharpness : float
        ``σ`` of the soft matching as a fraction of the median GM/WM target norm, in (0, 1)
        (0.01: ≈ 6 atoms share the weight of a 30-s output's voxel).
    maps_boundary_weight : float
        Weight of the tissue-boundary voxels (a 6-neighbour of another label) in the maps term,
        relative to the others (1: the evaluation's plain mean over GM and WM).
    maps_edge_weight : float
        Weight of the maps' edge term inside each soft-matched error
        (:func:`~.maps_loss.edge_error`: the mean ``|Δ log T̂ − Δ log T_ref|`` over the
        6-neighbour pairs of GM/WM voxels; 0: left out).  It counts a blur across the GM/WM
        interface, which the per-voxel mean sees only as two small errors.
    edge_weight : float
        Weight of :func:`~.losses.edge_l1` (the coefficients' error differences between
        6-neighbours touching GM/WM; 0: left out).
    maps_atoms : int
        Atoms per voxel in the soft matching (the hard match and its nearest grid neighbours).
    train_scans : str
        Folder of the training subjects' simulated scans (``<subject>.h5``, relative to the
        TOML), whose ground-truth T1/T2 and B1 the maps term needs.
    fresh_noise : bool
        Draw a noise realisation per refresh / fine-tuning update (``False``: always the scan's own,
        the shipped models' data).
    symmetries : bool
        Train the denoiser on a random one of the 48 axis permutations and flips of each cached
        state and its target (:func:`cube_symmetry`): with few subjects, all warps of one
        template, the network otherwise memorises the anatomy (measured: +4.9 dB on a training
        subject, −1.5 dB on a held-out one after 150 updates on 3 subjects).
    bf16 : bool
        bfloat16 autocast inside the UNets where native, else float32 (:func:`~.steps.amp`).
    seed : int
    max_train, max_val : int
        At most this many subjects (0: all).
    """

    data_dir: str
    out_dir: str
    duration: str = "2min"
    model: UnrollConfig = field(default_factory=UnrollConfig)
    init: str = ""
    new_steps: str = "repeat"
    pretrain_updates: int = 300
    gleam_updates: int = 900
    finetune_updates: int = 60
    refresh_every: int = 300
    refresh_subjects: int = 0
    lr_schedule: str = "constant"
    lr_min_ratio: float = 0.1
    val_every: int = 150
    val_scans: str = ""
    select: str = "psnr"
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    tissue_weights: tuple[float, ...] = UNIFORM
    magnitude_weight: float = 1.0
    fingerprint_weight: float = 0.0
    fingerprint_tissues: tuple[float, ...] = FINGERPRINT_WEIGHTS
    maps_weights: tuple[float, float] = (0.0, 0.0)
    maps_sharpness: float = 0.01
    maps_atoms: int = 32
    maps_boundary_weight: float = 1.0
    maps_edge_weight: float = 0.0
    edge_weight: float = 0.0
    train_scans: str = ""
    fresh_noise: bool = True
    symmetries: bool = True
    bf16: bool = True
    seed: int = 0
    max_train: int = 0
    max_val: int = 0

    def __post_init__(self) -> None:
        """Raise InputError for an unknown ``lr_schedule`` or a negative count."""
        if self.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"lr_schedule: {self.lr_schedule!r} is not 'constant' or 'cosine'")
        if self.new_steps not in ("repeat", "identity"):
            raise InputError(f"new_steps: {self.new_steps!r} is not 'repeat' or 'identity'")
        if self.new_steps == "identity" and self.model.share_weights:
            raise InputError(
                "new_steps = 'identity' needs a denoiser per step: [model] share_weights = false"
            )
        if self.refresh_subjects < 0:
            raise InputError(f"refresh_subjects: {self.refresh_subjects} is below 0")
        if self.select not in SELECT_RULES:
            raise InputError(f"select: {self.select!r} is not one of {', '.join(SELECT_RULES)}")
        if not all(w >= 0 for w in self.fingerprint_tissues) or not any(self.fingerprint_tissues):
            raise InputError(
                f"fingerprint_tissues: {list(self.fingerprint_tissues)}: each >= 0, one > 0"
            )
        if len(self.maps_weights) != 2 or not all(
            math.isfinite(w) and w >= 0 for w in self.maps_weights
        ):
            raise InputError(f"maps_weights: {list(self.maps_weights)}: two weights (T1, T2) >= 0")
        if any(self.maps_weights) and not self.train_scans:
            raise InputError("maps_weights > 0 needs train_scans (the training subjects' T1/T2)")
        if not 0.0 < self.maps_sharpness < 1.0:
            raise InputError(f"maps_sharpness: {self.maps_sharpness} is not in (0, 1)")
        if self.maps_atoms < 2:
            raise InputError(f"maps_atoms: {self.maps_atoms} is below 2")
        if not 1.0 <= self.maps_boundary_weight <= 100.0:
            raise InputError(
                f"maps_boundary_weight: {self.maps_boundary_weight} is not in [1, 100]"
            )
        if not 0.0 <= self.maps_edge_weight <= 100.0:
            raise InputError(f"maps_edge_weight: {self.maps_edge_weight} is not in [0, 100]")
        if self.maps_edge_weight > 0 and not any(self.maps_weights):
            raise InputError(
                "maps_edge_weight > 0 needs maps_weights > 0 (it is part of that term)"
            )
        if not (math.isfinite(self.edge_weight) and self.edge_weight >= 0):
            raise InputError(f"edge_weight: {self.edge_weight} is not a number >= 0")
        if self.select != "psnr" and not self.val_scans:
            raise InputError(f"select = {self.select!r} needs val_scans (the T1/T2 errors)")

    def lr_at(self, update: int) -> float:
        """Learning rate of the cached phase at ``update``."""
        end = self.pretrain_updates + self.gleam_updates
        if self.lr_schedule == "constant" or end <= 0:
            return self.lr
        t = min(update, end) / end
        return self.lr * (
            self.lr_min_ratio + (1 - self.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        )

    @property
    def total(self) -> int:
        """All updates of the run."""
        return self.pretrain_updates + self.gleam_updates + self.finetune_updates
