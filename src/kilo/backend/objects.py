"""What the agent keeps of a watched API object: only what ``kilo.translate`` reads.

A Node as the API server sends it carries its status (conditions, images, addresses, capacity),
managedFields and other programs' annotations: several kilobytes, none of which the agent reads.
``lean`` keeps the name, the resourceVersion and the creation time, the labels (the topology
label is configurable), Kilo's own annotations and, of the spec, a Node's ``podCIDR`` or a
Peer's whole spec. A value of the wrong type (the API server never sends one, a hostile fake
might) is kept as it is, so that the reader reports it as it would for the whole object. Never
raises.
"""

from __future__ import annotations

import sys
from typing import Any

from kilo.translate import ANNOTATION_PREFIX

Obj = dict[str, Any]

_MISSING = object()


def _key(k: object) -> object:
    """A map key, interned: every Node repeats the same label and annotation names, and a
    decoded object has its own copy of each (1,000 nodes: about 10,000 strings)."""
    return sys.intern(k) if type(k) is str else k


def _value(v: object) -> object:
    """A label's value, interned (a location's name is on each of its nodes)."""
    return sys.intern(v) if type(v) is str and len(v) <= 63 else v


def _kilo_entries(value: object) -> object:
    """Kilo's own annotations, and every entry a reader would report (a key that is no
    string); anything but a map is kept for the reader to report."""
    if not isinstance(value, dict):
        return value
    return {
        _key(k): v
        for k, v in value.items()
        if not isinstance(k, str) or k.startswith(ANNOTATION_PREFIX)
    }


def lean(obj: object, kind: str, api_version: str) -> Obj:
    """``obj`` (a Node or Peer as decoded from the API) reduced to what translation reads,
    with ``apiVersion`` and ``kind`` set (list items come without them)."""
    src: dict[Any, Any] = obj if isinstance(obj, dict) else {}
    raw_meta = src.get("metadata")
    meta_in: dict[Any, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    meta: Obj = {}
    for field in ("name", "resourceVersion", "creationTimestamp"):
        value = meta_in.get(field, _MISSING)
        if value is not _MISSING:
            meta[field] = value
    labels = meta_in.get("labels")
    if labels is not None:
        meta["labels"] = (
            {_key(k): _value(v) for k, v in labels.items()} if type(labels) is dict else labels
        )
    annotations = meta_in.get("annotations")
    if annotations is not None:
        annotations = _kilo_entries(annotations)
        if annotations:
            meta["annotations"] = annotations
    out: Obj = {"apiVersion": api_version, "kind": kind, "metadata": meta}
    spec = src.get("spec", _MISSING)
    if spec is _MISSING:
        return out
    if kind == "Node" and isinstance(spec, dict):
        if "podCIDR" in spec:
            out["spec"] = {"podCIDR": spec["podCIDR"]}
    else:
        out["spec"] = spec
    return out
