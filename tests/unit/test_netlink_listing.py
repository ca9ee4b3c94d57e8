"""Our routes as iproute2 lists them (the quick verification), against the desired routes."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.dataplane.netlink import Netlink, _from_ip_json, _listing_of
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


@settings(max_examples=500, deadline=None)
@given(
    addr=st.integers(0, 2**32 - 1),
    plen=st.integers(0, 32),
    form=st.sampled_from(["plain", "host", "zeros", "bits"]),
)
def test_an_ipv4_destination_read_without_parsing_reads_as_parsed(
    addr: int, plen: int, form: str
) -> None:
    """The canonical IPv4 strings iproute2 prints are taken as they are; whatever else a
    listing holds is either parsed as before or makes it differ (a full comparison then)."""
    net = ipaddress.IPv4Network((addr, plen), strict=False)
    dst = {
        "plain": net.with_prefixlen,
        "host": str(net.network_address) if plen == 32 else net.with_prefixlen,
        "zeros": ".".join(f"{int(o):03d}" for o in str(net.network_address).split("."))
        + f"/{plen}",
        "bits": f"{ipaddress.IPv4Address(addr)}/{plen}",
    }[form]
    got = _from_ip_json({"dst": dst, "dev": "kilo0"}, False)
    try:
        parsed = str(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32"))
    except ValueError:
        parsed = None
    if got is None:
        assert parsed is None
    else:
        assert got[1] == parsed or got[1] != net.with_prefixlen  # never a false match


def test_the_listing_of_the_same_routes_is_made_once() -> None:
    nl = Netlink()
    want = (Route(P("10.20.0.0/24"), "kilo0"), Route(P("10.21.0.5/32"), "kilo0", table=1107))
    first = nl._listing_for(want, list(want))
    assert first == _listing_of(want) and nl._listing_for(want, list(want)) is first
    other = (Route(P("10.22.0.0/24"), "kilo0"),)
    assert nl._listing_for(other, list(other)) == _listing_of(other)
    as_list = list(want)
    assert nl._listing_for(as_list, as_list) is not nl._listing_for(as_list, as_list)
