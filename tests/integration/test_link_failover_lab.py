"""A leader that stops, across a ``kgctl link``: c1 in the native liveness mode (leader Leases,
probes), linked to c2 by one running ``kgctl link --resync-period 1s``. aws-1 leads aws and
carries c1's service CIDR for c2. Its kg stops (SIGTERM): aws-2 takes the Lease, the link moves
c2's Peer and the service CIDR to it, and a pod of c2 reaches aws-2's pod again, nobody running
anything. aws-1 comes back; then aws-2's kg and wireguard-go are killed (SIGKILL), and the same
happens the other way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kilo_lab.lab import Lab

from tests.integration.test_agent_support import (
    Tracker,
    agent_lab,
    check_nothing_left,
    lab_name,
    wait_for,
    wait_healthy,
)
from tests.integration.test_link_lab import link_argv, peer_names
from tests.integration.test_link_lab import spec as linked_spec

pytestmark = pytest.mark.integration


def spec() -> dict[str, Any]:
    s = linked_spec()
    s["name"] = lab_name("klfo")
    s["clusters"][0]["liveness"] = "native"
    return s


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(spec()) as (lab, tracker):
        yield lab, tracker


def carrier(lab: Lab) -> str:
    out = json.loads(lab.kubectl("c2", "get", "peers", "-o", "json").stdout)["items"]
    held = [p["metadata"]["name"] for p in out if "10.3.0.0/16" in p["spec"]["allowedIPs"]]
    return held[0] if len(held) == 1 else f"{held}"


def test_a_stopped_or_killed_leader_is_replaced_across_the_link(
    lab_tracker: tuple[Lab, Tracker],
) -> None:
    lab, tracker = lab_tracker
    b = lab.pods["onprem-2-p0"]
    proc = lab.popen("admin", link_argv(lab, "--resync-period", "1s"), stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        for fault, old, new in (("stop", "aws-1", "aws-2"), ("kill", "aws-2", "aws-1")):
            target = lab.pods[f"{new}-p0"]
            wait_for(
                f"c2's Peer of {old}", lambda o=old: carrier(lab) == f"c1-{o}", 90, interval=0.2
            )
            lab.wait_ping(b.name, target.address, timeout=60)
            t0 = time.monotonic()
            if fault == "stop":
                lab.stop_agent(old)
            else:
                lab.kill_agent(old)
            wait_for(f"the Peer moved to {new}", lambda n=new: carrier(lab) == f"c1-{n}", 60,
                     interval=0.1)  # fmt: skip
            moved = time.monotonic() - t0
            lab.wait_ping(b.name, target.address, timeout=60)
            back = time.monotonic() - t0
            print(f"{fault} {old}: Peer moved after {moved:.1f} s, c2 reaches {new}'s pod "
                  f"after {back:.1f} s")  # fmt: skip
            assert f"c1-{old}" not in peer_names(lab, "c2")
            if fault == "stop":
                lab.start_agent(old)
                wait_healthy(lab, old, 60)
                lab.wait_ping(b.name, lab.pods[f"{old}-p0"].address, timeout=60)  # via aws-2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    check_nothing_left(lab, tracker)
