"""The indexed allowed-location-IP filter answers exactly as Kilo's pairwise filter does."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from kilo.claims import AllowedLocationIPFilter
from kilo.keys import Key
from kilo.model import Peer, Prefix, Problem, contains, host_prefix, overlaps


@dataclass
class Seg:
    location: str
    allowed_ips: list[Prefix]
    allowed_location_ips: list[Prefix]
    wireguard_ip: Prefix | None = field(default=None)


def pairwise_filter(
    ips: Sequence[Prefix],
    location: str,
    segments: Sequence[Seg],
    peers: Sequence[Peer],
    refusals: list[Problem],
) -> list[Prefix]:
    """The filter as it was (Kilo's ``filterAllowedLocationIPs``, every pair compared)."""
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


def _prefix(rng: random.Random) -> Prefix:
    """Small address space, so that prefixes nest, repeat and overlap often."""
    if rng.random() < 0.15:
        return ipaddress.ip_interface(f"fd00::{rng.randrange(16):x}/{rng.choice((124, 126, 128))}")
    ip = ipaddress.IPv4Address(0x0A000000 + rng.randrange(64))
    return ipaddress.ip_interface(f"{ip}/{rng.choice((26, 28, 29, 30, 31, 32))}")


def _case(rng: random.Random) -> tuple[list[Seg], list[Peer]]:
    segs = [
        Seg(
            f"location:l{i}",
            [_prefix(rng) for _ in range(rng.randrange(3))],
            [_prefix(rng) for _ in range(rng.randrange(4))],
            host_prefix(ipaddress.IPv4Address(0x0A000000 + rng.randrange(64))),
        )
        for i in range(rng.randrange(1, 6))
    ]
    peers = [
        Peer(
            f"p{k}", Key(bytes([k + 1] * 32)), tuple(_prefix(rng) for _ in range(rng.randrange(3)))
        )
        for k in range(rng.randrange(4))
    ]
    return segs, peers


def _run_pairwise(segs: list[Seg], peers: list[Peer]) -> tuple[list[list[Prefix]], list[Problem]]:
    refusals: list[Problem] = []
    for s in segs:
        assert s.wireguard_ip is not None
        s.allowed_ips.append(s.wireguard_ip)
        s.allowed_location_ips = pairwise_filter(
            s.allowed_location_ips, s.location, segs, peers, refusals
        )
    return [s.allowed_location_ips for s in segs], refusals


def _run_indexed(segs: list[Seg], peers: list[Peer]) -> tuple[list[list[Prefix]], list[Problem]]:
    refusals: list[Problem] = []
    f = AllowedLocationIPFilter(segs, peers)
    for i, s in enumerate(segs):
        assert s.wireguard_ip is not None
        s.allowed_ips.append(s.wireguard_ip)
        f.add_allowed_ip(i, s.wireguard_ip)
        s.allowed_location_ips = f.filter(i, refusals)
    return [s.allowed_location_ips for s in segs], refusals


def test_indexed_filter_matches_pairwise_filter_on_random_claims() -> None:
    refused = 0
    for seed in range(3000):
        segs, peers = _case(random.Random(seed))
        copy = [
            Seg(s.location, list(s.allowed_ips), list(s.allowed_location_ips), s.wireguard_ip)
            for s in segs
        ]
        want = _run_pairwise(segs, peers)
        got = _run_indexed(copy, peers)
        assert got == want, seed
        refused += len(want[1])
    assert refused > 1000  # the cases do collide


def test_indexed_filter_is_not_quadratic() -> None:
    """50 segments of 100 nodes, one allowed-location IP each, 1,000 peers: every IP kept."""
    segs = [
        Seg(
            f"location:l{i:02d}",
            [ipaddress.ip_interface(f"10.{20 + i}.{j}.0/24") for j in range(100)],
            [ipaddress.ip_interface(f"192.168.{i}.0/24")],
            host_prefix(ipaddress.IPv4Address(0x0A040001 + i)),
        )
        for i in range(50)
    ]
    peers = [
        Peer(
            f"p{k}", Key(bytes([1] * 32)), (ipaddress.ip_interface(f"10.5.{k >> 8}.{k % 256}/32"),)
        )
        for k in range(1000)
    ]
    kept, refusals = _run_indexed(segs, peers)
    assert refusals == [] and all(len(k) == 1 for k in kept)
