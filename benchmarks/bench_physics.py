"""Throughput of the EPG dictionary simulation and of dictionary matching (not a test).

Run from the repository root, e.g.::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_physics.py --atoms 20000 --matrix 64
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_physics.py --skip epg --build
    PYTHONPATH=/tmp/mrpro .venv/bin/python benchmarks/bench_physics.py --mrpro /tmp/mrpro

Prints Markdown lines for ``benchmarks/RESULTS-physics.md``.  The machines are shared: every line
gives wall and CPU time, and the 1-minute load average at its start.

* EPG throughput on a random subset of the default dictionary's atoms (float32, steady state,
  automatic number of states), with 1 and 2 torch threads; CUDA too when available.
* Optionally mrpro's EPG (``mrpro.operators.models.EPG``) side by side on the same atoms: one group
  from equilibrium, 20 states (mrpro's default), against :func:`spurig_core.physics.epg_group` with
  20 states, including their agreement.
* The full default dictionary (from the cache, or simulated anew with ``--build``), then matching
  a ``matrix³`` volume of noisy coefficient maps with a random B1 map against it: voxels/s and
  peak memory (RSS).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from spurig_core.data import FispSequence
from spurig_core.matching import MatchingConfig, match_maps
from spurig_core.memory import peak_rss_mb, rss_mb
from spurig_core.physics import (
    DictionaryGrid,
    balance_basis,
    balance_coefficients,
    build_dictionary,
    epg_group,
    load_dictionary,
    simulate_signals,
    unbalanced_basis,
)


def _load() -> float:
    return os.getloadavg()[0]


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    load = _load()
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t, time.process_time() - c, load


def bench_epg(n_atoms: int, seed: int) -> None:
    t1, t2, b1 = DictionaryGrid().atoms()
    sel = np.random.default_rng(seed).choice(t1.size, size=min(n_atoms, t1.size), replace=False)
    t1, t2, b1 = t1[sel], t2[sel], b1[sel]
    print(f"\n### EPG throughput ({t1.size} random atoms of the default grid, 500 TRs, float32)\n")
    print("| device | torch threads | wall s | CPU s | atoms/s (wall) | atoms/CPU-s | load |")
    print("|---|---|---|---|---|---|---|")
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        _, wall, cpu, load = _timed(simulate_signals, t1, t2, b1)
        print(
            f"| cpu | {threads} | {wall:.2f} | {cpu:.2f} | {t1.size / wall:.0f} | "
            f"{t1.size / cpu:.0f} | {load:.1f} |"
        )
    torch.set_num_threads(before)
    if torch.cuda.is_available():
        simulate_signals(t1[:100], t2[:100], b1[:100], device="cuda")
        torch.cuda.synchronize()
        _, wall, cpu, load = _timed(simulate_signals, t1, t2, b1, device="cuda")
        torch.cuda.synchronize()
        print(f"| cuda | - | {wall:.2f} | {cpu:.2f} | {t1.size / wall:.0f} | - | {load:.1f} |")


def _import_mrpro_epg(path: str) -> types.ModuleType:
    """Import mrpro's EPG module without running its package ``__init__`` (which needs ismrmrd…)."""
    root = Path(path) / "mrpro"
    sys.path.insert(0, str(path))
    for name, sub in (
        ("mrpro", ""),
        ("mrpro.data", "data"),
        ("mrpro.utils", "utils"),
        ("mrpro.operators", "operators"),
        ("mrpro.operators.models", "operators/models"),
    ):
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / sub)]
        sys.modules[name] = mod
    return importlib.import_module("mrpro.operators.models.EPG")


def bench_mrpro(path: str, n_atoms: int, seed: int) -> None:
    epg = _import_mrpro_epg(path)
    seq = FispSequence.default()
    rng = np.random.default_rng(seed)
    t1 = rng.uniform(300, 3000, n_atoms)
    t2 = t1 * rng.uniform(0.03, 0.3, n_atoms)
    b1 = rng.uniform(0.7, 1.3, n_atoms)
    states = 20
    fa = torch.as_tensor(np.deg2rad(seq.flip_angle_deg.astype(np.float64)), dtype=torch.float32)
    blocks = epg.EPGSequence(
        [
            epg.InversionBlock(seq.ti_ms / 1000),
            epg.FispBlock(fa, 0.0, seq.te_ms / 1000, seq.tr_ms / 1000),
            epg.DelayBlock(seq.rest_s),
        ]
    )
    params = epg.Parameters(
        m0=torch.ones(n_atoms, dtype=torch.complex64),
        t1=torch.as_tensor(t1 / 1000, dtype=torch.float32),
        t2=torch.as_tensor(t2 / 1000, dtype=torch.float32),
        relative_b1=torch.as_tensor(b1, dtype=torch.complex64),
    )
    print(
        f"\n### mrpro EPG side by side ({n_atoms} atoms, one group from equilibrium, "
        f"{states} states, float32/complex64, same process)\n"
    )
    print(
        "| implementation | torch threads | wall s | CPU s | atoms/s (wall) | atoms/CPU-s | load |"
    )
    print("|---|---|---|---|---|---|---|")
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        init = epg.initial_state((n_atoms,), n_states=states)
        (_, sig_m), wall, cpu, load = _timed(blocks, params, init)
        print(
            f"| mrpro {Path(path).name} | {threads} | {wall:.2f} | {cpu:.2f} | "
            f"{n_atoms / wall:.0f} | {n_atoms / cpu:.0f} | {load:.1f} |"
        )
        args = [torch.as_tensor(v, dtype=torch.float32) for v in (t1, t2, b1)]
        (sig_s, _), wall, cpu, load = _timed(
            epg_group, *args, torch.ones(n_atoms), seq, states=states
        )
        print(
            f"| spurig epg_group | {threads} | {wall:.2f} | {cpu:.2f} | {n_atoms / wall:.0f} "
            f"| {n_atoms / cpu:.0f} | {load:.1f} |"
        )
    torch.set_num_threads(before)
    mr = torch.stack(list(sig_m), dim=-1)
    ours = 1j * sig_s
    err = ((mr - ours).abs().amax(dim=1) / ours.abs().amax(dim=1)).max()
    print(f"\nlargest difference mrpro vs spurig (relative to each signal's peak): {err:.2e}")


def bench_matching(matrix: int, seed: int, build: bool) -> None:
    print(f"\n### Full default dictionary and matching of a {matrix}³ volume\n")
    rss0 = rss_mb()
    if build:  # simulate it now (not from the cache)
        phi = unbalanced_basis()
        d, wall, cpu, load = _timed(build_dictionary, None, DictionaryGrid(), basis=phi)
        how = "built (not cached)"
    else:
        d, wall, cpu, load = _timed(load_dictionary)
        how = "load_dictionary (from the cache when there)"
    print(
        f"- default dictionary, {how}: {d.n_atoms} atoms; energy in the default basis "
        f"{d.energy:.6f}, in its own top-5 subspace {d.optimal_energy:.6f}; "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU → {d.n_atoms / wall:.0f} atoms/s, "
        f"{d.n_atoms / max(cpu, 1e-9):.0f} atoms/CPU-s (load {load:.1f}); "
        f"RSS {rss0:.0f} → {rss_mb():.0f} MB, process peak {peak_rss_mb():.0f} MB"
    )
    g = torch.Generator().manual_seed(seed)
    n = matrix**3
    pick = torch.randint(0, d.n_atoms, (n,), generator=g)
    x = d.compressed[pick] * (0.5 + torch.rand(n, 1, generator=g))
    # complex noise at 1 % of each voxel's own coefficient norm
    x = x + 0.01 / 5**0.5 * x.norm(dim=1, keepdim=True) * torch.randn(
        n, 5, dtype=torch.complex64, generator=g
    )
    basis = balance_basis(d.basis)
    coef = balance_coefficients(x.T.reshape(5, matrix, matrix, matrix).contiguous())
    b1 = d.b1[pick].reshape(matrix, matrix, matrix)
    cfg = MatchingConfig()
    rss1 = rss_mb()
    r, wall, cpu, load = _timed(match_maps, coef, basis, b1=b1, config=cfg, dictionary=d)
    hit = float((r.t1_ms.reshape(-1) == d.t1_ms[pick]).float().mean())
    step = np.log1p(d.grid.step)
    near = (torch.log(r.t1_ms.reshape(-1) / d.t1_ms[pick]).abs() <= 1.01 * step) & (
        torch.log(r.t2_ms.reshape(-1) / d.t2_ms[pick]).abs() <= 1.01 * step
    )
    print(
        f"- matching {n} voxels (B1 map, each voxel against {d.n_pairs} atoms, voxel chunk "
        f"{cfg.voxel_chunk}, atom chunk {cfg.atom_chunk}, {torch.get_num_threads()} threads): "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU → {n / wall:.0f} voxels/s (load {load:.1f}); "
        f"RSS {rss1:.0f} → {rss_mb():.0f} MB, process peak {peak_rss_mb():.0f} MB; "
        f"with 1 % noise, T1 exact in {100 * hit:.1f} % of voxels, T1 and T2 within one grid "
        f"step in {100 * float(near.float().mean()):.1f} %"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=20000)
    ap.add_argument("--mrpro", default=None, help="directory holding an installed mrpro")
    ap.add_argument("--mrpro-atoms", type=int, default=2000)
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--skip", nargs="*", default=[], choices=["epg", "mrpro", "match"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build", action="store_true", help="simulate the default dictionary anew")
    a = ap.parse_args()
    print(
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, command: {' '.join(sys.argv)}"
    )
    if "epg" not in a.skip:
        bench_epg(a.atoms, a.seed)
    if a.mrpro and "mrpro" not in a.skip:
        bench_mrpro(a.mrpro, a.mrpro_atoms, a.seed)
    if "match" not in a.skip:
        bench_matching(a.matrix, a.seed, a.build)


if __name__ == "__main__":
    main()
