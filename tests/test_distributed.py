"""Training on several processes: real ``torchrun`` runs with the ``gloo`` backend on the CPU.

The run is defined in global samples (:mod:`spurig_core.training.distributed`): with 2 processes
each computes half of every optimiser step's samples and the gradients are summed, so the loss
curve equals the 1-process one up to the order of floating-point sums.  Stated tolerance: the
per-step losses (``steps.csv``) and the epoch losses agree to a relative 1e-3 after the same
number of samples seen (measured: about 1e-6 after 6 Adam steps); the samples seen agree exactly.
"""

from __future__ import annotations

import csv
import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spurig_core.config import dump_toml
from spurig_core.data import FispSequence
from spurig_core.io import load_checkpoint
from spurig_core.operators.encoding import GriddedSubspaceEncoding
from spurig_core.operators.grid import GriddedData, grid_shape
from spurig_core.recon.unrolled import estimate_lipschitz, scaled_init
from spurig_core.training.datasets import DCData, Example, save_example
from spurig_core.training.distributed import (
    Context,
    DistributedConfig,
    read_config,
    reduce_gradients,
)
from spurig_core.training.stages import GleamConfig, PretrainConfig, load_stage_config, run_stage
from test_unrolled import tiny_cfg

N, TR, COILS = 16, 6, 2
RTOL = 1e-3  # the stated tolerance of the 1- vs 2-process curves


def _example(seed: int) -> Example:
    """Return a 16³ subject with a real gridded data term (random k-space locations)."""
    g = torch.Generator().manual_seed(seed)
    matrix = (N, N, N)
    grid = grid_shape(matrix, 1.5)
    index = torch.randint(0, int(np.prod(grid)), (2, TR, 400), generator=g)
    maps = torch.randn(COILS, *matrix, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().pow(2).sum(0).sqrt()
    phi, _ = torch.linalg.qr(torch.randn(TR, 5, dtype=torch.complex64, generator=g))
    ax = torch.linspace(-1, 1, N)
    r2 = sum(t**2 for t in torch.meshgrid(ax, ax, ax, indexing="ij"))
    tissue = torch.where(r2 < 0.6, torch.where(r2 < 0.2, 3, 2), torch.where(r2 < 0.8, 1, 0))
    truth = (tissue > 0) * torch.randn(5, 1, 1, 1, dtype=torch.complex64, generator=g)
    empty = GriddedData(torch.zeros(COILS, 2, TR, 400, dtype=torch.complex64), index, grid, matrix)
    values = GriddedSubspaceEncoding(empty, maps, phi).forward(truth)
    values = values + 0.05 * torch.randn(values.shape, dtype=torch.complex64, generator=g)
    op = GriddedSubspaceEncoding(GriddedData(values, index, grid, matrix), maps, phi)
    ahb = op.adjoint_data()
    x0, s = scaled_init(op, ahb, op.data_norm())
    payload = {
        "type": "gridded-subspace",
        "coil_maps": maps,
        "basis": phi,
        "index": index.to(torch.int32),
        "grid": [int(v) for v in grid],
        "matrix": list(matrix),
        "encoding": {"density_compensation": 0.0},
    }
    dc = DCData(ahb, op.data_norm(), s, estimate_lipschitz(op, ahb, iters=10), payload)

    def noisy(level: float) -> torch.Tensor:
        return truth + level * torch.randn(truth.shape, dtype=torch.complex64, generator=g)

    inputs = {"adjoint-1min": x0, "llr-30s": noisy(0.4), "llr-1min": noisy(0.3)}
    inputs["llr-2min"] = noisy(0.15)
    seq = FispSequence(np.linspace(5, 60, TR).astype(np.float32))
    return Example(f"s{seed}", truth, tissue.to(torch.uint8), phi, seq, inputs, {"1min": dc})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-cohort")
    for k, split in enumerate(("train", "train", "train", "val")):
        save_example(_example(k), root / split / f"s{k}")
    return root


def _pre_cfg(cohort: Path, out: Path, epochs: int) -> PretrainConfig:
    return PretrainConfig(
        data_dir=str(cohort),
        out_dir=str(out),
        model=tiny_cfg(steps=2),
        epochs=epochs,
        batch_size=4,
        crop=12,
        steps_per_epoch=2,
        lr=2e-3,
        seed=7,
    )


def _write(path: Path, cfg: object, extra: str = "") -> Path:
    path.write_text(dump_toml(cfg) + extra)
    return path


def _steps(run: Path) -> list[dict[str, float]]:
    with open(run / "steps.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _torchrun(config: Path, stage: str, *extra: str, logs: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    if logs is not None:  # each process's stdout/stderr to its own file
        cmd += ["--log-dir", str(logs), "--redirects", "3"]
    return [*cmd, "-m", "spurig_core.cli", "-q", "train", "--stage", stage, "--config", str(config)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}


def _same_curve(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert [r["samples"] for r in a] == [r["samples"] for r in b]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# in-process pieces
# ----------------------------------------------------------------------------------------------
def test_distributed_config_and_single_process_defaults(tmp_path: Path) -> None:
    from spurig_core.errors import InputError

    cfg = _write(
        tmp_path / "c.toml",
        _pre_cfg(tmp_path, tmp_path, 1),
        '\n[distributed]\nbackend = "gloo"\ntimeout_s = 30\n',
    )
    assert read_config(cfg) == DistributedConfig("gloo", 30.0)
    # the table is no part of the stage's config: resuming with another backend is allowed
    assert load_stage_config("pretrain", cfg) == _pre_cfg(tmp_path, tmp_path, 1)
    cfg.write_text('[distributed]\nbackend = "mpi"\n')
    with pytest.raises(InputError, match=r"backend: 'mpi' is not one of auto, gloo, nccl"):
        read_config(cfg)
    cfg.write_text("[distributed]\ntimeout_s = 0\n")
    with pytest.raises(InputError, match="timeout_s"):
        read_config(cfg)
    one = Context()
    assert not one.active and one.is_main and list(one.shard(3)) == [0, 1, 2]
    assert list(Context(rank=1, world_size=2).shard(5)) == [1, 3]
    lin = torch.nn.Linear(2, 2)
    reduce_gradients(lin.parameters(), one)  # nothing to sum alone: grads stay None
    assert all(p.grad is None for p in lin.parameters())
    assert one.sum([1.5, 2]) == [1.5, 2.0]


def _conv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1)
    )


def _conv_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 2, 8, 8, 8, generator=g), torch.randn(4, 2, 8, 8, 8, generator=g)


def _grads_of_ddp_and_reduce_gradients(rank: int, world: int, out: str) -> None:
    """Run one process of a gloo group and compute its gradients for one batch.

    The gradients are those of the ``DistributedDataParallel`` wrapper and of
    :func:`reduce_gradients` (the rank's share of the global mean, summed).
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    store = f"file://{Path(out) / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    x, y = _conv_batch()
    mine = list(Context(rank, world).shard(len(x)))
    ddp, ours = DistributedDataParallel(_conv_model()), _conv_model()
    torch.nn.functional.mse_loss(ddp(x[mine]), y[mine]).backward()  # DDP averages over ranks
    share = len(mine) / len(x)
    (torch.nn.functional.mse_loss(ours(x[mine]), y[mine]) * share).backward()
    reduce_gradients(ours.parameters(), Context(rank, world, 0, "gloo"))
    grads = {
        "ddp": [p.grad for p in ddp.module.parameters()],
        "ours": [p.grad for p in ours.parameters()],
    }
    torch.save(grads, Path(out) / f"rank{rank}.pt")
    # DDP's reducer holds the process group: free it while the group is alive, after both ranks
    # are done, so the gloo threads are not torn down at interpreter exit (a CI run aborted
    # there once: "terminate called without an active exception", SIGABRT in rank 1).
    dist.barrier()
    del ddp, grads
    gc.collect()
    dist.destroy_process_group()


def test_reduce_gradients_gives_the_gradients_of_distributed_data_parallel(tmp_path: Path) -> None:
    """The trainer's one all-reduce per optimiser step is DDP's gradient all-reduce.

    On 2 gloo processes the gradients are bit-identical to the ``DistributedDataParallel``
    wrapper's, and equal to one process's on the whole batch up to float rounding.
    """
    import torch.multiprocessing as mp

    mp.spawn(_grads_of_ddp_and_reduce_gradients, args=(2, str(tmp_path)), nprocs=2)
    one = _conv_model()
    x, y = _conv_batch()
    torch.nn.functional.mse_loss(one(x), y).backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for ddp, ours, p in zip(got["ddp"], got["ours"], one.parameters(), strict=True):
            assert p.grad is not None and torch.equal(ddp, ours)
            torch.testing.assert_close(
                ours, p.grad, rtol=1e-5, atol=1e-6 * float(p.grad.abs().max())
            )


def test_torchrun_environment_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spurig_core.errors import InputError
    from spurig_core.training.distributed import process_group

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match=r"RANK=2: must be in 0 … 1"):
        with process_group(DistributedConfig(), device="cpu", status=str):
            pass
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(InputError, match="MASTER_ADDR is not set"):
        with process_group(DistributedConfig(), device="cpu", status=str):
            pass
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    with pytest.raises(InputError, match="backend nccl needs CUDA"):
        with process_group(DistributedConfig("nccl"), device="cpu", status=str):
            pass


# ----------------------------------------------------------------------------------------------
# torchrun
# ----------------------------------------------------------------------------------------------
def test_two_processes_follow_the_one_process_curve_and_resume_across_world_sizes(
    cohort: Path, tmp_path: Path
) -> None:
    """Changing the process count between epochs gives the same curve as one process.

    1 process for epoch 1, 2 processes (torchrun, gloo) for epoch 2, 1 process for epoch 3: the
    same curve, sample for sample, as 3 epochs in one process.
    """
    straight = tmp_path / "straight"
    run_stage("pretrain", _write(tmp_path / "a.toml", _pre_cfg(cohort, straight, 3)))
    ref = _steps(straight)
    assert len(ref) == 6 and ref[-1]["samples"] == 24

    chain = tmp_path / "chain"
    cfg = tmp_path / "b.toml"
    run_stage("pretrain", _write(cfg, _pre_cfg(cohort, chain, 1)))
    _write(cfg, _pre_cfg(cohort, chain, 2), '\n[distributed]\nbackend = "gloo"\ntimeout_s = 60\n')
    proc = subprocess.run(
        [*_torchrun(cfg, "pretrain"), "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes)
    state = load_checkpoint(chain / "last.pt")
    assert state["epoch"] == 2 and state["samples"] == 16 and state["world_size"] == 2
    _same_curve(_steps(chain), ref[:4])  # 1 → 2 processes

    run_stage("pretrain", _write(cfg, _pre_cfg(cohort, chain, 3)), resume=True)
    _same_curve(_steps(chain), ref)  # 2 → 1 process
    rows = list(csv.DictReader(open(chain / "loss.csv")))
    ref_rows = list(csv.DictReader(open(straight / "loss.csv")))
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(
            [float(r[key]) for r in rows], [float(r[key]) for r in ref_rows], rtol=RTOL
        )
    assert not [p for p in chain.iterdir() if p.name.startswith(".")]  # no temporaries left


def _children(pid: int, timeout: float = 120) -> dict[int, int]:
    """``{rank: pid}`` of torchrun's worker processes."""
    import psutil

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ranks = {}
        for child in psutil.Process(pid).children(recursive=True):
            try:
                env = child.environ()
            except (psutil.Error, OSError):
                continue
            if "RANK" in env and "spurig_core.cli" in " ".join(child.cmdline()):
                ranks[int(env["RANK"])] = child.pid
        if len(ranks) == 2:
            return ranks
        time.sleep(0.5)
    raise AssertionError("torchrun's workers did not start")


@pytest.mark.slow
def test_gleam_from_scratch_on_two_processes(cohort: Path, tmp_path: Path) -> None:
    """GLEAM (detached steps) on 2 processes from scratch matches 1 process."""
    base = dict(
        data_dir=str(cohort),
        model=tiny_cfg(steps=2, share_weights=False),
        accumulation=2,
        ssim_slices=4,
        lr=1e-3,
        seed=3,
    )
    one = tmp_path / "one"
    run_stage(
        "gleam", _write(tmp_path / "one.toml", GleamConfig(out_dir=str(one), epochs=2, **base))
    )
    two = tmp_path / "two"
    cfg2 = _write(tmp_path / "two.toml", GleamConfig(out_dir=str(two), epochs=2, **base))
    proc = subprocess.run(
        _torchrun(cfg2, "gleam"), capture_output=True, text=True, timeout=900, env=_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_curve(_steps(two), _steps(one))


def test_a_killed_rank_ends_the_run_with_one_line_and_an_intact_checkpoint(
    cohort: Path, tmp_path: Path
) -> None:
    """A 2-process run whose rank 1 is killed stops cleanly and resumes on 1 process.

    Rank 1 is killed once the first epoch's checkpoint is on disk: rank 0 stops with one line
    naming the intact checkpoint, which 1 process resumes.
    """
    killed = tmp_path / "killed"
    cfg = _write(
        tmp_path / "killed.toml",
        _pre_cfg(cohort, killed, 500),
        "\n[distributed]\ntimeout_s = 30\n",
    )
    logs = tmp_path / "logs"
    run = subprocess.Popen(
        _torchrun(cfg, "pretrain", logs=logs),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        ranks = _children(run.pid)
        t0 = time.monotonic()
        while not (killed / "last.pt").exists():
            assert run.poll() is None and time.monotonic() - t0 < 300
            time.sleep(0.1)
        os.kill(ranks[1], signal.SIGKILL)
        run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0
    (err0,) = [p for p in logs.rglob("stderr.log") if p.parent.name == "0"]
    lines = [ln for ln in err0.read_text().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("spurig: error: training process 0 of 2")
    assert "last checkpoint" in lines[0] and "is intact" in lines[0]
    state = load_checkpoint(killed / "last.pt")  # intact, and resumable with 1 process
    done = int(state["epoch"])
    assert 1 <= done < 500 and state["samples"] == done * 8 and state["world_size"] == 2
    run_stage("pretrain", _write(cfg, _pre_cfg(cohort, killed, done + 1)), resume=True)
    assert load_checkpoint(killed / "last.pt")["epoch"] == done + 1
