"""The mesh in the lab: kg on every node of two locations x two nodes, against the real API
server, with real wireguard-go; pods made by the CNI plugins from the conflist kg wrote.

Every pod pings every other pod (across locations only through the leaders' tunnels), the
leader's live WireGuard config matches ``kgctl showconf node``, and an agent restarts cleanly.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kilo.cni import pod_cidr_of
from kilo.wireguard import parse

from kilo_lab import netns, pods, procs
from kilo_lab.lab import Lab
from kilo_lab.layout import kg_socket_dir, state_dir
from kilo_lab.observe import allowed_ips, unreachable_pairs, wg_peers
from kilo_lab.poll import wait_until
from kilo_lab.testing import need_lab

pytestmark = pytest.mark.integration

NAME = f"mesh{uuid.uuid4().hex[:6]}"
SPEC: dict[str, Any] = {
    "name": NAME,
    "kubeProxy": True,
    "clusters": [
        {
            "name": "c1",
            "granularity": "location",
            "locations": [
                {"name": "aws", "nodes": [{"name": "a1", "public": True}, {"name": "a2"}]},
                {"name": "gcp", "nodes": [{"name": "g1", "public": True}, {"name": "g2"}]},
            ],
        }
    ],
}
LEADERS = {"aws": "a1", "gcp": "g1"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_lab("wireguard-go", "kube-proxy")
    lab = Lab(SPEC, agent=True)
    lab.up()
    try:
        yield lab
    finally:
        pids = [p for n in lab.state.get("namespaces", []) for p in procs.pids(n)]
        wg_dirs = [kg_socket_dir(n) for n in lab.state.get("namespaces", [])]
        lab.down()
        assert netns.names(f"kpy-{NAME}-") == []
        assert [p for p in pids if procs.alive(p)] == []
        assert not state_dir(NAME).exists()
        assert not [d for d in wg_dirs if d is not None and os.path.exists(d)]


def all_pairs_ping(lab: Lab, timeout: float = 30.0) -> list[tuple[str, str]]:
    """Pairs of pods that still cannot reach each other after ``timeout``."""
    return unreachable_pairs(lab, itertools.permutations(sorted(lab.pods), 2), timeout)


def test_pods_use_the_conflist_kg_wrote(lab: Lab) -> None:
    for n in lab.spec.nodes:
        conf = pods.read_conflist(lab.conflist_path(n.name))
        assert conf is not None and pod_cidr_of(conf) == str(n.pod_cidr)
        assert "set pod CIDR" in lab.agent_log(n.name).read_text()
    for pod in lab.pods.values():
        assert pod.address.startswith(str(lab.spec.node(pod.node).pod_cidr).rsplit(".", 2)[0])


def test_every_pod_reaches_every_pod(lab: Lab) -> None:
    assert all_pairs_ping(lab) == []


def test_leaders_hold_the_tunnels(lab: Lab) -> None:
    for loc, leader in LEADERS.items():
        live = parse(lab.wg(leader, "showconf", "kilo0").stdout)
        want = parse(lab.kgctl("c1", "showconf", "node", leader).stdout)
        assert wg_peers(live) == wg_peers(want), f"{leader}: wg showconf != kgctl showconf node"
        assert len(live.peers) == 1  # the other location's leader
        other = next(v for k, v in LEADERS.items() if k != loc)
        assert str(live.peers[0].endpoint) == f"{lab.spec.node(other).public_ip}:51820"
    for follower in ("a2", "g2"):
        live = parse(lab.wg(follower, "showconf", "kilo0").stdout)
        assert live.peers == [], f"{follower} is not a leader but has WireGuard peers"


def test_cross_location_traffic_goes_through_the_tunnel(lab: Lab) -> None:
    def rx(node: str) -> int:
        out = lab.wg(node, "show", "kilo0", "transfer").stdout.split()
        return sum(int(x) for x in out[1::3]) if out else 0

    before = rx("g1")
    assert lab.ping("a2-p0", lab.pods["g2-p0"].address)
    assert rx("g1") > before
    # and not around it: without the leaders' tunnel there is no path
    lab.exec("a1", ["ip", "link", "set", "kilo0", "down"], check=True)
    try:
        assert not lab.ping("a2-p0", lab.pods["g2-p0"].address, wait=0.5)
    finally:
        lab.exec("a1", ["ip", "link", "set", "kilo0", "up"], check=True)
        # routes through kilo0 went with the link; the agent's next resync puts them back
        lab.restart_agent("a1")
    assert all_pairs_ping(lab, timeout=60) == []


def test_agent_restart_keeps_the_mesh(lab: Lab) -> None:
    t0 = time.monotonic()
    lab.restart_agent("g1")
    assert lab.agent_running("g1")
    assert all_pairs_ping(lab, timeout=30) == []
    assert time.monotonic() - t0 < 60


def test_cluster_ip_service_across_locations(lab: Lab) -> None:
    """kube-proxy on every node: a ClusterIP whose backend is a pod in the other location."""
    backend = lab.pods["g2-p0"]
    server = lab.start_server(backend.name, "0.0.0.0", 8080, "hello")
    try:
        cluster_ip = lab.service("c1", "web", 80, [(backend.address, 8080)])
        for client in ("a2-p0", "a1-p0", "a2"):
            wait_until(
                f"{client}: curl http://{cluster_ip}/",
                lambda client=client: lab.http_code(client, f"http://{cluster_ip}/") == "200",
                30,
                0.5,
            )
    finally:
        procs.stop([server])


def test_a_node_joins_and_leaves(lab: Lab) -> None:
    node = lab.add_node("c1", "gcp", "g3")
    assert str(node.pod_cidr) == "10.2.4.0/24" and node.lan_ip.exploded == "10.10.2.3"
    assert lab.pods["g3-p0"].address == "10.2.4.2"
    assert all_pairs_ping(lab, timeout=60) == []
    live = parse(lab.wg("a1", "showconf", "kilo0").stdout)
    assert "10.2.4.0/24" in {str(a.network) for p in live.peers for a in p.allowed_ips}
    lab.remove_node("g3")
    assert not netns.exists(lab.ns("g3")) and "g3-p0" not in lab.pods
    wait_until(
        "the removed node's pod CIDR gone from a1's WireGuard config",
        lambda: "10.2.4.0/24" not in allowed_ips(parse(lab.wg("a1", "showconf", "kilo0").stdout)),
        30,
        0.5,
    )
    assert all_pairs_ping(lab, timeout=30) == []
