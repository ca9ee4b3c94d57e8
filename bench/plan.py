"""Time and peak memory to compute one node's full plan (topology, WireGuard config, routes,
firewall) from the cluster's Node and Peer objects, on one core; beside Kilo's own Go code on
the same clusters when its benchmark binary is given.

    python3 bench/plan.py [--repeat 5]
    KILO_PLAN_BENCH=/path/to/kilo-plan-bench python3 bench/plan.py

Targets: plan <= 3x Kilo's time at 1,000 and 5,000 nodes, growing at most 5.5-fold from 1,000
to 5,000 nodes (also with an allowed-location IP on each location's leader).

Kilo's figure comes from a program outside this repository (not part of it): given a JSON file
{"nodes": [...], "peers": [...], "host", "now", "repeat", "label"} (this script writes it), it
times Kilo's ``mesh.NewTopology`` + ``Conf()`` + ``Routes(...)`` + ``Rules(...)`` for that host
(the ready nodes and peers first, as Kilo's ``applyTopology``), and translation of the objects
plus that, median of ``repeat`` runs, and prints {"plan_ms": .., "read_plan_ms": ..}.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, replace
from typing import Any

from kilo import memo
from kilo.agent import settle_heap
from kilo.cache import ObjectCache
from kilo.keys import Key
from kilo.plan import ClusterView, LocalFacts, Settings, Status, plan
from kilo.routes import Encapsulation, Strategy
from kilo.translate import ALLOWED_LOCATION_IPS

NOW = 1_790_000_000
LABEL = "topology.kubernetes.io/region"
FACTS = LocalFacts(private_key=Key(bytes(range(32))), now=float(NOW), underlay_mtu=1500)


def key(s: str) -> str:
    return base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()


def cluster(
    n_nodes: int, n_locations: int, n_peers: int, location_ips: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``location_ips``: each location's leader (its first node) has an allowed-location IP."""
    nodes: list[dict[str, Any]] = []
    for i in range(n_nodes):
        loc = i % n_locations
        nodes.append(
            {
                "kind": "Node",
                "metadata": {
                    "name": f"node-{i:05d}",
                    "labels": {"topology.kubernetes.io/region": f"loc-{loc:03d}"},
                    "annotations": {
                        "kilo.squat.ai/endpoint": f"198.51.{100 + (i >> 8) % 100}.{i % 256}:51820",
                        "kilo.squat.ai/internal-ip": f"10.{100 + loc % 100}.{i >> 8}.{i % 256}/16",
                        "kilo.squat.ai/key": key(f"n{i}"),
                        "kilo.squat.ai/last-seen": str(NOW),
                        "kilo.squat.ai/granularity": "location",
                    },
                },
                "spec": {
                    "podCIDR": f"10.{(i >> 8) % 50}.{i % 256}.0/24".replace("10.", "172.", 0)
                    if False
                    else f"10.{20 + (i >> 8)}.{i % 256}.0/24"
                },
            }
        )
        if location_ips and i < n_locations:
            nodes[-1]["metadata"]["annotations"][ALLOWED_LOCATION_IPS] = f"192.168.{loc}.0/24"
    peers = [
        {
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": f"peer-{j:05d}"},
            "spec": {
                "allowedIPs": [f"10.5.{j >> 8}.{j % 256}/32"],
                "publicKey": key(f"p{j}"),
                "persistentKeepalive": 25,
            },
        }
        for j in range(n_peers)
    ]
    return nodes, peers


def read(nodes: list[dict[str, Any]], peers: list[dict[str, Any]]) -> ClusterView:
    """As the agent reads: through its object cache."""
    return ObjectCache(LABEL).read(nodes, peers)


def plan_raw(nodes: list[dict[str, Any]], peers: list[dict[str, Any]], host: str) -> int:
    return plan_model(read(nodes, peers), host)


def plan_model(view: ClusterView, host: str) -> int:
    """What the agent does on each reconcile that found a change: its cache holds the
    translated objects."""
    p = plan(view, FACTS, Settings(hostname=host, encapsulation=Encapsulation(Strategy.NEVER)))
    assert p.status is Status.OK and p.dataplane is not None
    dp = p.dataplane
    return len(dp.wireguard.peers) + len(dp.routes) + len(dp.rules) + len(dp.ruleset.rules)


def _time(f: Any, repeat: int, before: Any = None) -> float:
    """Median ms of ``f()``; ``before(i)``, untimed, ahead of run ``i``."""
    f()  # warm-up
    times = []
    for i in range(repeat):
        if before is not None:
            before(i)
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def changed(view: ClusterView, i: int) -> ClusterView:
    """``view`` after one more event: node ``i + 1`` (another location each time) moved to
    another endpoint port, as the cache holds it after that Node's event (a new object)."""
    names = list(view.nodes)
    name = names[1 + i % (len(names) - 1)]
    n = view.nodes[name]
    assert n.endpoint is not None
    moved = replace(n, endpoint=replace(n.endpoint, port=n.endpoint.port + 1 + i))
    return replace(view, nodes={**view.nodes, name: moved})


@dataclass
class Figures:
    plan_ms: float
    cold_ms: float
    nft_ms: float
    read_plan_ms: float
    peak_mib: float
    kilo_plan_ms: float | None = None
    kilo_read_plan_ms: float | None = None


def kilo(nodes: list[dict[str, Any]], peers: list[dict[str, Any]], host: str, repeat: int) -> Any:
    """Kilo's figures from the program named by KILO_PLAN_BENCH; None without it."""
    exe = os.environ.get("KILO_PLAN_BENCH")
    if not exe:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        data = {"nodes": nodes, "peers": peers, "host": host, "now": NOW, "repeat": repeat}
        json.dump({**data, "label": LABEL}, f)
        f.flush()
        out = subprocess.run([exe, f.name], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def measure(n: int, locs: int, peers: int, location_ips: bool, repeat: int) -> Figures:
    nodes, ps = cluster(n, locs, peers, location_ips)
    host = nodes[0]["metadata"]["name"]
    view = read(nodes, ps)
    settle_heap()  # as the agent does after a read that changed its cache
    views = [view]

    def event(i: int) -> None:
        views[0] = changed(view, i)

    plan_ms = _time(lambda: plan_model(views[0], host), repeat, event)

    def forget(i: int) -> None:
        event(i)
        memo.forget_all()

    cold_ms = _time(lambda: plan_model(views[0], host), repeat, forget)
    p = plan(view, FACTS, Settings(hostname=host, encapsulation=Encapsulation(Strategy.NEVER)))
    assert p.dataplane is not None
    rs = p.dataplane.ruleset
    nft_ms = _time(lambda: replace(rs).nft_json(), repeat)  # a copy: not the one made before
    full_ms = _time(lambda: plan_raw(nodes, ps, host), repeat)
    tracemalloc.start()
    plan_raw(nodes, ps, host)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    fig = Figures(plan_ms, cold_ms, nft_ms, full_ms, peak / 2**20)
    k = kilo(nodes, ps, host, repeat)
    if k is not None:
        fig.kilo_plan_ms, fig.kilo_read_plan_ms = k["plan_ms"], k["read_plan_ms"]
    return fig


CASES = [  # nodes, locations, allowed-location IPs
    (100, 10, False),
    (1000, 10, False),
    (1000, 50, False),
    (5000, 50, False),
    (1000, 50, True),
    (5000, 50, True),
]


def _ratio(ours: float, theirs: float | None) -> str:
    return "-" if theirs is None else f"{ours / theirs:.1f}x"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; 1,000 peers")
    print(f"one node's plan; median of {args.repeat} runs")
    print("plan: from the agent's cache (topology, WireGuard config, routes, firewall ruleset),")
    print("  after one Node changed (each run another; the other segments' parts are kept);")
    print("cold: the same with no segment kept from the plan before")
    print("nft: the ruleset as nft JSON (when it changed); read+plan: from raw API objects")
    print("Kilo: NewTopology + Conf + Routes + Rules (and its translation, for read+plan)")
    if not os.environ.get("KILO_PLAN_BENCH"):
        print("Kilo: not measured (set KILO_PLAN_BENCH)")
    print(
        f"{'nodes':>6} {'locs':>4} {'loc-IPs':>7} {'plan ms':>8} {'Kilo ms':>8} {'ratio':>6} "
        f"{'target':>7} {'cold ms':>7} {'ratio':>6} {'nft ms':>7} {'read+plan':>9} {'Kilo':>6} "
        f"{'ratio':>6} {'MiB':>5}"
    )
    figs: dict[tuple[int, int, bool], Figures] = {}
    for n, locs, lips in CASES:
        f = figs[(n, locs, lips)] = measure(n, locs, 1000, lips, args.repeat)
        target = "<=3x" if n >= 1000 else ""
        print(
            f"{n:>6} {locs:>4} {'yes' if lips else 'no':>7} {f.plan_ms:>8.1f} "
            f"{_ms(f.kilo_plan_ms):>8} {_ratio(f.plan_ms, f.kilo_plan_ms):>6} {target:>7} "
            f"{f.cold_ms:>7.1f} {_ratio(f.cold_ms, f.kilo_plan_ms):>6} {f.nft_ms:>7.1f} "
            f"{f.read_plan_ms:>9.1f} {_ms(f.kilo_read_plan_ms):>6} "
            f"{_ratio(f.read_plan_ms, f.kilo_read_plan_ms):>6} {f.peak_mib:>5.1f}",
            flush=True,
        )
    for lips in (False, True):
        a, b = figs[(1000, 50, lips)], figs[(5000, 50, lips)]
        kilo_growth = (
            ""
            if a.kilo_plan_ms is None or b.kilo_plan_ms is None
            else f", Kilo {b.kilo_plan_ms / a.kilo_plan_ms:.1f}x"
        )
        print(
            f"growth 1,000 -> 5,000 nodes{' (allowed-location IPs)' if lips else ''}: plan "
            f"{b.plan_ms / a.plan_ms:.1f}x (target <= 5.5x){kilo_growth}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
