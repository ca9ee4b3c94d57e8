"""The Kubernetes backend's handling of decoded watch events, without a server: what is cached
is the lean object, and no event, however odd, raises anything but the watch's own errors."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.backend.apiserver import BackendError
from kilo.backend.kubernetes import Event, KubernetesBackend, _Gone

from .helpers import node_obj


def backend() -> tuple[KubernetesBackend, list[Event]]:
    api = SimpleNamespace(
        configuration=SimpleNamespace(host="https://127.0.0.1:1"),
        rest_client=SimpleNamespace(pool_manager=None),
    )
    got: list[Event] = []
    return KubernetesBackend(api=api, on_event=got.append), got  # type: ignore[arg-type]


def test_a_node_is_cached_lean_and_emitted() -> None:
    b, got = backend()
    obj = node_obj("n1", "a", pod_cidr="10.2.1.0/24")
    obj["metadata"].update(resourceVersion="7", managedFields=[{"manager": "x"}])
    obj["status"] = {"images": ["x"] * 10}
    b._handle("Node", {"type": "ADDED", "object": obj})
    (node,) = b.nodes()
    assert "status" not in node and "managedFields" not in node["metadata"]
    assert got[0].object is node and got[0].old is None and b._rv["Node"] == "7"
    b._handle("Node", {"type": "DELETED", "object": obj})
    assert b.nodes() == [] and got[1].type == "DELETED" and got[1].old is node


def test_errors_end_the_watch() -> None:
    b, _ = backend()
    with pytest.raises(_Gone):
        b._handle("Node", {"type": "ERROR", "object": {"code": 410}})
    with pytest.raises(BackendError):
        b._handle("Node", {"type": "ERROR", "object": {"code": "x", "message": [1]}})
    with pytest.raises(BackendError):
        b._handle("Node", {"type": "ERROR", "object": 5})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
EVENT = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "X", 3])},
        optional={"object": st.one_of(JSON, st.fixed_dictionaries({}, optional={
            "metadata": st.one_of(JSON, st.fixed_dictionaries({}, optional={
                "name": JSON, "resourceVersion": JSON, "annotations": JSON, "labels": JSON})),
            "spec": JSON}))},
    ),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from(["Node", "Peer"]), EVENT), max_size=5))
def test_odd_events_never_raise(events: list[tuple[str, Any]]) -> None:
    b, got = backend()
    for kind, event in events:
        b._handle(kind, json.loads(json.dumps(event)))
    for e in got:
        assert e.name and isinstance(e.object["metadata"], dict)
    b.nodes(), b.peers()
