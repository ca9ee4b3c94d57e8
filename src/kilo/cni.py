"""The CNI network configuration list the agent manages in standalone mode (pure).

As Kilo does, the agent only sets the node's pod CIDR in the host-local IPAM ranges of an
existing conflist; when there is none, it writes the default one (bridge ``kube-bridge``,
host-local, portmap) that Kilo's manifests install.
"""

from __future__ import annotations

import copy
from typing import Any

from kilo.model import Prefix

BRIDGE = "kube-bridge"


def default_conflist(mtu: int = 1420) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "kilo",
        "plugins": [
            {
                "name": "kubernetes",
                "type": "bridge",
                "bridge": BRIDGE,
                "isDefaultGateway": True,
                "forceAddress": True,
                "mtu": mtu,
                "ipam": {"type": "host-local"},
            },
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }


def pod_cidr_of(conf: dict[str, Any]) -> str | None:
    """The first subnet of the first IPAM range in the conflist, if any."""
    for plugin in conf.get("plugins") or []:
        ipam = plugin.get("ipam") or {}
        for rng in ipam.get("ranges") or []:
            for r in rng or []:
                if r.get("subnet"):
                    return str(r["subnet"])
    return None


def with_pod_cidr(conf: dict[str, Any], cidr: Prefix) -> dict[str, Any]:
    """A copy of ``conf`` whose IPAM plugins allocate from ``cidr``; ValueError if none has IPAM."""
    out = copy.deepcopy(conf)
    found = False
    for plugin in out.get("plugins") or []:
        if "ipam" in plugin:
            plugin["ipam"]["ranges"] = [[{"subnet": str(cidr.network)}]]
            found = True
    if not found:
        raise ValueError("no plugin with an 'ipam' section in the CNI config list")
    return out
