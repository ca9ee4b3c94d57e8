"""No packet lost while the agent restarts or the API server is away.

kg on two locations x two nodes (leaders a1, g1), resyncing every 5 s so that a resync surely
falls into every disruption. 100 pings/s go from a pod on a2 to a pod on g2, through both
leaders' tunnels:

- the leader a1's agent is restarted in the middle of it: 0 lost, and the new agent adopts the
  running wireguard-go and finds nothing to change;
- the API server is stopped for 60 s and started again: 0 lost; afterwards the agents carry on
  (every node checks in again, a Peer created afterwards reaches every leader).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import pytest
from kilo_lab.binaries import locate
from kilo_lab.lab import Lab

from tests.integration.test_agent_support import (
    LEADERS,
    Flood,
    PingResult,
    Tracker,
    agent_lab,
    changes_total,
    check_nothing_left,
    genkey,
    health,
    lab_name,
    log_lines,
    peer_object,
    reconciles_total,
    two_locations,
    wait_for,
    wait_healthy,
    wg_keys,
)

pytestmark = pytest.mark.integration

NAME = lab_name("adis")
OUTAGE = 60.0
RESYNC = 5.0
SRC, DST = "a2-p0", "g2-p0"


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(two_locations(NAME, agent_args=[f"--resync-period={RESYNC:g}s"])) as lt:
        yield lt


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    lab = lab_tracker[0]
    lab.wait_ping(SRC, lab.pods[DST].address, timeout=30)
    return lab


def last_seen(lab: Lab) -> dict[str, int]:
    out = lab.kubectl("c1", "get", "nodes", "-o", "json").stdout
    return {
        n["metadata"]["name"]: int(
            n["metadata"].get("annotations", {}).get("kilo.squat.ai/last-seen", 0)
        )
        for n in json.loads(out)["items"]
    }


def check_flood(what: str, result: PingResult) -> None:
    print(
        f"[{NAME}] {result.sent} pings across {what} ({result.rate:.0f}/s over "
        f"{result.seconds:.0f} s): {result.lost} lost"
    )
    assert result.lost == 0, f"lost across {what}: {result.gaps()}\n{result.output[-800:]}"
    assert result.rate >= 80, f"only {result.rate:.0f} pings/s: the machine is too busy"


def watch_annotation(lab: Lab, node: str, key: str, out: IO[str]) -> subprocess.Popen[str]:
    """``kubectl get node -w``, printing one annotation's value at every change."""
    path = "{.metadata.annotations." + key.replace(".", "\\.") + '}{"\\n"}'
    return lab.popen(
        "admin",
        [
            str(locate("kubectl")),
            f"--kubeconfig={lab.kubeconfig('c1')}",
            "get",
            "node",
            node,
            "-w",
            "-o",
            f"jsonpath={path}",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_leader_restart_loses_no_packet(lab: Lab) -> None:
    node = "a1"
    others = {n.name: changes_total(lab, n.name) for n in lab.spec.nodes if n.name != node}
    with tempfile.TemporaryFile("w+") as seen:
        watch = watch_annotation(lab, node, "kilo.squat.ai/wireguard-ip", seen)
        flood = Flood(lab, SRC, lab.pods[DST].address)
        try:
            time.sleep(2)
            t0 = time.monotonic()
            lab.restart_agent(node)
            wait_healthy(lab, node, timeout=30)
            print(
                f"\n[{NAME}] kg on {node} restarted and reconciled in {time.monotonic() - t0:.1f} s"
            )
            # the new agent has made its first reconcile and a resync after it
            wait_for(
                f"{node} resynced after the restart", lambda: reconciles_total(lab, node) >= 2, 15
            )
            time.sleep(2)
            assert flood.running(), "the pings stopped by themselves"
        finally:
            result = flood.stop()
            watch.terminate()
            watch.wait(10)
        seen.seek(0)
        values = seen.read().splitlines()
    check_flood(f"the restart of {node}'s agent", result)
    assert result.sent > 500
    assert changes_total(lab, node) == 0, "the restarted agent changed things:\n" + "\n".join(
        log_lines(lab, node, "changed:")[-20:]
    )
    assert log_lines(lab, node, "adopting running wireguard-go")
    assert values and all(v == "10.4.0.1/16" for v in values), (
        f"{node}'s WireGuard IP annotation flapped during the restart: {values}"
    )
    assert {n: changes_total(lab, n) for n in others} == others, "other agents changed things"


def test_api_server_outage_loses_no_packet(lab: Lab) -> None:
    cp = lab.control_planes["c1"]
    flood = Flood(lab, SRC, lab.pods[DST].address)
    try:
        time.sleep(2)
        stopped = time.time()
        cp.stop_apiserver()
        try:
            time.sleep(OUTAGE)
            assert all(lab.agent_running(n.name) for n in lab.spec.nodes), "an agent died"
        finally:
            cp.start_apiserver()
        back = time.time()
        print(f"\n[{NAME}] API server away for {back - stopped:.0f} s")
        # the agents carry on: healthy, and every node checks in again
        for n in lab.spec.nodes:
            assert lab.agent_running(n.name)
            wait_for(f"kg on {n.name} healthy", lambda x: health(lab, x) == 200, 30, n.name)
        wait_for(
            "every node checked in after the outage",
            lambda: all(v >= int(back) - 1 for v in last_seen(lab).values()),
            timeout=40,
        )
        seen = last_seen(lab)
        print(
            f"[{NAME}] every node checked in again {time.time() - back:.1f} s after the API "
            "server returned ("
            + ", ".join(f"{n} at {v - back:+.0f} s" for n, v in seen.items())
            + ")"
        )
        for host in seen:
            for line in log_lines(lab, host, "annotations")[-4:]:
                print(f"[{NAME}]   {host}: {line}")
        time.sleep(RESYNC + 1)  # a resync with the fresh check-ins
        assert flood.running(), "the pings stopped by themselves"
    finally:
        result = flood.stop()
    check_flood("the API server's outage", result)
    assert result.seconds > OUTAGE
    # ...and a Peer created now reaches every leader
    _, public = genkey()
    lab.kubectl(
        "c1",
        "apply",
        "-f",
        "-",
        input=json.dumps(peer_object("after-outage", public, ["10.5.0.9/32"])),
    )
    for leader in LEADERS:
        wait_for(f"the new Peer on {leader}", lambda x: public in wg_keys(lab, x), 30, leader)


def test_nothing_left_behind(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
