"""Copy trained models into ``spurig_core/models/`` and write their model cards (issue 5).

For every ``(method, duration)`` whose final stage finished under ``--runs`` (default
``runs/cpu48dc``; configs from ``--configs``, default ``configs/cpu48dc``), the fine-tuned
``model.pt`` becomes
``src/spurig_core/models/<method>-<duration>.pt``, and ``<method>-<duration>.md`` states what
made it: the three stage configs (TOML as used), the data, the epochs/steps, best validation loss
and wall time of each stage (from ``loss.csv``), the data-consistency operator it learned with,
and the measured metrics of that model and of the baselines on the held-out test subjects
(``--eval``: the ``evaluations.json`` that ``tools/evaluate_models.py`` writes).  The loss curves
are copied beside the card (``<method>-<duration>-<stage>.png``) so the card can show them.
The card states the file's size and sha256 (:func:`sha_line`); spurig reports the sha256 when it
loads a model and refuses a file that differs from its card.

Run::

    .venv/bin/python tools/ship_models.py --eval data/eval48/report/evaluations.json

``--refresh-sha`` only rewrites the sha256 line of the cards already in ``models/`` (after a
model file was replaced by hand, or for cards written before the line existed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np

from spurig_core.io import atomic_path, file_sha256, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "src" / "spurig_core" / "models"
CONFIGS = ROOT / "configs" / "cpu48dc"

#: (method, duration) -> the runs (under --runs, configs under --configs) that made the model, in
#: order: pretraining, GLEAM (possibly continued in a second run), fine-tuning
CHAINS = {
    ("spurig", "2min"): (
        "pretrain",
        "gleam-2min",
        "longer/gleam30-2min",
        "longer/finetune30-2min",
    ),
    ("spurig", "1min"): ("pretrain", "gleam-1min", "finetune-1min"),
    ("spurig", "30s"): ("pretrain", "gleam-30s", "finetune-30s"),
    ("hybrid", "2min"): ("pretrain-hybrid", "gleam-hybrid-2min", "finetune-hybrid-2min"),
}
LABELS = {"spurig": "SPUR-iG", "hybrid": "hybrid 2D/3D", "llr": "LLR", "adjoint": "A^H b"}


#: How the card line that states the file's sha256 starts (:func:`sha_line`).
SHA_PREFIX = "- File: `"


def sha_line(model: Path, name: str | None = None) -> str:
    """Return the card line with the model file's size and sha256 (read back by spurig on load)."""
    return (
        f"{SHA_PREFIX}{name or model.name}`, {model.stat().st_size} bytes, "
        f"sha256 `{file_sha256(model)}`."
    )


def refresh_sha(card_path: Path, model: Path) -> bool:
    """Put :func:`sha_line` of ``model`` into the card (after its first paragraph if absent).

    Returns whether the card changed.
    """
    text = card_path.read_text()
    line = sha_line(model)
    lines = text.split("\n")
    old = [i for i, ln in enumerate(lines) if ln.startswith(SHA_PREFIX)]
    if old:
        lines[old[0]] = line
    else:
        at = next((i for i, ln in enumerate(lines) if ln.startswith("Written ")), 1)
        lines[at + 1 : at + 1] = ["", line]
    new = "\n".join(lines)
    if new == text:
        return False
    with atomic_path(card_path) as tmp:
        Path(tmp).write_text(new)
    return True


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _stage_summary(run: Path) -> dict[str, float]:
    rows = list(csv.DictReader(open(run / "loss.csv")))
    val = [float(r["val_loss"]) for r in rows if r["val_loss"] not in ("", "nan")]
    return {
        "epochs": len(rows),
        "steps": int(rows[-1]["step"]) if rows else 0,
        "best_val": min(val) if val else float("nan"),
        "final_train": float(rows[-1]["train_loss"]) if rows else float("nan"),
        "minutes": sum(float(r["time_s"]) for r in rows) / 60,
    }


def _stage_label(names: tuple[str, ...], i: int) -> str:
    """``pretrain`` / ``GLEAM`` / ``GLEAM (continued)`` / ``fine-tune`` for run ``names[i]``."""
    base = names[i].rsplit("/", 1)[-1]
    if base.startswith("pretrain"):
        return "pretrain"
    if base.startswith("finetune"):
        return "fine-tune"
    earlier = [n for n in names[:i] if "gleam" in n.rsplit("/", 1)[-1]]
    return "GLEAM (continued)" if earlier else "GLEAM"


def _png(method: str, duration: str, name: str) -> str:
    """File name of a stage's loss curve beside the card."""
    return f"{method}-{duration}-{name.replace('/', '-')}.png"


def _metrics(evals: list[dict], label: str, duration: str) -> dict[str, float] | None:
    sel = [
        e for e in evals if (e.get("label") or e["method"]) == label and e["duration"] == duration
    ]
    if not sel:
        return None
    out = {
        "subjects": len(sel),
        "psnr": float(np.mean([np.mean(e["psnr"]) for e in sel])),
        "ssim": float(np.mean([np.mean(e["ssim"]) for e in sel])),
    }
    for key in ("t1_rel_error", "t2_rel_error"):
        if all(key in e for e in sel):
            out[key] = float(np.mean([e[key] for e in sel]))
    return out


def metric_rows(evals: list[dict], duration: str, labels: dict[str, str]) -> list[str]:
    """Return the card's metrics table: one row per ``labels`` entry found in ``evals``.

    ``labels`` maps a label of ``evaluations.json`` to the text of its row, in row order.
    """
    rows = [
        "| method | subjects | mean PSNR c1–c5 (dB) | mean SSIM | T1 rel. error (GM+WM) | "
        "T2 rel. error (GM+WM) |",
        "|---|---|---|---|---|---|",
    ]
    for m, text in labels.items():
        got = _metrics(evals, m, duration)
        if got is None:
            continue
        t1 = f"{100 * got['t1_rel_error']:.1f} %" if "t1_rel_error" in got else "–"
        t2 = f"{100 * got['t2_rel_error']:.1f} %" if "t2_rel_error" in got else "–"
        rows.append(
            f"| {text} | {got['subjects']} | {got['psnr']:.2f} | {got['ssim']:.3f} | {t1} | {t2} |"
        )
    return rows


def card(method: str, duration: str, runs: Path, evals: list[dict], configs: Path = CONFIGS) -> str:
    names = CHAINS[(method, duration)]
    final = load_checkpoint(runs / names[-1] / "model.pt")
    net = final["config"]["network"] if isinstance(final.get("config"), dict) else {}
    lines = [
        f"# {LABELS[method]} model for the {duration} scan (`{method}-{duration}.pt`)",
        "",
        f"Written {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC by `tools/ship_models.py` from "
        f"`{runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs}`.",
        "",
        sha_line(runs / names[-1] / "model.pt", f"{method}-{duration}.pt"),
        "",
        "## Network and data consistency",
        f"- {'3D' if net.get('dim', 3) == 3 else '2D slice-wise (axial)'} FiLM-conditioned "
        f"SE-ResUNet, base width {net.get('base_width')}, conditioned: {net.get('conditioned')}; "
        f"{final['config'].get('steps')} unrolled steps, shared weights: "
        f"{final['config'].get('share_weights')}.",
        f"- Data term: iGROG-gridded subspace encoding, "
        f"{json.dumps(final.get('encoding', {'density_compensation': 0.0}))} "
        "(inference rebuilds the same operator from this record).",
        "",
        "## Domain",
        "- Matrix 48³, voxel 4.58 mm isotropic (220 mm FOV), 10 coils, the duration above, data "
        "term as recorded above; `spurig recon` warns in one line for a scan outside it "
        "(another matrix, voxel size or duration; `recon.domain.check_domain`).",
        "",
        "## Data",
        "- 48³ simulated subjects (ICBM152 anatomy, 10 coils, 16 groups = 2 min, noise 0.02):",
        "  `spurig simulate-cohort data/cohort48 --subjects 24 --split 18/2/4 --matrix 48 "
        "--groups 16 --seed 2000` — 18 train, 2 validation, 4 test subjects.",
        "- Training examples: `spurig prepare-training data/cohort48 data/prepared48 --splits "
        "train,val --config configs/cpu48/prepare.toml` (targets = reference coefficients; inputs "
        "s·A^H b and 40-iteration FISTA-LLR of 30 s, 1 min and 2 min, the LLR baseline as "
        "tuned), then the same cohort for the model's data term: `spurig prepare-training "
        "data/cohort48 data/prepared48dc --splits train,val --config "
        f"{_rel(configs)}/prepare.toml` "
        "(re-gridded, s·A^H b and the DC data at the density compensation above; the LLR inputs "
        "are reused).",
        "",
        "## Training (`tools/train_cpu48.sh`, 1 CPU thread per stage; a continued GLEAM run: "
        "`configs/cpu48dc/longer/`)",
        "| stage | config | epochs | optimiser steps | best validation loss | last train loss "
        "| minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    total_min = 0.0
    for i, name in enumerate(names):
        s = _stage_summary(runs / name)
        stage = _stage_label(names, i)
        total_min += s["minutes"]
        lines.append(
            f"| {stage} | `{_rel(configs)}/{name}.toml` | {s['epochs']} | {s['steps']} | "
            f"{s['best_val']:.4f} | {s['final_train']:.4f} | {s['minutes']:.1f} |"
        )
    lines += ["", "## Measured on the held-out test subjects (`tools/evaluate_models.py`)", ""]
    rows = metric_rows(evals, duration, {m: LABELS.get(m, m) for m in (method, "llr", "adjoint")})
    lines += rows if len(rows) > 2 else ["Not evaluated yet."]
    mine, llr = _metrics(evals, method, duration), _metrics(evals, "llr", duration)
    if mine is not None and llr is not None:
        gap = mine["psnr"] - llr["psnr"]
        verdict = f"**Status: {abs(gap):.1f} dB mean PSNR {'above' if gap >= 0 else 'below'} LLR.**"
        if gap < 1.5:
            verdict += (
                " This CPU-scale model does not reach the paper's result (issue #5 asks for "
                f"≥ 1.5 dB above LLR at 2 min): its training took {total_min:.0f} CPU-minutes "
                "(one thread), the paper's training 8 GPU-days; it ships so that the SPUR-iG path "
                "(demo, plugin, CLI) runs end to end, and will be replaced by longer-trained "
                "weights."
            )
        lines += ["", verdict]
    lines += [
        "",
        "PSNR/SSIM: magnitudes of the balanced coefficients over the axial brain slices (SPEC §5); "
        "T1/T2: B1-corrected dictionary matching, mean relative error over GM and WM.",
        "",
        "## Loss curves",
    ]
    for name in names:
        lines.append(f"![{name}]({_png(method, duration, name)})")
    lines += ["", "## Configs", ""]
    for name in names:
        lines += [
            f"### `{_rel(configs)}/{name}.toml`",
            "```toml",
            _config_text(configs / f"{name}.toml"),
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"


def _config_text(path: Path) -> str:
    """Return a config's text; for one with a ``base`` chain, the resolved values follow it."""
    import tomli_w

    from spurig_core.config import read_toml

    text = path.read_text().rstrip()
    if "base" not in tomllib.loads(text):
        return text
    resolved = tomli_w.dumps(read_toml(path)).rstrip()
    return f"{text}\n\n# resolved (the base chain merged, as training reads it):\n{resolved}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "cpu48dc"))
    p.add_argument("--configs", default=str(CONFIGS))
    p.add_argument("--eval", default="")
    p.add_argument("--refresh-sha", action="store_true", help="only update the cards' sha256")
    args = p.parse_args()
    if args.refresh_sha:
        for model in sorted(MODELS.glob("*.pt")):
            card_path = model.with_suffix(".md")
            if card_path.exists():
                changed = refresh_sha(card_path, model)
                print(f"{card_path.name}: {'updated' if changed else 'unchanged'}")
        return 0
    runs = Path(args.runs).resolve()
    evals = json.loads(Path(args.eval).read_text()) if args.eval else []
    shipped = []
    for (method, duration), names in CHAINS.items():
        final = runs / names[-1]
        if not (final / "model.pt").exists() or not all(
            (runs / n / "loss.csv").exists() for n in names
        ):
            print(f"skip {method}-{duration}: {final}/model.pt not there yet")
            continue
        dest = MODELS / f"{method}-{duration}.pt"
        with atomic_path(dest) as tmp:
            shutil.copyfile(final / "model.pt", tmp)
        for n in names:
            if (runs / n / "loss.png").exists():
                shutil.copyfile(runs / n / "loss.png", MODELS / _png(method, duration, n))
        with atomic_path(dest.with_suffix(".md")) as tmp:
            Path(tmp).write_text(card(method, duration, runs, evals, Path(args.configs).resolve()))
        shipped.append(dest.name)
        print(f"shipped {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return 0 if shipped else 1


if __name__ == "__main__":
    raise SystemExit(main())
