"""A cluster mixed with Kilo 0.7's own Go agent (issue 13): Kilo's ``kg`` on some nodes, ours
on the others, wireguard-go for both, in location and full granularity.

Kilo's ``kg`` is taken from ``$KPY_KILO_KG`` (built by hand from Kilo's 0.7.0 source outside
this repository; CI has none, and the test skips saying so). How a lab node runs it is in
``kilo_lab.kilo_agent``: it drives the wireguard-go device our kg started (``--create-interface
=false``), with the node's own key.

The lab: locations aws (a1 public, a2 private) and gcp (g1 public, g2 private; in full
granularity every node is public, each being a location of its own), Kilo's liveness
(``last-seen``). With ours everywhere, every device's WireGuard peers are recorded; then a1 (a
leader) and g2 (a follower) are switched to Kilo's kg, and later back to ours, while pings run
every 10 ms across both switched nodes. Checked after each switch:

- every pod reaches every pod;
- every leader's device holds the same WireGuard peers (keys, allowed IPs, endpoints) as with
  ours everywhere: both agents configure identical peers, and agree on the leaders; so does
  every follower's, but for one run by Kilo's kg, whose link Kilo sets down instead (its peers
  left from Kilo's start-up, when it applies a topology after each Node of its first listing
  and may lead for a moment: inert, the link being down);
- no ping is lost when a node switches to ours; when it switches to Kilo's, pings may be lost
  until WireGuard re-makes the sessions Kilo's start-up drops (below), and never longer.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import pytest
from kilo_lab import kilo_agent
from kilo_lab.lab import Lab
from kilo_lab.observe import unreachable_pairs, wg_peers

from kilo.wireguard import parse
from tests.integration.test_agent_support import (
    Flood,
    PingResult,
    Tracker,
    agent_lab,
    check_nothing_left,
    lab_name,
    two_locations,
    wait_for,
)

pytestmark = pytest.mark.integration

KILO_KG = kilo_agent.binary()
SWITCHED = ("a1", "g2")  # a leader and a follower, in different locations
NODES = ("a1", "a2", "g1", "g2")
FOLLOWERS = ("a2", "g2")
KEEPALIVE_TIMEOUT, REKEY_TIMEOUT = 10, 5  # WireGuard's, in seconds

if KILO_KG is None:
    pytest.skip(
        f"${kilo_agent.KILO_KG_ENV} does not name Kilo 0.7's kg binary (built by hand from its "
        "source outside this repository; CI cannot build Kilo)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module", params=["location", "full"])
def lab_tracker(request: pytest.FixtureRequest) -> Iterator[tuple[Lab, Tracker]]:
    spec = two_locations(lab_name("mix"))
    spec["clusters"][0]["granularity"] = request.param
    if request.param == "full":  # every node its own location: each must be reachable
        for loc in spec["clusters"][0]["locations"]:
            for n in loc["nodes"]:
                n["public"] = True
    with agent_lab(spec) as (lab, tracker):
        yield lab, tracker


def device(lab: Lab, node: str) -> dict[bytes, tuple[frozenset[str], str | None]]:
    return wg_peers(parse(lab.wg(node, "showconf", "kilo0").stdout))


def link_up(lab: Lab, node: str) -> bool:
    flags = lab.exec(node, ["ip", "-o", "link", "show", "kilo0"]).stdout.split("<", 1)[1]
    return "UP" in flags.split(">", 1)[0].split(",")


def last_seen(lab: Lab, node: str) -> int:
    out = lab.kubectl("c1", "get", "node", node, "-o", "jsonpath={.metadata.annotations}").stdout
    return int(json.loads(out or "{}").get("kilo.squat.ai/last-seen") or 0)


def named(results: list[PingResult]) -> list[tuple[str, PingResult]]:
    return list(zip(("a2-p0 -> g2-p0", "g1-p0 -> a1-p0"), results, strict=True))


def switch(lab: Lab, node: str, to_kilo: bool) -> None:
    """Stop the agent on ``node`` and start the other one; wait until it has checked in."""
    assert KILO_KG is not None
    lab.stop_agent(node)
    since = int(time.time())
    if to_kilo:
        lab.start_agent(node, argv=kilo_agent.argv(lab, node, KILO_KG))
    else:
        lab.start_agent(node)
    wait_for(f"{node}'s new agent checking in", lambda: last_seen(lab, node) > since, 60)
    assert lab.agent_running(node), lab.agent_log(node).read_text()[-3000:]


def test_kilo_and_ours_in_one_mesh(lab_tracker: tuple[Lab, Tracker]) -> None:
    lab, tracker = lab_tracker
    pods = [f"{n}-p0" for n in NODES]
    pairs = [(a, b) for a, b in itertools.permutations(pods, 2)]
    assert unreachable_pairs(lab, pairs, 60) == []
    ours = {n: device(lab, n) for n in NODES}
    floods = [
        Flood(lab, "a2-p0", lab.pods["g2-p0"].address),
        Flood(lab, "g1-p0", lab.pods["a1-p0"].address),
    ]
    switches: list[tuple[str, float]] = []  # what, when it started (monotonic)
    try:
        for to_kilo in (True, False):
            for node in SWITCHED:
                switches.append((f"{node} to {'Kilo' if to_kilo else 'ours'}", time.monotonic()))
                switch(lab, node, to_kilo)
                # every pair again before the next switch, so that each loss has one cause
                assert unreachable_pairs(lab, pairs, 60) == [], switches[-1][0]
                time.sleep(2)
            now = {n: device(lab, n) for n in NODES}
            for n in NODES:
                follower = n in FOLLOWERS and lab.spec.cluster("c1").granularity == "location"
                if to_kilo and n in SWITCHED and follower:
                    assert not link_up(lab, n), f"{n}: Kilo's follower with its link up"
                    continue
                assert now[n] == ours[n], (n, to_kilo, now[n], ours[n])
    except BaseException:
        for n in SWITCHED:
            print(f"\n--- {n}'s agent log (tail)\n{lab.agent_log(n).read_text()[-4000:]}")
        raise
    finally:
        results = [f.stop() for f in floods]
    lost = {w: 0 for w, _ in switches}
    for flood, (what, r) in zip(floods, named(results), strict=True):
        print(f"\n[mixed] {what}: {r.sent} pings at {r.rate:.0f}/s, lost {r.lost} ({r.gaps()})")
        assert r.sent > 100, what
        for seq in r.missing:  # when it was sent (from the achieved rate): after which switch
            at = flood.started + seq / r.rate
            w = next((w for w, t0 in reversed(switches) if t0 - 0.5 <= at), "before any")
            lost[w] += 1 if w in lost else 0
    print(f"[{lab.spec.cluster('c1').granularity}] pings lost after each switch: {lost}")
    for w, n in lost.items():
        # Ours, starting, keeps the device as it is: nothing may go. Kilo's kg, starting,
        # removes every peer and adds them back one Node at a time (it applies a topology
        # after each Node of its first listing): a session whose far end sends first is
        # re-made only when WireGuard gives up on it (keepalive 10 s + rekey 5 s).
        limit = (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 3) * max(r.rate for r in results)
        assert n == 0 or (w.endswith("to Kilo") and n <= limit), lost
    for n in SWITCHED:
        assert '"level":"error"' not in lab.agent_log(n).read_text(), n
    check_nothing_left(lab, tracker)
