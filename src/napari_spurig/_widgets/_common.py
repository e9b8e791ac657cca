"""Shared Qt plumbing of the widgets: running a headless job in a napari worker.

:class:`JobRunner` starts one of :mod:`napari_spurig._jobs`' generator jobs in a napari
``thread_worker``, shows a napari progress bar per engine stage, turns errors into notifications
(never a crash) and reports a user cancel as an info message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import Container

from .._view import add_layers

__all__ = [
    "JobRunner",
    "SpurigWidget",
    "add_layers",
    "attach",
    "layer_result_paths",
    "layer_scan_paths",
    "optional_path",
    "source_scan",
]


def attach(viewer: Any) -> None:
    """Set up a viewer as every spurig widget does: axial slices, mm scale bar, spurig readers.

    See :func:`napari_spurig._view.follow_axial` and
    :func:`napari_spurig._view.prefer_spurig_readers` (the user's own reader choices are kept).
    """
    from .._view import follow_axial, prefer_spurig_readers

    follow_axial(viewer)
    prefer_spurig_readers()


def optional_path(value: Any) -> Path | None:
    """Return a magicgui file value, or ``None`` when the field is empty."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else Path(text)


def source_scan(result_path: str | Path | None) -> Path | None:
    """Return the scan a result store was reconstructed from, when that file is still there."""
    if not result_path:
        return None
    from spurig_core.io import result_source

    src = (result_source(result_path) or {}).get("path")  # the job reports unreadable stores
    path = Path(src) if src else None
    return path if path is not None and path.is_file() else None


def layer_result_paths(viewer: Any) -> list[tuple[str, str]]:
    """``(label, store path)`` of the result stores that layers in ``viewer`` came from."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for layer in viewer.layers:
        path = (layer.metadata.get("spurig") or {}).get("result_path")
        if path and path not in seen:
            seen.add(path)
            out.append((Path(path).name, path))
    return out


def layer_scan_paths(viewer: Any) -> list[tuple[str, str]]:
    """``(layer name, scan path)`` of the layers that came from a raw scan.

    A result layer counts with its source scan (:func:`source_scan`).
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for layer in viewer.layers:
        meta = layer.metadata.get("spurig") or {}
        path = meta.get("scan_path")
        if not path:
            src = source_scan(meta.get("result_path"))
            path = str(src) if src is not None else None
        if path is None and layer.source.path and str(layer.source.path).endswith((".h5", ".hdf5")):
            path = str(layer.source.path)
        if path and path not in seen:
            seen.add(path)
            out.append((f"{layer.name} ({Path(path).name})", path))
    return out


class SpurigWidget(Container):
    """Base of the dock widgets: a magicgui container bound to its viewer (:func:`attach`).

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    labels : bool
        Show each field's label beside it.
    """

    def __init__(self, napari_viewer: Any, *, labels: bool = True) -> None:
        super().__init__(labels=labels)
        self.viewer = napari_viewer
        attach(napari_viewer)


class JobRunner:
    """Run a generator job in a napari worker with progress bars, notifications and cancel.

    Parameters
    ----------
    what : str
        Name used in messages (e.g. ``"reconstruction"``).
    on_event : callable, optional
        Called in the GUI thread with each yielded ``ProgressEvent``.
    on_done : callable, optional
        Called in the GUI thread with the job's return value.
    on_stop : callable, optional
        Called in the GUI thread after the job ended in any way (success, error, cancel).
    cancel_message : callable, optional
        Returns the message shown after a cancel (default: "<what> cancelled; nothing was
        written", true for the jobs that write only after the engine finished).
    """

    def __init__(
        self,
        what: str,
        *,
        on_event: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        cancel_message: Callable[[], str] | None = None,
    ) -> None:
        self.what = what
        self.cancel_message = cancel_message
        self.on_event = on_event
        self.on_done = on_done
        self.on_stop = on_stop
        self.worker: Any = None
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self.cancelled = False
        self._active = False
        self._bars: dict[str, Any] = {}

    @property
    def running(self) -> bool:
        """Whether a job was started and has not finished (its ``finished`` signal not yet run)."""
        return self._active

    def start(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start ``job(*args, cancel=<event>, **kwargs)`` in a worker thread; return the worker."""
        from napari.qt.threading import create_worker

        self.cancel = threading.Event()
        self.error = None
        self.cancelled = False
        # connecting "errored" up front stops napari from re-raising job errors in the event loop
        worker = create_worker(
            job,
            *args,
            cancel=self.cancel,
            _start_thread=False,
            _connect={"errored": self._errored},
            **kwargs,
        )
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._active = True
        worker.start()
        return worker

    def request_cancel(self) -> None:
        """Stop at the engine's next step; nothing is written."""
        self.cancel.set()

    # -- signal handlers (GUI thread) ----------------------------------------------------------
    def _yielded(self, event: Any) -> None:
        from napari.utils import progress

        stage = getattr(event, "stage", "")
        total = int(getattr(event, "total", 0) or 0)
        bar = self._bars.get(stage)
        if bar is None and total > 0:
            bar = self._bars[stage] = progress(total=total, desc=f"{self.what}: {stage}")
        if bar is not None:
            step = min(int(event.step), total) if total else int(event.step)
            if step > bar.n:
                bar.update(step - bar.n)
            if event.message:
                bar.set_description(f"{self.what}: {event.message}")
        if self.on_event is not None:
            self.on_event(event)

    def _returned(self, value: Any) -> None:
        if self.on_done is not None:
            self.on_done(value)

    def _errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error, show_info

        from spurig_core.errors import Cancelled

        if isinstance(exc, Cancelled):
            self.cancelled = True
            msg = f"{self.what} cancelled; nothing was written"
            if self.cancel_message is not None:
                msg = self.cancel_message()
            show_info(msg)
        else:
            self.error = exc
            show_error(f"{self.what} failed: {exc}")

    def _finished(self) -> None:
        self._active = False
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        if self.on_stop is not None:
            self.on_stop()
