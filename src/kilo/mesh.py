"""What ``kgctl`` computes from a cluster's objects: the graph and the ``showconf`` outputs (pure).

Each function takes the raw Node and Peer objects, the options, and the reference time for
readiness, and returns the text to print; a ``UserError`` carries Kilo's error message.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from kilo import graph
from kilo.keys import Key
from kilo.leadership import leaders, members_by_segment, native_cluster
from kilo.leases import Lease, lease_from_object
from kilo.model import DEFAULT_SUBNET, REGION_LABEL, Granularity, Node, Peer, Prefix, Problem
from kilo.topology import Topology, TopologyError, new_topology
from kilo.translate import node_from_object, object_name, peer_from_object, peer_object
from kilo.wireguard import WgConf, WgPeer


class UserError(Exception):
    """A message for the user; kgctl prints it and exits 1."""


@dataclass
class Options:
    granularity: Granularity = Granularity.AUTO
    port: int = 51820
    topology_label: str = REGION_LABEL
    output: str = "wireguard"
    as_peer: bool = False
    allowed_ips: list[Prefix] = field(default_factory=list)


@dataclass
class ClusterState:
    """The translated cluster, in list order (by name)."""

    nodes: list[Node]
    peers: list[Peer]
    problems: list[Problem]
    leases: dict[str, Lease] = field(default_factory=dict)  # by segment key (native liveness)


def read_cluster(
    node_objs: Sequence[dict[str, Any]],
    peer_objs: Sequence[dict[str, Any]],
    topology_label: str,
    lease_objs: Sequence[dict[str, Any]] = (),
) -> ClusterState:
    nodes: list[Node] = []
    peers: list[Peer] = []
    problems: list[Problem] = []
    leases: dict[str, Lease] = {}
    for o in lease_objs:
        lease, p = lease_from_object(o)
        problems.extend(p)
        if lease is not None:
            leases[lease.location] = lease
    for o in sorted(node_objs, key=object_name):
        n, p = node_from_object(o, topology_label)
        if n is not None:
            nodes.append(n)
        problems.extend(p)
    for o in sorted(peer_objs, key=object_name):
        peer, p = peer_from_object(o)
        problems.extend(p)
        if peer is not None:
            peers.append(peer)
    return ClusterState(nodes, peers, problems, leases)


def dump_reference_time(state: ClusterState, not_after: int | None = None) -> int:
    """For a saved dump, readiness is judged at the newest check-in or Lease renewal it
    holds, not counting those later than ``not_after`` (the time it is read: one node whose
    ``last-seen`` lies in the future must not make every other node stale)."""
    times = [n.last_seen for n in state.nodes] + [int(x.renewed) for x in state.leases.values()]
    if not_after is not None:
        times = [t for t in times if t <= not_after] or times
    return max(times, default=0)


def determine_granularity(g: Granularity, nodes: Sequence[Node]) -> Granularity:
    if g is not Granularity.AUTO:
        return g
    if not nodes:
        raise UserError("failed to determine granularity: could not get any nodes")
    ret = nodes[0].granularity
    if ret is None:
        raise UserError(
            f"failed to determine granularity: mesh granularity {g.value} is not supported"
        )
    return ret


@dataclass
class _Ready:
    nodes: dict[str, Node]
    peers: dict[str, Peer]
    subnet: Prefix
    last_ready: str


def _leaders(
    state: ClusterState, nodes: dict[str, Node], g: Granularity, now: int
) -> dict[str, str] | None:
    """The locations' leaders as the agents choose them: in a cluster of agents in the native
    liveness mode, the holders of the leader Leases; else None (Kilo's rule)."""
    if not native_cluster(nodes):
        return None
    return leaders(members_by_segment(nodes, g), state.leases, now)


def _ready(state: ClusterState, now: int) -> _Ready:
    subnet = DEFAULT_SUBNET
    nodes: dict[str, Node] = {}
    last = ""
    for n in state.nodes:
        if n.ready(now):
            nodes[n.name] = n
            last = n.name
        if n.wireguard_ip is not None:
            subnet = n.wireguard_ip
    subnet = ipaddress.ip_interface(f"{subnet.network.network_address}/{subnet.network.prefixlen}")
    if not nodes:
        raise UserError("did not find any valid Kilo nodes in the cluster")
    peers = {p.name: p for p in state.peers if p.ready()}
    return _Ready(nodes, peers, subnet, last)


@dataclass
class Output:
    stdout: str = ""
    stderr: str = ""  # whole lines, each starting with "warning: "
    warnings: list[Problem] = field(default_factory=list)  # printed as "warning: ..."


def _topology(*args: Any) -> Topology:
    """``new_topology``, its failure (e.g. no WireGuard IP left) an error as Kilo words it."""
    try:
        return new_topology(*args)
    except TopologyError as e:
        raise UserError(f"failed to create topology: {e}") from None


def mesh_topology(state: ClusterState, opts: Options, now: int) -> Topology:
    """The mesh as kgctl's graph sees it (from the last ready node by name): its segments, their
    leaders and WireGuard IPs are the same from every node's view."""
    g = determine_granularity(opts.granularity, state.nodes)
    r = _ready(state, now)
    return _topology(
        r.nodes,
        r.peers,
        g,
        r.last_ready,
        0,
        None,
        r.subnet,
        (),
        r.nodes[r.last_ready].persistent_keepalive,
        _leaders(state, r.nodes, g, now),
    )


def graph_text(state: ClusterState, opts: Options, now: int) -> Output:
    t = mesh_topology(state, opts, now)
    return Output(stdout=graph.dot(t) + "\n", warnings=t.refusals)


def _ready_with(
    state: ClusterState, opts: Options, now: int, kind: str, name: str
) -> tuple[Granularity, _Ready]:
    """The granularity and the ready nodes and peers, which must include the ``kind`` ``name``."""
    g = determine_granularity(opts.granularity, state.nodes)
    r = _ready(state, now)
    if name not in (r.nodes if kind == "node" else r.peers):
        raise UserError(f"did not find any {kind} named {_goq(name)} in the cluster")
    return g, r


def showconf_node(state: ClusterState, name: str, opts: Options, now: int) -> Output:
    g, r = _ready_with(state, opts, now, "node", name)
    t = _topology(
        r.nodes,
        r.peers,
        g,
        name,
        opts.port,
        None,
        r.subnet,
        (),
        r.nodes[name].persistent_keepalive,
        _leaders(state, r.nodes, g, now),
    )
    if not any(p.public_key == r.nodes[name].key for p in t.peer_conf("").peers):
        return Output(
            stderr=f"warning: Node {_goq(name)} is not a leader node\n", warnings=t.refusals
        )
    if not opts.as_peer:
        return Output(stdout=t.conf().render(), warnings=t.refusals)
    p = t.as_peer()
    if p is None:
        raise UserError("cannot generate config from nil peer")
    p.allowed_ips = p.allowed_ips + opts.allowed_ips
    p.deduplicate_ips()
    return Output(stdout=_peer_output(name, p, opts.output), warnings=t.refusals)


def peer_topology(
    state: ClusterState,
    name: str,
    opts: Options,
    now: int,
    location_ips: Sequence[Prefix] = (),
) -> tuple[Topology, Peer]:
    """The topology as the Peer ``name`` sees it, and that Peer (``UserError`` unless it is
    ready). ``location_ips`` (``kgctl connect --allowed-ips``) are added to the allowed-location
    IPs of the first ready node by name, as Kilo's ``connect`` does."""
    g, r = _ready_with(state, opts, now, "peer", name)
    if location_ips:
        first = next(iter(r.nodes.values()))
        extra = tuple(location_ips)
        r.nodes[first.name] = replace(
            first, allowed_location_ips=first.allowed_location_ips + extra
        )
    peer = r.peers[name]
    t = _topology(
        r.nodes,
        r.peers,
        g,
        r.last_ready,
        51820,
        None,
        r.subnet,
        (),
        peer.persistent_keepalive,
        _leaders(state, r.nodes, g, now),
    )
    return t, peer


def showconf_peer(state: ClusterState, name: str, opts: Options, now: int) -> Output:
    t, peer = peer_topology(state, name, opts, now)
    if not opts.as_peer:
        return Output(stdout=t.peer_conf(name).render(), warnings=t.refusals)
    p = WgPeer(
        public_key=peer.public_key or Key.zero(),
        allowed_ips=list(peer.allowed_ips) + opts.allowed_ips,
        endpoint=peer.endpoint,
        persistent_keepalive=peer.persistent_keepalive,
        preshared_key=peer.preshared_key,
    )
    p.deduplicate_ips()
    return Output(stdout=_peer_output(name, p, opts.output), warnings=t.refusals)


def _peer_output(name: str, p: WgPeer, output: str) -> str:
    if output == "wireguard":
        return WgConf(peers=[p]).render()
    obj = peer_object(
        name, p.public_key, p.allowed_ips, p.endpoint, p.persistent_keepalive, p.preshared_key
    )
    if output == "yaml":
        return yaml.safe_dump(obj, default_flow_style=False, sort_keys=True)
    # The JSON Kubernetes' serializer prints: Go struct order, two-space indent.
    # Kubernetes' serializer: Go struct order, two-space indent, no trailing newline.
    ordered = {
        "kind": obj["kind"],
        "apiVersion": obj["apiVersion"],
        "metadata": {"name": name},
        "spec": obj["spec"],
    }
    text = json.dumps(ordered, indent=2, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _goq(s: str) -> str:
    """Go's %q for ordinary strings."""
    return json.dumps(s, ensure_ascii=False)
