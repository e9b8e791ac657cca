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
(model, optimiser, scheduler, epoch/step/samples seen, the data generators and the
torch/numpy/python RNG states), the best model so far ``model.pt`` (kind ``spurig-model``, read by
:func:`spurig_core.recon.unrolled_io.load_model`), and the loss curves ``loss.csv``, ``steps.csv``
and ``loss.png`` (:mod:`.records`).  Under ``torchrun`` the same run is shared by several processes
(:mod:`.distributed`): same batches, gradients summed, rank 0 writes; a checkpoint resumes with
any number of processes.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..config import from_dict, to_dict
from ..errors import InputError
from ..operators.base import LinearOperator
from ..progress import Callback, emit
from ..recon.unrolled import MODEL_KIND, TRAIN_KIND, UnrolledRecon
from ..recon.unrolled_io import model_state
from .augment import apply_affine, random_affine, random_crop
from .configs import (
    STAGES,
    FinetuneConfig,
    GleamConfig,
    PretrainConfig,
    _Common,
    load_stage_config,
)
from .datasets import Example, list_subjects, load_example
from .distributed import Context, process_group, read_config, reduce_gradients
from .losses import tissue_l1
from .records import EPOCH_COLUMNS, STEP_COLUMNS, plot_curves, rng_state, set_rng_state, write_csv
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
        ``emit(callback, "train", step, total, loss=...)`` after every optimiser step (rank 0).
    dist : Context, optional
        This process's place in a distributed run (:mod:`.distributed`; default: alone).
    """

    def __init__(
        self,
        stage: str,
        cfg: _Common,
        train: list[Example],
        val: list[Example],
        *,
        callback: Callback | None = None,
        dist: Context | None = None,
    ) -> None:
        if not train:
            raise InputError(f"{cfg.data_dir}: no prepared training subjects in train/")
        self.stage, self.cfg, self.train_set, self.val_set = stage, cfg, train, val
        self.callback = callback
        self.dist = dist or Context()
        self.device = self.dist.device(cfg.device)
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
        self.dist.broadcast_module(self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        self.np_rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.step = 0
        self.samples = 0  # training samples seen, over all processes
        self.saved_epoch = 0  # epoch of the last checkpoint written by this run
        self.best = math.inf
        self.history: list[dict[str, float]] = []
        self.steps_log: list[dict[str, float]] = []
        self._ops: dict[str, tuple[LinearOperator, float]] = {}

    # -- set-up --------------------------------------------------------------------------------
    def _init_from(self, path: Path, new_steps: str = "repeat") -> None:
        """Start from another stage's weights (shared → per-step copies when not sharing).

        A longer unroll than the file's continues it, so that its first steps are the file's
        model: its later steps take the file's last step size (``log_mu``) and last denoiser
        (``new_steps = "repeat"``), or that denoiser with its output layer zeroed, i.e. starting
        as the identity (``"identity"``; a denoiser per step only).  A file of a narrower
        network (this config's ``base_width`` a multiple of its own) is widened first, computing
        the same function (:func:`~spurig_core.recon.widen.widen_unet`).
        """
        from ..recon.unrolled_io import load_model

        src, meta = load_model(path)
        _widen_to(src, self.model.cfg.network.base_width, path)
        state = src.state_dict()
        # a pretrained model trained only its first (shared) denoiser
        n_src = 1 if meta["stage"] == "pretrain" else len(src.denoisers)
        own = self.model.state_dict()
        new = {}
        for key in own:
            if key.startswith("denoisers."):
                _, idx, rest = key.split(".", 2)
                cand = f"denoisers.{min(int(idx), n_src - 1)}.{rest}"
                if cand not in state or state[cand].shape != own[key].shape:
                    raise InputError(
                        f"{path}: its network does not match this stage's config ({key})"
                    )
                fresh = int(idx) >= src.cfg.steps and meta["stage"] != "pretrain"
                if fresh and new_steps == "identity" and rest.startswith("unet.out."):
                    new[key] = torch.zeros_like(state[cand])  # the identity (residual UNet)
                else:
                    new[key] = state[cand]
            elif key in ("log_mu", "log_lam"):  # log_lam: CG-DC models only
                m = state.get(key)
                n = own[key].numel()
                if m is None or m.numel() == 0:
                    new[key] = own[key]
                elif m.numel() >= n:
                    new[key] = m[:n]
                else:  # more steps than the file: repeat its last step's value
                    new[key] = torch.cat([m, m[-1:].expand(n - m.numel())])
        self.model.load_state_dict(new)

    def _operator(self, ex: Example) -> tuple[LinearOperator, float]:
        """Return the subject's DC operator and ``L``, built once.

        ``L`` is computed exactly as at inference (:meth:`DCData.step_size`), so that the learned
        steps ``μ_i = exp(ρ_i)/L`` mean the same thing in training and in use.
        """
        key = str(ex.path or ex.name)
        if key not in self._ops:
            dc = ex.dc[self.cfg.duration]
            op = dc.build_operator(self.device)
            lip = dc.step_size(op, self.cfg.model.power_iters, self.device)
            self._ops[key] = (op, lip)
        return self._ops[key]

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (pretrain: set, or batches; else subjects/accumulation)."""
        cfg = self.cfg
        if isinstance(cfg, PretrainConfig):
            if cfg.steps_per_epoch > 0:
                return cfg.steps_per_epoch
            return max(1, len(self.train_set) * len(cfg.inputs) // cfg.batch_size)
        assert isinstance(cfg, GleamConfig | FinetuneConfig)
        return max(1, math.ceil(len(self.train_set) / cfg.accumulation))

    # -- epochs ---------------------------------------------------------------------------------
    def _draw_pretrain(self) -> tuple[Example, str, int, Any, tuple[slice, ...]]:
        """One pretraining sample's random choices (every process draws every sample)."""
        cfg = self.cfg
        assert isinstance(cfg, PretrainConfig)
        ex = self.train_set[int(self.np_rng.integers(len(self.train_set)))]
        k = int(self.np_rng.integers(len(cfg.inputs)))
        name = cfg.inputs[k]
        name = f"adjoint-{cfg.duration}" if name == "adjoint" else name
        index = cfg.indices[k] or int(
            self.np_rng.integers(cfg.target_index[0], cfg.target_index[1] + 1)
        )
        affine = random_affine(cfg.augment, self.np_rng) if cfg.augment.enabled else None
        nx, ny, nz = (int(n) for n in ex.tissue.shape)
        return ex, name, index, affine, random_crop((nx, ny, nz), cfg.crop, self.np_rng)

    @staticmethod
    def _make_sample(
        draw: tuple[Example, str, int, Any, tuple[slice, ...]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Input crop, target crop, tissue crop and pseudo index of a drawn sample."""
        ex, name, index, affine, sl = draw
        vols, lab = [ex.input(name), ex.target], ex.tissue
        if affine is not None:
            vols, moved = apply_affine(vols, lab, affine)
            assert moved is not None
            lab = moved
        return vols[0][(slice(None), *sl)], vols[1][(slice(None), *sl)], lab[sl], index

    def _optimiser_step(self, loss_part: float, n_samples: int, total: int) -> float:
        """Sum gradients and losses over the processes, step, log; the global mean loss."""
        reduce_gradients(self.model.parameters(), self.dist)
        (loss_sum,) = self.dist.sum([loss_part])
        self.opt.step()
        self.step += 1
        self.samples += n_samples
        loss = loss_sum / n_samples
        lr = self.opt.param_groups[0]["lr"]
        self.steps_log.append(
            {"step": self.step, "samples": self.samples, "epoch": self.epoch + 1, "loss": loss}
            | {"lr": lr}
        )
        if self.dist.is_main:
            msg = f"{self.stage} epoch {self.epoch + 1}"
            emit(self.callback, "train", self.step, total, msg, loss=loss)
        return loss

    def _pretrain_epoch(self) -> float:
        """One epoch of stage 1: process ``r`` computes crops ``r, r + W, …`` of each batch."""
        cfg = self.cfg
        assert isinstance(cfg, PretrainConfig)
        losses = []
        total = cfg.epochs * self.steps_per_epoch
        for _ in range(self.steps_per_epoch):
            draws = [self._draw_pretrain() for _ in range(cfg.batch_size)]
            mine = [self._make_sample(draws[i]) for i in self.dist.shard(cfg.batch_size)]
            self.opt.zero_grad(set_to_none=True)
            part = 0.0
            if mine:
                ins, tgs, tis, idx = zip(*mine, strict=True)
                share = len(mine) / cfg.batch_size  # this process's part of the batch mean
                loss = pretrain_backward(
                    self.model,
                    torch.stack(ins).to(self.device),
                    torch.stack(tgs).to(self.device),
                    torch.stack(tis).to(self.device),
                    torch.tensor(idx, dtype=torch.float32),
                    weights=cfg.tissue_weights,
                    bf16=cfg.bf16,
                    scale=share,
                )
                part = loss * len(mine)
            losses.append(self._optimiser_step(part, cfg.batch_size, total))
        return float(np.mean(losses))

    def _unrolled_epoch(self) -> float:
        """Train one epoch of stage 2 or 3 and return its mean loss.

        Each optimiser step's ``accumulation`` subjects are shared out over the processes; each
        subject's MS-SSIM slices come from its own drawn seed.
        """
        cfg = self.cfg
        assert isinstance(cfg, GleamConfig | FinetuneConfig)
        order = self.np_rng.permutation(len(self.train_set))
        total = cfg.epochs * self.steps_per_epoch
        losses: list[float] = []
        for start in range(0, len(order), cfg.accumulation):
            group = order[start : start + cfg.accumulation]
            seeds = self.np_rng.integers(0, 2**62, size=len(group))
            self.opt.zero_grad(set_to_none=True)
            part = 0.0
            for j in self.dist.shard(len(group)):
                ex = self.train_set[int(group[j])]
                dc = ex.dc[cfg.duration]
                op, lip = self._operator(ex)
                data = (
                    dc.ahb.to(self.device),
                    dc.x0.to(self.device),
                    ex.target.to(self.device),
                    ex.tissue.to(self.device),
                )
                self.gen.manual_seed(int(seeds[j]))
                backward = gleam_backward if isinstance(cfg, GleamConfig) else unrolled_backward
                part += backward(
                    self.model,
                    op,
                    *data,
                    lip,
                    cfg,  # type: ignore[arg-type]
                    scale=1.0 / len(group),
                    generator=self.gen,
                )
            losses.append(self._optimiser_step(part, len(group), total))
        return float(np.mean(losses))

    @torch.no_grad()
    def validate(self) -> float:
        """Return the mean validation loss (NaN without validation subjects).

        The processes share the subjects and sum their losses.
        """
        cfg = self.cfg
        if not self.val_set:
            return math.nan
        self.model.eval()
        vals = []
        try:
            for k in self.dist.shard(len(self.val_set)):
                ex = self.val_set[k]
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
        total, count = self.dist.sum([math.fsum(vals), len(vals)])
        return total / count

    # -- checkpoints ------------------------------------------------------------------------------
    def _extra(self) -> dict[str, Any]:
        extra = {
            "stage": self.stage,
            "duration": self.cfg.duration,
            "train_config": to_dict(self.cfg),
            "epoch": self.epoch,
            "step": self.step,
            "samples": self.samples,
            "world_size": self.dist.world_size,  # a record only: resuming ignores it
        }
        # the data-consistency operator the model learned with (inference rebuilds the same one)
        dc = self.train_set[0].dc.get(self.cfg.duration)
        if dc is not None and dc.operator.get("type") == "gridded-subspace":
            extra["encoding"] = dict(dc.operator.get("encoding", {"density_compensation": 0.0}))
        return extra

    def state(self) -> dict[str, Any]:
        """Return a resumable checkpoint (kind ``spurig-train``)."""
        ex = self.train_set[0]
        extra = self._extra()
        extra.update(
            {
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "best": self.best,
                "history": list(self.history),
                "steps": list(self.steps_log),
                "rng": rng_state(self.np_rng, self.gen),
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
        self.samples = int(state.get("samples", 0))
        self.saved_epoch = self.epoch
        self.best = float(state["best"])
        self.history = list(state["history"])
        self.steps_log = list(state.get("steps", []))
        set_rng_state(state["rng"], self.np_rng, self.gen)

    def _write_curves(self, *, plot: bool = True) -> None:
        """``loss.csv`` and ``steps.csv`` after every epoch; ``loss.png`` when ``plot``."""
        write_csv(self.out / "loss.csv", self.history, EPOCH_COLUMNS)
        write_csv(self.out / "steps.csv", self.steps_log, STEP_COLUMNS)
        if plot:
            title = f"{self.stage} ({self.cfg.duration})"
            plot_curves(self.history, self.out / "loss.png", title=title)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train until ``cfg.epochs``; returns the path of the best model file.

        Only rank 0 writes (``model.pt`` when the metric improved, ``last.pt`` and the curves, each
        atomically, after every epoch); the processes meet at a barrier before returning.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        model_path = self.out / "model.pt"
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
                    "samples": self.samples,
                }
            )
            improved = metric < self.best or not model_path.exists()
            self.best = min(self.best, metric)
            if self.dist.is_main:
                self._save(model_path if improved else None)
            self.saved_epoch = self.epoch
        self.dist.barrier()
        return model_path

    def _save(self, model_path: Path | None) -> None:
        """Write the best model (when given), ``last.pt`` and the curves."""
        from ..io import save_checkpoint

        ex = self.train_set[0]
        if model_path is not None:
            state = model_state(
                self.model,
                sequence=ex.sequence,
                basis=ex.basis,
                kind=MODEL_KIND,
                extra=self._extra(),
            )
            save_checkpoint(state, model_path)
        save_checkpoint(self.state(), self.out / "last.pt")
        self._write_curves(plot=self.epoch == self.cfg.epochs)


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
    dcfg = read_config(config_path)
    last = out / "last.pt"
    if resume and not last.exists():
        raise InputError(f"{last}: nothing to resume from")
    train = [load_example(d, durations=durs) for d in train_dirs]
    val = [load_example(d, durations=durs) for d in val_dirs]
    run: list[Trainer] = []

    def status() -> str:
        epoch = run[0].saved_epoch if run else 0
        if epoch and last.exists():
            return f"the last checkpoint {last} (epoch {epoch}) is intact; continue with --resume"
        return f"no epoch finished in this run; {last} is as before"

    with process_group(dcfg, device=cfg.device, status=status) as ctx:
        run.append(Trainer(stage, cfg, train, val, callback=callback, dist=ctx))
        if resume:
            run[0].restore(load_checkpoint(last))
        return run[0].fit()


def _widen_to(model: UnrolledRecon, width: int, path: Path) -> None:
    """Widen ``model``'s denoisers in place to ``base_width = width`` (no-op when equal).

    Raises InputError unless ``width`` is a multiple (≥ 2) of the file's width.
    """
    from ..recon.networks import Denoiser
    from ..recon.widen import widen_unet

    have = model.cfg.network.base_width
    if width == have:
        return
    if width % have or width < have:
        raise InputError(
            f"{path}: its network has base_width {have}; this config's {width} must equal it "
            f"or be a multiple of it (a wider network starts as the file's, widened)"
        )
    for i, module in enumerate(model.denoisers):
        den = cast(Denoiser, module)
        den.unet = widen_unet(den.unet, width // have, seed=i)
        den.cfg = den.unet.cfg
    model.cfg = replace(model.cfg, network=cast(Denoiser, model.denoisers[0]).cfg)
