"""Authorisation (``kilo.authorise``): what a Peer or a Node may claim, and who wins an overlap."""

from __future__ import annotations

import ipaddress

from kilo.authorise import PeerPolicy, authorise_nodes, authorise_peers
from kilo.keys import Key
from kilo.model import Endpoint, Node, Peer, Prefix

WG = ipaddress.ip_interface("10.4.0.0/16")
SERVICES = (ipaddress.ip_interface("10.3.0.0/16"),)


def _p(text: str) -> Prefix:
    return ipaddress.ip_interface(text)


def _key(i: int) -> Key:
    return Key(bytes([i]) * 32)


NODES = {
    "a": Node(
        name="a",
        key=_key(1),
        subnet=_p("10.2.1.0/24"),
        internal_ip=_p("192.168.1.10/24"),
        endpoint=Endpoint(port=51820, ip=ipaddress.ip_address("198.51.100.1")),
        allowed_location_ips=(_p("172.16.5.0/24"),),
    )
}


def peer(name: str, *ips: str, key: int = 50, created: str = "") -> Peer:
    return Peer(
        name=name,
        public_key=_key(key),
        allowed_ips=tuple(map(_p, ips)),
        created=created,
    )


def run(*peers: Peer, policy: PeerPolicy | None = None) -> tuple[dict[str, Peer], list[str]]:
    out, problems = authorise_peers(
        {p.name: p for p in peers}, NODES, WG, SERVICES, policy or PeerPolicy()
    )
    return out, [f"{p.name} {p.field} {p.value}: {p.reason}" for p in problems]


def test_the_clusters_own_addresses_and_default_routes_are_refused() -> None:
    claims = [
        ("0.0.0.0/0", "default route"),
        ("::/0", "default route"),
        ("10.4.0.1/32", "WireGuard subnet"),
        ("10.0.0.0/8", "WireGuard subnet"),  # a supernet of the cluster's addresses
        ("10.3.0.10/32", "service CIDR"),
        ("10.2.1.0/25", "pod CIDR"),
        ("192.168.1.10/32", "internal IP"),
        ("192.168.1.99/32", "private network"),
        ("198.51.100.1/32", "endpoint"),
    ]
    for ip, why in claims:
        out, problems = run(peer("p", ip, "10.5.0.1/32"))
        assert [str(a) for a in out["p"].allowed_ips] == ["10.5.0.1/32"], ip
        assert len(problems) == 1 and why in problems[0] and ip in problems[0], problems


def test_an_allowed_range_lets_peers_claim_inside_it() -> None:
    policy = PeerPolicy(allowed_ranges=(_p("10.3.0.0/16"), _p("0.0.0.0/0")))
    out, problems = run(peer("p", "10.3.0.10/32", "10.2.1.0/25"), policy=policy)
    assert len(out["p"].allowed_ips) == 2 and not problems
    out, problems = run(peer("p", "10.3.0.10/32"), policy=PeerPolicy((_p("10.3.0.0/24"),)))
    assert out["p"].allowed_ips and not problems


def test_overlaps_go_to_the_older_peer() -> None:
    old = peer("zz-old", "10.5.0.0/24", key=60, created="2026-01-01T00:00:00Z")
    for claim in ("10.5.0.0/24", "10.5.0.7/24", "10.5.0.8/30", "10.5.0.0/16"):
        new = peer("aa-new", claim, "10.6.0.1/32", key=61, created="2026-06-01T00:00:00Z")
        out, problems = run(new, old)
        assert [str(a) for a in out["zz-old"].allowed_ips] == ["10.5.0.0/24"]
        assert [str(a) for a in out["aa-new"].allowed_ips] == ["10.6.0.1/32"], claim
        assert len(problems) == 1 and "older Peer zz-old" in problems[0]


def test_a_peer_left_with_nothing_is_dropped_and_keys_are_not_shared() -> None:
    out, problems = run(peer("p", "0.0.0.0/0"))
    assert out == {} and problems
    out, problems = run(peer("p", "10.5.0.1/32", key=1))  # node a's key
    assert out == {} and "node a's key" in problems[0]
    first = peer("first", "10.5.0.1/32", key=70, created="2026-01-01T00:00:00Z")
    second = peer("second", "10.5.1.1/32", key=70, created="2026-02-01T00:00:00Z")
    out, problems = run(second, first)
    assert set(out) == {"first"} and "Peer first's key" in problems[0]


def test_a_peers_own_overlapping_claims_stay_its_own() -> None:
    out, problems = run(peer("p", "10.5.0.0/24", "10.5.0.1/32", "10.5.0.0/24"))
    assert [str(a) for a in out["p"].allowed_ips] == ["10.5.0.0/24", "10.5.0.1/32"]
    assert not problems


def node(name: str, key: str, pod: str, internal: str | None, created: str = "") -> Node:
    return Node(
        name=name,
        key=Key.parse(key),
        subnet=ipaddress.ip_interface(pod),
        internal_ip=None if internal is None else ipaddress.ip_interface(internal),
        created=created,
    )


def test_a_node_may_not_take_an_older_nodes_key_pod_cidr_or_internal_ip() -> None:
    k1, k2, k3 = (str(_key(i)) for i in (71, 72, 73))
    nodes = {
        "old": node("old", k1, "10.2.1.0/24", "192.168.1.1/24", "2026-01-01T00:00:00Z"),
        "a-key": node("a-key", k1, "10.2.2.0/24", None, "2026-02-01T00:00:00Z"),
        "a-pod": node("a-pod", k2, "10.2.1.128/25", None, "2026-02-01T00:00:00Z"),
        "a-lan": node("a-lan", k3, "10.2.3.0/24", "192.168.1.1/24", "2026-02-01T00:00:00Z"),
    }
    out, problems = authorise_nodes(nodes, "old")
    assert sorted(out) == ["a-lan", "old"]
    assert out["a-lan"].internal_ip is None and out["old"] == nodes["old"]
    fields = sorted(p.field for p in problems)
    assert fields == [
        "metadata.annotations[kilo.squat.ai/internal-ip]",
        "metadata.annotations[kilo.squat.ai/key]",
        "spec.podCIDR",
    ]
    # in its own plan the local node stays (the others refuse it), the problem reported
    out, problems = authorise_nodes(nodes, "a-key")
    assert "a-key" in out and any(p.name == "a-key" for p in problems)
