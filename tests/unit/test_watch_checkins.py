"""Kilo's check-ins taken off the Node watch stream without decoding (kilo.backend.checkins):
whatever the lines, an event taken undecoded is exactly what decoding it gives, anything else
is decoded, and nothing raises. Also the stream's line splitting."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.backend import kubernetes
from kilo.backend.apiserver import BackendError
from kilo.backend.checkins import CheckIns, with_check_in
from kilo.backend.kubernetes import split_lines
from kilo.backend.objects import lean
from tests.unit.test_backend_events import backend

SEEN = "kilo.squat.ai/last-seen"


def node(rv: int, seen: int, stamp: str = "2026-12-07T08:00:00Z", **extra: Any) -> dict[str, Any]:
    """A Node event as the API server writes it (compact JSON, managedFields, status)."""
    ann = {
        SEEN: str(seen),
        "kilo.squat.ai/key": "x" * 43 + "=",
        "kilo.squat.ai/discovered-endpoints": json.dumps({"k": {"IP": "1.2.3.4", "Port": 5}}),
        "other.example/time": "a",
    }
    ann.update(extra.pop("annotations", {}))
    labels = {"kubernetes.io/hostname": "n1", "topology.kubernetes.io/region": "a"}
    labels.update(extra.pop("labels", {}))
    obj = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": extra.pop("name", "n1"),
            "uid": "u-1",
            "resourceVersion": str(rv),
            "creationTimestamp": "2026-12-01T00:00:00Z",
            "labels": labels,
            "annotations": ann,
            "managedFields": [
                {"manager": "kg", "operation": "Update", "time": stamp, "fieldsV1": {"f:x": {}}},
                {"manager": "kubelet", "operation": "Update", "time": "2026-12-01T00:00:00Z"},
            ],
        },
        "spec": {"podCIDR": extra.pop("pod_cidr", "10.2.1.0/24")},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    return {"type": extra.pop("type", "MODIFIED"), "object": obj}


def line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def decoded(raw: bytes) -> dict[str, Any]:
    return lean(json.loads(raw)["object"], "Node", "v1")


class Counting:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = json.loads

        def loads(s: Any) -> Any:
            self.calls += 1
            return real(s)

        monkeypatch.setattr(kubernetes.json, "loads", loads)


def test_check_ins_after_the_first_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    b, got = backend()
    lines = [line(node(10 + i, 1000 + 30 * i, f"2026-12-07T08:0{i}:00Z")) for i in range(6)]
    counting = Counting(monkeypatch)
    for raw in lines:
        b._line("Node", raw)
    assert counting.calls == 2  # the first is decoded and learnt (one probe), the others not
    assert [e.object for e in got] == [decoded(raw) for raw in lines]
    assert got[-1].old == decoded(lines[-2]) and got[-1].type == "MODIFIED"
    assert [e.check_in for e in got] == [None] + [str(1000 + 30 * i) for i in range(1, 6)]
    assert all(e.old is p.object for p, e in itertools.pairwise(got))  # the cache's own
    assert b.nodes() == [decoded(lines[-1])] and b._rv["Node"] == "15"


CHANGES: list[dict[str, Any]] = [
    {"annotations": {"kilo.squat.ai/endpoint": "1.2.3.4:51820"}},
    {"annotations": {"kilo.squat.ai/key": "y" * 43 + "="}},
    {"labels": {"topology.kubernetes.io/region": "b"}},
    {"pod_cidr": "10.2.9.0/24"},
    {"type": "ADDED"},
]


@pytest.mark.parametrize("change", CHANGES)
def test_any_other_change_is_decoded(change: dict[str, Any]) -> None:
    b, got = backend()
    first, second = line(node(10, 1000)), line(node(11, 1030, **dict(change)))
    b._line("Node", first)
    assert b._check_ins.match(second) is None
    b._line("Node", second)
    assert got[-1].object == decoded(second)


@pytest.mark.parametrize(
    "odd",
    [
        {"labels": {"time": "2026"}},  # a "time" that the object keeps
        {"labels": {SEEN: "1000"}},  # a second last-seen
        {"annotations": {"kilo.squat.ai/resourceVersion": "5"}},
        {"annotations": {"kilo.squat.ai/x": '{"time":"1"}'}},
    ],
)
def test_lines_whose_blanks_are_not_only_check_in_fields_are_always_decoded(
    odd: dict[str, Any],
) -> None:
    b, got = backend()
    lines = [line(node(10 + i, 1000 + i, **json.loads(json.dumps(odd)))) for i in range(3)]
    for raw in lines:
        b._line("Node", raw)
        assert got[-1].object == decoded(raw)
    if "labels" in odd:
        assert len(b._check_ins) == 0  # never learnt: every line decoded


def test_a_relist_or_delete_forgets() -> None:
    b, _ = backend()
    b._line("Node", line(node(10, 1000)))
    assert len(b._check_ins) == 1
    b._line("Node", line(node(11, 1030, type="DELETED")))
    assert len(b._check_ins) == 0 and b.nodes() == []
    assert b._check_ins.match(line(node(12, 1060))) is None


def test_the_cache_moved_meanwhile_means_decoding() -> None:
    b, got = backend()
    b._line("Node", line(node(10, 1000)))
    with b._lock:  # as a relist replacing the object would
        b._cache["Node"]["n1"] = decoded(line(node(20, 1000)))
    b._line("Node", line(node(11, 1030)))
    assert got[-1].object == decoded(line(node(11, 1030)))


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=2000),
    insert=st.binary(max_size=4),
    drop=st.integers(min_value=0, max_value=3),
)
def test_a_mutated_line_is_taken_only_as_decoding_would_take_it(
    cut: int, insert: bytes, drop: int
) -> None:
    """Any line after a learnt one: if it is taken undecoded, decoding it gives the same object;
    truncated or garbled lines never match and never raise."""
    checks = CheckIns()
    first = line(node(10, 1000))
    obj = decoded(first)
    checks.learn(first, obj)
    assert len(checks) == 1
    second = line(node(11, 1030))
    at = cut % (len(second) + 1)
    mutated = second[:at] + insert + second[at + drop :]
    hit = checks.match(mutated)
    if hit is None:
        return
    name, before, rv, seen = hit
    assert (name, before) == ("n1", "10")
    assert decoded(mutated) == with_check_in(obj, rv, seen)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300), obj=st.dictionaries(st.text(max_size=3), st.text(max_size=3)))
def test_garbage_never_raises(raw: bytes, obj: dict[str, Any]) -> None:
    checks = CheckIns()
    checks.learn(raw, lean(obj, "Node", "v1"))
    checks.learn(b'{"type":"MODIFIED","object":{' + raw, lean(obj, "Node", "v1"))
    assert checks.match(raw) is None or len(checks) > 0


def test_huge_and_truncated_lines() -> None:
    checks = CheckIns()
    first = line(node(10, 1000))
    checks.learn(first, decoded(first))
    second = line(node(11, 1030))
    for n in range(0, len(second), 7):
        assert checks.match(second[:n]) is None
    big = line(node(11, 1030, annotations={"other.example/big": "x" * 100_000}))
    assert checks.match(big) is None
    seen_long = line(node(11, 10**300))  # a last-seen beyond what is blanked: decoded
    assert checks.match(seen_long) is None


def test_split_lines() -> None:
    data = b'{"a":1}\n\n{"b":2}\n  \n{"c":3}'
    want = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    for size in (1, 2, 3, 5, 100):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert list(split_lines(iter(chunks))) == want
    with pytest.raises(BackendError):
        list(split_lines(iter([b"x" * 50, b"y" * 50]), max_line=60))
    with pytest.raises(BackendError):
        list(split_lines(iter([b"x" * 70 + b"\nok\n"]), max_line=60))
    assert list(split_lines(iter([b"x" * 60 + b"\n"]), max_line=60)) == [b"x" * 60]
