from __future__ import annotations

import json
from typing import Any

import pytest

from kilo.model import Endpoint, Granularity
from kilo.translate import (
    node_annotations,
    node_from_object,
    peer_from_object,
    peer_object,
    peer_validation_error,
)
from tests.unit.helpers import key_for, node_obj, peer_obj


@pytest.mark.parametrize(
    "annotation, value, field",
    [
        ("endpoint", "not-an-endpoint", "kilo.squat.ai/endpoint"),
        ("endpoint", "203.0.113.1:70000", "kilo.squat.ai/endpoint"),
        ("endpoint", "::1:51820", "kilo.squat.ai/endpoint"),
        ("internal_ip", "10.0.0.1", "kilo.squat.ai/internal-ip"),
        ("key", "c2hvcnQ=", "kilo.squat.ai/key"),
        ("key", "!!!notbase64!!!", "kilo.squat.ai/key"),
        ("persistent_keepalive", "ten", "kilo.squat.ai/persistent-keepalive"),
        ("last_seen", "yesterday", "kilo.squat.ai/last-seen"),
        ("discovered_endpoints", "{not json", "kilo.squat.ai/discovered-endpoints"),
        ("allowed_location_ips", "10.0.0.0/24,bogus", "kilo.squat.ai/allowed-location-ips"),
        ("granularity", "galaxy", "kilo.squat.ai/granularity"),
        ("wireguard_ip", "10.4.0.1", "kilo.squat.ai/wireguard-ip"),
    ],
)
def test_malformed_annotation_is_reported_not_raised(
    annotation: str, value: str, field: str
) -> None:
    n, problems = node_from_object(
        node_obj("n1", "x", pod_cidr="10.2.0.0/24", **{annotation: value})
    )
    assert n.name == "n1"
    assert len(problems) == 1
    p = problems[0]
    assert (p.kind, p.name, p.value) == (
        "Node",
        "n1",
        value.split(",")[-1] if annotation == "allowed_location_ips" else value,
    )
    assert field in p.field and p.reason
    assert field in str(p) and "n1" in str(p)


def test_bad_pod_cidr_reported() -> None:
    n, problems = node_from_object(node_obj("n1", "x", pod_cidr="10.2.0.0/99"))
    assert n.subnet is None and problems[0].field == "spec.podCIDR"


def test_force_endpoint_and_force_internal_ip_win() -> None:
    n, _ = node_from_object(
        node_obj(
            "n",
            "x",
            "203.0.113.1:51820",
            "10.0.0.1/24",
            force_endpoint="203.0.113.9:4000",
            force_internal_ip="10.0.0.9/24",
        )
    )
    assert str(n.endpoint) == "203.0.113.9:4000" and str(n.internal_ip) == "10.0.0.9/24"
    n, _ = node_from_object(node_obj("n", "x", internal_ip="10.0.0.1/24", force_internal_ip="-"))
    assert n.internal_ip is None and n.no_internal_ip


def test_endpoint_forms() -> None:
    n, _ = node_from_object(node_obj("n", endpoint="[fd00::1]:51820"))
    assert str(n.endpoint) == "[fd00::1]:51820"
    n, _ = node_from_object(node_obj("n", endpoint="node.example.com:51820"))
    assert (
        n.endpoint is not None
        and n.endpoint.dns == "node.example.com"
        and str(n.endpoint) == "node.example.com:51820"
    )


@pytest.mark.parametrize("text", ["[node.example.com]:51820", "node.example.com:051820"])
def test_dns_endpoint_printed_as_spelt(text: str) -> None:
    """Go's SplitHostPort takes a bracketed name and ParseUint leading zeros; Kilo keeps the
    annotation's text for a DNS endpoint, and so do we (it is the same endpoint)."""
    n, problems = node_from_object(node_obj("n", endpoint=text))
    assert not problems and n is not None and n.endpoint is not None
    assert str(n.endpoint) == text
    assert (n.endpoint.dns, n.endpoint.port) == ("node.example.com", 51820)
    assert n.endpoint == Endpoint(port=51820, dns="node.example.com")


def test_internal_ip_keeps_host_bits() -> None:
    n, _ = node_from_object(node_obj("n", internal_ip="10.1.2.3/16", pod_cidr="10.2.0.7/24"))
    assert str(n.internal_ip) == "10.1.2.3/16" and str(n.subnet) == "10.2.0.0/24"


def test_granularity_and_leader() -> None:
    n, _ = node_from_object(node_obj("n", granularity="cross", leader=""))
    assert n.granularity is Granularity.CROSS and n.leader


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"allowedIPs": ["10.0.0.1"]}, "spec.allowedIPs"),
        ({"endpoint": {"dnsOrIP": {}, "port": 51820}}, "spec.endpoint.dnsOrIP"),
        (
            {"endpoint": {"dnsOrIP": {"dns": "Bad_Name"}, "port": 51820}},
            "spec.endpoint.dnsOrIP.dns",
        ),
        ({"endpoint": {"dnsOrIP": {"ip": "1.2.3"}, "port": 51820}}, "spec.endpoint.dnsOrIP.ip"),
        ({"endpoint": {"dnsOrIP": {"ip": "203.0.113.1"}, "port": 0}}, "spec.endpoint.port"),
        ({"endpoint": {"dnsOrIP": {"ip": "203.0.113.1"}, "port": 70000}}, "spec.endpoint.port"),
        ({"persistentKeepalive": -1}, "spec.persistentKeepalive"),
        ({"publicKey": "short"}, "spec.publicKey"),
        ({"publicKey": ""}, "spec.publicKey"),
    ],
)
def test_invalid_peer_skipped_with_reason(spec: dict, field: str) -> None:
    o = peer_obj("p", ["10.5.0.1/32"])
    o["spec"].update(spec)
    p, problems = peer_from_object(o)
    assert p is None and problems[0].field == field
    assert peer_validation_error(o["spec"]) is not None


def test_valid_peer() -> None:
    p, problems = peer_from_object(
        peer_obj(
            "p",
            ["10.5.0.1/32", "10.6.0.0/16"],
            endpoint={"dnsOrIP": {"dns": "vpn.example.com"}, "port": 51820},
            persistentKeepalive=25,
            presharedKey=key_for("psk"),
        )
    )
    assert p is not None and not problems
    assert (
        str(p.endpoint) == "vpn.example.com:51820"
        and p.persistent_keepalive == 25
        and p.preshared_key
    )


def test_peer_read_and_printed_as_kilo_does() -> None:
    """A ``dns`` that is an IP is that IP; an all-zero presharedKey is printed, not dropped."""
    zero = "A" * 43 + "="
    p, problems = peer_from_object(
        peer_obj(
            "p",
            ["10.5.0.1/32"],
            endpoint={"dnsOrIP": {"dns": "9.9.9.9"}, "port": 51820},
            presharedKey=zero,
        )
    )
    assert p is not None and not problems and p.endpoint is not None
    assert p.endpoint.dns is None and str(p.endpoint.ip) == "9.9.9.9"
    spec = peer_object("p", p.public_key, list(p.allowed_ips), p.endpoint, 0, p.preshared_key)[
        "spec"
    ]
    assert spec["endpoint"] == {"dnsOrIP": {"ip": "9.9.9.9"}, "port": 51820}
    assert spec["presharedKey"] == zero
    assert "presharedKey" not in peer_object("p", p.public_key, [], None)["spec"]


def test_node_annotations_round_trip() -> None:
    de = json.dumps(
        {key_for("x"): {"IP": "198.51.100.7", "Port": 4000, "Zone": ""}}, separators=(",", ":")
    )
    n, _ = node_from_object(
        node_obj(
            "n",
            "x",
            "203.0.113.1:51820",
            "10.0.0.1/24",
            "10.2.0.0/24",
            wireguard_ip="10.4.0.1/16",
            discovered_endpoints=de,
            granularity="location",
        )
    )
    ann = node_annotations(n)
    assert ann["kilo.squat.ai/discovered-endpoints"] == de
    again, problems = node_from_object(
        {
            "kind": "Node",
            "metadata": {"name": "n", "annotations": {**ann, "kilo.squat.ai/location": "x"}},
            "spec": {"podCIDR": "10.2.0.0/24"},
        }
    )
    assert (
        not problems
        and again.key == n.key
        and again.wireguard_ip == n.wireguard_ip
        and again.discovered_endpoints == n.discovered_endpoints
    )


def test_fast_ipv4_parsing_reads_as_ipaddress_does() -> None:
    """The fast path for ``a.b.c.d[/n]`` gives what ``ipaddress`` gives, or leaves it to it."""
    import ipaddress
    import random

    from kilo.strict import fast_v4_address, parse_cidr
    from kilo.strict import parse_network as network_prefix

    def res(f: Any, c: str) -> tuple[Any, ...]:
        try:
            v = f(c)
            return ("ok", v, str(v), type(v))
        except ValueError:
            return ("err",)

    def old_network_prefix(c: str) -> Any:
        net = ipaddress.ip_network(c, strict=False)
        return ipaddress.ip_interface(f"{net.network_address}/{net.prefixlen}")

    rng = random.Random(1)
    octets = ["0", "1", "01", "255", "256", "99", "100", "007", "\u0661"]
    cases = ["1.2.3.4/8\n", " 1.2.3.4/8", "1.2.3.4/08", "1.2.3.4/024", "1.2.3.4/33"]
    cases += [
        ".".join(rng.choice(octets) for _ in range(4))
        + "/"
        + rng.choice(["0", "8", "24", "32", "33", "01", "00", "9"])
        for _ in range(5000)
    ]
    for c in cases:
        assert res(parse_cidr, c) == res(ipaddress.ip_interface, c), c
        assert res(network_prefix, c) == res(old_network_prefix, c), c
        h = c.split("/")[0]
        assert res(lambda x: fast_v4_address(x) or ipaddress.ip_address(x), h) == res(
            ipaddress.ip_address, h
        ), h
