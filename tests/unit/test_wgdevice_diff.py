"""The dataplane adapters' pure parts: UAPI text, the WireGuard diff, kernel message parsing.

No root or network needed.
"""

from __future__ import annotations

import base64
import ipaddress
import socket

from kilo.dataplane import uapi, wg_kernel, wgdevice
from kilo.keys import Key
from kilo.model import Endpoint
from kilo.wgstate import DeviceState, DeviceUpdate, PeerState, PeerUpdate
from kilo.wireguard import WgConf, WgPeer

K1, K2, K3, PSK = (Key(bytes([i]) * 32) for i in (1, 2, 3, 9))
P = ipaddress.ip_interface
A = ipaddress.ip_address


def test_encode_set() -> None:
    up = DeviceUpdate(
        private_key=K1,
        listen_port=51820,
        peers=[
            PeerUpdate(
                K2,
                preshared_key=Key.zero(),
                endpoint=(A("fd00::1"), 51821),
                persistent_keepalive=0,
                replace_allowed_ips=True,
                allowed_ips=[P("10.4.0.2/16")],
            ),
            PeerUpdate(K3, remove=True),
        ],
    )
    assert uapi.encode_set(up) == (
        "set=1\n"
        f"private_key={K1.hex()}\n"
        "listen_port=51820\n"
        f"public_key={K2.hex()}\n"
        f"preshared_key={'00' * 32}\n"
        "endpoint=[fd00::1]:51821\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.4.0.0/16\n"
        f"public_key={K3.hex()}\n"
        "remove=true\n\n"
    )


def test_parse_get() -> None:
    text = (
        f"private_key={K1.hex()}\nlisten_port=51820\npublic_key={K2.hex()}\n"
        f"preshared_key={'00' * 32}\nprotocol_version=1\nendpoint=198.51.100.2:51820\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
        "tx_bytes=92\nrx_bytes=180\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.4.0.2/32\nallowed_ip=10.2.1.0/24\n"
        f"public_key={K3.hex()}\npreshared_key={PSK.hex()}\nlast_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\nendpoint=[fd00::2%5]:1\n"
    )
    st = uapi.parse_get(text)
    assert st.private_key == K1 and st.listen_port == 51820 and list(st.peers) == [K2, K3]
    p = st.peers[K2]
    assert p.preshared_key is None and p.endpoint == (A("198.51.100.2"), 51820)
    assert p.last_handshake == 1700000000.5 and (p.rx_bytes, p.tx_bytes) == (180, 92)
    assert [str(a) for a in p.allowed_ips] == ["10.4.0.2/32", "10.2.1.0/24"]
    assert st.peers[K3].preshared_key == PSK and st.peers[K3].last_handshake == 0
    assert st.peers[K3].endpoint == (A("fd00::2"), 1)


def current() -> DeviceState:
    return DeviceState(
        private_key=K1,
        listen_port=51820,
        peers={
            K2: PeerState(
                K2,
                endpoint=(A("198.51.100.2"), 51820),
                persistent_keepalive=25,
                allowed_ips=[P("10.4.0.2/32"), P("10.2.1.0/24")],
                last_handshake=1.0,
            ),
            K3: PeerState(K3, allowed_ips=[P("10.4.0.3/32")]),
        },
    )


def desired() -> WgConf:
    return WgConf(
        private_key=K1,
        listen_port=51820,
        peers=[
            WgPeer(
                K2, [P("10.2.1.7/24"), P("10.4.0.2/32")], Endpoint(51820, A("198.51.100.2")), 25
            ),
            WgPeer(K3, [P("10.4.0.3/32")]),
        ],
    )


def test_diff_noop() -> None:
    up, changes = wgdevice.diff(current(), desired())
    assert up.empty() and changes == []


def test_diff_touches_only_what_differs() -> None:
    want = desired()
    want.peers[1].endpoint = Endpoint(51820, dns="peer.example")
    want.peers[1].preshared_key = PSK
    want.peers.append(WgPeer(K1[:31] + b"\x07", [P("10.4.0.9/32")]))
    del want.peers[0]
    up, changes = wgdevice.diff(current(), want, resolve=lambda e: (A("203.0.113.5"), e.port))
    assert [p.public_key for p in up.peers] == [K3, K1[:31] + b"\x07", K2]
    k3 = up.peers[0]
    assert k3.update_only and k3.preshared_key == PSK and k3.endpoint == (A("203.0.113.5"), 51820)
    assert not k3.replace_allowed_ips and k3.persistent_keepalive is None
    assert up.peers[2].remove and up.private_key is None and up.listen_port is None
    assert changes[0] == (
        f"update peer {base64.b64encode(K3).decode()}: preshared key; "
        "endpoint none -> 203.0.113.5:51820"
    )
    assert changes[1].startswith("add peer ") and changes[2].startswith("remove peer ")


def test_diff_unresolvable_endpoint_keeps_the_device_one() -> None:
    want = desired()
    want.peers[0].endpoint = Endpoint(51820, dns="nowhere.invalid")
    up, changes = wgdevice.diff(current(), want, resolve=lambda e: None)
    assert up.empty() and changes == []


def test_diff_confs_names_only_what_changed_without_reading_the_device() -> None:
    before = desired()
    assert wgdevice.diff_confs(before, desired()) == (DeviceUpdate(), [])
    want = desired()
    want.peers[1].persistent_keepalive = 25
    want.peers.append(WgPeer(K1[:31] + b"\x07", [P("10.4.0.9/32")]))
    del want.peers[0]
    up, changes = wgdevice.diff_confs(before, want, resolve=lambda e: None)
    assert [p.public_key for p in up.peers] == [K3, K1[:31] + b"\x07", K2]
    k3 = up.peers[0]
    assert not k3.update_only and k3.replace_allowed_ips  # set in full: a lost one comes back
    assert k3.persistent_keepalive == 25 and k3.allowed_ips == [P("10.4.0.3/32")]
    assert up.peers[1].persistent_keepalive == 0 and up.peers[2].remove
    assert changes[0] == f"update peer {base64.b64encode(K3).decode()}: keepalive 0 -> 25"
    assert changes[1].startswith("add peer ") and changes[2].startswith("remove peer ")
    keyed = desired()
    keyed.listen_port = 51821
    up, changes = wgdevice.diff_confs(before, keyed)
    assert (
        up.listen_port == 51821 and not up.peers and changes == ["set listen port 51820 -> 51821"]
    )


def test_diff_interface_section() -> None:
    want = desired()
    want.listen_port = 51821
    up, changes = wgdevice.diff(current(), want)
    assert (
        up.listen_port == 51821
        and up.private_key is None
        and changes == ["set listen port 51820 -> 51821"]
    )
    up, _ = wgdevice.diff(current(), WgConf(private_key=None, peers=desired().peers))
    assert up.empty()


def test_kernel_message_parsing() -> None:
    from pyroute2.netlink.generic.wireguard import wgmsg

    m = wgmsg()
    m["cmd"], m["version"] = 0, 1
    m["attrs"] = [
        ["WGDEVICE_A_IFNAME", "kilo0"],
        ["WGDEVICE_A_PRIVATE_KEY", base64.b64encode(K1)],
        ["WGDEVICE_A_LISTEN_PORT", 51820],
        [
            "WGDEVICE_A_PEERS",
            [
                {
                    "attrs": [
                        ["WGPEER_A_PUBLIC_KEY", base64.b64encode(K2)],
                        ["WGPEER_A_ENDPOINT", {"addr": "198.51.100.2", "port": 51820}],
                        ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 0}],
                        ["WGPEER_A_RX_BYTES", 10],
                        ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
                        [
                            "WGPEER_A_ALLOWEDIPS",
                            [
                                {
                                    "attrs": [
                                        ["WGALLOWEDIP_A_FAMILY", socket.AF_INET],
                                        [
                                            "WGALLOWEDIP_A_IPADDR",
                                            socket.inet_pton(socket.AF_INET, "10.4.0.2"),
                                        ],
                                        ["WGALLOWEDIP_A_CIDR_MASK", 32],
                                    ]
                                }
                            ],
                        ],
                    ]
                }
            ],
        ],
    ]
    m.encode()
    d = wgmsg(m.data)
    d.decode()
    assert wg_kernel._kernel_key(d.get_attr("WGDEVICE_A_PRIVATE_KEY")) == K1
    dev = DeviceState()
    for p in d.get_attr("WGDEVICE_A_PEERS"):
        wg_kernel._merge_kernel_peer(dev, p)
    p = dev.peers[K2]
    assert p.endpoint == (A("198.51.100.2"), 51820) and p.persistent_keepalive == 25
    assert p.last_handshake == 1700000000 and p.rx_bytes == 10
    assert [str(a) for a in p.allowed_ips] == ["10.4.0.2/32"]
