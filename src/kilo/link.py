"""``kgctl link``: two clusters kept linked. Each cluster's current leaders are exported as Peers
into the other (what the seed's loop of ``kgctl showconf node --as-peer | kubectl apply`` does
once), and kept current as leaders, keys and endpoints change: a pass lists the source cluster,
computes the Peers its segments make, and creates, updates or deletes the Peers this link owns
in the target. A Peer it owns carries the label ``kilo.squat.ai/linked-from: SOURCE``; a Peer
without it is never touched, even when it has the name the link would use (that is reported).

Pure: ``exported_peers`` (cluster -> desired Peers) and ``changes`` (desired + owned -> what to
write). The passes and the API calls are in ``kilo.cli.kgctl_link``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kilo.keys import is_zero
from kilo.mesh import ClusterState, Options, mesh_topology
from kilo.model import Prefix
from kilo.translate import peer_object
from kilo.wireguard import WgPeer

LINK_LABEL = "kilo.squat.ai/linked-from"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")  # a short DNS label (fullmatch)
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

Obj = dict[str, Any]


def check_cluster_name(name: str) -> None:
    if not _LABEL.fullmatch(name):
        raise ValueError(
            f"cluster name {name!r}: expected a DNS label of at most 32 characters "
            "(lowercase letters, digits, '-')"
        )


def peer_name(source: str, node: str) -> str | None:
    """The Peer a source cluster's leader becomes in the target: ``SOURCE-NODE`` (None if that
    is no valid object name)."""
    name = f"{source}-{node}"
    return name if _SUBDOMAIN.fullmatch(name) and ".." not in name else None


def exported_peers(
    state: ClusterState,
    opts: Options,
    now: int,
    source: str,
    extra_ips: Sequence[Prefix] = (),
    carrier: str | None = None,
) -> tuple[dict[str, Obj], list[str]]:
    """The Peers the source cluster's segments make (one per leader, with the segment's allowed
    IPs), by name, and warnings for the segments that could not be exported. ``extra_ips``
    (e.g. the source's service CIDR) go on one of them, the carrier: ``carrier`` (the Peer that
    carries them now) while it is still exported, else the first by name. WireGuard routes a
    prefix to one peer only; on every leader they would be refused as overlaps on all but one.
    When the carrier's leader goes, the prefixes move to another with the next pass."""
    t = mesh_topology(state, opts, now)
    made: dict[str, tuple[WgPeer, Any]] = {}
    warnings: list[str] = []
    for s in t.segments:
        leader = s.hostnames[s.leader]
        name = peer_name(source, leader)
        if name is None:
            warnings.append(f"node {leader!r}: {source}-{leader} is no valid Peer name; skipped")
            continue
        if s.key is None or is_zero(s.key) or s.endpoint is None:
            warnings.append(f"node {leader!r} has no key or endpoint; not exported")
            continue
        made[name] = (WgPeer(public_key=s.key, allowed_ips=list(s.allowed_ips)), s.endpoint)
    if made and extra_ips:
        chosen = carrier if carrier in made else sorted(made)[0]
        made[chosen][0].allowed_ips += list(extra_ips)
    out: dict[str, Obj] = {}
    for name, (p, endpoint) in sorted(made.items()):
        p.deduplicate_ips()
        obj = peer_object(name, p.public_key, p.allowed_ips, endpoint)
        obj["metadata"]["labels"] = {LINK_LABEL: source}
        out[name] = obj
    return out, warnings


def carrier_of(owned: Sequence[Mapping[str, Any]], extra_ips: Sequence[Prefix]) -> str | None:
    """The owned Peer whose allowed IPs hold every one of ``extra_ips`` (the current carrier)."""
    want = {str(p) for p in extra_ips}
    if not want:
        return None
    for o in owned:
        if not isinstance(o, Mapping):
            continue
        spec = o.get("spec")
        ips = spec.get("allowedIPs") if isinstance(spec, Mapping) else None
        if isinstance(ips, list) and want <= {str(x) for x in ips}:
            name = _meta(o).get("name")
            if isinstance(name, str):
                return name
    return None


@dataclass
class Changes:
    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)  # with the owned object's resourceVersion
    delete: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def changes(desired: Mapping[str, Obj], owned: Sequence[Mapping[str, Any]], source: str) -> Changes:
    """What to write in the target so that the Peers labelled as this source's are ``desired``.
    ``owned`` is what the target lists under the label (anything else is ignored)."""
    out = Changes()
    have: dict[str, Mapping[str, Any]] = {}
    for o in owned:
        if not isinstance(o, Mapping):
            continue
        m = _meta(o)
        labels = m.get("labels")
        name = m.get("name")
        if isinstance(name, str) and isinstance(labels, Mapping):
            if labels.get(LINK_LABEL) == source:
                have[name] = o
    for name, want in sorted(desired.items()):
        cur = have.get(name)
        if cur is None:
            out.create.append(want)
        elif cur.get("spec") != want["spec"]:
            update = {**want, "metadata": {**want["metadata"]}}
            update["metadata"]["resourceVersion"] = str(_meta(cur).get("resourceVersion", ""))
            out.update.append(update)
    for name, cur in sorted(have.items()):
        if name not in desired:
            out.delete.append((name, str(_meta(cur).get("uid", ""))))
    return out
