"""Key rotation through the agent's fake ports: on demand and on a timer, the new key written,
published and then set on the device; a failure in any step leaves the old key everywhere."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kilo.agent import Agent, Ports
from kilo.keys import Key
from kilo.rekeyed import rekeyed
from kilo.rotation import RotationSchedule
from kilo.translate import KEY
from kilo.wireguard import WgConf, WgPeer

from .fakes import Broken
from .helpers import key_for
from .test_agent_loop import Rig


def published_key(r: Rig) -> str:
    return [ann[KEY] for _, ann in r.backend.published if KEY in ann][-1]


def device_key(r: Rig) -> Key | None:
    assert r.device.conf is not None
    return r.device.conf.private_key


def settled(**cfg: Any) -> tuple[Rig, Key]:
    r = Rig(**cfg)
    r.step()
    assert r.agent.last_reconcile_ok
    return r, r.files.key


def rotate(r: Rig) -> None:
    r.agent.request_rotation()
    r.step()


def test_a_rotation_on_demand_writes_publishes_then_applies_the_new_key() -> None:
    r, old = settled(resync_period=1000.0)
    order: list[str] = []
    apply = r.device.apply

    def recording_apply(desired: WgConf, previous: WgConf | None = None) -> list[str]:
        if desired.private_key != old:
            order.append(f"device after {len(r.backend.published)} publications")
        return apply(desired, previous)

    r.device.apply = recording_apply  # type: ignore[method-assign]
    before = len(r.backend.published)
    rotate(r)
    new = r.files.key
    assert new != old and r.files.key_writes == [new]
    assert r.agent.private_key == new and device_key(r) == new
    assert published_key(r) == str(new.public())
    assert order == [f"device after {before + 1} publications"]  # published first, then applied
    assert r.sample("kilo_key_rotations_total") == 1
    assert r.agent.last_reconcile_ok


def test_the_new_key_is_published_at_once_not_at_the_next_check_in() -> None:
    r, _ = settled(resync_period=1000.0)
    t0 = r.clock.monotonic()
    rotate(r)
    assert published_key(r) == str(r.files.key.public())
    assert r.clock.monotonic() - t0 < 1.0  # the debounce only


def test_a_scheduled_rotation_is_a_timer() -> None:
    r, old = settled(resync_period=1000.0, key_rotation_period=3600.0)
    keys = {old}
    for _ in range(400):  # check-ins every 30 s, resyncs; no rotation until the hour
        r.step()
        if r.files.key not in keys:
            break
    assert r.files.key not in keys
    assert r.clock.mono - 1000.0 == pytest.approx(3600.0, abs=1.0)
    assert max(r.clock.waits) <= 3600.0  # the loop waited for timers, it did not poll
    assert device_key(r) == r.files.key and published_key(r) == str(r.files.key.public())
    keys.add(r.files.key)
    for _ in range(400):
        r.step()
        if r.files.key not in keys:
            break
    assert r.clock.mono - 1000.0 == pytest.approx(7200.0, abs=1.0)


def test_no_period_no_rotation() -> None:
    r, old = settled(resync_period=1000.0)
    for _ in range(50):
        r.step()
    assert r.files.key == old and r.files.key_writes == []
    assert r.agent.rotation.due() == float("inf")


def test_a_key_that_cannot_be_written_changes_nothing() -> None:
    r, old = settled(resync_period=1000.0)
    r.files.fail_key_writes = 1
    published = len(r.backend.published)
    rotate(r)
    assert r.agent.private_key == old and device_key(r) == old
    assert len(r.backend.published) == published
    assert r.sample("kilo_errors_total", event="rotation") == 1
    assert r.sample("kilo_key_rotations_total") == 0


def test_a_key_that_cannot_be_published_is_rolled_back_before_the_device() -> None:
    r, old = settled(resync_period=1000.0)
    r.backend.fail_publish = True
    rotate(r)
    assert r.files.key == old and len(r.files.key_writes) == 2  # new, then old again
    assert r.agent.private_key == old and device_key(r) == old
    assert published_key(r) == str(old.public())
    assert r.sample("kilo_errors_total", event="rotation") == 1
    r.backend.fail_publish = False
    rotate(r)  # the next one goes through
    assert r.files.key != old and device_key(r) == r.files.key


def test_a_device_that_refuses_the_key_is_rolled_back_everywhere() -> None:
    r, old = settled(resync_period=1000.0)
    r.device.fail = True
    rotate(r)
    assert r.files.key == old and r.agent.private_key == old and device_key(r) == old
    assert published_key(r) == str(old.public())  # the old public key published again
    assert r.sample("kilo_errors_total", event="rotation") == 1


def test_when_the_old_key_cannot_be_written_back_the_new_key_stays_in_use() -> None:
    r, old = settled(resync_period=1000.0)
    r.backend.fail_publish = True
    r.files.fail_key_writes = 0

    writes = r.files.write_key

    def once(key: Key) -> None:
        if key == old:
            raise Broken("the disk is full")
        writes(key)

    r.files.write_key = once  # type: ignore[method-assign]
    rotate(r)
    new = r.files.key
    assert new != old and r.agent.private_key == new  # the file's key, not a half state
    r.backend.fail_publish = False
    for _ in range(3):
        r.step()
    assert device_key(r) == new and published_key(r) == str(new.public())


def test_a_restart_after_a_rotation_uses_the_rotated_key() -> None:
    r, _ = settled(resync_period=1000.0)
    rotate(r)
    new = r.files.key
    again = Agent(
        r.agent.cfg,
        Ports(r.backend, r.device, r.routes, r.firewall, r.host, r.files, r.clock),
    )
    again.start()
    again.reconcile()
    assert again.private_key == new and device_key(r) == new


def test_no_rotation_without_a_planned_data_plane() -> None:
    r, old = settled(resync_period=1000.0)
    r.backend.delete_node("a1")
    r.step()
    rotate(r)
    assert r.files.key == old and r.agent.private_key == old
    assert r.sample("kilo_errors_total", event="rotation") == 1


def test_schedule() -> None:
    s = RotationSchedule(60.0, now=100.0)
    assert s.due() == 160.0 and not s.is_due(159.0) and s.is_due(160.0)
    s.ask()
    assert s.is_due(101.0) and s.due() == float("-inf")
    s.done(101.0)
    assert s.due() == 161.0
    assert RotationSchedule(0.0, 5.0).due() == float("inf")
    with pytest.raises(ValueError):
        RotationSchedule(-1.0, 0.0)


def wg(*peers: tuple[str, list[str]]) -> WgConf:
    return WgConf(
        peers=[
            WgPeer(Key.parse(key_for(k)), [ipaddress.ip_interface(i) for i in ips])
            for k, ips in peers
        ]
    )


def test_rekeyed_peers_are_those_with_a_new_key_on_old_allowed_ips() -> None:
    before = wg(("b1", ["10.4.0.2/32", "10.2.3.0/24"]), ("laptop", ["10.5.0.1/32"]))
    after = wg(("b1-new", ["10.4.0.2/32", "10.2.3.0/24"]), ("laptop", ["10.5.0.1/32"]))
    assert [str(a) for a in rekeyed(before, after)] == ["10.4.0.2"]
    new_peer = wg(*[(p, ["10.9.0.0/24"]) for p in ("c1",)])
    assert rekeyed(before, new_peer) == []  # a new peer, not a key change
    assert rekeyed(None, after) == []
    pods_only = wg(("b1-new", ["10.2.3.0/24"]))
    assert [str(a) for a in rekeyed(before, pods_only)] == ["10.2.3.1"]


def test_the_peer_that_takes_a_rotated_key_nudges_it() -> None:
    r, _ = settled(resync_period=1000.0)
    b1 = r.backend.node_objs["b1"]
    b1["metadata"]["annotations"][KEY] = key_for("b1-rotated")
    r.backend.put_node(b1)
    r.step()
    assert r.peer_keys() == {key_for("b1-rotated")}
    assert len(r.host.nudged) == 1  # one datagram into the tunnel towards b1
    r.agent.reconcile()
    assert len(r.host.nudged) == 1  # not again while the key stays
