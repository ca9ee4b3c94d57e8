"""Problems told as Kubernetes Events, against a real API server, written as the agent's
ServiceAccount (manifests/kilo-kubeadm.yaml's RBAC): an Event on a Node and on a Peer, a repeat
counted on the same Event, ``kubectl describe`` showing them, and the agent telling a hostile
Node once however often it reconciles."""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kilo_lab.controlplane import ControlPlane
from kubernetes import client as k8s_client

from kilo.agent import Agent, AgentConfig, Ports
from kilo.backend.events import KubernetesEventSink
from kilo.backend.kubernetes import KubernetesBackend
from kilo.events import problem_event
from kilo.model import Problem
from kilo.plan import Settings
from tests.unit.fakes import FakeDevice, FakeFiles, FakeFirewall, FakeHost, FakeRoutes
from tests.unit.helpers import key_for, node_obj, peer_obj

pytestmark = pytest.mark.integration

MANIFESTS = pathlib.Path(__file__).resolve().parents[2] / "manifests"
ENDPOINT = "metadata.annotations[kilo.squat.ai/endpoint]"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


RBAC = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
MADE: list[tuple[str, str]] = []  # (kind, name) of the Nodes and Peers these tests applied


@pytest.fixture(scope="module")
def agent_kubeconfig(control_plane: ControlPlane) -> Iterator[pathlib.Path]:
    """A token of ServiceAccount kube-system/kilo, with the RBAC the manifests give it (only
    the RBAC: the shared cluster gets no DaemonSet); the Nodes and Peers made here go after."""
    docs = yaml.safe_load_all((MANIFESTS / "kilo-kubeadm.yaml").read_text())
    rbac = [d for d in docs if isinstance(d, dict) and d.get("kind") in RBAC]
    control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": rbac})
    )
    yield control_plane.token_kubeconfig("kube-system", "kilo")
    while MADE:
        kind, name = MADE.pop()
        control_plane.kubectl("delete", kind.lower(), name, "--ignore-not-found", "--wait=false")


def apply(cp: ControlPlane, obj: dict[str, Any]) -> None:
    MADE.append((str(obj["kind"]), str(obj["metadata"]["name"])))
    cp.kubectl("apply", "-f", "-", input=json.dumps(obj))


def event_json(cp: ControlPlane, name: str) -> dict[str, Any]:
    out = cp.kubectl("get", "event", "-n", "default", name, "-o", "json")
    return dict(json.loads(out.stdout))


def events_about(cp: ControlPlane, kind: str, name: str) -> list[dict[str, Any]]:
    out = cp.kubectl(
        "get", "events", "-n", "default", "-o", "json",
        f"--field-selector=involvedObject.kind={kind},involvedObject.name={name}",
    )  # fmt: skip
    return list(json.loads(out.stdout)["items"])


def test_an_event_on_a_node_and_a_repeat_counted(
    control_plane: ControlPlane, agent_kubeconfig: pathlib.Path
) -> None:
    node = unique("ev-node")
    apply(control_plane, node_obj(node, endpoint="nowhere"))
    ev = problem_event(Problem("Node", node, ENDPOINT, "nowhere", "not an endpoint"), "ev-a1")
    assert ev is not None
    sink = KubernetesEventSink(agent_kubeconfig)
    assert sink.write(ev) == "created"
    got = event_json(control_plane, ev.name)
    assert got["involvedObject"]["kind"] == "Node" and got["involvedObject"]["name"] == node
    assert (got["type"], got["reason"], got["count"]) == ("Warning", "InvalidValue", 1)
    assert got["message"] == f"{ENDPOINT}='nowhere': not an endpoint"
    assert got["source"] == {"component": "kilo", "host": "ev-a1"}
    assert sink.write(ev) == "updated"
    again = event_json(control_plane, ev.name)
    assert again["count"] == 2 and again["firstTimestamp"] == got["firstTimestamp"]
    assert [e["metadata"]["name"] for e in events_about(control_plane, "Node", node)] == [ev.name]
    described = control_plane.kubectl("describe", "node", node).stdout
    assert "InvalidValue" in described and "kilo.squat.ai/endpoint" in described, described


def test_an_event_on_a_peer_through_the_queue(
    control_plane: ControlPlane, agent_kubeconfig: pathlib.Path
) -> None:
    peer = unique("ev-peer")
    apply(control_plane, peer_obj(peer, ["0.0.0.0/0"]))
    uid = control_plane.kubectl("get", "peer", peer, "-o", "jsonpath={.metadata.uid}").stdout
    p = Problem("Peer", peer, "spec.allowedIPs", "0.0.0.0/0", "is a default route; refused")
    ev = problem_event(p, "ev-a1")
    assert ev is not None
    errors: list[int] = []
    sink = KubernetesEventSink(agent_kubeconfig, on_error=lambda: errors.append(1))
    try:
        sink.emit([ev])
        assert sink.flush(30)
        sink.emit([ev])
        assert sink.flush(30)
    finally:
        sink.close()
    assert (sink.created, sink.updated, sink.failed, errors) == (1, 1, 0, [])
    (got,) = events_about(control_plane, "Peer", peer)
    assert got["involvedObject"]["uid"] == uid
    assert got["involvedObject"]["apiVersion"] == "kilo.squat.ai/v1alpha1"
    assert (got["reason"], got["count"]) == ("ClaimRefused", 2)
    assert got["message"].startswith("spec.allowedIPs='0.0.0.0/0'")
    described = control_plane.kubectl("describe", "peer", peer).stdout
    assert "ClaimRefused" in described, described


def test_an_unreachable_server_is_counted_not_raised() -> None:
    errors: list[int] = []
    cfg = k8s_client.Configuration()
    cfg.host = "https://127.0.0.1:9"  # nothing listens
    sink = KubernetesEventSink(
        api=k8s_client.ApiClient(cfg), on_error=lambda: errors.append(1), patience=0.1
    )
    ev = problem_event(Problem("Node", "n", "f", "v", "w"), "a")
    assert ev is not None
    sink.emit([ev])
    assert sink.flush(30)
    sink.close()
    assert sink.failed == 1 and errors == [1]


def test_the_agent_tells_a_hostile_node_once(
    control_plane: ControlPlane, agent_kubeconfig: pathlib.Path
) -> None:
    """The agent's reconcile with the real backend and Event writer (the data plane faked):
    one Event for the hostile Node, and further reconciles make no request for it."""
    me, hostile = unique("ev-me"), unique("ev-hostile")
    apply(control_plane, node_obj(me, internal_ip="10.1.0.1/24", pod_cidr="10.2.1.0/24"))
    apply(control_plane, node_obj(hostile, key="not-a-key\u202e", pod_cidr="10.2.9.0/24"))
    sink = KubernetesEventSink(agent_kubeconfig)
    with KubernetesBackend(agent_kubeconfig) as backend:
        agent = Agent(
            AgentConfig(settings=Settings(hostname=me)),
            Ports(backend, FakeDevice(), FakeRoutes(), FakeFirewall(), FakeHost(), FakeFiles(),
                  event_sink=sink),
        )  # fmt: skip
        agent.reconcile(verify=True)
        assert sink.flush(30)
        writes = sink.created + sink.updated
        for _ in range(3):
            agent.reconcile(verify=True)
        assert sink.flush(30)
        assert sink.created + sink.updated == writes  # nothing new to tell
    sink.close()
    (got,) = events_about(control_plane, "Node", hostile)
    assert got["count"] == 1 and got["source"]["host"] == me
    assert got["message"].startswith("metadata.annotations[kilo.squat.ai/key]=")
    assert "\\u202e" in got["message"] and got["message"].isprintable()
    assert key_for(me) not in got["message"]
