"""The Kubernetes objects the lab makes in place of the parts of a cluster it does not run: the
Node a kubelet registers, and the Service + Endpoints a user writes for a server outside
for a Service without a selector."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Sequence
from typing import Any

from kilo_lab.binaries import repo_root
from kilo_lab.spec import NodeSpec


def node_object(n: NodeSpec) -> dict[str, Any]:
    """The Node a kubelet would register for ``n``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        "kubernetes.io/hostname": n.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **n.labels,
    }
    meta: dict[str, Any] = {"name": n.name, "labels": labels}
    if n.annotations:
        meta["annotations"] = dict(n.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": {
            "podCIDR": str(n.pod_cidrs[0]),
            "podCIDRs": [str(c) for c in n.pod_cidrs],
        },
        "status": {
            "addresses": [
                *({"type": "InternalIP", "address": str(ip)} for ip in n.internal_ips),
                {"type": "Hostname", "address": n.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kpy-lab node",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        },
    }


def service_docs(
    name: str,
    ips: Sequence[str],
    port: int,
    *,
    target_port: int | None = None,
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    """A Service without a selector on ``port`` (to ``target_port`` of ``ips``) and its v1
    Endpoints, as a user writes them in front of a server outside the cluster; the lab's
    kube-controller-manager mirrors them into the EndpointSlice kube-proxy reads."""
    target = target_port or port
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": dict(meta),
            "spec": {
                "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": dict(meta),
            "subsets": [
                {
                    "addresses": [{"ip": ip} for ip in ips],
                    "ports": [{"name": "http", "port": target}],
                }
            ],
        },
    ]


def crd_manifest() -> pathlib.Path | None:
    """The product's CRD manifest (manifests/crds.yaml) of the source checkout, if any."""
    root = repo_root()
    path = root / "manifests" / "crds.yaml" if root else None
    return path if path is not None and path.is_file() else None
