"""The local host's addresses, and Kilo's choice of private and public IP among them.

Pure: the addresses themselves are read by the ``Host`` adapter (``kilo.dataplane.host``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kilo.model import Prefix, is_public

#: Interfaces whose addresses are never the node's own private or public IP.
SKIPPED_PREFIXES = ("lo", "kube-bridge", "cni", "docker", "flannel", "cilium", "tunl", "kube-ipvs")


@dataclass(frozen=True)
class HostAddress:
    ifname: str
    prefix: Prefix


def choose_ips(
    addresses: Iterable[HostAddress],
    internal_cidrs: Sequence[Prefix] = (),
    skip: Sequence[str] = (),
) -> tuple[HostAddress | None, HostAddress | None]:
    """(private, public): the first private address (within ``internal_cidrs`` if given) and the
    first public one, in a stable order (IPv4 first, then by address); with no public address the
    private one is also the public one, as in Kilo."""
    usable = [
        a
        for a in addresses
        if a.ifname not in skip
        and not a.ifname.startswith(SKIPPED_PREFIXES)
        and not (a.prefix.ip.is_loopback or a.prefix.ip.is_link_local or a.prefix.ip.is_multicast)
    ]
    usable.sort(key=lambda a: (a.prefix.version, int(a.prefix.ip)))
    private = None
    public = None
    for a in usable:
        if is_public(a.prefix.ip):
            if public is None:
                public = a
        elif private is None and (
            not internal_cidrs
            or any(
                a.prefix.version == c.version and a.prefix.ip in c.network for c in internal_cidrs
            )
        ):
            private = a
    return private, public or private
