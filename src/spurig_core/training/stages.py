"""The three training stages of SPUR-iG (paper 2.3.2, appendix A.2–A.4) and their entry point.

1. ``pretrain`` — the step-conditioned denoiser alone on inputs of varying quality with pseudo
   indices (``s·A^H b → 1``, LLR 30 s → 2, 1 min → 2, 2 min → 3, the target → ``U{4…6}``),
   random rotations/translations/scaling and random crops in batches; tissue-aware L1 (eq. 4).
2. ``gleam`` — the unrolled network from the pretrained weights, the graph detached after every
   step, a loss at every step with geometric weights ``λ_K = 10 λ_1`` plus MS-SSIM of the final
   output on random axial slices (eq. 5–6); full volumes, batch 1, gradient accumulation 4.
3. ``finetune`` — full unrolled training with gradient checkpointing across DC and denoiser steps,
   the loss on the final output only.

Adam with the learning rate halved after ``lr_patience`` validation epochs without improvement
(``ReduceLROnPlateau``).  After every epoch a resumable checkpoint ``last.pt`` is written atomically
(model, optimiser, scheduler, epoch/step, the data generators and the torch/numpy/python RNG
states), the best model so far ``model.pt`` (kind ``spurig-model``, read by
:func:`spurig_core.recon.unrolled.load_model`), and the loss curves ``loss.csv`` and ``loss.png``.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import from_dict, load_toml, to_dict
from ..errors import InputError
from ..operators.base import LinearOperator
from ..progress import Callback, emit
from ..recon.unrolled import (
    MODEL_KIND,
    TRAIN_KIND,
    UnrollConfig,
    UnrolledRecon,
    estimate_lipschitz,
    model_state,
)
from .augment import AugmentConfig, apply_affine, random_affine, random_crop
from .datasets import Example, list_subjects, load_example
from .losses import TISSUE_WEIGHTS, tissue_l1
from .steps import amp, gleam_backward, pretrain_backward, unrolled_backward

__all__ = [
    "STAGES",
    "FinetuneConfig",
    "GleamConfig",
    "PretrainConfig",
    "Trainer",
    "gleam_backward",
    "load_stage_config",
    "pretrain_backward",
    "run_stage",
    "unrolled_backward",
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
        bfloat16 autocast inside the UNets (whitening, DC and losses stay float32).
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
    """Read the stage's frozen config from a TOML file (top-level table, or ``[<stage>]``)."""
    if stage not in STAGES:
        raise InputError(f"unknown training stage {stage!r}: choose {', '.join(STAGES)}")
    import tomllib

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text()) if p.exists() else None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        data = None
    table = stage if isinstance(data, dict) and isinstance(data.get(stage), dict) else None
    return load_toml(STAGES[stage], p, table=table)


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
class Trainer:
    """Runs one stage: data, optimiser, scheduler, validation, checkpoints and curves.

    Parameters
    ----------
    stage : {"pretrain", "gleam", "finetune"}
    cfg : PretrainConfig, GleamConfig or FinetuneConfig
    train, val : list of Example
        Prepared subjects (the unrolled stages need ``dc[cfg.duration]``).
    callback : Callback, optional
        ``emit(callback, "train", step, total, loss=...)`` after every optimiser step.
    """

    def __init__(
        self,
        stage: str,
        cfg: _Common,
        train: list[Example],
        val: list[Example],
        *,
        callback: Callback | None = None,
    ) -> None:
        if not train:
            raise InputError(f"{cfg.data_dir}: no prepared training subjects in train/")
        self.stage, self.cfg, self.train_set, self.val_set = stage, cfg, train, val
        self.callback = callback
        self.device = torch.device(cfg.device)
        self.out = Path(cfg.out_dir)
        basis0 = train[0].basis
        for ex in train + val:
            if tuple(ex.basis.shape) != tuple(basis0.shape):
                raise InputError(
                    f"{ex.path or ex.name}: basis {tuple(ex.basis.shape)} differs "
                    f"from {tuple(basis0.shape)}"
                )
        if basis0.shape[1] != cfg.model.network.basis:
            raise InputError(
                f"{cfg.data_dir}: data have {basis0.shape[1]} coefficients, the "
                f"model {cfg.model.network.basis}"
            )
        torch.manual_seed(cfg.seed)
        self.model = UnrolledRecon(cfg.model).to(self.device)
        if cfg.init:
            self._init_from(Path(cfg.init))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        self.np_rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.step = 0
        self.best = math.inf
        self.history: list[dict[str, float]] = []
        self._ops: dict[str, tuple[LinearOperator, float]] = {}

    # -- set-up --------------------------------------------------------------------------------
    def _init_from(self, path: Path) -> None:
        """Start from another stage's weights (shared → per-step copies when not sharing)."""
        from ..recon.unrolled import load_model

        src, meta = load_model(path)
        state = src.state_dict()
        # a pretrained model trained only its first (shared) denoiser
        n_src = 1 if meta["stage"] == "pretrain" else len(src.denoisers)
        own = self.model.state_dict()
        new = {}
        for key in own:
            if key.startswith("denoisers."):
                _, idx, rest = key.split(".", 2)
                cand = f"denoisers.{int(idx) if int(idx) < n_src else 0}.{rest}"
                if cand not in state or state[cand].shape != own[key].shape:
                    raise InputError(
                        f"{path}: its network does not match this stage's config ({key})"
                    )
                new[key] = state[cand]
            elif key == "log_mu":
                m = state["log_mu"]
                new[key] = m[: own[key].numel()] if m.numel() >= own[key].numel() else own[key]
        self.model.load_state_dict(new)

    def _operator(self, ex: Example) -> tuple[LinearOperator, float]:
        """The subject's DC operator and ``L``, built once.

        ``L`` is estimated exactly as at inference (:func:`estimate_lipschitz` from ``A^H b`` with
        the model's ``power_iters``), so that the learned steps ``μ_i = exp(ρ_i)/L`` mean the same
        thing in training and in use.
        """
        key = str(ex.path or ex.name)
        if key not in self._ops:
            dc = ex.dc[self.cfg.duration]
            op = dc.build_operator(self.device)
            lip = estimate_lipschitz(op, dc.ahb.to(self.device), iters=self.cfg.model.power_iters)
            self._ops[key] = (op, lip)
        return self._ops[key]

    @property
    def steps_per_epoch(self) -> int:
        cfg = self.cfg
        if isinstance(cfg, PretrainConfig):
            if cfg.steps_per_epoch > 0:
                return cfg.steps_per_epoch
            return max(1, len(self.train_set) * len(cfg.inputs) // cfg.batch_size)
        assert isinstance(cfg, GleamConfig | FinetuneConfig)
        return max(1, math.ceil(len(self.train_set) / cfg.accumulation))

    # -- epochs ---------------------------------------------------------------------------------
    def _pretrain_epoch(self) -> float:
        cfg = self.cfg
        assert isinstance(cfg, PretrainConfig)
        losses = []
        total = cfg.epochs * self.steps_per_epoch
        for _ in range(self.steps_per_epoch):
            ins, tgs, tis, idx = [], [], [], []
            for _b in range(cfg.batch_size):
                ex = self.train_set[int(self.np_rng.integers(len(self.train_set)))]
                k = int(self.np_rng.integers(len(cfg.inputs)))
                name = cfg.inputs[k]
                name = f"adjoint-{cfg.duration}" if name == "adjoint" else name
                index = cfg.indices[k] or int(
                    self.np_rng.integers(cfg.target_index[0], cfg.target_index[1] + 1)
                )
                vols, lab = [ex.input(name), ex.target], ex.tissue
                if cfg.augment.enabled:
                    vols, moved = apply_affine(vols, lab, random_affine(cfg.augment, self.np_rng))
                    assert moved is not None
                    lab = moved
                nx, ny, nz = (int(s) for s in lab.shape)
                sl = random_crop((nx, ny, nz), cfg.crop, self.np_rng)
                ins.append(vols[0][(slice(None), *sl)])
                tgs.append(vols[1][(slice(None), *sl)])
                tis.append(lab[sl])
                idx.append(index)
            self.opt.zero_grad(set_to_none=True)
            loss = pretrain_backward(
                self.model,
                torch.stack(ins).to(self.device),
                torch.stack(tgs).to(self.device),
                torch.stack(tis).to(self.device),
                torch.tensor(idx, dtype=torch.float32),
                weights=cfg.tissue_weights,
                bf16=cfg.bf16,
            )
            self.opt.step()
            self.step += 1
            losses.append(loss)
            emit(
                self.callback,
                "train",
                self.step,
                total,
                f"pretrain epoch {self.epoch + 1}",
                loss=loss,
            )
        return float(np.mean(losses))

    def _unrolled_epoch(self) -> float:
        cfg = self.cfg
        assert isinstance(cfg, GleamConfig | FinetuneConfig)
        order = self.np_rng.permutation(len(self.train_set))
        total = cfg.epochs * self.steps_per_epoch
        losses: list[float] = []
        acc: list[float] = []
        self.opt.zero_grad(set_to_none=True)
        for j, k in enumerate(order):
            ex = self.train_set[int(k)]
            dc = ex.dc[cfg.duration]
            op, lip = self._operator(ex)
            data = (
                dc.ahb.to(self.device),
                dc.x0.to(self.device),
                ex.target.to(self.device),
                ex.tissue.to(self.device),
            )
            n_in_step = min(
                cfg.accumulation, len(order) - (j // cfg.accumulation) * cfg.accumulation
            )
            sc = 1.0 / n_in_step
            if isinstance(cfg, GleamConfig):
                loss = gleam_backward(self.model, op, *data, lip, cfg, scale=sc, generator=self.gen)
            else:
                loss = unrolled_backward(
                    self.model, op, *data, lip, cfg, scale=sc, generator=self.gen
                )
            acc.append(loss)
            if len(acc) == n_in_step:
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                losses.append(float(np.mean(acc)))
                emit(
                    self.callback,
                    "train",
                    self.step,
                    total,
                    f"{self.stage} epoch {self.epoch + 1}",
                    loss=losses[-1],
                )
                acc = []
        return float(np.mean(losses))

    @torch.no_grad()
    def validate(self) -> float:
        """Mean validation loss (NaN without validation subjects)."""
        cfg = self.cfg
        if not self.val_set:
            return math.nan
        self.model.eval()
        vals = []
        try:
            for ex in self.val_set:
                tgt, tis = ex.target.to(self.device), ex.tissue.to(self.device)
                if isinstance(cfg, PretrainConfig):
                    for name, index in zip(cfg.inputs, cfg.indices, strict=True):
                        name = f"adjoint-{cfg.duration}" if name == "adjoint" else name
                        i = index or (cfg.target_index[0] + cfg.target_index[1]) // 2
                        with amp(cfg.bf16, self.device):
                            out = self.model.denoiser(0)(ex.input(name).to(self.device), i)
                        vals.append(float(tissue_l1(out, tgt, tis, cfg.tissue_weights)))
                else:
                    dc = ex.dc[cfg.duration]
                    op, lip = self._operator(ex)
                    with amp(cfg.bf16, self.device):
                        out = self.model(
                            op, dc.ahb.to(self.device), dc.x0.to(self.device), lipschitz=lip
                        )
                    assert isinstance(out, torch.Tensor)
                    vals.append(float(tissue_l1(out, tgt, tis, cfg.tissue_weights)))
        finally:
            self.model.train()
        return float(np.mean(vals))

    # -- checkpoints ------------------------------------------------------------------------------
    def _extra(self) -> dict[str, Any]:
        extra = {
            "stage": self.stage,
            "duration": self.cfg.duration,
            "train_config": to_dict(self.cfg),
            "epoch": self.epoch,
            "step": self.step,
        }
        # the data-consistency operator the model learned with (inference rebuilds the same one)
        dc = self.train_set[0].dc.get(self.cfg.duration)
        if dc is not None and dc.operator.get("type") == "gridded-subspace":
            extra["encoding"] = dict(dc.operator.get("encoding", {"density_compensation": 0.0}))
        return extra

    def state(self) -> dict[str, Any]:
        """A resumable checkpoint (kind ``spurig-train``)."""
        ex = self.train_set[0]
        extra = self._extra()
        extra.update(
            {
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "best": self.best,
                "history": list(self.history),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": self.np_rng.bit_generator.state,
                    "python": random.getstate(),
                    "generator": self.gen.get_state(),
                    "numpy_global": np.random.get_state(),  # noqa: NPY002 (restored for exactness)
                },
            }
        )
        return model_state(
            self.model, sequence=ex.sequence, basis=ex.basis, kind=TRAIN_KIND, extra=extra
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (written by the same stage and config)."""
        if state.get("stage") != self.stage:
            raise InputError(f"cannot resume: checkpoint is from stage {state.get('stage')!r}")
        saved = dict(state.get("train_config") or {})
        now = to_dict(self.cfg)
        saved.pop("epochs", None)
        now.pop("epochs", None)  # a resumed run may be given more epochs
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise InputError(
                f"cannot resume: the checkpoint was written with another config "
                f"({', '.join(diff)} differ)"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best = float(state["best"])
        self.history = list(state["history"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.np_rng.bit_generator.state = rng["numpy"]
        random.setstate(rng["python"])
        self.gen.set_state(rng["generator"])
        np.random.set_state(rng["numpy_global"])  # noqa: NPY002

    def _write_curves(self, *, plot: bool = True) -> None:
        """``loss.csv`` after every epoch; ``loss.png`` when ``plot`` (at the end of the run)."""
        from ..io import atomic_path

        keys = ["epoch", "step", "train_loss", "val_loss", "lr", "time_s"]
        with atomic_path(self.out / "loss.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in self.history:
                w.writerow({k: row.get(k) for k in keys})
        if plot:
            title = f"{self.stage} ({self.cfg.duration})"
            _plot_curves(self.history, self.out / "loss.png", title=title)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train until ``cfg.epochs``; returns the path of the best model file."""
        from ..io import save_checkpoint

        self.out.mkdir(parents=True, exist_ok=True)
        model_path = self.out / "model.pt"
        ex = self.train_set[0]
        while self.epoch < self.cfg.epochs:
            t0 = time.perf_counter()
            self.model.train()
            if isinstance(self.cfg, PretrainConfig):
                train_loss = self._pretrain_epoch()
            else:
                train_loss = self._unrolled_epoch()
            val = self.validate()
            metric = train_loss if math.isnan(val) else val
            self.sched.step(metric)
            self.epoch += 1
            self.history.append(
                {
                    "epoch": self.epoch,
                    "step": self.step,
                    "train_loss": train_loss,
                    "val_loss": val,
                    "lr": self.opt.param_groups[0]["lr"],
                    "time_s": time.perf_counter() - t0,
                }
            )
            if metric < self.best or not model_path.exists():
                self.best = min(self.best, metric)
                save_checkpoint(
                    model_state(
                        self.model,
                        sequence=ex.sequence,
                        basis=ex.basis,
                        kind=MODEL_KIND,
                        extra=self._extra(),
                    ),
                    model_path,
                )
            save_checkpoint(self.state(), self.out / "last.pt")
            self._write_curves(plot=self.epoch == self.cfg.epochs)
        return model_path


def _plot_curves(history: list[dict[str, float]], path: Path, *, title: str) -> None:
    """Loss curves to a PNG (matplotlib imported here, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    if any(not math.isnan(h["val_loss"]) for h in history):
        ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run_stage(
    stage: str, config_path: str | Path, *, resume: bool = False, callback: Callback | None = None
) -> Path:
    """``spurig train --stage STAGE --config CFG.toml [--resume]``.

    Parameters
    ----------
    stage : {"pretrain", "gleam", "finetune"}
    config_path : path-like
        TOML with the stage's fields at top level (or under ``[<stage>]``).
    resume : bool
        Continue from ``<out_dir>/last.pt`` (exactly: same next batch and loss).
    callback : Callback, optional
        Progress per optimiser step (``stage="train"``, ``loss`` metric); may raise ``Cancelled``
        (the last completed epoch's checkpoint stays valid).

    Returns
    -------
    Path
        ``<out_dir>/model.pt``, the best model (kind ``spurig-model``).
    """
    from ..io import load_checkpoint

    cfg = load_stage_config(stage, config_path)
    data = Path(cfg.data_dir)
    if not data.is_absolute():
        data = Path(config_path).parent / data
    out = Path(cfg.out_dir)
    if not out.is_absolute():
        out = Path(config_path).parent / out
    init = cfg.init
    if init and not Path(init).is_absolute():
        init = str(Path(config_path).parent / init)
    cfg = from_dict(
        type(cfg), {**to_dict(cfg), "data_dir": str(data), "out_dir": str(out), "init": init}
    )
    durs = () if stage == "pretrain" else (cfg.duration,)
    train_dirs = list_subjects(data, "train")
    val_dirs = list_subjects(data, "val")
    if cfg.max_train:
        train_dirs = train_dirs[: cfg.max_train]
    if cfg.max_val:
        val_dirs = val_dirs[: cfg.max_val]
    train = [load_example(d, durations=durs) for d in train_dirs]
    val = [load_example(d, durations=durs) for d in val_dirs]
    trainer = Trainer(stage, cfg, train, val, callback=callback)
    if resume:
        last = out / "last.pt"
        if not last.exists():
            raise InputError(f"{last}: nothing to resume from")
        trainer.restore(load_checkpoint(last))
    return trainer.fit()
