"""The IPIP tunnel device used to encapsulate traffic inside a location (``--encapsulate``).

Kilo's IPIP encapsulator: the kernel's fallback device ``tunl0`` (created when the ``ipip``
module loads), up, with the first address of the node's pod CIDR. This kernel adapter cannot be
exercised on machines without IPIP (such as our CI); there ``ensure`` raises a clear error and
the agent runs with ``--encapsulate never``.
"""

from __future__ import annotations

import ipaddress

from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kilo.model import Prefix

TUNNEL = "tunl0"


class EncapsulationUnavailable(RuntimeError):
    pass


def ensure(pod_cidr: Prefix | None) -> list[str]:
    """Make ``tunl0`` exist, be up and carry the pod CIDR's first address; return the changes."""
    changes: list[str] = []
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=TUNNEL)
        if not idx:
            try:
                ipr.link("add", ifname=TUNNEL, kind="ipip")
            except NetlinkError as e:
                raise EncapsulationUnavailable(
                    f"cannot create the IPIP device {TUNNEL} ({e}); "
                    "this kernel has no IPIP support: run with --encapsulate never"
                ) from None
            idx = ipr.link_lookup(ifname=TUNNEL)
            changes.append(f"create {TUNNEL}")
        index = idx[0]
        if pod_cidr is not None:
            first = ipaddress.ip_address(int(pod_cidr.network.network_address) + 1)
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
            if str(first) not in have:
                ipr.addr("add", index=index, address=str(first), prefixlen=first.max_prefixlen)
                changes.append(f"add address {first} to {TUNNEL}")
        link = ipr.get_links(index)[0]
        if not link["flags"] & 1:
            ipr.link("set", index=index, state="up")
            changes.append(f"set {TUNNEL} up")
    return changes
