"""The lab's error."""

from __future__ import annotations


class LabError(RuntimeError):
    """The lab could not be brought up (or a helper failed); the message says why."""
