"""A settled mesh stays still, and bad objects hurt nobody else.

kg on two locations x two nodes (leaders a1, g1), resyncing every 5 s:

- a no-op resync makes zero changes: over at least two resync periods no agent logs a change,
  kilo_reconcile_changes_total stays put, and every node's routes (protocol 107), rules, nft
  table, kilo0 and WireGuard config (minus counters) are the same before and after;
- malformed annotations on a non-leader (allowed-location-ips "bogus", persistent-keepalive
  "ten", force-endpoint garbage) and a Peer the CRD accepts but Kilo refuses (its allowed IP is a
  pod's address) leave every tunnel working, and are reported (the log line "ignoring a bad
  value", kilo_object_problems > 0); a Peer the CRD rejects is rejected with a clear message;
- the mesh with those bad objects in it is just as still.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import pytest
from kilo_lab.lab import Lab, LabError

from tests.integration.test_agent_support import (
    LEADERS,
    Tracker,
    agent_lab,
    changes_total,
    check_nothing_left,
    dataplane,
    genkey,
    lab_name,
    log_lines,
    metrics,
    peer_object,
    reconciles_total,
    two_locations,
    wait_for,
    wg_keys,
)

pytestmark = pytest.mark.integration

NAME = lab_name("ares")
RESYNC = 5.0
BAD_NODE = "a2"  # not a leader
BAD_ANNOTATIONS = {
    "kilo.squat.ai/allowed-location-ips": "bogus",
    "kilo.squat.ai/persistent-keepalive": "ten",
    "kilo.squat.ai/force-endpoint": "garbage:::not-an-endpoint",
}


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(two_locations(NAME, agent_args=[f"--resync-period={RESYNC:g}s"])) as lt:
        yield lt


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    return lab_tracker[0]


def unreachable_pairs(lab: Lab, timeout: float = 30.0) -> list[tuple[str, str]]:
    pending = list(itertools.permutations(sorted(lab.pods), 2))
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [(a, b) for a, b in pending if not lab.ping(a, lab.pods[b].address, wait=0.5)]
    return pending


def settle(lab: Lab, quiet: float = 2 * RESYNC + 1, timeout: float = 90.0) -> None:
    """Wait until no agent has counted a change for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last = {n.name: changes_total(lab, n.name) for n in lab.spec.nodes}
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            pytest.fail(f"the mesh did not settle within {timeout:.0f} s")
        time.sleep(1)
        now = {n.name: changes_total(lab, n.name) for n in lab.spec.nodes}
        if now != last:
            last, since = now, time.monotonic()


def assert_still(lab: Lab, periods: float = 2.5) -> None:
    """Over ``periods`` resync periods: no change counted or logged, the data plane unchanged."""
    nodes = [n.name for n in lab.spec.nodes]
    before = {n: dataplane(lab, n) for n in nodes}
    counts = {n: changes_total(lab, n) for n in nodes}
    reconciles = {n: reconciles_total(lab, n) for n in nodes}
    logged = {n: len(log_lines(lab, n, "changed:")) for n in nodes}
    time.sleep(periods * RESYNC)
    for n in nodes:
        new_lines = log_lines(lab, n, "changed:")[logged[n] :]
        assert new_lines == [], f"{n} changed things on a no-op resync:\n" + "\n".join(new_lines)
        assert changes_total(lab, n) == counts[n], f"{n}: kilo_reconcile_changes_total moved"
        assert reconciles_total(lab, n) >= reconciles[n] + 2, f"{n} did not resync twice"
        after = dataplane(lab, n)
        for what in before[n]:
            assert after[what] == before[n][what], f"{n}: {what} changed on a no-op resync"


def test_a_no_op_resync_changes_nothing(lab: Lab) -> None:
    assert unreachable_pairs(lab) == []
    settle(lab)
    assert_still(lab)


def test_bad_annotations_are_reported_and_hurt_nobody(lab: Lab) -> None:
    args = [f"{k}={v}" for k, v in BAD_ANNOTATIONS.items()]
    lab.kubectl("c1", "annotate", "node", BAD_NODE, "--overwrite", *args)
    for n in lab.spec.nodes:
        wait_for(
            f"{n.name} reports the bad annotations",
            lambda x: (
                len(
                    [
                        line
                        for line in log_lines(lab, x, "ignoring a bad value")
                        if f"Node '{BAD_NODE}'" in line
                    ]
                )
                >= len(BAD_ANNOTATIONS)
            ),
            20,
            n.name,
        )
        assert metrics(lab, n.name)["kilo_object_problems"] >= len(BAD_ANNOTATIONS)
    lines = log_lines(lab, "a1", "ignoring a bad value")
    for key, value in BAD_ANNOTATIONS.items():
        assert any(key in x and value.split(":")[0] in x for x in lines), (key, lines)
    time.sleep(RESYNC + 1)  # a resync with the bad values in place
    assert all(lab.agent_running(n.name) for n in lab.spec.nodes)
    assert unreachable_pairs(lab) == []


def test_a_peer_the_crd_rejects_gets_a_clear_message(lab: Lab) -> None:
    bad = peer_object("bad-key", "not-a-wireguard-key", ["10.5.0.7/32"])
    with pytest.raises(LabError) as err:
        lab.kubectl("c1", "apply", "-f", "-", input=json.dumps(bad))
    assert "publicKey: must be a 32-byte WireGuard key" in str(err.value), str(err.value)
    bad = peer_object("bad-ip", genkey()[1], ["10.5.0.300/32"])
    with pytest.raises(LabError) as err:
        lab.kubectl("c1", "apply", "-f", "-", input=json.dumps(bad))
    assert "10.5.0.300/32 is not an IP prefix in CIDR notation" in str(err.value), str(err.value)


def test_a_peer_kilo_refuses_is_reported_and_hurts_nobody(lab: Lab) -> None:
    stolen = lab.pods["g2-p0"].address  # a pod's address: Kilo would hand the pod's traffic away
    _, bad_key = genkey()
    _, good_key = genkey()
    before = metrics(lab, "a1")["kilo_object_problems"]
    lab.kubectl(
        "c1",
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    peer_object("thief", bad_key, [f"{stolen}/32", "10.5.0.5/32"]),
                    peer_object("good", good_key, ["10.5.0.6/32"]),
                ],
            }
        ),
    )
    for leader in LEADERS:
        wait_for(f"the good Peer on {leader}", lambda x: good_key in wg_keys(lab, x), 30, leader)
        wait_for(
            f"{leader} reports the refused claim",
            lambda x: any(
                "Peer 'thief'" in line and stolen in line
                for line in log_lines(lab, x, "ignoring a bad value")
            ),
            20,
            leader,
        )
        assert metrics(lab, leader)["kilo_object_problems"] >= before + 1
        live = lab.wg(leader, "show", "kilo0", "allowed-ips").stdout
        assert f"{stolen}/32" not in live, f"{leader} hands the pod's address to a peer:\n{live}"
        assert "10.5.0.5/32" in live  # the rest of the refused Peer is kept, as Kilo does
    assert unreachable_pairs(lab) == []


def test_with_bad_objects_a_resync_still_changes_nothing(lab: Lab) -> None:
    settle(lab)
    problems = {n.name: len(log_lines(lab, n.name, "ignoring a bad value")) for n in lab.spec.nodes}
    assert_still(lab)
    for n in lab.spec.nodes:  # each problem is logged once, not at every resync
        assert len(log_lines(lab, n.name, "ignoring a bad value")) == problems[n.name]


def test_nothing_left_behind(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
