"""The ``Host`` port on the local machine: its addresses, its underlay's MTU, the IPIP device."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence

from pyroute2.iproute import IPRoute

from kilo.dataplane import ipip
from kilo.hostinfo import HostAddress
from kilo.model import IPAddress, Prefix

log = logging.getLogger("kilo.agent")

MAIN_TABLE = 254


def underlay_mtu(netns: str | None = None) -> int | None:
    """The MTU of the default route's interface, if there is one: the IPv4 default route's,
    else the IPv6 one's (an IPv6-only host), as Kilo takes the first default route of either
    family."""
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family, table=MAIN_TABLE):
                if r["dst_len"] == 0 and r.get_attr("RTA_OIF"):
                    links = ipr.get_links(r.get_attr("RTA_OIF"))
                    if links:
                        return int(links[0].get_attr("IFLA_MTU"))
    return None


def host_addresses(netns: str | None = None) -> list[HostAddress]:
    """The global and private addresses of the network namespace, with their interfaces."""
    out: list[HostAddress] = []
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr is None:
                continue
            prefix = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
            out.append(HostAddress(names.get(msg["index"], "?"), prefix))
    return out


class LocalHost:
    def addresses(self) -> list[HostAddress]:
        return host_addresses()

    def underlay_mtu(self) -> int | None:
        return underlay_mtu()

    def ensure_ipip(self, pod_cidr: Prefix | None) -> list[str]:
        return ipip.ensure(pod_cidr)

    def nudge(self, addresses: Sequence[IPAddress]) -> None:
        """An empty UDP datagram to the discard port of each address (nothing needs to answer:
        sending it is what makes WireGuard start the handshake)."""
        for a in addresses:
            family = socket.AF_INET6 if a.version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                try:
                    s.sendto(b"", (str(a), 9))
                except OSError as e:  # no route yet, say: the peer's own packets will do
                    log.debug("nudging %s: %s", a, e)
