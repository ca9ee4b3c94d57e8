"""Our routes as iproute2 lists them (the quick verification), against the desired routes."""

from __future__ import annotations

import ipaddress

from kilo.dataplane.netlink import _from_ip_json, _listing_of
from kilo.routes import Route

P, A = ipaddress.ip_interface, ipaddress.ip_address


def test_a_listing_reads_as_the_desired_routes_it_shows() -> None:
    want = [
        Route(P("10.20.0.7/24"), "kilo0", A("10.4.0.2"), A("10.9.0.1"), True),
        Route(P("10.21.0.5/32"), "kilo0", table=1107),
        Route(P("0.0.0.0/0"), "kilo0", table=1108),
        Route(P("fd98::5/128"), "kilo0", table=1107),
    ]
    listed = [
        _from_ip_json(
            {"dst": "10.20.0.0/24", "gateway": "10.4.0.2", "dev": "kilo0",
             "prefsrc": "10.9.0.1", "flags": ["onlink"]}, False),
        _from_ip_json({"dst": "10.21.0.5", "dev": "kilo0", "table": "1107", "flags": []}, False),
        _from_ip_json({"dst": "default", "dev": "kilo0", "table": "1108", "flags": []}, False),
        _from_ip_json({"dst": "fd98::5", "dev": "kilo0", "table": "1107", "metric": 1024}, True),
    ]  # fmt: skip
    assert sorted(x for x in listed if x is not None) == _listing_of(want)


def test_odd_shapes_are_left_to_the_full_comparison() -> None:
    for odd in (
        None,
        [],
        {"dst": 5, "dev": "kilo0"},
        {"dst": "10.0.0.0/8"},
        {"dst": "10.0.0.0/8", "dev": "kilo0", "type": "blackhole"},
        {"dst": "not-an-ip", "dev": "kilo0"},
        {"dst": "10.0.0.0/8", "dev": "kilo0", "table": "main"},
        {"dst": "10.0.0.0/8", "dev": "kilo0", "gateway": {"family": "inet6"}},
        {"dst": "10.0.0.0/8", "dev": "kilo0", "flags": "onlink"},
    ):
        assert _from_ip_json(odd, False) is None
