"""The plan's memos in one place: each keeps its last answer and what it was made of, so the
next plan with the same inputs (a plan after one Node changed, or after a check-in) answers
again without recomputing. Pure memoisation: equal inputs give the same answer, with or without
the memo; ``forget_all`` empties every memo (a benchmark's cold run, a test's fresh start).

``Last`` holds one entry, its key compared by equality. Wrapped in ``Same``, a tuple of objects
that are never changed once made (the cache's Nodes and Peers) is equal to another only when
every element is the same object: a pointer comparison per object, not a deep one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_FORGET: list[Callable[[], None]] = []


class Last(Generic[K, V]):
    """The last answer of one function and the key it was made for."""

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: tuple[K, V] | None = None
        _FORGET.append(self.clear)

    def get(self, key: K) -> V | None:
        """The answer kept for a key equal to ``key``, else None."""
        e = self._entry
        return e[1] if e is not None and e[0] == key else None

    def put(self, key: K, value: V) -> V:
        self._entry = (key, value)
        return value

    def clear(self) -> None:
        self._entry = None


class Same(tuple[object, ...]):
    """A tuple equal to another ``Same`` only when each element is the same object."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Same)
            and len(self) == len(other)
            and all(map(operator.is_, self, other))
        )

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__  # same elements: equal elements, the same hash


def on_forget(clear: Callable[[], None]) -> None:
    """Have ``forget_all`` call ``clear`` too (a memo of another shape)."""
    _FORGET.append(clear)


def forget_all() -> None:
    """Empty every memo: the next plan computes everything anew."""
    for clear in _FORGET:
        clear()
