"""Kilo's check-ins off a Node watch stream without decoding them.

In Kilo's liveness every node patches its ``last-seen`` annotation every 30 s and every agent
is told: 2,000 watch events a minute at 1,000 nodes, each a Node of several kilobytes of JSON
(status, managedFields) that differs from the node's previous event only in its
resourceVersion, ``last-seen`` and the managedFields' times. ``CheckIns`` recognises such a
line from its bytes: with the values of every ``"resourceVersion"``, ``"kilo.squat.ai/last-seen"``
and ``"time"`` member blanked, it is byte for byte the node's previous line (compared by a
128-bit BLAKE2b digest, so nothing of the line is kept; the values are found with
``bytes.find``, no regular expression walks the line). Only then is the event taken from the
previous decoded object with the new resourceVersion and ``last-seen``; anything else (another
change, an odd line, a line the filter never saw) is decoded in full as before.

Which members those blanked values are is proven once, when a line is learnt (after it was
decoded in full): the line must hold exactly one resourceVersion and one ``last-seen`` value,
and the same line with other values in every blanked place, decoded and reduced (``lean``),
must differ from the object in exactly the resourceVersion and the ``last-seen`` annotation.
A ``"time"`` that is a label, a resourceVersion that is a Kilo annotation, a second
``last-seen`` (a label of that name) fail that test and the node's lines are always decoded.
Since a value matched here is printable ASCII without quote or backslash, what it decodes to is
its bytes, and where it sits in the document does not depend on it. Never raises on any input.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from kilo.backend.objects import lean
from kilo.translate import LAST_SEEN

Obj = dict[str, Any]

_KEYS = (b'"resourceVersion":"', b'"kilo.squat.ai/last-seen":"', b'"time":"')
_NAME = re.compile(rb'"metadata":\{"name":"([^"\\]{1,253})"')
_MODIFIED = b'{"type":"MODIFIED","object":{'
_RV, _SEEN = 0, 1
_MAX_VALUE = 256
_PLAIN = re.compile(rb"[ !#-\[\]-~]*")  # printable ASCII but quote and backslash


def _spans(line: bytes) -> list[tuple[int, int, int]]:
    """(start, end, which key) of every blanked value: a string of at most 256 bytes of
    printable ASCII without quote or backslash after one of the keys; in order."""
    out = []
    for which, key in enumerate(_KEYS):
        at = line.find(key)
        while at >= 0:
            start = at + len(key)
            end = line.find(b'"', start, start + _MAX_VALUE + 1)
            if end >= 0 and _PLAIN.fullmatch(line, start, end):
                out.append((start, end, which))
            at = line.find(key, start)
    out.sort()
    return out


def _digest(line: bytes, spans: list[tuple[int, int, int]]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    at = 0
    for start, end, _ in spans:
        h.update(line[at:start])
        at = end
    h.update(line[at:])
    return h.digest()


def _values(line: bytes, spans: list[tuple[int, int, int]]) -> tuple[str, str] | None:
    """The line's one resourceVersion and one last-seen, or None."""
    rvs = [line[s:e] for s, e, w in spans if w == _RV]
    seen = [line[s:e] for s, e, w in spans if w == _SEEN]
    if len(rvs) != 1 or len(seen) != 1:
        return None
    try:
        return rvs[0].decode(), seen[0].decode()
    except UnicodeDecodeError:
        return None


def _name(line: bytes) -> str | None:
    m = _NAME.search(line, 0, 512)
    if m is None:
        return None
    try:
        return m.group(1).decode()
    except UnicodeDecodeError:
        return None


def with_check_in(obj: Obj, rv: str, seen: str) -> Obj:
    """``obj`` (a lean Node) with another resourceVersion and ``last-seen``; ``obj`` itself is
    not changed."""
    meta = dict(obj["metadata"])
    meta["resourceVersion"] = rv
    meta["annotations"] = {**meta["annotations"], LAST_SEEN: seen}
    return {**obj, "metadata": meta}


def _other(value: bytes, which: int) -> bytes:
    if which == _RV:
        return value + b"1"
    if which == _SEEN:
        return value + b"0"
    return b"1999-01-01T00:00:00Z" if value != b"1999-01-01T00:00:00Z" else b"1998"


def _probe(line: bytes, spans: list[tuple[int, int, int]]) -> bytes:
    """``line`` with another value in every blanked place."""
    parts, at = [], 0
    for start, end, which in spans:
        parts += [line[at:start], _other(line[start:end], which)]
        at = end
    parts.append(line[at:])
    return b"".join(parts)


class CheckIns:
    """The last learnt line of each Node: its digest, resourceVersion and name."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[bytes, str]] = {}  # name -> (digest, resourceVersion)

    def __len__(self) -> int:
        return len(self._known)

    def clear(self) -> None:
        self._known.clear()

    def forget(self, name: str) -> None:
        self._known.pop(name, None)

    def match(self, line: bytes) -> tuple[str, str, str, str] | None:
        """(name, previous resourceVersion, new resourceVersion, new last-seen) when ``line`` is
        a check-in of a learnt node; else None (decode it)."""
        if not line.startswith(_MODIFIED):
            return None
        name = _name(line)
        known = self._known.get(name) if name is not None else None
        if known is None or name is None:
            return None
        spans = _spans(line)
        values = _values(line, spans)
        if values is None or _digest(line, spans) != known[0]:
            return None
        return name, known[1], values[0], values[1]

    def matched(self, name: str, rv: str) -> None:
        """The event ``match`` found was taken: its resourceVersion is the node's now."""
        known = self._known.get(name)
        if known is not None:
            self._known[name] = (known[0], rv)

    def learn(self, line: bytes, obj: Obj) -> None:
        """``line`` was decoded in full to the lean Node ``obj``: remember it if the next
        check-ins can be recognised from it (see the module), else forget the node."""
        name = obj["metadata"].get("name")
        if not isinstance(name, str):
            return
        self._known.pop(name, None)
        if not line.startswith(_MODIFIED) or _name(line) != name:
            return
        spans = _spans(line)
        values = _values(line, spans)
        meta = obj["metadata"]
        annotations = meta.get("annotations")
        if (
            values is None
            or meta.get("resourceVersion") != values[0]
            or not isinstance(annotations, dict)
            or annotations.get(LAST_SEEN) != values[1]
        ):
            return
        try:
            event = json.loads(_probe(line, spans))
            moved = lean(event["object"], "Node", str(obj.get("apiVersion", "v1")))
        except (ValueError, TypeError, KeyError, RecursionError):
            return
        if moved != with_check_in(obj, values[0] + "1", values[1] + "0"):
            return
        self._known[name] = (_digest(line, spans), values[0])
