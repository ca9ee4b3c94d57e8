"""The ``Host`` port on the local machine: its addresses, its underlay's MTU, the IPIP device."""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

from kilo.dataplane import ipip
from kilo.hostinfo import HostAddress
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
