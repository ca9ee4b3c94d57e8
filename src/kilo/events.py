"""Kubernetes Events for the problems the agent finds in Nodes and Peers (pure).

A problem (``kilo.model.Problem``: a value that could not be read, a claim that was refused)
becomes a Warning Event on the offending object, as ``kubectl describe node|peer`` shows them:

- ``involvedObject``: the Node (``v1``; its uid is its name, as the kubelet reports, which
  ``kubectl describe node`` searches for) or the Peer (``kilo.squat.ai/v1alpha1``; the writer
  fills in its uid). Both are cluster-scoped, so the Event lives in namespace ``default``, as
  the kubelet's Node events do. Problems of other kinds (a Location, a Lease) have no object
  to attach to and make no Event.
- ``reason``: ``ClaimRefused`` (the agent refused what the object claims: a key, a pod CIDR,
  an allowed IP that another object owns or that the policy forbids), ``ClaimConflict`` (a
  claim another object holds first; this one is ignored), ``UnreadableObject`` (the object as a
  whole could not be read) or ``InvalidValue`` (a value that could not be read).
- ``message``: ``FIELD=VALUE: WHY`` (``WHY`` ends in what was done: ``ignored``, ``refused``),
  with control and other unprintable characters escaped, at most 1 KiB of UTF-8.
- ``source``: component ``kilo``, host the reporting node.
- ``metadata.name``: the object's name and a digest of (kind, name, field, value, why), so a
  repeat of the same problem, by this agent or another, updates one Event (its ``count`` and
  ``lastTimestamp``) instead of making a new one.

``Told`` decides which problems are due to be told: each at most once in ``REPEAT_SECONDS``,
so an object that stays bad costs no request at every reconcile but its Event is refreshed
while the problem lasts (Events expire, by default an hour after their last update). A fixed
object is told nothing more; one that breaks again is told once the last telling is that old.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kilo.model import Problem

#: Where Events about cluster-scoped objects go (as the kubelet's about its Node).
NAMESPACE = "default"
COMPONENT = "kilo"
#: The API server's limit on an Event's note (events.k8s.io), kept for core Events too.
MAX_MESSAGE_BYTES = 1024
#: A problem that lasts is told again this often (keeps its Event from expiring).
REPEAT_SECONDS = 1800.0
MAX_NAME = 253  # a DNS subdomain
DIGEST_CHARS = 16

INVOLVED: dict[str, str] = {"Node": "v1", "Peer": "kilo.squat.ai/v1alpha1"}  # kind -> apiVersion

Obj = dict[str, Any]
Key = tuple[str, str, str, str, str]

_LABEL_BAD = re.compile(r"[^a-z0-9-]+")
_ELLIPSIS = "…"


@dataclass(frozen=True)
class ProblemEvent:
    """What one Event says: where it goes and what it tells."""

    name: str  # metadata.name: deterministic, the same for the same problem
    namespace: str
    api_version: str  # of the involved object
    kind: str
    object_name: str
    uid: str  # of the involved object; "" if unknown (the writer may look it up)
    reason: str
    message: str
    host: str
    type: str = "Warning"

    def body(self, now: float, count: int = 1) -> Obj:
        """The Event as created (``now`` in Unix seconds)."""
        stamp = timestamp(now)
        involved = {"apiVersion": self.api_version, "kind": self.kind, "name": self.object_name}
        if self.uid:
            involved["uid"] = self.uid
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "involvedObject": involved,
            "reason": self.reason,
            "message": self.message,
            "type": self.type,
            "source": {"component": COMPONENT, "host": self.host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.host,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": count,
        }


def key(p: Problem) -> Key:
    """What makes two reports the same problem."""
    return (p.kind, p.name, p.field, p.value, p.reason)


def timestamp(now: float) -> str:
    """A ``metav1.Time``: RFC 3339 in seconds, UTC."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def escaped(text: str) -> str:
    """``text`` with every unprintable character (newlines, escapes, bidi controls) as a
    Python escape (``\\n``, ``\\x1b``, ``\\u202e``); printable text is left as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def bounded(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, at a character, marked with an
    ellipsis where it was cut."""
    if len(text.encode()) <= limit:
        return text
    room = limit - len(_ELLIPSIS.encode())
    out, used = [], 0
    for c in text:
        n = len(c.encode())
        if used + n > room:
            break
        out.append(c)
        used += n
    return "".join(out) + _ELLIPSIS


def reason_of(p: Problem) -> str:
    """The Event's reason: what kind of problem this is, from what the reader said."""
    why = p.reason
    if p.field in ("", "object") and why.startswith(("unreadable", "could not be read")):
        return "UnreadableObject"
    if why.endswith("; refused"):
        return "ClaimRefused"
    if why.endswith("; ignored") and why.startswith(
        ("overlaps ", "lies in ", "is ", "already claimed ")
    ):
        return "ClaimConflict"
    return "InvalidValue"


def message_of(p: Problem) -> str:
    """``FIELD=VALUE: WHY`` (the value quoted as kgctl's warnings quote it), escaped, bounded."""
    text = f"{p.field}={p.value!r}: {p.reason}" if p.field else p.reason
    return bounded(escaped(text))


def event_name(p: Problem) -> str:
    """``<object>.<digest>``: a valid DNS subdomain, the same for the same problem."""
    digest = hashlib.sha256(json.dumps(key(p)).encode()).hexdigest()[:DIGEST_CHARS]
    labels = [_LABEL_BAD.sub("-", part).strip("-") for part in p.name.lower().split(".")]
    stem = ".".join(part for part in labels if part)[: MAX_NAME - DIGEST_CHARS - 1]
    stem = ".".join(part.strip("-") for part in stem.split(".") if part.strip("-"))
    return f"{stem or COMPONENT}.{digest}"


def problem_event(p: Problem, host: str) -> ProblemEvent | None:
    """The Event telling ``p`` on its object, reported by node ``host``; None if it has no
    object an Event can name (another kind, no name)."""
    api_version = INVOLVED.get(p.kind)
    if api_version is None or not p.name or len(p.name) > MAX_NAME or not p.name.isprintable():
        return None
    return ProblemEvent(
        name=event_name(p),
        namespace=NAMESPACE,
        api_version=api_version,
        kind=p.kind,
        object_name=p.name,
        uid=p.name if p.kind == "Node" else "",
        reason=reason_of(p),
        message=message_of(p),
        host=host,
    )


class Told:
    """When each problem was last told. A problem is due if it was not told in the last
    ``repeat_after`` seconds; what was told longer ago is forgotten, so the memory holds only
    the problems of that span. (Not forgetting a problem as soon as a plan lacks it keeps a plan
    that stops early, without the refusals, from telling them all again.)"""

    def __init__(self, repeat_after: float = REPEAT_SECONDS) -> None:
        self.repeat_after = repeat_after
        self._at: dict[Key, float] = {}

    def due(self, problems: Iterable[Problem], now: float) -> list[Problem]:
        """The problems to tell now, of all that there are now; they count as told."""
        self._at = {k: t for k, t in self._at.items() if 0 <= now - t < self.repeat_after}
        out = []
        for p in problems:
            k = key(p)
            if k not in self._at:
                self._at[k] = now
                out.append(p)
        return out

    def events(self, problems: Iterable[Problem], now: float, host: str) -> list[ProblemEvent]:
        """The Events due now (see ``due``), told by node ``host``."""
        out = []
        for p in self.due(problems, now):
            ev = problem_event(p, host)
            if ev is not None:
                out.append(ev)
        return out
