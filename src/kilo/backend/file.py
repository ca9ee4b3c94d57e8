"""Read a saved cluster: ``kubectl get nodes,peers -o yaml|json`` (a ``List``), a ``NodeList`` or
``PeerList``, or a multi-document YAML of Node and Peer objects (and the leader Leases of a
cluster in the native liveness mode, ``kubectl get leases -l kilo.squat.ai/leader-lease``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml


class DumpError(ValueError):
    """The file is not a readable cluster dump; the message says where and why."""


def _items(doc: Any, where: str) -> Iterator[dict[str, Any]]:
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise DumpError(f"{where}: expected a Kubernetes object or List, got {type(doc).__name__}")
    if "items" in doc and str(doc.get("kind", "List")).endswith("List"):
        items = doc.get("items")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict):  # anything else is no object of any kind: ignored
                yield from _items(item, f"{where}.items[{i}]")
        return
    yield doc


def load_objects(
    path: str | Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The Node, Peer and Lease objects in the file (other kinds are ignored), in file
    order."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise DumpError(f"cannot read {p}: {e.strerror}") from None
    docs: Iterable[Any]
    try:
        docs = (
            [json.loads(text)] if text.lstrip().startswith("{") else list(yaml.safe_load_all(text))
        )
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise DumpError(f"{p}: not valid YAML or JSON: {e}") from None
    nodes: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    leases: list[dict[str, Any]] = []
    for n, doc in enumerate(docs):
        for obj in _items(doc, f"{p} document {n + 1}"):
            kind = obj.get("kind")
            if kind == "Node":
                nodes.append(obj)
            elif kind == "Peer" and str(obj.get("apiVersion", "")).startswith("kilo.squat.ai/"):
                peers.append(obj)
            elif kind == "Lease" and obj.get("apiVersion") == "coordination.k8s.io/v1":
                leases.append(obj)
    return nodes, peers, leases
