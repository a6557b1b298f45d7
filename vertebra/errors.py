"""The error vertebra raises for bad input, in one line, instead of a traceback.

:class:`VertebraError` subclasses :class:`drrkit.errors.DrrkitError`, so code that
catches drrkit's error (the CLIs, callers of earlier versions) catches vertebra's too.
"""

from __future__ import annotations

from drrkit.errors import DrrkitError


class VertebraError(DrrkitError):
    """Bad input or state in the labelling, training or data code, said in one line."""
