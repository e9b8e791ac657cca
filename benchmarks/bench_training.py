"""Peak memory and time of one training step of each SPUR-iG stage (paper 2.3.2, appendix A).

Each configuration runs in a fresh Python subprocess so that the peak resident set size (CPU) is
that of one step alone; on CUDA the peak is ``torch.cuda.max_memory_allocated``.  ``tracemalloc``
does not see torch's allocations, hence RSS.

Stages measured on one volume of ``N³`` voxels (batch 1, ``k = 5``):

* ``pretrain``   — one denoiser forward/backward (full volume; no unrolling);
* ``gleam``      — ``steps`` unroll iterations, graph detached after each (appendix A.3);
* ``finetune``   — full unrolled backprop with gradient checkpointing (appendix A.4);
* ``naive``      — full unrolled backprop keeping the whole graph (what the paper avoids).

The data-consistency operator is a masked-FFT subspace encoding with ``coils`` coils on the
``×1.5`` grid (the shape of the gridded gram of SPUR-iG); the real gridded encoding has the same
memory profile per gram.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_training.py --n 48 --width 16 --steps 6
    .venv/bin/python benchmarks/bench_training.py --n 96 --width 32 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from spurig_core.memory import peak_rss_mb, rss_mb
from spurig_core.operators.base import LinearOperator


class FFTSubspaceGram(LinearOperator):
    """``A^H A`` of a masked FFT subspace encoding on an oversampled grid (benchmark stand-in)."""

    def __init__(self, n: int, coils: int, k: int, device: torch.device, seed: int = 0) -> None:
        super().__init__((k, n, n, n), None, name="FFTSubspaceGram")
        g = torch.Generator().manual_seed(seed)
        self.n, self.grid = n, round(1.5 * n) + round(1.5 * n) % 2
        ax = torch.linspace(-1, 1, n)
        xx, yy, zz = torch.meshgrid(ax, ax, ax, indexing="ij")
        self.maps = (
            torch.stack(
                [
                    torch.exp(-((xx - 0.5 * torch.cos(torch.tensor(c * 1.0))) ** 2 + yy**2) / 2)
                    * torch.exp(1j * c * zz)
                    for c in range(coils)
                ]
            )
            .to(torch.complex64)
            .to(device)
        )
        # per-location k×k Hermitian PSD subspace kernels on the grid, as in the gridded gram
        r = (
            torch.randn(k, 2, self.grid, self.grid, self.grid, generator=g, dtype=torch.complex64)
            * 0.3
        )
        self.kernel = torch.einsum("aixyz,bixyz->abxyz", r, r.conj()).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # not needed for training
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        n, gsz = self.n, self.grid
        out = torch.zeros_like(x)
        for c in range(self.maps.shape[0]):
            img = torch.zeros((x.shape[0], gsz, gsz, gsz), dtype=x.dtype, device=x.device)
            img = torch.nn.functional.pad(self.maps[c] * x, [0, gsz - n] * 3)
            ks = torch.fft.fftn(img, dim=(-3, -2, -1))
            ks = torch.einsum("abxyz,bxyz->axyz", self.kernel, ks)
            back = torch.fft.ifftn(ks, dim=(-3, -2, -1))[:, :n, :n, :n]
            out = out + self.maps[c].conj() * back
        return out


def _child(args: argparse.Namespace) -> dict[str, float]:
    from spurig_core.recon.networks import UNetConfig
    from spurig_core.recon.unrolled import UnrollConfig, UnrolledRecon
    from spurig_core.training.stages import (
        FinetuneConfig,
        GleamConfig,
        gleam_backward,
        pretrain_backward,
        unrolled_backward,
    )

    torch.manual_seed(0)
    dev = torch.device(args.device)
    n, k = args.n, 5
    cfg = UnrollConfig(steps=args.steps, network=UNetConfig(base_width=args.width))
    model = UnrolledRecon(cfg).to(dev)
    g = torch.Generator().manual_seed(1)
    target = torch.randn(k, n, n, n, dtype=torch.complex64, generator=g).to(dev)
    tissue = torch.randint(0, 5, (n, n, n), generator=g).to(torch.uint8).to(dev)
    op = FFTSubspaceGram(n, args.coils, k, dev) if args.stage != "pretrain" else None
    ahb = target + 0.3 * torch.randn(target.shape, dtype=torch.complex64, generator=g).to(dev)
    common = dict(data_dir="", out_dir="", model=cfg, bf16=args.bf16, ssim_slices=min(30, n))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = rss_mb()
    t0 = time.perf_counter()
    if args.stage == "pretrain":
        pretrain_backward(
            model, ahb[None], target[None], tissue[None], torch.tensor([2.0]), bf16=args.bf16
        )
    elif args.stage == "gleam":
        gleam_backward(
            model,
            op,
            ahb,
            ahb,
            target,
            tissue,
            1.0,
            GleamConfig(**common),
            generator=torch.Generator().manual_seed(0),
        )
    else:
        fc = FinetuneConfig(**common, checkpointing=args.stage == "finetune")
        unrolled_backward(
            model, op, ahb, ahb, target, tissue, 1.0, fc, generator=torch.Generator().manual_seed(0)
        )
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = peak_rss_mb()
    out = {"step_s": dt, "peak_rss_mb": peak, "step_extra_mb": peak - base}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=48, help="volume side in voxels")
    p.add_argument("--width", type=int, default=16, help="UNet base width")
    p.add_argument("--steps", type=int, default=6, help="unroll steps")
    p.add_argument("--coils", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--stage", choices=["pretrain", "gleam", "finetune", "naive"])
    p.add_argument("--stages", default="pretrain,gleam,finetune,naive")
    p.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
    args = p.parse_args()
    if args.stage:
        print(json.dumps(_child(args)))
        return
    rows = []
    for stage in args.stages.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--stage",
            stage,
            "--n",
            str(args.n),
            "--width",
            str(args.width),
            "--steps",
            str(args.steps),
            "--coils",
            str(args.coils),
            "--device",
            args.device,
        ] + (["--bf16"] if args.bf16 else [])
        # A fixed mmap threshold makes glibc return every freed tensor to the OS at once, so
        # that the RSS high-water mark is the live memory (the default dynamic threshold keeps
        # freed blocks of up to 32 MiB in the heap and inflates the peak).
        env = {
            **os.environ,
            "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072"),
        }
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            raise SystemExit(f"{stage} failed")
        row = {
            "stage": stage,
            "n": args.n,
            "width": args.width,
            "steps": args.steps,
            "device": args.device,
            "bf16": args.bf16,
            **json.loads(res.stdout.splitlines()[-1]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    keys = ["stage", "n", "width", "steps", "bf16", "step_s", "peak_rss_mb", "step_extra_mb"]
    if args.device.startswith("cuda"):
        keys.append("cuda_peak_mb")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
            + " |"
        )


if __name__ == "__main__":
    main()
