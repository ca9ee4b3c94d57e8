"""The cluster as the agent last read it: each Node and Peer object translated once per
resourceVersion (translation is pure, so a cached result is the result)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kilo.model import Node, Peer, Problem
from kilo.plan import ClusterView
from kilo.translate import node_from_object, peer_from_object

Obj = dict[str, Any]
_Key = tuple[str, str]  # (name, resourceVersion)


def _key(obj: Obj) -> _Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("name")), str(meta.get("resourceVersion", ""))


class ObjectCache:
    def __init__(self, topology_label: str) -> None:
        self.topology_label = topology_label
        self._nodes: dict[_Key, tuple[Node, list[Problem]]] = {}
        self._peers: dict[_Key, tuple[Peer | None, list[Problem]]] = {}

    def read(self, node_objs: Iterable[Obj], peer_objs: Iterable[Obj]) -> ClusterView:
        """The objects as model values (by name) and every value that could not be read.
        Entries of objects no longer listed are dropped."""
        problems: list[Problem] = []
        nodes: dict[str, Node] = {}
        node_cache: dict[_Key, tuple[Node, list[Problem]]] = {}
        for obj in node_objs:
            k = _key(obj)
            hit = self._nodes.get(k) or node_from_object(obj, self.topology_label)
            node_cache[k] = hit
            nodes[hit[0].name] = hit[0]
            problems += hit[1]
        peers: dict[str, Peer] = {}
        peer_cache: dict[_Key, tuple[Peer | None, list[Problem]]] = {}
        for obj in peer_objs:
            k = _key(obj)
            phit = self._peers.get(k) or peer_from_object(obj)
            peer_cache[k] = phit
            if phit[0] is not None:
                peers[phit[0].name] = phit[0]
            problems += phit[1]
        self._nodes, self._peers = node_cache, peer_cache
        return ClusterView(nodes, peers, tuple(problems))
