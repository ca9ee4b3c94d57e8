"""Looking at a running lab from outside, as the tests and the demo's checks do: objects in
the API, who leads, WireGuard configs, reachability, and what is left after teardown."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from kilo.keys import Key
from kilo.mesh import Options, read_cluster, showconf_node
from kilo.model import Granularity
from kilo.wireguard import WgConf

from kilo_lab import netns, procs
from kilo_lab.lab import Lab
from kilo_lab.layout import state_dir
from kilo_lab.pods import Pod
from kilo_lab.poll import Timeout, wait_until
from kilo_lab.spec import ClusterSpec


def wg_peers(conf: WgConf) -> dict[bytes, tuple[frozenset[str], str | None]]:
    """A WireGuard config's peers by public key: (allowed IPs, endpoint)."""
    return {
        p.public_key: (
            frozenset(str(a.network) for a in p.allowed_ips),
            str(p.endpoint) if p.endpoint else None,
        )
        for p in conf.peers
    }


def allowed_ips(conf: WgConf) -> set[str]:
    return {str(a.network) for p in conf.peers for a in p.allowed_ips}


def cluster_objects(lab: Lab, cluster: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Nodes and Peers of ``cluster``, as ``kubectl get -o json`` prints them."""
    data = json.loads(lab.kubectl(cluster, "get", "nodes,peers", "-o", "json").stdout)
    items = data.get("items", [])
    return (
        [o for o in items if o.get("kind") == "Node"],
        [o for o in items if o.get("kind") == "Peer"],
    )


def leaders(lab: Lab, cluster: str) -> list[str]:
    """The nodes of ``cluster`` that hold WireGuard tunnels (kgctl's notion: ``showconf node``
    prints a config), computed from the live objects."""
    nodes, peers = cluster_objects(lab, cluster)
    opts = Options(granularity=Granularity(lab.spec.cluster(cluster).granularity))
    now = int(time.time())
    out = []
    topo_log = logging.getLogger("kilo.topology")  # kgctl's warnings are kgctl's to print
    level = topo_log.level
    topo_log.setLevel(logging.ERROR)
    try:
        state = read_cluster(nodes, peers, "topology.kubernetes.io/region")
        for n in state.nodes:
            with contextlib.suppress(Exception):
                if showconf_node(state, n.name, opts, now).stdout:
                    out.append(n.name)
    finally:
        topo_log.setLevel(level)
    return out


def node_keys(lab: Lab, cluster: str) -> dict[str, Key]:
    """Every node's WireGuard public key (its ``kilo.squat.ai/key`` annotation)."""
    nodes, _ = cluster_objects(lab, cluster)
    out: dict[str, Key] = {}
    for o in nodes:
        key = (o["metadata"].get("annotations") or {}).get("kilo.squat.ai/key")
        if key:
            with contextlib.suppress(ValueError):
                out[o["metadata"]["name"]] = Key.parse(key)
    return out


def pods_of(lab: Lab, cluster: ClusterSpec, location: str | None = None) -> list[Pod]:
    names = {n.name for n in cluster.nodes if location is None or n.location == location}
    return [p for _, p in sorted(lab.pods.items()) if p.node in names]


def unreachable_pairs(
    lab: Lab, pairs: Iterable[tuple[str, str]], timeout: float = 30.0
) -> list[tuple[str, str]]:
    """The (pod, pod) pairs whose ping still gets no reply after ``timeout``."""
    pending = list(pairs)

    def all_reached() -> bool:
        pending[:] = [(a, b) for a, b in pending if not lab.ping(a, lab.pods[b].address, wait=0.5)]
        return not pending

    with contextlib.suppress(Timeout):
        wait_until("every pair replies", all_reached, timeout, 0.0)
    return pending


def wait_http(lab: Lab, host: str, url: str, timeout: float) -> float:
    """Seconds until ``curl URL`` from ``host`` answers 200 (``Timeout`` with the last code)."""
    last = ["000"]

    def ok() -> bool:
        last[0] = lab.http_code(host, url)
        return last[0] == "200"

    return wait_until(
        f"{host}: curl {url}", ok, timeout, 0.2, detail=lambda: f"last HTTP code {last[0]}"
    )


def leftovers(name: str, pids: Iterable[int] = ()) -> list[str]:
    """What of lab ``name`` still exists: namespaces, live processes, state directory."""
    out = [f"namespace {n}" for n in netns.names(f"kpy-{name}-")]
    out += [f"process {p}" for p in pids if procs.alive(p)]
    if state_dir(name).exists():
        out.append(f"directory {state_dir(name)}")
    return out


def lab_pids(lab: Lab) -> list[int]:
    """Every process running in a namespace of the lab right now."""
    return [pid for ns in lab.state.get("namespaces", []) for pid in procs.pids(ns)]
