"""Exceptions that the command line and the GUI turn into one clear message.

Every error a user can cause (a missing or truncated file, the wrong schema, bad shapes, NaN/Inf,
an unknown option, a checkpoint that does not fit, too little memory) is raised as an
:class:`InputError` whose message names the problem in one line.  ``spurig`` prints it to stderr and
exits with status 2; the napari plugin shows it as a notification.
"""

from __future__ import annotations

__all__ = ["Cancelled", "InputError", "NotAvailableError", "SpurigError"]


class SpurigError(Exception):
    """Base class of every error spurig raises on purpose.

    Attributes
    ----------
    abandon_process : bool
        True where the process cannot shut down cleanly after the error (a distributed run whose
        peers are gone: the collective library's threads abort the interpreter's exit with a
        second message).  The command line then leaves without running exit handlers, once its
        one line is printed and its streams flushed; outputs are already complete or absent
        (every write is atomic).
    """

    abandon_process = False


class InputError(SpurigError, ValueError):
    """Bad user input: a file, an option, a shape or a value that cannot be used.

    The message is one line that names the offending file, field or option.
    """


class NotAvailableError(SpurigError):
    """A capability that this build does not have (e.g. CUDA requested on a CPU machine)."""


class Cancelled(SpurigError):
    """Raised from inside a progress callback to stop long work at the next safe point."""
