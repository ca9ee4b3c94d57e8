"""The agent's RBAC (manifests/kilo-kubeadm.yaml), exercised with its ServiceAccount's token."""

from __future__ import annotations

import pathlib
import subprocess

import pytest
from kilo_lab.controlplane import ControlPlane

from kilo.backend.kubernetes import BackendError, KubernetesBackend

pytestmark = pytest.mark.integration

MANIFESTS = pathlib.Path(__file__).resolve().parents[2] / "manifests"

PEER = """apiVersion: kilo.squat.ai/v1alpha1
kind: Peer
metadata: {name: rbac-peer}
spec:
  allowedIPs: [10.5.0.9/32]
  publicKey: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
"""
NODE = "apiVersion: v1\nkind: Node\nmetadata: {name: rbac-node, labels: {app: test}}\n"


@pytest.fixture(scope="module")
def agent(control_plane: ControlPlane) -> pathlib.Path:
    """A kubeconfig with a token of ServiceAccount kube-system/kilo, as the DaemonSet gets."""
    control_plane.kubectl("apply", "-f", str(MANIFESTS / "kilo-kubeadm.yaml"))
    control_plane.kubectl("apply", "-f", "-", input=NODE)
    control_plane.kubectl("apply", "-f", "-", input=PEER)
    control_plane.kubectl(
        "create", "secret", "generic", "rbac-secret", "-n", "kube-system", "--from-literal=k=v"
    )
    return control_plane.token_kubeconfig("kube-system", "kilo")


def as_agent(
    cp: ControlPlane, kubeconfig: pathlib.Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(*args, input=stdin, check=False, kubeconfig=kubeconfig)


def can_i(cp: ControlPlane, kubeconfig: pathlib.Path, verb: str, resource: str) -> bool:
    result = as_agent(cp, kubeconfig, "auth", "can-i", verb, resource, "-n", "kube-system")
    return result.stdout.strip() == "yes"


def test_identity_is_the_service_account(control_plane: ControlPlane, agent: pathlib.Path) -> None:
    who = as_agent(
        control_plane, agent, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"
    )
    assert who.stdout == "system:serviceaccount:kube-system:kilo"


@pytest.mark.parametrize("verb", ["get", "list", "watch", "patch"])
def test_may_read_and_patch_nodes(
    control_plane: ControlPlane, agent: pathlib.Path, verb: str
) -> None:
    assert can_i(control_plane, agent, verb, "nodes")


@pytest.mark.parametrize("verb", ["get", "list", "watch"])
def test_may_read_peers(control_plane: ControlPlane, agent: pathlib.Path, verb: str) -> None:
    assert can_i(control_plane, agent, verb, "peers.kilo.squat.ai")


@pytest.mark.parametrize(
    "verb,resource",
    [
        ("create", "nodes"),
        ("delete", "nodes"),
        ("update", "nodes"),
        ("create", "peers.kilo.squat.ai"),
        ("update", "peers.kilo.squat.ai"),
        ("patch", "peers.kilo.squat.ai"),
        ("delete", "peers.kilo.squat.ai"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("get", "configmaps"),
        ("create", "pods"),
        ("get", "customresourcedefinitions.apiextensions.k8s.io"),
    ],
)
def test_may_not(
    control_plane: ControlPlane, agent: pathlib.Path, verb: str, resource: str
) -> None:
    assert not can_i(control_plane, agent, verb, resource)


def test_backend_works_as_the_agent(control_plane: ControlPlane, agent: pathlib.Path) -> None:
    backend = KubernetesBackend(agent)
    with backend:
        assert "rbac-node" in {n["metadata"]["name"] for n in backend.nodes()}
        assert "rbac-peer" in {p["metadata"]["name"] for p in backend.peers()}
        backend.set_node_annotations("rbac-node", {"kilo.squat.ai/last-seen": "1"})
        backend.clean_up("rbac-node")


def test_secrets_are_forbidden(control_plane: ControlPlane, agent: pathlib.Path) -> None:
    result = as_agent(control_plane, agent, "get", "secret", "rbac-secret", "-n", "kube-system")
    assert result.returncode != 0 and "forbidden" in result.stderr.lower()


def test_peers_cannot_be_written(control_plane: ControlPlane, agent: pathlib.Path) -> None:
    create = as_agent(
        control_plane, agent, "create", "-f", "-", stdin=PEER.replace("rbac-peer", "rbac-peer-2")
    )
    assert create.returncode != 0 and "forbidden" in create.stderr.lower()
    patch = as_agent(
        control_plane,
        agent,
        "patch",
        "peer",
        "rbac-peer",
        "--type=merge",
        "-p",
        '{"spec":{"persistentKeepalive":5}}',
    )
    assert patch.returncode != 0 and "forbidden" in patch.stderr.lower()
    delete = as_agent(control_plane, agent, "delete", "peer", "rbac-peer")
    assert delete.returncode != 0 and "forbidden" in delete.stderr.lower()
    assert control_plane.kubectl("get", "peer", "rbac-peer").returncode == 0


def test_backend_reports_forbidden_clearly(
    control_plane: ControlPlane, agent: pathlib.Path
) -> None:
    backend = KubernetesBackend(agent)
    with pytest.raises(BackendError) as err:
        backend.http.json("GET", "/api/v1/namespaces/kube-system/secrets")
    assert err.value.status == 403


@pytest.mark.parametrize("verb", ["get", "list", "watch", "create", "update"])
def test_may_keep_leader_leases_in_its_namespace(
    control_plane: ControlPlane, agent: pathlib.Path, verb: str
) -> None:
    assert can_i(control_plane, agent, verb, "leases.coordination.k8s.io")
    elsewhere = as_agent(
        control_plane, agent, "auth", "can-i", verb, "leases.coordination.k8s.io", "-n", "default"
    )
    assert elsewhere.stdout.strip() == "no"
    assert not can_i(control_plane, agent, "delete", "leases.coordination.k8s.io")


def test_leader_lease_is_written_once_per_version(
    control_plane: ControlPlane, agent: pathlib.Path
) -> None:
    """Native liveness through the real API server, as the agent: create, a conditional update,
    a stale one refused (two agents can never both win), and the watch sees the winner."""
    import time

    from kilo.leases import lease_from_object, lease_object

    backend = KubernetesBackend(agent, lease_namespace="kube-system")
    with backend:
        created = backend.write_lease(lease_object("location:rbac", "rbac-a", 1.0e9, "kube-system"))
        first, _ = lease_from_object(created)
        assert first is not None and first.holder == "rbac-a"
        with pytest.raises(BackendError) as err:  # a second create: already there
            backend.write_lease(lease_object("location:rbac", "rbac-b", 1.0e9, "kube-system"))
        assert err.value.status == 409
        moved = backend.write_lease(
            lease_object("location:rbac", "rbac-b", 1.0e9 + 1, "kube-system", first)
        )
        second, _ = lease_from_object(moved)
        assert second is not None and second.holder == "rbac-b" and second.transitions == 1
        with pytest.raises(BackendError) as err:  # written on the version before: refused
            backend.write_lease(
                lease_object("location:rbac", "rbac-c", 1.0e9 + 2, "kube-system", first)
            )
        assert err.value.status == 409
        deadline = time.monotonic() + 10
        holders: set[str] = set()
        while time.monotonic() < deadline and "rbac-b" not in holders:
            holders = {str(o.get("spec", {}).get("holderIdentity")) for o in backend.leases()}
            time.sleep(0.05)
        assert holders == {"rbac-b"}
