"""Granularity ``full`` in the lab (issue 14): every node its own segment, WireGuard to every
other node, also to the nodes of its own LAN.

Location aws of a1 (public) and a2 (private: its endpoint is its LAN address; its way to the
internet through NAT ``home``, as a private cloud node's), location gcp of g1 (public); kg on
every node with ``--mesh-granularity full`` and a short resync, real wireguard-go. a1's
handshakes reach a2 from a1's LAN address, and WireGuard on a2 moves a1's endpoint there
(roaming): a route for that address through kilo0 would loop the tunnel's packets into the
tunnel itself. (g1 cannot reach a2's endpoint: a full mesh needs every node to reach every
other node's endpoint, and the NAT lets a2 out, not in; Kilo's docs say the same.)
What is checked:

- a1 and a2 reach each other's pods, and a1 and g1 theirs;
- the traffic between a2 and a1 goes through their WireGuard tunnel (a2's counters grow);
- a2 routes no address of its LAN through kilo0, and a1 has a2 on a2's LAN address;
- a1 and a2 still reach each other after a few resyncs;
- nothing of the lab is left behind.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import pytest
from kilo_lab.lab import Lab

from tests.integration.test_agent_support import (
    Tracker,
    agent_lab,
    check_nothing_left,
    lab_name,
    pod,
    reach,
    two_locations,
)

pytestmark = pytest.mark.integration

RESYNC = 5  # seconds: each resync puts the published endpoints back where WireGuard roamed
PAIRS = (("a1", "a2"), ("a2", "a1"), ("a1", "g1"), ("g1", "a1"))


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    spec = two_locations(lab_name("full"), agent_args=["--resync-period", f"{RESYNC}s"])
    spec["clusters"][0]["granularity"] = "full"
    spec["clusters"][0]["locations"][1]["nodes"].pop()  # g2: private, on another LAN
    spec["clusters"][0]["locations"][0]["nodes"][1]["nat"] = "home"  # a2's way out
    with agent_lab(spec) as (lab, tracker):
        yield lab, tracker


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    return lab_tracker[0]


def peer_transfer(lab: Lab, node: str, endpoint_ip: str) -> tuple[int, str]:
    """Bytes over ``node``'s WireGuard peer whose endpoint or allowed IPs hold
    ``endpoint_ip``'s host, and that peer's endpoint."""
    dump = lab.wg(node, "show", "kilo0", "dump").stdout.splitlines()[1:]
    for line in dump:
        _, _, endpoint, allowed, _, rx, tx, _ = line.split("\t")
        if f"{endpoint_ip}/32" in allowed.split(","):
            return int(rx) + int(tx), endpoint
    raise AssertionError(f"{node} has no peer for {endpoint_ip}: {dump}")


def reaches(lab: Lab, src: str, dst: str) -> None:
    reach(lab, f"{src}-p0", pod(lab, dst), dump=(src, dst))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_pods_reach_pods(lab: Lab, src: str, dst: str) -> None:
    reaches(lab, src, dst)


def test_same_lan_traffic_goes_through_the_tunnel(lab: Lab) -> None:
    a1 = lab.spec.node("a1").lan_ip
    a2 = lab.spec.node("a2").lan_ip
    before, _ = peer_transfer(lab, "a2", str(a1))
    reaches(lab, "a2", "a1")
    after, _ = peer_transfer(lab, "a2", str(a1))
    assert after > before
    _, endpoint = peer_transfer(lab, "a1", str(a2))
    assert endpoint == f"{a2}:51820"


def test_no_lan_address_is_routed_through_the_tunnel(lab: Lab) -> None:
    routes = lab.exec("a2", ["ip", "-4", "route", "show", "dev", "kilo0"]).stdout
    lan = next(loc.cidr for loc in lab.spec.cluster("c1").locations if loc.name == "aws")
    dsts = [ipaddress.ip_network(r.split()[0], strict=False) for r in routes.splitlines()]
    assert not [d for d in dsts if d.subnet_of(lan)], routes


def test_still_after_resyncs(lab: Lab) -> None:
    """The resyncs put a1's published endpoint back on a2's device (WireGuard roamed it to
    a1's LAN address): traffic flows either way."""
    time.sleep(3 * RESYNC)
    for src, dst in PAIRS[:2]:
        reaches(lab, src, dst)


def test_nothing_left(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
