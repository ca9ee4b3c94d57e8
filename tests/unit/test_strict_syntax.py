"""Strict reading (``kilo.strict``), the writers' refusals (``kilo.syntax``) and applying a
WireGuard update part by part."""

from __future__ import annotations

import ipaddress

import pytest

from kilo import strict, syntax
from kilo.dataplane.uapi import encode_set
from kilo.dataplane.wgdevice import Device, DeviceError
from kilo.keys import Key
from kilo.model import Endpoint, parse_endpoint
from kilo.wgstate import DeviceState, DeviceUpdate, PeerUpdate
from kilo.wireguard import WgConf, WgPeer


@pytest.mark.parametrize(
    "text",
    [
        "fe80::1%eth0",
        "fe80::1%a\nb",
        " 10.0.0.1",
        "10.0.0.1\n",
        "010.0.0.1",
        "\u0661\u0660.0.0.1",
        "10.0.0.256",
        "",
        "::ffff:1.2.3.4%x",
    ],
)
def test_addresses_go_refuses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        strict.parse_ip(text)


def test_ipv4_mapped_addresses_read_as_ipv4() -> None:
    assert strict.parse_ip("::ffff:10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")
    assert str(strict.parse_cidr("::ffff:10.1.2.3/120")) == "10.1.2.3/24"
    assert str(strict.parse_cidr("::ffff:a01:203/120")) == "10.1.2.3/24"  # hex spelling too
    assert str(strict.parse_network("::ffff:10.1.2.3/120")) == "10.1.2.0/24"
    # Go's mask stays 128 bits wide: of a /96 or shorter nothing is left for the IPv4 address
    # (Kilo's normalizeIP gives 10.1.2.3/0), and the network ParseCIDR returns is IPv6
    assert str(strict.parse_cidr("::ffff:10.1.2.3/64")) == "10.1.2.3/0"
    assert str(strict.parse_network("::ffff:10.1.2.3/64")) == "::/64"
    assert str(strict.parse_network("::ffff:10.1.2.3/88")) == "::ff00:0:0/88"
    with pytest.raises(ValueError):
        strict.parse_cidr("::ffff:10.1.2.3/129")


def test_ports_read_as_go_parseuint() -> None:
    assert strict.parse_port("051820") == 51820
    assert strict.parse_port("0000000000000051820") == 51820
    for bad in ("+51820", " 51820", "5_1820", "\u0665\u0661", "0", "65536", "99999999999"):
        with pytest.raises(ValueError):
            strict.parse_port(bad)


@pytest.mark.parametrize(
    "text",
    ["10.5.0.0/255.255.255.0", "10.5.0.0/0.0.0.255", "fe80::%1/64", "10.0.0.0/33", "10.0.0.0/ 8"],
)
def test_cidrs_go_refuses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        strict.parse_cidr(text)
    with pytest.raises(ValueError):
        strict.parse_network(text)


@pytest.mark.parametrize("text", [" 7", "7 ", "5_0", "\u0663", "1e3", "0x10", "", "+", "7\n"])
def test_integers_are_read_as_go_reads_them(text: str) -> None:
    with pytest.raises(ValueError):
        strict.parse_int(text, 0, 65535)
    assert strict.parse_int("+7", 0, 65535) == 7 and strict.parse_int("-0", 0, 9) == 0
    with pytest.raises(ValueError):
        strict.parse_int("65536", 0, 65535)


@pytest.mark.parametrize(
    "text",
    [
        "name\n:51820",
        "name:51820\n",
        "a.b:\u0665\u0661",
        "a.b:+5",
        "a.b:0",
        "a.b:65536",
        "[fe80::1%x]:1",
    ],
)
def test_endpoints_with_syntax_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


@pytest.mark.parametrize(
    "text", ["NaN", '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e400}', "[" * 10_000]
)
def test_json_is_bounded_and_finite(text: str) -> None:
    with pytest.raises(ValueError):
        strict.load_json(text)
    with pytest.raises(ValueError):
        strict.load_json(" " * (strict.MAX_JSON_BYTES + 1))
    assert strict.load_json('{"k": {"IP": "1.2.3.4", "Port": 5}}') == {
        "k": {"IP": "1.2.3.4", "Port": 5}
    }


def test_dns_names_match_in_full() -> None:
    assert strict.is_dns1123_subdomain("a.example.com")
    assert not strict.is_dns1123_subdomain("a.example.com\n")
    assert not strict.is_dns1123_subdomain("A.example.com")


# ------------------------------------------------------------------- writers refuse syntax

ZONED = ipaddress.ip_address("fe80::1%evil\nremove=true")
KEY = Key(bytes(range(32)))


def test_uapi_refuses_a_zone_an_out_of_range_port_and_keepalive() -> None:
    for bad in (
        PeerUpdate(public_key=KEY, endpoint=(ZONED, 51820)),
        PeerUpdate(public_key=KEY, endpoint=(ipaddress.ip_address("1.2.3.4"), 70000)),
        PeerUpdate(public_key=KEY, persistent_keepalive=-1),
        PeerUpdate(public_key=KEY, persistent_keepalive=65536),
        PeerUpdate(public_key=KEY, allowed_ips=[ipaddress.ip_interface("fe80::1%x/128")]),
    ):
        with pytest.raises(syntax.UnsafeValue):
            encode_set(DeviceUpdate(peers=[bad]))
    with pytest.raises(syntax.UnsafeValue):
        encode_set(DeviceUpdate(listen_port=65536))


def test_ini_refuses_what_could_add_a_line() -> None:
    def render(peer: WgPeer) -> str:
        return WgConf(private_key=Key.zero(), listen_port=51820, peers=[peer]).render()

    with pytest.raises(syntax.UnsafeValue):
        render(WgPeer(public_key=KEY, endpoint=Endpoint(port=1, dns="evil\nPublicKey = x")))
    with pytest.raises(syntax.UnsafeValue):
        render(WgPeer(public_key=KEY, endpoint=Endpoint(port=1, ip=ZONED)))
    with pytest.raises(syntax.UnsafeValue):
        render(WgPeer(public_key=KEY, allowed_ips=[ipaddress.ip_interface("fe80::1%a/64")]))
    with pytest.raises(syntax.UnsafeValue):
        render(WgPeer(public_key=KEY, persistent_keepalive=1 << 20))
    assert "Endpoint = a.example.com:51820\n" in render(
        WgPeer(public_key=KEY, endpoint=Endpoint(port=51820, dns="a.example.com"))
    )


def test_dot_strings_are_escaped() -> None:
    assert syntax.dot_string('a"b\\c\nd') == 'a\\"b\\\\c d'


# ------------------------------------------------------------- applying part by part


class _PickyDevice(Device):
    """Refuses any update that names a peer with keepalive 7 (as a device refuses a value)."""

    def __init__(self) -> None:
        super().__init__("kpy-test", resolve=lambda e: (e.ip, e.port) if e.ip else None)
        self.sent: list[DeviceUpdate] = []
        self.state_ = DeviceState()

    def ensure(self) -> list[str]:
        return []

    def close(self, remove: bool = True) -> None:
        pass

    def _get(self) -> DeviceState:
        return self.state_

    def _set(self, update: DeviceUpdate) -> None:
        if any(p.persistent_keepalive == 7 for p in update.peers):
            raise OSError("invalid argument")
        self.sent.append(update)


def test_one_refused_peer_never_keeps_the_others_off_the_device() -> None:
    dev = _PickyDevice()
    keys = [Key(bytes([i]) * 32) for i in range(1, 4)]
    conf = WgConf(
        peers=[
            WgPeer(public_key=keys[0], allowed_ips=[ipaddress.ip_interface("10.1.0.0/24")]),
            WgPeer(public_key=keys[1], persistent_keepalive=7),
            WgPeer(
                public_key=keys[2],
                endpoint=Endpoint(port=51820, ip=ZONED),
                allowed_ips=[ipaddress.ip_interface("10.3.0.0/24")],
            ),
        ]
    )
    with pytest.raises(DeviceError) as err:
        dev.apply(conf)
    sent = {p.public_key for u in dev.sent for p in u.peers}
    assert sent == {keys[0]}
    assert str(keys[1]) in str(err.value) and str(keys[2]) in str(err.value)
    assert any(str(keys[0]) in c for c in err.value.changes)
