"""The v2 training recipe (issue 13): train what the metric measures, on re-drawn noise.

One resumable run replaces the three stages of :mod:`.stages` for the unrolled models; it keeps
their model file format (:func:`~spurig_core.recon.unrolled_io.model_state`, stage ``"recipe"``), so
``spurig recon --model`` and :func:`~spurig_core.recon.unrolled_io.load_model` read its models.

Phases, one counter of optimiser updates ``u`` (full 48³ volumes, batch 1):

1. **Cached unroll states** (``u < pretrain_updates + gleam_updates``).  Every training subject's
   DC half-states ``α_{1−½} … α_{N−½}`` are computed without a graph from a fresh noise
   realisation (:mod:`.redraw`: clean ``A^H b`` plus one of the gridded k-space noise draws) and
   cached; each update trains the shared denoiser on one cached state ``(subject, i)`` against
   the target.  Every ``refresh_every`` updates the cache is recomputed with new draws — with the
   identity denoiser while ``u < pretrain_updates`` (pretraining on the DC-only states
   ``x_1 … x_N``, the inputs the unroll actually sees), with the current network afterwards
   (GLEAM with stale inputs: a denoiser update costs a denoiser pass, not a whole unroll).
2. **End-to-end fine-tuning** (``finetune_updates``): the whole unroll with gradient
   checkpointing on a fresh draw, loss on the output only; the DC parameters (``μ_i``, ``λ_i``)
   are trained here.

Loss (:func:`~.losses.recipe_loss`): tissue-weighted L1 of the real and imaginary parts (uniform
weights by default; the paper's ``1, 1, 10, 10, 1`` is the option ``tissue_weights``) plus
``magnitude_weight`` times the L1 of the magnitudes, which PSNR/SSIM count, and optionally
``fingerprint_weight`` times the GM/WM coefficient-direction term that the T1/T2 errors count.
Every ``val_every`` updates the whole unroll runs on the validation subjects' own scans;
``model.pt`` is the one with the best score (:mod:`.validation`: mean PSNR c1–c5, or with
``val_scans`` the image, T1 and T2 errors together), ``last.pt`` resumes the run exactly from
there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import from_dict, read_toml, to_dict
from ..errors import InputError
from ..operators.igrog import data_fields
from ..recon.classical import norm_matching_scale
from ..recon.unrolled import MODEL_KIND, TRAIN_KIND, UnrolledRecon
from ..recon.unrolled_io import model_state
from .augment import cube_symmetry
from .configs import RecipeConfig
from .datasets import Example, list_subjects, load_example
from .losses import recipe_loss
from .maps_loss import MapsTargets, MatchedMapsLoss
from .records import rng_state, set_rng_state, write_csv
from .redraw import NoiseDraws, load_noise
from .steps import amp
from .validation import (
    MapsReference,
    load_maps_reference,
    mean_metrics,
    selection_score,
    val_metrics,
)

__all__ = ["RecipeConfig", "RecipeTrainer", "load_recipe_config", "run_recipe"]

HISTORY_COLUMNS = (
    "update",
    "phase",
    "train_loss",
    "val_psnr",
    "val_t1",
    "val_t2",
    "val_score",
    "lr",
    "time_s",
)


@dataclass(eq=False)
class _Subject:
    """One subject's data; its operator is built when needed and released after a refresh.

    The gridded operator (coil maps and per-grid-point kernels) is the largest part of a subject
    in memory (≈ 0.3 GB with it at 48³, so 48 subjects of two runs did not fit 24 GB); the
    cached updates need only the states.
    """

    ex: Example
    noise: NoiseDraws
    duration: str
    lip: float
    maps: MapsTargets | None = None
    states: list[torch.Tensor] = field(default_factory=list)
    _op: Any = None

    @property
    def op(self) -> Any:
        """The subject's data-consistency operator (built on first use)."""
        if self._op is None:
            self._op = self.ex.dc[self.duration].build_operator()
        return self._op

    def release(self) -> None:
        """Drop the operator (rebuilt on the next use)."""
        self._op = None


class RecipeTrainer:
    """The run: data, model, optimiser, cache, validation and checkpoints.

    Parameters
    ----------
    cfg : RecipeConfig
        With absolute ``data_dir``/``out_dir``/``init``.
    """

    def __init__(self, cfg: RecipeConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.data = Path(cfg.data_dir)
        self.maps_loss: MatchedMapsLoss | None = None  # built with the first subject
        tr = list_subjects(self.data, "train")[: cfg.max_train or None]
        va = list_subjects(self.data, "val")[: cfg.max_val or None]
        if not tr:
            raise InputError(f"{self.data}: no prepared training subjects in train/")
        self.train = [self._subject(d) for d in tr]
        for s in self.train:
            s.release()
        if cfg.select != "psnr" and not va:
            raise InputError(
                f"select = {cfg.select!r} needs validation subjects in {self.data}/val"
            )
        # kept: every validation needs them
        self.val = [self._subject(d, training=False) for d in va]
        self.val_refs = (
            [load_maps_reference(cfg.val_scans, s.ex.name) for s in self.val]
            if cfg.val_scans and self.val
            else None
        )
        self.cursor = 0  # the next subject of the rolling refresh
        torch.manual_seed(cfg.seed)
        self.model = UnrolledRecon(cfg.model)
        if cfg.init:
            from .stages import Trainer

            Trainer._init_from(self, Path(cfg.init), cfg.new_steps)  # type: ignore[arg-type]
        self.opt = torch.optim.Adam(self.model.denoisers.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.update = 0
        self.best = -math.inf  # selection score of model.pt (cfg.select)
        self.base: dict[str, float] = {}  # validation metrics at update 0 (DC only or init)
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.ft_opt: torch.optim.Adam | None = None

    def _subject(self, d: Path, *, training: bool = True) -> _Subject:
        ex = load_example(d, durations=[self.cfg.duration])
        dc = ex.dc[self.cfg.duration]
        op = dc.build_operator()
        lip = dc.step_size(op, self.cfg.model.power_iters)  # as inference has it
        noise = load_noise(d, self.cfg.duration)
        maps = self._maps_targets(ex) if training else None
        return _Subject(ex, noise, self.cfg.duration, lip, maps, _op=op)

    def _maps_targets(self, ex: Example) -> MapsTargets | None:
        """Return a training subject's reference maps for the maps term (``None``: no term)."""
        cfg = self.cfg
        if not any(cfg.maps_weights):
            return None
        if self.maps_loss is None:
            self.maps_loss = MatchedMapsLoss(
                ex.basis,
                ex.sequence,
                atoms=cfg.maps_atoms,
                sharpness=cfg.maps_sharpness,
                boundary_weight=cfg.maps_boundary_weight,
                edge_weight=cfg.maps_edge_weight,
            )
        ref = load_maps_reference(cfg.train_scans, ex.name)
        r = ref.reference
        return self.maps_loss.targets(ex.target, ex.tissue, r.t1_ms, r.t2_ms, ref.b1)

    def _loss(
        self,
        out: torch.Tensor,
        target: torch.Tensor,
        tissue: torch.Tensor,
        maps: MapsTargets | None,
    ) -> torch.Tensor:
        """:func:`~.losses.recipe_loss` plus the weighted soft-matched T1/T2 errors."""
        cfg = self.cfg
        loss = recipe_loss(
            out,
            target,
            tissue,
            cfg.tissue_weights,
            cfg.magnitude_weight,
            cfg.fingerprint_weight,
            cfg.fingerprint_tissues,
            cfg.edge_weight,
        )
        if self.maps_loss is not None and maps is not None:
            e1, e2 = self.maps_loss(out, maps)
            loss = loss + cfg.maps_weights[0] * e1 + cfg.maps_weights[1] * e2
        return loss

    # -- data ---------------------------------------------------------------------------------
    def _draw(self, s: _Subject) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A^H b, x0)`` of a fresh noise realisation (or the scan's own)."""
        k = int(self.rng.integers(s.noise.draws.shape[0])) if self.cfg.fresh_noise else 0
        ahb = s.noise.ahb(k)
        scale = norm_matching_scale(s.op, ahb, float(s.noise.b_norms[k]))
        return ahb, ahb * scale

    def discover(self) -> list[_Subject]:
        """Load the training subjects prepared since the run started; return them."""
        known = {s.ex.name for s in self.train}
        room = (self.cfg.max_train or 1 << 30) - len(self.train)
        new = [d for d in list_subjects(self.data, "train") if d.name not in known][: max(room, 0)]
        added = [self._subject(d) for d in new]
        for s in added:
            s.release()
        self.train.extend(added)
        return added

    def rolling(self) -> list[_Subject]:
        """Return the next ``refresh_subjects`` subjects in turn and all subjects without states."""
        n = self.cfg.refresh_subjects or len(self.train)
        picked = [
            self.train[(self.cursor + k) % len(self.train)] for k in range(min(n, len(self.train)))
        ]
        self.cursor = (self.cursor + n) % len(self.train)
        return picked + [s for s in self.train if not s.states and s not in picked]

    @torch.no_grad()
    def refresh(self, identity: bool, subjects: list[_Subject] | None = None) -> None:
        """Recompute the cached DC half-states of ``subjects`` (default: every training subject)."""
        self.model.eval()
        for s in self.train if subjects is None else subjects:
            ahb, a = self._draw(s)
            s.states = []
            for i in range(self.cfg.model.steps):
                half = self.model.dc_half(s.op, ahb, a, i, s.lip)
                s.states.append(half)
                if identity:
                    a = half
                else:
                    with amp(self.cfg.bf16, half.device):
                        a = self.model.denoiser(i)(half, i + 1)
            s.release()
        self.model.train()

    # -- updates ------------------------------------------------------------------------------
    def _cached_update(self) -> float:
        cfg = self.cfg
        s = self.train[int(self.rng.integers(len(self.train)))]
        i = int(self.rng.integers(cfg.model.steps))
        x, tgt, tis, maps = s.states[i], s.ex.target, s.ex.tissue, s.maps
        if cfg.symmetries:
            perm = tuple(int(v) for v in self.rng.permutation(3))
            flips = tuple(int(a) for a in np.flatnonzero(self.rng.integers(0, 2, 3)))
            x, tgt, tis = (cube_symmetry(t, perm, flips) for t in (x, tgt, tis))
            if maps is not None:
                maps = maps.transformed(lambda t: cube_symmetry(t, perm, flips))
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr_at(self.update)
        self.opt.zero_grad(set_to_none=True)
        with amp(cfg.bf16, x.device):
            out = self.model.denoiser(i)(x, i + 1)
        loss = self._loss(out, tgt, tis, maps)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def _finetune_update(self) -> float:
        cfg = self.cfg
        if self.ft_opt is None:
            self.ft_opt = torch.optim.Adam(self.model.parameters(), lr=cfg.finetune_lr)
        s = self.train[int(self.rng.integers(len(self.train)))]
        ahb, x0 = self._draw(s)
        self.ft_opt.zero_grad(set_to_none=True)
        with amp(cfg.bf16, x0.device):
            out = self.model(s.op, ahb, x0, lipschitz=s.lip, mode="checkpoint")
        assert isinstance(out, torch.Tensor)
        loss = self._loss(out, s.ex.target, s.ex.tissue, s.maps)
        loss.backward()
        self.ft_opt.step()
        s.release()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Metrics of the whole unroll on the validation subjects' own scans (their means).

        ``{"psnr": dB}`` (mean PSNR c1–c5), plus ``"t1"``/``"t2"`` (GM+WM errors) with
        ``val_scans`` (:func:`.validation.val_metrics`).
        """
        subjects = self.val or self.train[:1]
        none: list[MapsReference | None] = [None] * len(subjects)
        refs = self.val_refs or none
        self.model.eval()
        rows = []
        for s, ref in zip(subjects, refs, strict=True):
            dc = s.ex.dc[self.cfg.duration]
            with amp(self.cfg.bf16, dc.ahb.device):
                out = self.model(s.op, dc.ahb, dc.x0, lipschitz=s.lip)
            assert isinstance(out, torch.Tensor)
            rows.append(val_metrics(out, s.ex, ref))
        self.model.train()
        return mean_metrics(rows)

    @staticmethod
    def _columns(m: dict[str, float]) -> dict[str, float]:
        """History columns of a validation's metrics."""
        return {f"val_{k}": v for k, v in m.items()}

    # -- checkpoints --------------------------------------------------------------------------
    def _extra(self) -> dict[str, Any]:
        dc = self.train[0].ex.dc[self.cfg.duration]
        enc = dict(dc.operator.get("encoding", {"density_compensation": 0.0}))
        domain: dict[str, Any] = {
            "matrix": [int(v) for v in self.train[0].ex.target.shape[1:]],
            "durations": [self.cfg.duration],
            "data_term": f"iGROG-gridded, density_compensation {enc.get('density_compensation')}",
        }
        if "coil_maps" in dc.operator:
            domain["coils"] = int(dc.operator["coil_maps"].shape[0])
        if self.train[0].noise.voxel_mm:
            domain["voxel_mm"] = list(self.train[0].noise.voxel_mm)
        grid = data_fields(self.train[0].noise.gridding or {})
        return {
            "domain": domain,
            **({"gridding": grid} if grid else {}),
            "stage": "recipe",
            "duration": self.cfg.duration,
            "train_config": to_dict(self.cfg),
            "update": self.update,
            "encoding": enc,
            "best_val_psnr": self.best_metrics.get("psnr", self.best),
            "best_val_metrics": dict(self.best_metrics),
            "select": self.cfg.select,
            "train_subjects": [s.ex.name for s in self.train],
        }

    def _save(self, improved: bool) -> None:
        from ..io import save_checkpoint

        ex = self.train[0].ex
        if improved:
            st = model_state(
                self.model,
                sequence=ex.sequence,
                basis=ex.basis,
                kind=MODEL_KIND,
                extra=self._extra(),
            )
            save_checkpoint(st, self.out / "model.pt")
        extra = {
            **self._extra(),
            "optimizer": self.opt.state_dict(),
            "ft_optimizer": self.ft_opt.state_dict() if self.ft_opt is not None else None,
            "best": self.best,
            "val_base": dict(self.base),
            "history": list(self.history),
            "rng": rng_state(self.rng, self.gen),
            "cursor": self.cursor,
        }
        st = model_state(
            self.model, sequence=ex.sequence, basis=ex.basis, kind=TRAIN_KIND, extra=extra
        )
        save_checkpoint(st, self.out / "last.pt")
        write_csv(self.out / "history.csv", self.history, HISTORY_COLUMNS)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``last.pt`` (the update counts may have been raised since)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if state.get("ft_optimizer") is not None:
            self.ft_opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.finetune_lr)
            self.ft_opt.load_state_dict(state["ft_optimizer"])
        self.update = int(state["update"])
        self.best = float(state["best"])
        self.history = list(state["history"])
        first = self.history[0] if self.history else {}
        self.base = dict(state.get("val_base") or {"psnr": float(first.get("val_psnr", 0.0))})
        self.best_metrics = dict(state.get("best_val_metrics") or {"psnr": self.best})
        set_rng_state(state["rng"], self.rng, self.gen)
        self.cursor = int(state.get("cursor", 0)) % len(self.train)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, log: Any = print) -> Path:
        """Run until ``cfg.total`` updates; returns ``model.pt`` (best validation PSNR)."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        cached_end = cfg.pretrain_updates + cfg.gleam_updates
        if self.update == 0:
            self.base = self.best_metrics = self.validate()
            self.best = selection_score(self.base, self.base, cfg.select)
            self.history.append(
                {
                    "update": 0,
                    "phase": "init" if cfg.init else "dc-only",
                    **self._columns(self.base),
                    "val_score": self.best,
                }
            )
            start = "the initial model" if cfg.init else "identity denoiser = DC only"
            log(f"update 0: validation {_describe(self.base)} ({start})")
            self._save(True)
        losses: list[float] = []
        t0 = time.perf_counter()
        stale = True
        while self.update < cfg.total:
            u = self.update
            # subjects prepared while the run goes on join at the refresh points, in every phase
            if u % cfg.refresh_every == 0 and (added := self.discover()):
                log(f"update {u}: {len(added)} new training subjects ({len(self.train)})")
            if u < cached_end:
                identity = u < cfg.pretrain_updates
                if stale or u == cfg.pretrain_updates:  # every subject: start, phase change
                    self.discover()
                    self.refresh(identity)
                    stale = False
                elif u % cfg.refresh_every == 0:
                    self.refresh(identity, self.rolling())
                losses.append(self._cached_update())
                phase = "pretrain" if u < cfg.pretrain_updates else "gleam"
            else:
                losses.append(self._finetune_update())
                phase = "finetune"
            self.update += 1
            if self.update % cfg.val_every == 0 or self.update == cfg.total:
                v = self.validate()
                score = selection_score(v, self.base, cfg.select)
                improved = score > self.best
                if improved:
                    self.best, self.best_metrics = score, v
                row = {
                    "update": self.update,
                    "phase": phase,
                    "train_loss": float(np.mean(losses)),
                    **self._columns(v),
                    "val_score": score,
                    "lr": cfg.lr_at(u) if phase != "finetune" else cfg.finetune_lr,
                    "time_s": time.perf_counter() - t0,
                }
                self.history.append(row)
                log(
                    f"update {self.update} ({phase}): loss {row['train_loss']:.4f}, "
                    f"validation {_describe(v)}{' (best)' if improved else ''}, "
                    f"{row['time_s']:.0f} s"
                )
                self._save(improved)
                losses, t0 = [], time.perf_counter()
        return self.out / "model.pt"


def _describe(m: dict[str, float]) -> str:
    """``PSNR 27.56 dB`` and, where measured, ``T1 10.5 %, T2 15.7 %``."""
    text = f"PSNR {m['psnr']:.2f} dB"
    if "t1" in m:
        text += f", T1 {100 * m['t1']:.1f} %, T2 {100 * m['t2']:.1f} %"
    return text


def load_recipe_config(path: str | Path) -> RecipeConfig:
    """Read a :class:`RecipeConfig` TOML; relative paths are relative to the file."""
    p = Path(path)
    cfg = from_dict(RecipeConfig, read_toml(p), where=f"config {p}", table="")
    fix: dict[str, Any] = {}
    for key in ("data_dir", "out_dir", "init", "val_scans", "train_scans"):
        v = getattr(cfg, key)
        if v and not Path(v).is_absolute():
            fix[key] = str(p.parent / v)
    return from_dict(RecipeConfig, {**to_dict(cfg), **fix}) if fix else cfg


def run_recipe(config: str | Path, *, resume: bool = False, log: Any = print) -> Path:
    """Train (or continue) the run of a recipe TOML; returns its ``model.pt``.

    Parameters
    ----------
    config : path-like
    resume : bool
        Continue from ``<out_dir>/last.pt`` when it exists (raising the update counts in the TOML
        extends a finished run).
    """
    from ..io import load_checkpoint

    cfg = load_recipe_config(config)
    last, model = Path(cfg.out_dir) / "last.pt", Path(cfg.out_dir) / "model.pt"
    state = load_checkpoint(last) if resume and last.exists() else None
    if state is not None and int(state["update"]) >= cfg.total and model.exists():
        # a finished run: nothing to load (a chain of runs resumes each in turn)
        log(f"finished at update {int(state['update'])} of {cfg.total}: {model}")
        return model
    trainer = RecipeTrainer(cfg)
    if state is not None:
        trainer.restore(state)
        log(f"resumed at update {trainer.update} (best {cfg.select}: {trainer.best:.4g})")
    return trainer.fit(log=log)


def main(argv: list[str] | None = None) -> int:
    """``python -m spurig_core.training.recipe CONFIG.toml [--resume]`` (exit 2 on bad input)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description="v2 training recipe (issue 13)")
    p.add_argument("config")
    p.add_argument("--resume", action="store_true", help="continue from last.pt when present")
    args = p.parse_args(argv)
    try:
        run_recipe(args.config, resume=args.resume, log=lambda m: print(m, flush=True))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
