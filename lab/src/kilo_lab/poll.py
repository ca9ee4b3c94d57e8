"""Waiting for a condition: the lab's one polling loop."""

from __future__ import annotations

import time
from collections.abc import Callable


class Timeout(AssertionError):
    """A condition did not hold in time; the message names it (and what was last seen)."""


def wait_until(
    what: str,
    cond: Callable[[], bool],
    timeout: float,
    interval: float = 0.2,
    *,
    error: type[BaseException] = Timeout,
    detail: Callable[[], str] | None = None,
) -> float:
    """Call ``cond`` until it returns true; the seconds it took. After ``timeout`` raise
    ``error("<what>: not within <timeout> s[ (<detail()>)]")``. Exceptions of ``cond`` propagate
    (a condition that can fail transiently catches its own)."""
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            extra = detail() if detail is not None else ""
            raise error(f"{what}: not within {timeout:.0f} s" + (f" ({extra})" if extra else ""))
        time.sleep(interval)
