"""The widgets' jobs, headless: parameters, engine jobs and results, with no Qt and no viewer.

Every long job is a plain generator that yields :class:`spurig_core.progress.ProgressEvent` and
returns its output; the Qt widgets run it in a napari ``thread_worker`` and only wire signals.  The
engine call itself runs in a helper thread whose progress callback feeds a queue (the engine reports
through callbacks, a napari worker through ``yield``); setting the job's ``cancel`` event makes the
callback raise :class:`spurig_core.errors.Cancelled` at the engine's next step.  Results are written
with the engine's atomic writers after the engine returns, so a cancelled or failed job leaves no
output behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spurig_core.durations import DURATIONS, groups_for
from spurig_core.recon.methods import METHODS as _ENGINE_METHODS

from ._compare_job import CompareOutput, compare_job
from ._layers import LayerDataTuple, result_layers

__all__ = [
    "DURATION_CHOICES",
    "METHODS",
    "STAGES",
    "CompareOutput",
    "LossHistory",
    "ReconstructParams",
    "compare_job",
    "engine",
    "match_job",
    "reconstruct_job",
    "run_engine",
    "train_job",
    "write_train_config",
]

#: Method labels shown to users and the engine's names for them (the engine's registry,
#: :data:`spurig_core.recon.methods.METHODS`, SPEC §2).
METHODS: dict[str, str] = {m.choice: m.name for m in _ENGINE_METHODS.values()}
#: Training stage labels and the engine's names (paper 2.3.2, appendix A).
STAGES: dict[str, str] = {"pretrain": "pretrain", "GLEAM": "gleam", "fine-tune": "finetune"}
#: ``"all"`` groups of the scan, the scan durations of SPEC §2
#: (:data:`spurig_core.durations.DURATIONS`) and ``"groups"`` for an explicit number of groups.
DURATION_CHOICES: tuple[str, ...] = ("all", *DURATIONS, "groups")

Event = Any  # spurig_core.progress.ProgressEvent (imported lazily)


def engine(name: str) -> Callable[..., Any]:
    """Return a function of :mod:`spurig_core.pipeline` by name.

    Raises
    ------
    NotAvailableError
        When this build of the engine does not provide it yet.
    """
    from spurig_core import pipeline
    from spurig_core.errors import NotAvailableError

    fn = getattr(pipeline, name, None)
    if fn is None:
        raise NotAvailableError(f"spurig_core.pipeline.{name} is not available in this build")
    return fn  # type: ignore[no-any-return]


def run_engine(
    fn: Callable[..., Any], *args: Any, cancel: threading.Event, **kwargs: Any
) -> Generator[Event, None, Any]:
    """Run ``fn(*args, callback=..., **kwargs)`` in a helper thread and yield its progress events.

    Parameters
    ----------
    fn : callable
        An engine function that accepts ``callback``.
    cancel : threading.Event
        When set, the callback raises ``Cancelled`` at the engine's next step.

    Yields
    ------
    ProgressEvent
        Every event the engine emits, in order.

    Returns
    -------
    Any
        What ``fn`` returned.

    Raises
    ------
    Exception
        Whatever ``fn`` raised (``Cancelled`` after a cancel).
    """
    from spurig_core.errors import Cancelled

    q: queue.Queue[tuple[str, Any]] = queue.Queue()

    def callback(event: Event) -> None:
        if cancel.is_set():
            raise Cancelled("cancelled by the user")
        q.put(("event", event))

    def target() -> None:
        try:
            q.put(("done", fn(*args, callback=callback, **kwargs)))
        except BaseException as exc:  # handed to the generator's thread and re-raised there
            q.put(("error", exc))

    thread = threading.Thread(
        target=target, name=f"spurig-{getattr(fn, '__name__', 'job')}", daemon=True
    )
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "event":
                yield value
            elif kind == "error":
                raise value
            else:
                if cancel.is_set():
                    raise Cancelled("cancelled by the user")
                return value
    except GeneratorExit:  # the consumer stopped early (a quit worker): that is a cancel
        cancel.set()
        raise
    finally:
        if thread.is_alive():  # make the engine stop too before returning
            cancel.set()
            thread.join()


def _stream(event: Event) -> Event:
    """Return the event with its iterate ``(basis, x, y, z)`` as a float32 numpy magnitude."""
    data = event.data
    if data is None:
        return event
    if hasattr(data, "detach"):
        data = data.detach().abs().cpu().numpy()
    return replace(event, data=np.abs(np.asarray(data)).astype(np.float32, copy=False))


# ----------------------------------------------------------------------------------------------
# reconstruction
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReconstructParams:
    """What the Reconstruct widget asks for (``spurig recon`` options).

    Attributes
    ----------
    scan_path : Path
        The raw scan (``spurig-raw/1``).
    output_path : Path
        The ``.zarr`` store to write.
    method : str
        Engine method name (a value of :data:`METHODS`).
    duration : str
        One of :data:`DURATION_CHOICES`; ``"all"`` uses every group of the scan, ``"groups"``
        uses :attr:`groups`.
    groups : int
        Number of leading groups when ``duration == "groups"``.
    model_path : Path, optional
        Trained model checkpoint (SPUR-iG / hybrid).
    device : str
        ``"cpu"`` or ``"cuda"``.
    save_iterations : bool
        Keep every iterate in the store (``iterations``).
    """

    scan_path: Path
    output_path: Path
    method: str = "spurig"
    duration: str = "all"
    groups: int = 48
    model_path: Path | None = None
    device: str = "cpu"
    save_iterations: bool = False

    def validate(self) -> None:
        """Check the parameters a user can get wrong.

        Raises
        ------
        InputError
            Naming the field: a missing scan, an unknown method or duration, a bad output name.
        """
        from spurig_core.errors import InputError

        if not str(self.scan_path) or not Path(self.scan_path).is_file():
            raise InputError(f"scan {self.scan_path}: no such file")
        if self.method not in METHODS.values():
            raise InputError(f"method {self.method!r}: choose one of {', '.join(METHODS.values())}")
        if self.duration not in DURATION_CHOICES:
            raise InputError(
                f"duration {self.duration!r}: choose one of {', '.join(DURATION_CHOICES)}"
            )
        if self.duration == "groups" and self.groups < 1:
            raise InputError(f"groups {self.groups}: must be at least 1")
        if not str(self.output_path).rstrip("/").endswith(".zarr"):
            raise InputError(f"output {self.output_path}: the result store must end in .zarr")
        if self.model_path is not None and not Path(self.model_path).is_file():
            raise InputError(f"model {self.model_path}: no such file")

    def n_groups(self) -> int | None:
        """Leading groups to use (``None`` = all of the scan's groups)."""
        if self.duration == "all":
            return None
        return self.groups if self.duration == "groups" else groups_for(self.duration)


def reconstruct_job(
    params: ReconstructParams, cancel: threading.Event
) -> Generator[Event, None, Path]:
    """Read the scan, reconstruct, write the zarr result; yield progress with streamed iterates.

    Yields
    ------
    ProgressEvent
        The engine's events; ``data`` is the current iterate's magnitude ``(basis, x, y, z)``
        float32 numpy (or ``None``).

    Returns
    -------
    Path
        The written result store (only written after the engine finished without cancel).
    """
    from spurig_core.errors import Cancelled
    from spurig_core.io import load_scan
    from spurig_core.progress import ProgressEvent

    params.validate()
    reconstruct = engine("reconstruct")
    yield ProgressEvent("load", 0, 1, f"reading {Path(params.scan_path).name}")
    scan = load_scan(params.scan_path)
    yield ProgressEvent("load", 1, 1, f"read {Path(params.scan_path).name}")
    groups = params.n_groups()
    if groups is not None and groups > scan.n_groups:
        from spurig_core.errors import InputError

        raise InputError(
            f"{params.scan_path}: {params.duration} needs {groups} groups, "
            f"the scan has {scan.n_groups}"
        )
    if cancel.is_set():
        raise Cancelled("cancelled by the user")
    gen = run_engine(
        reconstruct,
        scan,
        cancel=cancel,
        method=params.method,
        groups=groups,
        model=params.model_path,
        device=params.device,
        save_iterations=params.save_iterations,
    )
    result = yield from _stream_all(gen)
    if cancel.is_set():
        raise Cancelled("cancelled by the user")
    yield ProgressEvent("save", 0, 1, f"writing {Path(params.output_path).name}")
    return Path(result.save(params.output_path))


def _stream_all(gen: Generator[Event, None, Any]) -> Generator[Event, None, Any]:
    """Yield ``gen``'s events through :func:`_stream` and return its return value.

    Closing this generator closes ``gen`` too, which cancels the engine (see :func:`run_engine`).
    """
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            yield _stream(ev)
    finally:
        gen.close()


# ----------------------------------------------------------------------------------------------
# matching
# ----------------------------------------------------------------------------------------------
def match_job(
    result_path: str | Path,
    scan_path: str | Path | None = None,
    *,
    device: str = "cpu",
    cancel: threading.Event,
) -> Generator[Event, None, Path]:
    """Match a stored result against the dictionary; the maps are written into the same store.

    Parameters
    ----------
    result_path : path-like
        The ``.zarr`` result store.
    scan_path : path-like, optional
        The scan it came from (its B1 map and sequence); without it the default sequence and
        B1 = 1 are used (the engine's rule).

    Returns
    -------
    Path
        The result store, now with ``t1_ms``, ``t2_ms`` and ``pd`` (rewritten atomically).
    """
    from spurig_core.io import load_result, load_scan
    from spurig_core.progress import ProgressEvent

    match = engine("match")
    yield ProgressEvent("load", 0, 1, "reading result and scan")
    result = load_result(result_path, lazy=False)
    scan = load_scan(scan_path) if scan_path is not None else None
    matched = yield from run_engine(match, result, scan, cancel=cancel, device=device)
    yield ProgressEvent("save", 0, 1, f"writing maps into {Path(result_path).name}")
    return Path(matched.save(result_path))


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
@dataclass
class LossHistory:
    """Loss values as training reports them (for the live curve).

    Attributes
    ----------
    steps, losses : list
        The event's ``step`` and ``metrics["loss"]`` of each reported step.
    """

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def add(self, event: Event) -> bool:
        """Record ``event`` if it carries a loss; return whether it did."""
        loss = (event.metrics or {}).get("loss")
        if loss is None:
            return False
        self.steps.append(len(self.steps) + 1 if event.step is None else int(event.step))
        self.losses.append(float(loss))
        return True


def write_train_config(fields: dict[str, Any], path: str | Path) -> Path:
    """Write the main fields of a training configuration to a TOML file (for the Train widget)."""
    import tomli_w

    p = Path(path)
    p.write_text(tomli_w.dumps(fields))
    return p


def train_job(
    stage: str, config_path: str | Path, *, resume: bool = False, cancel: threading.Event
) -> Generator[Event, None, Path]:
    """Run one training stage; yields events with ``metrics["loss"]``; returns the checkpoint path.

    Cancel stops at the next step; checkpoints the engine wrote so far stay on disk (resume later).
    """
    from spurig_core.errors import InputError

    if stage not in STAGES.values():
        raise InputError(f"stage {stage!r}: choose one of {', '.join(STAGES.values())}")
    if not Path(config_path).is_file():
        raise InputError(f"config {config_path}: no such file")
    train = engine("train")
    out = yield from run_engine(train, stage, Path(config_path), cancel=cancel, resume=resume)
    return Path(out)


# ----------------------------------------------------------------------------------------------
# comparison (the QA views live in _compare_job)
# ----------------------------------------------------------------------------------------------
def result_file_layers(path: str | Path, *, maps_only: bool = False) -> list[LayerDataTuple]:
    """Layers of a stored result (all, or only the T1/T2/PD maps)."""
    layers = result_layers(path)
    if maps_only:
        layers = [t for t in layers if t[1]["metadata"]["spurig"].get("kind") in ("t1", "t2", "pd")]
    return layers
