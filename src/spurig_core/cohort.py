"""Cohort work as tasks: serially, or on a ``dask.distributed`` cluster.

``spurig simulate-cohort``, ``prepare-training``, ``evaluate-cohort`` and ``recon-cohort`` split
their work into :class:`Task` s (one per subject, or per subject × method) and hand them to
:func:`run_tasks`:

- without ``--workers``/``--scheduler`` the tasks run one after the other in this process;
- ``--workers N`` starts a ``distributed.LocalCluster`` of N worker processes (one thread each,
  the machine's memory split between them) for the command and stops it at the end;
- ``--scheduler ADDRESS`` submits to a running scheduler (``dask scheduler`` / ``dask worker``,
  or ``dask-jobqueue`` on a SLURM allocation).

Every task writes its outputs atomically under their final names (:mod:`spurig_core.outputs`), so
a rerun skips what is done (tasks are made only for missing outputs) and a worker killed mid-task
leaves nothing half-written; the scheduler re-runs a lost task on another worker (dask's
``distributed.scheduler.allowed-failures`` retries).  Progress goes to the command's bar, and the
dashboard link is printed.

Threads: every task runs with the same, declared number of torch (and NUFFT) threads wherever it
runs (:func:`task_threads`): ``OMP_NUM_THREADS`` of the command when it is set, else all cores
serially and ``cores // N`` per worker of ``--workers N``.  Results depend on that number
(reductions are split by thread), not on the process or worker that computes them: with one thread
per task (``OMP_NUM_THREADS=1``) a cohort run serially and on a cluster writes byte-identical
results and tables.  With more, finufft's multi-threaded spreading is not bit-reproducible even
between two serial runs (``benchmarks/RESULTS-scale.md``).

Memory: each worker of a ``LocalCluster`` has a memory limit (its share of the machine) and
declares it as the resource ``memory`` (bytes); a task declares the bytes it needs (the estimate of
:mod:`spurig_core.memory`) and runs only where that much is free.  On a cluster whose workers all
declare ``--resources memory=BYTES`` the same holds.  Inside a worker the memory checks of
:mod:`spurig_core.memory` use the worker's limit; a task that does not fit, or whose worker is
killed for using too much, fails with one line naming the subject.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError, NotAvailableError, SpurigError
from .progress import Callback, emit

__all__ = ["Cluster", "Task", "cluster", "pinned_threads", "run_tasks", "task_threads"]

#: How long to wait for a scheduler given with ``--scheduler`` (seconds).
CONNECT_TIMEOUT_S = 20


@dataclass(frozen=True)
class Task:
    """One unit of cohort work.

    Attributes
    ----------
    key : str
        Names the subject (and method) in progress and error messages, e.g. ``"subj040 llr"``.
    fn : callable
        Runs the work; called as ``fn(*needed_results, *args, **kwargs)``.
    args : tuple
    kwargs : dict
    needs : tuple of str
        Keys of tasks whose results are passed first (e.g. the subject's gridding).
    memory : float
        Bytes the task needs at its peak (0: not declared).
    """

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    memory: float = 0.0


def _check_options(workers: int | None, scheduler: str | None) -> None:
    if workers is not None and scheduler:
        raise InputError("give either --workers N or --scheduler ADDRESS, not both")
    if workers is not None and not 1 <= workers <= 1024:
        raise InputError(f"--workers: {workers} is not a number of worker processes (1 to 1024)")


def task_threads(workers: int | None = None, *, local: bool = True) -> int | None:
    """Threads each task runs with (torch intra-op and finufft; a task pins them while it runs).

    Parameters
    ----------
    workers : int, optional
        Worker processes of a ``LocalCluster`` (``None``: the tasks run serially in this process).
    local : bool
        ``False`` for a running scheduler's workers (``--scheduler``).

    Returns
    -------
    int or None
        ``OMP_NUM_THREADS`` when set, else ``torch.get_num_threads()`` serially and
        ``max(1, cores // workers)`` for a ``LocalCluster``; ``None`` (the worker's own
        setting) for a running scheduler without ``OMP_NUM_THREADS``.

    Raises
    ------
    InputError
        ``OMP_NUM_THREADS`` is not a whole number from 1 to 1024.
    """
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if not 1 <= n <= 1024:
            raise InputError(
                f"environment OMP_NUM_THREADS={raw!r} is not a number of threads (1 to 1024)"
            )
        return n
    if not local:
        return None
    if workers is None:
        import torch

        return int(torch.get_num_threads())
    return max(1, (os.cpu_count() or 1) // workers)


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` threads in torch, the BLAS and finufft's OpenMP runtime.

    torch (and with it the NUFFT, :class:`~spurig_core.operators.fourier.NUFFT`), the BLAS of
    numpy/scipy and finufft's own OpenMP runtime use ``threads`` threads for the block; the
    process's settings are restored after it.  finufft's FFT follows its OpenMP runtime's thread
    count even when a plan asks for one thread: a serial process started with 2 threads and a
    worker with 1 otherwise simulate different bits (measured: the k-space of `simulate-cohort`).
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _local_cluster(workers: int) -> Any:
    from distributed import LocalCluster

    from .memory import available_bytes

    limit = int(available_bytes() // workers)
    threads = task_threads(workers)
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,  # one task at a time per worker: its memory is its own
        processes=True,
        memory_limit=limit,
        resources={"memory": limit},
        dashboard_address=":0",
        env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
    )


class Cluster:
    """The cluster of ``--workers``/``--scheduler``, started (or connected to) on first use.

    A rerun with nothing left to do therefore starts nothing.
    """

    def __init__(
        self,
        workers: int | None,
        scheduler: str | None,
        stack: contextlib.ExitStack,
        echo: Callable[[str], None] | None,
    ) -> None:
        self.workers, self.scheduler, self._stack, self._echo = workers, scheduler, stack, echo
        self._client: Any = None
        #: Threads per task (:func:`task_threads`).
        self.threads = task_threads(workers, local=not scheduler)

    def client(self) -> Any:
        """Return the ``distributed.Client`` (the cluster starts or is connected to now)."""
        if self._client is not None:
            return self._client
        import distributed

        if self.scheduler:
            try:
                client = distributed.Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(
                    f"--scheduler {self.scheduler}: cannot connect ({_first_line(exc)[:200]})"
                ) from None
        else:
            assert self.workers is not None
            local = self._stack.enter_context(_local_cluster(self.workers))
            client = distributed.Client(local)
        self._client = self._stack.enter_context(client)
        # runs first at the end of the block: shutting workers down on a busy machine logs
        # warnings ("Worker process still alive after 4.0 seconds, killing")
        self._stack.callback(logging.getLogger("distributed").setLevel, logging.ERROR)
        if self._echo is not None:
            n = len(client.scheduler_info().get("workers", {}))
            self._echo(f"dask: {n} workers, dashboard {client.dashboard_link}")
        return client


@contextlib.contextmanager
def cluster(
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    echo: Callable[[str], None] | None = print,
) -> Iterator[Cluster | None]:
    """Yield the block's cluster (:class:`Cluster`), or ``None`` (run serially) without options.

    Parameters
    ----------
    workers : int, optional
        Start a ``LocalCluster`` of this many worker processes (when the first task is
        submitted); it stops at the end of the block.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``).
    echo : callable, optional
        Receives the line with the dashboard link.

    Raises
    ------
    InputError
        Both options, a bad number of workers, or a scheduler that cannot be reached.
    NotAvailableError
        Without the ``distributed`` package (``pip install 'spurig[cluster]'``).
    """
    _check_options(workers, scheduler)
    if workers is None and not scheduler:
        yield None
        return
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise NotAvailableError(
            "--workers/--scheduler need the 'distributed' package: pip install 'spurig[cluster]'"
        ) from None
    with contextlib.ExitStack() as stack:
        stack.callback(
            logging.getLogger("distributed").setLevel, logging.getLogger("distributed").level
        )
        yield Cluster(workers, scheduler, stack, echo)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _worker_memory_cap() -> None:
    """Inside a dask worker: :mod:`spurig_core.memory`'s checks use at most its memory limit."""
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        return  # not in a worker: nothing to cap
    if limit:
        old = float(os.environ.get("SPURIG_MEMORY_GB") or "inf")
        os.environ["SPURIG_MEMORY_GB"] = f"{min(old, limit / 1e9):.6g}"


def _call(
    key: str, fn: Callable[..., Any], kwargs: dict[str, Any], threads: int | None, *args: Any
) -> Any:
    """Run one task with ``threads`` threads; any failure becomes one line naming the task."""
    _worker_memory_cap()
    try:
        with pinned_threads(threads):
            return fn(*args, **kwargs)
    except SpurigError as exc:
        raise InputError(f"{key}: {_first_line(exc)}") from None
    except MemoryError:
        raise InputError(f"{key}: out of memory") from None
    except RuntimeError as exc:  # torch reports a failed allocation as RuntimeError
        if "memory" not in str(exc).lower():
            raise
        raise InputError(f"{key}: out of memory ({_first_line(exc)[:160]})") from None


def _memory_declared(client: Any, tasks: Sequence[Task]) -> bool:
    """Whether every worker declares the ``memory`` resource; then every task must fit one."""
    workers = client.scheduler_info().get("workers", {}).values()
    have = [float((w.get("resources") or {}).get("memory", 0)) for w in workers]
    if not have or min(have) <= 0:
        return False
    biggest = max(have)
    from .memory import format_bytes

    for t in tasks:
        if t.memory > biggest:
            raise InputError(
                f"{t.key}: needs about {format_bytes(t.memory)} but the largest worker has "
                f"{format_bytes(biggest)} (use fewer --workers, or workers with more memory)"
            )
    return True


def run_tasks(
    tasks: Sequence[Task],
    client: Any = None,
    *,
    callback: Callback | None = None,
    stage: str = "cohort",
) -> dict[str, Any]:
    """Run ``tasks`` (in order, or on a :class:`Cluster` or ``distributed.Client``).

    Returns their results by key.

    A task whose worker dies is re-run elsewhere by the scheduler; one that fails (or whose
    workers keep dying) cancels the rest and raises one line naming it.  Outputs of finished
    tasks stay.  Every task runs with :func:`task_threads` threads (the cluster's, or this
    process's when serial).  Progress: ``emit(callback, stage, done, total, key)``.
    """
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    results: dict[str, Any] = {}
    total = len(tasks)
    if client is None or (isinstance(client, Cluster) and not tasks):
        threads = task_threads()
        for i, t in enumerate(tasks):
            needed = [results[k] for k in t.needs]
            results[t.key] = _call(t.key, t.fn, t.kwargs, threads, *needed, *t.args)
            emit(callback, stage, i + 1, total, t.key)
        return results
    if isinstance(client, Cluster):
        threads = client.threads
        client = client.client()
    else:  # a distributed.Client given directly
        threads = task_threads(local=False)
    return _run_on_cluster(tasks, client, callback, stage, threads)


def _run_on_cluster(
    tasks: Sequence[Task], client: Any, callback: Callback | None, stage: str, threads: int | None
) -> dict[str, Any]:
    import uuid

    from distributed import as_completed

    declared = _memory_declared(client, tasks)
    run_id = uuid.uuid4().hex[:8]
    futures: dict[str, Any] = {}
    names: dict[str, str] = {}
    for t in tasks:
        extra: dict[str, Any] = {}
        if declared and t.memory > 0:
            extra["resources"] = {"memory": float(t.memory)}
        fut = client.submit(
            _call,
            t.key,
            t.fn,
            t.kwargs,
            threads,
            *[futures[k] for k in t.needs],
            *t.args,
            key=f"{t.key}-{run_id}",
            pure=False,
            **extra,
        )
        futures[t.key] = fut
        names[fut.key] = t.key
    results: dict[str, Any] = {}
    done = 0
    try:
        for fut in as_completed(list(futures.values())):
            key = names[fut.key]
            results[key] = _result(fut, key)
            done += 1
            emit(callback, stage, done, len(tasks), key)
    finally:
        pending = [f for f in futures.values() if not f.done()]
        if pending:
            client.cancel(pending)
    return results


def _result(fut: Any, key: str) -> Any:
    from distributed.scheduler import KilledWorker

    try:
        return fut.result()
    except KilledWorker:
        raise InputError(
            f"{key}: every worker that ran it died (out of memory?); give the workers more "
            "memory or use fewer --workers"
        ) from None
