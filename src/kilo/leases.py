"""A location's leader Lease (``coordination.k8s.io/v1``), read and written as data (pure).

In the native liveness mode each location with more than one node has one Lease naming its
leader (``spec.holderIdentity``). Its name is derived from the location's segment key, which
the Lease also carries as an annotation; a Lease whose annotation does not hash to its name,
or whose fields cannot be read, is ignored (a problem, never an exception).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kilo.model import Problem, is_dns1123_subdomain
from kilo.translate import ANNOTATION_PREFIX

#: The Lease's label (what the agents watch) and the annotation naming its location.
LEASE_LABEL = ANNOTATION_PREFIX + "leader-lease"
LEASE_LOCATION = ANNOTATION_PREFIX + "location"
LEASE_NAME_PREFIX = "kilo-leader-"
#: How long a Lease holds without renewal, and how often its holder renews it.
LEASE_DURATION_SECONDS = 180
RENEW_PERIOD_SECONDS = 60
_MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
MAX_LOCATION_LENGTH = 253


@dataclass(frozen=True)
class Lease:
    """A location's leader as the cluster holds it."""

    name: str
    location: str  # the segment key
    holder: str
    renewed: float  # Unix seconds
    duration: int  # seconds
    transitions: int = 0
    resource_version: str = ""

    def valid(self, now: float, credit: float = 0.0) -> bool:
        """Renewed recently enough (``credit``: seconds not held against it, an API outage)."""
        return now - credit < self.renewed + self.duration


def lease_name(location: str) -> str:
    """The Lease's name for a segment key: a DNS-1123 name whatever the location is called."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return LEASE_NAME_PREFIX + digest


def parse_microtime(text: str) -> float:
    """Kubernetes' MicroTime (RFC 3339 with microseconds) as Unix seconds."""
    if not _MICROTIME.match(text):
        raise ValueError("not an RFC 3339 time")
    if "." in text:  # Python reads at most 6 fraction digits
        head, rest = text.split(".", 1)
        digits = re.match(r"\d+", rest)
        frac = digits.group(0) if digits else ""
        text = f"{head}.{frac[:6].ljust(6, '0')}{rest[len(frac) :]}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def microtime(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_from_object(obj: Mapping[str, Any]) -> tuple[Lease | None, list[Problem]]:
    """A Lease as the agents read it; None (with the problem) if it is not one of ours or
    cannot be read. Never raises."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name")
    name = name if isinstance(name, str) else ""

    def bad(field: str, value: object, why: str) -> tuple[None, list[Problem]]:
        return None, [Problem("Lease", name[:64], field, repr(value)[:80], why)]

    ann = meta.get("annotations")
    location = ann.get(LEASE_LOCATION) if isinstance(ann, Mapping) else None
    if not isinstance(location, str) or not 0 < len(location) <= MAX_LOCATION_LENGTH:
        return bad(f"metadata.annotations[{LEASE_LOCATION}]", location, "no location")
    if name != lease_name(location):
        return bad("metadata.name", name, f"not the Lease of location {location!r}")
    spec = obj.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    holder = spec.get("holderIdentity")
    if not isinstance(holder, str) or not is_dns1123_subdomain(holder):
        return bad("spec.holderIdentity", holder, "not a node name")
    duration = spec.get("leaseDurationSeconds")
    if not isinstance(duration, int) or isinstance(duration, bool) or not 0 < duration <= 86400:
        return bad("spec.leaseDurationSeconds", duration, "not a number of seconds in (0, 86400]")
    renew = spec.get("renewTime") or spec.get("acquireTime")
    try:
        renewed = parse_microtime(renew) if isinstance(renew, str) else None
    except ValueError:
        renewed = None
    if renewed is None:
        return bad("spec.renewTime", renew, "not an RFC 3339 time")
    transitions = spec.get("leaseTransitions")
    rv = meta.get("resourceVersion")
    return (
        Lease(
            name=name,
            location=location,
            holder=holder,
            renewed=renewed,
            duration=duration,
            transitions=transitions if isinstance(transitions, int) and transitions >= 0 else 0,
            resource_version=rv if isinstance(rv, str) else "",
        ),
        [],
    )


def lease_object(
    location: str, holder: str, now: float, namespace: str, previous: Lease | None = None
) -> dict[str, Any]:
    """The Lease to write: ``holder`` leads ``location`` from ``now``. With ``previous`` (as
    read), an update of that version (the API server refuses it if the Lease changed since:
    two agents can never both win); without, a create."""
    if not is_dns1123_subdomain(holder):
        raise ValueError(f"{holder!r} is not a node name")
    if not 0 < len(location) <= MAX_LOCATION_LENGTH or any(ord(c) < 32 for c in location):
        raise ValueError("not a location a Lease can carry")
    same = previous is not None and previous.holder == holder
    transitions = 0 if previous is None else previous.transitions + (0 if same else 1)
    spec: dict[str, Any] = {
        "holderIdentity": holder,
        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
        "renewTime": microtime(now),
        "leaseTransitions": transitions,
    }
    if not same:
        spec["acquireTime"] = microtime(now)
    meta: dict[str, Any] = {
        "name": lease_name(location),
        "namespace": namespace,
        "labels": {LEASE_LABEL: "true"},
        "annotations": {LEASE_LOCATION: location},
    }
    if previous is not None:
        meta["resourceVersion"] = previous.resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": spec,
    }
