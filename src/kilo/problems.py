"""Problems with the cluster's objects (unreadable values, refused claims): each logged once,
their current number exported."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from kilo.model import Problem

log = logging.getLogger("kilo.agent")


class ProblemLog:
    def __init__(self, on_count: Callable[[int], None]) -> None:
        self._on_count = on_count
        self._seen: set[str] = set()

    def report(self, problems: Iterable[Problem]) -> list[Problem]:
        """Log the problems not logged before and export how many there are now; the new ones
        are returned."""
        problems = list(problems)
        self._on_count(len(problems))
        new = []
        for pr in problems:
            text = str(pr)
            if text not in self._seen:
                self._seen.add(text)
                new.append(pr)
                log.warning("ignoring a bad value: %s", pr)
        return new
