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
from kilo.model import Node, Peer, Prefix, Problem, host_prefix
from kilo.prefixes import net_key
from kilo.translate import INTERNAL_IP, KEY


@dataclass(frozen=True)
class PeerPolicy:
    """What the operator allows beyond the defaults."""

    allowed_ranges: tuple[Prefix, ...] = ()  # claims inside these are always the Peers' to make


def _inside(a: Prefix, ranges: Sequence[Prefix]) -> bool:
    return any(a.version == r.version and a.network.subnet_of(r.network) for r in ranges)  # type: ignore[arg-type]


def _protected(
    nodes: Iterable[Node], wireguard_subnet: Prefix, service_cidrs: Sequence[Prefix]
) -> list[tuple[Prefix, str]]:
    out: list[tuple[Prefix, str]] = [(wireguard_subnet, "WireGuard subnet")]
    out += [(c, "service CIDR") for c in service_cidrs]
    for n in nodes:
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
    return out


def _age(created: str, name: str) -> tuple[str, str]:
    return (created or "~", name)  # without a creation time: after every object that has one


def authorise_nodes(nodes: Mapping[str, Node], me: str) -> tuple[dict[str, Node], list[Problem]]:
    """The Nodes as they may claim: a node may not use an older node's public key (it is
    refused whole), its pod CIDR may not overlap an older node's (refused: without one the
    node is not ready), nor its internal IP be an older node's (read as absent). Older means
    created earlier, then sorted first by name. ``me``, the local node, is never refused in its
    own plan (the problem is reported; the other nodes refuse it)."""
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
    every refusal."""
    refusals: list[Problem] = []
    node_keys = {bytes(n.key): n.name for n in nodes.values() if n.key is not None}
    guarded = PrefixIndex()
    what: list[str] = []
    for prefix, why in _protected(nodes.values(), wireguard_subnet, service_cidrs):
        guarded.add(prefix, len(what))
        what.append(why)
    claimed = PrefixIndex()
    owners: list[tuple[str, Prefix]] = []
    keys: dict[bytes, str] = {}
    out: dict[str, Peer] = {}
    for p in sorted(peers.values(), key=lambda p: _age(p.created, p.name)):
        key = bytes(p.public_key or b"")
        if key in node_keys or key in keys:
            owner = f"node {node_keys[key]}" if key in node_keys else f"Peer {keys[key]}"
            refusals.append(
                Problem(
                    "Peer",
                    p.name,
                    "spec.publicKey",
                    str(p.public_key),
                    f"is {owner}'s key; refused",
                )
            )
            continue
        keys[key] = p.name
        keep: list[Prefix] = []
        seen: set[tuple[int, int, int]] = set()
        for a in p.allowed_ips:
            reason = None
            if net_key(a) in seen:
                continue
            if not _inside(a, policy.allowed_ranges):
                if a.network.prefixlen == 0:
                    reason = "is a default route"
                else:
                    hit = guarded.overlapping(a)
                    if hit is not None:
                        reason = f"overlaps the cluster's {what[hit]}"
            if reason is None:
                hit = claimed.overlapping(a)
                if hit is not None and owners[hit][0] != p.name:
                    other, theirs = owners[hit]
                    reason = f"overlaps {theirs.network} of the older Peer {other}"
            if reason is not None:
                refusals.append(
                    Problem("Peer", p.name, "spec.allowedIPs", str(a), f"{reason}; refused")
                )
                continue
            seen.add(net_key(a))
            claimed.add(a, len(owners))
            owners.append((p.name, a))
            keep.append(a)
        if keep:
            out[p.name] = (
                p if len(keep) == len(p.allowed_ips) else replace(p, allowed_ips=tuple(keep))
            )
    return out, refusals
