"""wireguard-go devices configured through the UAPI adapter, in two network namespaces.

Both namespaces name their device ``kilo0``: the private UAPI directories keep them apart.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kilo.dataplane import uapi, wgdevice
from kilo.dataplane.host import underlay_mtu
from kilo.dataplane.wg_kernel import KernelDevice
from kilo.dataplane.wg_userspace import UserspaceDevice, find_wireguard_go
from kilo.keys import Key
from kilo.model import Endpoint
from kilo.wireguard import WgConf, WgPeer

pytestmark = pytest.mark.integration

UNDERLAY = ("198.51.100.1", "198.51.100.2")
WG_IPS = ("10.4.0.1/16", "10.4.0.2/16")
PORT = 51820


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "ping", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    try:
        find_wireguard_go()
    except wgdevice.DeviceError as e:
        return str(e)
    return None


skip_reason = _requirements()
if skip_reason:
    pytestmark = [pytest.mark.integration, pytest.mark.skip(reason=skip_reason)]


@dataclass
class Node:
    ns: str
    underlay: str
    wg_ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    private_key: Key
    dev: UserspaceDevice

    @property
    def public_key(self) -> Key:
        return self.private_key.public()

    def peer(self, keepalive: int = 0) -> WgPeer:
        return WgPeer(
            public_key=self.public_key,
            allowed_ips=[ipaddress.ip_interface(f"{self.wg_ip.ip}/32")],
            endpoint=Endpoint(port=PORT, ip=ipaddress.ip_address(self.underlay)),
            persistent_keepalive=keepalive,
        )

    def conf(self, *peers: WgPeer) -> WgConf:
        return WgConf(private_key=self.private_key, listen_port=PORT, peers=list(peers))

    def ping(self, ip: str, count: int = 3) -> subprocess.CompletedProcess[str]:
        return sh(
            "ip",
            "netns",
            "exec",
            self.ns,
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-W",
            "1",
            ip,
            check=False,
        )


@pytest.fixture
def pair() -> Iterator[tuple[Node, Node]]:
    tag = uuid.uuid4().hex[:6]
    names = (f"kpy-wg{tag}-a", f"kpy-wg{tag}-b")
    nodes: list[Node] = []
    made: list[str] = []
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "-n",
            names[0],
            "link",
            "add",
            "kpy-veth",
            "type",
            "veth",
            "peer",
            "name",
            "kpy-veth",
            "netns",
            names[1],
        )
        for ns, ip, wg_ip in zip(names, UNDERLAY, WG_IPS, strict=True):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "kpy-veth")
            sh("ip", "-n", ns, "link", "set", "kpy-veth", "up")
            dev = UserspaceDevice("kilo0", netns=ns)
            nodes.append(Node(ns, ip, ipaddress.ip_interface(wg_ip), Key.generate(), dev))
            dev.start()
            dev.configure_link([ipaddress.ip_interface(wg_ip)], mtu=1420)
        yield nodes[0], nodes[1]
    finally:
        for n in nodes:
            n.dev.close(remove=True)  # stop wireguard-go before its namespace goes
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def handshake(node: Node, peer: Node) -> float:
    return node.dev.state().peers[peer.public_key].last_handshake


def connect(a: Node, b: Node) -> float:
    """Configure B, then A (whose keepalive starts the handshake at once); return the seconds
    from A's apply to its first handshake. (Configured the other way round, A's first initiation
    finds B without the key and the retry comes after WireGuard's 5 s rekey timeout.)"""
    assert b.dev.apply(b.conf(a.peer()))
    t0 = time.time()
    assert a.dev.apply(a.conf(b.peer(keepalive=25)))
    deadline = t0 + 10
    while handshake(a, b) == 0:
        assert time.time() < deadline, "no handshake within 10 s"
        time.sleep(0.005)
    return time.time() - t0


def test_private_sockets_do_not_clash(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert a.dev.socket_dir != b.dev.socket_dir
    assert os.path.exists(a.dev.socket_path) and os.path.exists(b.dev.socket_path)
    assert not os.path.exists(uapi.socket_path("kilo0")) or uapi.socket_path("kilo0") not in (
        a.dev.socket_path,
        b.dev.socket_path,
    )
    assert wgdevice.link_kind("kilo0", a.ns) == "tun"
    assert sh("ip", "-n", a.ns, "-o", "link", "show", "kilo0").stdout.count("mtu 1420") == 1


def test_ping_through_tunnel(pair: tuple[Node, Node]) -> None:
    a, b = pair
    delay = connect(a, b)
    out = a.ping(str(b.wg_ip.ip), count=10)
    assert out.returncode == 0, out.stdout + out.stderr
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
    print(
        f"\nhandshake {delay * 1000:.1f} ms after configuring; "
        f"ping RTT avg {rtt.group(1) if rtt else '?'} ms through wireguard-go"
    )
    st = a.dev.state().peers[b.public_key]
    assert st.rx_bytes > 0 and st.tx_bytes > 0
    assert st.endpoint == (ipaddress.ip_address(b.underlay), PORT)
    shown = sh(*a.dev.wg_argv("show", "kilo0", "peers")).stdout.split()
    assert shown == [str(b.public_key)]


def test_noop_and_unrelated_changes_keep_the_handshake(pair: tuple[Node, Node]) -> None:
    a, b = pair
    connect(a, b)
    assert a.ping(str(b.wg_ip.ip), count=1).returncode == 0
    before = handshake(a, b)
    assert before > 0
    assert a.dev.apply(a.conf(b.peer(keepalive=25))) == []
    assert b.dev.apply(b.conf(a.peer())) == []

    other = Key.generate().public()
    extra = WgPeer(
        public_key=other,
        allowed_ips=[ipaddress.ip_interface("10.4.0.9/32")],
        endpoint=Endpoint(port=PORT, dns="localhost"),
    )
    changes = a.dev.apply(a.conf(b.peer(keepalive=25), extra))
    assert len(changes) == 1 and changes[0].startswith("add peer " + str(other))
    peers = a.dev.state().peers
    assert peers[other].endpoint == (ipaddress.ip_address("127.0.0.1"), PORT)  # DNS resolved

    extra.allowed_ips.append(ipaddress.ip_interface("10.99.0.0/24"))
    changes = a.dev.apply(a.conf(b.peer(keepalive=25), extra))
    assert changes == [f"update peer {other!s}: allowed IPs 10.4.0.9/32,10.99.0.0/24"]
    assert {str(x) for x in a.dev.state().peers[other].allowed_ips} == {
        "10.4.0.9/32",
        "10.99.0.0/24",
    }

    assert a.dev.apply(a.conf(b.peer(keepalive=25))) == [f"remove peer {other!s}"]
    assert other not in a.dev.state().peers
    assert handshake(a, b) == before
    assert a.ping(str(b.wg_ip.ip), count=1).returncode == 0
    assert handshake(a, b) == before  # still the same session


def test_changed_peer_is_updated_in_place(pair: tuple[Node, Node]) -> None:
    a, b = pair
    connect(a, b)
    p = b.peer(keepalive=10)
    assert a.dev.apply(a.conf(p)) == [f"update peer {b.public_key!s}: keepalive 25 -> 10"]
    assert a.dev.state().peers[b.public_key].persistent_keepalive == 10
    assert a.dev.apply(WgConf(private_key=a.private_key, listen_port=PORT + 1, peers=[p])) == [
        f"set listen port {PORT} -> {PORT + 1}"
    ]


def test_supervisor_restarts_and_restores(pair: tuple[Node, Node]) -> None:
    a, b = pair
    connect(a, b)
    calls: list[float] = []
    a.dev.on_restart = lambda: calls.append(time.time())
    a.dev.supervise(interval=0.1)
    old = a.dev.pid
    assert old is not None and "wireguard-go" in open(f"/proc/{old}/cmdline", "rb").read().decode()
    os.kill(old, signal.SIGKILL)
    t0 = time.time()
    deadline = t0 + 10
    while not calls:
        assert time.time() < deadline, "not restarted"
        time.sleep(0.02)
    assert a.dev.restarts == 1 and a.dev.pid not in (None, old)
    st = a.dev.state()
    assert st.private_key == a.private_key and list(st.peers) == [b.public_key]
    assert "10.4.0.1/16" in sh("ip", "-n", a.ns, "addr", "show", "kilo0").stdout
    out = a.ping(str(b.wg_ip.ip), count=3)
    assert out.returncode == 0, out.stdout
    print(f"\nrestarted in {calls[0] - t0:.2f} s")


def test_agent_restart_adopts_running_wireguard_go(pair: tuple[Node, Node]) -> None:
    a, b = pair
    connect(a, b)
    before = handshake(a, b)
    pid = a.dev.pid
    a.dev.close(remove=False)  # the agent goes away; the tunnel stays
    again = UserspaceDevice("kilo0", netns=a.ns)
    a.dev = again  # the fixture now stops this one
    assert again.start() == []
    assert again.pid == pid
    assert again.apply(a.conf(b.peer(keepalive=25))) == []
    assert again.configure_link([a.wg_ip], mtu=1420) == []
    assert handshake(a, b) == before


def test_auto_selection_and_mtu(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    assert not wgdevice.kernel_available("kilo0", a.ns)  # a tun device: wireguard-go's
    assert not wgdevice.kernel_available("kpy-probe", a.ns)  # this kernel has no module
    assert wgdevice.link_kind("kpy-probe", a.ns) is None  # and the probe left nothing behind
    dev = wgdevice.open_device("kpy-probe", netns=a.ns)
    assert isinstance(dev, UserspaceDevice) and dev.pid is None  # nothing started yet
    assert isinstance(wgdevice.open_device("kilo0", "kernel", netns=a.ns), KernelDevice)

    assert underlay_mtu(a.ns) is None  # no default route
    sh("ip", "-n", a.ns, "link", "set", "kpy-veth", "mtu", "9000")
    sh("ip", "-n", a.ns, "route", "add", "default", "via", UNDERLAY[1])
    assert underlay_mtu(a.ns) == 9000
    assert a.dev.configure_link([a.wg_ip], mtu=8920) == ["set kilo0 mtu 1420 -> 8920"]
    assert a.dev.configure_link([a.wg_ip, ipaddress.ip_interface("fd04::1/64")], mtu=8920) == [
        "add address fd04::1/64 to kilo0"
    ]
    assert a.dev.configure_link([ipaddress.ip_interface("fd04::1/64")], mtu=8920) == [
        "remove address 10.4.0.1/16 from kilo0"
    ]
    # A new address in the same subnet as the old (the node's WireGuard IP moved): the old one,
    # the subnet's primary, goes first, or the kernel would take the new secondary with it.
    moved = ipaddress.ip_interface("10.4.0.2/16")
    assert a.dev.configure_link([a.wg_ip], mtu=8920) == [
        "remove address fd04::1/64 from kilo0",
        "add address 10.4.0.1/16 to kilo0",
    ]
    assert a.dev.configure_link([moved], mtu=8920) == [
        "remove address 10.4.0.1/16 from kilo0",
        "add address 10.4.0.2/16 to kilo0",
    ]
    assert a.dev.configure_link([moved], mtu=8920) == []  # it is still there
