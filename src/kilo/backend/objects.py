"""What the agent keeps of a watched API object: only what ``kilo.translate`` reads.

A Node as the API server sends it carries its status (conditions, images, addresses, capacity),
managedFields and other programs' annotations: several kilobytes, none of which the agent reads.
``lean`` keeps the name, the resourceVersion (and a Peer's creation time), the labels (the
topology label is configurable), Kilo's own annotations and, of the spec, a Node's ``podCIDR``
or a Peer's whole spec. Values of the wrong type (the API server never sends them, a hostile
fake might) are dropped rather than kept to trip a reader. Never raises.
"""

from __future__ import annotations

from typing import Any

from kilo.translate import ANNOTATION_PREFIX

Obj = dict[str, Any]


def _strings(value: object, prefix: str = "") -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {
        k: v
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, str) and k.startswith(prefix)
    }


def lean(obj: object, kind: str, api_version: str) -> Obj:
    """``obj`` (a Node or Peer as decoded from the API) reduced to what translation reads,
    with ``apiVersion`` and ``kind`` set (list items come without them)."""
    src: dict[Any, Any] = obj if isinstance(obj, dict) else {}
    raw_meta = src.get("metadata")
    meta_in: dict[Any, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    meta: Obj = {}
    for field in ("name", "resourceVersion") + (("creationTimestamp",) if kind == "Peer" else ()):
        if isinstance(meta_in.get(field), str):
            meta[field] = meta_in[field]
    labels = _strings(meta_in.get("labels"))
    if labels:
        meta["labels"] = labels
    annotations = _strings(meta_in.get("annotations"), ANNOTATION_PREFIX)
    if annotations:
        meta["annotations"] = annotations
    out: Obj = {"apiVersion": api_version, "kind": kind, "metadata": meta}
    spec = src.get("spec")
    if isinstance(spec, dict):
        if kind == "Node":
            if isinstance(spec.get("podCIDR"), str):
                out["spec"] = {"podCIDR": spec["podCIDR"]}
        else:
            out["spec"] = spec
    return out
