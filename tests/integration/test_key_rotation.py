"""Key rotation on real agents: kg on a1 (aws's leader) is sent SIGUSR1; its Node annotation
``kilo.squat.ai/key`` changes, g1 (gcp's leader) holds the new public key, the old one is gone
from every device, and pods ping across again. The time from the signal to g1's device holding
the new key (the propagation) and the pings lost at about 100/s from the rotated side are printed
(``pytest -s``); bench/rotation.py measures them over several rotations.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from kilo_lab.lab import Lab

from kilo.keys import Key
from tests.integration.test_agent_support import (
    Flood,
    Tracker,
    agent_lab,
    check_nothing_left,
    lab_name,
    log_lines,
    two_locations,
    wait_for,
    wg_keys,
)

pytestmark = pytest.mark.integration

NAME = lab_name("arot")
ROTATED, PEER = "a1", "g1"
PODS = ("a2-p0", "g2-p0")  # followers' pods: their traffic crosses the a1-g1 tunnel


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(two_locations(NAME)) as lt:
        yield lt


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    lab = lab_tracker[0]
    a, g = PODS
    lab.wait_ping(a, lab.pods[g].address, timeout=30)
    lab.wait_ping(g, lab.pods[a].address, timeout=30)
    return lab


def node_key(lab: Lab, node: str) -> str:
    return lab.kubectl(
        "c1", "get", "node", node, "-o", "jsonpath={.metadata.annotations.kilo\\.squat\\.ai/key}"
    ).stdout.strip()


def reaches(lab: Lab, pod: str, other: str) -> bool:
    return lab.ping(pod, lab.pods[other].address, wait=0.5)


def test_a_rotated_key_reaches_the_mesh(lab: Lab) -> None:
    a, g = PODS
    old = node_key(lab, ROTATED)
    assert old in wg_keys(lab, PEER)
    # from the rotated side only: g1 answers and never sends first, so only g1's nudge
    # (kilo.rekeyed) starts the handshake before WireGuard's 5 s retry
    floods = {f"{a} -> {g}": Flood(lab, a, lab.pods[g].address)}
    try:
        time.sleep(2)
        t0 = time.monotonic()
        lab.agents[ROTATED].send_signal(signal.SIGUSR1)
        propagated = wait_for(
            f"a new key on {PEER}'s device",
            lambda: old not in wg_keys(lab, PEER),
            10,
            interval=0.02,
        )
        new = node_key(lab, ROTATED)
        assert new != old, "the Node annotation kept the old key"
        assert new in wg_keys(lab, PEER), f"{PEER} holds {wg_keys(lab, PEER)}, not {new}"
        for pod, other in ((a, g), (g, a)):
            wait_for(f"{pod} reaches {other}", reaches, 30, lab, pod, other)
        resumed = time.monotonic() - t0
        time.sleep(2)
    finally:
        results = {k: f.stop() for k, f in floods.items()}
    print(
        f"\n[{NAME}] SIGUSR1 -> {PEER}'s device holds {ROTATED}'s new key: "
        f"{propagated * 1000:.0f} ms; both directions ping again after {resumed:.1f} s"
    )
    for k, r in results.items():
        print(f"[{NAME}] {k}: {r.lost} of {r.sent} lost at {r.rate:.0f}/s ({r.gaps()})")
        assert r.lost <= r.rate, f"{k}: more than a second of pings lost ({r.gaps()})"
    assert log_lines(lab, ROTATED, "rotated the WireGuard key")
    key_file = lab.daemons.paths.node_dir(ROTATED) / "key"  # kg's --private-key in the lab
    assert str(Key.parse(key_file.read_text().strip()).public()) == new
    assert key_file.stat().st_mode & 0o777 == 0o600
    for n in lab.spec.nodes:
        assert old not in wg_keys(lab, n.name), f"{n.name} still holds the old key"
    shown = lab.wg(ROTATED, "show", "kilo0", "public-key").stdout.strip()
    assert shown == new, f"{ROTATED}'s device has the public key {shown}, published {new}"


def test_nothing_left_behind(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
