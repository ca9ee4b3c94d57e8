"""The data the core computes with: endpoints, nodes, peers, granularities.

Addresses follow Kilo's conventions. An address with a prefix length ("10.0.0.1/24") keeps its
host bits, as Go's ``net.IPNet`` does after Kilo's ``normalizeIP``; it is an
``ipaddress.IPv4Interface``/``IPv6Interface`` here (``Prefix``), whose ``network`` is the CIDR.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field

from kilo.keys import Key, is_zero
from kilo.strict import IPAddress, Prefix, is_dns1123_subdomain, parse_ip, parse_port

__all__ = ["IPAddress", "Prefix", "is_dns1123_subdomain"]
UdpAddress = tuple[IPAddress, int]  # a resolved endpoint, as WireGuard devices take and report it

CHECK_IN_PERIOD_SECONDS = 30
DEFAULT_INTERFACE = "kilo0"
DEFAULT_PORT = 51820
DEFAULT_SUBNET: Prefix = ipaddress.ip_interface("10.4.0.0/16")
DEFAULT_CNI_PATH = "/etc/cni/net.d/10-kilo.conflist"
REGION_LABEL = "topology.kubernetes.io/region"


class Granularity(str, enum.Enum):
    """How finely the mesh is cut into WireGuard segments."""

    LOCATION = "location"
    FULL = "full"
    CROSS = "cross"
    AUTO = "auto"  # kgctl only: take it from the nodes' annotations

    def __str__(self) -> str:
        return self.value


@functools.lru_cache(maxsize=65536)
def host_prefix(ip: IPAddress) -> Prefix:
    """The one-address CIDR of ``ip`` (/32 or /128)."""
    if ip.version == 4:
        return ipaddress.IPv4Interface((int(ip), 32))
    return ipaddress.IPv6Interface((int(ip), 128))


def contains(prefix: Prefix, ip: IPAddress) -> bool:
    return ip.version == prefix.version and ip in prefix.network


def overlaps(a: Prefix, b: Prefix) -> bool:
    return a.version == b.version and a.network.overlaps(b.network)


def is_public(ip: IPAddress | None) -> bool:
    """Kilo's notion of public: not RFC 1918 for IPv4, not fd00::/8 for IPv6."""
    if ip is None:
        return False
    i = int(ip)
    if ip.version == 4:
        return not (i >> 24 == 10 or i >> 20 == 0xAC1 or i >> 16 == 0xC0A8)
    return i >> 112 != 0xFD00


@dataclass(frozen=True)
class Endpoint:
    """A WireGuard endpoint: a resolved IP and port, or a DNS name and port (or both)."""

    port: int
    ip: IPAddress | None = None
    dns: str | None = None
    #: a DNS endpoint as the annotation spelt it, when that is not ``dns:port`` (``[name]:port``,
    #: ``name:051820``): printed as given, as Kilo prints it; no part of its identity
    text: str | None = field(default=None, compare=False)

    def ready(self) -> bool:
        return (self.ip is not None and self.port > 0) or bool(self.dns)

    @functools.cached_property
    def public(self) -> bool:
        """Whether its IP is public (``is_public``); kept, as the endpoint never changes."""
        return is_public(self.ip)

    def __str__(self) -> str:
        """DNS first, as Kilo prints endpoints."""
        if self.dns:
            return self.text or f"{self.dns}:{self.port}"
        return "" if self.ip is None else format_udp((self.ip, self.port))


def format_udp(addr: UdpAddress) -> str:
    """``IP:port``, or ``[IPv6]:port``: the one way an endpoint's address is written."""
    ip, port = addr
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """Kilo's ``ParseEndpoint`` (raises ValueError): ``IP:port``, ``[IPv6]:port`` or
    ``dns-name:port`` (also ``[dns-name]:port``, as Go's ``SplitHostPort`` takes it), read
    strictly (``kilo.strict``); a DNS endpoint keeps its spelling."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        raise ValueError("not HOST:PORT")
    port = parse_port(port_s)
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets: [ADDRESS]:PORT")
    try:
        return Endpoint(port=port, ip=parse_ip(host))
    except ValueError:
        if not is_dns1123_subdomain(host):
            raise ValueError(f"{host!r} is neither an IP address nor a DNS name") from None
        plain = f"{host}:{port}"
        return Endpoint(port=port, dns=host, text=None if text == plain else text)


def endpoint_str(e: Endpoint | None) -> str:
    return "" if e is None else str(e)


@dataclass(frozen=True)
class Node:
    """A Kubernetes Node as Kilo reads it."""

    name: str
    endpoint: Endpoint | None = None
    key: Key | None = None  # WireGuard public key
    no_internal_ip: bool = False
    internal_ip: Prefix | None = None
    cni_compatibility_ip: Prefix | None = None
    last_seen: int = 0
    leader: bool = False
    location: str = ""
    persistent_keepalive: int = 0  # seconds
    subnet: Prefix | None = None  # the pod CIDR
    wireguard_ip: Prefix | None = None
    discovered_endpoints: dict[str, Endpoint] | None = None  # public key (base64) -> endpoint
    allowed_location_ips: tuple[Prefix, ...] = ()
    granularity: Granularity | None = None
    lease_liveness: bool = False  # its agent proves liveness by Leases, not last-seen
    created: str = ""  # metadata.creationTimestamp (RFC 3339, UTC): the older node's claim wins

    def ready(self, now: int) -> bool:
        """Kilo's readiness: endpoint, key and pod CIDR known, checked in recently (a node
        whose agent is in the native liveness mode needs no recent check-in)."""
        return self.complete and (
            self.lease_liveness or now - self.last_seen < 2 * CHECK_IN_PERIOD_SECONDS
        )

    def with_last_seen(self, last_seen: int) -> Node:
        """This node, checked in at ``last_seen``: what ``dataclasses.replace`` gives, without
        running ``__init__`` again, and with the answers already kept (none depends on the
        time). A check-in (33 a second at 1,000 nodes in Kilo's liveness) costs this."""
        new = object.__new__(Node)
        new.__dict__.update(self.__dict__)
        new.__dict__["last_seen"] = last_seen
        return new

    @functools.cached_property
    def complete(self) -> bool:
        """Readiness without the time: endpoint, key and pod CIDR known (kept: a node
        never changes)."""
        return (
            self.endpoint is not None
            and self.endpoint.ready()
            and not is_zero(self.key)
            and self.subnet is not None
        )

    @functools.cached_property
    def own_ips(self) -> tuple[Prefix, ...]:
        """What it adds to its segment's allowed IPs: its pod CIDR and its internal IP as a
        one-address CIDR (those it has), in that order."""
        out: list[Prefix] = []
        if self.subnet is not None:
            out.append(self.subnet)
        if self.internal_ip is not None:
            out.append(host_prefix(self.internal_ip.ip))
        return tuple(out)


@dataclass(frozen=True)
class Peer:
    """A WireGuard peer outside the cluster (the ``Peer`` custom resource)."""

    name: str
    public_key: Key | None
    allowed_ips: tuple[Prefix, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0  # seconds
    preshared_key: Key | None = None
    created: str = ""  # metadata.creationTimestamp (RFC 3339, UTC): the older Peer's claim wins

    def ready(self) -> bool:
        return bool(self.allowed_ips) and not is_zero(self.public_key)


@dataclass(frozen=True)
class Problem:
    """Why a value of an API object could not be read as given."""

    kind: str  # "Node" or "Peer"
    name: str
    field: str
    value: str
    reason: str

    def __str__(self) -> str:
        # the field may hold a key from the cluster (an annotation's, a discovered endpoint's)
        # and the reason quotes values: neither may add a line to a log or a terminal
        where = self.field if self.field.isprintable() else repr(self.field)[1:-1]
        reason = self.reason if self.reason.isprintable() else repr(self.reason)[1:-1]
        return f"{self.kind} {self.name!r}: {where}={self.value!r}: {reason}"


@dataclass
class Cluster:
    """What the backends deliver: the cluster's nodes and peers, and what could not be read."""

    nodes: list[Node] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
