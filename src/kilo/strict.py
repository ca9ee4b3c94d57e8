"""Values from the cluster read strictly (pure): addresses, prefixes, integers and JSON as Go's
``net``, ``strconv`` and ``encoding/json`` read them, and nothing more.

Python's parsers are generous where Go's are not, and some of that generosity carries syntax:
``ipaddress`` keeps an IPv6 zone ID (``fe80::1%anything``, newlines included) and takes netmask
notation, ``int()`` takes spaces, underscores and non-ASCII digits, ``json`` takes ``NaN`` and
recurses without bound. Every reader of cluster objects goes through these functions; each raises
``ValueError`` with the reason, never anything else.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_V4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\Z")
_V4_CIDR = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})\Z")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*\Z")
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f:.]+\Z")
_PREFIX_LENGTH = re.compile(r"[0-9]{1,10}\Z")
_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
_GO_UINT = re.compile(r"[0-9]+\Z")

#: The largest JSON text an annotation may hold for us to parse it (Kubernetes caps all of an
#: object's annotations at 256 KiB together).
MAX_JSON_BYTES = 64 * 1024
#: The deepest nesting a JSON value may have.
MAX_JSON_DEPTH = 8


def _v4_int(parts: tuple[str, ...]) -> int | None:
    """Four decimal octets as Go takes them (no leading zero, at most 255)."""
    out = 0
    for o in parts:
        if (len(o) > 1 and o[0] == "0") or int(o) > 255:
            return None
        out = out << 8 | int(o)
    return out


def fast_v4_address(text: str) -> ipaddress.IPv4Address | None:
    """The common dotted IPv4 address without ``ipaddress``'s slow parser; None: not one."""
    m = _V4.match(text)
    i = None if m is None else _v4_int(m.groups())
    return None if i is None else ipaddress.IPv4Address(i)


def fast_v4_cidr(text: str) -> tuple[int, int] | None:
    """(address, prefix length) of the common ``a.b.c.d/n``; None: not one."""
    m = _V4_CIDR.match(text)
    if m is None:
        return None
    *octets, plen_s = m.groups()
    plen = int(plen_s)
    if (len(plen_s) > 1 and plen_s[0] == "0") or plen > 32:
        return None
    i = _v4_int(tuple(octets))
    return None if i is None else (i, plen)


def is_dns1123_subdomain(s: str) -> bool:
    """A DNS-1123 subdomain (lower-case labels of ``[a-z0-9-]``, dots between, 253 at most),
    matched in full: a trailing newline is not part of a name."""
    return len(s) <= 253 and _DNS1123_SUBDOMAIN.match(s) is not None


def parse_ip(text: str) -> IPAddress:
    """An IP address as Go's ``net.ParseIP`` takes it: no zone, no spaces; an IPv4-mapped IPv6
    address is the IPv4 address (Go's ``To4``)."""
    fast = fast_v4_address(text)
    if fast is not None:
        return fast
    if not _ADDRESS_CHARS.match(text):
        raise ValueError(f"{text!r} is not an IP address")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _cidr(text: str) -> tuple[IPAddress, int, int | None]:
    """(address, prefix length, the 128-bit value of an IPv4-mapped IPv6 address or None) of
    ``ADDRESS/LENGTH`` as Go's ``net.ParseCIDR`` takes it: the length in decimal (no netmask
    notation) up to the address's own width, 128 for an IPv4-mapped IPv6 address."""
    addr, sep, plen_s = text.partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not a CIDR (no prefix length)")
    if not _PREFIX_LENGTH.match(plen_s):
        raise ValueError(f"{text!r} is not a CIDR (the prefix length must be a decimal number)")
    plen = int(plen_s)
    ip = parse_ip(addr)
    mapped = int(ipaddress.IPv6Address(addr)) if ip.version == 4 and ":" in addr else None
    width = 128 if mapped is not None else ip.max_prefixlen
    if plen > width:
        raise ValueError(f"{text!r}: prefix length {plen} is over {width}")
    return ip, plen, mapped


def parse_cidr(text: str) -> Prefix:
    """``ADDRESS/LENGTH`` keeping its host bits (Kilo's ``normalizeIP``): the length in decimal
    (no netmask notation), the address as ``parse_ip`` takes it. An IPv4-mapped IPv6 address is
    the IPv4 address, its length the last 32 bits of the 128-bit mask, as Go prints it
    (``::ffff:10.0.0.1/120`` is ``10.0.0.1/24``, and ``/96`` or less is ``/0``)."""
    fast = fast_v4_cidr(text)
    if fast is not None:
        return ipaddress.IPv4Interface(fast)
    ip, plen, mapped = _cidr(text)
    if mapped is not None:
        plen = max(plen - 96, 0)
    if ip.version == 4:
        return ipaddress.IPv4Interface((int(ip), plen))
    return ipaddress.IPv6Interface((int(ip), plen))


def parse_network(text: str) -> Prefix:
    """A CIDR with its host bits cleared, as Go's ``net.ParseCIDR`` returns the network: an
    IPv4-mapped address masked to 96 bits or more is still one (an IPv4 network), to fewer it
    is an IPv6 network."""
    fast = fast_v4_cidr(text)
    if fast is not None:
        v4, v4_plen = fast
        return ipaddress.IPv4Interface((v4 >> (32 - v4_plen) << (32 - v4_plen), v4_plen))
    _, plen, mapped = _cidr(text)
    if mapped is not None and plen < 96:
        return ipaddress.IPv6Interface((mapped >> (128 - plen) << (128 - plen), plen))
    p = parse_cidr(text)
    net = p.network
    if p.version == 4:
        return ipaddress.IPv4Interface((int(net.network_address), net.prefixlen))
    return ipaddress.IPv6Interface((int(net.network_address), net.prefixlen))


def parse_int(text: str, lo: int, hi: int, what: str = "a number") -> int:
    """A decimal integer as Go's ``strconv.ParseInt(s, 10, 64)`` reads it (an optional sign, ASCII
    digits, nothing else), within ``lo``..``hi``."""
    if not _GO_INT.match(text):
        raise ValueError(f"{text!r} is not {what} (decimal digits only)")
    if len(text) > 20:
        raise ValueError(f"{text!r} is out of range {lo}-{hi}")
    n = int(text)
    if not lo <= n <= hi:
        raise ValueError(f"{n} is out of range {lo}-{hi}")
    return n


def parse_port(text: str) -> int:
    """A UDP port as Kilo reads one (``strconv.ParseUint``: ASCII digits, leading zeros
    allowed; then 1-65535)."""
    digits = text.lstrip("0") or "0"
    if not _GO_UINT.match(text) or len(digits) > 10:
        raise ValueError(f"port {text!r} is not a decimal number up to 65535")
    port = int(digits)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return port


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    f = float(text)
    if f in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is not a finite number")
    return f


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings
    skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def load_json(text: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON value of bounded size and depth with finite numbers only."""
    if len(text) > max_bytes:
        raise ValueError(f"{len(text)} characters of JSON, over the limit of {max_bytes}")
    if _depth(text) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth}")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError("JSON nested too deeply") from None
