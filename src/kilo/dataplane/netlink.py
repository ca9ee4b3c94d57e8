"""Routes and policy rules, reconciled through netlink (pyroute2).

Ownership: every route and rule we install carries the routing protocol number ``RTPROT_KILO``
(107; ``ip route show proto 107``, ``ip rule`` shows ``proto 107``). That mark is the only record
of what is ours: it survives a restart of the agent, and anything without it (the kernel's
connected routes, an operator's ``proto static`` route, another daemon's rules) is never changed
or removed. Kilo marks its routes ``proto static`` and keeps the list in memory; a distinct number
lets a fresh agent tell its own routes apart without that memory.

``reconcile(routes, rules)`` adds what is missing (so a route someone deleted comes back at the
next call), replaces ours whose gateway/device/source/onlink changed, deletes ours that are no
longer wanted, and returns what it did (``[]`` when nothing differed). A desired route that
collides with a route that is not ours, or names a missing device, is skipped; after doing
everything else, ``reconcile`` raises ``ReconcileError`` listing those failures and the changes
it did make.

Yielding devices (``Netlink(yielding={"flannel.1"})``, kg's flannel compatibility): a route
that is not ours but goes out of one of them gives way to ours. flanneld routes every node's pod
CIDR through its VXLAN device, those of other locations too, where kg routes them through the
WireGuard device (or to the location's leader). When adding one of ours fails because a route
has its table, destination, TOS and metric, that route is read; if it is not ours and its
device yields, ours replaces it (and is ours from then on: ``proto 107``). Any other route in
the way is left, and the failure reported, as before. Nothing else of those devices is touched:
their other routes stay, and one of ours that kg no longer wants is deleted, not given back.

``reconcile(routes, rules, previous)``, with the routes and rules as last applied without a
failure, reads no route: those that left are deleted, the new ones added and the changed ones
replaced (``replace`` also puts back one of ours someone deleted); the rules, when they
changed, are reconciled as above (a handful, in one small dump). A deletion finding the route
gone already is not a failure. Drift that this cannot see is repaired by the next call without
``previous`` (the agent's resync).

That verification reads our routes first through ``ip -N -j route show table all proto 107``
(iproute2 lists thousands of routes in milliseconds, where decoding the same netlink dump in
Python takes a third of a second at 3,000 routes): when they are exactly the desired ones,
nothing else is read for them; otherwise, or without ``ip``, the dump above decides and repairs.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kilo.model import Prefix
from kilo.routes import Route, Rule

RTPROT_KILO = 107
EEXIST = 17
RTNH_F_ONLINK = 0x4
FAMILIES = (socket.AF_INET, socket.AF_INET6)


class ReconcileError(RuntimeError):
    def __init__(self, failures: list[str], changes: list[str]) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures
        self.changes = changes


@dataclass(frozen=True)
class _Rule:
    """A rule as compared: ``priority`` None matches any priority."""

    family: int
    table: int
    src: str | None
    dst: str | None
    iif: str | None
    priority: int | None = None

    def __str__(self) -> str:
        parts = [f"from {self.src}" if self.src else "from all"]
        parts += [f"to {self.dst}"] if self.dst else []
        parts += [f"iif {self.iif}"] if self.iif else []
        parts += [f"lookup {self.table}"]
        return ("" if self.priority is None else f"{self.priority}: ") + " ".join(parts)


def _net(p: Prefix | None) -> str | None:
    return None if p is None else str(p.network)


def _canon(r: Route) -> Route:
    """The route with its destination's host bits cleared (as the kernel keeps it); nearly
    every planned route has none, and is returned as it is."""
    net = r.dst.network
    if r.dst.ip == net.network_address:
        return r
    return r._replace(dst=ipaddress.ip_interface(net.with_prefixlen))


def _want_rule(r: Rule) -> _Rule:
    fam = (
        socket.AF_INET6
        if any(p is not None and p.version == 6 for p in (r.src, r.dst))
        else socket.AF_INET
    )
    return _Rule(fam, r.table, _net(r.src), _net(r.dst), r.iif, getattr(r, "priority", None))


def _addr(msg: Any, attr: str, plen: int, family: int) -> str:
    a = msg.get_attr(attr) or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    return str(ipaddress.ip_network(f"{a}/{plen}", strict=False))


class Netlink:
    """Routes and rules of one network namespace (None: the current one)."""

    def __init__(
        self,
        netns: str | None = None,
        proto: int = RTPROT_KILO,
        yielding: frozenset[str] = frozenset(),
    ) -> None:
        self.netns = netns
        self.proto = proto
        #: devices whose routes (not ours) give way to ours with the same key
        self.yielding = yielding
        # the routes last verified and their listing: a resync of an unchanged plan passes the
        # same sequence again, and its listing is not made twice
        self._listing: tuple[object, list[_Listed]] = ((), [])

    def _ipr(self) -> IPRoute:
        return IPRoute(netns=self.netns) if self.netns else IPRoute()

    # -- reading

    def _links(self, ipr: IPRoute) -> dict[int, str]:
        return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}

    def _routes(
        self, ipr: IPRoute, names: dict[int, str]
    ) -> dict[tuple[int, str], tuple[Route, Any]]:
        out: dict[tuple[int, str], tuple[Route, Any]] = {}
        for fam in FAMILIES:
            for m in ipr.route("dump", family=fam, proto=self.proto):
                table = m.get_attr("RTA_TABLE") or m["table"]
                dst = _addr(m, "RTA_DST", m["dst_len"], fam)
                gw, src = m.get_attr("RTA_GATEWAY"), m.get_attr("RTA_PREFSRC")
                r = Route(
                    ipaddress.ip_interface(dst),
                    names.get(m.get_attr("RTA_OIF") or -1, ""),
                    None if gw is None else ipaddress.ip_address(gw),
                    None if src is None else ipaddress.ip_address(src),
                    bool(m["flags"] & RTNH_F_ONLINK),
                    table,
                )
                out[(table, dst)] = (r, m)
        return out

    def _rules(self, ipr: IPRoute) -> list[tuple[_Rule, Any]]:
        out = []
        for fam in FAMILIES:
            for m in ipr.rule("dump", family=fam):
                if m.get_attr("FRA_PROTOCOL") != self.proto:
                    continue
                src = _addr(m, "FRA_SRC", m["src_len"], fam) if m.get_attr("FRA_SRC") else None
                dst = _addr(m, "FRA_DST", m["dst_len"], fam) if m.get_attr("FRA_DST") else None
                out.append(
                    (
                        _Rule(
                            fam,
                            m.get_attr("FRA_TABLE") or m["table"],
                            src,
                            dst,
                            m.get_attr("FRA_IIFNAME"),
                            m.get_attr("FRA_PRIORITY"),
                        ),
                        m,
                    )
                )
        return out

    def _listed(self) -> list[_Listed] | None:
        """Our routes as iproute2 lists them, sorted; None when it cannot (no ``ip``)."""
        ip = shutil.which("ip")
        if ip is None:
            return None
        argv = [ip, "-N", "-j"]
        if self.netns and "/" in self.netns:
            argv = ["nsenter", f"--net={self.netns}", "--", *argv]
        elif self.netns:
            argv += ["-n", self.netns]
        out: list[_Listed] = []
        for fam in ("-4", "-6"):
            cmd = [*argv, fam, "route", "show", "table", "all", "proto", str(self.proto)]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                items = json.loads(p.stdout or "[]") if p.returncode == 0 else None
            except (OSError, subprocess.SubprocessError, ValueError):
                return None
            if not isinstance(items, list):
                return None
            for item in items:
                listed = _from_ip_json(item, fam == "-6")
                if listed is None:
                    return None
                out.append(listed)
        return sorted(out)

    def routes(self) -> list[Route]:
        """Our routes as they are now."""
        with self._ipr() as ipr:
            return [r for r, _ in self._routes(ipr, self._links(ipr)).values()]

    # -- writing

    def reconcile(
        self,
        routes: Iterable[Route],
        rules: Iterable[Rule] = (),
        previous: tuple[Sequence[Route], Sequence[Rule]] | None = None,
    ) -> list[str]:
        changes: list[str] = []
        failures: list[str] = []
        want_rules = list(rules)
        want_routes = list(routes)
        with self._ipr() as ipr:
            if previous is None:
                if self._listed() != self._listing_for(routes, want_routes):
                    self._reconcile_routes(ipr, want_routes, changes, failures)
                self._reconcile_rules(ipr, want_rules, changes, failures)
            else:
                old_routes, old_rules = previous
                self._change_routes(ipr, old_routes, want_routes, changes, failures)
                if list(old_rules) != want_rules:
                    self._reconcile_rules(ipr, want_rules, changes, failures)
        if failures:
            raise ReconcileError(failures, changes)
        return changes

    def _listing_for(self, given: Iterable[Route], routes: list[Route]) -> list[_Listed]:
        """``_listing_of(routes)``, kept for ``given`` when it is a tuple (the plan's, which
        does not change)."""
        seen, listing = self._listing
        if given is seen and isinstance(given, tuple):
            return listing
        listing = _listing_of(routes)
        self._listing = (given, listing)
        return listing

    def remove_all(self) -> list[str]:
        """Delete every route and rule of ours (``--clean-up``)."""
        return self.reconcile([], [])

    def _route_args(self, r: Route, names: dict[int, str]) -> dict[str, Any]:
        index = {n: i for i, n in names.items()}.get(r.dev)
        if index is None:
            raise LookupError(f"device {r.dev} does not exist")
        args: dict[str, Any] = {
            "dst": str(r.dst.network),
            "oif": index,
            "table": r.table,
            "proto": self.proto,
            "family": socket.AF_INET6 if r.dst.version == 6 else socket.AF_INET,
        }
        if r.gw is not None:
            args["gateway"] = str(r.gw)
        if r.src is not None:
            args["prefsrc"] = str(r.src)
        if r.onlink:
            args["flags"] = RTNH_F_ONLINK
        return args

    def _reconcile_routes(
        self, ipr: IPRoute, want: Sequence[Route], changes: list[str], failures: list[str]
    ) -> None:
        names = self._links(ipr)
        have = self._routes(ipr, names)
        wanted: dict[tuple[int, str], Route] = {}
        for r in map(_canon, want):
            wanted.setdefault((r.table, str(r.dst.network)), r)
        for key, (old, msg) in have.items():
            if key not in wanted:
                try:
                    ipr.route("del", **_delete_args(msg))
                    changes.append(f"remove route {old}")
                except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                    failures.append(f"remove route {old}: {_why(e)}")
        blocked: list[tuple[Route, dict[str, Any], Exception]] = []
        for key, r in wanted.items():
            cur = have.get(key)
            if cur is not None and cur[0] == r:
                continue
            verb = "add" if cur is None else "replace"
            try:
                args = self._route_args(r, names)
            except LookupError as e:
                failures.append(f"{verb} route {r}: {_why(e)}")
                continue
            try:
                ipr.route(verb, **args)
                changes.append(f"{verb} route {r}")
            except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                if verb == "add" and self._may_yield(e):
                    blocked.append((r, args, e))
                else:
                    failures.append(f"{verb} route {r}: {_why(e)}")
        self._take_over(ipr, blocked, changes, failures)

    def _change_routes(
        self,
        ipr: IPRoute,
        before: Sequence[Route],
        want: Sequence[Route],
        changes: list[str],
        failures: list[str],
    ) -> None:
        """From ``before`` (as applied) to ``want``, without reading the routing tables."""
        old = _keyed(before)
        new = _keyed(want)
        index: dict[str, int | None] = {}

        def oif(dev: str) -> int | None:
            if dev not in index:
                found = ipr.link_lookup(ifname=dev) if dev else []
                index[dev] = found[0] if found else None
            return index[dev]

        for key, r in old.items():
            if key in new:
                continue
            args = {
                "dst": str(r.dst.network),
                "table": r.table,
                "proto": self.proto,
                "family": socket.AF_INET6 if r.dst.version == 6 else socket.AF_INET,
            }
            try:
                ipr.route("del", **args)
                changes.append(f"remove route {r}")
            except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                if getattr(e, "code", 0) != 3:  # ESRCH: gone already
                    failures.append(f"remove route {r}: {_why(e)}")
        blocked: list[tuple[Route, dict[str, Any], Exception]] = []
        for key, r in new.items():
            if old.get(key) == r:
                continue
            verb = "add" if key not in old else "replace"
            i = oif(r.dev)
            if i is None:
                failures.append(f"{verb} route {r}: device {r.dev} does not exist")
                continue
            args = self._route_args(r, {i: r.dev})
            try:  # a new one is added, never replaced: a route in the way may not be ours
                ipr.route(verb, **args)
                changes.append(f"{verb} route {r}")
            except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                if verb == "add" and self._may_yield(e):
                    blocked.append((r, args, e))
                else:
                    failures.append(f"{verb} route {r}: {_why(e)}")
        self._take_over(ipr, blocked, changes, failures)

    def _may_yield(self, e: Exception) -> bool:
        """Whether an add that failed with ``e`` may have met a route of a yielding device."""
        return bool(self.yielding) and isinstance(e, NetlinkError) and e.code == EEXIST

    def _take_over(
        self,
        ipr: IPRoute,
        blocked: Sequence[tuple[Route, dict[str, Any], Exception]],
        changes: list[str],
        failures: list[str],
    ) -> None:
        """Replace the routes in the way of those ``blocked`` (their add failed with EEXIST)
        that are not ours and go out of a yielding device; each of the others is a failure.
        The routes in the way are read in one dump per family, whatever their number."""
        if not blocked:
            return
        try:
            names = self._links(ipr)
            others: dict[tuple[int, int, str], list[Any]] = {}
            for fam in sorted({args["family"] for _, args, _ in blocked}):
                for m in ipr.route("dump", family=fam):
                    if m["proto"] == self.proto or m["tos"] != 0:
                        continue
                    dst = _addr(m, "RTA_DST", m["dst_len"], fam)
                    table = m.get_attr("RTA_TABLE") or m["table"]
                    others.setdefault((fam, table, dst), []).append(m)
        except Exception as e:  # noqa: BLE001 - then none of them can be taken over
            failures += [f"add route {r}: {_why(err)} ({e})" for r, _, err in blocked]
            return
        for r, args, err in blocked:
            fam = args["family"]
            metric = 1024 if fam == socket.AF_INET6 else 0  # the kernel's, as ours have none
            way = [
                m
                for m in others.get((fam, args["table"], args["dst"]), [])
                if (m.get_attr("RTA_PRIORITY") or 0) == metric
            ]
            devs = {names.get(m.get_attr("RTA_OIF") or -1, "") for m in way}
            if not way or not devs <= self.yielding:
                failures.append(f"add route {r}: {_why(err)}")
                continue
            try:
                ipr.route("replace", **args)
                changes.append(f"replace route {r} (in place of {'/'.join(sorted(devs))}'s)")
            except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                failures.append(f"replace route {r}: {_why(e)}")

    def _reconcile_rules(
        self, ipr: IPRoute, want: Sequence[Rule], changes: list[str], failures: list[str]
    ) -> None:
        have = self._rules(ipr)
        wanted = list(dict.fromkeys(map(_want_rule, want)))
        matched: set[int] = set()
        for w in wanted:
            i = next((i for i, (h, _) in enumerate(have) if i not in matched and _same(h, w)), None)
            if i is not None:
                matched.add(i)
                continue
            try:
                ipr.rule("add", **self._rule_args(w))
                changes.append(f"add rule {w}")
            except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                failures.append(f"add rule {w}: {_why(e)}")
        for i, (h, m) in enumerate(have):
            if i in matched:
                continue
            try:
                ipr.rule("del", **_rule_delete_args(m))
                changes.append(f"remove rule {h}")
            except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                failures.append(f"remove rule {h}: {_why(e)}")

    def _rule_args(self, w: _Rule) -> dict[str, Any]:
        args: dict[str, Any] = {"family": w.family, "table": w.table, "protocol": self.proto}
        for name, value in (("src", w.src), ("dst", w.dst)):
            if value is not None:
                net = ipaddress.ip_network(value)
                args[name], args[f"{name}_len"] = str(net.network_address), net.prefixlen
        if w.iif is not None:
            args["iifname"] = w.iif
        if w.priority is not None:
            args["priority"] = w.priority
        return args


#: A route as compared with iproute2's listing: table, destination, device, gateway, source,
#: onlink.
_Listed = tuple[int, str, str, str, str, bool]


def _why(e: Exception) -> str:
    """Why one route or rule failed, as a sentence."""
    if isinstance(e, NetlinkError) and e.code == EEXIST:
        return "a route that is not ours is in the way"
    return str(e) or type(e).__name__


def _listing_of(routes: Iterable[Route]) -> list[_Listed]:
    """The desired routes as ``_listed`` would list them once applied."""
    return sorted(
        (
            r.table,
            str(r.dst.network),
            r.dev,
            "" if r.gw is None else str(r.gw),
            "" if r.src is None else str(r.src),
            r.onlink,
        )
        for r in _keyed(routes).values()
    )


#: An IPv4 destination as iproute2 prints the kernel's routes (no leading zeros, no host bits):
#: anything else is parsed, and a string that is not canonical only makes a listing differ.
_IPV4_NET = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:/(?:3[0-2]|[12]?[0-9]))?"
)


def _from_ip_json(item: object, v6: bool) -> _Listed | None:
    """One route of ``ip -N -j route show``; None if it has a shape we do not compare."""
    if not isinstance(item, dict):
        return None
    dst, dev = item.get("dst"), item.get("dev")
    if not isinstance(dst, str) or not isinstance(dev, str) or "type" in item:
        return None  # unicast routes only: anything else goes to the full comparison
    if dst == "default":
        dst = "::/0" if v6 else "0.0.0.0/0"
    try:
        if not v6 and _IPV4_NET.fullmatch(dst):  # as the kernel keeps it: already canonical
            net = dst if "/" in dst else f"{dst}/32"
        else:
            net = str(ipaddress.ip_network(dst if "/" in dst else f"{dst}/{128 if v6 else 32}"))
        table = int(str(item.get("table", 254)))
    except ValueError:
        return None
    gw, src, flags = item.get("gateway", ""), item.get("prefsrc", ""), item.get("flags", [])
    if not isinstance(gw, str) or not isinstance(src, str) or not isinstance(flags, list):
        return None
    return (table, net, dev, gw, src, "onlink" in flags)


def _keyed(routes: Iterable[Route]) -> dict[tuple[int, str], Route]:
    """Routes by (table, destination), the first of each (as ``_reconcile_routes`` keeps)."""
    out: dict[tuple[int, str], Route] = {}
    for r in map(_canon, routes):
        out.setdefault((r.table, str(r.dst.network)), r)
    return out


def _same(have: _Rule, want: _Rule) -> bool:
    return have == (want if want.priority is not None else replace(want, priority=have.priority))


def _delete_args(m: Any) -> dict[str, Any]:
    """Arguments deleting exactly the dumped route ``m``."""
    args: dict[str, Any] = {
        "family": m["family"],
        "dst_len": m["dst_len"],
        "tos": m["tos"],
        "table": m.get_attr("RTA_TABLE") or m["table"],
        "proto": m["proto"],
    }
    pairs = [("RTA_DST", "dst"), ("RTA_OIF", "oif"), ("RTA_GATEWAY", "gateway")]
    return _with_attrs(args, m, [*pairs, ("RTA_PRIORITY", "priority")])


def _rule_delete_args(m: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "family": m["family"],
        "table": m.get_attr("FRA_TABLE") or m["table"],
        "src_len": m["src_len"],
        "dst_len": m["dst_len"],
        "protocol": m.get_attr("FRA_PROTOCOL"),
    }
    pairs = [("FRA_SRC", "src"), ("FRA_DST", "dst"), ("FRA_IIFNAME", "iifname")]
    return _with_attrs(args, m, [*pairs, ("FRA_PRIORITY", "priority")])


def _with_attrs(args: dict[str, Any], m: Any, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``args`` plus each (attribute, argument) of ``pairs`` that the message ``m`` has."""
    for attr, key in pairs:
        v = m.get_attr(attr)
        if v is not None:
            args[key] = v
    return args
