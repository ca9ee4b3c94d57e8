"""A location's leader fails -> pods of that location reach the other locations again (native
liveness), and no other tunnel moves.

    python3 bench/failover.py [--runs 5] [--faults kill,block,blip,delete]  # as root; 3 min

A lab of one cluster in the native liveness mode (``liveness: native``: kg runs with
``--liveness=native``, leader Leases in kube-system, UDP probes on port 1107): location la =
a1, a2, a3 (all public, so any of them may lead), lb = b1 (public), b2, lc = c1 (public), c2; a
pod on every node. The leader of la is whoever holds its Lease (a leader that comes back does
not take leadership back, so each run's leader may differ). Faults, each ``--runs`` times:

- ``kill``: the leader's kg and its wireguard-go are SIGKILLed (by PID: the kg the lab started
  and its wireguard-go child). Restored by starting kg again.
- ``block``: an nftables rule (table ``inet bfail-block`` in the leader's namespace) drops UDP
  to its WireGuard listen port; kg and the API server connection stay up, so only the tunnel is
  cut. Restored by deleting the table.
- ``blip``: as ``block``, for 0.5 s only: under the 1 s threshold, so the leader must stay.
- ``delete``: the leader's Node object is deleted (``kubectl delete node``) and its kg and
  wireguard-go are SIGKILLed. Restored by removing the node from the lab and adding it again
  (``lab.add_node``: a new pod CIDR; its pod is made again).

Timed, per run: from the fault to when the pod of a follower of la has replies again from the
pods of b2 and c2 (``ping -i 0.1`` each, started before the fault): the first reply after the
last request lost (0 when none was lost: an outage shorter than the ping interval), once replies
have kept coming for 2 s; the run's figure is the later of the two. Also shown: when b1's and
c1's devices hold the new leader's key, and that peer's latest handshake (``wg`` gives it in
whole seconds).

Tunnels changed elsewhere: the WireGuard peers (public key, endpoint, allowed IPs) of every
device in lb and lc, read when the lab is stable before the fault and after the new leader has
taken over; la's entry may move from the old leader to the new one (its key and endpoint, and in
``delete`` its allowed IPs), every other entry must be identical. The leaders of lb and lc
(their Leases' holders) must not move either; a moved one counts as a changed tunnel.

Between runs the location is restored and the lab waits until it is stable (every pod reaches
a pod in every other location, the devices of lb and lc name the current la leader, and two
reads of them a second apart agree).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from _common import lab_name, lab_session, machine_note, median, percentile, say, table
from _common import wait_until as wait_for
from kilo_lab import netns, procs
from kilo_lab.lab import Lab, LabError

from kilo.leases import lease_name

CLUSTER = "k1"
A, B, C = "la", "lb", "lc"
LEASE_NS = "kube-system"
WG_PORT = 51820
BLOCK_TABLE = "bfail-block"
PING_INTERVAL = 0.1
GAP = 0.5  # no reply for this long: still out
OBSERVE = 30.0  # a run fails when traffic is not back after this long
TARGET_P95 = 3.0
FAULTS = ("kill", "block", "blip", "delete")
BLIP = 0.5  # seconds the "blip" fault blocks the port: under FAIL_AFTER, nothing may move

Entry = tuple[str, str, frozenset[str]]  # public key, endpoint, allowed IPs


def spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "clusters": [
            {
                "name": CLUSTER,
                "granularity": "location",
                "liveness": "native",
                "locations": [
                    {
                        "name": A,
                        "nodes": [{"name": f"a{i}", "public": True} for i in (1, 2, 3)],
                    },
                    {"name": B, "nodes": [{"name": "b1", "public": True}, "b2"]},
                    {"name": C, "nodes": [{"name": "c1", "public": True}, "c2"]},
                ],
            }
        ],
    }


# --- reading the lab -------------------------------------------------------------------------


def nodes_of(lab: Lab, location: str) -> list[str]:
    loc = next(x for x in lab.spec.cluster(CLUSTER).locations if x.name == location)
    return [n.name for n in loc.nodes]


def holder(lab: Lab, location: str) -> str:
    """The node named by the location's leader Lease ("" if none)."""
    out = lab.kubectl(
        CLUSTER,
        "get",
        "lease",
        "-n",
        LEASE_NS,
        lease_name(f"location:{location}"),
        "-o",
        "jsonpath={.spec.holderIdentity}",
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def node_key(lab: Lab, node: str) -> str:
    out = lab.kubectl(
        CLUSTER,
        "get",
        "node",
        node,
        "-o",
        r"jsonpath={.metadata.annotations.kilo\.squat\.ai/key}",
        check=False,
    )
    return out.stdout.strip()


def peers(lab: Lab, node: str) -> list[tuple[Entry, int]]:
    """The WireGuard peers on ``node``'s device, each with its latest handshake (Unix s)."""
    out = lab.wg(node, "show", "kilo0", "dump", check=False).stdout.splitlines()[1:]
    got = []
    for line in out:
        f = line.split("\t")
        if len(f) >= 5:
            allowed = frozenset(a for a in f[3].split(",") if a and a != "(none)")
            got.append(((f[0], f[2], allowed), int(f[4]) if f[4].isdigit() else 0))
    return got


def a_entry(lab: Lab, entry: Entry) -> bool:
    """Is this peer location la's (one of its allowed IPs is on la's LAN)?"""
    cidr = next(x for x in lab.spec.cluster(CLUSTER).locations if x.name == A).cidr
    for a in entry[2]:
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(a, strict=False).subnet_of(cidr):  # type: ignore[arg-type]
                return True
    return False


def snapshot(lab: Lab) -> dict[str, list[Entry]]:
    """The peers of every device in lb and lc."""
    return {n: sorted(e for e, _ in peers(lab, n)) for n in nodes_of(lab, B) + nodes_of(lab, C)}


def changed_elsewhere(
    lab: Lab, before: dict[str, list[Entry]], after: dict[str, list[Entry]], new_key: str
) -> int:
    """Peer entries on lb's and lc's devices that differ, beyond la's entry moving to the new
    leader."""
    count = 0
    for node in sorted(set(before) | set(after)):
        b = [e for e in before.get(node, []) if not a_entry(lab, e)]
        a = [e for e in after.get(node, []) if not a_entry(lab, e)]
        count += len(set(b) ^ set(a))
        ba = [e for e in before.get(node, []) if a_entry(lab, e)]
        aa = [e for e in after.get(node, []) if a_entry(lab, e)]
        if len(ba) != len(aa):
            count += abs(len(ba) - len(aa))
        elif aa and any(e[0] != new_key for e in aa) and aa != ba:
            count += len(aa)  # la's entry moved, but not to the new leader
    return count


def all_locations_reach(lab: Lab, timeout: float) -> None:
    """Every pod reaches one pod on every node of the other locations."""
    by_loc = {loc: nodes_of(lab, loc) for loc in (A, B, C)}
    loc_of = {n: loc for loc, ns in by_loc.items() for n in ns}
    pending = [
        (p, q)
        for p, pod in lab.pods.items()
        for q, other in lab.pods.items()
        if loc_of[pod.node] != loc_of[other.node]
    ]
    deadline = time.monotonic() + timeout
    while pending:
        pending = [(p, q) for p, q in pending if not lab.ping(p, lab.pods[q].address, wait=0.5)]
        if pending and time.monotonic() > deadline:
            raise LabError(f"pods still not reaching each other: {pending[:6]}")


def settle(lab: Lab, timeout: float = 90) -> str:
    """Wait until the lab is stable; the leader of la."""
    deadline = time.monotonic() + timeout
    leader = ""

    def named() -> bool:
        nonlocal leader
        leader = holder(lab, A)
        key = node_key(lab, leader) if leader else ""
        return bool(key) and all(
            any(e[0] == key for e, _ in peers(lab, n))
            for n in (leader_of(lab, B), leader_of(lab, C))
        )

    wait_for(named, timeout, 0.5, what="lb's and lc's leaders to name la's leader")
    all_locations_reach(lab, max(5.0, deadline - time.monotonic()))
    prev = snapshot(lab)
    while True:
        time.sleep(1.0)
        cur = snapshot(lab)
        if cur == prev and holder(lab, A) == leader:
            return leader
        if time.monotonic() > deadline:
            raise LabError("the devices of lb and lc keep changing")
        prev, leader = cur, holder(lab, A)


def leader_of(lab: Lab, location: str) -> str:
    return holder(lab, location) or nodes_of(lab, location)[0]


# --- pings ------------------------------------------------------------------------------------

_REPLY = re.compile(r"^\[(\d+\.\d+)\].*bytes from.*icmp_seq=(\d+)")


class Replies:
    """``ping -D -i 0.1`` from ``host`` to ``ip`` in the background, every reply's sequence
    number and wall-clock time recorded. Started by us, stopped by PID."""

    def __init__(self, lab: Lab, host: str, ip: str) -> None:
        self.ip = ip
        self.replies: list[tuple[int, float]] = []
        self.proc = subprocess.Popen(
            netns.command(
                lab.ns(host), ["ping", "-n", "-D", "-i", str(PING_INTERVAL), "-W", "1", ip]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = _REPLY.match(line)
            if m:
                self.replies.append((int(m.group(2)), float(m.group(1))))

    def back_at(self, t0: float, now: float) -> float | None:
        """When replies resumed for good after the fault at ``t0``: the time of the first reply
        after the last request lost since then (t0 itself if none was lost: an outage shorter
        than the ping interval); None while the latest reply is older than ``GAP``."""
        replies = list(self.replies)
        base = max((s for s, t in replies if t < t0), default=0)
        after = sorted((s, t) for s, t in replies if s > base)
        if not after or now - after[-1][1] > GAP:
            return None
        seen = {s for s, _ in after}
        lost = [s for s in range(base + 1, after[-1][0]) if s not in seen]
        if not lost:
            return t0
        return min(t for s, t in after if s > lost[-1])

    def stop(self) -> None:
        procs.stop([self.proc], timeout=5)
        self._thread.join(2)


@contextlib.contextmanager
def pinging(lab: Lab, host: str, ips: list[str]) -> Iterator[list[Replies]]:
    started: list[Replies] = []
    try:
        for ip in ips:
            started.append(Replies(lab, host, ip))
        yield started
    finally:
        for r in started:
            r.stop()


# --- faults -----------------------------------------------------------------------------------


def block_rules(add: bool) -> str:
    if not add:
        return json.dumps(
            {"nftables": [{"delete": {"table": {"family": "inet", "name": BLOCK_TABLE}}}]}
        )
    drop = [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "udp", "field": "dport"}},
                "right": WG_PORT,
            }
        },
        {"drop": None},
    ]
    return json.dumps(
        {
            "nftables": [
                {"add": {"table": {"family": "inet", "name": BLOCK_TABLE}}},
                {
                    "add": {
                        "chain": {
                            "family": "inet",
                            "table": BLOCK_TABLE,
                            "name": "input",
                            "type": "filter",
                            "hook": "input",
                            "prio": -10,
                            "policy": "accept",
                        }
                    }
                },
                {
                    "add": {
                        "rule": {
                            "family": "inet",
                            "table": BLOCK_TABLE,
                            "chain": "input",
                            "expr": drop,
                        }
                    }
                },
            ]
        }
    )


def nft(lab: Lab, node: str, text: str, check: bool = True) -> None:
    netns.run(["nft", "-j", "-f", "-"], netns=lab.ns(node), input=text, check=check)


@dataclass
class Run:
    fault: str
    run: int
    old: str
    new: str = ""
    back: float | None = None  # seconds from the fault to traffic flowing again
    switched: dict[str, float] = field(default_factory=dict)  # b1/c1: new key on the device
    handshake: dict[str, float] = field(default_factory=dict)
    changed: int = 0


def fault_run(lab: Lab, fault: str, i: int, blocked: list[str]) -> Run:
    old = settle(lab)
    followers = [n for n in nodes_of(lab, A) if n != old]
    src = f"{followers[-1]}-p0"
    dests = [lab.pods["b2-p0"].address, lab.pods["c2-p0"].address]
    b_lead, c_lead = leader_of(lab, B), leader_of(lab, C)
    before = snapshot(lab)
    r = Run(fault, i, old)
    keys = {n: node_key(lab, n) for n in nodes_of(lab, A)}
    successors = {keys[n] for n in followers}
    with pinging(lab, src, dests) as pings:
        time.sleep(1.0)
        if not all(p.replies for p in pings):
            raise LabError(f"{src} does not reach {dests} before the fault")
        t0 = time.time()
        if fault == "kill":
            lab.kill_agent(old)
        elif fault == "block":
            nft(lab, old, block_rules(True))
            blocked.append(old)
        elif fault == "blip":
            nft(lab, old, block_rules(True))
            blocked.append(old)
            time.sleep(BLIP - (time.time() - t0))
            nft(lab, old, block_rules(False))
            blocked.remove(old)
        else:  # delete
            lab.kill_agent(old)
            lab.kubectl(CLUSTER, "delete", "node", old, "--wait=false")
        while time.time() - t0 < OBSERVE:
            now = time.time()
            for n in (b_lead, c_lead):
                if n in r.switched:
                    continue
                for (key, _, _), hs in peers(lab, n):
                    if key in successors:
                        r.switched[n] = time.time() - t0
                        if hs:
                            r.handshake[n] = hs - t0
            backs = [p.back_at(t0, now) for p in pings]
            if all(b is not None for b in backs) and now - max(backs) >= 2.0:  # type: ignore[type-var]
                r.back = max(backs) - t0  # type: ignore[type-var,operator]
                break
            time.sleep(0.25)
    r.new = holder(lab, A)
    if r.back is None:
        say(f"  {fault} {i}: traffic not back within {OBSERVE:.0f} s (leader {old} -> {r.new})")
    for n in (b_lead, c_lead):  # the first handshake may come after the switch was seen
        if n in r.switched and n not in r.handshake:
            for (key, _, _), hs in peers(lab, n):
                if key in successors and hs:
                    r.handshake[n] = hs - t0
    new_key = keys.get(r.new, "")
    with contextlib.suppress(LabError):
        wait_for(
            lambda: all(any(e[0] == new_key for e, _ in peers(lab, n)) for n in (b_lead, c_lead)),
            30,
            0.5,
            what="lb's and lc's leaders to name the new leader",
        )
    time.sleep(1.0)
    r.changed = changed_elsewhere(lab, before, snapshot(lab), new_key)
    r.changed += (leader_of(lab, B) != b_lead) + (leader_of(lab, C) != c_lead)
    restore(lab, fault, old, blocked)
    return r


def restore(lab: Lab, fault: str, node: str, blocked: list[str]) -> None:
    if fault == "kill":
        lab.start_agent(node)
    elif fault == "block":
        nft(lab, node, block_rules(False))
        blocked.remove(node)
    elif fault == "delete":
        lab.remove_node(node, delete_object=False)
        lab.add_node(CLUSTER, A, node, public=True)


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--faults", default=",".join(FAULTS), help="comma-separated: " + ",".join(FAULTS)
    )
    args = ap.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    if not set(faults) <= set(FAULTS) or not faults:
        ap.error(f"--faults: some of {', '.join(FAULTS)}")
    note = machine_note()
    say(note)
    runs: list[Run] = []
    blocked: list[str] = []
    with lab_session(spec(lab_name("bfail"))) as lab:
        try:
            say(f"mesh ready; la led by {settle(lab)}")
            for fault in faults:
                for i in range(1, args.runs + 1):
                    r = fault_run(lab, fault, i, blocked)
                    runs.append(r)
                    back = "-" if r.back is None else f"{r.back:.2f} s"
                    say(
                        f"{fault} {i}: leader {r.old} -> {r.new}, traffic back after {back}, "
                        f"tunnels changed elsewhere {r.changed}"
                    )
        finally:
            for node in blocked:  # the namespace goes with the lab anyway
                with contextlib.suppress(Exception):
                    nft(lab, node, block_rules(False), check=False)
    print_tables(runs, faults, args.runs)
    print(note)


def print_tables(runs: list[Run], faults: list[str], n: int) -> None:
    print("Each run: seconds from the fault (b1/c1: la's new leader's key on the device, and its")
    print("latest handshake, whole seconds; back: a follower's pod has replies from b2-p0 and")
    print("c2-p0 again)")
    rows = [
        (
            r.fault,
            r.run,
            f"{r.old} -> {r.new}",
            r.switched.get("b1"),
            r.handshake.get("b1"),
            r.switched.get("c1"),
            r.handshake.get("c1"),
            r.back,
            r.changed,
        )
        for r in runs
    ]
    heads = ["fault", "run", "leader", "b1 key s", "b1 hs s", "c1 key s", "c1 hs s", "back s"]
    print(table([*heads, "changed elsewhere"], rows))
    print()
    summary = []
    for fault in faults:
        rs = [r for r in runs if r.fault == fault]
        backs = [r.back for r in rs if r.back is not None]
        summary.append(
            (
                fault,
                f"{len(backs)}/{len(rs)}",
                median(backs) if backs else None,
                percentile(backs, 95) if backs else None,
                max(backs) if backs else None,
                f"p95 <= {TARGET_P95:.0f} s",
                sum(r.changed for r in rs),
                "0",
                sum(r.new != r.old for r in rs),
                "0" if fault == "blip" else str(len(rs)),
            )
        )
    print(f"Failover (native liveness), {n} runs per fault: seconds from the fault to traffic back")
    print(
        table(
            [
                "fault",
                "runs",
                "p50 s",
                "p95 s",
                "max s",
                "target",
                "tunnels changed elsewhere",
                "target",
                "leader moved",
                "target",
            ],
            summary,
        )
    )


if __name__ == "__main__":
    main()
