"""The webhook's decision on a Peer (pure): an ``AdmissionReview`` in, its answer out.

The webhook (``kg webhook``, ``kilo.webhook``) refuses a Peer the agents would refuse, by the
same code: the candidate is read by ``translate.peer_from_object`` (any problem refuses it),
then ``authorise.authorise_peers`` runs on the cluster's Peers with the candidate added, against
the Nodes as ``authorise.authorise_nodes`` lets them claim. The candidate refused, or an
existing Peer refused only because the candidate came, is a denial naming the field. A CREATE
is the newest Peer; an UPDATE keeps the object's creation time (an old Peer that is changed to
claim a newer Peer's range would take it, so that is refused too).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kilo.authorise import PeerPolicy, authorise_nodes, authorise_peers
from kilo.model import DEFAULT_SUBNET, REGION_LABEL, Node, Peer, Prefix, Problem
from kilo.strict import load_json
from kilo.translate import node_from_object, object_name, peer_from_object

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
PEER_GROUP = "kilo.squat.ai"
#: The largest AdmissionReview read: an object and its old version (etcd keeps at most
#: 1.5 MiB each) and the request's fields.
MAX_REVIEW_BYTES = 4 * 1024 * 1024
#: managedFields nest as deep as the object's fields, a few levels below the review.
MAX_REVIEW_DEPTH = 40
MAX_MESSAGE = 1024


class BadReview(ValueError):
    """The body is no AdmissionReview v1 request (answered with HTTP 400)."""


@dataclass(frozen=True)
class AdmissionSettings:
    """What the agents are told too: give the webhook the agents' flags."""

    wireguard_subnet: Prefix = DEFAULT_SUBNET
    service_cidrs: tuple[Prefix, ...] = ()
    policy: PeerPolicy = field(default_factory=PeerPolicy)
    topology_label: str = REGION_LABEL


@dataclass(frozen=True)
class Request:
    uid: str
    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    is_peer: bool  # the request is for a kilo.squat.ai Peer
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None

    @property
    def needs_cluster(self) -> bool:
        """Whether the decision reads the cluster's Nodes and Peers."""
        return self.is_peer and self.operation in ("CREATE", "UPDATE")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()


def parse_review(body: bytes) -> Request:
    """The request of an AdmissionReview v1 body; ``BadReview`` says what is wrong."""
    if len(body) > MAX_REVIEW_BYTES:
        raise BadReview(f"body of {len(body)} bytes, over the limit of {MAX_REVIEW_BYTES}")
    try:
        text = body.decode("utf-8")
        review = load_json(text, MAX_REVIEW_BYTES, MAX_REVIEW_DEPTH)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadReview(f"not JSON: {_clean(str(e), 200)}") from None
    if not isinstance(review, dict):
        raise BadReview("not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise BadReview(f"only {KIND} of {API_VERSION} is supported")
    req = review.get("request")
    if not isinstance(req, dict):
        raise BadReview("no request")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 256 or not uid.isprintable():
        raise BadReview("request.uid: missing or not a printable string")
    operation = req.get("operation")
    if not isinstance(operation, str):
        raise BadReview("request.operation: missing or not a string")
    kind = req.get("kind")
    kind = kind if isinstance(kind, dict) else {}
    is_peer = kind.get("group") == PEER_GROUP and kind.get("kind") == "Peer"
    obj, old = req.get("object"), req.get("oldObject")
    if is_peer and operation in ("CREATE", "UPDATE") and not isinstance(obj, dict):
        raise BadReview("request.object: missing or not an object")
    return Request(
        uid=uid,
        operation=operation,
        is_peer=is_peer,
        object=obj if isinstance(obj, dict) else None,
        old_object=old if isinstance(old, dict) else None,
    )


def response(uid: str, verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview v1 answer."""
    out: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        out["status"] = {"code": 403, "reason": "Forbidden", "message": verdict.message}
    if verdict.warnings:
        out["warnings"] = list(verdict.warnings)
    return {"apiVersion": API_VERSION, "kind": KIND, "response": out}


def timestamp(now: float) -> str:
    """``now`` (Unix seconds) as the API server writes ``creationTimestamp``."""
    t = datetime.datetime.fromtimestamp(int(now), tz=datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _clean(text: str, limit: int = MAX_MESSAGE) -> str:
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def _read_problem(p: Problem) -> str:
    """A reader's problem: its reason quotes the value already (or must not: a key)."""
    return f"{p.field or 'spec'}: {p.reason}"


def _policy_problem(p: Problem) -> str:
    return f"{p.field}: {p.value} {p.reason}"


def read_nodes(node_objs: Iterable[Any], topology_label: str) -> dict[str, Node]:
    """The Nodes as every agent lets them claim (no node exempt)."""
    nodes: dict[str, Node] = {}
    for o in node_objs:
        n, _ = node_from_object(o, topology_label)
        if n is not None:
            nodes[n.name] = n
    authorised, _ = authorise_nodes(nodes, "")
    return authorised


def decide(
    req: Request,
    node_objs: Iterable[Any],
    peer_objs: Iterable[Any],
    settings: AdmissionSettings,
    now: float,
) -> Verdict:
    """Whether the Peer of ``req`` may be written, given the cluster's current objects."""
    if not req.needs_cluster or req.object is None:
        return Verdict(True)
    candidate, problems = peer_from_object(req.object)
    if problems or candidate is None:
        text = "; ".join(_read_problem(p) for p in problems) or "spec: not a valid Peer"
        return Verdict(False, _clean(text))
    if req.operation == "CREATE":
        created = timestamp(now)  # the newest Peer
    else:
        old = peer_from_object(req.old_object)[0] if req.old_object is not None else None
        created = candidate.created or (old.created if old else "") or timestamp(now)
    candidate = replace(candidate, created=created)
    if not candidate.ready():
        why = "no allowed IP or the zero key: the agents ignore it"
        return Verdict(True, warnings=(f"Peer {candidate.name}: {why}",))
    nodes = read_nodes(node_objs, settings.topology_label)
    others: dict[str, Peer] = {}
    for o in peer_objs:
        if object_name(o) == candidate.name:
            continue  # the version this request replaces
        p, _ = peer_from_object(o)
        if p is not None and p.ready():
            others[p.name] = p

    def refusals(peers: Mapping[str, Peer]) -> list[Problem]:
        return authorise_peers(
            peers, nodes, settings.wireguard_subnet, settings.service_cidrs, settings.policy
        )[1]

    after = refusals(others | {candidate.name: candidate})
    mine = [p for p in after if p.name == candidate.name]
    if mine:
        return Verdict(False, _clean("; ".join(_policy_problem(p) for p in mine)))
    before = set(refusals(others))
    taken = [p for p in after if p not in before]
    if taken:
        text = "; ".join(
            f"{p.field}: takes what the newer Peer {p.name} holds "
            f"(its {p.value} would be refused: {p.reason.removesuffix('; refused')})"
            for p in taken
        )
        return Verdict(False, _clean(text))
    return Verdict(True)
