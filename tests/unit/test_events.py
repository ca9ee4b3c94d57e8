"""Problems as Kubernetes Events (kilo.events), and the Event writer's behaviour without a
server (kilo.backend.events): queueing, the rate limit, a repeat counted, nothing raised."""

from __future__ import annotations

import json
import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilo.backend.apiserver import BackendError
from kilo.backend.events import KubernetesEventSink
from kilo.events import (
    MAX_MESSAGE_BYTES,
    REPEAT_SECONDS,
    Told,
    bounded,
    escaped,
    event_name,
    problem_event,
    reason_of,
)
from kilo.model import Problem

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
ENDPOINT = "metadata.annotations[kilo.squat.ai/endpoint]"


def bad_endpoint(name: str = "n1", value: str = "nowhere") -> Problem:
    return Problem("Node", name, ENDPOINT, value, "not an endpoint")


def test_a_node_problem_is_a_warning_on_the_node() -> None:
    ev = problem_event(bad_endpoint(), host="a1")
    assert ev is not None
    body = ev.body(1_790_000_000.0)
    assert body["metadata"]["namespace"] == "default"
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n1"}
    assert (body["type"], body["reason"]) == ("Warning", "InvalidValue")
    assert body["message"] == f"{ENDPOINT}='nowhere': not an endpoint"
    assert body["source"] == {"component": "kilo", "host": "a1"}
    assert body["count"] == 1
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-09-21T14:13:20Z"


def test_a_peer_problem_is_on_the_peer_without_a_uid_yet() -> None:
    p = Problem("Peer", "laptop", "spec.allowedIPs", "0.0.0.0/0", "is a default route; refused")
    ev = problem_event(p, host="a1")
    assert ev is not None
    body = ev.body(0.0)
    assert body["involvedObject"] == {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "name": "laptop",
    }
    assert body["reason"] == "ClaimRefused"
    assert body["message"] == "spec.allowedIPs='0.0.0.0/0': is a default route; refused"


@pytest.mark.parametrize(
    "field,why,reason",
    [
        ("spec.podCIDR", "overlaps node b's pod CIDR; refused", "ClaimRefused"),
        ("spec.publicKey", "is Peer p's key; refused", "ClaimRefused"),
        ("metadata.annotations[kilo.squat.ai/internal-ip]", "is node b's internal IP; ignored",
         "ClaimConflict"),
        ("spec.allowedIPs", "already claimed by another peer; ignored", "ClaimConflict"),
        ("spec.allowedIPs", "lies in the mesh's WireGuard subnet; ignored", "ClaimConflict"),
        ("spec", "not an object; ignored", "InvalidValue"),
        ("spec.persistentKeepalive", "not a number of seconds", "InvalidValue"),
        ("", "unreadable: KeyError: 'x'", "UnreadableObject"),
        ("object", "could not be read: TypeError: no", "UnreadableObject"),
    ],
)  # fmt: skip
def test_reasons(field: str, why: str, reason: str) -> None:
    assert reason_of(Problem("Node", "n", field, "v", why)) == reason


def test_other_kinds_and_nameless_objects_make_no_event() -> None:
    assert problem_event(Problem("Location", "eu", "allowed-location-ips", "x", "y"), "a") is None
    assert problem_event(Problem("Lease", "l", "spec", "x", "y"), "a") is None
    assert problem_event(Problem("Node", "", "metadata.name", "x", "no name"), "a") is None


def test_the_message_escapes_control_characters() -> None:
    p = Problem("Node", "n1", "metadata.annotations[kilo.squat.ai/x\n]", "a\x1bb", "bad\u202e\r")
    ev = problem_event(p, "a1")
    assert ev is not None
    assert ev.message.isprintable()
    assert "\\n" in ev.message and "\\x1b" in ev.message and "\\u202e" in ev.message
    assert escaped("plain text: ok") == "plain text: ok"


def test_the_message_is_bounded_at_a_character() -> None:
    long = "é" * 2000  # two bytes each: a cut in the middle would be invalid UTF-8
    ev = problem_event(bad_endpoint(value=long), "a1")
    assert ev is not None
    raw = ev.message.encode()
    assert len(raw) <= MAX_MESSAGE_BYTES and ev.message.endswith("…")
    assert ev.message.startswith(f"{ENDPOINT}='éé")
    assert bounded("short") == "short"


@given(st.text(max_size=3000))
def test_any_message_is_printable_and_bounded(text: str) -> None:
    ev = problem_event(Problem("Peer", "p", text, text, text), "a1")
    assert ev is not None
    assert ev.message.isprintable() and len(ev.message.encode()) <= MAX_MESSAGE_BYTES


def test_the_name_is_deterministic_and_per_problem() -> None:
    one, two = event_name(bad_endpoint()), event_name(bad_endpoint())
    assert one == two and one.startswith("n1.") and DNS_SUBDOMAIN.match(one)
    assert event_name(bad_endpoint(value="elsewhere")) != one
    assert event_name(bad_endpoint(name="n2")) != one
    ev_a, ev_b = problem_event(bad_endpoint(), "a1"), problem_event(bad_endpoint(), "b1")
    assert ev_a is not None and ev_b is not None and ev_a.name == ev_b.name  # one per cluster


@given(st.text(max_size=300))
def test_any_name_is_a_dns_subdomain(name: str) -> None:
    got = event_name(Problem("Node", name, "f", "v", "w"))
    assert DNS_SUBDOMAIN.match(got) and len(got) <= 253


def test_told_once_until_the_repeat_period() -> None:
    told = Told()
    bad = [bad_endpoint("n1"), bad_endpoint("n2")]
    assert told.due(bad, 0.0) == bad
    assert told.due(bad, 10.0) == []
    assert told.due([*bad, bad_endpoint("n3")], 20.0) == [bad_endpoint("n3")]
    assert told.due(bad, REPEAT_SECONDS) == bad  # still there: told again
    assert told.due([], REPEAT_SECONDS + 1) == []  # fixed: nothing more


def test_a_plan_without_the_problem_for_a_moment_tells_it_no_sooner() -> None:
    told = Told()
    assert told.due([bad_endpoint()], 0.0)
    assert told.due([], 5.0) == []
    assert told.due([bad_endpoint()], 10.0) == []
    assert told.due([bad_endpoint()], REPEAT_SECONDS + 1) == [bad_endpoint()]


# -- the writer, against a stub of the API server ---------------------------------------------


class StubApi:
    """Events kept by name, as the API server keeps them: create refuses an existing name (409),
    a merge patch with a stale resourceVersion is refused (409)."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: int | None = None  # an HTTP status every request ends in
        self.lock = threading.Lock()
        self.peer_uid = "1234-uid"

    def json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append((method, path))
            if self.fail is not None:
                raise BackendError(f"{method} {path}: HTTP {self.fail}", self.fail)
            if path.startswith("/apis/kilo.squat.ai/"):
                return {"metadata": {"name": path.rsplit("/", 1)[1], "uid": self.peer_uid}}
            name = path.rsplit("/", 1)[1]
            if method == "POST":
                body = json.loads(json.dumps(kw["body"]))
                name = body["metadata"]["name"]
                if name in self.events:
                    raise BackendError("exists", 409)
                body["metadata"]["resourceVersion"] = "1"
                self.events[name] = body
                return body
            if name not in self.events:
                raise BackendError("not found", 404)
            ev = self.events[name]
            if method == "GET":
                return json.loads(json.dumps(ev))
            patch = kw["body"]
            if patch["metadata"]["resourceVersion"] != ev["metadata"]["resourceVersion"]:
                raise BackendError("conflict", 409)
            ev.update({k: v for k, v in patch.items() if k != "metadata"})
            ev["metadata"]["resourceVersion"] = str(int(ev["metadata"]["resourceVersion"]) + 1)
            return ev


def sink(stub: StubApi, **kw: Any) -> KubernetesEventSink:
    api = SimpleNamespace(
        configuration=SimpleNamespace(host="https://127.0.0.1:1", auth_settings=dict),
        rest_client=SimpleNamespace(pool_manager=None),
    )
    s = KubernetesEventSink(api=api, clock=lambda: 1_790_000_000.0, **kw)
    s.http = stub  # type: ignore[assignment]
    return s


def event(name: str = "n1", kind: str = "Node") -> Any:
    ev = problem_event(Problem(kind, name, ENDPOINT, "x", "not an endpoint"), "a1")
    assert ev is not None
    return ev


def test_a_repeat_counts_on_the_same_event() -> None:
    stub = StubApi()
    s = sink(stub)
    assert s.write(event()) == "created"
    assert s.write(event()) == "updated"
    assert s.write(event()) == "updated"
    (only,) = stub.events.values()
    assert only["count"] == 3 and only["firstTimestamp"] == only["lastTimestamp"]


def test_a_peer_event_carries_the_peer_uid() -> None:
    stub = StubApi()
    s = sink(stub)
    s.write(event("laptop", "Peer"))
    (only,) = stub.events.values()
    assert only["involvedObject"]["uid"] == "1234-uid"


def test_emit_is_off_the_loop_and_never_raises() -> None:
    stub = StubApi()
    errors: list[int] = []
    s = sink(stub, on_error=lambda: errors.append(1))
    stub.fail = 403
    s.emit([event("n1"), event("n2")])
    assert s.flush(5.0)
    assert s.failed == 2 and len(errors) == 2 and not stub.events
    stub.fail = None
    s.emit([event("n1")])
    assert s.flush(5.0)
    assert s.created == 1 and "n1" in next(iter(stub.events))
    s.close()
    s.emit([event("n3")])  # closed: ignored, no error
    assert s.created == 1


def test_a_full_queue_drops_and_counts() -> None:
    stub = StubApi()
    errors: list[int] = []
    s = sink(stub, queue_size=2, per_minute=1, on_error=lambda: errors.append(1))
    gate = threading.Lock()
    gate.acquire()
    real = stub.json

    def slow(*a: Any, **kw: Any) -> dict[str, Any]:
        with gate:  # the writer is held until the test lets it go
            return real(*a, **kw)

    stub.json = slow  # type: ignore[method-assign]
    s.emit([event(f"n{i}") for i in range(6)])
    time.sleep(0.2)
    assert s.dropped >= 3 and len(errors) == s.dropped
    gate.release()
    s.close()


def test_the_rate_limit_holds_writes_back() -> None:
    stub = StubApi()
    s = sink(stub, per_minute=2)
    s.emit([event(f"n{i}") for i in range(4)])
    time.sleep(0.5)
    assert s.created == 2  # the burst; the next comes after 30 s
    s.close()
