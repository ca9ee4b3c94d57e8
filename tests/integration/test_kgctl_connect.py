"""``kgctl connect``: a host outside the cluster joins the mesh as a Peer by itself.

kg on two locations x two nodes (a1, g1 lead; a2 has a public address too, so that it can take
over), real wireguard-go on the nodes and under ``kgctl connect``. The "laptop" namespace has
its internet address and, so that ``kgctl`` can watch the API server, a leg on the management
network. ``kgctl connect laptop`` runs there as a process of its own (``ip netns exec``): it
creates the Peer, brings up wireguard-go ``kilo0`` and routes, and the laptop pings a pod in each
location; it keeps reaching them after the leader of aws changes (the leader annotation on a2);
on SIGTERM it leaves nothing behind: no interface, no route of protocol 107, no Peer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from kilo_lab import netns, wgtool
from kilo_lab.binaries import locate
from kilo_lab.lab import Lab
from kilo_lab.layout import kg_socket_dir, mgmt_bridge
from kilo_lab.observe import node_keys

from kilo.keys import Key
from kilo.wireguard import parse
from tests.integration.test_agent_support import (
    Tracker,
    agent_lab,
    check_nothing_left,
    genkey,
    lab_name,
    peer_object,
    two_locations,
    wait_for,
)

pytestmark = pytest.mark.integration

NAME = lab_name("kconn")
ADDRESS = "10.5.0.9/32"
HOST = "laptop"


def spec() -> dict[str, object]:
    s = two_locations(NAME, peers=[HOST])
    s["clusters"][0]["locations"][0]["nodes"][1]["public"] = True  # type: ignore[index]
    return s


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(spec()) as (lab, tracker):
        c = lab.spec.clusters[0]
        ip = c.mgmt_cidr.broadcast_address - 2  # admin has the one above
        netns.add_veth(lab.ns(HOST), "kpy-mgmt", lab.ns("sw"), "kpy-cx0", master_b=mgmt_bridge(0))
        netns.add_address(lab.ns(HOST), "kpy-mgmt", f"{ip}/{c.mgmt_cidr.prefixlen}")
        yield lab, tracker


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    return lab_tracker[0]


def connect_argv(lab: Lab, peer: str, key: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kilo.cli.kgctl",
        f"--kubeconfig={lab.kubeconfig('c1')}",
        "connect",
        peer,
        "--allowed-ip",
        ADDRESS,
        "--private-key",
        key,
        "--wireguard=userspace",
        f"--wireguard-go={locate('wireguard-go')}",
        "--resync-period=10s",
        "--log-level=debug",
    ]


def laptop_wg(lab: Lab, *args: str) -> str:
    ns = lab.ns(HOST)
    socket_dir = kg_socket_dir(ns)
    assert socket_dir is not None
    return netns.run(wgtool.wg_argv(ns, socket_dir, *args), check=False).stdout


def peer_exists(lab: Lab, name: str) -> bool:
    r = lab.kubectl("c1", "get", "peer", name, "-o", "name", check=False)
    return r.returncode == 0


def test_connect_reaches_every_location_across_a_leader_change_and_leaves(
    lab_tracker: tuple[Lab, Tracker],
) -> None:
    lab, tracker = lab_tracker
    targets = {"aws": lab.pods["a1-p0"].address, "gcp": lab.pods["g2-p0"].address}
    key = lab.paths.peer_dir(HOST) / "connect.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    log = open(lab.paths.peer_dir(HOST) / "connect.log", "w+b")
    t0 = time.monotonic()
    proc = lab.popen(HOST, connect_argv(lab, HOST, str(key)), stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        log.flush()
        log.seek(0)
        return log.read().decode(errors="replace")[-4000:]

    try:
        wait_for("the Peer created", peer_exists, 30, lab, HOST)
        public = Key.parse(key.read_text().strip()).public()
        assert os.stat(key).st_mode & 0o777 == 0o600
        spec = lab.kubectl("c1", "get", "peer", HOST, "-o", "jsonpath={.spec}").stdout
        assert str(public) in spec and ADDRESS in spec, spec
        for loc, ip in targets.items():
            try:
                lab.wait_ping(HOST, ip, timeout=45)
            except Exception:  # noqa: BLE001
                pytest.fail(f"laptop does not reach {ip} in {loc}:\n{output()}")
        print(
            f"\n[{NAME}] kgctl connect -> pods of both locations answer: "
            f"{time.monotonic() - t0:.1f} s"
        )
        tracker.record()
        routes = lab.exec(HOST, ["ip", "route", "show", "proto", "107"]).stdout
        assert "10.2.0.0/24 dev kilo0" in routes and "10.2.3.0/24 dev kilo0" in routes, routes
        assert ADDRESS.split("/")[0] in lab.exec(HOST, ["ip", "addr", "show", "kilo0"]).stdout

        # the leader of aws changes: a2 leads, a1 no longer has the tunnel
        keys = node_keys(lab, "c1")
        assert str(keys["a1"]) in laptop_wg(lab, "show", "kilo0", "peers")
        t1 = time.monotonic()
        lab.kubectl("c1", "annotate", "node", "a2", "kilo.squat.ai/leader=true")

        def a2_leads() -> bool:
            live = {str(p.public_key) for p in parse(laptop_wg(lab, "showconf", "kilo0")).peers}
            return str(keys["a2"]) in live and str(keys["a1"]) not in live

        wait_for("the laptop's kilo0 tunnels to a2 instead of a1", a2_leads, 45)
        for loc, ip in targets.items():
            try:
                lab.wait_ping(HOST, ip, timeout=45)
            except Exception:  # noqa: BLE001
                pytest.fail(f"after the leader change, no reply from {ip} in {loc}:\n{output()}")
        print(
            f"[{NAME}] leader a1 -> a2: both locations answer again after "
            f"{time.monotonic() - t1:.1f} s"
        )
        assert proc.poll() is None, output()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, output()
        assert lab.exec(HOST, ["ip", "link", "show", "kilo0"]).returncode != 0
        left = lab.exec(HOST, ["ip", "route", "show", "table", "all", "proto", "107"]).stdout
        assert left == "", left
        wait_for("the Peer deleted", lambda: not peer_exists(lab, HOST), 15)
        socket_dir = kg_socket_dir(lab.ns(HOST))
        assert socket_dir is not None and not os.path.exists(socket_dir)
        for loc, ip in targets.items():
            assert not lab.ping(HOST, ip, count=2, wait=1), f"{ip} in {loc} still answers"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        lab.kubectl("c1", "annotate", "node", "a2", "kilo.squat.ai/leader-", check=False)


def test_someone_elses_peer_is_not_taken(lab: Lab) -> None:
    _, public = genkey()
    peer = peer_object("taken", public, ["10.5.0.30/32"])
    lab.kubectl("c1", "apply", "-f", "-", input=json.dumps(peer))
    key = lab.paths.peer_dir(HOST) / "taken.key"
    r = netns.run(connect_argv(lab, "taken", str(key)), netns=lab.ns(HOST), check=False, timeout=60)
    assert r.returncode == 1
    assert "the Peer 'taken' exists with the public key" in r.stderr and public in r.stderr
    got = lab.kubectl("c1", "get", "peer", "taken", "-o", "jsonpath={.spec.publicKey}").stdout
    assert got == public
    assert lab.exec(HOST, ["ip", "link", "show", "kilo0"]).returncode != 0
    lab.kubectl("c1", "delete", "peer", "taken")


def test_nothing_left_behind(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
