"""The cluster as the agent knows it: each Node and Peer object translated once per
resourceVersion (translation is pure, so a cached result is the result), kept current either by
a full read or one watch event at a time, and whether anything the plan depends on changed (a
check-in that only moves ``last-seen`` does not count: readiness is judged from the times
separately, by the caller)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from kilo.model import Node, Peer, Problem
from kilo.plan import ClusterView
from kilo.translate import node_from_object, peer_from_object

Obj = dict[str, Any]


def _meta(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("name")), str(meta.get("resourceVersion", ""))


def _timeless(n: Node) -> Node:
    return replace(n, last_seen=0)


@dataclass(frozen=True)
class _Entry:
    version: str
    value: Node | Peer | None
    problems: tuple[Problem, ...]


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
        _, entry, relevant = self._node(obj) if kind == "Node" else self._peer(obj)
        table[name] = entry
        self.changed = relevant
        return name if kind == "Node" and not relevant else None

    def _node(self, obj: Obj) -> tuple[str, _Entry, bool]:
        name, version = _meta(obj)
        old = self._nodes.get(name)
        if old is not None and old.version == version:
            return name, old, False
        node, problems = node_from_object(obj, self.topology_label)
        entry = _Entry(version, node, tuple(problems))
        relevant = (
            old is None
            or old.problems != entry.problems
            or not isinstance(old.value, Node)
            or _timeless(old.value) != _timeless(node)
        )
        return node.name, entry, relevant

    def _peer(self, obj: Obj) -> tuple[str, _Entry, bool]:
        name, version = _meta(obj)
        old = self._peers.get(name)
        if old is not None and old.version == version:
            return name, old, False
        peer, problems = peer_from_object(obj)
        return name, _Entry(version, peer, tuple(problems)), True

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
