"""Reading one field of a lab description: the checks ``spec.parse`` applies to each value,
raising ``SpecError`` with where and why."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address
IPv6Net = ipaddress.IPv6Network
IPv6Addr = ipaddress.IPv6Address
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class SpecError(ValueError):
    """The lab description is invalid; the message says where and why."""


def only_keys(raw: Mapping[str, Any], where: str, keys: set[str]) -> None:
    unknown = set(raw) - keys
    if unknown:
        raise SpecError(
            f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(keys))})"
        )


def as_list(v: Any, where: str) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise SpecError(f"{where}: a list")
    return list(v)


def as_name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not _NAME.match(v) or len(v) > 20:
        raise SpecError(
            f"{where}: {v!r} is not a name (lower-case letters, digits, '-'; at most 20 characters)"
        )
    return v


def _net(v: Any, where: str, kind: type[Any], wrong: str) -> Any:
    try:
        net = ipaddress.ip_network(str(v), strict=True)
    except ValueError as e:
        raise SpecError(f"{where}: {v!r}: {e}") from e
    if not isinstance(net, kind):
        raise SpecError(f"{where}: {v!r}: {wrong}")
    return net


def _addr(v: Any, where: str, kind: type[Any], wrong: str) -> Any:
    try:
        ip = ipaddress.ip_address(str(v))
    except ValueError as e:
        raise SpecError(f"{where}: {v!r}: {e}") from e
    if not isinstance(ip, kind):
        raise SpecError(f"{where}: {v!r}: {wrong}")
    return ip


def as_net(v: Any, where: str) -> IPv4Net:
    net: IPv4Net = _net(v, where, IPv4Net, "the lab is IPv4 only")
    return net


def as_addr(v: Any, where: str) -> IPv4Addr:
    ip: IPv4Addr = _addr(v, where, IPv4Addr, "the lab is IPv4 only")
    return ip


def as_net6(v: Any, where: str) -> IPv6Net:
    """An IPv6 network (the lab's IPv6 underlays, pod and service CIDRs of ``stack: ipv6|dual``)."""
    net: IPv6Net = _net(v, where, IPv6Net, "an IPv6 network is needed here")
    return net


def as_addr6(v: Any, where: str) -> IPv6Addr:
    ip: IPv6Addr = _addr(v, where, IPv6Addr, "an IPv6 address is needed here")
    return ip


def take(it: Iterator[Any], message: str) -> Any:
    v = next(it, None)
    if v is None:
        raise SpecError(message)
    return v


def as_strmap(v: Any, where: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise SpecError(f"{where}: labels/annotations: a mapping")
    return {str(k): str(x) for k, x in v.items()}
