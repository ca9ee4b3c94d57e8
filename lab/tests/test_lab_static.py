"""The lab without the agent: namespaces, bridges, a real control plane per cluster, Node objects
as a kubelet registers them, pods made by the real CNI plugins; and a teardown (normal, after a
failure, after a crash, through the CLI) that leaves nothing behind."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kilo_lab import netns, procs
from kilo_lab.lab import Lab, LabError
from kilo_lab.layout import state_dir
from kilo_lab.state import load as load_state
from kilo_lab.testing import REPO, need_lab, root_snapshot

pytestmark = pytest.mark.integration

# unique names: two test runs on one machine do not collide
NAME = f"st{uuid.uuid4().hex[:6]}"
TINY_NAME = f"tt{uuid.uuid4().hex[:6]}"
SPEC: dict[str, Any] = {
    "name": NAME,
    "clusters": [
        {
            "name": "c1",
            "locations": [
                {
                    "name": "aws",
                    "nodes": [{"name": "a1", "public": True}, {"name": "a2", "pods": 2}],
                },
                {
                    "name": "gcp",
                    "cidr": "10.10.7.0/24",
                    "nodes": [{"name": "g1", "public": True}, {"name": "g2"}],
                },
            ],
        }
    ],
    "peers": ["laptop"],
}


def _requirements() -> None:
    need_lab()


def lab_namespaces(name: str) -> list[str]:
    return [n for n in netns.names(f"kpy-{name}-")]


def assert_gone(name: str, pids: list[int]) -> None:
    assert lab_namespaces(name) == []
    assert not state_dir(name).exists()
    alive = [p for p in pids if procs.alive(p)]
    assert alive == [], f"processes left: {alive}"


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, dict[str, str]]]:
    _requirements()
    before = root_snapshot()
    lab = Lab(SPEC, agent=False)
    lab.up()
    try:
        yield lab, before
    finally:
        pids = [p for n in lab.state.get("namespaces", []) for p in procs.pids(n)]
        lab.down()
        assert_gone(NAME, pids)
        assert root_snapshot() == before


def test_namespaces_and_bridges(lab: tuple[Lab, dict[str, str]]) -> None:
    lb, _ = lab
    names = set(lab_namespaces(NAME))
    want = {
        "sw",
        "admin",
        "c1-cp",
        "a1",
        "a2",
        "g1",
        "g2",
        "laptop",
        "a1-p0",
        "a2-p0",
        "a2-p1",
        "g1-p0",
        "g2-p0",
    }
    assert names == {f"kpy-{NAME}-{h}" for h in want}
    sw = netns.links(lb.ns("sw"))
    assert {"kpy-inet", "kpy-m0", "kpy-l0-0", "kpy-l0-1"} <= set(sw)
    assert all(len(name) <= 15 for name in sw)
    assert netns.addresses(lb.ns("sw")) == ["127.0.0.1/8"]
    assert netns.addresses(lb.ns("a1"), "kpy-lan") == ["10.10.1.1/24"]
    assert netns.addresses(lb.ns("a1"), "kpy-inet") == ["198.51.100.1/24"]
    assert netns.addresses(lb.ns("g2"), "kpy-lan") == ["10.10.7.2/24"]
    assert "kpy-inet" not in netns.links(lb.ns("g2"))
    assert netns.addresses(lb.ns("laptop"), "kpy-inet") == ["203.0.113.1/24"]


def test_root_namespace_untouched(lab: tuple[Lab, dict[str, str]]) -> None:
    _, before = lab
    assert root_snapshot() == before


def test_networks(lab: tuple[Lab, dict[str, str]]) -> None:
    lb, _ = lab
    assert lb.ping("a1", "10.10.1.2")  # same LAN
    assert not lb.ping("a1", "10.10.7.1", wait=0.3)  # another location's LAN: no route
    assert lb.ping("a1", "198.51.100.2")  # leader to leader over the internet
    assert lb.ping("laptop", "198.51.100.1")  # peer to a public node (other subnet, on-link)
    assert not lb.ping("laptop", "10.10.1.1", wait=0.3)


def test_api_server_from_a_node(lab: tuple[Lab, dict[str, str]]) -> None:
    lb, _ = lab
    kubectl = (
        subprocess.run(
            ["bash", str(REPO / "hack" / "binaries.sh"), "kubectl"], capture_output=True, text=True
        )
        .stdout.strip()
        .split("=", 1)[1]
    )
    out = lb.exec(
        "g2",
        [kubectl, f"--kubeconfig={lb.kubeconfig('c1')}", "get", "--raw", "/readyz"],
        check=True,
    )
    assert out.stdout.strip() == "ok"
    assert lb.exec("g2", ["curl", "-sk", "https://172.31.254.1:6443/livez"]).stdout == "ok"


def test_node_objects(lab: tuple[Lab, dict[str, str]]) -> None:
    lb, _ = lab
    nodes = {
        n["metadata"]["name"]: n
        for n in json.loads(lb.kubectl("c1", "get", "nodes", "-o", "json").stdout)["items"]
    }
    assert sorted(nodes) == ["a1", "a2", "g1", "g2"]
    g2 = nodes["g2"]
    assert g2["metadata"]["labels"]["topology.kubernetes.io/region"] == "gcp"
    assert g2["spec"]["podCIDR"] == "10.2.3.0/24" and g2["spec"]["podCIDRs"] == ["10.2.3.0/24"]
    assert {"type": "InternalIP", "address": "10.10.7.2"} in g2["status"]["addresses"]
    crd = lb.kubectl("c1", "get", "crd", "peers.kilo.squat.ai", "-o", "name").stdout
    assert crd.strip() == "customresourcedefinition.apiextensions.k8s.io/peers.kilo.squat.ai"


def test_pods(lab: tuple[Lab, dict[str, str]]) -> None:
    lb, _ = lab
    import ipaddress

    assert sorted(lb.pods) == ["a1-p0", "a2-p0", "a2-p1", "g1-p0", "g2-p0"]
    for pod in lb.pods.values():
        cidr = ipaddress.ip_network(lb.spec.node(pod.node).pod_cidr)
        assert ipaddress.ip_address(pod.address) in cidr
        gateway = str(next(cidr.hosts()))
        assert lb.ping(pod.name, gateway), f"{pod.name} cannot ping its node {pod.node}"
    assert lb.ping("a2-p0", lb.pods["a2-p1"].address)  # two pods on one bridge
    assert netns.addresses(lb.ns("a2"), "kube-bridge") == ["10.2.1.1/24"]
    # host-local leases are per node, not in the machine's /var/lib/cni
    assert (
        lb.node_dir("a2") / "cni-data" / "networks" / "kilo" / lb.pods["a2-p1"].address
    ).exists()
    assert not pathlib.Path("/var/lib/cni/networks/kilo", lb.pods["a2-p1"].address).exists()


def test_add_and_delete_pod(lab: tuple[Lab, dict[str, str]]) -> None:
    lb, _ = lab
    pod = lb.add_pod("g2")
    assert pod.name == "g2-p1" and lb.ping(pod.name, "10.2.3.1")
    lb.delete_pod(pod.name)
    assert not netns.exists(pod.netns)
    assert not (lb.node_dir("g2") / "cni-data" / "networks" / "kilo" / pod.address).exists()


def test_cli_status_exec_kubeconfig(lab: tuple[Lab, dict[str, str]]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kilo_lab.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    st = json.loads(cli("status", NAME, "--json").stdout)
    assert st["phase"] == "ready" and st["pods"]["a1-p0"]["ip"] == "10.2.0.2/24"
    assert cli("kubeconfig", "c1", "--lab", NAME).stdout.strip() == str(
        state_dir(NAME) / "clusters" / "c1" / "kubeconfig"
    )
    out = cli("exec", "--lab", NAME, "a2-p1", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert "10.2.1.3/24" in out.stdout, out.stderr


# --- teardown in the bad cases -------------------------------------------------------------

TINY: dict[str, Any] = {
    "name": TINY_NAME,
    "clusters": [
        {"name": "c1", "locations": [{"name": "here", "nodes": [{"name": "t1", "public": True}]}]}
    ],
}


def test_failure_during_up_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _requirements()
    lab = Lab(TINY, agent=False)
    seen: list[int] = []

    def boom(self: Lab) -> None:
        seen.extend(p for n in self.state["namespaces"] for p in procs.pids(n))
        raise LabError("injected failure")

    monkeypatch.setattr(Lab, "_make_pods", boom)
    with pytest.raises(LabError, match="injected"):
        lab.up()
    assert seen, "the control plane should have been running"
    assert_gone(TINY_NAME, seen)


def test_down_after_a_crash() -> None:
    """The process that brought the lab up is killed: `kilo-lab down` removes the rest."""
    _requirements()
    code = (
        "import sys, time; from kilo_lab.lab import Lab;"
        f"lab = Lab({TINY!r}, agent=False); lab.up(); print('UP', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "UP"
        pids = [p for n in lab_namespaces(TINY_NAME) for p in procs.pids(n)]
        assert pids
        proc.kill()
        proc.wait()
        assert load_state(TINY_NAME) is not None and lab_namespaces(TINY_NAME)
        out = subprocess.run(
            [sys.executable, "-m", "kilo_lab.cli", "down", TINY_NAME],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert_gone(TINY_NAME, pids)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(
            [sys.executable, "-m", "kilo_lab.cli", "down", TINY_NAME],
            capture_output=True,
            timeout=120,
        )


def test_cli_up_keep_and_down(tmp_path: pathlib.Path) -> None:
    _requirements()
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(TINY))
    env = dict(os.environ)
    t0 = time.monotonic()
    up = subprocess.run(
        [sys.executable, "-m", "kilo_lab.cli", "up", "--keep", "--no-agent", str(spec)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "pod t1-p0: 10.2.0.2/24" in up.stdout
        st = load_state(TINY_NAME)
        assert st is not None and st["phase"] == "ready"
        holder = st["owner"]["pid"]
        assert procs.alive(holder)
        assert time.monotonic() - t0 < 60
    finally:
        pids = [p for n in lab_namespaces(TINY_NAME) for p in procs.pids(n)]
        down = subprocess.run(
            [sys.executable, "-m", "kilo_lab.cli", "down", TINY_NAME],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert down.returncode == 0, down.stderr
    assert_gone(TINY_NAME, [*pids, holder])


def test_spec_file_examples_parse() -> None:
    from kilo_lab.spec import load

    for path in sorted((REPO / "lab").glob("*.yaml")):
        spec = load(path)
        assert spec.nodes, path


def test_bad_spec_is_refused() -> None:
    from kilo_lab.spec import SpecError, parse

    with pytest.raises(SpecError, match=r"192\.0\.2\.0/24"):
        parse(
            {
                "name": "x",
                "internet": ["192.0.2.0/24"],
                "clusters": [{"locations": [{"name": "l", "nodes": ["n"]}]}],
            }
        )
    with pytest.raises(SpecError, match="used twice"):
        parse({"name": "x", "clusters": [{"locations": [{"name": "l", "nodes": ["n", "n"]}]}]})
    with pytest.raises(SpecError, match="overlaps"):
        parse(
            {
                "name": "x",
                "clusters": [
                    {"podCIDR": "10.10.0.0/16", "locations": [{"name": "l", "nodes": ["n"]}]}
                ],
            }
        )
