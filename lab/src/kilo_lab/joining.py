"""Nodes joining and leaving a running lab."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kilo_lab.errors import LabError
from kilo_lab.layout import kg_socket_dir
from kilo_lab.objects import node_object
from kilo_lab.spec import ClusterSpec, LabSpec, LocationSpec, NodeSpec

if TYPE_CHECKING:
    from kilo_lab.lab import Lab


def add_node(
    lab: Lab,
    cluster: str,
    location: str,
    name: str,
    *,
    public: bool = False,
    pods: int = 1,
    agent: bool | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> NodeSpec:
    """A new node joins: namespace and links, Node object, kg (if the lab runs agents), its
    pods and kube-proxy. Addresses are the next free ones."""
    spec = lab.spec
    c = spec.cluster(cluster)
    j = next((j for j, loc in enumerate(c.locations) if loc.name == location), -1)
    if j < 0:
        raise LabError(f"cluster {cluster} has no location {location!r}")
    loc = c.locations[j]
    if c.stack != "ipv4":
        raise LabError(f"cluster {cluster}: nodes join only IPv4 clusters (stack {c.stack})")
    if name in set(spec.hosts()) | {x.name for x in spec.clusters}:
        raise LabError(f"name {name!r} is taken")
    used_public = {n.public_ip for n in spec.nodes} | {p.public_ip for p in spec.peers}
    used_public |= {n.public_ip for n in spec.nats}
    public_ip = None
    if public:
        public_ip = next((ip for ip in spec.internet[0].hosts() if ip not in used_public), None)
        if public_ip is None:
            raise LabError("no public address left")
    index = max((n.index for n in c.nodes), default=-1) + 1
    lan_used = {n.lan_ip for n in c.nodes}
    mgmt_used = {n.mgmt_ip for n in c.nodes}
    node = NodeSpec(
        name=name,
        cluster=cluster,
        location=location,
        index=index,
        lan_ip=next(ip for ip in loc.cidr.hosts() if ip not in lan_used),
        mgmt_ip=next(ip for ip in list(c.mgmt_cidr.hosts())[10:-1] if ip not in mgmt_used),
        pod_cidr=list(c.pod_cidr.subnets(new_prefix=c.node_prefix))[index],
        public_ip=public_ip,
        pods=pods,
        labels={"topology.kubernetes.io/region": location, **(labels or {})},
        annotations=dict(annotations or {}),
        agent=lab.agent if agent is None else agent,
    )
    lab.spec = _with_nodes(spec, c, loc, (*loc.nodes, node))
    lab.network.add_node(lab.spec, lab.spec.cluster(cluster), node, j)
    lab._record_node(node)
    lab.network.forget_neighbours(lab.spec, node)
    lab.apply(cluster, [node_object(node)], verb="create")
    runs_kg = lab.agent and node.agent
    lab.daemons.write_conflist(node, with_range=not runs_kg)
    if runs_kg:
        lab.start_agent(name)
        lab.daemons.wait_conflist(node, lab.agent_timeout)
    for i in range(pods):
        lab.add_pod(name, i)
    if lab.spec.kube_proxy:
        lab.daemons.start_proxy(node)
    return node


def remove_node(lab: Lab, name: str, delete_object: bool = True) -> None:
    """A node leaves: its agent, kube-proxy, pods and namespace go (and, by default, its Node
    object, as when a node is deleted from the cluster)."""
    node = lab.spec.node(name)
    lab.stop_agent(name)
    lab.daemons.stop_proxy(name)
    for pod in [p for p, v in lab.pods.items() if v.node == name]:
        lab.delete_pod(pod)
    ns = lab.ns(name)
    socket_dir = kg_socket_dir(ns)
    lab.network.remove_ns(ns)
    if socket_dir is not None:
        shutil.rmtree(socket_dir, ignore_errors=True)
    lab.store.remove("nodes", name)
    if delete_object:
        lab.kubectl(node.cluster, "delete", "node", name, "--wait=false")
    c = lab.spec.cluster(node.cluster)
    loc = next(loc for loc in c.locations if loc.name == node.location)
    lab.spec = _with_nodes(lab.spec, c, loc, tuple(n for n in loc.nodes if n.name != name))
    shutil.rmtree(lab.node_dir(name), ignore_errors=True)


def _with_nodes(
    spec: LabSpec, c: ClusterSpec, loc: LocationSpec, nodes: tuple[NodeSpec, ...]
) -> LabSpec:
    """``spec`` with location ``loc`` of cluster ``c`` holding ``nodes``."""
    new_loc = dataclasses.replace(loc, nodes=nodes)
    locs = tuple(new_loc if x is loc else x for x in c.locations)
    new_c = dataclasses.replace(c, locations=locs)
    return dataclasses.replace(spec, clusters=tuple(new_c if x is c else x for x in spec.clusters))
