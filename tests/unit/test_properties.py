"""Properties over random clusters."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.keys import Key
from kilo.model import DEFAULT_SUBNET, Endpoint, Granularity, Node, Peer
from kilo.routes import Encapsulation, Interfaces, Strategy, routes
from kilo.topology import new_topology
from kilo.wireguard import WgConf, WgPeer, parse

keys = st.binary(min_size=32, max_size=32).filter(any).map(Key)
prefixes = st.one_of(
    st.builds(
        lambda a, n: ipaddress.ip_interface((a, n)),
        st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, n: ipaddress.ip_interface((a, n)),
        st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
        st.integers(0, 128),
    ),
)
endpoints = st.one_of(
    st.none(),
    st.builds(
        Endpoint, st.integers(1, 65535), st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
    ),
    st.builds(
        Endpoint, st.integers(1, 65535), st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
    ),
    st.builds(
        lambda p, d: Endpoint(p, dns=d),
        st.integers(1, 65535),
        st.from_regex(r"[a-z]{1,10}(\.[a-z]{1,5}){0,2}", fullmatch=True),
    ),
)
wg_peers = st.builds(
    WgPeer,
    keys,
    st.lists(prefixes, max_size=4),
    endpoints,
    st.integers(0, 65535),
    st.one_of(st.none(), keys),
)
confs = st.builds(
    WgConf,
    st.one_of(st.none(), keys, st.just(Key.zero())),
    st.integers(1, 65535),
    st.lists(wg_peers, max_size=5),
)


@given(confs)
def test_ini_round_trips(c: WgConf) -> None:
    text = c.render()
    assert parse(text).render() == text
    back = parse(text)
    assert [
        (p.public_key, p.allowed_ips, p.endpoint, p.persistent_keepalive, p.preshared_key)
        for p in back.peers
    ] == [
        (p.public_key, p.allowed_ips, p.endpoint, p.persistent_keepalive, p.preshared_key)
        for p in c.peers
    ]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[dict[str, Node], dict[str, Peer]]:
    n = draw(st.integers(1, 12))
    locations = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=n, max_size=n))
    nodes: dict[str, Node] = {}
    for i in range(n):
        loc = locations[i]
        has_internal = draw(st.booleans()) or True
        public = draw(st.booleans())
        nodes[f"n{i:02d}"] = Node(
            name=f"n{i:02d}",
            endpoint=Endpoint(
                51820,
                ipaddress.ip_address(
                    f"203.0.113.{i + 1}" if public else f"10.{ord(loc)}.0.{i + 1}"
                ),
            ),
            key=Key(bytes([i + 1]) * 32),
            internal_ip=ipaddress.ip_interface(f"10.{ord(loc)}.0.{i + 1}/24")
            if has_internal
            else None,
            last_seen=100,
            leader=draw(st.booleans()),
            location=loc,
            subnet=ipaddress.ip_interface(f"10.200.{i}.0/24"),
            allowed_location_ips=tuple(
                draw(
                    st.lists(
                        st.sampled_from(
                            [
                                ipaddress.ip_interface("192.168.1.0/24"),
                                ipaddress.ip_interface("192.168.2.0/24"),
                            ]
                        ),
                        max_size=1,
                    )
                )
            ),
        )
    peers: dict[str, Peer] = {}
    for j in range(draw(st.integers(0, 4))):
        ips = draw(
            st.lists(
                st.sampled_from([f"10.5.0.{k}/32" for k in range(6)] + ["10.200.0.0/24"]),
                min_size=1,
                max_size=3,
            )
        )
        peers[f"p{j}"] = Peer(
            f"p{j}", Key(bytes([100 + j]) * 32), tuple(ipaddress.ip_interface(x) for x in ips)
        )
    return nodes, peers


granularities = st.sampled_from([Granularity.LOCATION, Granularity.FULL, Granularity.CROSS])


@settings(max_examples=150, deadline=None)
@given(clusters(), granularities)
def test_no_allowed_ip_under_two_peers(
    cluster: tuple[dict[str, Node], dict[str, Peer]], g: Granularity
) -> None:
    nodes, peers = cluster
    for host in nodes:
        c = new_topology(nodes, peers, g, host, 51820, None, DEFAULT_SUBNET).conf()
        seen: set[str] = set()
        for p in c.peers:
            for a in p.allowed_ips:
                assert str(a) not in seen, f"{a} twice in {host}'s config"
                seen.add(str(a))


@settings(max_examples=150, deadline=None)
@given(clusters(), granularities)
def test_every_pod_cidr_reachable_from_every_node(
    cluster: tuple[dict[str, Node], dict[str, Peer]], g: Granularity
) -> None:
    nodes, peers = cluster
    for host in nodes:
        t = new_topology(nodes, peers, g, host, 51820, None, DEFAULT_SUBNET)
        rs, _ = routes(t, Interfaces(), True, Encapsulation(Strategy.NEVER))
        dsts = {str(r.dst) for r in rs}
        for other in nodes.values():
            if other.name != host:
                assert str(other.subnet) in dsts, f"{host} has no route to {other.name}'s pods"


@settings(max_examples=150, deadline=None)
@given(clusters(), granularities)
def test_each_segment_has_exactly_one_leader(
    cluster: tuple[dict[str, Node], dict[str, Peer]], g: Granularity
) -> None:
    nodes, peers = cluster
    leaders: dict[str, list[str]] = {}
    for host in nodes:
        t = new_topology(nodes, peers, g, host, 51820, None, DEFAULT_SUBNET)
        leaders.setdefault(t.location, [])
        if t.leader:
            leaders[t.location].append(host)
    assert all(len(v) == 1 for v in leaders.values()), leaders
