"""Which Peers, and which of their allowed IPs, the agent lets into the mesh (pure).

Kilo checks a Peer's syntax only; whoever may write a Peer could then take the cluster's traffic.
The agent applies a policy with safe defaults before it builds the topology:

- a Peer may not use a node's public key, nor the key of an older Peer (the whole Peer is
  refused);
- an allowed IP may not be a default route, nor overlap (equal, lie inside, or contain) the
  cluster's own addresses: the WireGuard subnet, the service CIDRs, the nodes' pod CIDRs,
  internal IPs, endpoints and allowed-location IPs — unless it lies inside one of the operator's
  allowed ranges (``kg --peer-allowed-ranges``), which are then the Peers' to claim;
- Peers' allowed IPs may not overlap each other: the older Peer (creation time, then name)
  keeps its claim, the newer one's is refused.

Each refusal is a ``Problem`` naming the Peer, the field and the value. ``kgctl`` shows the
mesh as Kilo computes it and does not apply this policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from kilo.claims import PrefixIndex
from kilo.memo import Last, Same
from kilo.model import Node, Peer, Prefix, Problem, host_prefix
from kilo.prefixes import net_key, span
from kilo.translate import INTERNAL_IP, KEY


@dataclass(frozen=True)
class PeerPolicy:
    """What the operator allows beyond the defaults."""

    allowed_ranges: tuple[Prefix, ...] = ()  # claims inside these are always the Peers' to make


def _inside(a: Prefix, ranges: Sequence[Prefix]) -> bool:
    return any(a.version == r.version and a.network.subnet_of(r.network) for r in ranges)  # type: ignore[arg-type]


def _node_guards(n: Node) -> tuple[tuple[Prefix, str], ...]:
    """What of node ``n`` no Peer may claim, each with what it is; kept with the node (its
    ``__dict__``, as ``kilo.prefixes`` keeps a prefix's integers; a check-in's copy keeps it)."""
    memo: tuple[tuple[Prefix, str], ...] | None = n.__dict__.get("_kilo_guards")
    if memo is not None:
        return memo
    out: list[tuple[Prefix, str]] = []
    if n.subnet is not None:
        out.append((n.subnet, f"node {n.name}'s pod CIDR"))
    if n.internal_ip is not None:
        out.append((host_prefix(n.internal_ip.ip), f"node {n.name}'s internal IP"))
        out.append((n.internal_ip, f"node {n.name}'s private network"))
    if n.endpoint is not None and n.endpoint.ip is not None:
        out.append((host_prefix(n.endpoint.ip), f"node {n.name}'s endpoint"))
    if n.wireguard_ip is not None:
        out.append((host_prefix(n.wireguard_ip.ip), f"node {n.name}'s WireGuard IP"))
    # Allowed-location IPs are not guarded here: as in Kilo, one that overlaps a Peer's claim is
    # the one refused (``claims.AllowedLocationIPFilter``), so no Node can take a Peer's range.
    memo = n.__dict__["_kilo_guards"] = tuple(out)
    return memo


@dataclass
class _Guarded:
    """The protected prefixes indexed, and each one's verdict on a claim once asked."""

    index: PrefixIndex
    what: list[str]
    verdicts: dict[tuple[int, int, int], int | None]


#: The last protected index and what it was made of: a plan after a Peer changed, or a node
#: only checked in, uses it again (pure memoisation: equal inputs, the same index).
_GUARDED: Last[object, _Guarded] = Last()


def _guarded(
    nodes: Iterable[Node], wireguard_subnet: Prefix, service_cidrs: Sequence[Prefix]
) -> _Guarded:
    key = (wireguard_subnet, tuple(service_cidrs), tuple(_node_guards(n) for n in nodes))
    kept = _GUARDED.get(key)
    if kept is not None:
        return kept
    g = _Guarded(PrefixIndex(), [], {})
    entries = [(wireguard_subnet, "WireGuard subnet")]
    entries += [(c, "service CIDR") for c in service_cidrs]
    for guards in key[2]:
        entries += guards
    for prefix, why in entries:
        g.index.add(prefix, len(g.what))
        g.what.append(why)
    return _GUARDED.put(key, g)


def _verdict(g: _Guarded, a: Prefix) -> int | None:
    """Which protected prefix ``a`` overlaps (its rank), or None."""
    k = net_key(a)
    if k in g.verdicts:
        return g.verdicts[k]
    hit = g.verdicts[k] = g.index.overlapping(a)
    return hit


def _no_cross_claims(claims: Sequence[Sequence[Prefix]]) -> bool:
    """Whether no two claimants' prefixes overlap (one claimant's own may): one sorted sweep,
    since two CIDRs are either nested or apart."""
    spans = sorted((*span(a)[:2], -span(a)[2], who) for who, ips in enumerate(claims) for a in ips)
    stack: list[tuple[int, int, int]] = []  # (version, last address, owner) of open prefixes
    for v, lo, neg_hi, who in spans:
        while stack and (stack[-1][0] != v or stack[-1][1] < lo):
            stack.pop()
        if stack and stack[-1][2] != who:
            return False
        stack.append((v, -neg_hi, who))
    return True


def _age(created: str, name: str) -> tuple[str, str]:
    return (created or "~", name)  # without a creation time: after every object that has one


def _node_claims(n: Node) -> tuple[object, ...]:
    """All that ``authorise_nodes`` reads of ``n``; kept with the node as ``_node_guards``."""
    memo: tuple[object, ...] | None = n.__dict__.get("_kilo_claims")
    if memo is None:
        key = None if n.key is None else bytes(n.key)
        memo = n.__dict__["_kilo_claims"] = (n.name, n.created, key, n.subnet, n.internal_ip)
    return memo


#: The last nodes' verdicts and what they were made of (as ``_GUARDED``): which nodes are kept,
#: in order, which lose their internal IP, and the refusals.
_NODES: Last[object, tuple[list[tuple[str, bool]], list[Problem]]] = Last()


def authorise_nodes(nodes: Mapping[str, Node], me: str) -> tuple[dict[str, Node], list[Problem]]:
    """The Nodes as they may claim: a node may not use an older node's public key (it is
    refused whole), its pod CIDR may not overlap an older node's (refused: without one the
    node is not ready), nor its internal IP be an older node's (read as absent). Older means
    created earlier, then sorted first by name. ``me``, the local node, is never refused in its
    own plan (the problem is reported; the other nodes refuse it)."""
    key = (me, tuple(_node_claims(n) for n in nodes.values()))
    kept = _NODES.get(key)
    if kept is None:
        out, refusals = _authorise_nodes(nodes, me)
        verdicts = [
            (name, k.internal_ip is None and nodes[name].internal_ip is not None)
            for name, k in out.items()
        ]
        _NODES.put(key, (verdicts, refusals))
        return out, list(refusals)
    verdicts, refusals = kept
    out = {}
    for name, strip in verdicts:
        n = nodes[name]
        out[name] = replace(n, internal_ip=None) if strip else n
    return out, list(refusals)


def _authorise_nodes(nodes: Mapping[str, Node], me: str) -> tuple[dict[str, Node], list[Problem]]:
    refusals: list[Problem] = []
    keys: dict[bytes, str] = {}
    pods = PrefixIndex()
    pod_owners: list[str] = []
    internal: dict[tuple[int, int, int], str] = {}
    out: dict[str, Node] = {}
    for n in sorted(nodes.values(), key=lambda n: _age(n.created, n.name)):
        keep = n
        if n.key is not None:
            other = keys.get(bytes(n.key))
            if other is not None:
                refusals.append(
                    Problem(
                        "Node",
                        n.name,
                        f"metadata.annotations[{KEY}]",
                        str(n.key),
                        f"is node {other}'s key; refused",
                    )
                )
                if n.name != me:
                    continue
            else:
                keys[bytes(n.key)] = n.name
        if n.subnet is not None:
            hit = pods.overlapping(n.subnet)
            if hit is not None:
                refusals.append(
                    Problem(
                        "Node",
                        n.name,
                        "spec.podCIDR",
                        str(n.subnet),
                        f"overlaps node {pod_owners[hit]}'s pod CIDR; refused",
                    )
                )
                if n.name != me:
                    continue
            else:
                pods.add(n.subnet, len(pod_owners))
                pod_owners.append(n.name)
        if n.internal_ip is not None:
            ip = net_key(host_prefix(n.internal_ip.ip))
            other = internal.get(ip)
            if other is not None:
                refusals.append(
                    Problem(
                        "Node",
                        n.name,
                        f"metadata.annotations[{INTERNAL_IP}]",
                        str(n.internal_ip),
                        f"is node {other}'s internal IP; ignored",
                    )
                )
                if n.name != me:
                    keep = replace(keep, internal_ip=None)
            else:
                internal[ip] = n.name
        out[n.name] = keep
    return out, refusals


def authorise_peers(
    peers: Mapping[str, Peer],
    nodes: Mapping[str, Node],
    wireguard_subnet: Prefix,
    service_cidrs: Sequence[Prefix],
    policy: PeerPolicy,
) -> tuple[dict[str, Peer], list[Problem]]:
    """The Peers as the policy lets them in (a Peer left with no allowed IP is dropped), and
    every refusal, in the order of the Peers' ages and their allowed IPs.

    Each claim is tested against the cluster's addresses first. When no two Peers' remaining
    claims overlap (one sorted sweep finds out), that is the answer; otherwise every claim is
    also tested against the older Peers' claims kept so far (``_older_claims_win``)."""
    node_keys = {bytes(n.key): n.name for n in nodes.values() if n.key is not None}
    g = _guarded(nodes.values(), wireguard_subnet, service_cidrs)
    given = tuple(peers.values())
    key = (Same((g, *given)), policy, node_keys)
    kept = _PEERS.get(key)
    if kept is None:
        kept = _PEERS.put(key, _authorise_peers(given, node_keys, g, policy))
    admitted, refusals = kept
    return dict(admitted), list(refusals)


#: The last Peers authorised and what that was made of: a plan after a node changed (and not
#: the protected index) with the same Peers uses the answer again (pure memoisation).
_PEERS: Last[object, tuple[dict[str, Peer], list[Problem]]] = Last()


def _authorise_peers(
    peers: Sequence[Peer], node_keys: Mapping[bytes, str], g: _Guarded, policy: PeerPolicy
) -> tuple[dict[str, Peer], list[Problem]]:
    ordered = sorted(peers, key=lambda p: _age(p.created, p.name))
    refusals: list[Problem] = []
    candidates: list[tuple[Peer, list[Prefix]]] = []
    keys: dict[bytes, str] = {}
    for p in ordered:
        if _key_refused(p, node_keys, keys, refusals):
            continue
        keep, refused = _guarded_claims(p, g, policy)
        refusals += refused
        candidates.append((p, keep))
    if not _no_cross_claims([ips for _, ips in candidates]):
        return _older_claims_win(ordered, node_keys, g, policy)
    return _admitted(candidates), refusals


def _guarded_claims(p: Peer, g: _Guarded, policy: PeerPolicy) -> tuple[list[Prefix], list[Problem]]:
    """``p``'s allowed IPs that the cluster's addresses leave it (duplicates dropped), and the
    refusals; kept with the Peer for this protected index and policy (a plan after another
    Peer changed, or a check-in, asks again). The lists returned are not to be changed."""
    memo: tuple[_Guarded, PeerPolicy, list[Prefix], list[Problem]] | None = p.__dict__.get(
        "_kilo_claims"
    )
    if memo is not None and memo[0] is g and memo[1] == policy:
        return memo[2], memo[3]
    keep: list[Prefix] = []
    refused: list[Problem] = []
    seen: set[tuple[int, int, int]] = set()
    for a in p.allowed_ips:
        if net_key(a) in seen:
            continue
        reason = _guard_reason(a, g, policy)
        if reason is not None:
            refused.append(_refusal(p, a, reason))
            continue
        seen.add(net_key(a))
        keep.append(a)
    p.__dict__["_kilo_claims"] = (g, policy, keep, refused)
    return keep, refused


def _older_claims_win(
    ordered: Sequence[Peer], node_keys: Mapping[bytes, str], g: _Guarded, policy: PeerPolicy
) -> tuple[dict[str, Peer], list[Problem]]:
    """``authorise_peers`` when Peers' claims overlap: a claim is also refused when it overlaps
    one an older Peer kept (``ordered``: oldest first)."""
    refusals: list[Problem] = []
    candidates: list[tuple[Peer, list[Prefix]]] = []
    claimed = PrefixIndex()
    owners: list[tuple[str, Prefix]] = []
    keys: dict[bytes, str] = {}
    for p in ordered:
        if _key_refused(p, node_keys, keys, refusals):
            continue
        keep: list[Prefix] = []
        seen: set[tuple[int, int, int]] = set()
        for a in p.allowed_ips:
            if net_key(a) in seen:
                continue
            reason = _guard_reason(a, g, policy)
            if reason is None:
                hit = claimed.overlapping(a)
                if hit is not None and owners[hit][0] != p.name:
                    other, theirs = owners[hit]
                    reason = f"overlaps {theirs.network} of the older Peer {other}"
            if reason is not None:
                refusals.append(_refusal(p, a, reason))
                continue
            seen.add(net_key(a))
            claimed.add(a, len(owners))
            owners.append((p.name, a))
            keep.append(a)
        candidates.append((p, keep))
    return _admitted(candidates), refusals


def _key_refused(
    p: Peer, node_keys: Mapping[bytes, str], keys: dict[bytes, str], refusals: list[Problem]
) -> bool:
    """Whether ``p``'s key is a node's or an older Peer's (the refusal added); else it is
    recorded as ``p``'s."""
    key = bytes(p.public_key or b"")
    if key in node_keys or key in keys:
        owner = f"node {node_keys[key]}" if key in node_keys else f"Peer {keys[key]}"
        refusals.append(
            Problem(
                "Peer", p.name, "spec.publicKey", str(p.public_key), f"is {owner}'s key; refused"
            )
        )
        return True
    keys[key] = p.name
    return False


def _guard_reason(a: Prefix, g: _Guarded, policy: PeerPolicy) -> str | None:
    """Why the claim ``a`` may not be made whoever makes it, or None."""
    if _inside(a, policy.allowed_ranges):
        return None
    if a.network.prefixlen == 0:
        return "is a default route"
    hit = _verdict(g, a)
    return None if hit is None else f"overlaps the cluster's {g.what[hit]}"


def _refusal(p: Peer, a: Prefix, reason: str) -> Problem:
    return Problem("Peer", p.name, "spec.allowedIPs", str(a), f"{reason}; refused")


def _admitted(candidates: Iterable[tuple[Peer, list[Prefix]]]) -> dict[str, Peer]:
    out: dict[str, Peer] = {}
    for p, keep in candidates:
        if keep:
            out[p.name] = (
                p if len(keep) == len(p.allowed_ips) else replace(p, allowed_ips=tuple(keep))
            )
    return out
