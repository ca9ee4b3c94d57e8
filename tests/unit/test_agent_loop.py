"""The agent's loop through in-memory fakes of its ports: events and debounce, resync, the API
outage credit, publish retries, a failed apply, clean-up."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from kilo import agent as agent_module
from kilo.agent import Agent, AgentConfig, Ports
from kilo.events import REPEAT_SECONDS
from kilo.hostinfo import HostAddress
from kilo.plan import ClusterView, LocalFacts, Settings, Status, plan
from kilo.routes import Encapsulation, Strategy
from kilo.translate import KEY, LAST_SEEN, WIREGUARD_IP, node_from_object

from .fakes import (
    FakeBackend,
    FakeClock,
    FakeDevice,
    FakeEvent,
    FakeEventSink,
    FakeFiles,
    FakeFirewall,
    FakeHost,
    FakeRoutes,
)
from .helpers import NOW, key_for, node_obj, peer_obj

Obj = dict[str, Any]


def cluster(b1_last_seen: int = NOW) -> list[Obj]:
    return [
        node_obj("a1", "a", internal_ip="10.1.0.1/24", pod_cidr="10.2.1.0/24", key=None,
                 leader="true"),
        node_obj("a2", "a", internal_ip="10.1.0.2/24", pod_cidr="10.2.2.0/24"),
        node_obj("b1", "b", internal_ip="10.3.0.1/24", pod_cidr="10.2.3.0/24",
                 last_seen=b1_last_seen),
    ]  # fmt: skip


class Rig:
    def __init__(self, nodes: list[Obj] | None = None, **cfg: Any) -> None:
        self.clock = FakeClock(wall=float(NOW))
        self.backend = FakeBackend(cluster() if nodes is None else nodes)
        self.device = FakeDevice()
        self.routes = FakeRoutes()
        self.firewall = FakeFirewall()
        self.host = FakeHost([HostAddress("eth0", ipaddress.ip_interface("10.1.0.1/24"))])
        self.files = FakeFiles()
        settings = Settings(hostname="a1", encapsulation=Encapsulation(Strategy.NEVER))
        self.agent = Agent(
            AgentConfig(settings=settings, **cfg),
            Ports(self.backend, self.device, self.routes, self.firewall, self.host, self.files,
                  self.clock),
        )  # fmt: skip
        self.agent.start()

    def step(self) -> None:
        """One step of the loop, then as many as the echoes of our own writes need (the watch
        shows the agent its own annotations, as the real API server does)."""
        self.agent.step()
        while not self.backend.events.empty():
            self.agent.step()

    def peer_keys(self) -> set[str]:
        assert self.device.conf is not None
        return {str(p.public_key) for p in self.device.conf.peers}

    def sample(self, name: str, **labels: str) -> float | None:
        return self.agent.metrics.registry.get_sample_value(name, labels)


def test_first_step_applies_the_plan_and_publishes() -> None:
    r = Rig()
    assert r.device.ensured and r.backend.started and r.device.on_restart is not None
    r.step()
    assert r.agent.last_reconcile_ok
    assert r.peer_keys() == {key_for("b1")}  # a2 shares the location: no tunnel
    assert r.device.link == (["10.4.0.1/16"], 1420)  # underlay 1500 minus WireGuard's 80
    assert r.routes.routes and r.firewall.ruleset is not None
    assert r.files.cni is not None and "10.2.1.0/24" in str(r.files.cni)
    name, ann = r.backend.published[-1]
    assert name == "a1" and ann[KEY] == str(r.files.key.public())
    assert ann[WIREGUARD_IP] == "10.4.0.1/16"
    assert r.sample("kilo_leader") == 1 and r.sample("kilo_nodes") == 3


def test_plan_is_a_function_of_its_inputs() -> None:
    view = ClusterView(
        {n.name: n for n in (node_from_object(o)[0] for o in cluster())},
        {},
    )
    facts = LocalFacts(private_key=FakeFiles().key, now=float(NOW), underlay_mtu=1500)
    settings = Settings(hostname="a1", encapsulation=Encapsulation(Strategy.NEVER))
    one, two = plan(view, facts, settings), plan(view, facts, settings)
    assert one.status is Status.OK and one == two
    assert one.dataplane is not None and one.dataplane.mtu == 1420


def test_a_burst_of_events_is_one_reconcile() -> None:
    r = Rig()
    r.step()
    applied = r.device.applied
    for i in range(5):
        r.backend.put_peer(peer_obj(f"p{i}", [f"10.5.0.{i + 1}/32"]))
    r.step()
    assert r.device.applied == applied + 1
    assert {key_for(f"p{i}") for i in range(5)} <= r.peer_keys()
    assert r.backend.events.empty()


def test_resync_reconciles_without_events_and_changes_nothing() -> None:
    r = Rig(resync_period=10.0)
    r.step()
    applied, t0 = r.device.applied, r.clock.monotonic()
    r.step()  # nothing happens but the timer
    assert r.device.applied == applied + 1
    assert r.clock.monotonic() - t0 == pytest.approx(10.0, abs=0.1)
    assert r.agent.last_changes == []


def test_a_device_restart_asks_for_a_reconcile_at_once() -> None:
    r = Rig(resync_period=30.0)
    r.step()
    applied, t0 = r.device.applied, r.clock.monotonic()
    assert r.device.on_restart is not None
    r.device.on_restart()  # from the supervisor's thread: it wakes the loop
    r.step()
    assert r.device.applied == applied + 1 and r.clock.monotonic() - t0 < 1


def test_a_new_node_reaches_the_device() -> None:
    r = Rig()
    r.step()
    r.backend.put_node(node_obj("c1", "c", internal_ip="10.6.0.1/24", pod_cidr="10.2.6.0/24"))
    r.step()
    assert r.peer_keys() == {key_for("b1"), key_for("c1")}
    r.backend.delete_node("c1")
    r.step()
    assert r.peer_keys() == {key_for("b1")}


def test_api_outage_time_is_not_held_against_a_nodes_check_in() -> None:
    stale = NOW - 100  # past Kilo's 60 s window
    r = Rig(nodes=cluster(b1_last_seen=stale))
    r.step()
    assert r.peer_keys() == set()  # b1 looks gone
    r.backend.outage_list = [(float(stale + 5), None)]  # but the API server was away since
    r.agent.reconcile()
    assert r.peer_keys() == {key_for("b1")}


def test_check_ins_refresh_last_seen_and_retry_sooner_after_a_failure() -> None:
    r = Rig(resync_period=1000.0)
    r.step()
    published = len(r.backend.published)
    r.step()  # the next due timer is the check-in, 30 s on
    assert len(r.backend.published) == published + 1
    assert r.backend.published[-1][1][LAST_SEEN] == str(int(r.clock.time()))
    r.backend.fail_publish = True
    r.step()
    assert not r.agent.publisher.ok
    failed_at = r.clock.monotonic()
    r.backend.fail_publish = False
    for _ in range(5):  # other timers (a node's readiness expiring) may come first
        r.step()
        if r.agent.publisher.ok:
            break
    assert r.agent.publisher.ok
    assert r.clock.monotonic() - failed_at == pytest.approx(5.0, abs=0.1)  # not a whole period
    assert r.sample("kilo_errors_total", event="local") == 1


def test_an_unchanged_plan_publishes_nothing_new() -> None:
    r = Rig()
    r.agent.reconcile()
    published = len(r.backend.published)
    r.agent.reconcile()
    assert len(r.backend.published) == published


def test_a_failed_part_does_not_stop_the_others() -> None:
    r = Rig()
    r.firewall.fail = True
    changes = r.agent.reconcile()
    assert not r.agent.last_reconcile_ok
    assert r.device.conf is not None and r.routes.routes  # applied all the same
    assert "configure device" in changes
    assert r.sample("kilo_errors_total", event="apply") == 1
    r.firewall.fail = False
    assert r.agent.reconcile() == ["replace table"]
    assert r.agent.last_reconcile_ok


def test_a_failed_read_leaves_everything_as_it_is() -> None:
    r = Rig()
    r.agent.reconcile()
    conf = r.device.conf
    r.backend.fail_list = True
    assert r.agent.reconcile() == []
    assert not r.agent.last_reconcile_ok and r.device.conf is conf


def test_a_node_not_in_the_cluster_does_nothing() -> None:
    r = Rig(nodes=[node_obj("b1", "b", pod_cidr="10.2.3.0/24")])
    assert r.agent.reconcile() == []
    assert r.device.conf is None and r.backend.published == [] and r.files.cni is None


def test_a_node_without_a_pod_cidr_only_publishes() -> None:
    r = Rig(nodes=[node_obj("a1", "a", internal_ip="10.1.0.1/24", key=None)])
    r.agent.reconcile()
    assert r.agent.plan is not None and r.agent.plan.status is Status.NOT_READY
    assert r.backend.published and r.backend.published[-1][1][KEY]
    assert r.device.conf is None and r.files.cni is None


@pytest.mark.parametrize("clean_up", [False, True])
def test_shutdown_cleans_up_only_when_asked(clean_up: bool) -> None:
    r = Rig(clean_up=clean_up, clean_up_interface=clean_up)
    r.step()
    r.agent.shutdown()
    assert r.backend.stopped
    assert r.firewall.removed is clean_up and r.routes.removed is clean_up
    assert r.backend.cleaned == (["a1"] if clean_up else [])
    assert r.device.closed is clean_up


def test_stop_ends_the_loop() -> None:
    r = Rig()
    r.agent.stop()
    r.agent.run()  # returns at once
    assert r.device.conf is None


def kernel_calls(r: Rig) -> tuple[int, int, int, int]:
    return r.device.applied, r.device.reads, r.routes.calls, r.firewall.calls


def test_a_check_in_that_only_moves_last_seen_costs_no_plan_and_no_kernel_call() -> None:
    r = Rig(resync_period=1000.0)
    r.step()
    r.step()  # our own annotations come back once through the watch (a real change)
    before, plans = kernel_calls(r), r.sample("kilo_reconciles_total")
    for _ in range(3):
        b1 = r.backend.node_objs["b1"]
        b1["metadata"]["annotations"][LAST_SEEN] = str(int(r.clock.time()))
        r.backend.put_node(b1)
        r.step()
    assert kernel_calls(r) == before
    assert r.sample("kilo_reconciles_total") == plans
    assert (r.sample("kilo_cluster_events_total") or 0) >= 3
    assert r.agent.last_changes == [] and r.agent.last_reconcile_ok


def test_a_real_change_applies_only_the_parts_that_changed() -> None:
    r = Rig(resync_period=1000.0)
    r.step()
    applied, _, routes, _ = kernel_calls(r)
    b1 = r.backend.node_objs["b1"]
    b1["metadata"]["annotations"]["kilo.squat.ai/endpoint"] = "198.51.100.99:51820"
    r.backend.put_node(b1)
    r.step()
    assert r.device.applied == applied + 1  # the endpoint is in the WireGuard config
    assert r.routes.calls == routes  # the routes did not change: not touched


def test_a_change_is_written_as_the_difference_and_a_resync_in_full() -> None:
    r = Rig(resync_period=1000.0)
    r.step()
    assert (r.device.diffs, r.routes.diffs, r.firewall.diffs) == (0, 0, 0)  # first: in full
    r.backend.put_peer(peer_obj("p1", ["10.5.0.1/32"]))
    r.step()
    assert key_for("p1") in r.peer_keys()
    assert r.device.diffs == 1 and r.routes.diffs == 1  # from the last plan, nothing read
    r.device.fail = True
    r.backend.put_peer(peer_obj("p2", ["10.5.0.2/32"]))
    r.step()
    r.device.fail = False
    diffs = r.device.diffs
    r.backend.put_peer(peer_obj("p3", ["10.5.0.3/32"]))
    r.step()  # after a failure, the device is read and compared again
    assert r.device.diffs == diffs and {key_for("p2"), key_for("p3")} <= r.peer_keys()


def test_drift_is_repaired_at_the_resync() -> None:
    r = Rig(resync_period=10.0)
    r.step()
    want = r.routes.routes
    assert want
    r.routes.routes = want[1:]  # a route removed by hand
    r.step()  # the resync
    assert r.routes.routes == want


def test_a_resync_of_an_unchanged_cluster_verifies_without_planning_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing changed since the last plan: the resync reads and repairs the kernel against
    the plan applied last, and plans nothing; a change after it is planned as before."""
    r = Rig(resync_period=10.0)
    r.step()
    plans: list[object] = []
    real = agent_module.plan
    monkeypatch.setattr(agent_module, "plan", lambda *a: plans.append(a) or real(*a))
    want = r.routes.routes
    r.routes.routes = want[1:]  # a route removed by hand
    applied = r.device.applied
    r.step()  # the resync
    assert r.routes.routes == want and r.device.applied == applied + 1 and plans == []
    r.backend.put_node(node_obj("b2", "b", internal_ip="10.3.0.2/24", pod_cidr="10.2.4.0/24"))
    r.step()
    assert len(plans) == 1


def test_a_node_that_stops_checking_in_expires_on_a_timer() -> None:
    r = Rig(nodes=cluster(b1_last_seen=NOW - 50), resync_period=1000.0)
    r.step()
    assert r.peer_keys() == {key_for("b1")}
    t0 = r.clock.monotonic()
    r.step()  # no event: woken when b1's 60 s are up, not at the check-in (30 s)
    assert r.clock.monotonic() - t0 == pytest.approx(10.0, abs=0.1)
    assert r.peer_keys() == set()


def test_events_update_the_cache_one_object_at_a_time() -> None:
    r = Rig(resync_period=1000.0)
    r.step()
    r.backend.fail_list = True  # a full listing would fail: only the events are read
    r.backend.put_peer(peer_obj("p1", ["10.5.0.1/32"]))
    r.step()
    assert key_for("p1") in r.peer_keys() and r.agent.last_reconcile_ok


def test_a_check_in_taken_in_the_watch_thread_does_not_wake_the_loop() -> None:
    r = Rig(resync_period=1000.0)
    r.step()
    before, plans = kernel_calls(r), r.sample("kilo_reconciles_total")
    b1 = copy.deepcopy(r.backend.node_objs["b1"])
    b1["metadata"]["resourceVersion"] = "900"
    b1["metadata"]["annotations"][LAST_SEEN] = str(int(r.clock.time()))
    r.agent.take_event(FakeEvent("Node", "MODIFIED", b1))  # as the watch's thread calls it
    assert r.backend.events.empty()  # the loop was not woken
    assert r.agent.cache.node("b1") is not None
    assert r.agent.cache.node("b1").last_seen == int(r.clock.time())  # type: ignore[union-attr]
    b1 = copy.deepcopy(b1)
    b1["metadata"]["resourceVersion"] = "901"
    b1["metadata"]["annotations"]["kilo.squat.ai/endpoint"] = "198.51.100.99:51820"
    r.agent.take_event(FakeEvent("Node", "MODIFIED", b1))
    assert not r.backend.events.empty()  # a real change wakes it at once
    r.step()
    assert r.device.applied == before[0] + 1
    assert r.sample("kilo_reconciles_total") == (plans or 0) + 1


def test_a_check_in_the_backend_proved_is_taken_without_translation_or_wake_up() -> None:
    r = Rig(nodes=cluster(b1_last_seen=NOW - 500), resync_period=1000.0)
    r.step()
    seen, old = str(int(r.clock.time()) - 10), r.agent.cache._nodes["b1"].raw
    assert old is not None and r.peer_keys() == set()
    stale = copy.deepcopy(old)
    stale["metadata"]["resourceVersion"] = "900"
    stale["metadata"]["annotations"][LAST_SEEN] = str(NOW - 400)  # still too old: not ready
    r.agent.take_event(FakeEvent("Node", "MODIFIED", stale, old, str(NOW - 400)))
    assert r.backend.events.empty() and r.agent.cache._nodes["b1"].raw is stale
    fresh = copy.deepcopy(stale)
    fresh["metadata"]["resourceVersion"] = "901"
    fresh["metadata"]["annotations"][LAST_SEEN] = seen
    r.agent.take_event(FakeEvent("Node", "MODIFIED", fresh, stale, seen))  # now it is ready
    assert not r.backend.events.empty()
    r.step()
    assert r.peer_keys() == {key_for("b1")}
    assert r.agent.cache.node("b1").last_seen == int(seen)  # type: ignore[union-attr]


def test_a_check_in_that_makes_a_node_ready_wakes_the_loop() -> None:
    r = Rig(nodes=cluster(b1_last_seen=NOW - 500), resync_period=1000.0)
    r.step()
    assert r.peer_keys() == set()
    b1 = copy.deepcopy(r.backend.node_objs["b1"])
    b1["metadata"]["resourceVersion"] = "900"
    b1["metadata"]["annotations"][LAST_SEEN] = str(int(r.clock.time()))
    r.agent.take_event(FakeEvent("Node", "MODIFIED", b1))
    assert not r.backend.events.empty()
    r.step()
    assert r.peer_keys() == {key_for("b1")}


# -- problems told as Kubernetes Events ---------------------------------------------------------


def events_rig(nodes: list[Obj] | None = None) -> tuple[Rig, FakeEventSink]:
    r = Rig(nodes)
    sink = FakeEventSink()
    r.agent.ports.event_sink = sink
    return r, sink


def test_a_hostile_object_is_one_event_on_it() -> None:
    hostile = node_obj(
        "b2", "b", internal_ip="10.3.0.2/24", pod_cidr="10.2.4.0/24", endpoint="nowhere\x1b[2J"
    )
    r, sink = events_rig([*cluster(), hostile])  # fmt: skip
    r.step()
    (ev,) = sink.all
    assert (ev.kind, ev.object_name, ev.reason, ev.host) == ("Node", "b2", "InvalidValue", "a1")
    assert ev.message.startswith("metadata.annotations[kilo.squat.ai/endpoint]=")
    assert "\\x1b[2J" in ev.message and ev.message.isprintable()
    assert r.sample("kilo_object_problems") == 1  # the metric as before


def test_repeats_of_a_problem_make_no_new_event() -> None:
    r, sink = events_rig([*cluster(), node_obj("b2", "b", endpoint="nowhere")])
    r.step()
    assert len(sink.all) == 1
    for _ in range(5):  # resyncs and unrelated changes
        r.clock.advance(40)
        r.agent.reconcile(verify=True)
        r.backend.put_peer(peer_obj("p1", ["10.5.0.1/32"]))
        r.step()
    assert len(sink.all) == 1


def test_a_fixed_object_stops_and_a_new_problem_is_told() -> None:
    r, sink = events_rig([*cluster(), node_obj("b2", "b", endpoint="nowhere")])
    r.step()
    r.backend.put_node(node_obj("b2", "b"))  # fixed
    r.step()
    r.agent.reconcile(verify=True)
    assert len(sink.all) == 1
    r.backend.put_peer(peer_obj("laptop", ["0.0.0.0/0"]))  # a default route: refused
    r.step()
    assert len(sink.all) == 2
    ev = sink.all[-1]
    assert (ev.kind, ev.object_name, ev.reason) == ("Peer", "laptop", "ClaimRefused")
    assert ev.message == "spec.allowedIPs='0.0.0.0/0': is a default route; refused"


def test_a_lasting_problem_is_told_again_after_the_repeat_period() -> None:
    r, sink = events_rig([*cluster(), node_obj("b2", "b", endpoint="nowhere")])
    r.step()
    r.clock.advance(REPEAT_SECONDS)
    r.agent.reconcile(verify=True)
    assert [e.object_name for e in sink.all] == ["b2", "b2"]


def test_a_failing_sink_never_stops_the_loop() -> None:
    r, sink = events_rig([*cluster(), node_obj("b2", "b", endpoint="nowhere")])
    sink.fail = True
    r.step()
    assert r.agent.last_reconcile_ok and r.device.conf is not None
    assert r.sample("kilo_errors_total", event="events") == 1
