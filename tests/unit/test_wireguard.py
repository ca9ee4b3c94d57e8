from __future__ import annotations

import ipaddress

import pytest

from kilo.keys import Key
from kilo.model import Endpoint
from kilo.wireguard import ConfigError, WgConf, WgPeer, parse

K1 = Key(bytes(range(32)))
K2 = Key(bytes(range(1, 33)))


def test_render_matches_kilo_layout() -> None:
    c = WgConf(
        private_key=Key.zero(),
        listen_port=51820,
        peers=[
            WgPeer(
                K1,
                [ipaddress.ip_interface("10.2.0.0/24"), ipaddress.ip_interface("10.4.0.1/32")],
                Endpoint(51820, ipaddress.ip_address("203.0.113.1")),
                0,
            ),
            WgPeer(K2, [ipaddress.ip_interface("10.5.0.1/32")], None, 25, K1),
        ],
    )
    assert c.render() == (
        "[Interface]\nListenPort = 51820\n\n"
        "[Peer]\nAllowedIPs = 10.2.0.0/24, 10.4.0.1/32\nEndpoint = 203.0.113.1:51820\n"
        "PersistentKeepalive = 0\n"
        "PublicKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n"
        "[Peer]\nAllowedIPs = 10.5.0.1/32\nPersistentKeepalive = 25\n"
        "PresharedKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
        "PublicKey = AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n"
    )


def test_peers_only_has_no_leading_blank_line() -> None:
    assert WgConf(peers=[WgPeer(K1)]).render().startswith("[Peer]\n")


def test_parse_wg_showconf_form() -> None:
    text = """[Interface]
ListenPort = 51820
FwMark = 0x1
PrivateKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=

[Peer]
PublicKey = AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=
AllowedIPs = 10.4.0.1/32, fd00::/64
Endpoint = [2001:db8::1]:51820
PersistentKeepalive = off
"""
    c = parse(text)
    assert c.private_key == K1 and c.listen_port == 51820
    (p,) = c.peers
    assert (
        p.public_key == K2
        and str(p.endpoint) == "[2001:db8::1]:51820"
        and p.persistent_keepalive == 0
    )
    assert [str(a) for a in p.allowed_ips] == ["10.4.0.1/32", "fd00::/64"]


@pytest.mark.parametrize(
    "text",
    [
        "[Bogus]\n",
        "[Peer]\nPublicKey = short\n",
        "ListenPort = 1\n",
        "[Peer]\nAllowedIPs = x\n",
        "[Interface]\nnonsense\n",
    ],
)
def test_parse_errors_name_the_line(text: str) -> None:
    with pytest.raises(ConfigError, match="line"):
        parse(text)
