"""``kgctl link`` in the lab: two clusters with kg on every node, linked by one running
``kgctl link``; pods of each reach pods of the other, keep reaching them when a leader of c1
changes (nobody runs anything again), and ``--unlink`` removes exactly the link's Peers (the
cross-cluster pings stop, each cluster's own mesh stays)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kilo_lab.lab import Lab
from kilo_lab.spec import two_clusters

from tests.integration.test_agent_support import (
    Tracker,
    agent_lab,
    check_nothing_left,
    lab_name,
    wait_for,
)

pytestmark = pytest.mark.integration

NAME = lab_name("klink")


def spec() -> dict[str, Any]:
    nodes = [{"name": "aws-1", "public": True}, {"name": "aws-2", "public": True}]
    aws = {"name": "aws", "cidr": "10.10.1.0/24", "nodes": nodes}
    return two_clusters(NAME, [aws])


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(spec()) as (lab, tracker):
        yield lab, tracker


def link_argv(lab: Lab, *more: str) -> list[str]:
    return [sys.executable, "-m", "kilo.cli.kgctl", f"--kubeconfig={lab.kubeconfig('c1')}",
            "link", "--name", "c1", "--to-kubeconfig", str(lab.kubeconfig("c2")),
            "--to-name", "c2", "--allowed-ips", "10.3.0.0/16", "--to-allowed-ips",
            "10.13.0.0/16", *more]  # fmt: skip


def peer_names(lab: Lab, cluster: str) -> set[str]:
    out = lab.kubectl(cluster, "get", "peers", "-o", "json").stdout
    return {p["metadata"]["name"] for p in json.loads(out)["items"]}


def test_a_running_link_follows_a_leader_change_and_unlink_removes_it(
    lab_tracker: tuple[Lab, Tracker],
) -> None:
    lab, tracker = lab_tracker
    a, b = lab.pods["aws-2-p0"], lab.pods["onprem-2-p0"]
    own = lab.pods["aws-1-p0"]
    proc = lab.popen("admin", link_argv(lab, "--resync-period", "1s"), stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        wait_for("c1's leader a Peer of c2", lambda: "c1-aws-1" in peer_names(lab, "c2"), 60)
        wait_for("c2's leader a Peer of c1", lambda: "c2-onprem-1" in peer_names(lab, "c1"), 60)
        lab.wait_ping(a.name, b.address, timeout=60)
        lab.wait_ping(b.name, a.address, timeout=60)
        # aws-2 takes the lead (Kilo's leader annotation): the link moves c2's Peer to it
        lab.kubectl("c1", "annotate", "node", "aws-2", "kilo.squat.ai/leader=true")
        wait_for(
            "c2's Peer moved to aws-2",
            lambda: {"c1-aws-2"} == {n for n in peer_names(lab, "c2") if n.startswith("c1-")},
            60,
        )
        took = lab.wait_ping(b.name, a.address, timeout=60)
        lab.wait_ping(b.name, own.address, timeout=60)  # through aws-2 to aws-1's pod
        print(f"cross-cluster ping back {took:.1f} s after the Peer moved")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    r = lab.kgctl("c1", *link_argv(lab, "--unlink")[4:], check=False)
    assert r.returncode == 0, r.stderr
    assert not {n for n in peer_names(lab, "c2") if n.startswith("c1-")}
    assert not {n for n in peer_names(lab, "c1") if n.startswith("c2-")}
    assert not lab.ping(b.name, a.address, count=3)  # the link is gone ...
    lab.wait_ping(own.name, a.address, timeout=30)  # ... each cluster's own mesh is not
    check_nothing_left(lab, tracker)
