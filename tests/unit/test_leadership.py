"""Leaders in both liveness modes, failover decisions and their hysteresis, the Lease as data."""

from __future__ import annotations

from typing import Any

import pytest

from kilo.keys import Key
from kilo.leadership import (
    FAIL_AFTER_SECONDS,
    HOLD_OFF_SECONDS,
    STAGGER_SECONDS,
    TUNNEL_PROBES,
    Action,
    Health,
    Liveness,
    ProbeTarget,
    ProbeTracker,
    decide,
    members_by_segment,
    succession,
)
from kilo.leases import Lease, lease_from_object, lease_name, lease_object, microtime
from kilo.model import Granularity, Node
from kilo.plan import ClusterView, LocalFacts, Plan, Settings, plan
from kilo.routes import Encapsulation, Strategy
from kilo.topology import find_leader
from kilo.translate import node_from_object

from .helpers import NOW, node_obj

Obj = dict[str, Any]
LOC_A = "location:a"


def objs(native: bool = True, **extra: Any) -> list[Obj]:
    ann = {"liveness": "lease"} if native else {}
    out = []
    for loc, third in (("a", 1), ("b", 3), ("c", 5)):
        for i in (1, 2, 3):
            name = f"{loc}{i}"
            out.append(
                node_obj(
                    name,
                    loc,
                    internal_ip=f"10.{third}.0.{i}/24",
                    pod_cidr=f"10.2.{third * 10 + i}.0/24",
                    last_seen=NOW - 3600 if native else NOW,  # natives need no check-in
                    **(ann | extra.get(name, {})),
                )
            )
    return out


def view(objects: list[Obj], leases: dict[str, Lease] | None = None) -> ClusterView:
    nodes = {n.name: n for n in (node_from_object(o)[0] for o in objects)}
    return ClusterView(nodes, {}, leases=leases or {})


def lease(holder: str, location: str = LOC_A, renewed: float = NOW - 10, rv: str = "7") -> Lease:
    obj = lease_object(location, holder, renewed, "kube-system")
    obj["metadata"]["resourceVersion"] = rv
    got, problems = lease_from_object(obj)
    assert got is not None and not problems
    return got


def plan_of(me: str, v: ClusterView, liveness: Liveness, health: Health | None = None) -> Plan:
    health = health or Health()
    facts = LocalFacts(
        private_key=Key(bytes(range(32))) if me == "x" else Key.generate(),
        now=float(NOW),
        underlay_mtu=1500,
        health=health,
    )
    settings = Settings(hostname=me, encapsulation=Encapsulation(Strategy.NEVER), liveness=liveness)
    return plan(v, facts, settings)


def leaders_seen(p: Plan) -> dict[str, str]:
    assert p.topology is not None
    return {s.location: s.hostnames[s.leader] for s in p.topology.segments}


ALL = [f"{loc}{i}" for loc in "abc" for i in (1, 2, 3)]


def test_native_every_agent_follows_the_leases() -> None:
    leases = {LOC_A: lease("a3"), "location:b": lease("b2", "location:b")}
    v = view(objs(), leases)
    seen = [leaders_seen(plan_of(me, v, Liveness.NATIVE)) for me in ALL]
    assert all(s == seen[0] for s in seen)
    assert seen[0]["location:a"] == "a3" and seen[0]["location:b"] == "b2"
    # no Lease for c: Kilo's rule, the same everywhere
    members = members_by_segment(v.nodes, Granularity.LOCATION)["location:c"]
    assert seen[0]["location:c"] == members[find_leader(members)].name


def test_compat_and_mixed_clusters_follow_kilos_rule() -> None:
    """Our agents in compat mode, or a cluster with one node not in the native mode (a Kilo
    agent), ignore the Leases and agree with Kilo's choice: no check-in is skipped either."""
    leases = {LOC_A: lease("a3")}
    mixed = objs(native=True)
    mixed[4] = node_obj("b2", "b", internal_ip="10.3.0.2/24", pod_cidr="10.2.32.0/24")
    for objects, mode in ((objs(native=False), Liveness.COMPAT), (mixed, Liveness.NATIVE)):
        v = view(objects, leases)
        for me in ALL:
            if mode is Liveness.NATIVE and me == "b2":
                continue  # b2 runs Kilo's agent
            p = plan_of(me, v, mode)
            assert not p.native and p.lease_change is None and p.probes == ()
            for loc, members in members_by_segment(
                {n: v.nodes[n] for n in ALL}, Granularity.LOCATION
            ).items():
                assert leaders_seen(p)[loc] == members[find_leader(members)].name


def test_the_first_lease_goes_to_kilos_choice() -> None:
    v = view(objs())
    changes = {me: plan_of(me, v, Liveness.NATIVE).lease_change for me in ALL}
    writers = {me: c for me, c in changes.items() if c is not None}
    members = members_by_segment(v.nodes, Granularity.LOCATION)
    expected = {ms[find_leader(ms)].name for ms in members.values()}
    assert set(writers) == expected
    assert all(c.action is Action.ACQUIRE and c.previous is None for c in writers.values())


def a_members() -> list[Node]:
    return members_by_segment(view(objs()).nodes, Granularity.LOCATION)[LOC_A]


def test_hysteresis_a_blip_changes_nothing() -> None:
    members, held = a_members(), lease("a1")
    order = succession(members, exclude=("a1",))
    first, second = order
    blip = Health(holder_silent=FAIL_AFTER_SECONDS - 0.01)
    assert decide(first, LOC_A, members, held, NOW, blip) is None
    gone = Health(holder_silent=FAIL_AFTER_SECONDS)
    change = decide(first, LOC_A, members, held, NOW, gone)
    assert change is not None and change.action is Action.ACQUIRE and change.holder == first
    assert change.previous == held  # conditional on the version read: one writer wins
    # the next successor waits longer, so the two do not race
    assert decide(second, LOC_A, members, held, NOW, gone) is None
    later = Health(holder_silent=FAIL_AFTER_SECONDS + STAGGER_SECONDS)
    assert decide(second, LOC_A, members, held, NOW, later) is not None


def test_a_returning_leader_does_not_take_leadership_back() -> None:
    members = a_members()
    taken = lease("a2")  # a2 took over from a1
    assert decide("a1", LOC_A, members, taken, NOW, Health()) is None
    p = plan_of("a1", view(objs(), {LOC_A: taken}), Liveness.NATIVE)
    assert not p.leader and p.lease_change is None
    assert [t.role for t in p.probes] == ["holder"] and p.probes[0].name == "a2"


def test_failover_picks_the_same_leader_on_every_agent() -> None:
    """Every agent, whatever its own probes say, follows the Lease its successor wrote."""
    v = view(objs(), {LOC_A: lease("a1")})
    members = a_members()
    successor = succession(members, exclude=("a1",))[0]
    gone = Health(holder_silent=5.0)
    c = plan_of(successor, v, Liveness.NATIVE, gone).lease_change
    assert c is not None and c.holder == successor
    after = view(objs(), {LOC_A: lease(successor, rv="8")})
    seen = [leaders_seen(plan_of(me, after, Liveness.NATIVE, gone)) for me in ALL]
    assert all(s[LOC_A] == successor for s in seen)
    # and the other locations' tunnels are not touched: their leaders stay the same
    before = leaders_seen(plan_of("b1", v, Liveness.NATIVE))
    assert {k: x for k, x in seen[3].items() if k != LOC_A} == {
        k: x for k, x in before.items() if k != LOC_A
    }


def test_an_expired_lease_or_a_removed_holder_moves_to_kilos_next_choice() -> None:
    members = a_members()
    expired = lease("a1", renewed=NOW - 10_000)
    nxt = succession(members, exclude=("a1",))[0]
    c = decide(nxt, LOC_A, members, expired, NOW, Health())
    assert c is not None and c.action is Action.ACQUIRE and c.holder == nxt
    without_a1 = [m for m in members if m.name != "a1"]
    held_by_gone = lease("a1")
    leader = without_a1[find_leader(without_a1)].name
    c = decide(leader, LOC_A, without_a1, held_by_gone, NOW, Health())
    assert c is not None and c.holder == leader


def test_a_cut_off_holder_hands_over_unless_its_successor_is_silent() -> None:
    members, held = a_members(), lease("a1")
    nxt = succession(members, exclude=("a1",))[0]
    c = decide("a1", LOC_A, members, held, NOW, Health(tunnel_dead=True))
    assert c is not None and c.action is Action.HAND_OVER and c.holder == nxt
    both = Health(tunnel_dead=True, successor_silent=FAIL_AFTER_SECONDS)
    assert decide("a1", LOC_A, members, held, NOW, both) is None


def test_the_holder_renews_when_due() -> None:
    members = a_members()
    assert decide("a1", LOC_A, members, lease("a1", renewed=NOW - 10), NOW, Health()) is None
    c = decide("a1", LOC_A, members, lease("a1", renewed=NOW - 61), NOW, Health())
    assert c is not None and c.action is Action.RENEW


def test_tracker_needs_one_answer_before_a_tunnel_counts_as_dead() -> None:
    t = ProbeTracker()
    tunnels = [ProbeTarget("tunnel", "b1", "10.4.0.2"), ProbeTarget("tunnel", "c1", "10.4.0.3")]
    t.set_targets(tunnels, 0.0)
    assert not t.health(10.0).tunnel_dead  # never answered: a new leader is not armed
    t.replied("10.4.0.2", 10.0)
    assert not t.health(10.5).tunnel_dead  # one answered half a second ago
    assert t.health(11.0).tunnel_dead  # nobody for a second
    t.replied("10.4.0.3", 11.2)
    assert not t.health(11.3).tunnel_dead
    t.set_targets([ProbeTarget("holder", "a1", "10.1.0.1")], 12.0)
    assert t.health(12.5).holder_silent == pytest.approx(0.5)
    t.replied("10.1.0.1", 12.6)
    assert t.health(12.9).holder_silent == pytest.approx(0.3)


def test_the_prober_wakes_every_successor_at_its_turn() -> None:
    """The agent is woken when the probe state changes: at each successor's turn (1 s, 2 s,
    ...), not only at the first, or the second successor would wait for the resync."""
    t = ProbeTracker()
    t.set_targets([ProbeTarget("holder", "a1", "10.1.0.1")], 0.0)
    states = [t.state(x / 10) for x in range(0, 45)]
    changes = [x / 10 for x in range(1, 45) if states[x] != states[x - 1]]
    assert changes == [FAIL_AFTER_SECONDS, FAIL_AFTER_SECONDS + STAGGER_SECONDS,
                       FAIL_AFTER_SECONDS + 2 * STAGGER_SECONDS, 4.0]  # fmt: skip
    t.replied("10.1.0.1", 5.0)
    assert t.state(5.1) == states[0]  # answering again
    assert t.state(1e6) == t.state(2e6)  # a bounded number of wake-ups


def test_of_two_leaders_only_the_smaller_name_probes_a_new_peer_at_once() -> None:
    """Leaders probe each other through the tunnel; both first probes at once make WireGuard's
    two ends cross their handshakes (5 s lost), so the greater name holds off."""
    p = plan_of("b1", view(objs()), Liveness.NATIVE)
    tunnels = {t.name: t.hold_off for t in p.probes if t.role == "tunnel"}
    assert tunnels == {"a1": True, "c1": False}
    assert not [t for t in p.probes if t.role != "tunnel" and t.hold_off]


def test_a_held_off_target_is_probed_after_the_hold_off_and_a_new_node_starts_afresh() -> None:
    t = ProbeTracker()
    a1 = ProbeTarget("tunnel", "a1", "10.4.0.1", hold_off=True)
    c1 = ProbeTarget("tunnel", "c1", "10.4.0.3")
    t.set_targets([a1, c1], 0.0)
    assert t.due(0.0) == [c1]
    assert t.due(HOLD_OFF_SECONDS) == [a1, c1]
    t.replied("10.4.0.1", 2.0)
    t.set_targets([a1, c1], 3.0)  # the same targets: nothing starts again
    assert t.due(3.0) == [a1, c1] and t.silent("tunnel", 3.0) == pytest.approx(1.0 + 2.0)
    a2 = ProbeTarget("tunnel", "a2", "10.4.0.1", hold_off=True)  # location a's new leader
    t.set_targets([a2, c1], 4.0)
    assert t.due(4.0) == [c1] and t.due(4.0 + HOLD_OFF_SECONDS) == [a2, c1]
    assert t.silent("tunnel", 4.2) == pytest.approx(4.2)  # c1 (never answered) since 0.0
    alone = ProbeTracker()
    alone.set_targets([a1], 0.0)
    alone.replied("10.4.0.1", 1.0)
    alone.set_targets([a2], 2.0)
    assert alone.silent("tunnel", 2.5) == pytest.approx(0.5)  # a2's silence from 2.0
    assert not alone.health(9.0).tunnel_dead  # a2 never answered: a1's answers do not count


def test_lease_roundtrip_and_names() -> None:
    obj = lease_object("location:eu west/1", "node-1", NOW + 0.25, "kube-system")
    got, problems = lease_from_object(obj)
    assert not problems and got is not None
    assert got.holder == "node-1" and got.location == "location:eu west/1"
    assert got.renewed == pytest.approx(NOW + 0.25) and got.name == lease_name(got.location)
    assert microtime(NOW) == "2026-09-21T14:13:20.000000Z"
    with pytest.raises(ValueError):
        lease_object(LOC_A, "evil\nname", NOW, "kube-system")


HOSTILE: list[Any] = [
    None,
    [],
    "x",
    {"metadata": "x"},
    {"metadata": {"name": 5, "annotations": {"kilo.squat.ai/location": LOC_A}}},
    {"metadata": {"name": "kilo-leader-0", "annotations": {"kilo.squat.ai/location": LOC_A}}},
    {"metadata": {"name": lease_name(LOC_A), "annotations": {"kilo.squat.ai/location": 7}}},
    {"metadata": {"name": lease_name(LOC_A), "annotations": {"kilo.squat.ai/location": LOC_A}},
     "spec": {"holderIdentity": "a\nb", "leaseDurationSeconds": 10, "renewTime": "x"}},
    {"metadata": {"name": lease_name(LOC_A), "annotations": {"kilo.squat.ai/location": LOC_A}},
     "spec": {"holderIdentity": "a1", "leaseDurationSeconds": True,
              "renewTime": "2026-01-01T00:00:00Z"}},
    {"metadata": {"name": lease_name(LOC_A), "annotations": {"kilo.squat.ai/location": LOC_A}},
     "spec": {"holderIdentity": "a1", "leaseDurationSeconds": 10**12,
              "renewTime": "2026-01-01T00:00:00Z"}},
    {"metadata": {"name": lease_name(LOC_A), "annotations": {"kilo.squat.ai/location": LOC_A}},
     "spec": {"holderIdentity": "a1", "leaseDurationSeconds": 10,
              "renewTime": "9999-99-99T99:99:99Z"}},
    {"metadata": {"name": lease_name(LOC_A), "annotations": {"kilo.squat.ai/location": LOC_A}},
     "spec": {"holderIdentity": "a1", "leaseDurationSeconds": 10, "renewTime": ["x"]}},
]  # fmt: skip


@pytest.mark.parametrize("obj", HOSTILE)
def test_hostile_leases_are_problems_never_exceptions(obj: Any) -> None:
    got, problems = lease_from_object(obj)
    assert got is None and problems


def test_a_leader_probes_a_bounded_number_of_other_leaders_spread_over_all() -> None:
    """Through the tunnel, each leader probes at most TUNNEL_PROBES other locations' leaders,
    the same ones at every plan, and every leader is probed by someone: the probes do not grow
    with the number of locations."""
    many = [
        node_obj(f"{loc}1", loc, internal_ip=f"10.{n}.0.1/24", pod_cidr=f"10.2.{n}.0/24",
                 last_seen=NOW - 3600, liveness="lease")
        for n, loc in enumerate(f"l{i:02d}" for i in range(12))
    ] + [
        node_obj(f"{loc}2", loc, internal_ip=f"10.{n}.0.2/24", pod_cidr=f"10.3.{n}.0/24",
                 last_seen=NOW - 3600, liveness="lease")
        for n, loc in enumerate(f"l{i:02d}" for i in range(12))
    ]  # fmt: skip
    v = view(many)
    probed: set[str] = set()
    for i in range(12):
        me = f"l{i:02d}1"
        tunnels = [t for t in plan_of(me, v, Liveness.NATIVE).probes if t.role == "tunnel"]
        assert len(tunnels) == TUNNEL_PROBES and me not in {t.name for t in tunnels}
        assert tunnels == [t for t in plan_of(me, v, Liveness.NATIVE).probes if t.role == "tunnel"]
        probed |= {t.name for t in tunnels}
    assert len(probed) >= 10  # spread, not every leader probing the same few
