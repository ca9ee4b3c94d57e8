"""What the core asks of an address prefix, as integers and strings computed once per object
(pure memoisation).

The translated objects live as long as the agent's cache holds them, and every plan asks the
same questions of their prefixes (which network, its text, its one-address CIDR). ``ipaddress``
answers each of them anew and slowly (a ``str()`` is about 2 µs, a hash half of that); here each
answer is computed the first time and kept in the prefix object's own ``__dict__`` (an
``IPv4Interface``/``IPv6Interface`` has one; ``ipaddress`` never reads it, and neither
equality, hashing nor pickling sees it). The answers depend only on the prefix's value, which
never changes, so a kept answer is the answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from itertools import accumulate, chain
from typing import Any, NamedTuple

from kilo.model import Prefix, host_prefix

#: (version, first address, prefix length): equal exactly when the networks are equal.
NetKey = tuple[int, int, int]


def _memo(p: Prefix) -> dict[str, Any]:
    return p.__dict__


def net_key(p: Prefix) -> NetKey:
    """The network of ``p`` as integers."""
    d = p.__dict__
    k: NetKey | None = d.get("_k_net")
    if k is None:
        n = p.network
        k = d["_k_net"] = (n.version, int(n.network_address), n.prefixlen)
    return k


def net_keys(ps: Iterable[Prefix]) -> list[NetKey]:
    """``net_key`` of each of ``ps`` (one loop, not a call per prefix: thousands per plan)."""
    out: list[NetKey] = []
    for p in ps:
        k = p.__dict__.get("_k_net")
        out.append(net_key(p) if k is None else k)
    return out


def ip_key(p: Prefix) -> NetKey:
    """(version, address with its host bits, prefix length): equal exactly when ``p`` is."""
    d = _memo(p)
    k: NetKey | None = d.get("_k_ip")
    if k is None:
        k = d["_k_ip"] = (p.version, int(p), p.network.prefixlen)
    return k


def span(p: Prefix) -> tuple[int, int, int]:
    """(version, first, last address) of the network of ``p``."""
    d = _memo(p)
    s: tuple[int, int, int] | None = d.get("_k_span")
    if s is None:
        v, lo, plen = net_key(p)
        s = d["_k_span"] = (v, lo, lo + (1 << ((32 if v == 4 else 128) - plen)) - 1)
    return s


#: Networks of one family by ``first address << 8 | prefix length`` (their order is address
#: order, a longer prefix after a shorter one starting at the same address).
ByStart = dict[int, Prefix]


class Networks(NamedTuple):
    """Networks ``by_start``, IPv4 and IPv6 apart."""

    v4: ByStart
    v6: ByStart


def by_start(prefixes: Iterable[Prefix]) -> Networks:
    """The networks of ``prefixes`` by their first address (the last of equal networks):
    what ``outermost_of`` takes, and what several sets can be merged as."""
    v4: ByStart = {}
    v6: ByStart = {}
    for p in prefixes:
        v, lo, plen = net_key(p)
        (v4 if v == 4 else v6)[lo << 8 | plen] = p
    return Networks(v4, v6)


def outermost(prefixes: Iterable[Prefix]) -> tuple[list[Prefix], list[Prefix]]:
    """The networks of ``prefixes`` that no other one contains, IPv4 and IPv6 apart, each in
    address order: what an nftables interval set takes (it refuses overlapping elements) and
    matches the same addresses as all of them."""
    return outermost_of(by_start(prefixes))


def outermost_of(nets: Networks) -> tuple[list[Prefix], list[Prefix]]:
    """``outermost`` of networks given ``by_start``. Two CIDRs are disjoint or nested, so
    after sorting by (first address, prefix length) a network is contained exactly when it
    starts before the end of one before it (the furthest end so far: a contained network
    ends inside its container). Comprehensions and ``accumulate``, not a loop: thousands of
    networks per plan."""
    out: tuple[list[Prefix], list[Prefix]] = ([], [])
    for bits, by_key, kept in ((32, nets.v4, out[0]), (128, nets.v6, out[1])):
        keys = sorted(by_key)
        ends = accumulate([(k >> 8) + (1 << (bits - (k & 255))) - 1 for k in keys], max)
        kept += [
            by_key[k] for k, end in zip(keys, chain((-1,), ends), strict=False) if k >> 8 > end
        ]
    return out


def text(p: Prefix) -> str:
    """``str(p)``: the address with its host bits and the prefix length."""
    d = _memo(p)
    s: str | None = d.get("_k_text")
    if s is None:
        s = d["_k_text"] = str(p)
    return s


def net_text(p: Prefix) -> str:
    """``str(p.network)``: the CIDR."""
    d = _memo(p)
    s: str | None = d.get("_k_net_text")
    if s is None:
        s = d["_k_net_text"] = str(p.network)
    return s


def addr_text(p: Prefix) -> str:
    """``str(p.network.network_address)``: the CIDR's first address."""
    d = _memo(p)
    s: str | None = d.get("_k_addr_text")
    if s is None:
        s = d["_k_addr_text"] = str(p.network.network_address)
    return s


def ip_of(p: Prefix) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``p.ip`` (one object, not a new one each time)."""
    d = _memo(p)
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = d.get("_k_addr")
    if ip is None:
        ip = d["_k_addr"] = p.ip
    return ip


def host_of(p: Prefix) -> Prefix:
    """The one-address CIDR of ``p``'s address (``host_prefix(p.ip)``)."""
    d = _memo(p)
    h: Prefix | None = d.get("_k_host")
    if h is None:
        h = d["_k_host"] = host_prefix(p.ip)
    return h
