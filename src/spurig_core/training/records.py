"""What a training run records: random states for exact resume, and its loss curves.

Everything here is plain data, because checkpoints load with ``weights_only=True``
(:func:`spurig_core.io.load_checkpoint`): random states are saved as lists and dicts of numbers and
strings, never as numpy objects.  The curves are written atomically (:func:`spurig_core.io.
atomic_path`), by one process only when training runs on several (:mod:`.distributed`).

Files written into the run's folder:

- ``loss.csv`` — one row per epoch: ``epoch, step, train_loss, val_loss, lr, time_s, samples``
  (``samples``: training samples seen so far, over all processes);
- ``steps.csv`` — one row per optimiser step: ``step, samples, epoch, loss, lr``; the curve to
  compare runs with different numbers of processes, sample for sample;
- ``loss.png`` — the epoch curves (at the end of the run).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "EPOCH_COLUMNS",
    "STEP_COLUMNS",
    "plot_curves",
    "rng_state",
    "set_rng_state",
    "write_csv",
]

#: Columns of ``loss.csv`` (one row per epoch).
EPOCH_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "lr", "time_s", "samples")
#: Columns of ``steps.csv`` (one row per optimiser step).
STEP_COLUMNS = ("step", "samples", "epoch", "loss", "lr")


def rng_state(np_rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    """Every random state a resumed run needs, as plain data (checkpoints load weights-only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    version, internal, gauss = random.getstate()
    legacy = [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    return {
        "torch": torch.get_rng_state(),
        "numpy": dict(np_rng.bit_generator.state),  # str / int entries only
        "python": [version, list(internal), gauss],
        "generator": gen.get_state(),
        "numpy_global": legacy,
    }


def set_rng_state(rng: dict[str, Any], np_rng: np.random.Generator, gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` recorded."""
    torch.set_rng_state(rng["torch"])
    np_rng.bit_generator.state = rng["numpy"]
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    gen.set_state(rng["generator"])
    name, keys, pos, has_gauss, cached = rng["numpy_global"]
    state = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, float(cached))
    np.random.set_state(state)  # noqa: NPY002 (restored for exactness)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` as CSV with ``columns`` (missing values empty), written atomically."""
    from ..io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k) for k in columns})
    return path


def plot_curves(history: Sequence[dict[str, float]], path: Path, *, title: str) -> Path:
    """Loss curves per epoch to a PNG (matplotlib imported here, Agg backend)."""
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
    return path
