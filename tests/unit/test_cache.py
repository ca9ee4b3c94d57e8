"""What the watch keeps of an object (``kilo.backend.objects.lean``) and the cache's shortcut
for check-ins: both must read exactly as the full translation of the whole object does, and
no object, however odd, makes either raise."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.backend.objects import lean
from kilo.cache import ObjectCache
from kilo.model import REGION_LABEL
from kilo.translate import LAST_SEEN, node_from_object, peer_from_object

from .helpers import NOW, node_obj, peer_obj

Obj = dict[str, Any]
DATA = Path(__file__).resolve().parents[1] / "data" / "clusters"
NODE_V, PEER_V = "v1", "kilo.squat.ai/v1alpha1"


def fixture_objects() -> list[Obj]:
    out: list[Obj] = []
    for path in sorted(DATA.glob("*.yaml")):
        out += yaml.safe_load(path.read_text())["items"]
    return out


def as_served(obj: Obj) -> Obj:
    """``obj`` with what a real API server adds: managedFields, uid, status, other programs'
    annotations."""
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    meta.update(uid="0f6f3f1d", resourceVersion="42", creationTimestamp="2026-12-05T13:00:00Z")
    meta["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:metadata": {}}}]
    meta.setdefault("annotations", {})["node.alpha.kubernetes.io/ttl"] = "0"
    obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}], "images": ["x"] * 50}
    return obj


@pytest.mark.parametrize("obj", fixture_objects(), ids=lambda o: o["metadata"]["name"])
def test_a_lean_object_translates_as_the_whole_one(obj: Obj) -> None:
    served = as_served(obj)
    if obj["kind"] == "Node":
        kept = lean(served, "Node", NODE_V)
        for label in (REGION_LABEL, "example.com/zone"):
            assert node_from_object(kept, label) == node_from_object(served, label)
        assert "status" not in kept and "managedFields" not in kept["metadata"]
        assert set(kept["metadata"].get("annotations", {})) <= {
            k for k in obj["metadata"].get("annotations", {})
        }
    else:
        kept = lean(served, "Peer", PEER_V)
        assert peer_from_object(kept) == peer_from_object(served)
    assert kept["metadata"]["resourceVersion"] == "42"


def test_lean_keeps_only_what_is_read() -> None:
    kept = lean(as_served(node_obj("n1", "a", pod_cidr="10.2.1.0/24")), "Node", NODE_V)
    assert set(kept) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(kept["metadata"]) == {
        "name",
        "resourceVersion",
        "creationTimestamp",
        "labels",
        "annotations",
    }
    assert kept["spec"] == {"podCIDR": "10.2.1.0/24"}
    assert all(k.startswith("kilo.squat.ai/") for k in kept["metadata"]["annotations"])


# the check-in shortcut


def fresh(obj: Obj) -> tuple[Any, tuple[Any, ...]]:
    node, problems = node_from_object(obj, REGION_LABEL)
    return node, tuple(problems)


def cached(c: ObjectCache, name: str) -> tuple[Any, tuple[Any, ...]]:
    view = c.view()
    return view.nodes.get(name), tuple(p for p in view.problems if p.name == name)


def bumped(obj: Obj, rv: str, **annotations: str | None) -> Obj:
    obj = copy.deepcopy(obj)
    obj["metadata"]["resourceVersion"] = rv
    ann = obj["metadata"].setdefault("annotations", {})
    for k, v in annotations.items():
        if v is None:
            ann.pop(k, None)
        else:
            ann[k] = v
    return obj


def two_check_ins(first: str, second: str, keepalive: str | None) -> tuple[ObjectCache, Obj, Obj]:
    """A cache holding node b1 checked in at ``first``, and b1 checked in at ``second``."""
    c = ObjectCache(REGION_LABEL)
    base = node_obj("b1", "b", internal_ip="10.3.0.1/24", pod_cidr="10.2.3.0/24")
    if keepalive is not None:
        base["metadata"]["annotations"]["kilo.squat.ai/persistent-keepalive"] = keepalive
    one = bumped(base, "1", **{LAST_SEEN: first})
    two = bumped(base, "2", **{LAST_SEEN: second})
    c.update("Node", "ADDED", one)
    return c, one, two


ODD_TIMES = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.sampled_from(["", " 17", "1_000", "+5", "-0", "abc", "1.5", "١٢", "0x10", "99999999999999"]),
    st.text(max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(first=ODD_TIMES, second=ODD_TIMES, keepalive=st.sampled_from([None, "10", "x"]))
def test_a_check_in_reads_as_a_full_translation(
    first: str, second: str, keepalive: str | None
) -> None:
    c, one, two = two_check_ins(first, second, keepalive)
    name = c.update("Node", "MODIFIED", two)
    assert cached(c, "b1") == fresh(two)
    if name is None:  # the cache said something the plan reads changed: it did
        assert c.changed
    else:
        assert not c.changed and fresh(one)[0] is not None


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["endpoint", "key", "internal-ip", "location", "leader", "granularity"]),
    value=st.one_of(st.none(), st.sampled_from(["", "198.51.100.7:51820", "x", "true", "full"])),
)
def test_any_other_change_is_translated_in_full(field: str, value: str | None) -> None:
    c = ObjectCache(REGION_LABEL)
    base = node_obj("b1", "b", internal_ip="10.3.0.1/24", pod_cidr="10.2.3.0/24")
    one = bumped(base, "1")
    two = bumped(base, "2", **{LAST_SEEN: str(NOW + 30), "kilo.squat.ai/" + field: value})
    c.update("Node", "ADDED", one)
    c.update("Node", "MODIFIED", two)
    assert cached(c, "b1") == fresh(two)
    (n1, p1), (n2, p2) = fresh(one), fresh(two)
    if replace(n1, last_seen=0) != replace(n2, last_seen=0) or p1 != p2:
        assert c.changed


def test_a_label_or_pod_cidr_change_is_not_a_check_in() -> None:
    c = ObjectCache(REGION_LABEL)
    one = node_obj("b1", "b", internal_ip="10.3.0.1/24", pod_cidr="10.2.3.0/24")
    one["metadata"]["resourceVersion"] = "1"
    c.update("Node", "ADDED", one)
    two = bumped(one, "2", **{LAST_SEEN: str(NOW + 30)})
    two["metadata"]["labels"][REGION_LABEL] = "c"
    assert c.update("Node", "MODIFIED", two) is None and c.changed
    three = bumped(two, "3", **{LAST_SEEN: str(NOW + 60)})
    three["spec"]["podCIDR"] = "10.2.9.0/24"
    assert c.update("Node", "MODIFIED", three) is None and c.changed
    assert cached(c, "b1") == fresh(three)


# hostile objects

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
META_KEYS = st.sampled_from(["name", "resourceVersion", "labels", "annotations", "uid"])
SPEC_KEYS = [
    "podCIDR",
    "allowedIPs",
    "publicKey",
    "endpoint",
    "persistentKeepalive",
    "presharedKey",
]
ODD_OBJECT = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.one_of(JSON, st.dictionaries(META_KEYS, JSON, max_size=4)),
        "spec": st.one_of(
            JSON,
            st.dictionaries(st.sampled_from(SPEC_KEYS), JSON, max_size=4),
        ),
        "status": JSON,
    },
)


@settings(max_examples=400, deadline=None)
@given(objs=st.lists(st.tuples(st.sampled_from(["Node", "Peer"]), ODD_OBJECT), max_size=4))
def test_odd_objects_never_raise(objs: list[tuple[str, Obj]]) -> None:
    c = ObjectCache(REGION_LABEL)
    for i, (kind, raw) in enumerate(objs):
        obj = lean(raw, kind, NODE_V if kind == "Node" else PEER_V)
        obj["metadata"].setdefault("name", "x")
        obj["metadata"]["resourceVersion"] = str(i)
        c.update(kind, "MODIFIED", obj)
    c.read([], [])
    c.view()


def test_an_unreadable_object_is_a_problem() -> None:
    c = ObjectCache(REGION_LABEL)
    peer = peer_obj("p1", ["10.5.0.1/32"])
    peer["metadata"]["resourceVersion"] = "1"
    peer["spec"]["allowedIPs"] = "10.5.0.1/32"  # a string, not a list
    c.update("Peer", "ADDED", peer)
    assert c.changed
    assert "p1" not in c.view().peers or c.view().problems


@settings(max_examples=300, deadline=None)
@given(first=ODD_TIMES, second=ODD_TIMES, keepalive=st.sampled_from([None, "10", "x"]))
def test_a_check_in_the_backend_proved_reads_as_a_full_translation(
    first: str, second: str, keepalive: str | None
) -> None:
    """``check_in``: the backend says ``two`` is ``one`` with a new resourceVersion and
    ``last-seen`` (``Event.check_in``); taken or handed back to ``update``, the cache ends as
    the full translation of ``two``, and taking it never counts as a change."""
    c, one, two = two_check_ins(first, second, keepalive)
    name = c.check_in(two, one, second)
    if name is None:
        c.update("Node", "MODIFIED", two)
    else:
        assert name == "b1" and not c.changed and fresh(one)[0] is not None
    assert cached(c, "b1") == fresh(two)


def test_a_check_in_of_another_object_than_the_cached_one_is_not_taken() -> None:
    c = ObjectCache(REGION_LABEL)
    one = bumped(node_obj("b1", "b", pod_cidr="10.2.3.0/24"), "1", **{LAST_SEEN: str(NOW)})
    c.update("Node", "ADDED", one)
    two = bumped(one, "2", **{LAST_SEEN: str(NOW + 30)})
    assert c.check_in(two, copy.deepcopy(one), str(NOW + 30)) is None  # not the cache's own
    assert c.check_in(two, None, str(NOW + 30)) is None
    other = bumped(one, "2")
    other["metadata"]["name"] = "b9"
    assert c.check_in(other, one, str(NOW)) is None  # not cached
    assert cached(c, "b1") == fresh(one)
    assert c.check_in(two, one, str(NOW + 30)) == "b1" and cached(c, "b1") == fresh(two)


def test_with_last_seen_is_replace() -> None:
    obj = node_obj("b1", "b", internal_ip="10.3.0.1/24", pod_cidr="10.2.3.0/24")
    n, _ = node_from_object(obj, REGION_LABEL)
    assert n is not None
    assert n.complete is not None and n.own_ips  # answers kept before the copy
    moved = n.with_last_seen(NOW + 77)
    assert moved == replace(n, last_seen=NOW + 77) and n.last_seen != NOW + 77
    assert moved.complete == n.complete and moved.own_ips == n.own_ips
