"""The Peer webhook: AdmissionReview handling (``kilo.admission``), its HTTPS server
(``kilo.webhook``) against hostile bodies, and the agent's plan refusing the same Peers when
admission never saw them."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kilo.admission import (
    MAX_REVIEW_BYTES,
    AdmissionSettings,
    BadReview,
    Request,
    decide,
    parse_review,
    response,
)
from kilo.authorise import PeerPolicy
from kilo.keys import Key
from kilo.plan import ClusterView, LocalFacts, Settings, plan
from kilo.strict import parse_network
from kilo.translate import node_from_object, peer_from_object
from kilo.webhook import Config, Webhook, self_signed
from tests.unit.helpers import NOW, key_for, node_obj, peer_obj

ME = Key.generate()
NODES = [
    node_obj(
        "a1", "a", pod_cidr="10.2.1.0/24", internal_ip="192.168.1.10/24", key=str(ME.public())
    ),
    node_obj("b1", "b", pod_cidr="10.2.2.0/24", internal_ip="192.168.2.10/24"),
]
OLD = "2026-01-01T00:00:00Z"
SETTINGS = AdmissionSettings(service_cidrs=(parse_network("10.3.0.0/16"),))


def older(obj: dict[str, Any], created: str = OLD) -> dict[str, Any]:
    obj["metadata"]["creationTimestamp"] = created
    return obj


EXISTING = [older(peer_obj("laptop", ["10.5.0.0/24"]))]

#: (case, Peer object, the field the denial names): what needs the cluster's other objects
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("overlaps-older-peer", peer_obj("p-overlap", ["10.5.0.7/32"]), "spec.allowedIPs"),
    ("node-key", peer_obj("p-key", ["10.6.0.1/32"], publicKey=key_for("b1")), "spec.publicKey"),
    (
        "peer-key",
        peer_obj("p-pkey", ["10.6.0.1/32"], publicKey=key_for("laptop")),
        "spec.publicKey",
    ),
    ("pod-cidr", peer_obj("p-pods", ["10.2.2.0/25"]), "spec.allowedIPs"),
    ("service-cidr", peer_obj("p-svc", ["10.3.0.10/32"]), "spec.allowedIPs"),
    ("wireguard-subnet", peer_obj("p-wg", ["10.4.0.0/16"]), "spec.allowedIPs"),
    ("internal-ip", peer_obj("p-int", ["192.168.1.10/32"]), "spec.allowedIPs"),
    ("default-route", peer_obj("p-default", ["10.9.0.1/32", "::/0"]), "spec.allowedIPs"),
    ("bad-cidr", peer_obj("p-cidr", ["nope"]), "spec.allowedIPs"),
    ("bad-key", peer_obj("p-badkey", ["10.6.0.1/32"], publicKey="abc"), "spec.publicKey"),
]
ALLOWED = [
    peer_obj("p-ok", ["10.6.0.1/32"]),
    peer_obj("p-ok6", ["fd00:6::1/128"], endpoint={"dnsOrIP": {"ip": "203.0.113.7"}, "port": 1}),
]


def review(obj: Any, operation: str = "CREATE", old: Any = None, uid: str = "u-1") -> bytes:
    req: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "kilo.squat.ai", "version": "v1alpha1", "kind": "Peer"},
        "resource": {"group": "kilo.squat.ai", "version": "v1alpha1", "resource": "peers"},
        "operation": operation,
        "object": obj,
    }
    if old is not None:
        req["oldObject"] = old
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}
    return json.dumps(body).encode()


def judge(obj: Any, peers: list[Any] = EXISTING, **kw: Any) -> tuple[bool, str]:
    settings = kw.pop("settings", SETTINGS)
    v = decide(parse_review(review(obj, **kw)), NODES, peers, settings, NOW)
    return v.allowed, v.message


@pytest.mark.parametrize("name,obj,field", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_peer_the_agents_refuse_is_denied_naming_the_field(
    name: str, obj: dict[str, Any], field: str
) -> None:
    allowed, message = judge(obj)
    assert not allowed
    assert message.startswith(f"{field}: "), message


def test_valid_peers_are_allowed() -> None:
    for obj in ALLOWED:
        assert judge(obj) == (True, "")


def test_messages_say_what_and_whose() -> None:
    assert judge(REFUSED[0][1])[1] == (
        "spec.allowedIPs: 10.5.0.7/32 overlaps 10.5.0.0/24 of the older Peer laptop; refused"
    )
    assert "is node b1's key" in judge(REFUSED[1][1])[1]
    assert "node b1's pod CIDR" in judge(REFUSED[3][1])[1]
    assert "is a default route" in judge(REFUSED[7][1])[1]


def test_an_update_keeps_its_age_and_its_own_claim() -> None:
    mine = older(peer_obj("laptop", ["10.5.0.0/24", "10.7.0.1/32"]))
    assert judge(mine, operation="UPDATE", old=EXISTING[0]) == (True, "")
    # an old Peer changed to claim a newer Peer's range would take it: refused
    newer = older(peer_obj("phone", ["10.8.0.0/24"]), "2026-06-01T00:00:00Z")
    grab = older(peer_obj("laptop", ["10.5.0.0/24", "10.8.0.1/32"]))
    allowed, message = judge(grab, [*EXISTING, newer], operation="UPDATE", old=EXISTING[0])
    assert not allowed and message.startswith("spec.allowedIPs: takes what the newer Peer phone")


def test_a_create_is_the_newest_whatever_its_timestamp() -> None:
    early = older(peer_obj("aaa", ["10.5.0.1/32"]), "2020-01-01T00:00:00Z")
    assert not judge(early)[0]


def test_allowed_ranges_let_peers_claim_the_clusters_addresses() -> None:
    policy = PeerPolicy(allowed_ranges=(parse_network("10.2.0.0/16"),))
    settings = AdmissionSettings(policy=policy)
    assert judge(REFUSED[3][1], settings=settings) == (True, "")


def test_deletes_other_kinds_and_unready_peers_are_allowed() -> None:
    assert judge(REFUSED[0][1], operation="DELETE")[0]
    body = json.loads(review(REFUSED[0][1]))
    body["request"]["kind"] = {"group": "", "version": "v1", "kind": "Node"}
    req = parse_review(json.dumps(body).encode())
    assert not req.needs_cluster and decide(req, NODES, EXISTING, SETTINGS, NOW).allowed
    zero = peer_obj("p-zero", ["10.5.0.7/32"], publicKey="A" * 43 + "=")
    v = decide(parse_review(review(zero)), NODES, EXISTING, SETTINGS, NOW)
    assert v.allowed and v.warnings


def test_the_answer_is_an_admission_review() -> None:
    req = parse_review(review(REFUSED[0][1], uid="abc"))
    out = response(req.uid, decide(req, NODES, EXISTING, SETTINGS, NOW))
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == "abc" and out["response"]["allowed"] is False
    assert out["response"]["status"]["code"] == 403
    assert response("x", decide(req, NODES, [], SETTINGS, NOW))["response"] == {
        "uid": "x",
        "allowed": True,
    }


GARBAGE: list[bytes] = [
    b"",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b"null",
    b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}',
    review(peer_obj("x", ["10.6.0.1/32"]), uid="a\nb"),
    review(None),
    review("a string"),
    review(peer_obj("x", ["10.6.0.1/32"])).replace(b'"CREATE"', b"null"),
    b"[" * 100 + b"]" * 100,
    b'{"a": NaN}',
    b'{"a": 1e999}',
    b" " * (MAX_REVIEW_BYTES + 1),
]


@pytest.mark.parametrize("body", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_is_a_bad_review(body: bytes) -> None:
    with pytest.raises(BadReview):
        parse_review(body)


def test_hostile_objects_are_denied_not_raised() -> None:
    weird: list[Any] = [
        {"metadata": {"name": "x"}, "spec": []},
        {"metadata": {"name": "x"}, "spec": {"allowedIPs": "10.0.0.0/8", "publicKey": 5}},
        {"metadata": {"name": "x"}, "spec": {"allowedIPs": [None], "publicKey": key_for("x")}},
        {"metadata": {}, "spec": {}},
        {"metadata": {"name": "x"}, "spec": {"allowedIPs": ["10.6.0.1/32"], "publicKey": "x\x00"}},
        peer_obj("x", ["10.6.0.1/32"], endpoint={"dnsOrIP": "1.2.3.4", "port": "x"}),
        peer_obj("x", ["10.6.0.1/32"], persistentKeepalive=True),
    ]
    for obj in weird:
        v = decide(parse_review(review(obj)), NODES, EXISTING, SETTINGS, NOW)
        assert not v.allowed and v.message and v.message.isprintable(), obj
    # and garbage among the cluster's objects is skipped
    junk: list[Any] = [None, 5, {"metadata": {"name": 3}}, {"spec": "x"}]
    v = decide(parse_review(review(ALLOWED[0])), junk, junk + EXISTING, SETTINGS, NOW)
    assert v.allowed


# the agent, with admission off -----------------------------------------------------------


def test_without_admission_the_agents_plan_refuses_the_same_peers() -> None:
    nodes = {n.name: n for n in (node_from_object(o)[0] for o in NODES) if n is not None}
    peers = {}
    for _, obj, _ in REFUSED[:8]:
        p, problems = peer_from_object(obj)
        assert p is not None and not problems
        peers[p.name] = p
    peers.update({p.name: p for p in (peer_from_object(o)[0] for o in EXISTING) if p})
    for obj in ALLOWED:
        p = peer_from_object(obj)[0]
        assert p is not None
        peers[p.name] = p
    facts = LocalFacts(private_key=ME, now=float(NOW), underlay_mtu=1500)
    settings = Settings(hostname="a1", service_cidrs=SETTINGS.service_cidrs)
    out = plan(ClusterView(nodes, peers), facts, settings)
    refused = {(p.name, p.field) for p in out.problems if p.kind == "Peer"}
    for _, obj, field in REFUSED[:8]:
        assert (obj["metadata"]["name"], field) in refused
    assert out.topology is not None
    kept = {str(p.public_key) for p in out.topology.peers}
    assert key_for("p-ok") in kept and key_for("p-ok6") in kept and key_for("laptop") in kept
    assert key_for("p-overlap") not in kept and key_for("p-pods") not in kept
    # the unreadable ones (bad CIDR, bad key) the reader refuses, as the webhook does
    for _, obj, field in REFUSED[8:]:
        p, problems = peer_from_object(obj)
        assert p is None and problems[0].field == field


# the HTTPS server ------------------------------------------------------------------------


class FakeCluster:
    def __init__(self) -> None:
        self.fail = False

    def __call__(self) -> tuple[list[Any], list[Any]]:
        if self.fail:
            raise RuntimeError("API server down")
        return NODES, EXISTING


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Webhook, ssl.SSLContext, FakeCluster]]:
    certs = self_signed(["kilo-peer-validation.kube-system.svc", "127.0.0.1"])
    cluster = FakeCluster()
    hook = Webhook(Config(("127.0.0.1", 0), certs, cluster, SETTINGS, request_timeout=2))
    hook.start()
    try:
        with tempfile.TemporaryDirectory() as d:
            ca = Path(d) / "ca.crt"
            ca.write_bytes(certs.ca_pem)
            ctx = ssl.create_default_context(cafile=str(ca))
        yield hook, ctx, cluster
    finally:
        hook.stop()


def post(
    served: tuple[Webhook, ssl.SSLContext, FakeCluster],
    body: bytes,
    path: str = "/validate",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    hook, ctx, _ = served
    conn = http.client.HTTPSConnection("127.0.0.1", hook.port, context=ctx, timeout=5)
    try:
        h = {"Content-Type": "application/json"} if headers is None else headers
        conn.request("POST", path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_server_answers_reviews(served: Any) -> None:
    status, body = post(served, review(REFUSED[0][1], uid="r1"))
    assert status == 200
    out = json.loads(body)["response"]
    assert out["uid"] == "r1" and not out["allowed"]
    assert out["status"]["message"].startswith("spec.allowedIPs: 10.5.0.7/32")
    status, body = post(served, review(ALLOWED[0]), path="/validate-peer")
    assert status == 200 and json.loads(body)["response"]["allowed"] is True
    registry = served[0].metrics.registry
    labels = {"operation": "CREATE", "response": "denied"}
    assert (registry.get_sample_value("admission_requests_total", labels) or 0) >= 1


def test_kg_webhook_is_the_webhook(capsys: pytest.CaptureFixture[str]) -> None:
    from kilo.cli import kg

    with pytest.raises(SystemExit) as e:
        kg.main(["webhook", "--subnet", "not-a-cidr"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("kg webhook: ")
    with pytest.raises(SystemExit):
        kg.main(["webhook", "--help"])
    assert "usage: kg webhook" in capsys.readouterr().out


@pytest.mark.parametrize("body", GARBAGE[:-1], ids=range(len(GARBAGE) - 1))
def test_the_server_answers_garbage_with_400(served: Any, body: bytes) -> None:
    assert post(served, body)[0] == 400


def test_the_server_refuses_what_it_cannot_read(served: Any) -> None:
    assert post(served, review(ALLOWED[0]), headers={"Content-Type": "text/plain"})[0] == 415
    assert post(served, review(ALLOWED[0]), path="/other")[0] == 404
    hook, ctx, _ = served
    # a Content-Length over the limit is refused before the body is read
    conn = http.client.HTTPSConnection("127.0.0.1", hook.port, context=ctx, timeout=5)
    try:
        conn.putrequest("POST", "/validate")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(MAX_REVIEW_BYTES + 1))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    conn = http.client.HTTPSConnection("127.0.0.1", hook.port, context=ctx, timeout=5)
    try:
        conn.putrequest("POST", "/validate")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        assert conn.getresponse().status == 411
    finally:
        conn.close()


def test_the_cluster_unread_is_a_500_for_the_failure_policy(served: Any) -> None:
    served[2].fail = True
    try:
        status, body = post(served, review(ALLOWED[0]))
        assert status == 500 and b"API server down" in body
        status, _ = post(served, review(ALLOWED[0], operation="DELETE"))
        assert status == 200  # a DELETE needs no cluster
    finally:
        served[2].fail = False


def test_broken_clients_do_not_stop_the_server(served: Any) -> None:
    hook, ctx, _ = served
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\xff" + b"\x00" * 50, b""):
        with socket.create_connection(("127.0.0.1", hook.port), timeout=5) as s:
            s.sendall(junk)
    # a client that sends less than its Content-Length is cut off by the timeout
    with socket.create_connection(("127.0.0.1", hook.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            s.sendall(b"Content-Length: 100\r\n\r\n{")
            s.settimeout(5)
            assert s.recv(100) == b""  # closed after the request timeout (2 s here)
    status, body = post(served, review(ALLOWED[0]))
    assert status == 200 and json.loads(body)["response"]["allowed"]


def test_request_fields_are_kept() -> None:
    req = parse_review(review(ALLOWED[0], operation="UPDATE", old=ALLOWED[0], uid="z"))
    assert req == Request("z", "UPDATE", True, ALLOWED[0], ALLOWED[0])
