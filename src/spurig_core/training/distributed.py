"""Data-parallel training on several processes: ``torchrun`` and :mod:`torch.distributed`.

``spurig train`` runs as one process, or as N processes started by ``torchrun``::

    torchrun --nproc-per-node 2 -m spurig_core.cli train --stage pretrain --config run.toml

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
those environment variables alone make a run distributed.  The config file's optional
``[distributed]`` table (:class:`DistributedConfig`) chooses the backend (``gloo`` on the CPU,
``nccl`` on GPUs) and the timeout of a collective operation.

How the work is split (``Trainer`` in :mod:`.stages`)
------------------------------------------------------
The run is defined in *global* samples, independent of the number of processes: every process
draws the same random numbers (same seed, same draws) and so knows the whole global batch of each
optimiser step (``batch_size`` crops when pretraining, ``accumulation`` subjects in GLEAM and
fine-tuning); process ``r`` of ``W`` computes the samples ``r, r + W, r + 2W, …`` of it
(:meth:`Context.shard`, the deterministic sampler), and the gradients are summed over the processes
(:func:`reduce_gradients`, one ``all_reduce`` per optimiser step) before every process takes the
same optimiser step.  The result equals the one-process run up to the order of floating-point sums,
and a checkpoint (written by rank 0 only, with samples seen, epoch and step) holds nothing that
depends on the number of processes: it resumes with any number.

Why not the ``DistributedDataParallel`` wrapper: it all-reduces inside every ``backward`` of a
``forward`` through the wrapper, but GLEAM calls ``backward`` once per unrolled step on a detached
input, fine-tuning recomputes each step in a checkpointed backward, and the last accumulation group
of an epoch may leave a process without a sample; summing the accumulated gradients once per
optimiser step keeps each stage's memory strategy unchanged and is what DDP's ``no_sync`` achieves.
The gradients are DDP's: on 2 ``gloo`` processes they are bit-identical to the wrapper's for the
same batch (``tests/test_distributed.py``).  What the wrapper adds, overlapping the all-reduce with
the backward pass, is worth little here: one all-reduce of the paper model's 24.8 MB of gradients
against a GLEAM step of seconds (``benchmarks/RESULTS-scale.md``).

A process that dies (killed, out of memory) breaks the next collective operation of the others;
:func:`process_group` turns that, and the ``SIGTERM`` that ``torchrun`` then sends, into one line
naming the process and the last checkpoint, which stays intact (atomic writes).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, SpurigError

__all__ = [
    "Context",
    "DistributedConfig",
    "TrainingStopped",
    "process_group",
    "read_config",
    "reduce_gradients",
]

_BACKENDS = ("auto", "gloo", "nccl")
#: Messages of a collective operation that failed because another process is gone.
_LOST = re.compile(
    r"gloo|nccl|connection (closed|reset|refused)|broken pipe|timed out|timeout|peer", re.I
)


class TrainingStopped(SpurigError):
    """A distributed run stopped because a process failed or ``torchrun`` ended it.

    The process group's transport threads may still hold a dead peer's connection; their
    destructors then call ``std::terminate`` at exit ("terminate called without an active
    exception"), so the command line leaves at once after its one line.
    """

    abandon_process = True


class _Terminated(BaseException):
    """SIGTERM while distributed (``torchrun`` stops the survivors when a process fails)."""


@dataclass(frozen=True)
class DistributedConfig:
    """The optional ``[distributed]`` table of a training config.

    Attributes
    ----------
    backend : {"auto", "gloo", "nccl"}
        ``auto``: ``nccl`` when the stage's device is a GPU, else ``gloo``.
    timeout_s : float
        Seconds a collective operation may wait for the other processes before it fails.
    """

    backend: str = "auto"
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        """Raise InputError unless ``backend`` is a known backend and ``timeout_s`` is > 0."""
        if self.backend not in _BACKENDS:
            raise InputError(
                f"[distributed] backend: {self.backend!r} is not one of {', '.join(_BACKENDS)}"
            )
        if not self.timeout_s > 0:
            raise InputError(f"[distributed] timeout_s: {self.timeout_s} must be > 0 seconds")


def read_config(path: str | Path) -> DistributedConfig:
    """Return the ``[distributed]`` table of a TOML config (defaults when there is none)."""
    from ..config import from_dict, read_toml

    p = Path(path)
    table = read_toml(p).get("distributed")
    if table is None:
        return DistributedConfig()
    if not isinstance(table, dict):
        raise InputError(f"config {p}: 'distributed' must be a table ([distributed])")
    return from_dict(DistributedConfig, table, where=f"config {p}", table="distributed")


@dataclass(frozen=True)
class Context:
    """The place of this process in the run (the defaults: a single process).

    Attributes
    ----------
    rank : int
        0 … ``world_size − 1``; rank 0 writes every file and reports progress.
    world_size : int
    local_rank : int
        Index on this machine (the GPU it uses).
    backend : str
        ``"gloo"`` or ``"nccl"``; ``""`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        """Whether other processes take part (collective operations are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """Positions of a global batch of ``n`` samples that this process computes."""
        return range(self.rank, n, self.world_size)

    def device(self, name: str) -> torch.device:
        """Return the stage's device for this process (``cuda`` becomes ``cuda:<local_rank>``)."""
        if self.active and name == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    def sum(self, values: Iterable[float]) -> list[float]:
        """``values`` summed over the processes (float64; unchanged for one process)."""
        vals = [float(v) for v in values]
        if not self.active:
            return vals
        import torch.distributed as dist

        t = torch.tensor(vals, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Every process starts from rank 0's parameters and buffers."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def _comm_device(self) -> torch.device:
        return (
            torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        )


def reduce_gradients(params: Iterable[torch.nn.Parameter], ctx: Context) -> None:
    """Sum every parameter's gradient over the processes, in one ``all_reduce``.

    A parameter without a gradient on every process keeps none (as in a one-process run, where
    the optimiser then skips it); one with a gradient on some processes gets the sum.  Complex
    gradients travel as their real and imaginary parts.
    """
    if not ctx.active:
        return
    import torch.distributed as dist

    ps = [p for p in params if p.requires_grad]
    if not ps:
        return
    dev = ps[0].device
    parts = []
    for p in ps:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        g = torch.view_as_real(g) if g.is_complex() else g
        parts.append(g.reshape(-1).to(torch.float32))
    flags = torch.tensor([float(p.grad is not None) for p in ps], device=dev)
    flat = torch.cat([*parts, flags])
    dist.all_reduce(flat)
    have = flat[-len(ps) :].cpu()
    pos = 0
    for p, part, h in zip(ps, parts, have, strict=True):
        n = part.numel()
        if h > 0:
            g = flat[pos : pos + n]
            shaped = (
                torch.view_as_complex(g.reshape(*p.shape, 2)) if p.is_complex() else g.view_as(p)
            )
            p.grad = shaped.to(p.dtype).clone()
        else:
            p.grad = None
        pos += n


def _environment() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables; ``None`` for one process."""
    raw = os.environ.get("WORLD_SIZE")
    if raw is None:
        return None
    values = {}
    for name, default in (("WORLD_SIZE", None), ("RANK", None), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text) if text is not None else -1
        except ValueError:
            raise InputError(f"environment {name}={text!r} is not an integer") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1:
        raise InputError(f"environment WORLD_SIZE={world}: must be at least 1")
    if world == 1:
        return None
    if not 0 <= rank < world:
        raise InputError(f"environment RANK={rank}: must be in 0 … {world - 1} (WORLD_SIZE)")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise InputError(
                f"environment {name} is not set: start several processes with torchrun "
                "(it sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)"
            )
    return rank, world, local


def _backend(cfg: DistributedConfig, device: str) -> str:
    gpu = str(device).startswith("cuda")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if gpu else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise InputError("[distributed] backend nccl needs CUDA GPUs; use gloo on the CPU")
    return backend


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def process_group(
    cfg: DistributedConfig, *, device: str, status: Callable[[], str]
) -> Iterator[Context]:
    """Join the run's process group for the block (nothing to join for one process).

    Parameters
    ----------
    cfg : DistributedConfig
    device : str
        The stage's device (chooses the ``auto`` backend).
    status : callable
        Returns what is left on disk (e.g. "the last checkpoint … (epoch 3) is intact"), for the
        message when the run stops.

    Raises
    ------
    TrainingStopped
        When a collective operation fails (another process died or timed out) or ``torchrun``
        sends SIGTERM: one line naming this process and ``status()``.
    """
    env = _environment()
    if env is None:
        yield Context()
        return
    import torch.distributed as dist

    rank, world, local = env
    backend = _backend(cfg, device)
    dist.init_process_group(
        backend,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=cfg.timeout_s),
    )
    ctx = Context(rank, world, local, backend)
    who = f"training process {rank} of {world}"
    try:
        with _sigterm_raises():
            yield ctx
    except _Terminated:
        raise TrainingStopped(
            f"{who} stopped by SIGTERM (torchrun stops the others when one fails); {status()}"
        ) from None
    except RuntimeError as exc:  # DistBackendError and gloo/NCCL failures are RuntimeErrors
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not (isinstance(exc, dist.DistError) or _LOST.search(text)):
            raise
        raise TrainingStopped(
            f"{who} lost the others ({text[:160]}): another process failed or timed out; {status()}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
