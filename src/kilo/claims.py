"""Which address claims the topology keeps (pure): Peers' allowed IPs and nodes'
allowed-location IPs that collide with the mesh's own addresses or with each other are refused,
each refusal returned as a ``Problem``.

Prefixes are compared as integers (``kilo.prefixes``), and the claims a prefix is tested against
are indexed: by (version, prefix length) -> network for "which claims contain it", and sorted by
first address for "which claims lie inside it". Two prefixes overlap exactly when one contains
the other, so the two queries together find every overlap without comparing all pairs."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from kilo.memo import Last, Same
from kilo.model import Peer, Prefix, Problem
from kilo.prefixes import NetKey, ip_key, net_key, net_keys, span


class SegmentClaims(Protocol):
    """What a segment claims: its own addresses and its allowed-location IPs."""

    location: str
    allowed_ips: list[Prefix]
    allowed_location_ips: list[Prefix]


def _peer_refusal(p: Peer, ip: Prefix, reason: str) -> Problem:
    return Problem("Peer", p.name, "spec.allowedIPs", str(ip), f"{reason}; ignored")


def deduplicate_peer_ips(peers: Iterable[Peer], refusals: list[Problem]) -> list[Peer]:
    """The first peer (by name) to claim an allowed IP keeps it; later claims are refused."""
    seen: set[NetKey] = set()
    out: list[Peer] = []
    for p in peers:
        keep: list[Prefix] = []
        for ip in p.allowed_ips:
            k = ip_key(ip)
            if k in seen:
                refusals.append(_peer_refusal(p, ip, "already claimed by another peer"))
                continue
            seen.add(k)
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
    mine = list(owned)
    return drop_claims_in(peers, dict(zip(net_keys(mine), mine, strict=True)), refusals)


def drop_claims_in(
    peers: Iterable[Peer],
    taken: Mapping[NetKey, Prefix],
    refusals: list[Problem],
    lengths: Iterable[tuple[int, int]] | None = None,
) -> list[Peer]:
    """``drop_claims_on_nodes`` with the owned prefixes by network (each network's owner);
    ``lengths``: their (version, prefix length) pairs, if known."""
    lengths = sorted(set(lengths) if lengths is not None else {(v, p) for v, _, p in taken})
    out: list[Peer] = []
    for p in peers:
        keep: list[Prefix] = []
        for a in p.allowed_ips:
            owner = None
            av, addr, aplen = net_key(a)
            width = 32 if av == 4 else 128
            for version, plen in lengths:
                if version == av and plen <= aplen:
                    shift = width - plen
                    owner = taken.get((version, (addr >> shift) << shift, plen))
                    if owner is not None:
                        break
            if owner is not None:
                refusals.append(_peer_refusal(p, a, f"lies in the mesh's {owner}"))
                continue
            keep.append(a)
        out.append(replace(p, allowed_ips=tuple(keep)) if len(keep) != len(p.allowed_ips) else p)
    return out


class PrefixIndex:
    """Prefixes (their networks), each with a rank; entries can be withdrawn."""

    def __init__(self) -> None:
        self._by_len: dict[tuple[int, int], dict[int, list[int]]] = {}  # (v, plen) -> net -> ids
        self._lengths: list[tuple[int, int]] = []
        self._sorted: dict[int, list[tuple[int, int]]] = {}  # version -> [(first address, id)]
        self._queried = False  # sorted since the first query
        self.rank: list[int] = []
        self.live: list[bool] = []

    def add(self, p: Prefix, rank: int) -> int:
        v, net, plen = net_key(p)
        i = len(self.rank)
        self.rank.append(rank)
        self.live.append(True)
        bucket = self._by_len.get((v, plen))
        if bucket is None:
            bucket = self._by_len[(v, plen)] = {}
            self._lengths = sorted(self._by_len)
        bucket.setdefault(net, []).append(i)
        entries = self._sorted.setdefault(v, [])
        if self._queried:  # queried and added in turn (Peer after Peer): kept sorted as it goes
            insort(entries, (net, i))
        else:  # built in bulk: sorted once, at the first query
            entries.append((net, i))
        return i

    def containing(self, v: int, addr: int, plen: int) -> Iterator[int]:
        """Entries whose network contains the ``plen``-bit network of ``addr``."""
        width = 32 if v == 4 else 128
        for version, length in self._lengths:
            if version == v and length <= plen:
                shift = width - length
                yield from self._by_len[(version, length)].get((addr >> shift) << shift, ())

    def within(self, v: int, lo: int, hi: int) -> Iterator[int]:
        """Entries whose network starts in [lo, hi] (for a prefix: lies inside it or, starting
        at ``lo``, contains it)."""
        if not self._queried:
            for entries in self._sorted.values():
                entries.sort()
            self._queried = True
        entries = self._sorted.get(v, [])
        a = bisect_left(entries, (lo, -1))
        b = bisect_right(entries, (hi, len(self.rank)))
        for _, i in entries[a:b]:
            yield i

    def first(self, ids: Iterable[int], exclude: int = -1) -> int | None:
        """The lowest rank among the live entries ``ids`` (rank ``exclude`` aside)."""
        best = None
        for i in ids:
            r = self.rank[i]
            if self.live[i] and r != exclude and (best is None or r < best):
                best = r
        return best

    def overlapping(self, p: Prefix, exclude: int = -1) -> int | None:
        v, lo, hi = span(p)
        plen = p.network.prefixlen
        a = self.first(self.containing(v, lo, plen), exclude)
        b = self.first(self.within(v, lo, hi), exclude)
        return a if b is None else b if a is None else min(a, b)


class AllowedLocationIPFilter:
    """Refuse allowed-location IPs that another location, a known allowed IP or a peer claims
    (Kilo's ``filterAllowedLocationIPs``), segment by segment in the topology's order.

    As in Kilo, a segment is filtered right after it is allocated its WireGuard IP: later
    segments have none yet (``add_allowed_ip`` adds each as it is allocated), and earlier
    segments' allowed-location IPs count only as far as they were kept.
    """

    def __init__(
        self,
        segments: Sequence[SegmentClaims],
        peers: Sequence[Peer],
        networks: Sequence[Iterable[NetKey]] | None = None,
    ) -> None:
        """``networks``: each segment's allowed IPs' ``net_key``, if known."""
        self.segments = segments
        #: Without any allowed-location IP there is nothing to filter (and nothing to index).
        self.active = any(s.allowed_location_ips for s in segments)
        if not self.active:
            return
        self._loc = PrefixIndex()
        self._loc_ids = [
            [self._loc.add(ip, j) for ip in s.allowed_location_ips] for j, s in enumerate(segments)
        ]
        # Which allowed IPs contain an allowed-location IP's address: the networks that would
        # (the address cut to every prefix length), looked up for each allowed IP, instead of
        # an index of all of them (thousands) for a few dozen questions.
        self._nets: dict[NetKey, list[tuple[int, int]]] = {}
        for s in segments:
            for ip in s.allowed_location_ips:
                v, addr, _ = ip_key(ip)
                width = 32 if v == 4 else 128
                for plen in range(width + 1):
                    shift = width - plen
                    self._nets.setdefault((v, addr >> shift << shift, plen), []).append((v, addr))
        self._in: dict[tuple[int, int], int] = {}  # address -> the first segment containing it
        # Each network to the first segment with an allowed IP of it (dicts merged from the
        # last segment to the first), then looked up for each of ``_nets``.
        first: dict[NetKey, int] = {}
        for seg in range(len(segments) - 1, -1, -1):
            keys = net_keys(segments[seg].allowed_ips) if networks is None else networks[seg]
            first.update(dict.fromkeys(keys, seg))
        for net, addrs in self._nets.items():
            at = first.get(net)
            if at is not None:
                for where in addrs:
                    if self._in.get(where, at + 1) > at:
                        self._in[where] = at
        self._peers = _peer_index(peers)
        self.peers = peers

    def _note(self, j: int, ips: Iterable[Prefix]) -> None:
        nets, found = self._nets, self._in
        for a in ips:
            hit = nets.get(net_key(a))
            if hit is not None:
                for addr in hit:
                    if found.get(addr, j + 1) > j:
                        found[addr] = j

    def add_allowed_ip(self, j: int, ip: Prefix) -> None:
        if self.active:
            self._note(j, (ip,))

    def filter(self, i: int, refusals: list[Problem]) -> list[Prefix]:
        """Segment ``i``'s allowed-location IPs that it keeps; the others are refused."""
        s = self.segments[i]
        out: list[Prefix] = []
        if not self.active:
            return out
        for n, ip in zip(self._loc_ids[i], s.allowed_location_ips, strict=True):
            reason = ""
            j1 = self._loc.overlapping(ip, exclude=i)
            v, addr, _ = ip_key(ip)
            j2 = self._in.get((v, addr))
            if j1 is not None and (j2 is None or j1 <= j2):
                reason = f"overlaps an allowed location IP of {self.segments[j1].location}"
            elif j2 is not None:
                reason = f"lies in an allowed IP of {self.segments[j2].location}"
            else:
                k = self._peers.overlapping(ip)
                if k is not None:
                    reason = f"overlaps an allowed IP of peer {self.peers[k].name}"
            if reason:
                self._loc.live[n] = False
                refusals.append(
                    Problem(
                        "Location",
                        s.location,
                        "allowed-location-ips",
                        str(ip),
                        f"{reason}; ignored",
                    )
                )
                continue
            out.append(ip)
        return out


#: The last Peers' index: the same Peer objects, the same index.
_PEER_INDEX: Last[Same, PrefixIndex] = Last()


def _peer_index(peers: Sequence[Peer]) -> PrefixIndex:
    """The Peers' allowed IPs, each ranked by its Peer's position (only ever queried, never
    withdrawn from: kept for the next topology with the same Peers)."""
    given = Same(peers)
    index = _PEER_INDEX.get(given)
    if index is None:
        index = _PEER_INDEX.put(given, PrefixIndex())
        for k, p in enumerate(peers):
            for a in p.allowed_ips:
                index.add(a, k)
    return index
