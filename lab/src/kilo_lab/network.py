"""The lab's network: namespaces, bridges and veth pairs, built from a spec (see ``layout``).

``Network`` records every namespace in the state file before it is made (a half-made one is
still removed by teardown) and hands out the switch ends of the veth pairs (``kpy-v<n>``).
"""

from __future__ import annotations

import ipaddress

from kilo_lab import nat, netns, procs
from kilo_lab.layout import (
    BRIDGE_INET,
    IF_INET,
    IF_LAN,
    IF_MGMT,
    IF_NAT_INSIDE,
    kg_socket_dir,
    lan_bridge,
    mgmt_bridge,
    nat_bridge,
    nat_host,
    ns_name,
)
from kilo_lab.spec import ClusterSpec, LabSpec, NatSpec, NodeSpec, router_ip
from kilo_lab.state import Store


class Network:
    """The namespaces and links of one lab."""

    def __init__(self, lab: str, store: Store) -> None:
        self.lab = lab
        self.store = store
        self._veths = 0

    def ns(self, host: str) -> str:
        return ns_name(self.lab, host)

    def new_ns(self, host: str, forwarding: bool = False) -> str:
        """A namespace for ``host`` (recorded first), ARP as separate machines do it."""
        name = self.ns(host)
        self.store.add_namespace(name)
        netns.create(name, forwarding=forwarding, strict_arp=True)
        return name

    def remove_ns(self, name: str) -> None:
        """Stop what runs in a namespace and delete it."""
        procs.stop_all_in(name)
        netns.delete(name)
        self.store.remove_namespace(name)

    def attach(self, host_ns: str, ifname: str, bridge: str, *cidrs: str) -> None:
        """A veth pair from ``host_ns`` (``ifname``, with ``cidrs``) to ``bridge`` on the switch."""
        self._veths += 1
        netns.add_veth(host_ns, ifname, self.ns("sw"), f"kpy-v{self._veths}", master_b=bridge)
        for cidr in cidrs:
            netns.add_address(host_ns, ifname, cidr)

    def build(self, spec: LabSpec) -> None:
        """Switch and bridges, the admin namespace, control-plane namespaces, nodes and peers."""
        sw = self.new_ns("sw")
        netns.add_bridge(sw, BRIDGE_INET)
        for c in spec.clusters:
            netns.add_bridge(sw, mgmt_bridge(c.index))
            for j, _loc in enumerate(c.locations):
                netns.add_bridge(sw, lan_bridge(c.index, j))
        for router in spec.nats:
            netns.add_bridge(sw, nat_bridge(router.index))
        admin = self.new_ns("admin")
        for c in spec.clusters:
            plen = c.mgmt_cidr.prefixlen
            self.attach(admin, mgmt_bridge(c.index), mgmt_bridge(c.index), f"{c.admin_ip}/{plen}")
            cp = self.new_ns(f"{c.name}-cp")
            self.attach(cp, IF_MGMT, mgmt_bridge(c.index), f"{c.cp_ip}/{plen}")
            for j, loc in enumerate(c.locations):
                for n in loc.nodes:
                    self.add_node(spec, c, n, j)
        for router in spec.nats:
            self.add_nat(spec, router)
        for p in spec.peers:
            pns = self.new_ns(p.name)
            if p.nat is not None:
                gw = spec.nat(p.nat)
                cidr = f"{p.inside_ip}/{gw.cidr.prefixlen}"
                self.attach(pns, IF_LAN, nat_bridge(gw.index), cidr)
                netns.add_route(pns, "default", IF_LAN, via=str(gw.inside_ip))
                continue
            cidrs = [f"{p.public_ip}/{_plen(spec, p.public_ip)}"]
            if p.public_ip6 is not None:
                cidrs.append(f"{p.public_ip6}/{_plen(spec, p.public_ip6)}")
            self.attach(pns, IF_INET, BRIDGE_INET, *cidrs)
            netns.add_route(pns, "default", IF_INET)
            if p.public_ip6 is not None:
                netns.add_route(pns, "default", IF_INET, ipv6=True)

    def add_nat(self, spec: LabSpec, n: NatSpec) -> str:
        """A NAT router: outside on the internet, inside on its own network and on the LANs
        of its nodes' locations; forwarding on, masquerading out of the outside leg."""
        ns = self.new_ns(nat_host(n.name), forwarding=True)
        self.attach(ns, IF_INET, BRIDGE_INET, f"{n.public_ip}/{_plen(spec, n.public_ip)}")
        netns.add_route(ns, "default", IF_INET)
        self.attach(ns, IF_NAT_INSIDE, nat_bridge(n.index), f"{n.inside_ip}/{n.cidr.prefixlen}")
        for c, j, loc in spec.nat_lans(n.name):
            lan = lan_bridge(c.index, j)
            self.attach(ns, lan, lan, f"{router_ip(loc.cidr)}/{loc.cidr.prefixlen}")
        nat.install(ns)
        return ns

    def add_node(self, spec: LabSpec, c: ClusterSpec, n: NodeSpec, location_index: int) -> str:
        """A node's namespace (forwarding on) on its LAN, management and (public nodes) the
        internet, with a default route on-link through the internet or the LAN (behind a NAT:
        via the NAT router on the LAN), per family of the cluster's stack (the management
        network is IPv4 in every stack)."""
        ns = self.new_ns(n.name, forwarding=True)
        loc = c.locations[location_index]
        lan = [f"{ip}/{net.prefixlen}" for ip, net in zip(n.internal_ips, loc.cidrs, strict=True)]
        self.attach(ns, IF_LAN, lan_bridge(c.index, location_index), *lan)
        self.attach(ns, IF_MGMT, mgmt_bridge(c.index), f"{n.mgmt_ip}/{c.mgmt_cidr.prefixlen}")
        gateway = spec.nat_gateway(n)
        if n.public_ips:
            public = [f"{ip}/{_plen(spec, ip)}" for ip in n.public_ips]
            self.attach(ns, IF_INET, BRIDGE_INET, *public)
        for ip in n.internal_ips:
            ipv6 = ip.version == 6
            if n.public_ips:
                netns.add_route(ns, "default", IF_INET, ipv6=ipv6)
            elif gateway is not None:
                netns.add_route(ns, "default", IF_LAN, via=str(gateway))
            else:
                netns.add_route(ns, "default", IF_LAN, ipv6=ipv6)
        socket_dir = kg_socket_dir(ns)
        if socket_dir is not None:
            self.store.append("wg_dirs", socket_dir)
        return ns

    def forget_neighbours(self, spec: LabSpec, node: NodeSpec) -> None:
        """A joining node may reuse the address of one that left: drop the other hosts' cached
        link-layer entries for it, as the gratuitous ARP of a booting machine would."""
        for host in spec.hosts():
            if host == node.name:
                continue
            for ip in (*node.internal_ips, *node.public_ips):
                if ip is not None:
                    netns.flush_neighbour(self.ns(host), str(ip))


def _plen(spec: LabSpec, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The prefix length of the internet (or internet6) subnet ``ip`` is in."""
    nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        spec.internet6 if ip.version == 6 else spec.internet
    )
    return next(net.prefixlen for net in nets if ip in net)
