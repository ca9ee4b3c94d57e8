"""Topology -> Graphviz dot, laid out exactly as Kilo's ``kgctl graph`` prints it (pure)."""

from __future__ import annotations

from kilo.model import endpoint_str
from kilo.syntax import dot_string
from kilo.topology import Topology


def _q(s: str) -> str:
    """A DOT string of free text (escaped)."""
    return f'"{dot_string(s)}"'


def _label(parts: list[str]) -> str:
    """A DOT label of lines (each part escaped, ``\\n`` between them)."""
    return '"' + "\\n".join(map(dot_string, parts)) + '"'


def _attrs(attrs: dict[str, str]) -> str:
    return "[ " + ", ".join(f"{k}={attrs[k]}" for k in sorted(attrs)) + " ]"


def _stmts(stmts: list[str]) -> str:
    return "".join(f"\t{s};\n" for s in stmts)


def dot(t: Topology) -> str:
    """The dot text (without the trailing newline ``kgctl`` adds when printing)."""
    top: list[str] = [
        f"label={_q(str(t.wireguard_cidr.network))}",
        "labelloc=t",
        "outputorder=nodesfirst",
        "overlap=false",
    ]
    edges: list[str] = []
    subgraphs: dict[str, list[str]] = {}
    leaders: list[str] = []
    both = {"dir": "both"}
    for s in t.segments:
        sub = _q(f"cluster_location_{s.location}")
        body = [f"label={_q(s.location)}", 'style="dashed,rounded"']
        nodes: dict[str, str] = {}
        for j, host in enumerate(s.hostnames):
            attrs = {"shape": "ellipse"}
            label = [s.location, host, str(s.cidrs[j]) if s.cidrs[j] is not None else "<nil>"]
            if s.private_ips is not None:
                label.append(str(s.private_ips[j]))
            if j == s.leader:
                attrs["rank"] = "1"
                if s.wireguard_ip is not None:
                    label.append(str(s.wireguard_ip))
                ep = endpoint_str(s.endpoint)
                if ep:
                    label.append(ep)
            attrs["label"] = _label(label)
            nodes[_q(host)] = f"{_q(host)} {_attrs(attrs)}"
        children = sorted(nodes)
        body.extend(nodes[c] for c in children)
        subgraphs[sub] = body
        leader = _q(s.hostnames[s.leader])
        for i, c in enumerate(children):
            if i != s.leader:
                edges.append(f"{children[s.leader]}->{c}{_attrs(both)}")
        leaders.append(leader)
    for i in range(len(leaders)):
        for j in range(i + 1, len(leaders)):
            edges.append(f"{leaders[i]}->{leaders[j]}{_attrs(both)}")
    peer_nodes: dict[str, str] = {}
    for p in t.peers:
        peer_label = _label([p.name, endpoint_str(p.endpoint)])[:-1] + '\n"'
        peer_attrs = {"label": peer_label, "shape": "ellipse"}
        peer_nodes[_q(p.name)] = f"{_q(p.name)} {_attrs(peer_attrs)}"
    subgraphs[_q("cluster_peers")] = [f"label={_q('peers')}", 'style="dashed,rounded"'] + [
        peer_nodes[k] for k in sorted(peer_nodes)
    ]
    dashed = {"dir": "both", "style": "dashed"}
    for leader in leaders:
        for peer in sorted(peer_nodes):
            edges.append(f"{leader}->{peer}{_attrs(dashed)}")
    stmts = top + edges
    for name in sorted(subgraphs):
        stmts.append(f"subgraph {name} {{\n{_stmts(subgraphs[name])}\n}}\n")
    return f"digraph kilo {{\n{_stmts(stmts)}\n}}\n"
