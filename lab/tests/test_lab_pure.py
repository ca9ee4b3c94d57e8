"""The lab's pure parts (no root, no namespaces): polling, the conflist it gives a node, a
peer's Peer object and WireGuard config, the Service objects, the summary table."""

from __future__ import annotations

import ipaddress
import pathlib
import time

import pytest
from kilo.cni import default_conflist, pod_cidr_of, with_pod_cidr
from kilo.keys import Key
from kilo.wireguard import WgPeer
from kilo.wireguard import parse as parse_wg

from kilo_lab import pods, procs
from kilo_lab.console import Check, summary_table
from kilo_lab.daemons import Daemons
from kilo_lab.layout import Paths
from kilo_lab.objects import service_docs
from kilo_lab.peers import WG_PORT, PeerHost, device_conf, link_script, routes_of
from kilo_lab.poll import Timeout, wait_until
from kilo_lab.spec import LabSpec, SpecError, parse
from kilo_lab.state import Store


def test_wait_until_returns_the_time_it_took_and_names_what_timed_out() -> None:
    calls = iter([False, False, True])
    assert wait_until("three calls", lambda: next(calls), 5, 0.01) < 1
    t0 = time.monotonic()
    with pytest.raises(Timeout, match=r"never: not within 0 s \(seen: nothing\)"):
        wait_until("never", lambda: False, 0.05, 0.01, detail=lambda: "seen: nothing")
    assert time.monotonic() - t0 < 1
    with pytest.raises(KeyError):  # a condition's own error is not swallowed
        wait_until("fails", lambda: {}["x"], 1)


def test_a_node_conflist_is_what_kg_writes() -> None:
    assert pods.node_conflist(None) == default_conflist()
    filled = pods.node_conflist("10.2.3.0/24")
    assert filled == with_pod_cidr(default_conflist(), ipaddress.ip_interface("10.2.3.0/24"))
    assert pod_cidr_of(filled) == "10.2.3.0/24"


def test_a_peer_hosts_config_is_its_interface_and_kgctls_peers() -> None:
    ph = PeerHost("laptop", "client", "10.5.0.1/32")
    leader = WgPeer(
        public_key=Key.generate().public(),
        allowed_ips=[ipaddress.ip_interface("10.2.1.0/24"), ipaddress.ip_interface("10.4.0.1/32")],
    )
    shown = parse_wg(
        "[Peer]\nAllowedIPs = 10.2.1.0/24, 10.4.0.1/32\nPersistentKeepalive = 0\n"
        f"PublicKey = {leader.public_key}\n"
    )
    conf = parse_wg(device_conf(ph, shown).render())
    assert conf.private_key == ph.private_key and conf.listen_port == WG_PORT
    assert [p.public_key for p in conf.peers] == [leader.public_key]
    ph.routes = routes_of(shown)
    assert ph.routes == ["10.2.1.0/24", "10.4.0.1/32"]
    assert link_script(ph).startswith("ip address add 10.5.0.1/32 dev wg0 && ip link set wg0 up")


def test_service_docs_are_a_service_and_its_endpoints() -> None:
    docs = service_docs("web", ["10.2.1.2"], 80, target_port=8080, namespace="default")
    assert [d["kind"] for d in docs] == ["Service", "Endpoints"]
    assert docs[0]["spec"]["ports"][0] == {
        "name": "http",
        "port": 80,
        "targetPort": 8080,
        "protocol": "TCP",
    }
    assert "selector" not in docs[0]["spec"]
    assert docs[1]["subsets"] == [
        {"addresses": [{"ip": "10.2.1.2"}], "ports": [{"name": "http", "port": 8080}]}
    ]


def test_summary_table() -> None:
    table = summary_table([Check("1", "pods ping", True, 1.25), Check("2", "curl", False, 0.5)])
    lines = table.splitlines()
    assert lines[0].split() == ["act", "check", "result", "time"]
    assert "act 1: the mesh" in lines[2] and "pass" in lines[2] and "1.2 s" in lines[2]
    assert "FAIL" in lines[3]


def test_start_time_tells_a_reused_pid_apart() -> None:
    import os

    me = os.getpid()
    assert procs.alive(me) and procs.alive(me, procs.start_time(me))
    assert not procs.alive(me, (procs.start_time(me) or 0) + 1)


def _liveness_lab(**cluster: object) -> dict[str, object]:
    return {
        "name": "t",
        "clusters": [
            {
                "name": "c1",
                **cluster,
                "locations": [{"name": "aws", "nodes": [{"name": "a1", "public": True}, "a2"]}],
            }
        ],
    }


def test_a_clusters_liveness_mode_is_passed_to_every_kg(tmp_path: pathlib.Path) -> None:
    compat = parse(_liveness_lab())
    assert compat.cluster("c1").liveness == "compat"
    native = parse(_liveness_lab(liveness="native"))
    assert native.cluster("c1").liveness == "native"

    def argv(spec: LabSpec, node: str) -> list[str]:
        d = Daemons(lambda: spec, Paths(tmp_path), Store(tmp_path), lambda h: f"kpy-t-{h}")
        return d.agent_argv(node)

    assert not [a for a in argv(compat, "a1") if a.startswith(("--liveness", "--lease-"))]
    for node in ("a1", "a2"):
        args = argv(native, node)
        assert "--liveness=native" in args
        assert "--lease-namespace=kube-system" in args
    with pytest.raises(SpecError, match="liveness"):
        parse(_liveness_lab(liveness="lease"))


def _stack_lab(stack: str) -> dict[str, object]:
    return {
        "name": "t",
        "clusters": [
            {
                "name": "c1",
                "stack": stack,
                "locations": [{"name": "aws", "nodes": [{"name": "a1", "public": True}, "a2"]}],
            }
        ],
        "peers": [{"name": "laptop", "ipv6": True}],
    }


def test_a_clusters_stack_decides_its_families(tmp_path: pathlib.Path) -> None:
    from kilo_lab.objects import node_object

    def flags(spec: LabSpec, node: str) -> list[str]:
        d = Daemons(lambda: spec, Paths(tmp_path), Store(tmp_path), lambda h: f"kpy-t-{h}")
        return [a for a in d.agent_argv(node) if a.startswith(("--subnet", "--internal", "--serv"))]

    v4 = parse(_stack_lab("ipv4"))
    assert [str(c) for c in v4.node("a1").pod_cidrs] == ["10.2.0.0/24"]
    assert node_object(v4.node("a1"))["spec"]["podCIDRs"] == ["10.2.0.0/24"]
    assert flags(v4, "a1") == [
        "--subnet=10.4.0.0/16",
        "--internal-cidr=10.10.1.0/24",
        "--service-cidr=10.3.0.0/16",
    ]

    dual = parse(_stack_lab("dual"))
    a1 = dual.node("a1")
    assert [str(ip) for ip in a1.internal_ips] == ["10.10.1.1", "fd00:10:1::1"]
    assert [str(ip) for ip in a1.public_ips] == ["198.51.100.1", "2001:db8:100::1"]
    assert dual.node("a2").public_ips == ()
    node = node_object(a1)
    assert node["spec"] == {"podCIDR": "10.2.0.0/24", "podCIDRs": ["10.2.0.0/24", "fd00:2::/64"]}
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert internal == ["10.10.1.1", "fd00:10:1::1"]
    assert flags(dual, "a2") == [
        "--subnet=10.4.0.0/16",
        "--internal-cidr=10.10.1.0/24",
        "--internal-cidr=fd00:10:1::/64",
        "--service-cidr=10.3.0.0/16",
        "--service-cidr=fd00:3::/112",
    ]
    conf = pods.node_conflist("10.2.0.0/24", "fd00:2::/64")
    ranges = [p["ipam"]["ranges"] for p in conf["plugins"] if "ipam" in p]
    assert ranges == [[[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00:2::/64"}]]]
    assert pod_cidr_of(conf) == "10.2.0.0/24"

    v6 = parse(_stack_lab("ipv6"))
    a1 = v6.node("a1")
    assert [str(ip) for ip in a1.internal_ips] == ["fd00:10:1::1"]
    assert [str(ip) for ip in a1.public_ips] == ["2001:db8:100::1"] and a1.public
    assert [str(c) for c in a1.pod_cidrs] == ["fd00:2::/64"]
    assert node_object(a1)["spec"]["podCIDR"] == "fd00:2::/64"
    assert flags(v6, "a1") == [
        "--subnet=fd00:4::/64",
        "--internal-cidr=fd00:10:1::/64",
        "--service-cidr=fd00:3::/112",
    ]
    assert str(v6.peers[0].public_ip6) == "2001:db8:113::1"


def test_stacks_refused() -> None:
    with pytest.raises(SpecError, match="stack 'ipv5'"):
        parse(_stack_lab("ipv5"))
    bad = _stack_lab("dual")
    bad["clusters"][0]["podCIDR6"] = "fd00:10:1::/56"  # type: ignore[index]
    with pytest.raises(SpecError, match="overlaps"):
        parse(bad)
    flannel = _stack_lab("ipv6")
    flannel["clusters"][0]["flannel"] = True  # type: ignore[index]
    with pytest.raises(SpecError, match="flannel"):
        parse(flannel)
    v4 = _stack_lab("ipv4")
    v4["clusters"][0]["locations"][0]["nodes"][1] = {"name": "a2", "ip6": "fd00::1"}  # type: ignore[index]
    with pytest.raises(SpecError, match="ip6"):
        parse(v4)
