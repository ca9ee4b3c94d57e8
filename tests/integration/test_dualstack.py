"""IPv6 and dual stack (issue 14, item 2): kg on IPv6 underlays, pods on IPv6 pod CIDRs.

Two labs, one after the other, each of two locations (aws: a1 public, the leader, and a2;
gcp: g1 public and g2), kg on every node, real wireguard-go:

IPv6 only (``stack: ipv6``): the underlay, the Nodes' InternalIPs, their podCIDRs, the
service CIDR and kg's ``--subnet`` are IPv6 (the lab's management network, its own path to the
API server, stays IPv4). Checked: pods have IPv6 addresses only and every pod pings every other
one, within a location and across; ``ip -6 route get`` sends another location's pod through
kilo0 on a leader and to the leader over the LAN on a follower, and the leaders' tunnels carry
it; the leaders' endpoints are IPv6 (``[2001:db8:100::N]:51820``) and ``wg showconf kilo0``
equals ``kgctl showconf node``; the firewall's sets and rules are IPv6 ones; a Peer with an
IPv6 allowed IP and an IPv6 endpoint reaches pods of both locations and is reached back.

Dual stack (``stack: dual``): IPv4 and IPv6 on the underlay (two InternalIPs per Node),
spec.podCIDRs of both families, spec.podCIDR the IPv4 one, kg's ``--subnet`` IPv4. kg, as
Kilo 0.7 does, takes only spec.podCIDR: pods reach each other over IPv4 within and across
locations and the endpoints are IPv4. Two strict expected failures: a Peer with an IPv4 and
an IPv6 allowed IP (its IPv6 routes get an IPv4 source or gateway, which the kernel refuses, so
every reconcile fails: a bug of routes.py, fixed by /tmp/dualstack-routes.patch when this was
written), and pods reaching each other over IPv6 (kg puts only the IPv4 range in the CNI
conflist, so the pods get no IPv6 address, and no allowed IP, route or firewall rule carries the
IPv6 pod CIDRs: dual stack beyond Kilo 0.7).

With ``KPY_KILO_KGCTL`` set to Kilo 0.7's kgctl, ``kgctl graph`` and ``showconf node|peer``
(also ``--as-peer``) must print what Kilo's prints on both live clusters.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterator

import pytest
from kilo_lab import peers
from kilo_lab.kilo_diff import golden
from kilo_lab.lab import Lab
from kilo_lab.observe import wg_peers
from kilo_lab.peers import PeerHost

from kilo.dataplane.host import underlay_mtu
from kilo.model import Endpoint
from kilo.translate import peer_object
from kilo.wireguard import parse
from tests.integration.test_agent_support import (
    Tracker,
    agent_lab,
    check_nothing_left,
    lab_name,
    metrics,
    reach,
    wait_for,
    wg_bytes,
)

pytestmark = pytest.mark.integration

#: Kilo 0.7's kgctl (``go build ./cmd/kgctl`` of its 0.7.0 tag, vendored): ours must print
#: what it prints for these clusters; without it those checks are skipped.
KILO_KGCTL = os.environ.get("KPY_KILO_KGCTL", "")
LAPTOP6 = "fd00:5::9/128"  # the Peer's WireGuard address and allowed IP (outside the cluster's)
PODS = ("a1-p0", "a2-p0", "g1-p0", "g2-p0")


def spec(name: str, stack: str) -> dict[str, object]:
    return {
        "name": name,
        "clusters": [
            {
                "name": "c1",
                "stack": stack,
                "granularity": "location",
                "locations": [
                    {"name": "aws", "nodes": [{"name": "a1", "public": True}, "a2"]},
                    {"name": "gcp", "nodes": [{"name": "g1", "public": True}, "g2"]},
                ],
            }
        ],
        "peers": [{"name": "laptop", "ipv6": True}],
    }


def route_get(lab: Lab, host: str, ip: str) -> str:
    """What ``ip -o route get IP`` says on ``host`` (the family follows the address)."""
    return lab.exec(host, ["ip", "-o", "route", "get", ip], check=True).stdout.strip()


def dev_of(route: str) -> str:
    m = re.search(r"\bdev (\S+)", route)
    assert m is not None, route
    return m.group(1)


def node_json(lab: Lab, node: str) -> dict[str, object]:
    data = json.loads(lab.kubectl("c1", "get", "node", node, "-o", "json").stdout)
    assert isinstance(data, dict)
    return data


def internal_ips(lab: Lab, node: str) -> list[str]:
    status = node_json(lab, node)["status"]
    assert isinstance(status, dict)
    return [a["address"] for a in status["addresses"] if a["type"] == "InternalIP"]


def annotation(lab: Lab, node: str, key: str) -> str | None:
    meta = node_json(lab, node)["metadata"]
    assert isinstance(meta, dict)
    value = (meta.get("annotations") or {}).get(key)
    return None if value is None else str(value)


def addr6(lab: Lab, pod: str) -> str:
    a = lab.pods[pod].address6
    assert a is not None, f"{pod} has no IPv6 address ({lab.pods[pod].ip})"
    return a


def check_showconf(lab: Lab, leader: str) -> None:
    live = parse(lab.wg(leader, "showconf", "kilo0").stdout)
    want = parse(lab.kgctl("c1", "showconf", "node", leader).stdout)
    assert wg_peers(live) == wg_peers(want), f"{leader}: wg showconf != kgctl showconf node"


def kgctl_like_kilo(lab: Lab, commands: list[list[str]]) -> None:
    """Ours and Kilo's kgctl, on the same live cluster: golden.mismatch, as the golden tests."""
    if not KILO_KGCTL:
        pytest.skip("KPY_KILO_KGCTL (Kilo 0.7's kgctl) is not set")
    wrong = []
    for argv in commands:
        kc = str(lab.kubeconfig("c1"))
        t = lab.exec("admin", [KILO_KGCTL, *argv, "--kubeconfig", kc])
        o = lab.kgctl("c1", *argv, check=False)
        assert t.returncode == 0, f"Kilo's kgctl {' '.join(argv)}: {t.stderr[-1000:]}"
        why = golden.mismatch(
            golden.Result(t.returncode, t.stdout, t.stderr),
            golden.Result(o.returncode, o.stdout, o.stderr),
        )
        if why is not None:
            wrong.append(f"kgctl {' '.join(argv)}: {why}")
    assert not wrong, "\n".join(wrong)


def kgctl_commands(nodes: list[str], peers: list[str]) -> list[list[str]]:
    out: list[list[str]] = [["graph"]]
    for n in nodes:
        out += [["showconf", "node", n], ["showconf", "node", n, "--as-peer"]]
    for p in peers:
        out += [["showconf", "peer", p], ["showconf", "peer", p, "--as-peer", "-o", "json"]]
    return out


# --- IPv6 only ------------------------------------------------------------------------------


# Each class's last test takes its lab down (check_nothing_left), so one lab runs at a time.
@pytest.fixture(scope="class")
def v6_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(spec(lab_name("v6"), "ipv6")) as (lab, tracker):
        yield lab, tracker


@pytest.fixture(scope="class")
def dual_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(spec(lab_name("ds"), "dual")) as (lab, tracker):
        yield lab, tracker


class TestIPv6Only:
    @pytest.fixture
    def lab(self, v6_tracker: tuple[Lab, Tracker]) -> Lab:
        return v6_tracker[0]

    def test_nodes_and_pods_are_ipv6_only(self, lab: Lab) -> None:
        for n in lab.spec.nodes:
            assert internal_ips(lab, n.name) == [str(n.lan_ip6)]
            node_spec = node_json(lab, n.name)["spec"]
            assert isinstance(node_spec, dict)
            assert node_spec["podCIDR"] == str(n.pod_cidr6)
            assert node_spec["podCIDRs"] == [str(n.pod_cidr6)]
        for p in PODS:
            assert ipaddress.ip_interface(lab.pods[p].ip).version == 6
            assert lab.exec(p, ["ip", "-4", "-o", "address", "show", "dev", "eth0"]).stdout == ""
            assert "default via" in lab.exec(p, ["ip", "-6", "route", "show", "default"]).stdout
        # no IPv4 default route: the underlay's MTU is the IPv6 default route's interface's
        assert underlay_mtu(lab.ns("a2")) == 1500
        for leader in ("a1", "g1"):
            wg = lab.exec(leader, ["ip", "-o", "address", "show", "dev", "kilo0"]).stdout
            assert re.search(r"inet6 fd00:4::\d+/64", wg), wg
            public = lab.spec.node(leader).public_ip6
            assert annotation(lab, leader, "kilo.squat.ai/endpoint") == f"[{public}]:51820"

    def test_pods_reach_pods_over_ipv6(self, lab: Lab) -> None:
        for src in PODS:
            for dst in PODS:
                if src != dst:
                    reach(lab, src, addr6(lab, dst))

    def test_another_locations_pods_go_through_kilo0(self, lab: Lab) -> None:
        before = {n: wg_bytes(lab, n) for n in ("a1", "g1")}
        g1, a1 = addr6(lab, "g1-p0"), addr6(lab, "a1-p0")
        assert dev_of(route_get(lab, "a1", g1)) == "kilo0"
        assert dev_of(route_get(lab, "g1", a1)) == "kilo0"
        # a follower hands it to its leader over the LAN
        via = route_get(lab, "a2", g1)
        assert dev_of(via) == "kpy-lan" and f"via {lab.spec.node('a1').lan_ip6}" in via, via
        # and within a location nothing goes through the tunnel
        assert dev_of(route_get(lab, "a1", addr6(lab, "a2-p0"))) == "kpy-lan"
        for src, dst in (("a1-p0", "g1-p0"), ("a2-p0", "g2-p0")):
            reach(lab, src, addr6(lab, dst))
        after = {n: wg_bytes(lab, n) for n in ("a1", "g1")}
        assert all(after[n] > before[n] for n in after), (before, after)

    def test_kgctl_showconf_is_the_leaders_config(self, lab: Lab) -> None:
        for leader in ("a1", "g1"):
            check_showconf(lab, leader)
        conf = parse(lab.kgctl("c1", "showconf", "node", "a1").stdout)
        (peer,) = conf.peers
        assert str(peer.endpoint) == f"[{lab.spec.node('g1').public_ip6}]:51820"
        assert {a.version for a in peer.allowed_ips} == {6}

    def test_the_firewall_is_an_ipv6_one(self, lab: Lab) -> None:
        rules = lab.exec("a1", ["nft", "list", "table", "inet", "kilo"], check=True).stdout
        assert f"ip6 saddr {lab.spec.node('a1').pod_cidr6} jump kilo-nat" in rules, rules
        assert "services-ipv6" in rules and str(lab.spec.cluster("c1").service_cidr6) in rules

    def test_a_peer_with_ipv6_allowed_ips_and_endpoint(self, lab: Lab) -> None:
        laptop = PeerHost("laptop", "laptop", LAPTOP6)
        manifest = peers.peer_manifest(lab, laptop, endpoint=True, ipv6=True)
        public = str(lab.spec.peers[0].public_ip6)
        assert public in json.dumps(manifest["spec"]["endpoint"]), manifest
        lab.kubectl("c1", "apply", "-f", "-", input=json.dumps(manifest))
        try:
            shown = parse(lab.kgctl("c1", "showconf", "peer", "laptop").stdout)
            assert {str(p.endpoint).startswith("[2001:db8:100::") for p in shown.peers} == {True}
            peers.configure(lab, laptop, shown)
            ip = LAPTOP6.split("/")[0]
            for node in ("a1", "a2", "g2"):
                reach(lab, "laptop", addr6(lab, f"{node}-p0"))
                reach(lab, f"{node}-p0", ip)
            check_showconf(lab, "a1")
        finally:
            peers.stop_device(lab, laptop)

    def test_kgctl_prints_what_kilos_prints(self, lab: Lab) -> None:
        kgctl_like_kilo(lab, kgctl_commands(["a1", "a2", "g1", "g2"], ["laptop"]))

    def test_nothing_left_behind(self, v6_tracker: tuple[Lab, Tracker]) -> None:
        check_nothing_left(*v6_tracker)


# --- dual stack -----------------------------------------------------------------------------


class TestDualStack:
    @pytest.fixture
    def lab(self, dual_tracker: tuple[Lab, Tracker]) -> Lab:
        return dual_tracker[0]

    def test_nodes_are_dual_stack(self, lab: Lab) -> None:
        for n in lab.spec.nodes:
            assert internal_ips(lab, n.name) == [str(n.lan_ip), str(n.lan_ip6)]
            node_spec = node_json(lab, n.name)["spec"]
            assert isinstance(node_spec, dict)
            assert node_spec["podCIDR"] == str(n.pod_cidr)
            assert node_spec["podCIDRs"] == [str(n.pod_cidr), str(n.pod_cidr6)]
        for node in ("a1", "g1"):  # IPv4 first, as Kilo chooses
            public = lab.spec.node(node).public_ip
            assert annotation(lab, node, "kilo.squat.ai/endpoint") == f"{public}:51820"

    def test_pods_reach_pods_over_ipv4(self, lab: Lab) -> None:
        for src in PODS:
            for dst in PODS:
                if src != dst:
                    reach(lab, src, lab.pods[dst].address)
        assert dev_of(route_get(lab, "a1", lab.pods["g1-p0"].address)) == "kilo0"
        for leader in ("a1", "g1"):
            check_showconf(lab, leader)

    def test_kgctl_prints_what_kilos_prints(self, lab: Lab) -> None:
        kgctl_like_kilo(lab, kgctl_commands(["a1", "a2", "g1", "g2"], []))

    def test_a_peer_with_ipv4_and_ipv6_allowed_ips(self, lab: Lab) -> None:
        laptop = PeerHost("laptop", "laptop", "10.5.0.9/32")
        allowed = [ipaddress.ip_interface(a) for a in ("10.5.0.9/32", "fd00:5::9/128")]
        ip = ipaddress.ip_address(str(lab.spec.peers[0].public_ip))
        obj = peer_object("laptop", laptop.public_key, allowed, Endpoint(51820, ip), 10)
        errors = 'kilo_errors_total{event="apply"}'
        before = {n: metrics(lab, n).get(errors, 0.0) for n in ("a1", "a2")}
        lab.kubectl("c1", "apply", "-f", "-", input=json.dumps(obj))
        try:
            peers.configure(
                lab, laptop, parse(lab.kgctl("c1", "showconf", "peer", "laptop").stdout)
            )
            reach(lab, "laptop", lab.pods["a2-p0"].address)
            reach(lab, "a2-p0", "10.5.0.9")

            def routed() -> bool:
                out = lab.exec("a1", ["ip", "-6", "route", "show", "fd00:5::9/128"]).stdout
                return "dev kilo0" in out

            wait_for("a1 routing the Peer's IPv6 allowed IP onto kilo0", routed, 8)
            after = {n: metrics(lab, n).get(errors, 0.0) for n in ("a1", "a2")}
            assert after == before, f"failed reconciles after the Peer: {before} -> {after}"
        finally:
            peers.stop_device(lab, laptop)
            lab.kubectl("c1", "delete", "peer", "laptop")

    @pytest.mark.xfail(
        strict=True,
        reason="dual stack beyond Kilo 0.7: kg takes only Node spec.podCIDR, so the CNI "
        "conflist gets only the IPv4 range (pods get no IPv6 address) and no allowed IP, route "
        "or firewall rule carries spec.podCIDRs[1]",
    )
    def test_pods_reach_pods_over_ipv6(self, lab: Lab) -> None:
        for src in PODS:
            for dst in PODS:
                if src != dst:
                    reach(lab, src, addr6(lab, dst), timeout=10)

    def test_nothing_left_behind(self, dual_tracker: tuple[Lab, Tracker]) -> None:
        check_nothing_left(*dual_tracker)
