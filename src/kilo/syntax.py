"""Values as the writers put them into text (pure): WireGuard's UAPI and INI, Graphviz DOT and
annotations. A value that could carry syntax — a control character, an IPv6 zone, a number
out of its field's range, a name that is no DNS name — is refused with ``UnsafeValue``; DOT
strings are escaped instead, as names and locations are free text there.

The readers (``kilo.strict``, ``kilo.translate``) already refuse such values; these checks are
the second line, so that no path from the cluster to a text a parser reads can add a line, a key
or a statement.
"""

from __future__ import annotations

import re

from kilo.model import Endpoint, IPAddress, Prefix, UdpAddress, format_udp
from kilo.strict import is_dns1123_subdomain
from kilo.wgstate import PeerUpdate

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")

MAX_PORT = 65535
MAX_KEEPALIVE = 65535
MAX_FWMARK = 2**32 - 1


class UnsafeValue(ValueError):
    """A value a writer refuses: written as it is, it could change the text's structure."""


def text(value: str, what: str) -> str:
    """Free text without control characters (line breaks included)."""
    if not isinstance(value, str) or _CONTROL.search(value):
        raise UnsafeValue(f"{what} {value!r} holds control characters")
    return value


def address(ip: IPAddress, what: str = "address") -> str:
    """An IP address, refused with an IPv6 zone (``%…``)."""
    shown = str(ip)
    if "%" in shown or _CONTROL.search(shown):
        raise UnsafeValue(f"{what} {shown!r} has a zone")
    return shown


def prefix(p: Prefix, what: str = "prefix") -> str:
    """A CIDR (host bits kept, as given), refused with an IPv6 zone."""
    shown = str(p)
    if "%" in shown or _CONTROL.search(shown):
        raise UnsafeValue(f"{what} {shown!r} has a zone")
    return shown


def number(n: int, lo: int, hi: int, what: str) -> int:
    if type(n) is not int or not lo <= n <= hi:
        raise UnsafeValue(f"{what} {n!r} is out of range {lo}-{hi}")
    return n


def udp(addr: UdpAddress, what: str = "endpoint") -> str:
    """``IP:port`` or ``[IPv6]:port``."""
    ip, port = addr
    address(ip, what)
    number(port, 1, MAX_PORT, f"{what} port")
    return format_udp(addr)


def endpoint(e: Endpoint) -> str:
    """An endpoint as the INI text holds it: a DNS name or an address, and a port."""
    number(e.port, 1, MAX_PORT, "endpoint port")
    if e.dns:
        if not is_dns1123_subdomain(e.dns):
            raise UnsafeValue(f"endpoint name {e.dns!r} is not a DNS name")
    elif e.ip is not None:
        address(e.ip, "endpoint")
    return str(e)


def peer_update(p: PeerUpdate) -> None:
    """Every value of one peer's part of a WireGuard update (``UnsafeValue`` otherwise)."""
    if p.endpoint is not None:
        udp(p.endpoint)
    if p.persistent_keepalive is not None:
        number(p.persistent_keepalive, 0, MAX_KEEPALIVE, "persistent keepalive")
    for a in p.allowed_ips:
        prefix(a, "allowed IP")


def dot_string(value: str) -> str:
    """The inside of a double-quoted DOT string: backslashes and quotes escaped, control
    characters as spaces (a DOT string is free text; only its quoting is syntax)."""
    return _CONTROL.sub(" ", value.replace("\\", "\\\\").replace('"', '\\"'))
