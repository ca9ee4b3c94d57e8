"""Routes and rules reconciled in a network namespace of our own."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from kilo.dataplane.netlink import RTPROT_KILO, Netlink, ReconcileError
from kilo.routes import KILO_TABLE, Route, Rule

pytestmark = pytest.mark.integration
if os.geteuid() != 0 or shutil.which("ip") is None:
    pytestmark = [pytest.mark.integration, pytest.mark.skip(reason="needs root and ip")]

P = ipaddress.ip_interface
A = ipaddress.ip_address


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"kpy-nl{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "link", "add", "kpy-r0", "type", "veth", "peer", "name", "kpy-r1")
        sh("ip", "-n", name, "addr", "add", "10.88.0.1/24", "dev", "kpy-r0")
        sh("ip", "-n", name, "-6", "addr", "add", "fd88::1/64", "dev", "kpy-r0", "nodad")
        for dev in ("kpy-r0", "kpy-r1"):
            sh("ip", "-n", name, "link", "set", dev, "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def ours(ns: str) -> list[str]:
    v4 = sh(
        "ip", "-n", ns, "-4", "route", "show", "table", "all", "proto", str(RTPROT_KILO)
    ).splitlines()
    v6 = sh(
        "ip", "-n", ns, "-6", "route", "show", "table", "all", "proto", str(RTPROT_KILO)
    ).splitlines()
    return sorted(v4 + v6)


def rules(ns: str) -> list[str]:
    return [r for r in sh("ip", "-n", ns, "rule").splitlines() if f"proto {RTPROT_KILO}" in r]


ROUTES = [
    Route(P("10.2.1.0/24"), "kpy-r0", A("10.88.0.2")),
    Route(P("10.4.0.2/32"), "kpy-r0", A("10.4.0.2"), onlink=True),
    Route(P("10.2.2.7/24"), "kpy-r0", A("10.88.0.3"), src=A("10.88.0.1"), onlink=True),  # host bits
    Route(P("10.88.1.5/32"), "kpy-r0", A("10.88.0.5"), table=KILO_TABLE),
    Route(P("fd99::/64"), "kpy-r0", A("fd88::2")),
]
RULES = [
    Rule(KILO_TABLE, src=P("10.2.1.0/24"), dst=P("10.88.1.5/32")),
    Rule(KILO_TABLE, dst=P("10.88.1.5/32"), iif="kpy-r1"),
]


def test_add_noop_restore_stale(ns: str) -> None:
    nl = Netlink(netns=ns)
    changes = nl.reconcile(ROUTES, RULES)
    assert len(changes) == len(ROUTES) + len(RULES)
    assert all(c.startswith(("add route", "add rule")) for c in changes)
    got = ours(ns)
    assert len(got) == len(ROUTES)
    assert any(
        line.startswith("10.2.2.0/24 via 10.88.0.3 dev kpy-r0")
        and "src 10.88.0.1" in line
        and "onlink" in line
        for line in got
    )
    assert any(
        line.startswith("10.88.1.5 via 10.88.0.5 dev kpy-r0")
        for line in sh("ip", "-n", ns, "route", "show", "table", str(KILO_TABLE)).splitlines()
    )
    assert len(rules(ns)) == 2
    assert {r.dst.network for r in nl.routes()} == {r.dst.network for r in ROUTES}

    assert nl.reconcile(ROUTES, RULES) == []  # no-op

    sh("ip", "-n", ns, "route", "del", "10.2.1.0/24")  # someone deletes ours
    sh("ip", "-n", ns, "rule", "del", "iif", "kpy-r1", "to", "10.88.1.5", "lookup", str(KILO_TABLE))
    assert nl.reconcile(ROUTES, RULES) == [
        "add route 10.2.1.0/24 dev kpy-r0 via 10.88.0.2",
        f"add rule from all to 10.88.1.5/32 iif kpy-r1 lookup {KILO_TABLE}",
    ]
    assert nl.reconcile(ROUTES, RULES) == []

    changes = nl.reconcile(ROUTES[1:], RULES[:1])  # stale ones go
    assert changes[0] == "remove route 10.2.1.0/24 dev kpy-r0 via 10.88.0.2"
    assert changes[1].startswith("remove rule ")  # with the priority the kernel gave it
    assert changes[1].endswith(f": from all to 10.88.1.5/32 iif kpy-r1 lookup {KILO_TABLE}")
    assert len(changes) == 2
    assert len(ours(ns)) == len(ROUTES) - 1 and len(rules(ns)) == 1

    changed = [Route(P("10.4.0.2/32"), "kpy-r0", A("10.4.0.3"), onlink=True), *ROUTES[2:]]
    assert nl.reconcile(changed, RULES[:1]) == [
        "replace route 10.4.0.2/32 dev kpy-r0 via 10.4.0.3 onlink"
    ]
    assert nl.reconcile(changed, RULES[:1]) == []


def test_foreign_routes_and_rules_are_never_touched(ns: str) -> None:
    sh("ip", "-n", ns, "route", "add", "10.77.0.0/24", "via", "10.88.0.9", "proto", "static")
    sh("ip", "-n", ns, "route", "add", "10.77.1.0/24", "via", "10.88.0.9", "table", str(KILO_TABLE))
    sh("ip", "-n", ns, "rule", "add", "from", "10.77.0.0/24", "lookup", str(KILO_TABLE))
    before_routes = sh("ip", "-n", ns, "route", "show", "table", "all")
    before_rules = sh("ip", "-n", ns, "rule")
    nl = Netlink(netns=ns)
    assert nl.reconcile([], []) == []
    nl.reconcile(ROUTES, RULES)
    assert nl.remove_all() != []
    assert ours(ns) == [] and rules(ns) == []
    assert sh("ip", "-n", ns, "route", "show", "table", "all") == before_routes
    assert sh("ip", "-n", ns, "rule") == before_rules

    # A desired route in the way of a foreign one: reported, the foreign route stays, the rest
    # applies.
    clash = Route(P("10.77.0.0/24"), "kpy-r0", A("10.88.0.2"))
    with pytest.raises(ReconcileError) as e:
        nl.reconcile([clash, ROUTES[0]])
    assert e.value.changes == ["add route 10.2.1.0/24 dev kpy-r0 via 10.88.0.2"]
    assert "not ours" in e.value.failures[0]
    assert "10.77.0.0/24 via 10.88.0.9" in sh("ip", "-n", ns, "route", "show", "10.77.0.0/24")
    # A missing device is reported too.
    with pytest.raises(ReconcileError, match="kpy-gone does not exist"):
        nl.reconcile([ROUTES[0], Route(P("10.66.0.0/24"), "kpy-gone")])


def test_a_change_from_what_was_applied_reads_nothing_and_keeps_foreign_routes(ns: str) -> None:
    sh("ip", "-n", ns, "route", "add", "10.77.0.0/24", "via", "10.88.0.9", "proto", "static")
    nl = Netlink(netns=ns)
    nl.reconcile(ROUTES, RULES)
    previous = (ROUTES, RULES)
    moved = Route(P("10.4.0.2/32"), "kpy-r0", A("10.4.0.3"), onlink=True)
    new = Route(P("10.2.9.0/24"), "kpy-r0", A("10.88.0.2"))
    want = [ROUTES[0], moved, *ROUTES[2:4], new]  # fd99::/64 left, 10.2.9.0/24 came
    changes = nl.reconcile(want, RULES, previous)
    assert sorted(changes) == sorted(
        [
            "remove route fd99::/64 dev kpy-r0 via fd88::2",
            "replace route 10.4.0.2/32 dev kpy-r0 via 10.4.0.3 onlink",
            "add route 10.2.9.0/24 dev kpy-r0 via 10.88.0.2",
        ]
    )
    assert {r.dst.network for r in nl.routes()} == {r.dst.network for r in want}
    assert nl.reconcile(want, RULES) == []  # the kernel holds exactly the plan
    assert nl.reconcile(want, RULES[:1], (want, RULES))[0].startswith("remove rule ")
    assert len(rules(ns)) == 1

    # A new route in the way of a foreign one is refused, never replaced; a route that left
    # and is gone already is no failure.
    sh("ip", "-n", ns, "route", "del", "10.2.9.0/24")
    clash = Route(P("10.77.0.0/24"), "kpy-r0", A("10.88.0.2"))
    with pytest.raises(ReconcileError) as e:
        nl.reconcile([*want[:4], clash], RULES[:1], (want, RULES[:1]))
    assert "not ours" in e.value.failures[0] and len(e.value.failures) == 1
    assert "10.77.0.0/24 via 10.88.0.9" in sh("ip", "-n", ns, "route", "show", "10.77.0.0/24")


def test_routes_of_a_yielding_device_give_way_and_no_other(ns: str) -> None:
    """flannel compatibility: flanneld's routes through its VXLAN device (here kpy-fl0) give
    way to ours with the same destination, in the kernel as in the fake (unit tests); a route
    of another device in the way stays, and the device's other routes are left alone."""
    sh("ip", "-n", ns, "link", "add", "kpy-fl0", "type", "veth", "peer", "name", "kpy-fl1")
    for dev in ("kpy-fl0", "kpy-fl1"):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    for dst in ("10.2.1.0/24", "10.2.3.0/24"):  # flanneld's: proto boot, no metric
        sh("ip", "-n", ns, "route", "add", dst, "via", dst[:-4] + "0", "dev", "kpy-fl0", "onlink")
    sh("ip", "-n", ns, "-6", "route", "add", "fd99::/64", "dev", "kpy-fl0")
    sh("ip", "-n", ns, "route", "add", "10.77.0.0/24", "via", "10.88.0.9", "proto", "static")
    nl = Netlink(netns=ns, yielding=frozenset({"kpy-fl0"}))
    clash = Route(P("10.77.0.0/24"), "kpy-r0", A("10.88.0.2"))
    with pytest.raises(ReconcileError) as e:
        nl.reconcile([*ROUTES, clash])
    assert e.value.failures == [f"add route {clash}: a route that is not ours is in the way"]
    assert "replace route 10.2.1.0/24 dev kpy-r0 via 10.88.0.2 (in place of kpy-fl0's)" in (
        e.value.changes
    )
    assert "replace route fd99::/64 dev kpy-r0 via fd88::2 (in place of kpy-fl0's)" in (
        e.value.changes
    )
    assert len(e.value.changes) == len(ROUTES)
    assert len(ours(ns)) == len(ROUTES)
    assert sh("ip", "-n", ns, "route", "show", "10.2.1.0/24").split() == (
        f"10.2.1.0/24 via 10.88.0.2 dev kpy-r0 proto {RTPROT_KILO}".split()
    )
    assert "10.2.3.0 dev kpy-fl0 onlink" in sh("ip", "-n", ns, "route", "show", "10.2.3.0/24")
    assert "via 10.88.0.9" in sh("ip", "-n", ns, "route", "show", "10.77.0.0/24")
    assert nl.reconcile(ROUTES) == []

    # flanneld puts its route back (RouteReplace on a lease event): ours is taken back at the
    # next verification, and also by an apply from what was applied
    sh("ip", "-n", ns, "route", "replace", "10.2.1.0/24", "via", "10.2.1.0", "dev", "kpy-fl0",
       "onlink")  # fmt: skip
    assert nl.reconcile(ROUTES) == [
        "replace route 10.2.1.0/24 dev kpy-r0 via 10.88.0.2 (in place of kpy-fl0's)"
    ]
    sh("ip", "-n", ns, "route", "replace", "10.2.3.0/24", "via", "10.2.3.0", "dev", "kpy-fl0",
       "onlink")  # fmt: skip
    new = Route(P("10.2.3.0/24"), "kpy-r0", A("10.88.0.2"))
    assert nl.reconcile([*ROUTES, new], (), (ROUTES, ())) == [
        f"replace route {new} (in place of kpy-fl0's)"
    ]
    assert len(ours(ns)) == len(ROUTES) + 1
