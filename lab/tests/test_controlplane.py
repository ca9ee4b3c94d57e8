"""The throw-away control plane itself: clean-up, identities, network namespaces."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kilo_lab.binaries import locate
from kilo_lab.controlplane import ControlPlane, ControlPlaneError

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def comm(pid: int) -> str:
    return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()


def our_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("kpy-cp-")}


def test_everything_goes_on_exit(require: Any) -> None:
    require.binaries("etcd", "kube-apiserver", "kubectl")
    with ControlPlane() as cp:
        pids = cp.pids
        directory = cp.dir
        assert set(pids) == {"etcd", "kube-apiserver"}
        assert {comm(pid) for pid in pids.values()} == {"kpy-etcd", "kpy-apiserver"}
        assert directory is not None and directory.name.startswith("kpy-cp-")
        assert cp.kubectl("get", "namespace", "kube-system").returncode == 0
    assert not any(alive(pid) for pid in pids.values())
    assert not directory.exists()


def test_everything_goes_when_the_body_fails(require: Any) -> None:
    require.binaries("etcd", "kube-apiserver")
    with pytest.raises(RuntimeError, match="boom"):
        with ControlPlane() as cp:
            pids, directory = cp.pids, cp.dir
            raise RuntimeError("boom")
    assert not any(alive(pid) for pid in pids.values())
    assert directory is not None and not directory.exists()


def test_everything_goes_when_startup_fails(require: Any) -> None:
    require.binaries("etcd", "kube-apiserver")
    before = our_dirs()
    cp = ControlPlane(apiserver_args=["--no-such-flag"])
    with pytest.raises(ControlPlaneError, match="kube-apiserver exited"):
        with cp:
            pass
    assert cp.pids == {} and cp.dir is None
    assert our_dirs() <= before


def test_identities_and_rbac(control_plane: ControlPlane) -> None:
    alice = control_plane.user_kubeconfig("alice", ["devs"])
    who = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=alice)
    assert '"username": "alice"' in who.stdout and '"devs"' in who.stdout
    denied = control_plane.kubectl("get", "nodes", kubeconfig=alice, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    admin = control_plane.kubectl("auth", "can-i", "*", "*")
    assert admin.stdout.strip() == "yes"


@pytest.fixture
def netns_pair(require: Any) -> Iterator[tuple[str, str]]:
    """Two fresh network namespaces joined by a veth pair: 10.123.0.1 and 10.123.0.2."""
    require.root()
    tag = uuid.uuid4().hex[:6]
    a, b = f"kpy-cpa-{tag}", f"kpy-cpb-{tag}"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    try:
        run("ip", "netns", "add", a)
        run("ip", "netns", "add", b)
        run(
            "ip", "-n", a, "link", "add", "kpy0", "type", "veth", "peer", "name", "kpy1", "netns", b
        )
        for ns, dev, addr in ((a, "kpy0", "10.123.0.1/24"), (b, "kpy1", "10.123.0.2/24")):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_in_a_network_namespace(netns_pair: tuple[str, str], require: Any) -> None:
    """The control plane runs inside one namespace and serves clients in another."""
    require.binaries("etcd", "kube-apiserver", "kubectl")
    a, b = netns_pair
    with ControlPlane(netns=a, bind_address="10.123.0.1") as cp:
        assert cp.server.startswith("https://10.123.0.1:")
        assert cp.kubectl("get", "namespace", "default").returncode == 0
        other = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                b,
                str(locate("kubectl")),
                f"--kubeconfig={cp.kubeconfig}",
                "get",
                "--raw",
                "/readyz",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 0 and other.stdout.strip() == "ok", other.stderr
        pids = cp.pids
    assert not any(alive(pid) for pid in pids.values())


def test_the_controller_manager_mirrors_endpoints(require: Any) -> None:
    """With ``controllers``, kube-controller-manager runs beside the API server: a selector-less
    Service's Endpoints become its EndpointSlice; it goes on exit with the rest."""
    require.binaries("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
         "subsets": [{"addresses": [{"ip": "10.2.1.2"}], "ports": [{"name": "http", "port": 80}]}]},
    ]  # fmt: skip
    with ControlPlane(controllers=("endpointslicemirroring",)) as cp:
        pids = cp.pids
        assert "kube-controller-manager" in pids
        cp.kubectl("apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                         "items": docs}))  # fmt: skip
        deadline = time.monotonic() + 30
        slices: list[Any] = []
        while not slices and time.monotonic() < deadline:
            out = cp.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web",
                             "-o", "json").stdout  # fmt: skip
            slices = json.loads(out)["items"]
            time.sleep(0.2)
        assert slices and slices[0]["endpoints"][0]["addresses"] == ["10.2.1.2"]
    assert not any(alive(pid) for pid in pids.values())
