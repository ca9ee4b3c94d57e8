from __future__ import annotations

import ipaddress
import json

import pytest

from kilo.mesh import read_cluster
from kilo.model import DEFAULT_SUBNET, Granularity, Node, Peer
from kilo.topology import Topology, TopologyError, find_leader, new_topology
from kilo.translate import node_from_object, peer_from_object
from tests.unit.helpers import NOW, key_for, node_obj, peer_obj


def nodes_of(*objs: dict) -> dict[str, Node]:
    return {n.name: n for n in (node_from_object(o)[0] for o in objs)}


def peers_of(*objs: dict) -> dict[str, Peer]:
    out = {}
    for o in objs:
        p, _ = peer_from_object(o)
        assert p is not None
        out[p.name] = p
    return out


def three_nodes() -> dict[str, Node]:
    return nodes_of(
        node_obj("a", "1", "203.0.113.1:51820", "10.1.0.1/16", "10.2.1.0/24"),
        node_obj("b", "2", "203.0.113.2:51820", "10.1.0.2/16", "10.2.2.0/24"),
        node_obj("c", "2", "10.1.0.3:51820", "10.1.0.3/16", "10.2.3.0/24"),
    )


def topo(
    nodes: dict[str, Node],
    host: str,
    g: Granularity = Granularity.LOCATION,
    peers: dict[str, Peer] | None = None,
) -> Topology:
    return new_topology(nodes, peers or {}, g, host, 51820, None, DEFAULT_SUBNET)


def aips(t: Topology, loc: str) -> list[str]:
    s = next(s for s in t.segments if s.location == loc)
    return [str(a) for a in s.allowed_ips]


def test_location_segments_sorted_with_allowed_ips_in_kilo_order() -> None:
    t = topo(three_nodes(), "a")
    assert [s.location for s in t.segments] == ["location:1", "location:2"]
    assert aips(t, "location:1") == ["10.2.1.0/24", "10.1.0.1/32", "10.4.0.1/32"]
    assert aips(t, "location:2") == [
        "10.2.2.0/24",
        "10.1.0.2/32",
        "10.2.3.0/24",
        "10.1.0.3/32",
        "10.4.0.2/32",
    ]
    assert t.leader and str(t.wireguard_cidr) == "10.4.0.1/16"


def test_non_leader_keeps_whole_subnet_as_wireguard_cidr() -> None:
    t = topo(three_nodes(), "c")
    assert not t.leader
    assert t.wireguard_cidr == DEFAULT_SUBNET
    s = t.local_segment()
    assert s is not None and s.hostnames[s.leader] == "b"


def test_full_granularity_one_segment_per_node_allocated_in_name_order() -> None:
    t = topo(three_nodes(), "c", Granularity.FULL)
    assert [s.location for s in t.segments] == ["node:a", "node:b", "node:c"]
    assert [str(s.wireguard_ip) for s in t.segments] == ["10.4.0.1", "10.4.0.2", "10.4.0.3"]
    assert t.leader


def test_node_without_internal_ip_is_its_own_segment() -> None:
    ns = three_nodes()
    ns.update(nodes_of(node_obj("d", "2", "203.0.113.4:51820", None, "10.2.4.0/24")))
    t = topo(ns, "d")
    assert [s.location for s in t.segments] == ["location:1", "location:2", "node:d"]
    assert t.leader
    assert aips(t, "node:d") == ["10.2.4.0/24", "10.4.0.3/32"]


@pytest.mark.parametrize(
    "specs, want",
    [
        # (name, leader annotation, endpoint IP)
        ([("a", False, "10.0.0.1"), ("b", False, "10.0.0.2")], 0),  # no hints: first by name
        ([("a", False, "10.0.0.1"), ("b", False, "203.0.113.2")], 1),  # public endpoint wins
        (
            [("a", False, "203.0.113.1"), ("b", True, "10.0.0.2")],
            1,
        ),  # leader annotation beats public
        (
            [("a", True, "10.0.0.1"), ("b", True, "203.0.113.2")],
            1,
        ),  # public leader beats private leader
        ([("a", True, "10.0.0.1"), ("b", True, "10.0.0.2")], 0),  # first leader
        (
            [("a", False, "172.16.0.1"), ("b", False, "192.168.1.1"), ("c", False, "172.32.0.1")],
            2,
        ),  # RFC1918 edges
    ],
)
def test_find_leader(specs: list[tuple[str, bool, str]], want: int) -> None:
    objs = []
    for name, leader, ip in specs:
        extra = {"leader": ""} if leader else {}
        objs.append(node_obj(name, "x", f"{ip}:51820", "10.9.0.1/24", "10.2.0.0/24", **extra))
    ns = sorted(nodes_of(*objs).values(), key=lambda n: n.name)
    assert find_leader(ns) == want


def test_location_annotation_overrides_label() -> None:
    o = node_obj("a", "label-loc")
    o["metadata"]["annotations"]["kilo.squat.ai/location"] = "annotated"
    n, _ = node_from_object(o)
    assert n.location == "annotated"
    n, _ = node_from_object(node_obj("a", "label-loc"))
    assert n.location == "label-loc"
    n, _ = node_from_object(node_obj("a", "x"), topology_label="other/label")
    assert n.location == ""


def test_conf_of_leader_lists_other_segments_then_peers() -> None:
    ns = three_nodes()
    ps = peers_of(
        peer_obj("p2", ["10.5.0.2/32"]),
        peer_obj("p1", ["10.5.0.1/32"], endpoint={"dnsOrIP": {"ip": "203.0.113.9"}, "port": 51820}),
    )
    t = topo(ns, "a", peers=ps)
    c = t.conf()
    assert [str(p.allowed_ips[0]) for p in c.peers] == ["10.2.2.0/24", "10.5.0.1/32", "10.5.0.2/32"]
    assert c.listen_port == 51820


def test_peers_deduplicated_first_by_name_wins() -> None:
    ps = peers_of(peer_obj("b", ["10.5.0.1/32", "10.5.0.2/32"]), peer_obj("a", ["10.5.0.1/32"]))
    t = topo(three_nodes(), "a", peers=ps)
    assert [(p.name, [str(i) for i in p.allowed_ips]) for p in t.peers] == [
        ("a", ["10.5.0.1/32"]),
        ("b", ["10.5.0.2/32"]),
    ]


def test_discovered_endpoint_used_only_with_keepalive() -> None:
    de = json.dumps(
        {key_for("b"): {"IP": "198.51.100.77", "Port": 40000, "Zone": ""}}, separators=(",", ":")
    )
    ns = nodes_of(
        node_obj(
            "a", "1", "203.0.113.1:51820", "10.1.0.1/16", "10.2.1.0/24", discovered_endpoints=de
        ),
        node_obj("b", "2", "203.0.113.2:51820", "10.1.0.2/16", "10.2.2.0/24"),
    )
    t = topo(ns, "a")
    assert str(t.conf().peers[0].endpoint) == "203.0.113.2:51820"
    ns2 = dict(ns)
    ns2.update(
        nodes_of(
            node_obj(
                "b",
                "2",
                "203.0.113.2:51820",
                "10.1.0.2/16",
                "10.2.2.0/24",
                persistent_keepalive="25",
            )
        )
    )
    t = topo(ns2, "a")
    assert str(t.conf().peers[0].endpoint) == "198.51.100.77:40000"


def test_allowed_location_ips_filtered_against_other_claims() -> None:
    ns = nodes_of(
        node_obj(
            "a",
            "1",
            "203.0.113.1:51820",
            "10.1.0.1/16",
            "10.2.1.0/24",
            allowed_location_ips="192.168.50.0/24,10.2.2.0/25",
        ),
        node_obj(
            "b",
            "2",
            "203.0.113.2:51820",
            "10.1.0.2/16",
            "10.2.2.0/24",
            allowed_location_ips="192.168.60.0/24,192.168.50.128/25",
        ),
    )
    ps = peers_of(peer_obj("p", ["192.168.60.10/32"]))
    t = topo(ns, "a", peers=ps)
    one = next(s for s in t.segments if s.location == "location:1")
    two = next(s for s in t.segments if s.location == "location:2")
    # 10.2.2.0/25 lies in b's pod CIDR; 192.168.50.0/24 overlaps b's 192.168.50.128/25.
    assert [str(i) for i in one.allowed_location_ips] == []
    # b's 192.168.60.0/24 overlaps peer p; a's list is already filtered when b's is checked,
    # so 192.168.50.128/25 stays (Kilo filters segment by segment, in order).
    assert [str(i) for i in two.allowed_location_ips] == ["192.168.50.128/25"]


def test_allowed_location_ips_kept_and_sorted_when_unclaimed() -> None:
    ns = nodes_of(
        node_obj(
            "a",
            "1",
            "203.0.113.1:51820",
            "10.1.0.1/16",
            "10.2.1.0/24",
            allowed_location_ips="192.168.9.0/24,192.168.1.0/24",
        ),
        node_obj("b", "2", "203.0.113.2:51820", "10.1.0.2/16", "10.2.2.0/24"),
    )
    t = topo(ns, "b")
    peer = next(p for p in t.conf().peers if str(p.allowed_ips[0]) == "10.2.1.0/24")
    assert [str(i) for i in peer.allowed_ips] == [
        "10.2.1.0/24",
        "10.1.0.1/32",
        "10.4.0.1/32",
        "192.168.1.0/24",
        "192.168.9.0/24",
    ]


def test_cross_granularity_tunnels_only_between_locations() -> None:
    t = topo(three_nodes(), "b", Granularity.CROSS)
    assert t.leader
    keys = {p.public_key for p in t.conf().peers}
    ns = three_nodes()
    assert ns["a"].key in keys and ns["c"].key not in keys
    t_a = topo(three_nodes(), "a", Granularity.CROSS)
    assert {p.public_key for p in t_a.conf().peers} == {ns["b"].key, ns["c"].key}


def test_subnet_exhaustion_is_an_error() -> None:
    small = ipaddress.ip_interface("10.4.0.0/31")
    with pytest.raises(TopologyError, match="ran out"):
        new_topology(three_nodes(), {}, Granularity.FULL, "a", 51820, None, small)


def test_unknown_host_is_an_error() -> None:
    with pytest.raises(TopologyError):
        topo(three_nodes(), "zzz")


def test_read_cluster_sorts_and_skips_invalid_peers() -> None:
    st = read_cluster(
        [node_obj("b", "1"), node_obj("a", "1")],
        [peer_obj("bad", ["nope"]), peer_obj("good", ["10.5.0.1/32"])],
        "topology.kubernetes.io/region",
    )
    assert [n.name for n in st.nodes] == ["a", "b"]
    assert [p.name for p in st.peers] == ["good"]
    assert any(p.name == "bad" and p.field == "spec.allowedIPs" for p in st.problems)


def test_readiness() -> None:
    n, _ = node_from_object(node_obj("a", "1", pod_cidr="10.2.0.0/24"))
    assert n.ready(NOW) and n.ready(NOW + 59) and not n.ready(NOW + 60)
    n, _ = node_from_object(node_obj("a", "1", pod_cidr=None))
    assert not n.ready(NOW)
    n, _ = node_from_object(node_obj("a", "1", pod_cidr="10.2.0.0/24", key=None))
    assert not n.ready(NOW)
    n, _ = node_from_object(node_obj("a", "1", endpoint=None, pod_cidr="10.2.0.0/24"))
    assert not n.ready(NOW)
