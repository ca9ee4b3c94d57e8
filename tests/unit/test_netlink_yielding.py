"""Routes of a yielding device (flannel compatibility: flanneld's through flannel.1) give way to
ours with the same key; no other route does, and the device's other routes stay. Against an
in-memory routing table that answers as the kernel does (EEXIST on an add that meets a route
with the same table, destination, TOS and metric; a replace takes that route's place)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from kilo.dataplane.netlink import RTPROT_KILO, Netlink, ReconcileError
from kilo.routes import Route

P, A = ipaddress.ip_interface, ipaddress.ip_address
LINKS = {1: "lo", 2: "kilo0", 3: "flannel.1", 4: "eth0"}
FLANNEL = frozenset({"flannel.1"})


@dataclass
class Msg:
    """A route message as pyroute2 gives it: fields by key, attributes by ``get_attr``."""

    fields: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class FakeIPRoute:
    """One namespace's main and other tables, keyed as the kernel's FIB is."""

    def __init__(self) -> None:
        self.table: dict[tuple[int, int, str, int], Msg] = {}
        self.calls: list[tuple[str, str]] = []

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def get_links(self) -> list[Msg]:
        return [Msg({"index": i}, {"IFLA_IFNAME": n}) for i, n in LINKS.items()]

    def link_lookup(self, ifname: str) -> list[int]:
        return [i for i, n in LINKS.items() if n == ifname]

    def put(self, dst: str, dev: str, proto: int = 3, table: int = 254) -> None:
        """A route of someone else's (proto boot by default, as ``ip route add`` makes)."""
        self.route("add", dst=dst, oif=self.link_lookup(dev)[0], table=table, proto=proto,
                   family=socket.AF_INET6 if ":" in dst else socket.AF_INET)  # fmt: skip

    def route(self, verb: str, **kw: Any) -> Iterator[Msg] | None:
        if verb == "dump":
            return iter(
                [m for m in self.table.values() if kw.get("proto", m["proto"]) == m["proto"]
                 and m["family"] == kw["family"]]
            )  # fmt: skip
        fam = kw["family"]
        if "dst_len" in kw:  # a deletion of a dumped route: the address and length apart
            net = ipaddress.ip_network(f"{kw['dst']}/{kw['dst_len']}")
        else:
            net = ipaddress.ip_network(kw["dst"])
        metric = kw.get("priority", 1024 if fam == socket.AF_INET6 else 0)
        key = (fam, kw["table"], str(net), metric)
        self.calls.append((verb, str(net)))
        if verb == "del":
            if key not in self.table:
                raise NetlinkError(3, "No such process")
            del self.table[key]
            return None
        if verb == "add" and key in self.table:
            raise NetlinkError(17, "File exists")
        if verb == "replace" and kw["proto"] == RTPROT_KILO and key in self.table:
            assert LINKS[self.table[key].attrs["RTA_OIF"]] in FLANNEL | {"kilo0"}, key
        self.table[key] = Msg(
            {"family": fam, "dst_len": net.prefixlen, "tos": 0, "table": kw["table"],
             "proto": kw["proto"], "flags": kw.get("flags", 0)},
            {"RTA_DST": str(net.network_address), "RTA_OIF": kw["oif"], "RTA_TABLE": kw["table"],
             "RTA_GATEWAY": kw.get("gateway"), "RTA_PRIORITY": metric or None},
        )  # fmt: skip
        return None

    def rule(self, verb: str, **kw: Any) -> list[Msg]:
        return []

    def shown(self, dst: str) -> tuple[str, int]:
        """(device, protocol) of the route to ``dst`` in the main table."""
        (m,) = [m for k, m in self.table.items() if k[1] == 254 and k[2] == dst]
        return LINKS[m.attrs["RTA_OIF"]], m["proto"]


@pytest.fixture
def ipr() -> FakeIPRoute:
    ipr = FakeIPRoute()
    for dst in ("10.2.1.0/24", "10.2.2.0/24", "10.2.3.0/24"):  # flanneld's, every node's
        ipr.put(dst, "flannel.1")
    ipr.put("fd02:2::/64", "flannel.1")
    ipr.put("10.77.0.0/24", "eth0", proto=4)  # an operator's (proto static)
    return ipr


def netlink(ipr: FakeIPRoute, yielding: frozenset[str] = FLANNEL) -> Netlink:
    nl = Netlink(yielding=yielding)
    nl._ipr = lambda: ipr  # type: ignore[method-assign]
    nl._listed = lambda: None  # type: ignore[method-assign]  # no ip: the full comparison
    return nl


WANT = [
    Route(P("10.2.2.0/24"), "kilo0", A("10.4.0.2"), onlink=True),  # another location's
    Route(P("fd02:2::/64"), "kilo0"),
    Route(P("10.77.0.0/24"), "kilo0"),  # in the way of the operator's
    Route(P("10.10.2.1/32"), "kilo0", A("10.4.0.2"), onlink=True),  # nothing in the way
]


def test_a_route_of_a_yielding_device_gives_way_to_ours(ipr: FakeIPRoute) -> None:
    nl = netlink(ipr)
    with pytest.raises(ReconcileError) as e:
        nl.reconcile(WANT)
    # per item: the route in the way of the operator's fails alone, the others apply
    assert e.value.failures == [f"add route {WANT[2]}: a route that is not ours is in the way"]
    assert sorted(e.value.changes) == sorted(
        [
            f"replace route {WANT[0]} (in place of flannel.1's)",
            f"replace route {WANT[1]} (in place of flannel.1's)",
            f"add route {WANT[3]}",
        ]
    )
    assert ipr.shown("10.2.2.0/24") == ("kilo0", RTPROT_KILO)  # ours from now on
    assert ipr.shown("fd02:2::/64") == ("kilo0", RTPROT_KILO)
    assert ipr.shown("10.77.0.0/24") == ("eth0", 4)  # never taken
    # flanneld's routes to the location's other nodes stay as they are
    assert ipr.shown("10.2.1.0/24") == ("flannel.1", 3)
    assert ipr.shown("10.2.3.0/24") == ("flannel.1", 3)
    assert not [c for c in ipr.calls if c[0] == "del"]
    with pytest.raises(ReconcileError) as e:
        nl.reconcile(WANT)
    assert e.value.changes == []  # ours are found as they are; the operator's still refused


def test_a_route_given_back_to_flanneld_is_taken_again(ipr: FakeIPRoute) -> None:
    nl = netlink(ipr)
    want = [WANT[0], WANT[3]]
    assert len(nl.reconcile(want)) == 2
    ipr.table.pop((socket.AF_INET, 254, "10.2.2.0/24", 0))
    ipr.put("10.2.2.0/24", "flannel.1")  # flanneld's RouteReplace, on a lease event
    assert nl.reconcile(want) == [f"replace route {WANT[0]} (in place of flannel.1's)"]

    # from what was applied (no reading): a new route in flanneld's way takes its place too
    new = Route(P("10.2.3.0/24"), "kilo0", A("10.4.0.3"), onlink=True)
    assert nl.reconcile([*want, new], (), (want, ())) == [
        f"replace route {new} (in place of flannel.1's)"
    ]
    assert ipr.shown("10.2.3.0/24") == ("kilo0", RTPROT_KILO)
    assert ipr.shown("10.2.1.0/24") == ("flannel.1", 3)

    # ours that left is deleted, flanneld's is not brought back (its next lease event does)
    assert nl.reconcile(want, (), ([*want, new], ())) == [f"remove route {new}"]
    assert not [k for k in ipr.table if k[2] == "10.2.3.0/24"]


def test_without_yielding_devices_nothing_gives_way(ipr: FakeIPRoute) -> None:
    nl = netlink(ipr, frozenset())
    with pytest.raises(ReconcileError) as e:
        nl.reconcile(WANT)
    assert len(e.value.failures) == 3
    assert all("not ours is in the way" in f for f in e.value.failures)
    assert e.value.changes == [f"add route {WANT[3]}"]
    assert ipr.shown("10.2.2.0/24") == ("flannel.1", 3)
    assert not [c for c in ipr.calls if c[0] == "replace"]
    # nor does a device that is not flannel's, when flannel.1 yields
    with pytest.raises(ReconcileError):
        netlink(ipr, frozenset({"eth0"})).reconcile(WANT[:1])
    assert ipr.shown("10.2.2.0/24") == ("flannel.1", 3)
