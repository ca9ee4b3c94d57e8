"""NAT routers in a static lab (no agent): nodes and a peer behind nftables masquerading.

a1 is public (location aws); h1 and h2 sit behind NAT ``home`` (locations home1, home2: the
router has a leg on each LAN); the peer ``laptop`` sits behind NAT ``cafe`` (on its inside
network). What leaves a NAT comes from its outside address and a random port, conntrack shows
the mapping, a flushed conntrack gives the same flow a new port, nothing gets in unasked, hosts
behind one NAT reach each other untranslated, and all of it goes with the lab.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kilo_lab import netns, procs
from kilo_lab.lab import Lab
from kilo_lab.layout import state_dir
from kilo_lab.nat import parse_conntrack, ruleset
from kilo_lab.spec import SpecError, parse
from kilo_lab.testing import need_lab, root_snapshot, unavailable

pytestmark = pytest.mark.integration

NAME = f"nt{uuid.uuid4().hex[:6]}"
SPEC: dict[str, Any] = {
    "name": NAME,
    "clusters": [
        {
            "name": "c1",
            "locations": [
                {"name": "aws", "nodes": [{"name": "a1", "public": True, "pods": 0}]},
                {"name": "home1", "nodes": [{"name": "h1", "nat": "home", "pods": 0}]},
                {"name": "home2", "nodes": [{"name": "h2", "nat": "home", "pods": 0}]},
            ],
        }
    ],
    "peers": [{"name": "laptop", "nat": "cafe"}],
}

#: Receives one UDP datagram at argv[1]:argv[2] and prints where it came from.
RECEIVER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.settimeout(float(sys.argv[3]))\n"
    "print('ready', flush=True)\n"
    "try:\n"
    "    data, addr = s.recvfrom(100)\n"
    "    print(addr[0], addr[1], flush=True)\n"
    "except TimeoutError:\n"
    "    print('nothing', flush=True)\n"
)
#: Sends a few UDP datagrams from port argv[1] to argv[2]:argv[3].
SENDER = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1])))\n"
    "for _ in range(3):\n"
    "    s.sendto(b'kpy', (sys.argv[2], int(sys.argv[3])))\n"
    "    time.sleep(0.05)\n"
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_lab()
    for tool in ("nft", "conntrack"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            unavailable(f"{tool} is missing")
    before = root_snapshot()
    lab = Lab(SPEC, agent=False)
    lab.up()
    try:
        yield lab
    finally:
        pids = [p for n in lab.state.get("namespaces", []) for p in procs.pids(n)]
        lab.down()
        assert netns.names(f"kpy-{NAME}-") == []
        assert not state_dir(NAME).exists()
        assert [p for p in pids if procs.alive(p)] == []
        assert root_snapshot() == before


def udp(
    lab: Lab,
    sender: str,
    sport: int,
    receiver: str,
    dst: str,
    dport: int,
    wait: float = 5,
    at: tuple[str, int] | None = None,
) -> tuple[str, int] | None:
    """Where ``receiver`` (listening at ``at``, default dst:dport) sees the datagrams
    ``sender`` sends from port ``sport`` to dst:dport come from; None if none arrives within
    ``wait`` seconds."""
    listen, lport = at or (dst, dport)
    rx = lab.popen(
        receiver,
        [sys.executable, "-c", RECEIVER, listen, str(lport), str(wait)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        lab.exec(sender, [sys.executable, "-c", SENDER, str(sport), dst, str(dport)], check=True)
        line = rx.stdout.readline().split()
        rx.wait(wait + 5)
    finally:
        if rx.poll() is None:
            procs.stop([rx])
    if line == ["nothing"] or len(line) != 2:
        return None
    return line[0], int(line[1])


def test_routers_namespaces_links_and_ruleset(lab: Lab) -> None:
    for nat, legs in {
        "home": {"kpy-inet", "kpy-in", "kpy-l0-1", "kpy-l0-2"},
        "cafe": {"kpy-inet", "kpy-in"},
    }.items():
        ns = f"kpy-{NAME}-nat-{nat}"
        assert netns.exists(ns)
        assert set(netns.links(ns)) == {"lo", *legs}
        assert str(lab.spec.nat(nat).public_ip) + "/24" in netns.addresses(ns, "kpy-inet")
        listed = netns.run(["nft", "list", "table", "ip", "kpy-nat"], netns=ns).stdout
        assert "masquerade random" in listed and 'oifname "kpy-inet"' in listed
    assert netns.addresses(lab.ns("laptop"), "kpy-lan") == ["10.250.1.2/24"]
    route = lab.exec("h1", ["ip", "route", "show", "default"]).stdout
    assert "via 10.10.2.254 dev kpy-lan" in route, route
    route = lab.exec("laptop", ["ip", "route", "show", "default"]).stdout
    assert "via 10.250.1.1 dev kpy-lan" in route, route


def test_a_flow_leaves_through_the_nats_address_and_a_mapping_conntrack_shows(lab: Lab) -> None:
    a1 = str(lab.spec.node("a1").public_ip)
    home = str(lab.spec.nat("home").public_ip)
    seen = udp(lab, "h1", 51820, "a1", a1, 5000)
    assert seen is not None and seen[0] == home, seen
    flows = [f for f in lab.nat_flows("home") if f.dport == 5000]
    assert len(flows) == 1, flows
    f = flows[0]
    assert (str(f.src), f.sport, str(f.dst), str(f.public), f.port) == (
        str(lab.spec.node("h1").lan_ip),
        51820,
        a1,
        home,
        seen[1],
    )
    cafe = str(lab.spec.nat("cafe").public_ip)
    seen = udp(lab, "laptop", 51820, "a1", a1, 5001)
    assert seen is not None and seen[0] == cafe, seen


def test_a_forgotten_mapping_comes_back_through_another_port(lab: Lab) -> None:
    a1 = str(lab.spec.node("a1").public_ip)
    first = udp(lab, "h1", 51820, "a1", a1, 5002)
    assert first is not None
    again = udp(lab, "h1", 51820, "a1", a1, 5002)
    assert again == first  # the mapping holds while conntrack remembers it
    ports = set()
    for _ in range(3):  # a random port may, once in ~64k, be the same one again
        lab.nat_forget("home")
        assert [f for f in lab.nat_flows("home") if f.dport == 5002] == []
        after = udp(lab, "h1", 51820, "a1", a1, 5002)
        assert after is not None and after[0] == first[0]
        ports.add(after[1])
        if after[1] != first[1]:
            break
    assert ports - {first[1]}, f"the port stayed {first[1]}"


def test_nothing_gets_in_unasked(lab: Lab) -> None:
    a1 = str(lab.spec.node("a1").public_ip)
    home = str(lab.spec.nat("home").public_ip)
    seen = udp(lab, "h1", 51821, "a1", a1, 5003)
    assert seen is not None
    # the mapping answers its own peer only: from another port of a1 nothing reaches h1
    assert udp(lab, "a1", 5004, "h1", home, seen[1], wait=2, at=("0.0.0.0", 51821)) is None
    h1_lan = str(lab.spec.node("h1").lan_ip)
    assert not lab.ping("a1", h1_lan, count=1, wait=1)
    assert not lab.ping("a1", str(lab.spec.peers[0].inside_ip), count=1, wait=1)
    assert lab.ping("h1", a1) and lab.ping("laptop", a1) and lab.ping("a1", home)


def test_hosts_behind_one_nat_reach_each_other_untranslated(lab: Lab) -> None:
    h1, h2 = (str(lab.spec.node(n).lan_ip) for n in ("h1", "h2"))
    assert lab.ping("h1", h2) and lab.ping("h2", h1)
    assert udp(lab, "h1", 51820, "h2", h2, 5005) == (h1, 51820)
    # the other NAT's hosts are outside: the laptop does not reach h1's LAN address
    assert not lab.ping("laptop", h1, count=1, wait=1)


def test_nat_descriptions() -> None:
    base: dict[str, Any] = {
        "name": "x",
        "clusters": [{"name": "c1", "locations": [{"name": "l", "nodes": ["n1"]}]}],
    }

    def with_(node: dict[str, Any], **extra: Any) -> dict[str, Any]:
        loc = {"name": "l", "nodes": [{"name": "n1", **node}]}
        return {**base, "clusters": [{"name": "c1", "locations": [loc]}], **extra}

    s = parse(with_({"nat": "home"}, peers=[{"name": "p", "nat": "home"}, "q"]))
    assert [(n.name, n.index, str(n.cidr)) for n in s.nats] == [("home", 0, "10.250.0.0/24")]
    assert s.nats[0].public_ip == ipaddress.ip_address("198.51.100.1")
    assert s.peers[0].inside_ip == ipaddress.ip_address("10.250.0.2")
    assert s.peers[0].public_ip == s.nats[0].public_ip
    assert s.peers[1].nat is None and s.peers[1].public_ip == ipaddress.ip_address("203.0.113.1")
    assert s.nat_gateway(s.nodes[0]) == ipaddress.ip_address("10.10.1.254")
    s = parse(with_({"nat": "home"}, nats=[{"name": "home", "publicIP": "198.51.100.9"}]))
    assert str(s.nats[0].public_ip) == "198.51.100.9"
    for bad, match in [
        (with_({"nat": "home", "public": True}), "no public address"),
        (with_({"nat": "home", "ip": "10.10.1.254"}), "NAT router"),
        (with_({}, nats=["unused"]), "no node or peer"),
        (with_({"nat": "h"}, nats=[{"name": "h", "cidr": "10.10.1.0/25"}]), "overlaps"),
        (with_({}, peers=[{"name": "nat-x"}]), "nat-"),
        (with_({}, peers=[{"name": "p", "ip": "10.250.0.5"}]), "behind a NAT"),
    ]:
        with pytest.raises(SpecError, match=match):
            parse(bad)


def test_conntrack_output_is_read_as_flows() -> None:
    text = (
        "udp      17 29 src=10.10.2.1 dst=198.51.100.1 sport=51820 dport=51820 [UNREPLIED] "
        "src=198.51.100.1 dst=198.51.100.2 sport=51820 dport=31242 mark=0 use=1\n"
        "udp      17 29 src=10.10.2.1 dst=10.10.3.1 sport=51820 dport=51820 "
        "src=10.10.3.1 dst=10.10.2.1 sport=51820 dport=51820 mark=0 use=1\n"
        "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n"
    )
    (f,) = parse_conntrack(text)
    got = (str(f.src), f.sport, str(f.public), f.port)
    assert got == ("10.10.2.1", 51820, "198.51.100.2", 31242)
    assert "masquerade random" in ruleset()
