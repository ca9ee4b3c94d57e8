"""When the agent rotates its WireGuard key: on demand (``kg`` takes SIGUSR1) and every
``--key-rotation-period`` (0: never). Only the timing lives here; the steps (write the key
file, publish the new public key, set it on the device, roll back on a failure) are the
agent's (``Agent.rotate_key``)."""

from __future__ import annotations

import threading


class RotationSchedule:
    """A rotation is due when one was asked for or the period has passed since the last one
    (monotonic times; the agent's loop waits until ``due()``, a timer, never a poll)."""

    def __init__(self, period: float, now: float) -> None:
        if period < 0:
            raise ValueError(f"invalid key rotation period {period}")
        self.period = period
        self._asked = threading.Event()
        self._next = now + period if period > 0 else float("inf")

    def ask(self) -> None:
        """A rotation as soon as the loop wakes (safe from any thread)."""
        self._asked.set()

    def due(self) -> float:
        """When the next rotation is due (monotonic; ``inf``: none is)."""
        return float("-inf") if self._asked.is_set() else self._next

    def is_due(self, now: float) -> bool:
        return self._asked.is_set() or now >= self._next

    def done(self, now: float) -> None:
        """A rotation was attempted (done or rolled back): the next one a period from now."""
        self._asked.clear()
        self._next = now + self.period if self.period > 0 else float("inf")
