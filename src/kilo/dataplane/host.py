"""The ``Host`` port on the local machine: its addresses, its underlay's MTU, the IPIP device."""

from __future__ import annotations

import socket

from pyroute2 import IPRoute

from kilo.dataplane import ipip
from kilo.hostinfo import HostAddress, host_addresses
from kilo.model import Prefix

MAIN_TABLE = 254


def underlay_mtu(netns: str | None = None) -> int | None:
    """The MTU of the IPv4 default route's interface, if there is one."""
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        for r in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            if r["dst_len"] == 0 and r.get_attr("RTA_OIF"):
                links = ipr.get_links(r.get_attr("RTA_OIF"))
                if links:
                    return int(links[0].get_attr("IFLA_MTU"))
    return None


class LocalHost:
    def addresses(self) -> list[HostAddress]:
        return host_addresses()

    def underlay_mtu(self) -> int | None:
        return underlay_mtu()

    def ensure_ipip(self, pod_cidr: Prefix | None) -> list[str]:
        return ipip.ensure(pod_cidr)
