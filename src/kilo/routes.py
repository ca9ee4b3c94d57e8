"""Topology + this node -> the routes and policy rules it needs (Kilo's ``Routes`` semantics; pure).

A leader routes other segments' pod CIDRs, private IPs (but those on its private network when
its own endpoint is there too) and allowed-location IPs through the WireGuard interface
(gateway: that segment's WireGuard IP) and peers' allowed IPs straight onto it. A non-leader
sends all of that to its leader over the private network, encapsulated according to
``--encapsulate``. With ``--local`` the nodes of a location route each other's pod CIDRs over
the private network. With granularity ``cross`` every node is a leader, and the nodes of its
own location are reached like ``--local`` members.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from kilo.model import IPAddress, Prefix, contains, host_prefix
from kilo.topology import Segment, Topology

MAIN_TABLE = 254
KILO_TABLE = 1107


class Strategy(str, enum.Enum):
    NEVER = "never"
    CROSS_SUBNET = "crosssubnet"
    ALWAYS = "always"


class Compatibility(str, enum.Enum):
    """How the gateway to another node of the location is chosen (Kilo's encapsulators)."""

    NONE = ""  # IPIP: the node's private IP
    FLANNEL = "flannel"  # the node's pod subnet address (flannel.1)
    CILIUM = "cilium"  # the node's CNI compatibility IP


@dataclass(frozen=True)
class Encapsulation:
    strategy: Strategy = Strategy.ALWAYS
    compatibility: Compatibility = Compatibility.NONE

    def gw(
        self, internal: IPAddress | None, cni_ip: Prefix | None, subnet: Prefix | None
    ) -> IPAddress | None:
        if self.compatibility is Compatibility.FLANNEL:
            return None if subnet is None else subnet.network.network_address
        if self.compatibility is Compatibility.CILIUM:
            return None if cni_ip is None else cni_ip.ip
        return internal


class Route(NamedTuple):
    """A route (immutable; a named tuple: thousands are made per plan, and a tuple is made
    several times faster than a frozen dataclass)."""

    dst: Prefix
    dev: str
    gw: IPAddress | None = None
    src: IPAddress | None = None
    onlink: bool = False
    table: int = MAIN_TABLE

    def __str__(self) -> str:
        s = f"{self.dst.network} dev {self.dev}"
        if self.gw is not None:
            s += f" via {self.gw}"
        if self.src is not None:
            s += f" src {self.src}"
        if self.onlink:
            s += " onlink"
        if self.table != MAIN_TABLE:
            s += f" table {self.table}"
        return s


class Rule(NamedTuple):
    """A policy rule (a named tuple, as ``Route``)."""

    table: int
    src: Prefix | None = None
    dst: Prefix | None = None
    iif: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.src is not None:
            parts.append(f"from {self.src.network}")
        if self.dst is not None:
            parts.append(f"to {self.dst.network}")
        if self.iif is not None:
            parts.append(f"iif {self.iif}")
        return " ".join([*parts, f"lookup {self.table}"])


@dataclass(frozen=True)
class Interfaces:
    kilo: str = "kilo0"
    private: str = "eth0"
    tunnel: str = "tunl0"


def _encapsulate(r: Route, enc: Encapsulation, private_ip: Prefix | None, tunnel: str) -> Route:
    if enc.strategy is Strategy.ALWAYS or (
        enc.strategy is Strategy.CROSS_SUBNET
        and private_ip is not None
        and r.gw is not None
        and not contains(private_ip, r.gw)
    ):
        src = r.src if r.src is not None or private_ip is None else private_ip.ip
        return Route(r.dst, tunnel, r.gw, src, r.onlink, r.table)
    return r


def _local_routes(
    t: Topology, s: Segment, ifs: Interfaces, enc: Encapsulation, leader: bool
) -> tuple[list[Route], list[Rule]]:
    """Routes to the other members of segment ``s`` over the private network."""
    routes: list[Route] = []
    rules: list[Rule] = []
    if t.private_ip is None or s.private_ips is None:
        return routes, rules
    for i, cidr in enumerate(s.cidrs):
        priv = s.private_ips[i]
        if priv == t.private_ip.ip or cidr is None:
            continue
        gw = enc.gw(priv, s.cni_compatibility_ips[i], cidr)
        routes.append(
            _encapsulate(Route(cidr, ifs.private, gw, onlink=True), enc, t.private_ip, ifs.tunnel)
        )
        if enc.strategy is Strategy.ALWAYS or (
            enc.strategy is Strategy.CROSS_SUBNET and not contains(t.private_ip, priv)
        ):
            routes.append(
                Route(host_prefix(priv), ifs.tunnel, gw, t.private_ip.ip, True, KILO_TABLE)
            )
            if t.subnet is not None:
                rules.append(Rule(KILO_TABLE, src=t.subnet, dst=host_prefix(priv)))
            if leader:
                rules.append(Rule(KILO_TABLE, dst=host_prefix(priv), iif=ifs.kilo))
    return routes, rules


def _hosts(s: Segment) -> list[Prefix]:
    """The segment's private IPs as one-address CIDRs."""
    if s.private_hosts is not None:
        return s.private_hosts
    return [host_prefix(p) for p in s.private_ips or []]


def _one_family(out: list[Route], kilo: str) -> list[Route]:
    """The routes the kernel can take: a destination of one family with a source or gateway of
    the other (a dual-stack cluster whose private and WireGuard IPs are IPv4, and a Peer's or
    an allowed-location IPv6 prefix) cannot be added, and one such route failed the whole
    reconcile. Through the WireGuard interface the source and gateway are dropped (WireGuard
    routes by its allowed IPs); a route through another device, whose gateway is of the other
    family, is left out (the node has no next hop of that family to give it)."""
    if all(
        (r.src is None or r.src.version == r.dst.version)
        and (r.gw is None or r.gw.version == r.dst.version)
        for r in out
    ):
        return out  # the usual case: one pass, nothing made
    fit: list[Route] = []
    for r in out:
        v = r.dst.version
        src = r.src if r.src is None or r.src.version == v else None
        if r.gw is not None and r.gw.version != v:
            if r.dev != kilo:
                continue
            fit.append(Route(r.dst, r.dev, None, src, False, r.table))
        elif src is not r.src:
            fit.append(Route(r.dst, r.dev, r.gw, src, r.onlink, r.table))
        else:
            fit.append(r)
    return fit


def routes(
    t: Topology, ifs: Interfaces, local: bool, enc: Encapsulation
) -> tuple[list[Route], list[Rule]]:
    """The routes and rules of the local node of ``t`` (only routes the kernel can take:
    ``_one_family``, applied to each part as it is made; a leader's routes to a segment are
    kept with it, already fit)."""
    if not t.leader:
        via_leader, to_members = _follower_routes(t, ifs, local, enc)
        return _one_family(via_leader, ifs.kilo), to_members
    out: list[Route] = []
    rules: list[Rule] = []
    src = t.private_ip.ip if t.private_ip is not None else None
    kilo = ifs.kilo
    lan = _own_endpoint_lan(t)
    for s in t.segments:
        if not t.is_tunnelled(s):
            if local:
                r, ru = _local_routes(t, s, ifs, enc, leader=True)
                out += _one_family(r, kilo)
                rules += ru
            elif (
                s.location == t.location
                and t.private_ip is not None
                and enc.strategy is not Strategy.NEVER
                and s.private_ips
            ):
                for i, cidr in enumerate(s.cidrs):
                    priv = s.private_ips[i]
                    if priv == t.private_ip.ip:
                        continue
                    gw = enc.gw(priv, s.cni_compatibility_ips[i], cidr)
                    if gw is not None and gw != priv:
                        out.append(Route(host_prefix(priv), ifs.tunnel, gw, None, True, KILO_TABLE))
                        rules.append(Rule(KILO_TABLE, dst=host_prefix(priv), iif=ifs.kilo))
            continue
        out += _tunnelled(t, s, kilo, src, lan)
    to_peers = [
        Route(a, kilo, None, src, False, MAIN_TABLE) for p in t.peers for a in p.allowed_ips
    ]
    out += _one_family(to_peers, kilo)
    return out, rules


def _own_endpoint_lan(t: Topology) -> Prefix | None:
    """This node's private network if its own endpoint is an address on it, else None."""
    own = t.local_segment()
    ep = own.endpoint if own is not None else None
    ip = ep.ip if ep is not None else None
    if t.private_ip is None or ip is None or not contains(t.private_ip, ip):
        return None
    return t.private_ip


def _tunnelled(
    t: Topology, s: Segment, kilo: str, src: IPAddress | None, lan: Prefix | None
) -> tuple[Route, ...]:
    """A leader's routes to segment ``s`` through WireGuard: kept with the segment's base
    (its nodes unchanged) while the rest of the answer is the same too.

    ``lan`` is this node's private network when its own endpoint is on it. A private IP on
    that network is not routed through the tunnel (Kilo skips only the one equal to the
    segment's endpoint): that node sends its handshakes to our endpoint from that address,
    WireGuard moves the segment's endpoint to it, and a route through the tunnel would then
    loop the tunnel's own packets into itself (granularity ``full`` within one LAN)."""
    wg = s.wireguard_ip
    assert wg is not None
    ep = t.update_endpoint(s.endpoint, s.key, s.persistent_keepalive)
    ep_ip = ep.ip if ep is not None else None
    key = (wg, src, lan, kilo, ep_ip, tuple(s.allowed_location_ips))
    memo = s.base.memo if s.base is not None else None
    if memo is not None:
        kept = memo.get("tunnelled")
        if kept is not None and kept[0] == key:
            same: tuple[Route, ...] = kept[1]
            return same
    out: list[Route] = []
    privs = s.private_ips
    hosts = _hosts(s)
    add = out.append  # (positional arguments, bound names: thousands of routes per plan)
    for i, cidr in enumerate(s.cidrs):
        if cidr is not None:
            add(Route(cidr, kilo, wg, src, True, MAIN_TABLE))
        if privs is not None and privs[i] != ep_ip and (lan is None or not contains(lan, privs[i])):
            add(Route(hosts[i], kilo, wg, src, True, MAIN_TABLE))
    out += [Route(a, kilo, wg, src, True, MAIN_TABLE) for a in s.allowed_location_ips]
    made = tuple(_one_family(out, kilo))
    if memo is not None:
        memo["tunnelled"] = (key, made)
    return made


def _follower_routes(
    t: Topology, ifs: Interfaces, local: bool, enc: Encapsulation
) -> tuple[list[Route], list[Rule]]:
    out: list[Route] = []
    rules: list[Rule] = []
    own = t.local_segment()
    gw: IPAddress | None = None
    if own is not None and own.private_ips is not None:
        gw = enc.gw(
            own.private_ips[own.leader],
            own.cni_compatibility_ips[own.leader],
            own.cidrs[own.leader],
        )

    def via_leader(dst: Prefix) -> Route:
        return _encapsulate(Route(dst, ifs.private, gw, onlink=True), enc, t.private_ip, ifs.tunnel)

    for s in t.segments:
        if s.wireguard_ip is not None:
            out.append(via_leader(host_prefix(s.wireguard_ip)))
        if s.location == t.location:
            if local:
                r, ru = _local_routes(t, s, ifs, enc, leader=False)
                out += r
                rules += ru
            continue
        out += [via_leader(c) for c in s.cidrs if c is not None]
        out += [via_leader(h) for h in _hosts(s)]
        out += [via_leader(a) for a in s.allowed_location_ips]
    for p in t.peers:
        out += [via_leader(a) for a in p.allowed_ips]
    return out, rules
