"""Authorisation (``kilo.authorise``): what a Peer or a Node may claim, and who wins an overlap."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

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


# the fast path (protected index kept, one sweep for Peers' overlaps) against a brute force

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kilo.model import host_prefix  # noqa: E402

# a small address space, so that claims collide often: 10.0.0.0/14 in /14 to /32 prefixes
SMALL = st.builds(
    lambda addr, plen: _p(f"{ipaddress.IPv4Network((addr, plen), strict=False)}"),
    st.integers(10 << 24, (10 << 24) + (1 << 18) - 1),
    st.integers(14, 32),
)


def brute(
    peers: dict[str, Peer], nodes: dict[str, Node], policy: PeerPolicy
) -> tuple[dict[str, Peer], list[str]]:
    """What the policy says, by comparing every pair."""
    guarded: list[tuple[Prefix, str]] = [(WG, "WireGuard subnet")]
    guarded += [(c, "service CIDR") for c in SERVICES]
    for n in nodes.values():
        if n.subnet is not None:
            guarded.append((n.subnet, f"node {n.name}'s pod CIDR"))
        if n.internal_ip is not None:
            guarded.append((host_prefix(n.internal_ip.ip), f"node {n.name}'s internal IP"))
            guarded.append((n.internal_ip, f"node {n.name}'s private network"))
        if n.endpoint is not None and n.endpoint.ip is not None:
            guarded.append((host_prefix(n.endpoint.ip), f"node {n.name}'s endpoint"))
        if n.wireguard_ip is not None:
            guarded.append((host_prefix(n.wireguard_ip.ip), f"node {n.name}'s WireGuard IP"))
    node_keys = {bytes(n.key): n.name for n in nodes.values() if n.key is not None}
    keys: dict[bytes, str] = {}
    claimed: list[tuple[str, Prefix]] = []
    out: dict[str, Peer] = {}
    said: list[str] = []
    for p in sorted(peers.values(), key=lambda p: (p.created or "~", p.name)):
        k = bytes(p.public_key or b"")
        if k in node_keys or k in keys:
            said.append(f"{p.name} key")
            continue
        keys[k] = p.name
        keep: list[Prefix] = []
        for a in p.allowed_ips:
            if any(a.network == b.network for b in keep):
                continue
            reason = None
            inside = any(a.network.subnet_of(r.network) for r in policy.allowed_ranges)  # type: ignore[arg-type]
            if not inside:
                if a.network.prefixlen == 0:
                    reason = "default"
                else:
                    hits = [w for g, w in guarded if g.network.overlaps(a.network)]
                    reason = hits[0] if hits else None
            if reason is None:
                hits = [(o, b) for o, b in claimed if b.network.overlaps(a.network)]
                if hits and hits[0][0] != p.name:
                    reason = f"{hits[0][1].network} of {hits[0][0]}"
            if reason is not None:
                said.append(f"{p.name} {a} {reason}")
                continue
            claimed.append((p.name, a))
            keep.append(a)
        if keep:
            out[p.name] = (
                p if len(keep) == len(p.allowed_ips) else replace(p, allowed_ips=tuple(keep))
            )
    return out, said


def said_of(problems: list[Any]) -> list[str]:
    out = []
    for pr in problems:
        if pr.field == "spec.publicKey":
            out.append(f"{pr.name} key")
            continue
        reason = pr.reason.removesuffix("; refused")
        reason = reason.removeprefix("overlaps the cluster's ").removeprefix("overlaps ")
        reason = "default" if reason == "is a default route" else reason
        reason = reason.replace(" of the older Peer ", " of ")
        out.append(f"{pr.name} {pr.value} {reason}")
    return out


@settings(max_examples=400, deadline=None)
@given(
    claims=st.lists(st.lists(SMALL, max_size=3), max_size=6),
    node_nets=st.lists(SMALL, max_size=3),
    ranges=st.lists(SMALL, max_size=1),
    same_key=st.booleans(),
    twice=st.booleans(),
)
def test_the_fast_path_says_what_comparing_every_pair_says(
    claims: list[list[Prefix]],
    node_nets: list[Prefix],
    ranges: list[Prefix],
    same_key: bool,
    twice: bool,
) -> None:
    nodes = {
        f"n{i}": Node(name=f"n{i}", key=_key(100 + i), subnet=net, internal_ip=_p(f"10.9.{i}.1/24"))
        for i, net in enumerate(node_nets)
    }
    peers = {
        f"p{i}": Peer(
            name=f"p{i}",
            public_key=_key(1 if same_key and i == 1 else 10 + i),
            allowed_ips=tuple(ips),
            created=f"2026-12-0{1 + i % 3}T00:00:00Z",
        )
        for i, ips in enumerate(claims)
    }
    policy = PeerPolicy(allowed_ranges=tuple(ranges))
    for _ in range(2 if twice else 1):  # the second time with the protected index kept
        got, problems = authorise_peers(peers, nodes, WG, SERVICES, policy)
        want, said = brute(peers, nodes, policy)
        assert got == want
        assert said_of(problems) == said
