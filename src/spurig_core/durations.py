"""The one table of named scan durations and the rules that map durations and groups.

Every command, the pipeline, LLR's thresholds, the report, the figures and the napari plugin read
durations from here.  The module imports nothing heavy (no numpy, no torch), so the CLI's argument
parser and the plugin's widgets can use it at import time.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import InputError

__all__ = [
    "DURATIONS",
    "MODEL_DURATIONS",
    "SPEC_DURATIONS",
    "duration_name",
    "groups_for",
    "nearest_duration",
    "resolve_groups",
]

#: Scan durations and the number of leading groups that make them, longest first: the paper's
#: (2.4; SPEC §2: 6 min, 2 min, 1 min, 30 s) and 15 s (2 groups), which issue 13 adds because at
#: 48³ the paper's durations are ≈ 21× less undersampled than at 220³ (README, "How undersampled
#: is the 48³ cohort?"): 15 s is 2.4× undersampled per coefficient at 48³, and 7.5 s (1 group,
#: added in session 21) 4.9×, near the paper's 2-min regime (6.4×).
DURATIONS: dict[str, int] = {"6min": 48, "2min": 16, "1min": 8, "30s": 4, "15s": 2, "7.5s": 1}

#: The durations SPEC §2 names (``spurig recon --duration``'s contract); :data:`DURATIONS` adds to
#: them and never changes one.
SPEC_DURATIONS: tuple[str, ...] = ("6min", "2min", "1min", "30s")

#: The durations of the shipped models and of the paper's comparisons (6 min is the reference),
#: longest first: the default durations of ``recon-cohort``, ``prepare-training`` and the
#: plugin's training widget.
MODEL_DURATIONS: tuple[str, ...] = ("2min", "1min", "30s")


def groups_for(duration: str) -> int:
    """Leading groups of a named duration (a key of :data:`DURATIONS`, e.g. ``"30s"``)."""
    try:
        return DURATIONS[duration]
    except KeyError:
        raise InputError(
            f"unknown duration {duration!r}: choose one of {', '.join(DURATIONS)}"
        ) from None


def duration_name(groups: int) -> str | None:
    """Return the named duration of exactly ``groups`` groups, else ``None`` (no nearest rule)."""
    return next((name for name, g in DURATIONS.items() if g == int(groups)), None)


def nearest_duration(groups: int, among: Iterable[str] | None = None) -> str:
    """Return the named duration with group count nearest ``groups`` (the one rule of the engine).

    "Nearest" is the absolute difference of group counts; a tie goes to the longer duration
    (12 groups → ``"2min"``, 6 → ``"1min"``).  The pipeline picks the LLR threshold and the
    shipped model with it; :meth:`~spurig_core.recon.llr.LLRConfig.threshold_for` too.

    Parameters
    ----------
    groups : int
        Number of leading groups (≥ 1).
    among : iterable of str, optional
        The duration names to choose from (default: all of :data:`DURATIONS`).
    """
    names = [d for d in DURATIONS if among is None or d in set(among)]
    if not names:
        raise InputError("no named duration to choose from")
    return min(names, key=lambda d: (abs(DURATIONS[d] - groups), -DURATIONS[d]))


def resolve_groups(available: int, groups: int | None, duration: str | None) -> int:
    """Return the number of leading groups to reconstruct: ``groups``, or ``duration``'s, or all.

    Parameters
    ----------
    available : int
        Groups in the scan.
    groups : int, optional
    duration : str, optional
        A named duration (:func:`groups_for`); not together with ``groups``.

    Raises
    ------
    InputError
        Both given, an unknown duration, or more groups than the scan has (or fewer than 1).
    """
    if groups is not None and duration is not None:
        raise InputError("give either groups or duration, not both")
    if duration is not None:
        groups = groups_for(duration)
    if groups is None:
        return available
    if not 1 <= groups <= available:
        raise InputError(f"cannot use {groups} groups: the scan has {available}")
    return groups
