"""Typed progress events for long work (STYLE.md practice 8).

Iterative algorithms call ``callback(event)`` after each step.  The command line renders the events
as a bar; the napari plugin forwards them from a ``thread_worker`` to a napari progress bar and
streams ``event.data`` (for example the current iterate) into the viewer.  A callback may raise
:class:`spurig_core.errors.Cancelled` to stop the work at the next step; nothing partial is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Callback", "ProgressEvent", "emit", "scaled"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long computation.

    Attributes
    ----------
    stage : str
        What is running, e.g. ``"dictionary"``, ``"grid"``, ``"llr"``, ``"unroll"``, ``"train"``.
    step : int
        Steps completed so far in this stage (1-based after the first step).
    total : int
        Number of steps of the stage (0 when unknown).
    message : str
        Short human-readable status.
    data : Any
        Optional payload, e.g. the current coefficient iterate ``(basis, x, y, z)``.
    metrics : dict of str to float
        Optional scalars, e.g. ``{"loss": 0.12}``.
    """

    stage: str
    step: int
    total: int
    message: str = ""
    data: Any = None
    metrics: dict[str, float] = field(default_factory=dict)


Callback = Callable[[ProgressEvent], None]


def emit(
    callback: Callback | None,
    stage: str,
    step: int,
    total: int,
    message: str = "",
    data: Any = None,
    **metrics: float,
) -> None:
    """Send one :class:`ProgressEvent` to ``callback`` if there is one."""
    if callback is not None:
        callback(ProgressEvent(stage, step, total, message, data, dict(metrics)))


def scaled(callback: Callback | None, stage: str) -> Callback | None:
    """Wrap ``callback`` so that every event it receives is relabelled with ``stage``."""
    if callback is None:
        return None

    def _inner(event: ProgressEvent) -> None:
        callback(
            ProgressEvent(stage, event.step, event.total, event.message, event.data, event.metrics)
        )

    return _inner
