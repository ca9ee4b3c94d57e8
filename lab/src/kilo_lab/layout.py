"""Names and places of a lab: namespaces, bridges, interfaces, ports, directories.

Layout of one lab named L (every name starts with ``kpy-``):

- ``kpy-L-sw``: the switch namespace holding every bridge: ``kpy-inet`` (the "internet"),
  ``kpy-m<k>`` (cluster k's management network), ``kpy-l<k>-<j>`` (cluster k, location j's LAN);
  the switch ends of the veth pairs are ``kpy-v<n>``.
- ``kpy-L-<cluster>-cp``: etcd + kube-apiserver on the cluster's management address
  (172.31.254.1:6443 for the first cluster).
- ``kpy-L-admin``: on every management network (its .254); kubectl and kgctl run here.
- ``kpy-L-<node>``: ``kpy-lan`` (LAN address), ``kpy-mgmt`` (only to reach the API server),
  ``kpy-inet`` (public address, for ``public: true`` nodes). ``kg`` runs here.
- ``kpy-L-<node>-p<i>``: pods, made by the real CNI plugins from the node's conflist.
- ``kpy-L-<peer>``: only ``kpy-inet``; behind a NAT only ``kpy-lan``, on the NAT's inside
  network (bridge ``kpy-n<i>``), default route via the router.
- ``kpy-L-nat-<nat>``: a NAT router: ``kpy-inet`` (outside), ``kpy-in`` (its inside network),
  ``kpy-l<k>-<j>`` on each LAN whose nodes sit behind it; nftables masquerade out of ``kpy-inet``.

State lives in ``/run/kpy-lab/L/`` (``$KPY_LAB_STATE`` overrides the root): ``state.json``,
kubeconfigs, and per node its key, conflist, host-local leases and logs.
"""

from __future__ import annotations

import os
import pathlib
import re

from kilo.dataplane.wg_userspace import SOCKET_ROOT, default_socket_dir

from kilo_lab.spec import LabSpec

STATE_ROOT = pathlib.Path(os.environ.get("KPY_LAB_STATE", "/run/kpy-lab"))
API_PORT = 6443
METRICS_PORT = 1107
IF_LAN, IF_MGMT, IF_INET = "kpy-lan", "kpy-mgmt", "kpy-inet"
IF_NAT_INSIDE = "kpy-in"  # a NAT router's leg on its own inside network
BRIDGE_INET = "kpy-inet"
CONFLIST_NAME = "10-kilo.conflist"
KG_WG_SOCKET_ROOT = SOCKET_ROOT  # where kg's wireguard-go sockets live (the product's)


def ns_name(lab: str, host: str) -> str:
    """The namespace of ``host`` (node, peer, pod, ``admin``, ``sw``, ``<cluster>-cp``)."""
    return f"kpy-{lab}-{host}"


def state_dir(lab: str, root: pathlib.Path | None = None) -> pathlib.Path:
    return (root or STATE_ROOT) / lab


def mgmt_bridge(cluster_index: int) -> str:
    return f"kpy-m{cluster_index}"


def lan_bridge(cluster_index: int, location_index: int) -> str:
    return f"kpy-l{cluster_index}-{location_index}"


def nat_bridge(nat_index: int) -> str:
    """The bridge of NAT i's own inside network (its peers)."""
    return f"kpy-n{nat_index}"


def nat_host(nat: str) -> str:
    """The host name of NAT ``nat``'s router (its namespace is ``kpy-L-nat-<nat>``)."""
    return f"nat-{nat}"


def expected_namespaces(spec: LabSpec) -> list[str]:
    """Every namespace name a lab of this spec may create (pods beyond the spec are found by
    ``pod_namespace_pattern``)."""
    names = [ns_name(spec.name, "sw"), ns_name(spec.name, "admin")]
    names += [ns_name(spec.name, f"{c.name}-cp") for c in spec.clusters]
    names += [ns_name(spec.name, h) for h in spec.hosts()]
    names += [ns_name(spec.name, nat_host(n.name)) for n in spec.nats]
    names += [ns_name(spec.name, f"{n.name}-p{i}") for n in spec.nodes for i in range(n.pods)]
    return names


def pod_namespace_pattern(lab: str, nodes: set[str]) -> re.Pattern[str]:
    """The names of pod namespaces of ``nodes`` in lab ``lab``."""
    alternatives = "|".join(map(re.escape, sorted(nodes))) or "-"
    return re.compile(rf"^kpy-{re.escape(lab)}-({alternatives})-p\d+$")


def is_pod_namespace(name: str) -> bool:
    return re.search(r"-p\d+$", name) is not None


def kg_socket_dir(namespace: str) -> str | None:
    """Where kg's wireguard-go keeps its UAPI socket for a node namespace (the product's
    convention: ``/run/kilo/wireguard/net-<inode of the namespace>``); None if it is gone."""
    try:
        return default_socket_dir(namespace)
    except OSError:
        return None


class Paths:
    """The files of one lab under its state directory."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory

    def node_dir(self, node: str) -> pathlib.Path:
        return self.dir / "nodes" / node

    def cni_data(self, node: str) -> pathlib.Path:
        """Bound over /var/lib/cni when the node's CNI plugins run (host-local's leases)."""
        return self.node_dir(node) / "cni-data"

    def kubeconfig(self, cluster: str) -> pathlib.Path:
        return self.dir / "clusters" / cluster / "kubeconfig"

    def conflist(self, node: str) -> pathlib.Path:
        return self.node_dir(node) / "cni" / CONFLIST_NAME

    def agent_log(self, node: str) -> pathlib.Path:
        return self.node_dir(node) / "kg.log"

    def proxy_log(self, node: str) -> pathlib.Path:
        return self.node_dir(node) / "kube-proxy.log"

    def peer_dir(self, peer: str) -> pathlib.Path:
        return self.dir / "peers" / peer
