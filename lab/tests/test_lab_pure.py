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
