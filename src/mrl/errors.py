"""Exceptions raised by mrl.

User errors (bad arguments, bad files) are :class:`MRLError`, a ``ValueError``; the CLI turns
them into one ``Error: ...`` line and exit status 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MRLError(ValueError):
    """A user error: the message names the argument, the value and what is allowed."""


class NotFittedError(MRLError, AttributeError):
    """An estimator was used before ``fit`` (scikit-learn's convention)."""


class MissingExtraError(MRLError, ImportError):
    """An optional part of mrl was used without its extra installed; the message names the extra."""
