"""A Peer created through the API: a "laptop" namespace configured from ``kgctl showconf peer``
reaches a pod in every location; deleting the Peer removes it from every leader again.

kg on two locations x two nodes (leaders a1, g1) against the real API server, real wireguard-go
on the nodes and on the laptop. The time from ``kubectl apply`` of the Peer to the laptop's first
ping reply is measured and printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kilo_lab import peers
from kilo_lab.lab import Lab
from kilo_lab.peers import PeerHost

from kilo.keys import Key
from kilo.wireguard import parse
from tests.integration.test_agent_support import (
    LEADERS,
    Tracker,
    agent_lab,
    check_nothing_left,
    genkey,
    lab_name,
    peer_object,
    two_locations,
    wait_for,
    wg_keys,
)

pytestmark = pytest.mark.integration

NAME = lab_name("apeer")
LAPTOP_IP = "10.5.0.1/32"


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(two_locations(NAME, peers=["laptop"])) as lt:
        yield lt


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    return lab_tracker[0]


def test_a_peer_reaches_pods_and_leaves(lab: Lab) -> None:
    private, public = genkey()
    targets = {loc: lab.pods[f"{loc}2-p0"].address for loc in ("a", "g")}  # on the followers
    laptop = PeerHost(
        host="laptop", peer="laptop", address=LAPTOP_IP, private_key=Key.parse(private)
    )
    try:
        peer = peer_object("laptop", public, [LAPTOP_IP], keepalive=10)
        t0 = time.monotonic()
        lab.kubectl("c1", "apply", "-f", "-", input=json.dumps(peer))
        showconf = lab.kgctl("c1", "showconf", "peer", "laptop").stdout
        assert len(parse(showconf).peers) == len(LEADERS), showconf
        routed = peers.configure(lab, laptop, parse(showconf))
        assert "10.2.1.0/24" in routed and "10.2.3.0/24" in routed, routed
        first = lab.wait_ping("laptop", targets["a"], timeout=30)
        first_reply = time.monotonic() - t0
        print(
            f"\n[{NAME}] Peer created -> first ping reply from a pod: {first_reply:.2f} s "
            f"(kgctl showconf and configuring the laptop: {first_reply - first:.2f} s; "
            f"then pinging until the reply: {first:.2f} s)"
        )
        lab.wait_ping("laptop", targets["g"], timeout=30)
        for leader in LEADERS:
            assert public in wg_keys(lab, leader), f"{leader} has no WireGuard peer for laptop"

        lab.kubectl("c1", "delete", "peer", "laptop")
        t1 = time.monotonic()
        for node in lab.spec.nodes:
            wait_for(
                f"laptop's key gone from {node.name}'s kilo0",
                lambda x: public not in wg_keys(lab, x),
                30,
                node.name,
            )
        print(
            f"[{NAME}] Peer deleted -> gone from every node's WireGuard: "
            f"{time.monotonic() - t1:.2f} s"
        )
        for loc, ip in targets.items():
            assert not lab.ping("laptop", ip, count=3, wait=1), (
                f"the laptop still reaches the pod {ip} in {loc} after its Peer was deleted"
            )
        # and the routes to the laptop's address are gone from every node
        for node in lab.spec.nodes:
            routes = lab.exec(node.name, ["ip", "route", "show", "proto", "107"]).stdout
            assert "10.5.0.1" not in routes, f"{node.name} still routes the deleted peer:\n{routes}"
    finally:
        peers.stop_device(lab, laptop)


def test_nothing_left_behind(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
