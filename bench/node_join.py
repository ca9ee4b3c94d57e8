"""Node joins -> reachable from all; leader lost -> traffic between locations flows again.

    python3 bench/node_join.py [--join-runs 3] [--leader-runs 2]    # as root; about 2.5 min

A lab of one cluster: aws = a1, a2 (both public), a3; gcp = g1 (public), g2; a pod on every
node, kg on every node (defaults: resync 30 s, check-in 30 s).

Node join (each run): ``lab.add_node`` adds a private node to gcp or aws in turn (namespace,
Node object, kg, its pod), and every other pod pings the new node's pod every 50 ms from the
moment the call starts (its address is known beforehand and checked). Shown: when
``add_node`` returned (kg has written the pod CIDR and the pod exists) and when the last of the
other pods got its first reply. The node is removed again after each run.

Leader lost (each run): the aws leader a1 is lost: its kg is stopped and its cables are cut
(its links on the lab's bridges go down: a stopped kg alone leaves wireguard-go and the routes
forwarding, so no packet would be lost). Pods a3-p0 (aws) and g2-p0 (gcp) ping each other from
that moment. Kilo only drops a1 from the mesh when its last check-in is 60 s old
(``kilo.squat.ai/last-seen``, checked in every 30 s), so the outage is about
60 s - (age of the last check-in when the leader was lost) + the time the agents take to
notice and reconfigure. Shown: that age, when g1's WireGuard peer for aws points at the new
leader a2, when both pings get replies again, and how long after a1's readiness expired
(60 s after its last check-in; last-seen has whole seconds) that was. Then a1 comes back
and the mesh settles.
"""

from __future__ import annotations

import argparse
import json
import time

from _common import (
    first_replies,
    lab_name,
    lab_session,
    machine_note,
    median,
    say,
    table,
    wait_until,
)
from kilo_lab import netns
from kilo_lab.lab import Lab, LabError

LAN_LINKS = ("kpy-inet", "kpy-lan", "kpy-mgmt")
READY_WINDOW = 60  # Kilo: a node is ready while its last check-in is < 2 x 30 s old


def spec(name: str) -> dict:
    return {
        "name": name,
        "clusters": [
            {
                "name": "c1",
                "granularity": "location",
                "locations": [
                    {
                        "name": "aws",
                        "nodes": [
                            {"name": "a1", "public": True},
                            {"name": "a2", "public": True},
                            "a3",
                        ],
                    },
                    {"name": "gcp", "nodes": [{"name": "g1", "public": True}, "g2"]},
                ],
            }
        ],
    }


def next_pod_ip(lab: Lab, cluster: str) -> str:
    """The address the first pod of the next node added to ``cluster`` will get."""
    c = lab.spec.cluster(cluster)
    index = max(n.index for n in c.nodes) + 1
    cidr = list(c.pod_cidr.subnets(new_prefix=c.node_prefix))[index]
    return str(cidr.network_address + 2)  # .1 is the node's bridge


def all_pods_reach(lab: Lab, timeout: float) -> None:
    pending = [(a, b) for a in lab.pods for b in lab.pods if a != b]
    deadline = time.monotonic() + timeout
    while pending:
        pending = [(a, b) for a, b in pending if not lab.ping(a, lab.pods[b].address, wait=0.5)]
        if pending and time.monotonic() > deadline:
            raise LabError(f"pods still not reaching each other: {pending}")


def join_run(lab: Lab, i: int, location: str) -> tuple:
    name = f"j{i}"
    ip = next_pod_ip(lab, "c1")
    sources = sorted(lab.pods)
    with first_replies(lab, [(s, ip) for s in sources]) as probes:
        time.sleep(0.2)  # the pings are running
        t0 = time.time()
        lab.add_node("c1", location, name)
        added = time.time() - t0
        if lab.pods[f"{name}-p0"].address != ip:
            raise LabError(f"{name}-p0 got {lab.pods[f'{name}-p0'].address}, expected {ip}")
        got = [p.wait(max(1.0, 60 - (time.time() - t0))) for p in probes]
    missing = [s for s, g in zip(sources, got, strict=True) if g is None]
    if missing:
        raise LabError(f"{name}: no reply from {ip} to {missing} within 60 s")
    last = max(got) - t0  # type: ignore[type-var,operator]
    first = min(got) - t0  # type: ignore[type-var,operator]
    lab.remove_node(name)
    return (i, f"{name} ({location})", len(sources), added, first, last, last - added)


def switch_ends(lab: Lab, host: str) -> list[str]:
    """The switch namespace's ends of ``host``'s veth links."""
    sw = {
        link["ifindex"]: link["ifname"]
        for link in json.loads(netns.ip(lab.ns("sw"), "-j", "link", "show").stdout)
    }
    ends = []
    for dev in LAN_LINKS:
        out = netns.ip(lab.ns(host), "-j", "link", "show", dev, check=False)
        if out.returncode == 0:
            ends.append(sw[json.loads(out.stdout)[0]["link_index"]])
    return ends


def cables(lab: Lab, ends: list[str], state: str) -> None:
    for e in ends:
        netns.ip(lab.ns("sw"), "link", "set", e, state)


def peer_endpoint_of(lab: Lab, node: str, allowed: str) -> str | None:
    """The endpoint of the WireGuard peer of ``node`` whose allowed IPs include ``allowed``."""
    out = lab.wg(node, "show", "kilo0", "dump", check=False).stdout.splitlines()[1:]
    for line in out:
        f = line.split("\t")
        if len(f) > 3 and allowed in f[3].split(","):
            return f[2]
    return None


def last_seen(lab: Lab, node: str) -> int:
    out = lab.kubectl(
        "c1",
        "get",
        "node",
        node,
        "-o",
        r"jsonpath={.metadata.annotations.kilo\.squat\.ai/last-seen}",
    ).stdout
    return int(out or 0)


def leader_run(lab: Lab, i: int) -> tuple:
    a1_pub = str(lab.spec.node("a1").public_ip)
    a2_pub = str(lab.spec.node("a2").public_ip)
    a3_cidr = str(lab.spec.node("a3").pod_cidr)
    ends = switch_ends(lab, "a1")
    wait_until(
        lambda: (peer_endpoint_of(lab, "g1", a3_cidr) or "").startswith(a1_pub + ":"),
        90,
        what="a1 to be the aws leader",
    )
    lab.stop_agent("a1")
    t0 = time.time()
    cables(lab, ends, "down")
    age = t0 - last_seen(lab, "a1")
    probes_spec = [("a3-p0", lab.pods["g2-p0"].address), ("g2-p0", lab.pods["a3-p0"].address)]
    switched = None
    with first_replies(lab, probes_spec, interval=0.1) as probes:
        while time.time() - t0 < 150:
            if switched is None and (peer_endpoint_of(lab, "g1", a3_cidr) or "").startswith(
                a2_pub + ":"
            ):
                switched = time.time() - t0
            if switched is not None and all(p.done.is_set() for p in probes):
                break
            time.sleep(0.5)
        got = [p.at for p in probes]
    if any(g is None for g in got):
        raise LabError(f"leader run {i}: traffic did not come back within 150 s ({got})")
    a_to_g, g_to_a = (g - t0 for g in got)  # type: ignore[operator]
    # a1 comes back; it is the first public node by name, so it leads aws again
    cables(lab, ends, "up")
    lab.start_agent("a1")
    wait_until(
        lambda: (peer_endpoint_of(lab, "g1", a3_cidr) or "").startswith(a1_pub + ":"),
        90,
        what="a1 to lead aws again",
    )
    all_pods_reach(lab, 60)
    both = max(a_to_g, g_to_a)
    return (i, age, switched, a_to_g, g_to_a, both, both - (READY_WINDOW - age))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--join-runs", type=int, default=3)
    ap.add_argument("--leader-runs", type=int, default=2)
    args = ap.parse_args()
    note = machine_note()
    say(note)
    joins, losses = [], []
    with lab_session(spec(lab_name("bjoin"))) as lab:
        all_pods_reach(lab, 60)
        say("mesh ready: every pod reaches every pod")
        for i in range(1, args.join_runs + 1):
            joins.append(join_run(lab, i, ("gcp", "aws")[(i - 1) % 2]))
            r = joins[-1]
            say(f"join {i}: add_node {r[3]:.2f} s, reachable from all {r[5]:.2f} s")
            all_pods_reach(lab, 60)
        for i in range(1, args.leader_runs + 1):
            losses.append(leader_run(lab, i))
            r = losses[-1]
            say(f"leader lost {i}: last check-in {r[1]:.0f} s old, traffic back after {r[5]:.1f} s")
    if joins:
        print("Node joins -> reachable from all: seconds from the start of lab.add_node")
        print(
            table(
                [
                    "run",
                    "node",
                    "pods pinging",
                    "add_node s",
                    "first reply s",
                    "all replied s",
                    "after add_node s",
                ],
                joins,
            )
        )
        print(
            f"median: add_node {median([r[3] for r in joins]):.2f} s, reachable from all "
            f"{median([r[5] for r in joins]):.2f} s"
        )
        print()
    if losses:
        print(
            "Leader lost (aws leader a1: kg stopped, cables cut) -> traffic between locations "
            "again; seconds from the cut"
        )
        print(
            table(
                [
                    "run",
                    "last check-in age s",
                    "g1 -> new leader s",
                    "a3-p0->g2-p0 s",
                    "g2-p0->a3-p0 s",
                    "both s",
                    "after expiry s",
                ],
                losses,
            )
        )
        print(
            f"median: traffic flows again after {median([r[5] for r in losses]):.1f} s "
            f"(bound: 60 s readiness window - check-in age + reaction)"
        )
    print(note)


if __name__ == "__main__":
    main()
