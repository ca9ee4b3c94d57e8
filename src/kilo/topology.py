"""Nodes + peers + granularity -> the mesh's segments, leaders and WireGuard IPs (pure).

A *segment* is a set of nodes that reach each other over their private network and share one
WireGuard tunnel endpoint, their *leader*. Granularity decides the segments:

- ``location``: one segment per location; a node without an internal IP is a segment alone;
- ``full``: one segment per node;
- ``cross``: one segment per node, like ``full``, but nodes of one location do not tunnel to each
  other: traffic inside a location stays on the private network.

The rules (ordering, leader choice, allowed-IP order, IP allocation) are Kilo's, so that a mixed
cluster of both agents agrees on every tunnel.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kilo import memo
from kilo.claims import AllowedLocationIPFilter, deduplicate_peer_ips, drop_claims_in
from kilo.keys import Key
from kilo.memo import Last, Same
from kilo.model import (
    Endpoint,
    Granularity,
    IPAddress,
    Node,
    Peer,
    Prefix,
    Problem,
    host_prefix,
)
from kilo.prefixes import NetKey, Networks, by_start, host_of, ip_of, net_key, net_keys, text
from kilo.wireguard import WgConf, WgPeer

LOGICAL_PREFIX = "location:"
NODE_PREFIX = "node:"


class TopologyError(ValueError):
    """The topology cannot be built (unknown local node, WireGuard subnet exhausted)."""


@dataclass
class Segment:
    location: str  # segment key, e.g. "location:eu" or "node:a"
    logical_location: str  # the nodes' location: same-location test for cross granularity
    allowed_ips: list[Prefix]
    endpoint: Endpoint | None
    key: Key | None
    persistent_keepalive: int
    cidrs: list[Prefix | None]
    hostnames: list[str]
    leader: int
    private_ips: list[IPAddress] | None
    cni_compatibility_ips: list[Prefix | None]
    allowed_location_ips: list[Prefix]
    wireguard_ip: IPAddress | None = None
    #: ``private_ips`` as one-address CIDRs (made once per node: routes need them)
    private_hosts: list[Prefix] | None = None
    #: What the segment was made from (kept between topologies while its nodes are the same)
    base: SegmentBase | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, eq=False)
class SegmentBase:
    """A segment's part that depends only on its nodes, made once for the same nodes and
    kept from one topology to the next: a plan after one node changed rebuilds that node's
    segment, not the other hundreds (which node leads is chosen again each time)."""

    members: tuple[Node, ...]  # by name
    members_in_order: tuple[Node, ...]  # as given
    leader: int  # Kilo's choice among them
    allowed_ips: tuple[Prefix, ...]
    allowed_location_ips: tuple[Prefix, ...]  # without duplicates, in text order
    cidrs: tuple[Prefix | None, ...]
    hostnames: tuple[str, ...]
    private_ips: tuple[IPAddress, ...]
    private_hosts: tuple[Prefix, ...]
    cni_compatibility_ips: tuple[Prefix | None, ...]
    #: ``allowed_ips`` by network (the last of equal ones), and those networks' lengths
    claims: dict[NetKey, Prefix]
    lengths: frozenset[tuple[int, int]]
    #: Answers other modules keep for this segment (e.g. its routes), by their own keys
    memo: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def networks(self) -> Networks:
        """``allowed_ips`` ``by_start`` (the firewall's sets merge those of all segments)."""
        return by_start(self.allowed_ips)


#: The segment bases of the last topology by segment key, with their nodes' ``_facts_token``.
_BASES: dict[str, tuple[tuple[object, ...], SegmentBase]] = {}


def _forget_bases() -> None:
    _BASES.clear()


memo.on_forget(_forget_bases)


def _facts_token(n: Node) -> object:
    """An object that stays the same for as long as the node's facts do: a check-in (only
    ``last_seen`` changed, ``Node.with_last_seen``) keeps it, any other change makes a new one
    (or takes that of a node of equal facts, ``_base``)."""
    d = n.__dict__
    tok = d.get("_k_token")
    if tok is None:
        tok = d["_k_token"] = object()
    return tok


#: What a segment base is made of: every field of a node but when it checked in and what it
#: discovered (read from the nodes themselves, not their base).
_FACTS = tuple(f.name for f in fields(Node) if f.name not in ("last_seen", "discovered_endpoints"))


def _same_facts(a: Node, b: Node) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _FACTS)


def _base(
    loc: str,
    members: list[Node],
    last: Mapping[str, tuple[tuple[object, ...], SegmentBase]],
    kept: dict[str, tuple[tuple[object, ...], SegmentBase]],
) -> SegmentBase:
    """The base of the segment ``loc`` of ``members``: the last topology's if it had the same
    nodes. A node that is a new object with the same facts (the local node, made anew for each
    plan) takes the token of the one it replaces."""
    k = tuple(map(_facts_token, members))
    before = last.get(loc)
    if before is not None and before[0] != k and len(before[0]) == len(k):
        old_members = before[1].members_in_order
        if all(
            t is o or _same_facts(n, m)
            for t, o, n, m in zip(k, before[0], members, old_members, strict=True)
        ):
            for n, o in zip(members, before[0], strict=True):
                n.__dict__["_k_token"] = o
            k = before[0]
    if before is not None and before[0] == k:
        b = before[1]
    else:
        b = _make_base(members)
    kept[loc] = (k, b)
    return b


def _make_base(members: list[Node]) -> SegmentBase:
    ordered = sorted(members, key=_name)
    allowed_ips: list[Prefix] = []
    seen_loc_ips: set[str] = set()
    loc_ips: list[Prefix] = []
    private_ips: list[IPAddress] = []
    private_hosts: list[Prefix] = []
    for n in ordered:
        allowed_ips += n.own_ips
        for ip in n.allowed_location_ips:
            if text(ip) not in seen_loc_ips:
                seen_loc_ips.add(text(ip))
                loc_ips.append(ip)
        if n.internal_ip is not None:
            private_hosts.append(host_of(n.internal_ip))
            private_ips.append(ip_of(n.internal_ip))
    loc_ips.sort(key=text)
    claims = dict(zip(net_keys(allowed_ips), allowed_ips, strict=True))
    return SegmentBase(
        members=tuple(ordered),
        members_in_order=tuple(members),
        leader=find_leader(ordered),
        allowed_ips=tuple(allowed_ips),
        allowed_location_ips=tuple(loc_ips),
        cidrs=tuple(n.subnet for n in ordered),
        hostnames=tuple(n.name for n in ordered),
        private_ips=tuple(private_ips),
        private_hosts=tuple(private_hosts),
        cni_compatibility_ips=tuple(n.cni_compatibility_ip for n in ordered),
        claims=claims,
        lengths=frozenset((v, plen) for v, _, plen in claims),
    )


@dataclass
class Topology:
    granularity: Granularity
    hostname: str
    port: int
    location: str
    leader: bool
    private_ip: Prefix | None
    subnet: Prefix | None
    wireguard_cidr: Prefix
    persistent_keepalive: int
    segments: list[Segment] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)
    service_cidrs: list[Prefix] = field(default_factory=list)
    discovered_endpoints: dict[str, Endpoint] = field(default_factory=dict)
    key: Key | None = None  # the local private key, if known
    logical_location: str = ""
    #: Claims the topology refused (a Peer's allowed IP, an allowed-location IP), with why.
    refusals: list[Problem] = field(default_factory=list)

    # -- queries -------------------------------------------------------------------------
    def local_segment(self) -> Segment | None:
        for s in self.segments:
            if s.location == self.location:
                return s
        return None

    def is_tunnelled(self, s: Segment) -> bool:
        """Whether the local node reaches segment ``s`` through WireGuard."""
        if s.location == self.location:
            return False
        if self.granularity is Granularity.CROSS:
            return s.logical_location != self.logical_location
        return True

    def update_endpoint(
        self, endpoint: Endpoint | None, key: Key | None, keepalive: int | None
    ) -> Endpoint | None:
        """A discovered endpoint replaces the given one only for peers behind NAT
        (keepalive > 0)."""
        if not keepalive or key is None or not self.discovered_endpoints:
            return endpoint
        return self.discovered_endpoints.get(str(key), endpoint)

    # -- WireGuard configurations -------------------------------------------------------
    def _segment_peer(self, s: Segment, keepalive: int, psk: Key | None = None) -> WgPeer:
        return WgPeer(
            public_key=s.key or Key.zero(),
            allowed_ips=s.allowed_ips + s.allowed_location_ips,
            endpoint=self.update_endpoint(s.endpoint, s.key, s.persistent_keepalive),
            persistent_keepalive=keepalive,
            preshared_key=psk,
        )

    def _peer_peer(self, p: Peer, keepalive: int, psk: Key | None = None) -> WgPeer:
        return WgPeer(
            public_key=p.public_key or Key.zero(),
            allowed_ips=list(p.allowed_ips),
            endpoint=self.update_endpoint(p.endpoint, p.public_key, p.persistent_keepalive),
            persistent_keepalive=keepalive,
            preshared_key=psk,
        )

    def conf(self) -> WgConf:
        """The local node's WireGuard device configuration."""
        pka = self.persistent_keepalive
        c = WgConf(private_key=self.key or Key.zero(), listen_port=self.port)
        c.peers += [self._segment_peer(s, pka) for s in self.segments if self.is_tunnelled(s)]
        c.peers += [self._peer_peer(p, pka, p.preshared_key) for p in self.peers]
        return c

    def as_peer(self) -> WgPeer | None:
        """The local segment as one WireGuard peer (for another cluster or a peer's config)."""
        s = self.local_segment()
        if s is None:
            return None
        return WgPeer(
            public_key=s.key or Key.zero(), allowed_ips=list(s.allowed_ips), endpoint=s.endpoint
        )

    def peer_conf(self, name: str) -> WgConf:
        """The configuration a peer ``name`` needs: every segment and every other peer."""
        pka, psk = 0, None
        for p in self.peers:
            if p.name == name:
                pka, psk = p.persistent_keepalive, p.preshared_key
                break
        c = WgConf()
        c.peers += [self._segment_peer(s, pka, psk) for s in self.segments]
        c.peers += [self._peer_peer(p, pka) for p in self.peers if p.name != name]
        return c


def segment_key(node: Node, granularity: Granularity) -> str:
    d = node.__dict__
    if granularity is Granularity.LOCATION:
        k: str | None = d.get("_k_segment")
        if k is None:
            k = d["_k_segment"] = logical_location(node)
        return k
    return NODE_PREFIX + node.name


def logical_location(node: Node) -> str:
    """The location whose private network a node shares (cross granularity)."""
    if node.internal_ip is None:
        return NODE_PREFIX + node.name
    return LOGICAL_PREFIX + node.location


def find_leader(nodes: list[Node]) -> int:
    """Kilo's leader choice: a public leader-annotated node, any leader-annotated node,
    a node with a public endpoint, else the first by name."""
    leaders: list[int] = []
    public: list[int] = []
    for i, n in enumerate(nodes):
        e = n.endpoint
        on_internet = e is not None and e.public
        if n.leader:
            if on_internet:
                return i
            leaders.append(i)
        if on_internet and not public:
            public.append(i)
    if leaders:
        return leaders[0]
    if public:
        return public[0]
    return 0


class _Allocator:
    def __init__(self, subnet: Prefix) -> None:
        self.network = subnet.network
        self.current: int | None = int(subnet.ip)

    def next(self) -> IPAddress | None:
        if self.current is None:
            return None
        self.current += 1
        try:
            ip = (
                ipaddress.ip_address(self.current)
                if self.network.version == 4
                else ipaddress.IPv6Address(self.current)
            )
        except ValueError:
            self.current = None
            return None
        if ip.version != self.network.version or ip not in self.network:
            self.current = None
            return None
        return ip


_name = operator.attrgetter("name")


def new_topology(
    nodes: Mapping[str, Node],
    peers: Mapping[str, Peer],
    granularity: Granularity,
    hostname: str,
    port: int,
    key: Key | None,
    subnet: Prefix,
    service_cidrs: Iterable[Prefix] = (),
    persistent_keepalive: int = 0,
    leaders: Mapping[str, str] | None = None,
) -> Topology:
    """Build the topology as seen from ``hostname`` (Kilo's ``NewTopology``). ``leaders``
    (segment key -> node name) overrides Kilo's leader choice where it names a member (the
    native liveness mode's Leases); elsewhere Kilo's rule stands."""
    if hostname not in nodes:
        raise TopologyError(f"node {hostname!r} is not among the ready nodes")
    if granularity not in (Granularity.LOCATION, Granularity.FULL, Granularity.CROSS):
        raise TopologyError(f"mesh granularity {granularity} is not supported here")
    groups: dict[str, list[Node]] = {}
    for n in nodes.values():
        groups.setdefault(segment_key(n, granularity), []).append(n)
    me = nodes[hostname]
    t = Topology(
        granularity=granularity,
        hostname=hostname,
        port=port,
        location=segment_key(me, granularity),
        logical_location=logical_location(me),
        leader=False,
        private_ip=me.internal_ip,
        subnet=me.subnet,
        wireguard_cidr=subnet,
        persistent_keepalive=persistent_keepalive,
        service_cidrs=list(service_cidrs),
        key=key,
    )
    global _BASES
    kept: dict[str, tuple[tuple[object, ...], SegmentBase]] = {}
    for loc, members in groups.items():
        base = _base(loc, members, _BASES, kept)
        leader = base.leader
        chosen = leaders.get(loc) if leaders else None
        if chosen is not None:
            leader = next((i for i, n in enumerate(base.members) if n.name == chosen), leader)
        head = base.members[leader]
        if loc == t.location and head.name == hostname:
            t.leader = True
        t.segments.append(
            Segment(
                location=loc,
                logical_location=logical_location(head),
                allowed_ips=list(base.allowed_ips),
                endpoint=head.endpoint,
                key=head.key,
                persistent_keepalive=head.persistent_keepalive,
                cidrs=list(base.cidrs),
                hostnames=list(base.hostnames),
                leader=leader,
                private_ips=list(base.private_ips) if base.private_ips else None,
                cni_compatibility_ips=list(base.cni_compatibility_ips),
                allowed_location_ips=list(base.allowed_location_ips),
                private_hosts=list(base.private_hosts) if base.private_hosts else None,
                base=base,
            )
        )
    _BASES = kept
    t.segments.sort(key=lambda s: s.location)
    taken, lengths = _owned_keys(t.segments, subnet)
    t.peers = drop_claims_in(
        _deduplicated(peers, t.refusals),
        taken,
        t.refusals,
        lengths,
    )
    t.discovered_endpoints = dict(me.discovered_endpoints or {})
    alloc = _Allocator(subnet)
    claims = AllowedLocationIPFilter(
        t.segments,
        t.peers,
        [
            s.base.claims.keys() if s.base is not None else net_keys(s.allowed_ips)
            for s in t.segments
        ],
    )
    for i, s in enumerate(t.segments):
        wg_ip = alloc.next()
        if wg_ip is None:
            raise TopologyError("failed to allocate an IP address; ran out of IP addresses")
        s.wireguard_ip = wg_ip
        s.allowed_ips.append(host_prefix(wg_ip))
        claims.add_allowed_ip(i, s.allowed_ips[-1])
        if t.leader and s.location == t.location:
            t.wireguard_cidr = ipaddress.ip_interface(f"{wg_ip}/{subnet.network.prefixlen}")
        for n in sorted((n for n in groups[s.location] if n.discovered_endpoints), key=_name):
            if n.discovered_endpoints:
                for k, e in n.discovered_endpoints.items():
                    t.discovered_endpoints.setdefault(k, e)
        s.allowed_location_ips = claims.filter(i, t.refusals)
    return t


#: The last Peers deduplicated: the answer and its refusals for the same Peer objects.
_PEERS: Last[Same, tuple[list[Peer], list[Problem]]] = Last()


def _deduplicated(peers: Mapping[str, Peer], refusals: list[Problem]) -> list[Peer]:
    """``deduplicate_peer_ips`` of the Peers by name; the last answer again for the same
    Peers (the same objects: a plan after a node changed)."""
    given = Same(peers.values())
    kept = _PEERS.get(given)
    if kept is None:
        refused: list[Problem] = []
        out = deduplicate_peer_ips(sorted(peers.values(), key=lambda p: p.name), refused)
        kept = _PEERS.put(given, (out, refused))
    refusals += kept[1]
    return list(kept[0])


def _owned_keys(
    segments: list[Segment], subnet: Prefix
) -> tuple[dict[NetKey, Prefix], set[tuple[int, int]]]:
    """The mesh's own addresses (the segments' allowed IPs and the WireGuard IPs they get)
    by network (the last of equal ones), and the networks' (version, prefix length) pairs,
    as ``drop_claims_in`` takes them."""
    alloc = _Allocator(subnet)
    out: dict[NetKey, Prefix] = {}
    lengths: set[tuple[int, int]] = set()
    for s in segments:
        if s.base is not None:
            out.update(s.base.claims)
            lengths |= s.base.lengths
        else:
            keys = net_keys(s.allowed_ips)
            out.update(zip(keys, s.allowed_ips, strict=True))
            lengths.update((v, plen) for v, _, plen in keys)
        ip = alloc.next()
        if ip is not None:
            h = host_prefix(ip)
            v, _, plen = k = net_key(h)
            out[k] = h
            lengths.add((v, plen))
    return out, lengths
