"""Flannel for real (issue 14): flanneld's VXLAN inside a location, kg's WireGuard across.

One cluster with ``flannel: true`` (``kilo_lab.flannel``): the pinned flanneld with its
Kubernetes subnet manager on every node (VXLAN, flannel's default backend), and kg with the
flags of ``manifests/kilo-kubeadm-flannel.yaml`` (``--compatibility=flannel --cni=false
--local=false``). Location aws has a1 (public, the leader) and a2; location gcp has g1.

What is checked:

- flanneld took each Node's podCIDR (its subnet.env), published its VXLAN annotations and made
  ``flannel.1``; the lab's kg flags are the manifest's;
- a pod reaches a pod of the same location, both ways, and the node's route to it is
  ``flannel.1``, never ``kilo0``;
- the leader's pod and the other location's reach each other, both ways;
- the follower's pod and the other location's reach each other, both ways, and the leaders'
  routes to the other location go through ``kilo0`` (and its WireGuard counters grow), the
  follower's through ``flannel.1`` to its leader: kg's routes take the place of those flanneld
  made through ``flannel.1`` to the other location's pod CIDRs (``Netlink(yielding=...)``);
- nothing of the lab is left behind.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator

import pytest
import yaml
from kilo_lab import flannel
from kilo_lab.lab import Lab
from kilo_lab.testing import MANIFESTS, need_lab

from tests.integration.test_agent_support import (
    Tracker,
    agent_lab,
    check_nothing_left,
    lab_name,
    pod,
    reach,
    wg_bytes,
)

pytestmark = pytest.mark.integration

NAME = lab_name("flan")


def spec() -> dict[str, object]:
    return {
        "name": NAME,
        "clusters": [
            {
                "name": "c1",
                "granularity": "location",
                "flannel": True,
                "locations": [
                    {"name": "aws", "nodes": [{"name": "a1", "public": True}, "a2"]},
                    {"name": "gcp", "nodes": [{"name": "g1", "public": True}]},
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    need_lab("wireguard-go", "flanneld")
    with agent_lab(spec()) as (lab, tracker):
        yield lab, tracker


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    return lab_tracker[0]


def route_dev(lab: Lab, node: str, ip: str) -> str:
    """The device ``node``'s kernel sends a packet for ``ip`` through (``ip route get``)."""
    out = lab.exec(node, ["ip", "-o", "route", "get", ip], check=True).stdout
    m = re.search(r"\bdev (\S+)", out)
    assert m is not None, out
    return m.group(1)


def kg_container_args(path: pathlib.Path) -> list[str]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "kilo":
                    return [str(a) for a in c["args"]]
    raise AssertionError(f"no kilo DaemonSet in {path}")


def test_the_lab_runs_kg_with_the_manifests_flags() -> None:
    paths = sorted(MANIFESTS.glob("kilo-*-flannel*.yaml"))
    assert len(paths) >= 3, paths
    for path in paths:
        args = kg_container_args(path)
        for a in flannel.MANIFEST_ARGS:
            assert a in args, (path.name, a, args)


def test_flanneld_took_each_nodes_pod_cidr(lab: Lab) -> None:
    for n in lab.spec.nodes:
        env = flannel.read_subnet_env(flannel.subnet_file(lab.node_dir(n.name)))
        assert flannel.subnet_of(env) == n.pod_cidr, (n.name, env)
        out = lab.kubectl("c1", "get", "node", n.name, "-o", "jsonpath={.metadata.annotations}")
        notes = json.loads(out.stdout)
        assert notes["flannel.alpha.coreos.com/backend-type"] == flannel.BACKEND
        assert notes["flannel.alpha.coreos.com/public-ip"] == str(n.lan_ip)
        link = lab.exec(n.name, ["ip", "-d", "link", "show", flannel.DEVICE], check=True)
        assert "vxlan id 1" in link.stdout, link.stdout
        assert "--compatibility=flannel" in lab.daemons.agent_argv(n.name)


def test_inside_a_location_over_flannel(lab: Lab) -> None:
    for src, dst in (("a1", "a2"), ("a2", "a1")):
        reach(lab, f"{src}-p0", pod(lab, dst))
        assert route_dev(lab, src, pod(lab, dst)) == flannel.DEVICE


def test_across_locations_the_leaders_pods_reach_pods(lab: Lab) -> None:
    # through kg's route over kilo0 (or, while flanneld's is back, VXLAN to g1's private IP,
    # which kg routes over kilo0 too)
    reach(lab, "a1-p0", pod(lab, "g1"))
    reach(lab, "g1-p0", pod(lab, "a1"))


def test_across_locations_over_wireguard(lab: Lab) -> None:
    before = {n: wg_bytes(lab, n) for n in ("a1", "g1")}
    for a in ("a1", "a2"):  # a2's pod: through flannel.1 to a1, then kilo0
        reach(lab, f"{a}-p0", pod(lab, "g1"))
        reach(lab, "g1-p0", pod(lab, a))
        assert route_dev(lab, "g1", pod(lab, a)) == "kilo0"
    assert route_dev(lab, "a1", pod(lab, "g1")) == "kilo0"
    # the follower sends to its leader over flannel; the leader tunnels it
    assert route_dev(lab, "a2", pod(lab, "g1")) == flannel.DEVICE
    after = {n: wg_bytes(lab, n) for n in ("a1", "g1")}
    assert all(after[n] > before[n] for n in after), (before, after)


def test_nothing_left_behind(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
