"""Nodes and a Peer behind NAT (issue 14): nftables masquerading with random source ports.

One cluster, kg on every node, real wireguard-go: location aws (a1 public, the leader; a2
private), locations home1 (h1) and home2 (h2), both behind NAT ``home`` (a router with a leg on
each LAN), each node with ``kilo.squat.ai/persistent-keepalive`` as Kilo's docs advise for nodes
behind NAT; and the Peer ``laptop`` behind NAT ``cafe`` (keepalive in its Peer, no endpoint).

What is checked:

- h1 and the laptop reach pods in aws and are reached back from them (a2 through its leader);
- a1 discovers where h1 and the laptop really are: the NAT's outside address and the port it
  mapped them to (read from the router's conntrack), in a1's
  ``kilo.squat.ai/discovered-endpoints`` annotation and in ``kgctl showconf node a1``;
- when a NAT forgets its mappings (conntrack flushed: the next packet leaves through another
  port), traffic from aws to the host behind it recovers (within the keepalive plus a
  handshake; asserted with a generous bound) and the annotation follows the new port;
- h1 and h2, behind the same NAT, reach each other straight through the router (each tunnels to
  the other's LAN address, which it published; nothing is translated);
- nothing of the lab is left behind.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator

import pytest
from kilo_lab import peers
from kilo_lab.lab import Lab
from kilo_lab.observe import node_keys
from kilo_lab.peers import PeerHost

from kilo.keys import Key
from kilo.model import Endpoint
from kilo.wireguard import WgConf, parse
from tests.integration.test_agent_support import (
    Tracker,
    agent_lab,
    check_nothing_left,
    genkey,
    lab_name,
    peer_object,
    pod,
    reach,
    wait_for,
)

pytestmark = pytest.mark.integration

NAME = lab_name("nat")
KEEPALIVE = 10  # seconds: the nodes' persistent-keepalive annotation (and the laptop's Peer)
HANDSHAKE = 5  # WireGuard's REKEY_TIMEOUT: a handshake retried after 5 s
#: A generous bound on recovering from a new NAT mapping (behaviour, not timing precision):
#: the keepalive that makes the new mapping plus a handshake, several times over.
RECOVERY = 4 * (KEEPALIVE + HANDSHAKE)
LAPTOP = "10.5.0.9/32"
DISCOVERED = "kilo.squat.ai/discovered-endpoints"


def spec() -> dict[str, object]:
    def behind(name: str) -> dict[str, object]:
        keepalive = {"kilo.squat.ai/persistent-keepalive": str(KEEPALIVE)}
        return {"name": name, "nat": "home", "annotations": keepalive}

    return {
        "name": NAME,
        "clusters": [
            {
                "name": "c1",
                "granularity": "location",
                "locations": [
                    {"name": "aws", "nodes": [{"name": "a1", "public": True}, "a2"]},
                    {"name": "home1", "nodes": [behind("h1")]},
                    {"name": "home2", "nodes": [behind("h2")]},
                ],
            }
        ],
        "peers": [{"name": "laptop", "nat": "cafe"}],
    }


@pytest.fixture(scope="module")
def lab_tracker() -> Iterator[tuple[Lab, Tracker]]:
    with agent_lab(spec()) as (lab, tracker):
        private, public = genkey()
        laptop = PeerHost("laptop", "laptop", LAPTOP, private_key=Key.parse(private))
        peer = peer_object("laptop", public, [LAPTOP], keepalive=KEEPALIVE)  # no endpoint
        lab.kubectl("c1", "apply", "-f", "-", input=json.dumps(peer))
        shown = parse(lab.kgctl("c1", "showconf", "peer", "laptop").stdout)
        peers.configure(lab, laptop, shown)
        try:
            yield lab, tracker
        finally:
            tracker.record()
            peers.stop_device(lab, laptop)


@pytest.fixture(scope="module")
def lab(lab_tracker: tuple[Lab, Tracker]) -> Lab:
    return lab_tracker[0]


def discovered(lab: Lab, node: str) -> dict[str, Endpoint]:
    """``node``'s discovered-endpoints annotation: public key -> endpoint."""
    out = lab.kubectl("c1", "get", "node", node, "-o", "json").stdout
    text = (json.loads(out)["metadata"].get("annotations") or {}).get(DISCOVERED) or "{}"
    return {
        k: Endpoint(int(v["Port"]), ipaddress.ip_address(v["IP"]))
        for k, v in json.loads(text).items()
    }


def endpoints(conf: WgConf) -> dict[str, str]:
    """Public key -> endpoint of every peer of a WireGuard config."""
    return {str(p.public_key): str(p.endpoint) for p in conf.peers}


def mapped(lab: Lab, nat: str, src: str, dst: str) -> str | None:
    """``OUTSIDE:PORT`` NAT ``nat`` maps WireGuard's flow ``src``:51820 -> ``dst``:51820 to."""
    for f in lab.nat_flows(nat):
        if (str(f.src), f.sport, str(f.dst), f.dport) == (src, 51820, dst, 51820):
            return f"{f.public}:{f.port}"
    return None


def laptop_key(lab: Lab) -> str:
    return lab.kubectl("c1", "get", "peer", "laptop", "-o", "jsonpath={.spec.publicKey}").stdout


def test_a_node_behind_nat_reaches_pods_and_is_reached_back(lab: Lab) -> None:
    for a in ("a1", "a2"):
        reach(lab, "h1-p0", pod(lab, a))
        reach(lab, f"{a}-p0", pod(lab, "h1"))
    # what h1 published is its LAN address: nobody outside can reach it there
    h1 = lab.kubectl("c1", "get", "node", "h1", "-o", "jsonpath={.metadata.annotations}").stdout
    assert json.loads(h1)["kilo.squat.ai/endpoint"] == f"{lab.spec.node('h1').lan_ip}:51820"


def test_a_peer_behind_nat_reaches_pods_and_is_reached_back(lab: Lab) -> None:
    for a in ("a1", "a2"):
        reach(lab, "laptop", pod(lab, a))
        reach(lab, f"{a}-p0", LAPTOP.split("/")[0])


def test_the_discovered_endpoint_is_the_nats_mapping(lab: Lab) -> None:
    keys = {n: str(k) for n, k in node_keys(lab, "c1").items()}
    a1 = str(lab.spec.node("a1").public_ip)
    lap = laptop_key(lab)
    expected = {
        keys["h1"]: ("home", str(lab.spec.node("h1").lan_ip)),
        keys["h2"]: ("home", str(lab.spec.node("h2").lan_ip)),
        lap: ("cafe", str(lab.spec.peers[0].inside_ip)),
    }

    def agree() -> bool:
        found = {k: str(e) for k, e in discovered(lab, "a1").items()}
        want = {k: mapped(lab, nat, src, a1) for k, (nat, src) in expected.items()}
        return None not in want.values() and all(found.get(k) == v for k, v in want.items())

    wait_for("a1's discovered endpoints are the NATs' mappings", agree, 90)
    found = {k: str(e) for k, e in discovered(lab, "a1").items()}
    home, cafe = (str(lab.spec.nat(n).public_ip) for n in ("home", "cafe"))
    assert found[keys["h1"]].startswith(f"{home}:") and found[lap].startswith(f"{cafe}:")
    shown = endpoints(parse(lab.kgctl("c1", "showconf", "node", "a1").stdout))
    for k in expected:
        assert shown[k] == found[k], (k, shown, found)
    print(
        f"\n[{NAME}] a1 discovered h1 at {found[keys['h1']]}, h2 at {found[keys['h2']]}, "
        f"the laptop at {found[lap]}"
    )


def _recovers(lab: Lab, nat: str, src: str, key: str, target: str) -> None:
    """NAT ``nat`` forgets its mappings; a1's pod reaches ``target`` (behind it) again, through
    a new port, which a1's annotation then names."""
    a1 = str(lab.spec.node("a1").public_ip)
    before = mapped(lab, nat, src, a1)
    assert before is not None
    reach(lab, "a1-p0", target)
    for _ in range(3):  # a random port is, once in ~64k, the old one again
        t0 = time.monotonic()
        lab.nat_forget(nat)
        took = reach(lab, "a1-p0", target, timeout=RECOVERY)
        after = mapped(lab, nat, src, a1)
        if after != before:
            break
    assert after is not None and after != before, (before, after)
    print(
        f"\n[{NAME}] NAT {nat} forgot its mappings ({before} -> {after}): a1-p0 reaches "
        f"{target} again after {took:.1f} s (keepalive {KEEPALIVE} s; "
        f"{time.monotonic() - t0:.1f} s in all)"
    )
    wait_for(
        f"a1's discovered endpoint follows the new mapping {after}",
        lambda: str(discovered(lab, "a1").get(key)) == after,
        90,
    )
    shown = endpoints(parse(lab.kgctl("c1", "showconf", "node", "a1").stdout))
    assert shown[key] == after
    reach(lab, "a2-p0", target)


def test_a_node_is_reached_again_after_the_nat_mapping_changes(lab: Lab) -> None:
    key = str(node_keys(lab, "c1")["h1"])
    _recovers(lab, "home", str(lab.spec.node("h1").lan_ip), key, pod(lab, "h1"))
    reach(lab, "h1-p0", pod(lab, "a2"))


def test_a_peer_is_reached_again_after_the_nat_mapping_changes(lab: Lab) -> None:
    ip = LAPTOP.split("/")[0]
    _recovers(lab, "cafe", str(lab.spec.peers[0].inside_ip), laptop_key(lab), ip)
    reach(lab, "laptop", pod(lab, "a2"))


def test_two_hosts_behind_one_nat_reach_each_other(lab: Lab) -> None:
    reach(lab, "h1-p0", pod(lab, "h2"))
    reach(lab, "h2-p0", pod(lab, "h1"))
    keys = {n: str(k) for n, k in node_keys(lab, "c1").items()}
    h1, h2 = (str(lab.spec.node(n).lan_ip) for n in ("h1", "h2"))
    # each tunnels to the other's own (LAN) address, through the router, untranslated
    assert endpoints(parse(lab.wg("h1", "showconf", "kilo0").stdout))[keys["h2"]] == f"{h2}:51820"
    assert endpoints(parse(lab.wg("h2", "showconf", "kilo0").stdout))[keys["h1"]] == f"{h1}:51820"


def test_nothing_left_behind(lab_tracker: tuple[Lab, Tracker]) -> None:
    check_nothing_left(*lab_tracker)
