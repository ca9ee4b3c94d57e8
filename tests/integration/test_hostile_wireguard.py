"""The nastiest of the hostile corpus (``tests/data/hostile``) against a real wireguard-go.

One device (``kilo0`` in a ``kpy-`` network namespace) holds the baseline leader a1's WireGuard
configuration, planned as the agent plans it (``tests/unit/test_hostile_corpus.py`` builds the
cluster and the plan). For each case with an IPv6 zone, an out-of-range port or keepalive, or a
claim on others' addresses or keys, the plan with the hostile object is applied twice — from the
config applied last (the agent's steady state) and from the device's state (a resync) — and the
device must still hold every baseline peer exactly (allowed IPs, endpoint, keepalive, preshared
key), hold the hostile object's peer only as planned, carry no address of a refused (zoned) value,
and nothing may raise. The baseline is put back between cases.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kilo.dataplane import wgdevice
from kilo.dataplane.wg_userspace import UserspaceDevice, find_wireguard_go
from kilo.keys import Key
from kilo.model import IPAddress, UdpAddress
from kilo.plan import Plan
from kilo.wgstate import DeviceState
from kilo.wireguard import WgConf, WgPeer
from tests.unit.test_hostile_corpus import (
    Case,
    Findings,
    agent_plan,
    agent_view,
    cluster_with,
    covered,
    fake_resolve,
    internal_ip,
    load_corpus,
    private_key,
    strings_in,
)

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.integration]

#: The classes applied to the device.
TAGS = {"zone", "port", "keepalive", "claim"}
CASES = [c for c in load_corpus() if TAGS & set(c.tags)]
HOST = "a1"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "needs ip and unshare"
    try:
        find_wireguard_go()
    except wgdevice.DeviceError as e:
        return str(e)
    return None


skip_reason = _requirements()
if skip_reason:
    pytestmark = [pytest.mark.integration, pytest.mark.skip(reason=skip_reason)]


@pytest.fixture(scope="module")
def device() -> Iterator[UserspaceDevice]:
    """wireguard-go in a namespace of its own, removed even when a test fails."""
    ns = f"kpy-hw{uuid.uuid4().hex[:6]}"
    dev: UserspaceDevice | None = None
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        dev = UserspaceDevice("kilo0", netns=ns, resolve=fake_resolve)
        dev.start()
        dev.configure_link([ipaddress.ip_interface("10.4.0.1/16")], mtu=1420)
        yield dev
    finally:
        if dev is not None:
            dev.close(remove=True)  # stop wireguard-go before its namespace goes
        sh("ip", "netns", "del", ns, check=False)


def plan_for(case: Case | None) -> Plan:
    view = agent_view(*cluster_with(case))
    return agent_plan(view, HOST, private_key(HOST), internal_ip(HOST))


@pytest.fixture(scope="module")
def baseline() -> WgConf:
    p = plan_for(None)
    assert p.dataplane is not None
    return p.dataplane.wireguard


@dataclass(frozen=True)
class Held:
    """A peer as the device holds it (what a config decides; no counters)."""

    networks: frozenset[str]
    endpoint: UdpAddress | None
    keepalive: int
    psk: Key | None


def held(state: DeviceState) -> dict[Key, Held]:
    return {
        k: Held(
            frozenset(str(a.network) for a in p.allowed_ips),
            p.endpoint,
            p.persistent_keepalive,
            p.preshared_key,
        )
        for k, p in state.peers.items()
    }


def wanted(p: WgPeer) -> Held:
    return Held(
        frozenset(str(a.network) for a in p.allowed_ips),
        fake_resolve(p.endpoint) if p.endpoint is not None else None,
        p.persistent_keepalive,
        p.preshared_key,
    )


def zoned_addresses(obj: object) -> set[IPAddress]:
    """The addresses of the object's zoned values (``ADDRESS%ZONE``): refused, they must not
    reach the device with the zone cut off either."""
    out: set[IPAddress] = set()
    for s in strings_in(obj):
        for m in re.finditer(r"([0-9A-Fa-f:.]+)%", s):
            try:
                out.add(ipaddress.ip_address(m.group(1)))
            except ValueError:
                pass
    return out


def check_device(
    dev: UserspaceDevice, base: WgConf, conf: WgConf, case: Case, where: str, f: Findings
) -> None:
    have = held(dev.state())
    own = dev.state().private_key
    for b in base.peers:
        got = have.get(b.public_key)
        f.check(got == wanted(b), where, f"baseline peer {b.public_key} is {got}, was {wanted(b)}")
    protected = [ipaddress.ip_network(n) for b in base.peers for n in wanted(b).networks]
    planned = {p.public_key: p for p in conf.peers}
    old = {b.public_key for b in base.peers}
    forbidden = zoned_addresses(case.obj)
    for k in planned.keys() - have.keys():
        f.add(where, f"planned peer {k} is not on the device (and applying raised nothing)")
    for k, h in have.items():
        if own is not None and k == own.public():
            f.add(where, "the device holds a peer with its own key")
        if k not in old:
            p = planned.get(k)
            f.check(p is not None and h == wanted(p), where, f"peer {k} is {h}, planned {p}")
            for n in h.networks:
                hit = covered(ipaddress.ip_network(n), protected)
                f.check(hit is None, where, f"peer {k} holds {n} of the baseline's {hit}")
        if h.endpoint is not None:
            f.check(h.endpoint[0] not in forbidden, where, f"peer {k} endpoint {h.endpoint}")
        for n in h.networks:
            addr = ipaddress.ip_network(n).network_address
            f.check(addr not in forbidden, where, f"peer {k} holds {n}, from a zoned value")


def restore(dev: UserspaceDevice, base: WgConf) -> None:
    """The baseline on the device again. A peer that does not come back as it was (WireGuard
    cannot unset an endpoint a case gave it) is removed and added anew."""
    dev.apply(base)
    want = {p.public_key: wanted(p) for p in base.peers}
    stale = {k for k, h in held(dev.state()).items() if want.get(k) != h}
    if stale:
        dev.apply(
            WgConf(
                base.private_key,
                base.listen_port,
                [p for p in base.peers if p.public_key not in stale],
            )
        )
        dev.apply(base)
    assert held(dev.state()) == want


def test_the_baseline_holds(device: UserspaceDevice, baseline: WgConf) -> None:
    restore(device, baseline)
    assert len(baseline.peers) == 4


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_plan_on_wireguard_go(
    case: Case, device: UserspaceDevice, baseline: WgConf
) -> None:
    restore(device, baseline)  # whatever the case before left
    f = Findings()
    p = f.guard("plan", lambda: plan_for(case))
    conf = p.dataplane.wireguard if p is not None and p.dataplane is not None else None
    if conf is None:
        f.add("plan", "no WireGuard configuration planned")
        f.assert_none()
        return
    f.guard("apply from the last config", lambda: device.apply(conf, baseline))
    check_device(device, baseline, conf, case, "after applying from the last config", f)
    f.guard("apply from the device's state", lambda: device.apply(conf))
    check_device(device, baseline, conf, case, "after applying from the device's state", f)
    f.assert_none()
