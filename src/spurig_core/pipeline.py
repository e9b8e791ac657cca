"""simulate / reconstruct / match / evaluate / train / bench / export / demo: the one entry point
used by the command line and the napari plugin.

Functions here compose the topic modules; they own file handling (read, validate, write atomically)
and progress reporting, nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import NotAvailableError
from .progress import Callback

__all__ = [
    "bench",
    "demo",
    "evaluate_cohort",
    "evaluate_file",
    "export",
    "format_metrics",
    "launch_gui",
    "match_file",
    "recon_file",
    "simulate",
    "simulate_cohort",
    "train",
]


def _todo(what: str, issue: int) -> NotAvailableError:
    return NotAvailableError(f"{what} is not implemented yet (issue #{issue})")


def simulate(out_path: str | Path, *, matrix: int = 64, coils: int = 10, groups: int = 48,
             noise: float | None = None, seed: int = 0, phantom: str = "brain",
             callback: Callback | None = None) -> Path:
    """Simulate a digital subject scanned with the full acquisition (``spurig simulate``)."""
    raise _todo("spurig simulate", 3)


def simulate_cohort(out_dir: str | Path, *, subjects: int, split: str, matrix: int, coils: int,
                    groups: int, noise: float | None, seed: int,
                    callback: Callback | None = None) -> list[Path]:
    """Train/val/test subjects with different seeds (``spurig simulate-cohort``)."""
    raise _todo("spurig simulate-cohort", 3)


def recon_file(scan_path: str | Path, out_path: str | Path, *, method: str,
               groups: int | None = None, duration: str | None = None,
               model: str | Path | None = None, device: str = "cpu",
               save_iterations: bool = False, config: str | Path | None = None,
               callback: Callback | None = None) -> Any:
    """``spurig recon``: read, reconstruct, write the zarr result."""
    raise _todo("spurig recon", 4)


def match_file(result_path: str | Path, *, scan: str | Path | None = None, device: str = "cpu",
               callback: Callback | None = None) -> Any:
    """``spurig match``: add T1/T2/PD maps to a result store."""
    raise _todo("spurig match", 4)


def evaluate_file(result_path: str | Path, scan_path: str | Path, *,
                  json_path: str | Path | None = None) -> dict[str, Any]:
    """``spurig evaluate``."""
    raise _todo("spurig evaluate", 6)


def format_metrics(metrics: dict[str, Any]) -> str:
    """A printable table of :func:`evaluate_file`'s metrics."""
    raise _todo("metric tables", 6)


def evaluate_cohort(results_dir: str | Path, *, out_dir: str | Path,
                    callback: Callback | None = None) -> Path:
    """``spurig evaluate-cohort``."""
    raise _todo("spurig evaluate-cohort", 6)


def train(stage: str, config: str | Path, *, resume: bool = False,
          callback: Callback | None = None) -> Path:
    """``spurig train``."""
    raise _todo("spurig train", 5)


def bench(*, matrix: int, groups: int, device: str, scan: str | Path | None,
          methods: tuple[str, ...], out: str | Path | None,
          callback: Callback | None = None) -> str:
    """``spurig bench``."""
    raise _todo("spurig bench", 6)


def export(result_path: str | Path, out_dir: str | Path) -> list[Path]:
    """``spurig export``."""
    raise _todo("spurig export", 6)


def demo(out_dir: str | Path, *, tiny: bool = False, callback: Callback | None = None) -> str:
    """``spurig demo``."""
    raise _todo("spurig demo", 6)


def launch_gui(files: list[str]) -> None:
    """``spurig gui``: napari with the plugin's widgets docked and ``files`` opened."""
    raise _todo("spurig gui", 7)
