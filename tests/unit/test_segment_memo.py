"""Segments kept from one topology to the next (``SegmentBase``) give exactly what building
every segment anew gives: random clusters, random events between two topologies, the second
topology with and without what the first kept."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kilo import memo
from kilo.firewall import ruleset
from kilo.model import DEFAULT_SUBNET, Endpoint, Granularity, Node, Peer
from kilo.routes import Compatibility, Encapsulation, Interfaces, Strategy, routes
from kilo.topology import Topology, new_topology

from .test_properties import clusters, granularities


def _event(
    draw: Callable[[st.SearchStrategy[Any]], Any], nodes: dict[str, Node]
) -> dict[str, Node]:
    """One of the changes the cache sees: a check-in, a moved endpoint, a new leader flag,
    another location, an allowed-location IP, a node gone, a node's copy with equal facts."""
    out = dict(nodes)
    name = draw(st.sampled_from(sorted(out)))
    n = out[name]
    kinds = ["check-in", "copy", "discovered", "endpoint", "leader", "location", "loc-ip", "gone"]
    kind = draw(st.sampled_from(kinds))
    if kind == "copy":
        out[name] = dataclasses.replace(n, last_seen=n.last_seen + 1)
    elif kind == "discovered":
        found = Endpoint(draw(st.integers(1, 3)), ipaddress.ip_address("198.51.100.9"))
        key = str(next(iter(nodes.values())).key)
        out[name] = dataclasses.replace(n, discovered_endpoints={key: found})
    elif kind == "check-in":
        out[name] = n.with_last_seen(n.last_seen + 1)
    elif kind == "endpoint":
        assert n.endpoint is not None
        out[name] = dataclasses.replace(n, endpoint=Endpoint(n.endpoint.port + 1, n.endpoint.ip))
    elif kind == "leader":
        out[name] = dataclasses.replace(n, leader=not n.leader)
    elif kind == "location":
        out[name] = dataclasses.replace(n, location=draw(st.sampled_from("abcd")))
    elif kind == "loc-ip":
        ip = ipaddress.ip_interface(f"192.168.{draw(st.integers(1, 3))}.0/24")
        out[name] = dataclasses.replace(n, allowed_location_ips=(ip,))
    elif len(out) > 1:
        del out[name]
    return out


def _everything(t: Topology) -> Any:
    """All a plan takes from a topology, as comparable values."""
    enc = Encapsulation(Strategy.CROSS_SUBNET, Compatibility.NONE)
    return (
        [dataclasses.replace(s, base=None) for s in t.segments],
        t.peers,
        t.refusals,
        t.leader,
        t.wireguard_cidr,
        t.discovered_endpoints,
        t.conf().render(),
        routes(t, Interfaces(), False, enc),
        routes(t, Interfaces(), True, enc),
        ruleset(t, True, True).nft_json(),
    )


@settings(max_examples=200, deadline=None)
@given(clusters(), granularities, st.data())
def test_kept_segments_change_nothing(
    cluster: tuple[dict[str, Node], dict[str, Peer]], g: Granularity, data: st.DataObject
) -> None:
    nodes, peers = cluster
    host = data.draw(st.sampled_from(sorted(nodes)))
    _everything(new_topology(nodes, peers, g, host, 51820, None, DEFAULT_SUBNET))  # kept
    for _ in range(data.draw(st.integers(1, 3))):
        nodes = _event(data.draw, nodes)
    if host not in nodes:
        host = sorted(nodes)[0]
    warm = _everything(new_topology(nodes, peers, g, host, 51820, None, DEFAULT_SUBNET))
    again = _everything(new_topology(nodes, peers, g, host, 51820, None, DEFAULT_SUBNET))
    memo.forget_all()
    cold = _everything(new_topology(nodes, peers, g, host, 51820, None, DEFAULT_SUBNET))
    assert warm == cold
    assert again == cold


def test_a_check_in_keeps_the_segment_and_a_change_does_not() -> None:
    a = Node(
        name="a",
        endpoint=Endpoint(51820, ipaddress.ip_address("203.0.113.1")),
        internal_ip=ipaddress.ip_interface("10.1.0.1/24"),
        location="x",
        subnet=ipaddress.ip_interface("10.200.0.0/24"),
    )
    first = new_topology({"a": a}, {}, Granularity.LOCATION, "a", 51820, None, DEFAULT_SUBNET)
    base = first.segments[0].base
    assert base is not None
    checked_in = a.with_last_seen(a.last_seen + 30)
    second = new_topology(
        {"a": checked_in}, {}, Granularity.LOCATION, "a", 51820, None, DEFAULT_SUBNET
    )
    assert second.segments[0].base is base
    moved = dataclasses.replace(a, internal_ip=ipaddress.ip_interface("10.1.0.2/24"))
    third = new_topology({"a": moved}, {}, Granularity.LOCATION, "a", 51820, None, DEFAULT_SUBNET)
    assert third.segments[0].base is not base
    assert third.segments[0].private_ips == [ipaddress.ip_address("10.1.0.2")]
