"""Which address claims the topology keeps (pure): Peers' allowed IPs and nodes'
allowed-location IPs that collide with the mesh's own addresses or with each other are refused,
each refusal returned as a ``Problem``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from kilo.model import Peer, Prefix, Problem, contains, overlaps


class SegmentClaims(Protocol):
    """What a segment claims: its own addresses and its allowed-location IPs."""

    location: str
    allowed_ips: list[Prefix]
    allowed_location_ips: list[Prefix]


def _peer_refusal(p: Peer, ip: Prefix, reason: str) -> Problem:
    return Problem("Peer", p.name, "spec.allowedIPs", str(ip), f"{reason}; ignored")


def deduplicate_peer_ips(peers: Iterable[Peer], refusals: list[Problem]) -> list[Peer]:
    """The first peer (by name) to claim an allowed IP keeps it; later claims are refused."""
    seen: set[Prefix] = set()
    out: list[Peer] = []
    for p in peers:
        keep: list[Prefix] = []
        for ip in p.allowed_ips:
            if ip in seen:
                refusals.append(_peer_refusal(p, ip, "already claimed by another peer"))
                continue
            seen.add(ip)
            keep.append(ip)
        out.append(replace(p, allowed_ips=tuple(keep)) if len(keep) != len(p.allowed_ips) else p)
    return out


def drop_claims_on_nodes(
    peers: Iterable[Peer], owned: Iterable[Prefix], refusals: list[Problem]
) -> list[Peer]:
    """Refuse a peer's allowed IP that lies inside one of the mesh's ``owned`` prefixes (nodes'
    pod CIDRs, internal IPs, WireGuard IPs).

    Kilo passes such a claim to WireGuard, which then moves the node's traffic to the peer. Here
    the claim is refused and the mesh keeps working (a wider prefix that merely contains node
    addresses is kept: WireGuard and the kernel prefer the more specific entry).
    """
    taken: dict[tuple[int, int], dict[int, Prefix]] = {}  # (version, prefixlen) -> network -> owner
    for o in owned:
        taken.setdefault((o.version, o.network.prefixlen), {})[int(o.network.network_address)] = o
    lengths = sorted(taken)
    out: list[Peer] = []
    for p in peers:
        keep: list[Prefix] = []
        for a in p.allowed_ips:
            owner = None
            addr = int(a.network.network_address)
            for version, plen in lengths:
                if version == a.version and plen <= a.network.prefixlen:
                    shift = a.max_prefixlen - plen
                    owner = taken[(version, plen)].get((addr >> shift) << shift)
                    if owner is not None:
                        break
            if owner is not None:
                refusals.append(_peer_refusal(p, a, f"lies in the mesh's {owner}"))
                continue
            keep.append(a)
        out.append(replace(p, allowed_ips=tuple(keep)) if len(keep) != len(p.allowed_ips) else p)
    return out


def filter_allowed_location_ips(
    ips: Iterable[Prefix],
    location: str,
    segments: Sequence[SegmentClaims],
    peers: Sequence[Peer],
    refusals: list[Problem],
) -> list[Prefix]:
    """Refuse allowed-location IPs that another location, a known allowed IP or a peer claims.

    As in Kilo, segments later in the order have not been allocated their WireGuard IP yet when
    an earlier segment is filtered, so only the IPs known at that point count.
    """
    out: list[Prefix] = []
    for ip in ips:
        reason = ""
        for s in segments:
            if location != s.location and any(overlaps(ip, o) for o in s.allowed_location_ips):
                reason = f"overlaps an allowed location IP of {s.location}"
                break
            if any(contains(a, ip.ip) for a in s.allowed_ips):
                reason = f"lies in an allowed IP of {s.location}"
                break
        if not reason:
            for p in peers:
                if any(overlaps(ip, a) for a in p.allowed_ips):
                    reason = f"overlaps an allowed IP of peer {p.name}"
                    break
        if reason:
            refusals.append(
                Problem("Location", location, "allowed-location-ips", str(ip), f"{reason}; ignored")
            )
            continue
        out.append(ip)
    return out
