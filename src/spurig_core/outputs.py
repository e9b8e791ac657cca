"""Where outputs go: checks made before any work starts, and atomic writes.

SPEC §2: an output that is an input or cannot be written ends with one line and exit status 2
*before* any long work, and an interrupted or failed write leaves nothing half-written behind.

- :func:`check_output` resolves an output path and refuses (one-line
  :class:`~spurig_core.errors.InputError`) an output that is, lies inside or contains an input; an
  existing path of another kind (an HDF5 scan where a zarr store goes, a folder where a JSON file
  goes, ...) unless ``overwrite``; and a location that cannot be written (a read-only folder, a
  parent that is a file, ``/proc``), by creating and removing a file there.
- :func:`atomic_path` writes to a temporary name beside the target and renames at the end.
  Temporary names carry the writer's process id (``.NAME.<pid>-<random>.tmp``, backups of a
  replaced folder ``.NAME.old-<pid>-<random>``), so the next write of the same target sweeps
  what a killed writer (SIGKILL, power loss) left (:func:`sweep_stale`).  SIGINT and SIGTERM are
  held during the final swap (:func:`deferred_signals`), so an interrupt leaves either the old
  target or the new one, and an interrupted zarr write is settled before its temporary folder is
  removed (:func:`settle_background_io`).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = [
    "KINDS",
    "atomic_path",
    "check_output",
    "deferred_signals",
    "settle_background_io",
    "sweep_stale",
]

PathLike = str | os.PathLike[str]

#: Output kinds of :func:`check_output` and their names in messages.
KINDS: dict[str, str] = {
    "zarr": "a zarr result store",
    "h5": "an HDF5 file",
    "json": "a JSON file",
    "text": "a text file",
    "nifti": "a NIfTI file",
    "dir": "a folder",
}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]+\.tmp$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)(-[a-z0-9_]+)?$")


# ----------------------------------------------------------------------------------------------
# checks before the work
# ----------------------------------------------------------------------------------------------
def check_output(
    path: PathLike,
    *,
    kind: str,
    inputs: Iterable[PathLike | None] = (),
    overwrite: bool = False,
) -> Path:
    """Refuse an output location before any work is done; return the path.

    Parameters
    ----------
    path : path-like
        The output: a file, a zarr store, or (``kind="dir"``) a folder that files are written into.
    kind : {"zarr", "h5", "json", "text", "nifti", "dir"}
        What will be written there.  Files and stores replace the path as a whole; a ``"dir"``
        output is a folder that new files are added to.
    inputs : iterable of path-like or None
        The files and folders the same command reads (``None`` entries are skipped).
    overwrite : bool
        Allow replacing an existing path of another kind (``--overwrite``).  For ``kind="dir"``
        a file standing where the folder goes is then removed here, after every check passed.

    Returns
    -------
    Path
        ``path`` as given.

    Raises
    ------
    InputError
        When the output resolves to an input, lies inside an input store or file, contains an
        input that it would replace, is an existing path of another kind (without
        ``overwrite``) or a special file, or when its folder cannot be written.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    out = Path(path).expanduser()
    loc = _resolve(out.parent) / out.name  # the directory entry that will be replaced
    target = _resolve(out)  # what it points to now
    for inp in inputs:
        if inp is not None:
            _check_not_input(out, (loc, target), Path(inp).expanduser(), kind)
    exists = target.exists()
    if exists and not (target.is_dir() or target.is_file()):
        raise InputError(f"{out}: exists and is not a regular file or folder; refusing to write")
    if exists and not _same_kind(target, kind) and not overwrite:
        raise InputError(
            f"{out}: exists and is {_found(target)}, not {KINDS[kind]}; refusing to replace "
            "it (give --overwrite to replace it)"
        )
    if kind == "dir":
        _check_writable(out, target if target.is_dir() else loc.parent)
        if exists and not target.is_dir():  # overwrite=True: a file where the folder goes
            loc.unlink()
    else:
        _check_writable(out, loc.parent)
        sweep_stale(loc)
    return out


def _resolve(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _check_not_input(out: Path, paths: tuple[Path, Path], inp: Path, kind: str) -> None:
    src = _resolve(inp)
    for p in paths:
        same = p == src or (p.exists() and src.exists() and os.path.samefile(p, src))
        if same:
            raise InputError(
                f"{out}: is the input {inp}; refusing to overwrite an input (choose another path)"
            )
        if src in p.parents and (src.is_file() or _is_zarr(src)):
            raise InputError(f"{out}: lies inside the input {inp}; choose a path outside it")
        if p in src.parents and kind != "dir":
            raise InputError(
                f"{out}: contains the input {inp}; replacing it would destroy the input"
            )


def _head(p: Path, n: int = 4096) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _is_zarr(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))


def _is_nifti(head: bytes) -> bool:
    if head[:2] == b"\x1f\x8b":  # gzip (*.nii.gz)
        return True
    size = head[:4]
    return len(size) == 4 and any(
        int.from_bytes(size, order) in (348, 540) for order in ("little", "big")
    )


def _same_kind(p: Path, kind: str) -> bool:
    if kind in ("zarr", "dir"):
        return p.is_dir() and _is_zarr(p) == (kind == "zarr")
    if not p.is_file():
        return False
    head = _head(p)
    if kind == "h5":
        return head.startswith(_HDF5_MAGIC)
    if kind == "nifti":
        return _is_nifti(head)
    text = b"\0" not in head and not head.startswith(_HDF5_MAGIC)
    if kind == "json":
        stripped = head.lstrip()
        return text and (not stripped or stripped[:1] in (b"{", b"["))
    return text


def _found(p: Path) -> str:
    if p.is_dir():
        return "a zarr store" if _is_zarr(p) else "a folder"
    head = _head(p)
    if head.startswith(_HDF5_MAGIC):
        return "an HDF5 file"
    if _is_nifti(head):
        return "a NIfTI file"
    return "a binary file" if b"\0" in head else "a text file"


def _check_writable(out: Path, folder: Path) -> None:
    """Create and remove a file in ``folder`` (or its first existing ancestor)."""
    d = folder
    while not os.path.lexists(d) and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise InputError(f"{out}: cannot be written: {d} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".spurig-write-test-", dir=d)
    except OSError as exc:
        raise InputError(f"{out}: cannot write in {d}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(name)


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On an exception (an interrupt included) the temporary file or folder is removed and ``path``
    is left as it was.  The final swap runs with SIGINT/SIGTERM held, so an interrupt leaves
    either the old target or the new one; what a killed writer left beside ``path`` is swept
    first (:func:`sweep_stale`).

    Parameters
    ----------
    path : path-like
        The final file (or folder, with ``directory=True``).
    directory : bool
        Whether the target is a folder (e.g. a zarr store); the block creates it.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp: Path | None = None
    backup: Path | None = None
    try:
        with deferred_signals():  # an interrupt lands after ``tmp`` is known, inside ``try``
            fd, name = tempfile.mkstemp(
                prefix=f".{final.name}.{os.getpid()}-", suffix=".tmp", dir=final.parent
            )
            os.close(fd)
            tmp = Path(name)
            if directory:
                tmp.unlink()
        yield tmp
        _set_default_mode(tmp)
        with deferred_signals():
            backup = _swap(tmp, final)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            settle_background_io()  # interrupted zarr writes could still add files to tmp
        if tmp is not None:
            with deferred_signals():
                _remove(tmp)
        raise
    finally:
        if backup is not None:
            _remove(backup)


def _swap(tmp: Path, final: Path) -> Path | None:
    """Rename ``tmp`` onto ``final``; a folder (or a change of kind) goes through a backup."""
    if os.path.lexists(final) and (tmp.is_dir() or (final.is_dir() and not final.is_symlink())):
        backup = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(final, backup)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(backup, final)
            raise
        return backup
    os.replace(tmp, final)
    return None


def _remove(p: Path, *, attempts: int = 20) -> None:
    """Remove a file or folder; retried briefly in case a settling writer still adds files."""
    for _ in range(attempts):
        if not os.path.lexists(p):
            return
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if os.path.lexists(p):
            time.sleep(0.05)


def _set_default_mode(path: Path) -> None:
    """Give a finished temporary file the mode a plain ``open`` would (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    if path.is_file():
        path.chmod(0o666 & ~umask)
    elif path.is_dir():
        path.chmod(0o777 & ~umask)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def sweep_stale(path: PathLike) -> list[Path]:
    """Clean up what killed writers of ``path`` left beside it; return the entries handled.

    Temporary files and folders ``.NAME.<pid>-*.tmp`` of processes that no longer run are
    removed.  A backup ``.NAME.old-<pid>-*`` of a dead writer is put back as ``NAME`` when
    ``NAME`` is missing (the writer died between its two renames), and removed otherwise.
    Entries of running processes and names of other targets are left alone.
    """
    final = Path(path)
    try:
        entries = sorted(final.parent.glob(f".{glob.escape(final.name)}.*"))
    except OSError:
        return []
    handled = []
    for e in entries:
        m = _TMP.match(e.name) or _OLD.match(e.name)
        if m is None or m["name"] != final.name or _pid_alive(int(m["pid"])):
            continue
        try:
            if m.re is _OLD and not os.path.lexists(final):
                os.replace(e, final)
            else:
                _remove(e, attempts=1)
        except OSError:
            continue
        handled.append(e)
    return handled


# ----------------------------------------------------------------------------------------------
# interrupts
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the block, then act on them as their handlers would.

    Only the main thread receives Python signal handlers; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old: dict[signal.Signals, Any] = {}

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if handler is not None:  # None: a handler installed outside Python; leave it alone
                old[sig] = handler
                signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            _deliver(signum, old[signal.Signals(signum)])


def _deliver(signum: int, handler: object) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def settle_background_io(timeout: float = 5.0) -> None:
    """Cancel the asynchronous I/O that an interrupt left running in zarr's event loop.

    zarr 3 runs reads and writes as asyncio tasks on a loop in its own thread; an interrupt of
    the waiting main thread leaves them running (they may still add chunks to a temporary store)
    and, at exit, prints "Task was destroyed but it is pending!".  Cancelling them and waiting
    for them to end prevents both.  Call only after an interrupt: other threads' zarr I/O is
    cancelled too.
    """
    sync = sys.modules.get("zarr.core.sync")
    loop = (getattr(sync, "loop", None) or [None])[0]
    if not isinstance(loop, asyncio.AbstractEventLoop) or loop.is_closed():
        return
    if not loop.is_running():
        return

    async def cancel_all() -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    future = asyncio.run_coroutine_threadsafe(cancel_all(), loop)
    with contextlib.suppress(BaseException):
        future.result(timeout)
