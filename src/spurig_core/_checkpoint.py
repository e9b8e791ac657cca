"""Helpers of :func:`spurig_core.io.save_checkpoint` / :func:`~spurig_core.io.load_checkpoint`.

Checkpoints hold plain data only (dicts, lists, tuples, str, int, float, bool, ``None`` and
tensors), so that ``torch.load(weights_only=True)`` reads every file spurig writes without calling
any code; a file that needs more is refused, never loaded with ``weights_only=False``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["all_finite", "check_plain", "non_finite", "refusal_reason"]

_PLAIN_SCALARS = (str, int, float, bool, type(None))
_PLAIN_CONTAINERS = (dict, list, tuple, OrderedDict)
#: Markers of ``weights_only`` refusals in torch's messages (as opposed to a broken file).
_REFUSAL = re.compile(
    r"GLOBAL ([\w.]+)|Unsupported operand \S+|Can only (?:create|build|append|extend)[^.`]*"
    r"|call reduce for[^.]*|persistent id"
)


def check_plain(obj: Any, where: str = "") -> None:
    """Raise ``TypeError`` (a programming error) when ``obj`` holds anything but plain data.

    Numpy scalars and arrays, dataclasses, named tuples, sets and other classes are not plain:
    ``torch.load(weights_only=True)`` would refuse them.

    Parameters
    ----------
    obj : object
        A checkpoint dictionary (or a part of one).
    where : str
        Dotted path of ``obj`` in the checkpoint (for the message).
    """
    if isinstance(obj, torch.Tensor | torch.dtype | torch.Size) or type(obj) in _PLAIN_SCALARS:
        return
    if type(obj) not in _PLAIN_CONTAINERS:
        raise TypeError(
            f"checkpoint entry {where or '<root>'}: {type(obj).__name__} is not plain data "
            "(store dicts, lists, str, int, float, bool, None and tensors only)"
        )
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"checkpoint entry {where or '<root>'}: key {k!r} is not str/int")
            check_plain(v, f"{where}.{k}" if where else str(k))
    else:
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of a floating or complex tensor is finite (no NaN, no Inf).

    A NaN or an Inf anywhere makes the sum NaN or infinite, so a finite sum settles it in one
    reduction (15× faster than ``isfinite(t).all()`` on a scan's k-space, issue #14); only a
    sum that overflows or is not finite is checked element by element.
    """
    if not t.numel():
        return True
    x = torch.view_as_real(t) if t.is_complex() else t
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def non_finite(obj: Any, where: str = "") -> str | None:
    """Dotted path of the first floating or complex tensor in ``obj`` with NaN or Inf, or None."""
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not all_finite(obj):
            return where
        return None
    items: Iterator[tuple[Any, Any]]
    if isinstance(obj, dict):
        items = iter(obj.items())
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        bad = non_finite(v, f"{where}.{k}" if where else str(k))
        if bad is not None:
            return bad
    return None


def refusal_reason(message: str, head: bytes) -> str | None:
    """Short reason of a ``weights_only`` refusal in torch's message, or None (a broken file).

    Parameters
    ----------
    message : str
        The ``UnpicklingError``'s text.
    head : bytes
        The file's first bytes: an unsupported pickle operand is a refusal only in a zip archive
        (torch's format) or a pickle stream (``0x80``), elsewhere it is just a file of another kind.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", message)
    m = _REFUSAL.search(text)
    if m is None:
        return None
    if m.group(0).startswith("Unsupported operand") and not head.startswith((b"PK", b"\x80")):
        return None
    return f"global {m.group(1)} is not allowed" if m.group(1) else m.group(0).strip()
