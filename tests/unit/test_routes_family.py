"""Routes whose destination and source or gateway are of two families (a dual-stack cluster
with IPv4 private and WireGuard IPs, and an IPv6 Peer or allowed-location prefix): made into
routes the kernel takes, or left out (``kilo.routes._one_family``)."""

from __future__ import annotations

import ipaddress

from kilo.routes import MAIN_TABLE, Route, _one_family


def _p(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(text)


def _a(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_one_family_routes_are_left_as_they_are() -> None:
    out = [
        Route(_p("10.2.1.0/24"), "kilo0", _a("10.4.0.2"), _a("10.10.1.1"), True),
        Route(_p("fd00:2::/64"), "kilo0", _a("fd00:4::2"), _a("fd00:10:1::1"), True),
    ]
    assert _one_family(out, "kilo0") is out


def test_through_kilo0_the_other_familys_source_and_gateway_go() -> None:
    v4 = Route(_p("10.5.0.9/32"), "kilo0", None, _a("10.10.1.1"))
    out = [
        v4,
        Route(_p("fd00:5::9/128"), "kilo0", None, _a("10.10.1.1")),
        Route(_p("fd00:7::/64"), "kilo0", _a("10.4.0.2"), _a("10.10.1.1"), True),
    ]
    assert _one_family(out, "kilo0") == [
        v4,
        Route(_p("fd00:5::9/128"), "kilo0"),
        Route(_p("fd00:7::/64"), "kilo0", table=MAIN_TABLE),
    ]


def test_through_another_device_a_gateway_of_the_other_family_leaves_the_route_out() -> None:
    v4 = Route(_p("10.5.0.9/32"), "eth0", _a("10.10.1.1"), onlink=True)
    out = [v4, Route(_p("fd00:5::9/128"), "eth0", _a("10.10.1.1"), onlink=True)]
    assert _one_family(out, "kilo0") == [v4]
    # a source of the other family alone is dropped, the gateway kept
    mixed = Route(_p("fd00:5::9/128"), "tunl0", _a("fd00:10:1::1"), _a("10.10.1.2"), True)
    assert _one_family([mixed], "kilo0") == [
        Route(_p("fd00:5::9/128"), "tunl0", _a("fd00:10:1::1"), None, True)
    ]
