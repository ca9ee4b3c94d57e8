"""``kgctl status``: what an operator in trouble asks first. Which nodes lead their location,
which are not ready and why, the WireGuard IPs and endpoints the mesh uses, the tunnels' last
handshakes and bytes (where an agent's ``/metrics`` is given), and every object that is refused,
with the reason: by the readers (as Kilo refuses it) and by our agents' authorisation.

Pure: the cluster, the time and the metrics text come in; a report comes out, as a kubectl-style
table (``-o wide`` adds columns) or as JSON or YAML with the same fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from kilo.authorise import PeerPolicy, authorise_nodes, authorise_peers
from kilo.keys import is_zero
from kilo.mesh import ClusterState, Options, UserError, _leaders, determine_granularity
from kilo.model import CHECK_IN_PERIOD_SECONDS, DEFAULT_SUBNET, Granularity, Node, Prefix, Problem
from kilo.topology import TopologyError, new_topology

OUTPUTS = ("table", "wide", "json", "yaml")


@dataclass(frozen=True)
class Tunnel:
    """One tunnel as an agent's ``/metrics`` shows it (labelled by node or Peer name)."""

    handshake_age: float | None = None
    rx_bytes: float | None = None
    tx_bytes: float | None = None


def tunnels_from_metrics(text: str) -> dict[str, Tunnel]:
    """The per-peer gauges of one agent's ``/metrics``; what does not parse is left out."""
    age: dict[str, float] = {}
    rx: dict[str, float] = {}
    tx: dict[str, float] = {}
    wanted = {
        "kilo_peer_last_handshake_age_seconds": age,
        "kilo_peer_receive_bytes": rx,
        "kilo_peer_transmit_bytes": tx,
    }
    try:
        for family in text_string_to_metric_families(text):
            into = wanted.get(family.name)
            if into is None:
                continue
            for s in family.samples:
                peer = s.labels.get("peer")
                if peer:
                    into[peer] = float(s.value)
    except (ValueError, TypeError, IndexError):
        pass  # a garbled scrape: what was read so far stands
    return {
        name: Tunnel(age.get(name), rx.get(name), tx.get(name))
        for name in sorted(set(age) | set(rx) | set(tx))
    }


@dataclass
class Report:
    granularity: str
    subnet: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity,
            "wireguardSubnet": self.subnet,
            "nodes": self.nodes,
            "peers": self.peers,
            "problems": self.problems,
        }


def _not_ready(n: Node, now: int) -> str:
    if n.endpoint is None or not n.endpoint.ready():
        return "no endpoint"
    if is_zero(n.key):
        return "no key"
    if n.subnet is None:
        return "no pod CIDR"
    if n.ready(now):
        return ""
    if n.last_seen <= 0:
        return "never checked in"
    return f"not seen for {max(0, now - n.last_seen)}s (limit {2 * CHECK_IN_PERIOD_SECONDS}s)"


def _problem(p: Problem, source: str) -> dict[str, str]:
    return {
        "kind": p.kind,
        "name": p.name,
        "field": p.field,
        "value": p.value,
        "reason": p.reason,
        "by": source,
    }


def _tunnel_fields(t: Tunnel | None) -> dict[str, Any]:
    if t is None:
        return {}
    return {"lastHandshakeAge": t.handshake_age, "rxBytes": t.rx_bytes, "txBytes": t.tx_bytes}


def report(
    state: ClusterState,
    opts: Options,
    now: int,
    tunnels: Mapping[str, Tunnel] | None = None,
    service_cidrs: Sequence[Prefix] = (),
    policy: PeerPolicy | None = None,
) -> tuple[Report, list[str]]:
    """The report, and warnings (a granularity or topology that could not be determined: the
    nodes are listed all the same, without leaders or WireGuard IPs)."""
    warnings: list[str] = []
    ready = {n.name: n for n in state.nodes if n.ready(now)}
    subnet = DEFAULT_SUBNET
    for n in state.nodes:
        if n.wireguard_ip is not None:
            subnet = n.wireguard_ip
    subnet = type(subnet)(f"{subnet.network.network_address}/{subnet.network.prefixlen}")
    peers = {p.name: p for p in state.peers if p.ready()}
    granularity = ""
    leaders: set[str] = set()
    wg_ips: dict[str, str] = {}
    refusals: list[Problem] = []
    try:
        try:
            g = determine_granularity(opts.granularity, state.nodes)
        except UserError as e:
            if not state.nodes:
                raise
            g = Granularity.LOCATION
            warnings.append(f"{e}; assuming location (kg's default), else --mesh-granularity")
        granularity = g.value
        if ready:
            last = sorted(ready)[-1]
            t = new_topology(
                ready, peers, g, last, 0, None, subnet, (),
                ready[last].persistent_keepalive, _leaders(state, ready, g, now),
            )  # fmt: skip
            refusals = list(t.refusals)
            for s in t.segments:
                leaders.add(s.hostnames[s.leader])
                if s.wireguard_ip is not None:
                    wg_ips[s.hostnames[s.leader]] = f"{s.wireguard_ip}/{subnet.network.prefixlen}"
    except (UserError, TopologyError) as e:
        warnings.append(str(e))
    authorised, refused_nodes = authorise_nodes(ready, "")
    _, refused_peers = authorise_peers(
        peers, authorised, subnet, service_cidrs, policy or PeerPolicy()
    )
    out = Report(granularity=granularity, subnet=str(subnet))
    tunnels = tunnels or {}
    for n in state.nodes:
        row: dict[str, Any] = {
            "name": n.name,
            "location": n.location,
            "ready": n.ready(now),
            "why": _not_ready(n, now),
            "leader": n.name in leaders,
            "wireguardIP": wg_ips.get(n.name, str(n.wireguard_ip) if n.wireguard_ip else ""),
            "endpoint": str(n.endpoint) if n.endpoint is not None else "",
            "internalIP": str(n.internal_ip) if n.internal_ip is not None else "",
            "podCIDR": str(n.subnet) if n.subnet is not None else "",
            "lastSeenAge": None
            if n.lease_liveness or n.last_seen <= 0
            else max(0, now - n.last_seen),
            "liveness": "lease" if n.lease_liveness else "last-seen",
        }
        row.update(_tunnel_fields(tunnels.get(n.name)))
        out.nodes.append(row)
    for p in state.peers:
        prow: dict[str, Any] = {
            "name": p.name,
            "ready": p.ready(),
            "allowedIPs": [str(a) for a in p.allowed_ips],
            "endpoint": str(p.endpoint) if p.endpoint is not None else "",
            "persistentKeepalive": p.persistent_keepalive,
        }
        prow.update(_tunnel_fields(tunnels.get(p.name)))
        out.peers.append(prow)
    out.problems = (
        [_problem(p, "reader") for p in state.problems]
        + [_problem(p, "topology") for p in refusals]
        + [_problem(p, "agents") for p in refused_nodes + refused_peers]
    )
    return out, warnings


# -- rendering


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(_cell(x) for x in v) or "-"
    s = str(v)
    return s if s.isprintable() else repr(s)[1:-1]  # a cell never moves the cursor


def _age(v: Any) -> str:
    if v is None:
        return "-"
    secs = int(v)
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h" if secs < 172800 else f"{secs // 86400}d"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def render(r: Report, output: str, with_tunnels: bool) -> str:
    if output == "json":
        return json.dumps(r.as_dict(), indent=2) + "\n"
    if output == "yaml":
        return str(yaml.safe_dump(r.as_dict(), sort_keys=False, allow_unicode=False))
    wide = output == "wide"
    head = ["NODE", "LOCATION", "READY", "LEADER", "WIREGUARD-IP", "ENDPOINT"]
    if wide:
        head += ["INTERNAL-IP", "POD-CIDR", "LIVENESS", "LAST-SEEN"]
    if with_tunnels:
        head += ["HANDSHAKE", "RX", "TX"]
    rows = [head]
    for n in r.nodes:
        ready = "yes" if n["ready"] else f"no ({n['why']})"
        row = [_cell(n["name"]), _cell(n["location"]), _cell(ready), "*" if n["leader"] else "",
               _cell(n["wireguardIP"]), _cell(n["endpoint"])]  # fmt: skip
        if wide:
            row += [_cell(n["internalIP"]), _cell(n["podCIDR"]), n["liveness"],
                    _age(n["lastSeenAge"])]  # fmt: skip
        if with_tunnels:
            row += [_age(n.get("lastHandshakeAge")), _cell(n.get("rxBytes")),
                    _cell(n.get("txBytes"))]  # fmt: skip
        rows.append(row)
    text = f"Granularity: {r.granularity or '-'}   WireGuard subnet: {r.subnet}\n\n" + _table(rows)
    if r.peers:
        head = ["PEER", "READY", "ALLOWED-IPS", "ENDPOINT", "KEEPALIVE"]
        if with_tunnels:
            head += ["HANDSHAKE", "RX", "TX"]
        prows = [head]
        for p in r.peers:
            row = [_cell(p["name"]), _cell(p["ready"]), _cell(p["allowedIPs"]),
                   _cell(p["endpoint"]), _cell(p["persistentKeepalive"])]  # fmt: skip
            if with_tunnels:
                row += [_age(p.get("lastHandshakeAge")), _cell(p.get("rxBytes")),
                        _cell(p.get("txBytes"))]  # fmt: skip
            prows.append(row)
        text += "\n" + _table(prows)
    if r.problems:
        head = ["KIND", "NAME", "REFUSED-BY", "FIELD", "REASON"]
        if wide:
            head.insert(4, "VALUE")
        qrows = [head]
        for q in r.problems:
            row = [q["kind"], _cell(q["name"]), q["by"], _cell(q["field"]), _cell(q["reason"])]
            if wide:
                row.insert(4, _cell(q["value"]))
            qrows.append(row)
        text += "\n" + _table(qrows)
    return text


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise UserError(
            f"output format {output} unknown; possible values are: {', '.join(OUTPUTS)}"
        )
