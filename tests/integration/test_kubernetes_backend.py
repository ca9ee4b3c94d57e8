"""The Kubernetes backend against a real API server: list, watch, recovery, annotations."""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kilo_lab.controlplane import ControlPlane

from kilo.backend import kubernetes as kubernetes_backend
from kilo.backend.kubernetes import (
    CRDMissing,
    Event,
    KubernetesBackend,
    list_leases,
    list_objects,
)
from kilo.translate import OWNED_ANNOTATIONS, node_from_object

pytestmark = pytest.mark.integration

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def node_yaml(
    name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> str:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
    return json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": {"podCIDR": "10.244.1.0/24"}}
    )


def peer_yaml(name: str, cidr: str = "10.5.0.1/32") -> str:
    return json.dumps(
        {
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": name},
            "spec": {"allowedIPs": [cidr], "publicKey": KEY},
        }
    )


_SEEN: dict[int, list[Event]] = {}  # every event taken from a queue, by queue


def wait_for(
    events: queue.Queue[Event], match: Callable[[Event], bool], timeout: float = 30
) -> Event:
    """The first event ever delivered on ``events`` that matches, waiting for it if need be
    (events arrive in order per kind, not across kinds, so nothing is thrown away)."""
    seen = _SEEN.setdefault(id(events), [])
    for event in seen:
        if match(event):
            return event
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(event)
        if match(event):
            return event
    recent = [(e.kind, e.type, e.name) for e in seen[-20:]]
    raise AssertionError(f"no matching event within {timeout} s; saw {recent}")


def is_(kind: str, etype: str, name: str) -> Callable[[Event], bool]:
    return lambda e: (e.kind, e.type, e.name) == (kind, etype, name)


@pytest.fixture
def backend(control_plane: ControlPlane) -> Iterator[KubernetesBackend]:
    with KubernetesBackend(control_plane.kubeconfig) as b:
        yield b


def test_list_objects_matches_kubectl(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", "-", input=node_yaml(unique("list")))
    control_plane.kubectl("apply", "-f", "-", input=peer_yaml(unique("list")))
    nodes, peers = list_objects(control_plane.kubeconfig)
    items = json.loads(control_plane.kubectl("get", "nodes,peers", "-o", "json").stdout)["items"]
    assert nodes + peers == items
    assert {o["kind"] for o in nodes} == {"Node"} and {o["kind"] for o in peers} == {"Peer"}


def test_lists_in_pages_as_one_snapshot(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed a page at a time (the agent's peak memory is a page), the objects and the
    resourceVersion are those of one listing."""
    for _ in range(5):
        control_plane.kubectl("apply", "-f", "-", input=node_yaml(unique("page")))
    whole, _ = list_objects(control_plane.kubeconfig)
    monkeypatch.setattr(kubernetes_backend, "LIST_PAGE", 2)
    backend = KubernetesBackend(control_plane.kubeconfig)
    try:
        paged, rv = backend.list_kind("Node")
    finally:
        backend.api.close()
    assert len(whole) > 2 * 2 and paged == whole and rv.isdigit()


def test_list_leases_reads_only_the_leader_leases(control_plane: ControlPlane) -> None:
    """What kgctl reads in a cluster in the native liveness mode: the labelled Leases."""
    from kilo.leases import lease_from_object, lease_object

    loc = unique("location:kgctl")
    ours = lease_object(loc, "n1", time.time(), "kube-system")
    other = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": unique("other"), "namespace": "kube-system"},
        "spec": {"holderIdentity": "someone"},
    }
    for obj in (ours, other):
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(obj))
    try:
        leases = [
            lease_from_object(o)[0] for o in list_leases(control_plane.kubeconfig, "kube-system")
        ]
        assert any(x is not None and x.location == loc and x.holder == "n1" for x in leases)
        assert all(x is not None for x in leases)  # the unlabelled one is not listed
    finally:
        for obj in (ours, other):
            control_plane.kubectl(
                "delete", "lease", "-n", "kube-system", obj["metadata"]["name"], "--wait=false"
            )


def test_watch_sees_add_update_delete(
    control_plane: ControlPlane, backend: KubernetesBackend
) -> None:
    node, peer = unique("watch"), unique("watch")
    control_plane.kubectl("apply", "-f", "-", input=node_yaml(node))
    wait_for(backend.events, is_("Node", "ADDED", node))
    control_plane.kubectl("label", "node", node, "topology.kubernetes.io/region=eu")
    event = wait_for(backend.events, is_("Node", "MODIFIED", node))
    assert event.object["metadata"]["labels"]["topology.kubernetes.io/region"] == "eu"
    assert event.old is not None and "topology.kubernetes.io/region" not in event.old[
        "metadata"
    ].get("labels", {})
    control_plane.kubectl("delete", "node", node)
    wait_for(backend.events, is_("Node", "DELETED", node))

    control_plane.kubectl("apply", "-f", "-", input=peer_yaml(peer))
    event = wait_for(backend.events, is_("Peer", "ADDED", peer))
    assert event.object["apiVersion"] == "kilo.squat.ai/v1alpha1"
    control_plane.kubectl("apply", "-f", "-", input=peer_yaml(peer, "10.5.0.2/32"))
    event = wait_for(backend.events, is_("Peer", "MODIFIED", peer))
    assert event.object["spec"]["allowedIPs"] == ["10.5.0.2/32"]
    control_plane.kubectl("delete", "peer", peer)
    wait_for(backend.events, is_("Peer", "DELETED", peer))
    assert peer not in {p["metadata"]["name"] for p in backend.peers()}


def test_callback_delivery(control_plane: ControlPlane) -> None:
    got: queue.Queue[Event] = queue.Queue()
    name = unique("callback")
    with KubernetesBackend(control_plane.kubeconfig, on_event=got.put):
        control_plane.kubectl("apply", "-f", "-", input=peer_yaml(name))
        wait_for(got, is_("Peer", "ADDED", name))


def restart_scenario(cp: ControlPlane, backend: KubernetesBackend, compact: bool) -> None:
    """While our API server is down, another replica (same etcd) changes things; after the
    restart the backend catches up by itself."""
    node, gone_peer, new_peer = unique("restart"), unique("restart"), unique("restart")
    cp.kubectl("apply", "-f", "-", input=node_yaml(node))
    cp.kubectl("apply", "-f", "-", input=peer_yaml(gone_peer))
    wait_for(backend.events, is_("Peer", "ADDED", gone_peer))

    cp.stop_apiserver()
    try:
        with cp.extra_apiserver() as other:
            cp.kubectl("label", "node", node, "changed=meanwhile", kubeconfig=other)
            cp.kubectl("delete", "peer", gone_peer, kubeconfig=other)
            cp.kubectl("apply", "-f", "-", input=peer_yaml(new_peer), kubeconfig=other)
        if compact:
            cp.compact_etcd()  # the backend's resourceVersions are history now
        time.sleep(1)  # the backend is retrying against a dead port meanwhile
    finally:
        cp.start_apiserver()

    event = wait_for(backend.events, is_("Node", "MODIFIED", node), timeout=60)
    assert event.object["metadata"]["labels"]["changed"] == "meanwhile"
    wait_for(backend.events, is_("Peer", "DELETED", gone_peer), timeout=60)
    wait_for(backend.events, is_("Peer", "ADDED", new_peer), timeout=60)
    # and it keeps watching afterwards
    cp.kubectl("delete", "node", node)
    wait_for(backend.events, is_("Node", "DELETED", node), timeout=60)


def test_recovers_after_apiserver_restart(
    control_plane: ControlPlane, backend: KubernetesBackend
) -> None:
    restart_scenario(control_plane, backend, compact=False)


def test_relists_on_410_gone_after_restart(crd_installer: Callable[[ControlPlane], None]) -> None:
    """Without the API server's watch cache, a watch resumed from a compacted resourceVersion
    gets 410 Gone; the backend lists again and delivers the difference."""
    with ControlPlane(apiserver_args=["--watch-cache=false"]) as cp:
        crd_installer(cp)
        with KubernetesBackend(cp.kubeconfig) as backend:
            restart_scenario(cp, backend, compact=True)
            assert backend.relists >= 1


def test_annotations_touch_only_owned_keys(control_plane: ControlPlane) -> None:
    name = unique("annotate")
    labels = {"topology.kubernetes.io/region": "eu", "team": "net"}
    others = {
        "kilo.squat.ai/location": "office",
        "kilo.squat.ai/force-endpoint": "203.0.113.9:51820",
        "example.com/note": "keep me",
        "kilo.squat.ai/key": "old-value",
    }
    control_plane.kubectl("create", "-f", "-", input=node_yaml(name, labels, others))
    backend = KubernetesBackend(control_plane.kubeconfig)

    ours = {
        "kilo.squat.ai/key": KEY,
        "kilo.squat.ai/wireguard-ip": "10.4.0.1/16",
        "kilo.squat.ai/last-seen": "1700000000",
    }
    backend.set_node_annotations(name, ours)
    obj = json.loads(control_plane.kubectl("get", "node", name, "-o", "json").stdout)
    annotations = obj["metadata"]["annotations"]
    kept = {k: v for k, v in others.items() if k != "kilo.squat.ai/key"}
    assert {k: annotations[k] for k in kept} == kept
    assert {k: annotations[k] for k in ours} == ours
    assert {k: obj["metadata"]["labels"][k] for k in labels} == labels
    assert obj["spec"]["podCIDR"] == "10.244.1.0/24"

    parsed, _ = node_from_object(obj)
    backend.publish_node(parsed)  # the core's view written back: same annotations
    again = json.loads(control_plane.kubectl("get", "node", name, "-o", "json").stdout)
    assert again["metadata"]["annotations"]["kilo.squat.ai/key"] == KEY

    with pytest.raises(ValueError, match=r"kilo\.squat\.ai/location"):
        backend.set_node_annotations(name, {"kilo.squat.ai/location": "elsewhere"})

    backend.clean_up(name)
    after = json.loads(control_plane.kubectl("get", "node", name, "-o", "json").stdout)
    left = after["metadata"]["annotations"]
    assert not set(left) & set(OWNED_ANNOTATIONS)
    assert left == kept
    assert {k: after["metadata"]["labels"][k] for k in labels} == labels
    backend.clean_up(name)  # idempotent
    control_plane.kubectl("delete", "node", name)


def test_second_cluster_side_by_side_without_crd(control_plane: ControlPlane) -> None:
    """Two clusters at once (multi-cluster); the second has no CRD, which is a clear error."""
    with ControlPlane() as other:
        assert other.server != control_plane.server
        other.kubectl("apply", "-f", "-", input=node_yaml("only-in-other"))
        assert control_plane.kubectl("get", "node", "only-in-other", check=False).returncode != 0
        with pytest.raises(CRDMissing, match=r"manifests/crds\.yaml"):
            list_objects(other.kubeconfig)
        with pytest.raises(CRDMissing, match=r"kubectl apply -f manifests/crds\.yaml"):
            KubernetesBackend(other.kubeconfig).start()
