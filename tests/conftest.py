"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tests run on 2-core machines; keep torch from oversubscribing when several processes run.
torch.set_num_threads(max(1, min(2, int(os.environ.get("SPURIG_TEST_THREADS", "2")))))


@pytest.fixture
def rng() -> torch.Generator:
    """Return a seeded local torch generator (never the global random state)."""
    return torch.Generator().manual_seed(1234)


# --- GUI tests: run under a display, or skip with one line saying why (never a Qt abort) ---

_QT_FIXTURES = frozenset({"make_napari_viewer", "make_napari_viewer_proxy", "qtbot", "qapp"})
_PREFLIGHT = Path(__file__).resolve().parents[1] / "tools" / "preflight.sh"


def _local_display_alive(display: str) -> bool:
    """Whether ``display`` names a usable X server (a local ``:N`` needs its socket)."""
    host, _, number = display.rpartition(":")
    if host not in ("", "unix"):
        return True  # remote or forwarded (ssh -X): trust it
    socket = Path("/tmp/.X11-unix") / f"X{number.split('.')[0]}"
    return socket.exists()


def gui_skip_reason() -> str | None:
    """Why the Qt (napari) tests cannot run here, or ``None`` when they can.

    On Linux, Qt aborts the whole process ("Fatal Python error: Aborted") when it has no X server
    or lacks its xcb libraries; this is checked before any test creates a ``QApplication``.
    """
    if os.environ.get("SPURIG_NO_GUI", "0") == "1":
        return "SPURIG_NO_GUI=1"
    if not sys.platform.startswith("linux"):
        return None
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
        return None
    if _PREFLIGHT.exists():
        env = {k: v for k, v in os.environ.items() if k != "SPURIG_NO_GUI"}
        check = subprocess.run(
            ["bash", str(_PREFLIGHT), "--check"], env=env, capture_output=True, text=True
        )
        if check.returncode != 0:
            return check.stderr.strip().splitlines()[-1]
    display = os.environ.get("DISPLAY", "")
    if os.environ.get("WAYLAND_DISPLAY") or (display and _local_display_alive(display)):
        return None
    return (
        "no X display: pytest-xvfb did not start Xvfb (disabled with -p no:xvfb / --no-xvfb?) "
        "and DISPLAY is unset or dead; run `make test`, which installs and uses Xvfb"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every Qt test ``gui`` (so ``-m "not gui"`` sees it); skip them when Qt cannot run."""
    gui_items = []
    for item in items:
        if _QT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)
        if item.get_closest_marker("gui") is not None:
            gui_items.append(item)
    if not gui_items:
        return
    reason = gui_skip_reason()
    if reason is not None:
        for item in gui_items:
            item.add_marker(pytest.mark.skip(reason=f"GUI test skipped: {reason}"))
