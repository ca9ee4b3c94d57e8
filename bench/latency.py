"""Round-trip time added by the mesh (the seed's FAQ 1, "latency?"): pod -> pod in one location,
across locations through the leaders' tunnels, and across two clusters linked by ``kgctl link``,
each beside the underlay between the same hosts.

    python3 bench/latency.py [--count 300] [--reps 3]    # as root; about 1.5 min

A lab of two clusters, kg with wireguard-go on every node and a pod on every node: c1 with
locations aws (aws-1 public, leads; aws-2) and gcp (gcp-1 public, leads; gcp-2), c2 with
location onprem (onprem-1 public, leads; onprem-2), linked by one ``kgctl link --once``. Each
path is pinged ``--count`` times at 100/s (``ping -i 0.01``), ``--reps`` times in turn; per-packet
RTTs, median and p95 over all of them:

  underlay, nodes             aws-1 -> gcp-1's public address (the "internet", no tunnel)
  one location, pods          aws-1-p0 -> aws-2-p0: over the location's private network
  across locations, leaders   aws-1-p0 -> gcp-1-p0: one WireGuard hop between the leaders
  across locations, followers aws-2-p0 -> gcp-2-p0: LAN, WireGuard, LAN
  across clusters, followers  aws-2-p0 -> onprem-2-p0: the same between two clusters

"added" is the path's median minus the underlay's. The namespaces share one kernel and its
CPUs: the figures are CPU time (wireguard-go's encryption, a hop's forwarding), not distance,
and rise with load. Kilo adds no latency of its own (the data path is WireGuard's and the
kernel's), so there is no Kilo column. Target: none set by the issue; reported.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from _common import lab_name, lab_session, machine_note, percentile, say, table
from kilo_lab.lab import Lab, LabError
from kilo_lab.spec import two_clusters

_RTT = re.compile(r"time=([0-9.]+) ms")

C1_LOCATIONS = [
    {"name": "aws", "cidr": "10.10.1.0/24", "nodes": [{"name": "aws-1", "public": True}, "aws-2"]},
    {"name": "gcp", "cidr": "10.10.2.0/24", "nodes": [{"name": "gcp-1", "public": True}, "gcp-2"]},
]


def spec(name: str) -> dict[str, Any]:
    return two_clusters(name, C1_LOCATIONS)


def rtts(lab: Lab, host: str, ip: str, count: int) -> list[float]:
    out = lab.exec(host, ["ping", "-n", "-i", "0.01", "-W", "1", "-c", str(count), ip],
                   timeout=count * 0.05 + 30)  # fmt: skip
    values = [float(m.group(1)) for m in _RTT.finditer(out.stdout)]
    if len(values) < count // 2:
        raise LabError(f"{host} -> {ip}: {len(values)} of {count} replies")
    return values


def link(lab: Lab) -> None:
    r = lab.kgctl("c1", "link", "--name", "c1", "--to-kubeconfig", str(lab.kubeconfig("c2")),
                  "--to-name", "c2", "--once", check=False)  # fmt: skip
    if r.returncode != 0:
        raise LabError(f"kgctl link --once: {r.stderr.strip()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    note = machine_note()
    say(note)
    with lab_session(spec(lab_name("blat"))) as lab:
        gcp1 = str(lab.state["nodes"]["gcp-1"]["public_ip"])
        pods = {p: lab.pods[p].address for p in ("aws-2-p0", "gcp-1-p0", "gcp-2-p0")}
        link(lab)
        lab.wait_ping("aws-2-p0", lab.pods["onprem-2-p0"].address, timeout=90)
        paths = [
            ("underlay, nodes", "aws-1", gcp1),
            ("one location, pods", "aws-1-p0", pods["aws-2-p0"]),
            ("across locations, leaders", "aws-1-p0", pods["gcp-1-p0"]),
            ("across locations, followers", "aws-2-p0", pods["gcp-2-p0"]),
            ("across clusters, followers", "aws-2-p0", lab.pods["onprem-2-p0"].address),
        ]
        for _, host, ip in paths:
            lab.wait_ping(host, ip, timeout=60)
        samples: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        for rep in range(args.reps):
            say(f"  repetition {rep + 1} of {args.reps}")
            for name, host, ip in paths:
                samples[name] += rtts(lab, host, ip, args.count)
    base = percentile(samples["underlay, nodes"], 50)
    print(
        f"Round-trip times (ms), ping at 100/s, {args.count} x {args.reps} per path, "
        "per-packet median and p95"
    )
    rows = []
    for name, host, ip in paths:
        xs = samples[name]
        p50 = percentile(xs, 50)
        rows.append((name, f"{host} -> {ip}", len(xs), p50, percentile(xs, 95), p50 - base))
    print(table(["path", "from -> to", "replies", "p50", "p95", "added p50"], rows))
    print(note)


if __name__ == "__main__":
    main()
