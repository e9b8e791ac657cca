"""Frozen configs of the three training stages (paper 2.3.2, appendix A.2–A.4) and their TOML.

:mod:`.stages` runs them; a checkpoint records the stage's config as a plain dict
(:func:`spurig_core.config.to_dict`) so that ``--resume`` can refuse another config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict, load_toml
from ..errors import InputError
from ..recon.unrolled import UnrollConfig
from .augment import AugmentConfig
from .losses import TISSUE_WEIGHTS

__all__ = ["STAGES", "FinetuneConfig", "GleamConfig", "PretrainConfig", "load_stage_config"]


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
