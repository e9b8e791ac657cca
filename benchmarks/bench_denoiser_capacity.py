r"""Whether the denoiser can learn to remove what PSNR counts, and how fast that generalises (#5).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_denoiser_capacity.py PREPARED_DIR \
        [--init MODEL.pt] [--subjects 1] [--steps 100] [--lr 1e-3] [--fp32] \
        [--weights 1,1,10,10,1] [--val subj018] [--noise 1.0]

Trains the (shared) denoiser alone, full volumes, batch 1, Adam, on the scaled ``A^H b`` inputs
(index 1) of the first ``--subjects`` training subjects of ``PREPARED_DIR`` (``spurig
prepare-training``), all three durations in turn, against their target coefficients with the
tissue-weighted L1 (paper eq. 4; ``--weights`` per label 0 background, 1 CSF, 2 GM, 3 WM, 4 other).
Prints the mean L1 per voxel of each tissue class on the first training subject and on the
validation subject ``--val`` before training and after every 20 steps.  With ``--init`` the
network starts from a model's denoiser (e.g. the pretrained one), otherwise from a fresh
zero-head UNet (width 16).  ``--noise f`` adds, at every step, fresh white complex Gaussian noise
of ``f`` times the input's own background standard deviation (per coefficient) to the input, so
that the fixed noise of a subject cannot be memorised.  A scratch experiment for
benchmarks/RESULTS-models.md, not a training recipe.
"""

from __future__ import annotations

import argparse
import time

import torch

from spurig_core.durations import MODEL_DURATIONS as DURATIONS
from spurig_core.recon.networks import Denoiser, UNetConfig
from spurig_core.recon.unrolled_io import load_model
from spurig_core.training.datasets import Example, list_subjects, load_example
from spurig_core.training.losses import tissue_l1


def per_tissue(den: Denoiser, ex: Example) -> str:
    """Mean L1 per voxel of the denoised 2-min ``A^H b`` in tissue classes 0–4."""
    with torch.no_grad():
        out = den(ex.input("adjoint-2min"), 1)
    l1 = torch.view_as_real(out - ex.target).abs().sum(-1)
    t = ex.tissue.long()
    return " ".join(f"{float(l1[:, t == k].mean()):.4f}" for k in range(5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prepared")
    p.add_argument("--init", default="")
    p.add_argument("--subjects", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fp32", action="store_true")
    p.add_argument("--weights", default="1,1,10,10,1")
    p.add_argument("--val", default="subj018")
    p.add_argument("--noise", type=float, default=0.0)
    a = p.parse_args()
    torch.manual_seed(0)
    weights = tuple(float(w) for w in a.weights.split(","))
    if a.init:
        den = load_model(a.init)[0].denoiser(0)
    else:
        den = Denoiser(UNetConfig(base_width=16))
    den.train()
    train = [load_example(s) for s in list_subjects(a.prepared, "train")[: a.subjects]]
    val = load_example(f"{a.prepared}/val/{a.val}")
    opt = torch.optim.Adam(den.parameters(), lr=a.lr)
    print("L1 per voxel: background CSF GM WM other")
    print(f"step 0: train {per_tissue(den, train[0])} | val {per_tissue(den, val)}", flush=True)
    t0 = time.perf_counter()
    for step in range(a.steps):
        ex = train[step % len(train)]
        x = ex.input(f"adjoint-{DURATIONS[step % len(DURATIONS)]}")
        if a.noise > 0:
            sd = x[:, ex.tissue == 0].abs().pow(2).mean(-1).sqrt() / 2**0.5  # per coefficient
            x = x + a.noise * sd[:, None, None, None] * torch.randn_like(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not a.fp32):
            out = den(x, 1)
        loss = tissue_l1(out, ex.target, ex.tissue, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 20 == 0:
            print(
                f"step {step + 1}: train {per_tissue(den, train[0])} | val {per_tissue(den, val)}"
                f" | loss {float(loss.detach()):.4f}, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
