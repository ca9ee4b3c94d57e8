"""Time and peak memory to compute one node's full plan (topology, WireGuard config, routes,
firewall) from the cluster's Node and Peer objects, on one core.

    python3 bench/plan.py            # prints a table; target: 1,000 nodes / 50 locations /
                                     # 1,000 peers in <= 100 ms, growing about linearly
"""

from __future__ import annotations

import base64
import gc
import hashlib
import statistics
import sys
import time
import tracemalloc
from typing import Any

from kilo.keys import Key
from kilo.mesh import read_cluster
from kilo.plan import ClusterView, LocalFacts, Settings, Status, plan
from kilo.routes import Encapsulation, Strategy

NOW = 1_790_000_000
FACTS = LocalFacts(private_key=Key(bytes(range(32))), now=float(NOW), underlay_mtu=1500)


def key(s: str) -> str:
    return base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()


def cluster(
    n_nodes: int, n_locations: int, n_peers: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nodes = []
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


def plan_raw(nodes: list[dict[str, Any]], peers: list[dict[str, Any]], host: str) -> int:
    return plan_model(read_cluster(nodes, peers, "topology.kubernetes.io/region"), host)


def plan_model(st: Any, host: str) -> int:
    """What the agent does on each reconcile: its cache holds the translated objects."""
    view = ClusterView({n.name: n for n in st.nodes}, {p.name: p for p in st.peers})
    p = plan(view, FACTS, Settings(hostname=host, encapsulation=Encapsulation(Strategy.NEVER)))
    assert p.status is Status.OK and p.dataplane is not None
    dp = p.dataplane
    fw = dp.ruleset.nft_json()
    return len(dp.wireguard.peers) + len(dp.routes) + len(dp.rules) + len(fw["nftables"])


def _time(f: Any, repeat: int) -> float:
    f()  # warm-up
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(n: int, locs: int, peers: int, repeat: int = 5) -> tuple[float, float, float]:
    """(plan ms, read+plan ms, peak MiB of read+plan)."""
    nodes, ps = cluster(n, locs, peers)
    host = nodes[0]["metadata"]["name"]
    st = read_cluster(nodes, ps, "topology.kubernetes.io/region")
    plan_ms = _time(lambda: plan_model(st, host), repeat)
    full_ms = _time(lambda: plan_raw(nodes, ps, host), repeat)
    tracemalloc.start()
    plan_raw(nodes, ps, host)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return plan_ms, full_ms, peak / 2**20


def main() -> None:
    print(
        "one node's plan (topology, WireGuard config, routes, nftables ruleset); median of 5 runs"
    )
    print("plan: from the agent's cache of translated objects; read+plan: from raw API objects")
    print(
        f"{'nodes':>6} {'locations':>9} {'peers':>6} {'plan ms':>9} {'read+plan ms':>13} "
        f"{'peak MiB':>9}"
    )
    for n, locs in [(100, 10), (100, 50), (1000, 10), (1000, 50), (5000, 10), (5000, 50)]:
        plan_ms, full_ms, peak = measure(n, locs, 1000)
        print(
            f"{n:>6} {locs:>9} {1000:>6} {plan_ms:>9.1f} {full_ms:>13.1f} {peak:>9.1f}", flush=True
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
