r"""Ship a model of the v3 training recipe (issue 13) with its model card.

Copies ``RUN/model.pt`` (best validation PSNR) to ``src/spurig_core/models/<method>-<duration>.pt``
— adding the gridding settings of its training data when the run did not record them (runs
started before the record existed; read from a prepared subject's ``noise-<duration>.pt``) — draws
the validation curve beside it and writes ``<method>-<duration>.md``: the file's sha256 (spurig
refuses a shipped model that differs from its card), network, data term and gridding, domain, data,
the run's updates and validation PSNR, the measured metrics of the model and of every baseline on
the held-out test subjects (``--eval``: ``evaluations.json`` of ``tools/evaluate_models.py``), and
the config as trained.

Run::

    .venv/bin/python tools/ship_recipe.py runs/cpu48v3/recipe-2min \
        configs/cpu48v3/recipe-2min.toml \
        --eval data/eval48v2/report/evaluations.json
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from set_model_gridding import card_lines
from ship_models import MODELS, ROOT, metric_rows, sha_line

from spurig_core.durations import DURATIONS, groups_for
from spurig_core.errors import InputError
from spurig_core.io import atomic_path, file_sha256, load_checkpoint, save_checkpoint
from spurig_core.operators.igrog import data_fields
from spurig_core.recon.unrolled_io import truncate_unroll
from spurig_core.recon.weight_packing import pack_weights, shared_bases
from spurig_core.training.recipe import load_recipe_config
from spurig_core.training.redraw import load_noise
from spurig_core.training.validation import selection_score

#: Rows of the card's table: label in evaluations.json → what the reader sees.
ROWS = {
    "spurig": "**SPUR-iG (this model)**",
    "dc-only": "DC steps only (this model's data term, identity denoiser)",
    "hybrid": "hybrid 2D/3D (shipped)",
    "llr": "LLR (gridded, tuned)",
    "llr-nufft": "LLR-NUFFT",
    "adjoint": "A^H b",
}

#: The preparation config of each prepared-data folder the shipped runs read.
PREPARED_BY = {
    "prepared48v2": "configs/cpu48v2/prepare.toml",
    "prepared48v5": "configs/cpu48v5/prepare-1min.toml",
    "prepared48v6": "configs/cpu48v6/prepare-15s.toml",
    "prepared48v10": "configs/cpu48v10/prepare-30s.toml",
}


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def _plot(rows: list[dict[str, str]], dest: Path, start: str = "DC only") -> None:
    """Draw the validation PSNR per update and, where validated, the T1/T2 errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = [int(r["update"]) for r in rows]
    v = [float(r["val_psnr"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    ax.plot(u, v, marker="o", ms=3, label="PSNR c1–c5")
    ax.axhline(v[0], color="grey", ls="--", lw=1, label=f"{start} (update 0)")
    ax.set_xlabel("update")
    ax.set_ylabel("validation PSNR c1–c5 (dB)")
    handles, labels = ax.get_legend_handles_labels()
    if all(r.get("val_t1") for r in rows):
        ax2 = ax.twinx()
        for key, color in (("val_t1", "tab:red"), ("val_t2", "tab:green")):
            ax2.plot(
                u,
                [100 * float(r[key]) for r in rows],
                marker="s",
                ms=3,
                color=color,
                label=f"{key[4:].upper()} error (GM+WM)",
            )
        ax2.set_ylabel("relative error (%)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize=7, framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _steps_lines(rec: dict[str, Any] | None) -> list[str]:
    if not rec:
        return []
    per = ", ".join(f"{v:.2f}" for v in rec["val_psnr_per_step"])
    if rec.get("select", "psnr") == "psnr":
        return [
            f"- Trained as a {rec['trained']}-step unroll; this file keeps the first "
            f"{rec['kept']} steps, the number with the best mean validation PSNR (after each "
            f"step: {per} dB). Later steps lost PSNR: each block's DC steps (step sizes not "
            "trained in the cached phase) add back noise that the denoiser does not fully "
            "remove again.",
        ]
    t1 = ", ".join(f"{100 * v:.1f}" for v in rec["val_t1_per_step"])
    t2 = ", ".join(f"{100 * v:.1f}" for v in rec["val_t2_per_step"])
    return [
        f"- Trained as a {rec['trained']}-step unroll; this file keeps the first {rec['kept']} "
        f"steps, chosen on the validation subjects by the {rec['select']} rule "
        f"(`training/validation.py`). After each step: PSNR {per} dB, T1 error {t1} %, "
        f"T2 error {t2} % (GM+WM).",
    ]


def _val_text(row: dict[str, str]) -> str:
    text = f"PSNR {float(row['val_psnr']):.2f} dB"
    if row.get("val_t1"):
        text += f", T1 {100 * float(row['val_t1']):.1f} %, T2 {100 * float(row['val_t2']):.1f} %"
    return text


def _loss_text(cfg: Any) -> str:
    w = cfg.tissue_weights
    text = "uniform complex L1" if len(set(w)) == 1 else f"complex L1, tissue weights {list(w)}"
    text += f" + {cfg.magnitude_weight} × magnitude L1"
    if cfg.fingerprint_weight > 0:
        text += f" + {cfg.fingerprint_weight} × GM/WM fingerprint term"
    if any(cfg.maps_weights):
        w1, w2 = cfg.maps_weights
        text += (
            f" + {w1} × soft-matched T1 error + {w2} × soft-matched T2 error (GM/WM, "
            f"`training/maps_loss.py`, sharpness {cfg.maps_sharpness}"
            + (
                f", tissue-boundary voxels ×{cfg.maps_boundary_weight}"
                if cfg.maps_boundary_weight != 1.0
                else ""
            )
            + (f", edge term ×{cfg.maps_edge_weight}" if cfg.maps_edge_weight > 0 else "")
            + ")"
        )
    if cfg.edge_weight > 0:
        text += f" + {cfg.edge_weight} × GM/WM edge L1 (`losses.edge_l1`)"
    return text


def _abs(path: Path) -> Path:
    """``path`` made absolute without following links (``data/``, ``runs/`` may be links)."""
    return Path(os.path.normpath(path.absolute()))


def _rel(path: Path) -> Path:
    """``path`` relative to the repository when inside it."""
    path = _abs(path)
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _lineage(cfg: Any) -> list[str]:
    """One line per run this one continued (``init`` chains), back to a shipped file."""
    lines, init, seen = [], cfg.init, set()
    while init and init not in seen:
        seen.add(init)
        path = Path(init)
        if path.parent.name.startswith("shipped-"):  # a release's file, kept for the chain
            release = path.parent.name.removeprefix("shipped-")
            lines.append(f"  - from the shipped `{path.name}` of release {release}")
            break
        if path.resolve().parent == MODELS.resolve() or not path.exists():
            lines.append(f"  - from the shipped `{path.name}` of the release before this file's")
            break
        tc = load_checkpoint(path).get("train_config") or {}
        updates = [tc.get(k, 0) for k in ("pretrain_updates", "gleam_updates", "finetune_updates")]
        maps = tc.get("maps_weights") or [0.0, 0.0]
        lines.append(
            f"  - from `{path.parent.name}` ({updates[0]} pretraining, {updates[1]} GLEAM, "
            f"{updates[2]} end-to-end updates; "
            f"fingerprint weight {tc.get('fingerprint_weight', 0)}"
            + (f"; maps weights {list(maps)})" if any(maps) else ")")
        )
        init = tc.get("init", "")
    return ["- Continued:", *lines] if lines else []


def card(
    name: str,
    run: Path,
    config: Path,
    evals: list[dict[str, Any]],
    labels: dict[str, str],
    note: str = "",
) -> str:
    """Return the Markdown model card of the shipped file ``name``.

    ``note``: why a network trained at one duration is shipped for another (``--as-duration``).
    """
    cfg = load_recipe_config(config)
    state = load_checkpoint(MODELS / name)
    net = state["config"]["network"]
    dc_steps = state["config"].get("dc_steps", 1)
    dom = state.get("domain") or {}
    hist = _history(run)
    best = next((r for r in hist if int(r["update"]) == int(state.get("update", -1))), None)
    best = best or max(hist, key=lambda r: float(r["val_psnr"]))
    minutes = sum(float(r.get("time_s") or 0.0) for r in hist) / 60
    rel = _rel(run)
    duration = str(state.get("duration") or cfg.duration)
    lines = [
        f"# SPUR-iG model for the {duration} scan (`{name}`)",
        "",
        f"Written {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC by `tools/ship_recipe.py` from "
        f"`{rel}` (the training recipe of issue #13, `spurig_core.training.recipe`; "
        "the runs it continues are listed under Continued).",
        "",
        sha_line(MODELS / name, name),
        "",
        "## Network and data consistency",
        f"- 3D FiLM-conditioned SE-ResUNet, base width {net.get('base_width')}, "
        f"{state['config'].get('steps')} unrolled blocks of {dc_steps} gradient DC "
        f"step{'s' if dc_steps != 1 else ''}, shared weights: "
        f"{state['config'].get('share_weights')}.",
        *(
            [
                f"- Each denoiser's output is averaged over {net['flips']} axis flips of its input "
                f"(`UNetConfig.flips`: {net['flips']} UNet passes a step)."
            ]
            if int(net.get("flips", 1)) > 1
            else []
        ),
        f"- Data term: iGROG-gridded subspace encoding {json.dumps(state.get('encoding', {}))}.",
        *card_lines(
            state.get("gridding", {}),
            state.get("training_gridding", state.get("gridding", {})),
            str(state.get("gridding_note", "")),
        ),
        *_steps_lines(state.get("unroll_steps")),
        *(
            [f"- Weights stored in {state['weights_dtype']} (read back into float32)."]
            if state.get("weights_dtype")
            else []
        ),
        "",
        "## Domain",
        f"- Matrix {dom.get('matrix')}, voxel {dom.get('voxel_mm')} mm, durations "
        f"{dom.get('durations')}, {dom.get('coils')} coils, {dom.get('data_term')}. `spurig recon` "
        "warns in one line for a scan outside it.",
        "",
        "## Data",
        f"- {len(state.get('train_subjects') or [])} training subjects (48³, 10 coils, 16 groups, "
        "`spurig simulate --seed 2000+i`), validation subj018–019, test subj020–023; "
        "prepared with re-drawable k-space noise by `tools/prepare_redraw.py` into "
        f"`{_rel(Path(cfg.data_dir))}` "
        f"(`{PREPARED_BY.get(Path(cfg.data_dir).name, 'its config is not recorded')}`).",
        "",
        "## Training",
        f"- `{_rel(config)}`: "
        f"{cfg.pretrain_updates} pretraining updates on the DC-only states, {cfg.gleam_updates} "
        f"GLEAM updates on cached states (rolling refresh of {cfg.refresh_subjects} subjects every "
        f"{cfg.refresh_every}), {cfg.finetune_updates} end-to-end updates; learning rate {cfg.lr} "
        f"({cfg.lr_schedule}); loss: {_loss_text(cfg)}; checkpoint chosen by {cfg.select}.",
        *_lineage(cfg),
        f"- Ran {hist[-1]['update']} updates in {minutes:.0f} minutes (1 CPU thread, shared "
        f"machine); this file is update {best['update']}: validation {_val_text(best)} "
        f"(update 0, {'the initial model' if cfg.init else 'DC only'}: {_val_text(hist[0])}).",
        *(
            [f"- Shipped for {duration}, trained on the {cfg.duration} unroll states: {note}"]
            if note
            else []
        ),
        "",
        f"![validation PSNR]({Path(name).stem}-validation.png)",
        "",
        "## Measured on the held-out test subjects (`tools/evaluate_models.py`)",
        "",
    ]
    rows = metric_rows(evals, duration, labels)
    lines += rows if len(rows) > 2 else ["Not evaluated yet."]
    lines += [
        "",
        "PSNR/SSIM: magnitudes of the balanced coefficients over the axial brain slices (SPEC §5); "
        "T1/T2: B1-corrected dictionary matching, mean relative error over GM and WM.",
        "",
        *_config_lines(config, cfg),
    ]
    return "\n".join(lines) + "\n"


def _config_lines(config: Path, cfg: Any) -> list[str]:
    """Return the config as written and, when it names a ``base``, as the run resolved it."""
    import re

    import tomli_w

    from spurig_core.config import to_dict

    text = config.read_text().rstrip()
    lines = ["## Config", "```toml", text, "```"]
    if re.search(r"^base\s*=", text, re.M):
        d = to_dict(cfg)
        for key in ("data_dir", "out_dir", "init", "val_scans", "train_scans"):
            if d.get(key):
                d[key] = str(_rel(Path(d[key])))
        lines += [
            "",
            "Resolved (its `base` chain merged; paths relative to the repository):",
            "```toml",
            tomli_w.dumps(d).rstrip(),
            "```",
        ]
    return lines


def step_metrics(state: dict[str, Any], cfg: Any) -> list[dict[str, float]]:
    """Return the validation metrics of the unroll's output after each step (the val split).

    The unroll is a fixed iteration, so stopping it after ``K`` steps is a model of ``K`` steps
    with the same weights; ``K`` is chosen on the validation subjects, as the checkpoint is, by
    the run's ``select`` rule (mean PSNR c1–c5, or with ``val_scans`` also T1/T2 in GM+WM).
    """
    import tempfile

    import torch

    from spurig_core.recon.unrolled import estimate_lipschitz
    from spurig_core.recon.unrolled_io import load_model
    from spurig_core.training.datasets import list_subjects, load_example
    from spurig_core.training.steps import amp
    from spurig_core.training.validation import load_maps_reference, mean_metrics, val_metrics

    with tempfile.TemporaryDirectory() as td:  # load_model reads a file; never the data folder
        model, _ = load_model(save_checkpoint(state, Path(td) / "model.pt"))
    rows: list[list[dict[str, float]]] = [[] for _ in range(model.cfg.steps)]
    with torch.no_grad():
        for d in list_subjects(Path(cfg.data_dir), "val"):
            ex = load_example(d, durations=[cfg.duration])
            ref = load_maps_reference(cfg.val_scans, ex.name) if cfg.val_scans else None
            dc = ex.dc[cfg.duration]
            op = dc.build_operator()
            lip = estimate_lipschitz(op, dc.ahb, iters=model.cfg.power_iters)
            x = dc.x0
            for i in range(model.cfg.steps):
                half = model.dc_half(op, dc.ahb, x, i, lip)
                with amp(True, half.device):
                    x = model.denoiser(i)(half, i + 1)
                rows[i].append(val_metrics(x, ex, ref))
    return [mean_metrics(r) for r in rows]


def _start_metrics(run: Path) -> dict[str, float]:
    """Return the validation metrics of update 0 (DC only, or the initial model)."""
    first = _history(run)[0]
    return {
        k[4:]: float(v) for k, v in first.items() if k in ("val_psnr", "val_t1", "val_t2") and v
    }


def _pack(state: dict[str, Any], base_file: Path | None) -> None:
    """Store ``state``'s per-step denoisers as 4-bit differences (``--pack``), in place."""
    bases = None
    if base_file is not None:
        base = load_checkpoint(base_file)
        if not base.get("config", {}).get("share_weights", False) or base.get("packed"):
            raise InputError(f"{base_file}: --pack-base needs a file with one shared denoiser")
        bases = shared_bases(base["model"])
    plain, packed = pack_weights(state["model"], bases=bases)
    state.update(
        model=plain,
        packed=packed,
        weights_dtype="4-bit differences from a float16 base per weight (int4-delta/1, "
        f"{len(packed['tensors'])} tensors), the rest float16",
    )
    if base_file is not None:
        state["packed_base_sha256"] = file_sha256(base_file)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("config", type=Path)
    p.add_argument("--eval", default="")
    p.add_argument("--labels", default="", help="JSON {label in evaluations.json: row text}")
    p.add_argument(
        "--card-only", action="store_true", help="keep the shipped file, rewrite its card"
    )
    p.add_argument(
        "--select-steps",
        action="store_true",
        help="keep the first K unrolled steps, K of the best validation score (the run's select)",
    )
    p.add_argument(
        "--as-duration",
        default="",
        help="ship the network for another duration (its domain lists both; needs --note)",
    )
    p.add_argument("--note", default="", help="why (e.g. its validation figures there)")
    p.add_argument(
        "--half",
        action="store_true",
        help="store the weights in float16 (half the file; loaded back into float32)",
    )
    p.add_argument(
        "--pack",
        action="store_true",
        help="store the per-step denoisers as 4-bit differences from a shared float16 base "
        "(spurig_core.recon.weight_packing; the rest float16)",
    )
    p.add_argument(
        "--pack-base",
        type=Path,
        default=None,
        help="with --pack: a model file with one shared denoiser (the lineage's start) whose "
        "tensors are the bases (default: the mean over the steps)",
    )
    args = p.parse_args(argv)
    run, config = _abs(args.run), args.config.resolve()
    cfg = load_recipe_config(config)
    if args.as_duration:
        groups_for(args.as_duration)  # a named duration, else InputError
        if not args.note:
            raise InputError("--as-duration needs --note (why this network serves that duration)")
    name = f"spurig-{args.as_duration or cfg.duration}.pt"
    state = load_checkpoint(run / "model.pt")
    if args.card_only:
        pass
    else:
        if not state.get("gridding"):
            subj = sorted((Path(cfg.data_dir) / "train").iterdir())[0]
            state["gridding"] = data_fields(load_noise(subj, cfg.duration).gridding)
        # runs that recorded the prepared files' flag as given (load_noise now corrects it):
        # prepare_redraw trains the kernel without noise matching
        state["gridding"]["noise_matched"] = False
    if args.select_steps and not args.card_only:
        per_step = step_metrics(state, cfg)
        base = _start_metrics(run)
        scores = [selection_score(m, base, cfg.select) for m in per_step]
        best = max(range(len(per_step)), key=scores.__getitem__) + 1
        record: dict[str, Any] = {"select": cfg.select}
        for key in per_step[0]:
            record[f"val_{key}_per_step"] = [m[key] for m in per_step]
            print(f"validation {key} per step: " + ", ".join(f"{m[key]:.4g}" for m in per_step))
        state = truncate_unroll(state, best, record)
    if args.as_duration and not args.card_only:
        dom = dict(state.get("domain") or {})
        dom["durations"] = sorted({cfg.duration, args.as_duration}, key=lambda d: -DURATIONS[d])
        state.update(domain=dom, duration=args.as_duration, trained_duration=cfg.duration)
    if args.half and not args.card_only:
        w = state["model"]
        state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in w.items()}
        state["weights_dtype"] = "float16"
    if args.pack and not args.card_only:
        _pack(state, args.pack_base)
    if not args.card_only:
        save_checkpoint(state, MODELS / name)
    start = "initial model" if cfg.init else "DC only"
    _plot(_history(run), MODELS / f"{Path(name).stem}-validation.png", start)
    evals = json.loads(Path(args.eval).read_text()) if args.eval else []
    labels = json.loads(args.labels) if args.labels else ROWS
    with atomic_path(MODELS / f"{Path(name).stem}.md") as tmp:
        Path(tmp).write_text(card(name, run, config, evals, labels, args.note))
    print(f"shipped {MODELS / name} ({(MODELS / name).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
