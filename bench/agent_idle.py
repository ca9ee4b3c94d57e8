"""The agent's memory and CPU per node at idle: kg and its wireguard-go.

    python3 bench/agent_idle.py [--seconds 60]     # as root; about 1.5 min

A lab of one cluster, aws = a1 (leader), a2; gcp = g1 (leader), g2; a pod on every node; kg
with wireguard-go on every node (defaults: resync 30 s, check-in 30 s). Once every pod
reaches every pod and a few seconds have passed, nothing changes for SECONDS; over that window,
per process:

  RSS       VmRSS at the end of the window, VmHWM (peak since start) in /proc/<pid>/status
  CPU       utime+stime from /proc/<pid>/stat over the window, as % of one CPU and as CPU
            milliseconds per minute; for kg also its waited-for children (cutime+cstime)
  reconciles  kg's kilo_reconciles_total over the window (its /metrics): at idle they come from
            the resync timer and from the other nodes' check-ins (each node patches its Node's
            last-seen every 30 s, and every agent hears of it)

kg is a Python process (the one ``ip netns exec`` became); wireguard-go is the process of that
name among the node namespace's processes.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Any

from _common import (
    comm,
    cpu_ticks,
    lab_name,
    lab_session,
    machine_note,
    say,
    table,
    two_locations,
    wait_until,
)
from kilo_lab import procs
from kilo_lab.lab import Lab, LabError
from kilo_lab.layout import METRICS_PORT

TICK = os.sysconf("SC_CLK_TCK")


def spec(name: str) -> dict[str, Any]:
    return two_locations(name)


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LabError(f"no {field} for pid {pid}")


def reconciles(lab: Lab, node: str) -> int | None:
    """kg's kilo_reconciles_total, read in the admin namespace (management network)."""
    ip = lab.spec.node(node).mgmt_ip
    out = lab.exec("admin", ["curl", "-s", "-m", "3", f"http://{ip}:{METRICS_PORT}/metrics"])
    m = re.search(r"^kilo_reconciles_total(?:\{[^}]*\})?\s+([0-9.e+]+)$", out.stdout, re.MULTILINE)
    return int(float(m.group(1))) if m else None


def wg_pid(lab: Lab, node: str) -> int:
    """The wireguard-go that kg started on ``node`` (found among the node's processes)."""
    found = [p for p in procs.pids(lab.ns(node)) if comm(p) == "wireguard-go"]
    if len(found) != 1:
        raise LabError(f"{node}: want one wireguard-go process, found {found}")
    return found[0]


def all_pods_reach(lab: Lab) -> bool:
    return all(
        lab.ping(a, lab.pods[b].address, wait=0.5) for a in lab.pods for b in lab.pods if a != b
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to wait before measuring")
    args = ap.parse_args()
    note = machine_note()
    say(note)
    rows = []
    with lab_session(spec(lab_name("bidle"))) as lab:
        wait_until(lambda: all_pods_reach(lab), 60, step=0.5, what="every pod to reach every pod")
        time.sleep(args.settle)
        nodes = [n.name for n in lab.spec.nodes]
        leaders = {"a1", "g1"}
        procs = {}
        for n in nodes:
            kg = lab.agents[n].pid
            if not comm(kg).startswith("python"):
                raise LabError(f"{n}: kg pid {kg} is {comm(kg)!r}, not python")
            procs[n] = (kg, wg_pid(lab, n))
        rec0 = {n: reconciles(lab, n) for n in nodes}
        t0 = time.monotonic()
        cpu0 = {n: (cpu_ticks(kg, children=True), cpu_ticks(wg)) for n, (kg, wg) in procs.items()}
        say(f"measuring for {args.seconds:.0f} s")
        time.sleep(args.seconds)
        cpu1 = {n: (cpu_ticks(kg, children=True), cpu_ticks(wg)) for n, (kg, wg) in procs.items()}
        dt = time.monotonic() - t0
        rec1 = {n: reconciles(lab, n) for n in nodes}
        for n, (kg, wg) in procs.items():
            kg_cpu = (cpu1[n][0] - cpu0[n][0]) / TICK
            wg_cpu = (cpu1[n][1] - cpu0[n][1]) / TICK
            r0, r1 = rec0[n], rec1[n]
            rec = r1 - r0 if r0 is not None and r1 is not None else None
            rows.append(
                (
                    n,
                    "leader" if n in leaders else "follower",
                    status_kib(kg, "VmRSS") / 1024,
                    status_kib(kg, "VmHWM") / 1024,
                    100 * kg_cpu / dt,
                    round(1000 * kg_cpu * 60 / dt),
                    rec,
                    status_kib(wg, "VmRSS") / 1024,
                    status_kib(wg, "VmHWM") / 1024,
                    100 * wg_cpu / dt,
                    round(1000 * wg_cpu * 60 / dt),
                )
            )
    print(
        f"agent at idle, per node, over {dt:.0f} s (4 nodes, 2 locations; CPU % of one core; "
        f"CPU time resolution {1000 / TICK:.0f} ms)"
    )
    print(
        table(
            [
                "node",
                "role",
                "kg RSS MiB",
                "kg peak MiB",
                "kg CPU %",
                "kg CPU ms/min",
                "reconciles",
                "wg-go RSS MiB",
                "wg-go peak MiB",
                "wg-go CPU %",
                "wg-go CPU ms/min",
            ],
            rows,
        )
    )
    k = len(rows)
    print(
        f"mean per node: kg {sum(r[2] for r in rows) / k:.1f} MiB RSS, "
        f"{sum(r[4] for r in rows) / k:.2f} % CPU; wireguard-go "
        f"{sum(r[7] for r in rows) / k:.1f} MiB RSS, {sum(r[9] for r in rows) / k:.2f} % CPU"
    )
    print(note)


if __name__ == "__main__":
    main()
