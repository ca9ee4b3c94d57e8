"""Builders for Node and Peer objects as the API would hold them."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

NOW = 1_790_000_000


def key_for(name: str) -> str:
    """A deterministic, well-formed 32-byte key per name."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def node_obj(
    name: str,
    location: str = "",
    endpoint: str | None = "auto",
    internal_ip: str | None = None,
    pod_cidr: str | None = None,
    last_seen: int = NOW,
    key: str | None = "auto",
    label: bool = True,
    **annotations: str,
) -> dict[str, Any]:
    ann: dict[str, str] = {}
    if endpoint == "auto":
        endpoint = f"198.51.100.{abs(hash(name)) % 200 + 1}:51820"
    if endpoint is not None:
        ann["kilo.squat.ai/endpoint"] = endpoint
    if internal_ip is not None:
        ann["kilo.squat.ai/internal-ip"] = internal_ip
    if key == "auto":
        key = key_for(name)
    if key is not None:
        ann["kilo.squat.ai/key"] = key
    ann["kilo.squat.ai/last-seen"] = str(last_seen)
    for k, v in annotations.items():
        ann["kilo.squat.ai/" + k.replace("_", "-")] = v
    labels = {"topology.kubernetes.io/region": location} if label and location else {}
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": ann, "labels": labels},
        "spec": {},
    }
    if pod_cidr is not None:
        obj["spec"]["podCIDR"] = pod_cidr
    return obj


def peer_obj(name: str, allowed_ips: list[str], **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"allowedIPs": allowed_ips, "publicKey": key_for(name)}
    s.update(spec)
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": s,
    }
