"""The cluster as the agent knows it: each Node and Peer object translated once per
resourceVersion (translation is pure, so a cached result is the result), kept current either by
a full read or one watch event at a time, and whether anything the plan depends on changed (a
check-in that only moves ``last-seen`` does not count: readiness is judged from the times
separately, by the caller).

A Node event that differs from the object before it only in its resourceVersion and its
``last-seen`` annotation (every check-in, 33 a second at 1,000 nodes) is not translated again:
the cached Node gets the new time, which is what translating the whole object would give
(``tests/unit/test_cache.py`` checks it against ``node_from_object``). The cache keeps each
object it was given to compare the next version with, so an object must not be changed once
given (the Kubernetes backend decodes a new one for every event, as an informer does). An
object that cannot be translated at all becomes a problem, never an exception."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from kilo.model import Node, Peer, Problem
from kilo.plan import ClusterView
from kilo.translate import (
    LAST_SEEN,
    node_from_object,
    object_name,
    peer_from_object,
    read_last_seen,
)

Obj = dict[str, Any]


def _meta(obj: Obj) -> tuple[str, str]:
    if not isinstance(obj, dict):
        return object_name(obj), ""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return object_name(obj), str(meta.get("resourceVersion", ""))


def _timeless(n: Node) -> Node:
    return replace(n, last_seen=0)


_LAST_SEEN_FIELD = f"metadata.annotations[{LAST_SEEN}]"


def _moved_check_in(old: Obj, new: Obj) -> int | None:
    """The new check-in time when ``new`` differs from ``old`` in nothing but the
    resourceVersion and a ``last-seen`` that reads as Kilo reads it; else None."""
    om, nm = old.get("metadata"), new.get("metadata")
    if not isinstance(om, dict) or not isinstance(nm, dict) or old.keys() != new.keys():
        return None
    if any(v != old[k] for k, v in new.items() if k != "metadata"):
        return None
    if om.keys() != nm.keys():
        return None
    if any(v != om[k] for k, v in nm.items() if k not in ("resourceVersion", "annotations")):
        return None
    oa, na = om.get("annotations"), nm.get("annotations")
    if not isinstance(oa, dict) or not isinstance(na, dict) or oa.keys() != na.keys():
        return None
    if any(v != oa[k] for k, v in na.items() if k != LAST_SEEN):
        return None
    seen = na.get(LAST_SEEN)
    if not isinstance(seen, str):
        return None
    try:
        return read_last_seen(seen)  # exactly translate's reading of it
    except ValueError:
        return None  # a problem to report: the full translation says which


def _unreadable(kind: str, name: str, err: Exception) -> Problem:
    return Problem(kind, name, "object", "", f"could not be read: {type(err).__name__}: {err}")


@dataclass(frozen=True, slots=True)
class _Entry:
    version: str
    value: Node | Peer | None
    problems: tuple[Problem, ...]
    raw: Obj | None = None  # the object it was read from (the same dict the backend holds)


class ObjectCache:
    def __init__(self, topology_label: str) -> None:
        self.topology_label = topology_label
        self._nodes: dict[str, _Entry] = {}
        self._peers: dict[str, _Entry] = {}
        self.changed = True  # whether the last read found a change that matters to the plan

    # -- updating

    def read(self, node_objs: Iterable[Obj], peer_objs: Iterable[Obj]) -> ClusterView:
        """Replace what is known by a full listing; ``changed`` says whether anything but
        nodes' check-in times differs from before."""
        changed = False
        nodes: dict[str, _Entry] = {}
        for obj in node_objs:
            name, entry, relevant = self._node(obj)
            nodes[name] = entry
            changed |= relevant
        peers: dict[str, _Entry] = {}
        for obj in peer_objs:
            name, entry, relevant = self._peer(obj)
            peers[name] = entry
            changed |= relevant
        changed |= nodes.keys() != self._nodes.keys() or peers.keys() != self._peers.keys()
        self._nodes, self._peers = nodes, peers
        self.changed = changed
        return self.view()

    def update(self, kind: str, etype: str, obj: Obj) -> str | None:
        """One watch event (``etype`` ADDED, MODIFIED or DELETED). Returns the name of a node
        whose object changed only in its check-in time (the caller judges its readiness), or
        None; ``changed`` says whether anything else the plan depends on changed."""
        table = self._nodes if kind == "Node" else self._peers
        name, version = _meta(obj)
        if etype == "DELETED":
            self.changed = table.pop(name, None) is not None
            return None
        old = table.get(name)
        if old is not None and old.version == version:
            self.changed = False
            return None
        if kind == "Node" and old is not None and isinstance(old.value, Node) and old.raw:
            seen = _moved_check_in(old.raw, obj)
            if seen is not None and all(p.field != _LAST_SEEN_FIELD for p in old.problems):
                table[name] = _Entry(version, old.value.with_last_seen(seen), old.problems, obj)
                self.changed = False
                return name
        _, entry, relevant = self._node(obj) if kind == "Node" else self._peer(obj)
        table[name] = entry
        self.changed = relevant
        return name if kind == "Node" and not relevant else None

    def check_in(self, obj: Obj, old: Obj | None, seen: str) -> str | None:
        """A Node event the backend proved to be ``old`` with a new resourceVersion and the
        ``last-seen`` value ``seen``, nothing else (``Event.check_in``): the node's name if it
        is taken as such (the cache read ``old`` itself, cleanly), else None, and the event
        must go through ``update``. Never changes anything the plan depends on."""
        name, version = _meta(obj)
        entry = self._nodes.get(name)
        if (
            entry is None
            or old is None
            or entry.raw is not old
            or not isinstance(entry.value, Node)
            or any(p.field == _LAST_SEEN_FIELD for p in entry.problems)
        ):
            return None
        try:
            when = read_last_seen(seen)  # exactly translate's reading of it
        except ValueError:
            return None  # a problem to report: the full translation says which
        self._nodes[name] = _Entry(version, entry.value.with_last_seen(when), entry.problems, obj)
        self.changed = False
        return name

    def _node(self, obj: Obj) -> tuple[str, _Entry, bool]:
        name, version = _meta(obj)
        old = self._nodes.get(name)
        if old is not None and old.version == version:
            return name, old, False
        try:
            node, problems = node_from_object(obj, self.topology_label)
        except Exception as err:  # noqa: BLE001 - reading never raises: a problem instead
            entry = _Entry(version, None, (_unreadable("Node", name, err),), obj)
            return name, entry, old is None or old.problems != entry.problems
        entry = _Entry(version, node, tuple(problems), obj)
        relevant = (
            old is None
            or old.problems != entry.problems
            or not isinstance(old.value, Node)
            or node is None
            or _timeless(old.value) != _timeless(node)
        )
        return name, entry, relevant

    def _peer(self, obj: Obj) -> tuple[str, _Entry, bool]:
        name, version = _meta(obj)
        old = self._peers.get(name)
        if old is not None and old.version == version:
            return name, old, False
        try:
            peer, problems = peer_from_object(obj)
        except Exception as err:  # noqa: BLE001 - reading never raises: a problem instead
            return name, _Entry(version, None, (_unreadable("Peer", name, err),), obj), True
        return name, _Entry(version, peer, tuple(problems), obj), True

    # -- reading

    def node(self, name: str) -> Node | None:
        entry = self._nodes.get(name)
        return entry.value if entry is not None and isinstance(entry.value, Node) else None

    def view(self) -> ClusterView:
        """The objects as model values (by name) and every value that could not be read."""
        nodes = {e.value.name: e.value for e in self._nodes.values() if isinstance(e.value, Node)}
        peers = {e.value.name: e.value for e in self._peers.values() if isinstance(e.value, Peer)}
        problems: list[Problem] = []
        for e in (*self._nodes.values(), *self._peers.values()):
            problems += e.problems
        return ClusterView(nodes, peers, tuple(problems))
