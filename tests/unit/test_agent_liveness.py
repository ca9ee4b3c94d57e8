"""The native liveness mode through the agent's loop and fakes: the first Lease, no check-ins,
renewal, failover on silent probes, a lost race for the Lease."""

from __future__ import annotations

import ipaddress
from typing import Any

from kilo.agent import Agent, AgentConfig, Ports
from kilo.hostinfo import HostAddress
from kilo.leadership import Health, Liveness
from kilo.leases import lease_from_object, lease_object
from kilo.plan import Settings
from kilo.routes import Encapsulation, Strategy
from kilo.translate import LAST_SEEN, LIVENESS

from .fakes import (
    FakeBackend,
    FakeClock,
    FakeDevice,
    FakeFiles,
    FakeFirewall,
    FakeHost,
    FakeProber,
    FakeRoutes,
)
from .helpers import NOW, key_for, node_obj

Obj = dict[str, Any]
LOC_A = "location:a"


def cluster(me: str) -> list[Obj]:
    def n(name: str, loc: str, third: int, i: int, **ann: str) -> Obj:
        return node_obj(
            name, loc, internal_ip=f"10.{third}.0.{i}/24", pod_cidr=f"10.2.{third}{i}.0/24",
            key=None if name == me else "auto", last_seen=NOW - 3600, liveness="lease", **ann,
        )  # fmt: skip

    return [n("a1", "a", 1, 1, leader="true"), n("a2", "a", 1, 2), n("b1", "b", 3, 1)]


class NativeRig:
    def __init__(self, me: str, resync_period: float = 30.0) -> None:
        self.clock = FakeClock(wall=float(NOW))
        self.backend = FakeBackend(cluster(me))
        self.device = FakeDevice()
        self.prober = FakeProber()
        third, i = {"a1": (1, 1), "a2": (1, 2), "b1": (3, 1)}[me]
        host = FakeHost([HostAddress("eth0", ipaddress.ip_interface(f"10.{third}.0.{i}/24"))])
        settings = Settings(
            hostname=me, encapsulation=Encapsulation(Strategy.NEVER), liveness=Liveness.NATIVE
        )
        self.agent = Agent(
            AgentConfig(settings=settings, resync_period=resync_period),
            Ports(self.backend, self.device, FakeRoutes(), FakeFirewall(), host, FakeFiles(),
                  self.clock, self.prober),
        )  # fmt: skip
        self.agent.start()

    def step(self) -> None:
        self.agent.step()
        while not self.backend.events.empty():
            self.agent.step()

    def peer_keys(self) -> set[str]:
        assert self.device.conf is not None
        return {str(p.public_key) for p in self.device.conf.peers}

    def holder(self) -> str:
        (obj,) = self.backend.lease_objs.values()
        lease, _ = lease_from_object(obj)
        assert lease is not None
        return lease.holder


def test_the_leader_by_kilos_rule_writes_the_first_lease_and_nobody_checks_in() -> None:
    r = NativeRig("a1")
    assert r.prober.started
    r.step()
    assert r.agent.plan is not None and r.agent.plan.native and r.agent.plan.leader
    assert r.holder() == "a1" and len(r.backend.lease_writes) == 1
    assert r.peer_keys() == {key_for("b1")}
    name, ann = r.backend.published[-1]
    assert name == "a1" and ann[LIVENESS] == "lease"
    assert {t.role for t in r.prober.targets} == {"successor", "tunnel"}
    published = len(r.backend.published)
    for _ in range(5):  # 50 s: past a check-in period; the nodes' old last-seen does not matter
        r.clock.advance(10)
        r.step()
    assert len(r.backend.published) == published  # no check-in
    assert r.peer_keys() == {key_for("b1")}  # b1 is still ready, an hour after its last-seen
    writes = len(r.backend.lease_writes)
    r.clock.advance(15)  # past the renewal period
    r.step()
    assert len(r.backend.lease_writes) == writes + 1 and r.holder() == "a1"


def test_a_follower_takes_over_when_its_leader_is_silent() -> None:
    r = NativeRig("a2")
    r.backend.put_lease(lease_object(LOC_A, "a1", NOW - 5, "kube-system"))
    r.step()
    assert r.agent.plan is not None and not r.agent.plan.leader
    assert [(t.role, t.name) for t in r.prober.targets] == [("holder", "a1")]
    assert r.backend.lease_writes == []
    r.prober.health_now = Health(holder_silent=0.5)  # a blip
    r.prober.on_change()
    r.step()
    assert r.backend.lease_writes == [] and not r.agent.plan.leader
    r.prober.health_now = Health(holder_silent=1.2)
    r.prober.on_change()
    r.step()
    assert r.holder() == "a2" and r.agent.plan.leader
    assert r.peer_keys() == {key_for("b1")}  # a2 now carries the location's traffic
    published = r.backend.published[-1][1]
    assert published["kilo.squat.ai/wireguard-ip"]  # it says so on its node
    assert LAST_SEEN in published


def test_losing_the_race_for_the_lease_follows_the_winner() -> None:
    r = NativeRig("a2")
    r.backend.put_lease(lease_object(LOC_A, "a1", NOW - 5, "kube-system"))
    r.step()
    # another member wrote first, and its event is not here yet
    current = next(iter(r.backend.lease_objs.values()))
    current["metadata"]["resourceVersion"] = "999"  # the API server holds a newer version
    r.prober.health_now = Health(holder_silent=3.0)
    r.prober.on_change()
    r.step()  # the conditional write is refused: nothing breaks, nothing changes
    assert r.agent.plan is not None and not r.agent.plan.leader
    assert r.backend.lease_writes == []


def test_a_renewal_by_the_same_holder_costs_no_plan_and_a_new_holder_does() -> None:
    r = NativeRig("b1", resync_period=1000.0)
    r.backend.put_lease(lease_object(LOC_A, "a1", NOW - 5, "kube-system"))
    r.step()

    def plans() -> float:
        return r.agent.metrics.registry.get_sample_value("kilo_reconciles_total") or 0.0

    def write(holder: str) -> None:
        current, _ = lease_from_object(next(iter(r.backend.lease_objs.values())))
        r.backend.put_lease(lease_object(LOC_A, holder, r.clock.time(), "kube-system", current))

    before = plans()
    for _ in range(3):  # a1 renews a's Lease; b1 (renewing its own each minute) plans nothing
        r.clock.advance(15)
        write("a1")
        r.step()
    assert plans() == before and r.clock.time() - r.agent.leases[LOC_A].renewed < 1
    r.clock.advance(5)
    write("a2")  # a hand-over: a new leader for a
    r.step()
    assert plans() == before + 1
