"""Memory each reconstruction step needs, estimated from the shapes before anything is allocated.

Each estimate counts the large arrays a step must hold at once (complex64 = 8 bytes per value),
not the allocator's overhead, so it is a lower bound: a step refused here would certainly fail, and
one admitted may still need somewhat more.  The available memory is ``MemAvailable`` of
``/proc/meminfo`` (else ``SC_AVPHYS_PAGES · SC_PAGE_SIZE``), or the free memory of the CUDA device,
capped by the environment variable ``SPURIG_MEMORY_GB`` when it is set (to keep a job below a
budget on a shared machine).

The measured side lives here too (the one harness of ``spurig bench`` and ``benchmarks/``):
:func:`rss_mb` (resident memory now), :func:`peak_rss_mb` (the process's peak so far) and
:class:`PeakRSS` (the peak while a block runs, sampled by a thread).

=================  ==============================================================================
step               arrays counted
=================  ==============================================================================
reading            the declared dataset (``prod(shape) · itemsize``)
ESPIRiT            maps ``coils·x·y·z`` and the kernel autocorrelation ``coils²·(2w−1)·y·z``
gridding           k-space in and out, ``2·coils·groups·tr·samples``, and one int64 index per sample
gridded DC / LLR   gram kernel ``basis²·P`` with ``P`` the sampled grid points, at most one per
                   sample (``groups·tr·samples``), or the whole grid ``X·Y·Z`` (X: the method's
                   grid, 1.5× or LLR's 2×) when the samples could cover half of it (the kernels
                   are stored dense there), coil maps, two padded grids per coil batch
                   ``2·basis·X·Y·Z``, six FISTA iterates ``basis·x·y·z``, saved iterates
NUFFT              coil maps, the 2× upsampled fine grids ``2·basis·8·x·y·z``, k-space
=================  ==============================================================================
"""

from __future__ import annotations

import math
import os
import resource
import threading
from collections.abc import Sequence

from .errors import InputError

__all__ = [
    "PeakRSS",
    "available_bytes",
    "format_bytes",
    "peak_rss_mb",
    "recon_estimates",
    "require_bytes",
    "rss_mb",
]

_COMPLEX = 8  # bytes per complex64 value


def format_bytes(n: float) -> str:
    """``n`` bytes as ``"1.2 GB"`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


def available_bytes(device: str = "cpu") -> int:
    """Memory a step may use now on ``device`` (host RAM, or free CUDA memory).

    ``SPURIG_MEMORY_GB`` (a positive number) caps the value.
    """
    avail = _host_available()
    if str(device).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                avail = int(torch.cuda.mem_get_info()[0])
        except RuntimeError:  # pragma: no cover - driver trouble: fall back to the host figure
            pass
    cap = os.environ.get("SPURIG_MEMORY_GB")
    if cap:
        try:
            gb = float(cap)
        except ValueError:
            raise InputError(f"SPURIG_MEMORY_GB={cap!r} is not a number of GB") from None
        if not (math.isfinite(gb) and gb > 0):
            raise InputError(f"SPURIG_MEMORY_GB={cap!r} must be a positive number of GB")
        avail = min(avail, int(gb * 1e9))
    return avail


def require_bytes(need: float, what: str, *, device: str = "cpu") -> None:
    """Raise one InputError line when ``need`` bytes exceed :func:`available_bytes`.

    Parameters
    ----------
    need : float
        Estimated bytes.
    what : str
        The step and its shapes, e.g. ``"ESPIRiT coil maps (64 coils, 512×512×512)"``.
    """
    have = available_bytes(device)
    if need > have:
        where = "GPU memory" if str(device).startswith("cuda") else "memory"
        raise InputError(
            f"{what} needs about {format_bytes(need)} but only {format_bytes(have)} of {where} "
            "is available (use fewer groups or coils, a smaller matrix, or a larger machine)"
        )


def _grid(n: int, oversampling: float) -> int:
    from .operators.grid import grid_size

    return int(grid_size(int(n), float(oversampling)))


def recon_estimates(
    *,
    method: str,
    matrix: Sequence[int],
    coils: int,
    groups: int,
    tr: int,
    samples: int,
    basis: int = 5,
    espirit: bool = False,
    oversampling: float | None = None,
    saved_iterates: int = 0,
    sparse: bool | None = None,
) -> list[tuple[str, float]]:
    """Estimated peak bytes of each step of ``reconstruct`` (see the module table).

    Parameters
    ----------
    oversampling : float, optional
        Grid oversampling of the gridded methods; ``None``: the method's own
        (:attr:`~spurig_core.recon.methods.Method.grid_oversampling`), else the default
        :data:`~spurig_core.operators.grid.GRID_OVERSAMPLING`.
    sparse : bool, optional
        The data term's ``[encoding] sparse``: ``None`` (the default rule of the table above),
        ``True`` (kernels at the sampled points) or ``False`` (kernels on the whole grid).

    Returns
    -------
    list of (str, float)
        ``(step description, bytes)`` in the order the steps run.
    """
    from .operators.encoding import EncodingConfig
    from .recon.methods import METHODS, method_gridding

    if oversampling is None:  # the method's own grid (LLR's 2×), else the default
        from .operators.grid import GRID_OVERSAMPLING

        own = method_gridding(method) if method in METHODS else {}
        oversampling = float(own.get("grid_oversampling", GRID_OVERSAMPLING))
    x, y, z = (int(v) for v in matrix)
    n = x * y * z
    shape = f"{x}×{y}×{z}"
    samples_total = float(coils) * groups * tr * samples
    steps: list[tuple[str, float]] = []
    if espirit:
        w2 = 7  # 2·kernel_width − 1 with the default kernel width 4
        need = _COMPLEX * (coils * n + coils * coils * w2 * y * z)
        steps.append((f"ESPIRiT coil maps ({coils} coils, {shape})", need))
    maps = _COMPLEX * coils * n
    iterates = _COMPLEX * basis * n * (6 + saved_iterates)
    if method in METHODS and METHODS[method].data_term == "nufft":
        fine = 2 * basis * _COMPLEX * 8 * n
        steps.append(
            (
                f"NUFFT encoding ({coils} coils, {basis} coefficients, {shape})",
                maps + fine + _COMPLEX * samples_total + iterates,
            )
        )
        return steps
    grid = _grid(x, oversampling) * _grid(y, oversampling) * _grid(z, oversampling)
    steps.append(
        (
            f"iGROG gridding ({coils} coils × {groups} groups × {tr} TRs × {samples} samples)",
            2 * _COMPLEX * samples_total + 8 * groups * tr * samples,
        )
    )
    # the kernels are kept at the sampled grid points only while they are under half the grid
    # (EncodingConfig.sparse_below): at most one point per sample (220³ on LLR's 2× grid: 10.6 M
    # of 85 M points, 2.1 GB instead of 17 GB)
    points = min(float(groups) * tr * samples, float(grid))
    if sparse is None:
        sparse = points < EncodingConfig.sparse_below * grid
    stored = points if sparse else float(grid)
    gram = _COMPLEX * basis * basis * stored + 2 * _COMPLEX * basis * grid
    steps.append(
        (
            f"gridded data consistency ({coils} coils, {basis} coefficients, {shape})",
            gram + maps + iterates + _COMPLEX * samples_total,
        )
    )
    return steps


# ----------------------------------------------------------------------------------------------
# measured memory (benchmarks)
# ----------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Resident memory of this process now, in MiB (``/proc/self/statm``; 0 where absent)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started, in MiB (``ru_maxrss``, Linux KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakRSS:
    """Peak resident memory (MiB) while a ``with`` block runs, sampled by a thread.

    Unlike :func:`peak_rss_mb` it sees a block's own peak after a larger earlier one.

    Parameters
    ----------
    interval_s : float
        Sampling period in seconds; a shorter spike than this may be missed.

    Attributes
    ----------
    base, peak : float
        Resident MiB at entry and the largest sample (including one at exit).
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = float(interval_s)
        self.base = self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        """Record the resident memory now as ``base`` and start the sampling thread."""
        self.base = self.peak = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        """Stop the sampling thread and take a last sample into ``peak``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def extra(self) -> float:
        """MiB above the resident memory at entry (``peak − base``)."""
        return self.peak - self.base
