"""One node's desired state, from the cluster and the node's own facts (pure).

``plan(cluster, facts, settings)`` is the one thing the agent computes: everything the node must
look like (WireGuard configuration, the link's addresses and MTU, routes and rules, the
firewall ruleset, the CNI conflist, its own annotations) and the problems found on the way. It
reads no clock, no kernel and no network: time, the host's addresses, the device's handshakes
and the current CNI file come in as ``LocalFacts``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kilo import cni as cnilib
from kilo.authorise import PeerPolicy, authorise_nodes, authorise_peers
from kilo.firewall import Ruleset, ruleset
from kilo.hostinfo import HostAddress
from kilo.keys import Key
from kilo.leadership import (
    Health,
    LeaseChange,
    Liveness,
    ProbeTarget,
    decide,
    health_turns,
    leaders,
    members_by_segment,
    native_cluster,
    probe_targets,
)
from kilo.leases import Lease
from kilo.model import (
    CHECK_IN_PERIOD_SECONDS,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    Endpoint,
    Granularity,
    Node,
    Peer,
    Prefix,
    Problem,
)
from kilo.routes import Compatibility, Encapsulation, Interfaces, Route, Rule, Strategy, routes
from kilo.topology import Topology, TopologyError, new_topology, segment_key
from kilo.translate import LIVENESS, node_annotations
from kilo.wgstate import PeerState
from kilo.wireguard import WgConf

#: How recent a handshake must be for its source address to count as a discovered endpoint.
NAT_HANDSHAKE_WINDOW = 180
#: What WireGuard adds to a packet (IPv6 outer header): the link's MTU is the underlay's minus it.
WIREGUARD_OVERHEAD = 80
#: The MTU when the underlay's is unknown.
DEFAULT_MTU = 1420
#: Kilo's IPIP device.
#: The device that carries traffic to another node of the location, by compatibility mode (the
#: IPIP device of our own, or the CNI's: flannel's VXLAN device, Cilium's host device).
TUNNELS = {
    Compatibility.NONE: "tunl0",
    Compatibility.FLANNEL: "flannel.1",
    Compatibility.CILIUM: "cilium_host",
}

#: An API server outage: (start, end) in Unix seconds; end None while it lasts.
Outage = tuple[float, float | None]


@dataclass(frozen=True)
class Settings:
    """The agent's configuration, as far as the plan depends on it."""

    hostname: str
    interface: str = DEFAULT_INTERFACE
    port: int = DEFAULT_PORT
    subnet: Prefix = DEFAULT_SUBNET
    granularity: Granularity = Granularity.LOCATION
    local: bool = True
    encapsulation: Encapsulation = field(default_factory=Encapsulation)
    mtu: int | None = None  # None: the underlay's MTU minus WireGuard's overhead
    cni: bool = True
    service_cidrs: tuple[Prefix, ...] = ()
    forward_rules: bool = False
    prioritise_private: bool = False
    nft_table: str = "kilo"
    liveness: Liveness = Liveness.COMPAT
    peer_policy: PeerPolicy = field(default_factory=PeerPolicy)


@dataclass(frozen=True)
class LocalFacts:
    """What the node knows of itself at this moment."""

    private_key: Key
    now: float  # Unix seconds: readiness, last-seen, handshake ages
    private_ip: HostAddress | None = None
    public_ip: HostAddress | None = None
    underlay_mtu: int | None = None
    outages: tuple[Outage, ...] = ()  # the API server's, not held against check-ins
    handshakes: tuple[PeerState, ...] = ()  # the device's peers, for NAT discovery
    cni_conf: Mapping[str, Any] | None = None  # the CNI conflist on disk; None: missing/unreadable
    health: Health = field(default_factory=Health)  # what the probes say (native liveness)

    @property
    def public_key(self) -> Key:
        return self.private_key.public()


@dataclass(frozen=True)
class ClusterView:
    """The cluster's Nodes and Peers as read (by name), and what could not be read."""

    nodes: Mapping[str, Node]
    peers: Mapping[str, Peer]
    problems: tuple[Problem, ...] = ()
    leases: Mapping[str, Lease] = field(default_factory=dict)  # by segment key (native mode)


class Status(str, enum.Enum):
    """How far the plan goes."""

    OK = "ok"  # the whole data plane is planned
    ABSENT = "absent"  # the local node is not in the cluster (yet): nothing to do
    NOT_READY = "not-ready"  # the local node lacks an endpoint or pod CIDR: only publish
    NO_TOPOLOGY = "no-topology"  # the topology cannot be built: leave the data plane as it is


@dataclass(frozen=True)
class DataPlane:
    """What the node's kernel must hold."""

    wireguard: WgConf
    addresses: tuple[Prefix, ...]  # of the WireGuard link
    mtu: int
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]
    ruleset: Ruleset


@dataclass(frozen=True)
class Plan:
    status: Status
    reason: str = ""  # why the status is not OK
    node: Node | None = None  # the local node as it is published
    annotations: Mapping[str, str] | None = None  # the local node's own annotations
    cni_conf: Mapping[str, Any] | None = None  # the conflist to write; None: leave it
    ipip: bool = False  # make the IPIP device (for encapsulation inside the location)
    topology: Topology | None = None
    dataplane: DataPlane | None = None
    discovered: Mapping[str, Endpoint] = field(default_factory=dict)
    ready_nodes: int = 0
    ready_peers: int = 0
    problems: tuple[Problem, ...] = ()  # unreadable values and the topology's refusals
    native: bool = False  # the native liveness rules apply (no check-ins, Leases lead)
    lease_change: LeaseChange | None = None  # the write this node makes to its location's Lease
    probes: tuple[ProbeTarget, ...] = ()  # whom this node probes (native liveness)

    @property
    def leader(self) -> bool:
        return self.topology is not None and self.topology.leader


def plan(cluster: ClusterView, facts: LocalFacts, settings: Settings) -> Plan:
    """The local node's desired state (see the module's docstring)."""
    api_self = cluster.nodes.get(settings.hostname)
    if api_self is None:
        return Plan(
            Status.ABSENT,
            f"node {settings.hostname} is not in the cluster (yet)",
            problems=cluster.problems,
        )
    me = local_node(api_self, facts, settings)
    base = Plan(
        Status.NOT_READY,
        node=me,
        annotations=annotations_of(me, api_self),
        cni_conf=cni_conf(me, facts, settings),
        ipip=needs_ipip(facts, settings),
        problems=cluster.problems,
    )
    nodes = dict(cluster.nodes)
    nodes[me.name] = me
    nodes, refused = authorise_nodes(nodes, me.name)
    ready = _own_discoveries(
        ready_nodes(nodes, facts.now, facts.outages), me.name, settings.granularity
    )
    ready_peers, refused_peers = authorise_peers(
        {k: p for k, p in cluster.peers.items() if p.ready()},
        nodes,
        settings.subnet,
        settings.service_cidrs,
        settings.peer_policy,
    )
    refused += refused_peers
    base = replace(base, ready_nodes=len(ready), ready_peers=len(ready_peers))
    if me.name not in ready:
        return replace(
            base,
            reason=f"the local node is not ready (endpoint {me.endpoint}, pod CIDR {me.subnet})",
        )
    discovered = discover_nat_endpoints(ready, ready_peers, facts.handshakes, facts.now)
    me = replace(me, discovered_endpoints=dict(discovered))
    ready[me.name] = me
    port = me.endpoint.port if me.endpoint is not None else settings.port
    native = settings.liveness is Liveness.NATIVE and native_cluster(ready)
    groups = members_by_segment(ready, settings.granularity) if native else {}
    chosen = leaders(groups, cluster.leases, facts.now) if native else None
    try:
        t = new_topology(
            ready,
            ready_peers,
            settings.granularity,
            me.name,
            port,
            facts.private_key,
            settings.subnet,
            settings.service_cidrs,
            me.persistent_keepalive,
            chosen,
        )
    except TopologyError as e:
        return replace(
            base,
            status=Status.NO_TOPOLOGY,
            reason=f"cannot compute the topology: {e}",
            node=me,
            annotations=annotations_of(me, api_self),
            discovered=discovered,
        )
    me = replace(me, wireguard_ip=t.wireguard_cidr if t.leader else None)
    change: LeaseChange | None = None
    probes: tuple[ProbeTarget, ...] = ()
    if native and chosen is not None:
        members = groups[t.location]
        lease = cluster.leases.get(t.location)
        change = decide(me.name, t.location, members, lease, facts.now, facts.health)
        probes = probe_targets(me.name, members, chosen[t.location], t)
    return replace(
        base,
        status=Status.OK,
        node=me,
        annotations=annotations_of(me, api_self),
        topology=t,
        dataplane=dataplane(t, facts, settings, port),
        discovered=discovered,
        problems=cluster.problems + tuple(refused) + tuple(t.refusals),
        native=native,
        lease_change=change,
        probes=probes,
    )


def annotations_of(me: Node, api: Node) -> dict[str, str]:
    """The local node's annotations; a node leaving the native mode says so."""
    out = node_annotations(me)
    if api.lease_liveness and not me.lease_liveness:
        out[LIVENESS] = ""
    return out


def local_node(api: Node, facts: LocalFacts, settings: Settings) -> Node:
    """The local node as the agent knows it: the API's view plus our key, IPs and state. Its
    WireGuard IP stays what the API holds until a topology says otherwise (a restarted agent
    would otherwise clear it for a moment, and every other agent would see the node change)."""
    endpoint = api.endpoint
    if endpoint is None or not endpoint.ready():
        external = facts.public_ip
        if settings.prioritise_private and facts.private_ip is not None:
            external = facts.private_ip
        endpoint = Endpoint(settings.port, external.prefix.ip) if external else None
    internal = api.internal_ip
    if internal is None and not api.no_internal_ip and facts.private_ip is not None:
        internal = facts.private_ip.prefix
    return replace(
        api,
        endpoint=endpoint,
        key=facts.public_key,
        internal_ip=internal,
        last_seen=int(facts.now),
        discovered_endpoints=dict(api.discovered_endpoints or {}),
        granularity=settings.granularity,
        lease_liveness=settings.liveness is Liveness.NATIVE,
    )


def unreachable_seconds(since: float, now: float, outages: Iterable[Outage]) -> float:
    """How many seconds of [since, now] fall into the API server's outages (end None: still
    away). A node cannot check in while the API server is away, so that time does not count
    against its readiness: an outage alone never makes a working node look gone."""
    total = 0.0
    for start, end in outages:
        lo, hi = max(start, since), min(now if end is None else end, now)
        if hi > lo:
            total += hi - lo
    return total


def ready_nodes(
    nodes: Mapping[str, Node], now: float, outages: Sequence[Outage] = ()
) -> dict[str, Node]:
    """Kilo's readiness, except that time in which the API server could not be reached is not
    held against a node's last check-in (it could not check in either)."""
    if not outages:
        limit = int(now) - 2 * CHECK_IN_PERIOD_SECONDS  # now - last_seen < 2 periods
        return {
            k: n
            for k, n in nodes.items()
            if n.complete and (n.lease_liveness or n.last_seen > limit)
        }
    return {k: n for k, n in nodes.items() if node_ready(n, now, outages)}


def node_ready(n: Node, now: float, outages: Sequence[Outage] = ()) -> bool:
    """Whether ``n`` is among ``ready_nodes``: one node's readiness, as a check-in needs it."""
    credit = unreachable_seconds(float(n.last_seen), now, outages) if outages else 0.0
    return n.ready(int(now - credit))


def next_expiry(
    nodes: Mapping[str, Node], now: float, outages: Sequence[Outage] = ()
) -> float | None:
    """When the next of the ready nodes stops being ready unless it checks in again (Unix
    seconds; None: no ready node). Waking then replaces polling for readiness."""
    soonest = None
    for n in ready_nodes(nodes, now, outages).values():
        if n.lease_liveness:  # ready without check-ins
            continue
        credit = unreachable_seconds(float(n.last_seen), now, outages) if outages else 0.0
        at = n.last_seen + 2 * CHECK_IN_PERIOD_SECONDS + credit
        if soonest is None or at < soonest:
            soonest = at
    return soonest


def _own_discoveries(ready: dict[str, Node], me: str, granularity: Granularity) -> dict[str, Node]:
    """The ready nodes, with the endpoints discovered by nodes outside the local segment
    dropped. Kilo takes every node's: then any node could point every leader's tunnel to a
    node or Peer at an address of its choosing. A leader learns from its own handshakes, and
    from the nodes of its own segment (whoever led it before)."""
    mine = segment_key(ready[me], granularity) if me in ready else None
    return {
        k: n
        if not n.discovered_endpoints or segment_key(n, granularity) == mine
        else replace(n, discovered_endpoints=None)
        for k, n in ready.items()
    }


def facts_key(cluster: ClusterView, facts: LocalFacts, ready: frozenset[str]) -> tuple[Any, ...]:
    """What of ``facts`` the plan of an unchanged cluster with the same ready nodes depends on,
    time aside: equal keys (and no timer due) give the same plan. The agent's resync uses it to
    verify the kernel against the plan it applied last, without planning again."""
    nodes = {name: n for name, n in cluster.nodes.items() if name in ready}
    discovered = discover_nat_endpoints(nodes, cluster.peers, facts.handshakes, facts.now)
    return (
        facts.private_key,
        facts.private_ip,
        facts.public_ip,
        facts.underlay_mtu,
        health_turns(facts.health),
        facts.cni_conf,
        discovered,
    )


def discover_nat_endpoints(
    nodes: Mapping[str, Node],
    peers: Mapping[str, Peer],
    handshakes: Iterable[PeerState],
    now: float,
) -> dict[str, Endpoint]:
    """Where recent handshakes with NATed nodes and peers (keepalive > 0) really come from,
    when that differs from their published endpoint."""
    states = {bytes(p.public_key): p for p in handshakes}
    out: dict[str, Endpoint] = {}
    candidates = [
        (n.key, n.persistent_keepalive, n.endpoint)
        for n in nodes.values()
        if n.persistent_keepalive
    ]
    candidates += [
        (p.public_key, p.persistent_keepalive, p.endpoint)
        for p in peers.values()
        if p.persistent_keepalive
    ]
    for key, keepalive, ep in candidates:
        st = states.get(bytes(key)) if key is not None else None
        if st is None or not keepalive or st.endpoint is None:
            continue
        if now - st.last_handshake > NAT_HANDSHAKE_WINDOW:
            continue
        ip, port = st.endpoint
        if ep is None or ep.ip != ip or ep.port != port:
            out[str(Key(key))] = Endpoint(port, ip)  # type: ignore[arg-type]
    return out


def cni_conf(me: Node, facts: LocalFacts, settings: Settings) -> dict[str, Any] | None:
    """The conflist to write (the current one with the node's pod CIDR, or the default one);
    None when it is right already or not ours to manage."""
    if not settings.cni or me.subnet is None:
        return None
    current = dict(facts.cni_conf) if facts.cni_conf is not None else None
    if current is not None and cnilib.pod_cidr_of(current) == str(me.subnet.network):
        return None
    try:
        return cnilib.with_pod_cidr(current or cnilib.default_conflist(), me.subnet)
    except ValueError:  # a conflist without IPAM: Kilo's default replaces it
        return cnilib.with_pod_cidr(cnilib.default_conflist(), me.subnet)


def needs_ipip(facts: LocalFacts, settings: Settings) -> bool:
    enc = settings.encapsulation
    return (
        enc.strategy is not Strategy.NEVER
        and facts.private_ip is not None
        and not enc.compatibility
    )


def mtu(facts: LocalFacts, settings: Settings) -> int:
    if settings.mtu is not None:
        return settings.mtu
    if facts.underlay_mtu is None:
        return DEFAULT_MTU
    return facts.underlay_mtu - WIREGUARD_OVERHEAD


def dataplane(t: Topology, facts: LocalFacts, settings: Settings, port: int) -> DataPlane:
    """The device, link, routes and firewall of the local node in topology ``t``."""
    if t.leader:
        conf = t.conf()
        addresses: tuple[Prefix, ...] = (t.wireguard_cidr,)
    else:
        conf = WgConf(private_key=facts.private_key, listen_port=port)
        addresses = ()
    ifs = Interfaces(
        kilo=settings.interface,
        private=facts.private_ip.ifname if facts.private_ip is not None else settings.interface,
        tunnel=TUNNELS[settings.encapsulation.compatibility],
    )
    rs, rules = routes(t, ifs, settings.local, settings.encapsulation)
    return DataPlane(
        wireguard=conf,
        addresses=addresses,
        mtu=mtu(facts, settings),
        routes=tuple(rs),
        rules=tuple(rules),
        ruleset=ruleset(t, settings.cni, settings.forward_rules, settings.nft_table),
    )
