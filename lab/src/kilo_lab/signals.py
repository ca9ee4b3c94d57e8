"""Turning stop signals into exceptions, in the process that asked for it only.

pyroute2 forks helper processes to enter network namespaces and stops them with SIGTERM; they
inherit Python's signal handlers. A handler that unwinds into a lab's teardown must therefore
act only in the process that installed it; in a forked child the signal does what it would have
done by default.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any


def raise_on(
    signals: Iterable[signal.Signals], exc: type[BaseException]
) -> dict[signal.Signals, Any]:
    """From now on each of ``signals`` raises ``exc(<signal name>)`` in this process; returns the
    handlers it replaced."""
    owner = os.getpid()

    def handler(signum: int, _frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise exc(signal.Signals(signum).name)

    return {s: signal.signal(s, handler) for s in signals}
