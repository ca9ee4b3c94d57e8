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

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kilo.model import Prefix, host_prefix
from kilo.prefixes import ByStart, Networks, addr_text, by_start, net_key, net_text, outermost_of
from kilo.topology import Topology

TABLE = "kilo"
NAT_CHAIN = "kilo-nat"


class Match(NamedTuple):
    field: str  # "saddr" or "daddr"
    prefix: Prefix


class SetMatch(NamedTuple):
    """A match on an address set of the table (``ip daddr @name``)."""

    field: str  # "saddr" or "daddr"
    name: str
    version: int  # 4 or 6


class AddrSet(NamedTuple):
    """A named interval set of networks, none inside another, in address order."""

    name: str
    version: int
    elements: tuple[Prefix, ...]

    def texts(self) -> list[str]:
        return [net_text(p) for p in self.elements]


class FwRule(NamedTuple):
    """One rule (immutable; named tuples, as ``kilo.routes.Route``)."""

    chain: str
    verdict: str  # "return", "accept", "masquerade", "jump kilo-nat"
    match: Match | SetMatch | None = None
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
    sets: list[AddrSet] = field(default_factory=list)
    rules: list[FwRule] = field(default_factory=list)
    _seen: set[tuple[str, str, object]] = field(default_factory=set, repr=False, compare=False)
    _json: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def add(
        self, chain: str, verdict: str, match: Match | SetMatch | None = None, comment: str = ""
    ) -> None:
        """Append a rule unless the same chain already has the same match and verdict."""
        key = (chain, verdict, _match_key(match))
        if key not in self._seen:
            self._seen.add(key)
            self._json = None
            self.rules.append(FwRule(chain, verdict, match, comment))

    def add_sets(
        self,
        chain: str,
        verdict: str,
        field: str,
        name: str,
        prefixes: Iterable[Prefix] | Networks,
        what: str,
    ) -> None:
        """Sets ``name-ipv4`` and ``name-ipv6`` of ``prefixes`` (those of a family with any;
        also given ``by_start``) and a rule matching each: one rule for any number of
        networks. A set made before is matched again, not made anew."""
        made = {s.name: s for s in self.sets if s.name.startswith(name + "-ipv")}
        if not made:
            nets = prefixes if isinstance(prefixes, Networks) else by_start(prefixes)
            for version, elements in zip((4, 6), outermost_of(nets), strict=True):
                if elements:
                    self._json = None
                    s = AddrSet(f"{name}-ipv{version}", version, tuple(elements))
                    self.sets.append(s)
                    made[s.name] = s
        for s in made.values():
            self.add(chain, verdict, SetMatch(field, s.name, s.version), what)

    def set_named(self, name: str) -> AddrSet | None:
        return next((s for s in self.sets if s.name == name), None)

    def expanded(self, chain: str) -> list[tuple[str, str | None, str | None]]:
        """The rules of ``chain`` as (verdict, field, CIDR), one per network of a set."""
        out: list[tuple[str, str | None, str | None]] = []
        for r in self.rules:
            if r.chain != chain:
                continue
            m = r.match
            if m is None:
                out.append((r.verdict, None, None))
            elif isinstance(m, SetMatch):
                st = self.set_named(m.name)
                out += [(r.verdict, m.field, t) for t in (st.texts() if st else [])]
            else:
                out.append((r.verdict, m.field, net_text(m.prefix)))
        return out

    def nft_json(self) -> dict[str, Any]:
        """One nft transaction: (re)create the table, then its sets, chains and rules
        (for ``nft -j -f -``); made once (a ruleset is not changed after it is built)."""
        if self._json is None:
            self._json = self._make_json()
        return self._json

    def _make_json(self) -> dict[str, Any]:
        fam = "inet"
        cmds: list[dict[str, Any]] = [
            {"add": {"table": {"family": fam, "name": self.table}}},
            {"delete": {"table": {"family": fam, "name": self.table}}},
            {"add": {"table": {"family": fam, "name": self.table}}},
        ]
        for st in self.sets:
            cmds.append({"add": {"set": _set_json(self.table, st)}})
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


def _match_key(m: Match | SetMatch | None) -> object:
    if m is None:
        return None
    if isinstance(m, SetMatch):
        return (m.field, "@" + m.name)
    return (m.field, net_key(m.prefix))


def _element(p: Prefix) -> Any:
    """A network as nft JSON: an address for a one-address network, else a prefix."""
    version, _, plen = net_key(p)
    addr = addr_text(p)
    return (
        addr if plen == (32 if version == 4 else 128) else {"prefix": {"addr": addr, "len": plen}}
    )


def _set_json(table: str, st: AddrSet) -> dict[str, Any]:
    return {
        "family": "inet",
        "table": table,
        "name": st.name,
        "type": "ipv4_addr" if st.version == 4 else "ipv6_addr",
        "flags": ["interval"],
        "elem": [_element(p) for p in st.elements],
    }


def _expr(r: FwRule) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    m = r.match
    if m is not None:
        if isinstance(m, SetMatch):
            proto, right = ("ip" if m.version == 4 else "ip6"), f"@{m.name}"
        else:
            proto, right = ("ip" if net_key(m.prefix)[0] == 4 else "ip6"), _element(m.prefix)
        out.append(
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": proto, "field": m.field}},
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

    jump = f"jump {NAT_CHAIN}"
    location = [a for s in t.segments if s.location == t.location for a in s.allowed_location_ips]
    rs.add_sets("postrouting", jump, "daddr", "location", location, "Kilo: jump to NAT chain")
    peers = [a for p in t.peers for a in p.allowed_ips]
    rs.add_sets("postrouting", jump, "saddr", "peers", peers, "Kilo: jump to NAT chain")

    def no_nat(name: str, prefixes: Iterable[Prefix] | Networks, what: str) -> None:
        rs.add_sets(
            NAT_CHAIN,
            "return",
            "daddr",
            name,
            prefixes,
            f"Kilo: do not NAT packets destined for {what}",
        )

    no_nat(
        "wireguard",
        [host_prefix(s.wireguard_ip) for s in t.segments if s.wireguard_ip is not None],
        "WireGuard IPs",
    )
    no_nat("known", _known(t), "known IPs")
    no_nat("peers", peers, "peers")
    no_nat("services", t.service_cidrs, "service CIDRs")
    rs.add(NAT_CHAIN, "masquerade", None, "Kilo: NAT remaining packets")
    return rs


def _known(t: Topology) -> Networks:
    """Every segment's allowed IPs ``by_start``: each segment's own, kept with its base (its
    nodes unchanged), merged in the segments' order, then what was added to it (its
    WireGuard IP)."""
    v4: ByStart = {}
    v6: ByStart = {}
    for s in t.segments:
        base = s.base
        if base is None or len(s.allowed_ips) < len(base.allowed_ips):
            extra: Iterable[Prefix] = s.allowed_ips
        else:
            b4, b6 = base.networks
            v4.update(b4)
            v6.update(b6)
            extra = s.allowed_ips[len(base.allowed_ips) :]
        e4, e6 = by_start(extra)
        v4.update(e4)
        v6.update(e6)
    return Networks(v4, v6)
