"""The project's exceptions.

A :class:`SkiptuneError` is a *user* error: its message names the bad value, the expected form and
what to do. The CLI prints it as one line on stderr and exits non-zero, without a traceback.
"""

from __future__ import annotations


class SkiptuneError(Exception):
    """A user-facing error: bad input, missing file, mismatched setting."""


class EvaluationError(SkiptuneError):
    """An evaluation of one setting failed (NaN/inf samples, out of memory); the trial is failed."""
