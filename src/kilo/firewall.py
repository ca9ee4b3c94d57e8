"""The node's firewall as an nftables ruleset of our own table (pure).

Kilo's iptables rules, said in nftables: packets from the node's pods (with ``--cni``) and from
peers go through the ``kilo-nat`` chain, which returns (no NAT) for every address the mesh knows
(WireGuard IPs, segments' allowed IPs, peers, service CIDRs) and masquerades the rest. With
``--iptables-forward-rules`` a forward chain accepts the location's pod CIDRs, allowed-location
IPs and private IPs (leader) or the node's own pod CIDR (others).

Everything lives in one ``inet`` table (default ``kilo``), replaced in one transaction, so a
reconcile never leaves a half-written ruleset and never touches another table. Note that an
``accept`` in our forward chain does not override a ``drop`` in another table's chain: nftables
evaluates every base chain of a hook; Kilo's iptables rules, prepended to the shared FORWARD
chain, did override a later drop there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kilo.model import Prefix, host_prefix
from kilo.prefixes import addr_text, net_key
from kilo.topology import Topology

TABLE = "kilo"
NAT_CHAIN = "kilo-nat"


class Match(NamedTuple):
    field: str  # "saddr" or "daddr"
    prefix: Prefix


class FwRule(NamedTuple):
    """One rule (immutable; named tuples, as ``kilo.routes.Route``)."""

    chain: str
    verdict: str  # "return", "accept", "masquerade", "jump kilo-nat"
    match: Match | None = None
    comment: str = ""


@dataclass(frozen=True)
class BaseChain:
    name: str
    type: str  # "nat" or "filter"
    hook: str
    priority: int


@dataclass
class Ruleset:
    table: str = TABLE
    base_chains: list[BaseChain] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    rules: list[FwRule] = field(default_factory=list)
    _seen: set[tuple[str, str, object]] = field(default_factory=set, repr=False, compare=False)

    def add(self, chain: str, verdict: str, match: Match | None = None, comment: str = "") -> None:
        """Append a rule unless the same chain already has the same match and verdict."""
        key = (chain, verdict, None if match is None else (match.field, net_key(match.prefix)))
        if key not in self._seen:
            self._seen.add(key)
            self.rules.append(FwRule(chain, verdict, match, comment))

    def nft_json(self) -> dict[str, Any]:
        """One nft transaction: (re)create the table, then chains and rules
        (for ``nft -j -f -``)."""
        fam = "inet"
        cmds: list[dict[str, Any]] = [
            {"add": {"table": {"family": fam, "name": self.table}}},
            {"delete": {"table": {"family": fam, "name": self.table}}},
            {"add": {"table": {"family": fam, "name": self.table}}},
        ]
        for c in self.base_chains:
            cmds.append(
                {
                    "add": {
                        "chain": {
                            "family": fam,
                            "table": self.table,
                            "name": c.name,
                            "type": c.type,
                            "hook": c.hook,
                            "prio": c.priority,
                            "policy": "accept",
                        }
                    }
                }
            )
        for name in self.chains:
            cmds.append({"add": {"chain": {"family": fam, "table": self.table, "name": name}}})
        for r in self.rules:
            cmds.append(
                {
                    "add": {
                        "rule": {
                            "family": fam,
                            "table": self.table,
                            "chain": r.chain,
                            "expr": _expr(r),
                            **({"comment": r.comment} if r.comment else {}),
                        }
                    }
                }
            )
        return {"nftables": cmds}


def _expr(r: FwRule) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if r.match is not None:
        version, _, plen = net_key(r.match.prefix)
        proto = "ip" if version == 4 else "ip6"
        addr = addr_text(r.match.prefix)
        right: Any = (
            addr
            if plen == (32 if version == 4 else 128)
            else {"prefix": {"addr": addr, "len": plen}}
        )
        out.append(
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": proto, "field": r.match.field}},
                    "right": right,
                }
            }
        )
    if r.verdict.startswith("jump "):
        out.append({"jump": {"target": r.verdict.split(" ", 1)[1]}})
    elif r.verdict == "masquerade":
        out.append({"masquerade": None})
    else:
        out.append({r.verdict: None})
    return out


def ruleset(t: Topology, cni: bool, forward_rules: bool, table: str = TABLE) -> Ruleset:
    rs = Ruleset(table=table)
    rs.base_chains.append(BaseChain("postrouting", "nat", "postrouting", 100))
    rs.chains.append(NAT_CHAIN)
    if cni and t.subnet is not None:
        rs.add(
            "postrouting",
            f"jump {NAT_CHAIN}",
            Match("saddr", t.subnet),
            "Kilo: jump to KILO-NAT chain",
        )
    if cni and forward_rules:
        rs.base_chains.append(BaseChain("forward", "filter", "forward", 0))

        def forward(prefix: Prefix, what: str) -> None:
            rs.add(
                "forward", "accept", Match("saddr", prefix), f"Kilo: forward packets from {what}"
            )
            rs.add("forward", "accept", Match("daddr", prefix), f"Kilo: forward packets to {what}")

        own = t.local_segment()
        if t.leader and own is not None:
            for c in own.cidrs:
                if c is not None:
                    forward(c, "the pod subnet")
            for c in own.allowed_location_ips:
                forward(c, "allowed location IPs")
            for ip in own.private_ips or []:
                forward(host_prefix(ip), "private IPs")
        elif t.subnet is not None:
            forward(t.subnet, "the node's pod subnet")

    def no_nat(prefix: Prefix, what: str) -> None:
        rs.add(
            NAT_CHAIN,
            "return",
            Match("daddr", prefix),
            f"Kilo: do not NAT packets destined for {what}",
        )

    def jump(field: str, prefix: Prefix) -> None:
        rs.add("postrouting", f"jump {NAT_CHAIN}", Match(field, prefix), "Kilo: jump to NAT chain")

    for s in t.segments:
        if s.wireguard_ip is not None:
            no_nat(host_prefix(s.wireguard_ip), "WireGuard IPs")
        for a in s.allowed_ips:
            no_nat(a, "known IPs")
        if s.location == t.location:
            for a in s.allowed_location_ips:
                jump("daddr", a)
    for p in t.peers:
        for a in p.allowed_ips:
            jump("saddr", a)
            no_nat(a, "peers")
    for c in t.service_cidrs:
        no_nat(c, "service CIDRs")
    rs.add(NAT_CHAIN, "masquerade", None, "Kilo: NAT remaining packets")
    return rs
