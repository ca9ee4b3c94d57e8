"""The cluster as the agent last read it: each Node and Peer object translated once per
resourceVersion (translation is pure, so a cached result is the result), and whether anything
the plan depends on changed since the last read (a check-in that only moves ``last-seen`` does
not count: readiness is judged from the times separately)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from kilo.model import Node, Peer, Problem
from kilo.plan import ClusterView
from kilo.translate import node_from_object, peer_from_object

Obj = dict[str, Any]
_Key = tuple[str, str]  # (name, resourceVersion)


def _key(obj: Obj) -> _Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("name")), str(meta.get("resourceVersion", ""))


def _timeless(n: Node) -> Node:
    return replace(n, last_seen=0)


class ObjectCache:
    def __init__(self, topology_label: str) -> None:
        self.topology_label = topology_label
        self._nodes: dict[_Key, tuple[Node, list[Problem]]] = {}
        self._peers: dict[_Key, tuple[Peer | None, list[Problem]]] = {}
        self.changed = True  # whether the last read found a change that matters to the plan

    def read(self, node_objs: Iterable[Obj], peer_objs: Iterable[Obj]) -> ClusterView:
        """The objects as model values (by name) and every value that could not be read.
        Entries of objects no longer listed are dropped; ``changed`` says whether anything but
        nodes' check-in times differs from the previous read."""
        before = {n.name: (n, pr) for n, pr in self._nodes.values()}
        changed = False
        problems: list[Problem] = []
        nodes: dict[str, Node] = {}
        node_cache: dict[_Key, tuple[Node, list[Problem]]] = {}
        for obj in node_objs:
            k = _key(obj)
            hit = self._nodes.get(k)
            if hit is None:
                hit = node_from_object(obj, self.topology_label)
                old = before.get(hit[0].name)
                if old is None or old[1] != hit[1] or _timeless(old[0]) != _timeless(hit[0]):
                    changed = True
            node_cache[k] = hit
            nodes[hit[0].name] = hit[0]
            problems += hit[1]
        peers: dict[str, Peer] = {}
        peer_cache: dict[_Key, tuple[Peer | None, list[Problem]]] = {}
        for obj in peer_objs:
            k = _key(obj)
            phit = self._peers.get(k)
            if phit is None:
                phit = peer_from_object(obj)
                changed = True
            peer_cache[k] = phit
            if phit[0] is not None:
                peers[phit[0].name] = phit[0]
            problems += phit[1]
        if len(node_cache) != len(self._nodes) or set(peer_cache) != set(self._peers):
            changed = True
        self._nodes, self._peers = node_cache, peer_cache
        self.changed = changed
        return ClusterView(nodes, peers, tuple(problems))
