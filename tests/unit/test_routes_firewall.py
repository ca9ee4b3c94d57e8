from __future__ import annotations

import ipaddress

import pytest

from kilo.firewall import ruleset
from kilo.model import Granularity
from kilo.routes import KILO_TABLE, Encapsulation, Interfaces, Strategy, routes
from tests.unit.helpers import node_obj, peer_obj
from tests.unit.test_topology import nodes_of, peers_of, three_nodes, topo

P = ipaddress.ip_interface

IFS = Interfaces(kilo="kilo0", private="eth0", tunnel="tunl0")


def rs(
    host: str,
    local: bool = True,
    strategy: Strategy = Strategy.NEVER,
    g: Granularity = Granularity.LOCATION,
) -> list[str]:
    t = topo(three_nodes(), host, g, peers_of(peer_obj("p", ["10.5.0.1/32"])))
    r, rules = routes(t, IFS, local, Encapsulation(strategy))
    return [str(x) for x in r] + [str(x) for x in rules]


def test_leader_routes_other_segments_through_wireguard() -> None:
    assert rs("b") == [
        "10.2.1.0/24 dev kilo0 via 10.4.0.1 src 10.1.0.2 onlink",
        "10.1.0.1/32 dev kilo0 via 10.4.0.1 src 10.1.0.2 onlink",
        "10.2.3.0/24 dev eth0 via 10.1.0.3 onlink",
        "10.5.0.1/32 dev kilo0 src 10.1.0.2",
    ]


def test_non_leader_routes_everything_via_its_leader() -> None:
    assert rs("c") == [
        "10.4.0.1/32 dev eth0 via 10.1.0.2 onlink",
        "10.2.1.0/24 dev eth0 via 10.1.0.2 onlink",
        "10.1.0.1/32 dev eth0 via 10.1.0.2 onlink",
        "10.4.0.2/32 dev eth0 via 10.1.0.2 onlink",
        "10.2.2.0/24 dev eth0 via 10.1.0.2 onlink",
        "10.5.0.1/32 dev eth0 via 10.1.0.2 onlink",
    ]


def test_always_encapsulation_uses_tunnel_and_policy_rules() -> None:
    got = rs("c", strategy=Strategy.ALWAYS)
    assert "10.2.1.0/24 dev tunl0 via 10.1.0.2 src 10.1.0.3 onlink" in got
    assert f"10.1.0.2/32 dev tunl0 via 10.1.0.2 src 10.1.0.3 onlink table {KILO_TABLE}" in got
    assert f"from 10.2.3.0/24 to 10.1.0.2/32 lookup {KILO_TABLE}" in got
    leader = rs("b", strategy=Strategy.ALWAYS)
    assert f"to 10.1.0.3/32 iif kilo0 lookup {KILO_TABLE}" in leader


def test_crosssubnet_encapsulates_only_across_subnets() -> None:
    # all of location 2 shares 10.1.0.0/16: nothing is encapsulated
    assert not any("tunl0" in r for r in rs("c", strategy=Strategy.CROSS_SUBNET))


def test_without_local_no_intra_location_routes() -> None:
    assert not any("10.2.3.0/24" in r for r in rs("b", local=False))


def test_cross_routes_same_location_over_private_network() -> None:
    got = rs("c", g=Granularity.CROSS)
    assert "10.2.2.0/24 dev eth0 via 10.1.0.2 onlink" in got
    assert any(r.startswith("10.2.1.0/24 dev kilo0 via 10.4.0.1") for r in got)


def test_firewall_nat_returns_for_known_ips_then_masquerades() -> None:
    t = topo(three_nodes(), "b", peers=peers_of(peer_obj("p", ["10.5.0.1/32"])))
    r = ruleset(t, cni=True, forward_rules=False)
    nat = [(v, c) for v, _, c in r.expanded("kilo-nat")]
    assert nat[-1] == ("masquerade", None)
    assert (
        ("return", "10.5.0.1/32") in nat
        and ("return", "10.4.0.1/32") in nat
        and ("return", "10.2.1.0/24") in nat
    )
    post = r.expanded("postrouting")
    assert ("jump kilo-nat", "saddr", "10.2.2.0/24") in post and (
        "jump kilo-nat",
        "saddr",
        "10.5.0.1/32",
    ) in post
    assert len(r.rules) <= 8  # sets, not a rule per address
    doc = r.nft_json()["nftables"]
    assert doc[0] == {"add": {"table": {"family": "inet", "name": "kilo"}}}
    assert not any(c.name == "forward" for c in r.base_chains)


@pytest.mark.parametrize("host, expect", [("b", "10.2.3.0/24"), ("c", "10.2.3.0/24")])
def test_forward_rules(host: str, expect: str) -> None:
    t = topo(three_nodes(), host)
    r = ruleset(t, cni=True, forward_rules=True)
    fwd = [c for _, _, c in r.expanded("forward")]
    assert expect in fwd


def test_outermost_keeps_networks_no_other_contains() -> None:
    from kilo.prefixes import net_text, outermost

    got = outermost(
        P(c)
        for c in (
            "10.2.1.0/24",
            "10.2.0.0/16",
            "10.2.1.7/32",
            "10.3.0.0/24",
            "10.3.1.0/24",
            "10.3.0.5/24",  # host bits: the same network as 10.3.0.0/24
            "0.0.0.0/0",
            "fd00::1/128",
            "fd00::/64",
            "fd01::/64",
        )
    )
    assert [net_text(p) for p in got[0]] == ["0.0.0.0/0"]
    assert [net_text(p) for p in got[1]] == ["fd00::/64", "fd01::/64"]
    v4, _ = outermost(P(c) for c in ("10.3.1.0/24", "10.3.0.0/24", "10.2.1.7/32", "10.2.0.0/16"))
    assert [net_text(p) for p in v4] == ["10.2.0.0/16", "10.3.0.0/24", "10.3.1.0/24"]


def test_firewall_sets_hold_only_the_outermost_of_nested_networks() -> None:
    t = topo(three_nodes(), "b", peers=peers_of(peer_obj("p", ["10.5.0.0/16", "10.5.1.5/32"])))
    r = ruleset(t, cni=True, forward_rules=False)
    peers = r.set_named("peers-ipv4")
    assert peers is not None and peers.texts() == ["10.5.0.0/16"]
    known = r.set_named("known-ipv4")
    assert known is not None and "10.2.1.0/24" in known.texts()
    doc = r.nft_json()["nftables"]
    sets = [c["add"]["set"] for c in doc if "set" in c.get("add", {})]
    assert {s["name"] for s in sets} >= {"peers-ipv4", "known-ipv4", "wireguard-ipv4"}
    assert all(s["flags"] == ["interval"] for s in sets)


def test_full_mesh_on_one_lan_keeps_the_private_ips_off_the_tunnel() -> None:
    """a1 public, a2 private (its endpoint on the LAN): a1's handshakes reach a2 from
    10.10.1.1, WireGuard on a2 moves a1's endpoint there, so a2 must not route 10.10.1.1
    through kilo0 (the tunnel's packets would loop into it). a1 keeps Kilo's routes."""
    nodes = nodes_of(
        node_obj("a1", "aws", "198.51.100.1:51820", "10.10.1.1/24", "10.2.0.0/24"),
        node_obj("a2", "aws", "10.10.1.2:51820", "10.10.1.2/24", "10.2.1.0/24"),
        node_obj("g1", "gcp", "198.51.100.2:51820", "10.10.2.1/24", "10.2.2.0/24"),
    )

    def got(host: str) -> list[str]:
        r, _ = routes(topo(nodes, host, Granularity.FULL), IFS, True, Encapsulation())
        return [str(x) for x in r]

    on_a2 = got("a2")
    assert not any(r.startswith("10.10.1.1/32") for r in on_a2)
    assert "10.2.0.0/24 dev kilo0 via 10.4.0.1 src 10.10.1.2 onlink" in on_a2
    assert any(r.startswith("10.10.2.1/32 dev kilo0") for r in on_a2)  # another LAN: tunnelled
    on_a1 = got("a1")
    assert not any(r.startswith("10.10.1.2/32") for r in on_a1)  # a2's endpoint (Kilo's rule)
    assert any(r.startswith("10.10.2.1/32 dev kilo0") for r in on_a1)
