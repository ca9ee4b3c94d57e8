"""The lab's declarative description: clusters -> locations -> nodes, peers and CIDRs.

A YAML (or dict) like::

    name: demo                         # lab name: namespaces are kpy-<name>-...
    internet: [198.51.100.0/24, 203.0.113.0/24]   # subnets of the shared "internet" bridge
    clusters:
      - name: c1
        podCIDR: 10.2.0.0/16           # node i gets the i-th /24 (nodePrefix) as spec.podCIDR
        serviceCIDR: 10.3.0.0/16
        subnet: 10.4.0.0/16            # kg --subnet (WireGuard IPs)
        granularity: location          # kg --mesh-granularity
        liveness: compat               # kg --liveness (native: Leases in kube-system)
        flannel: false                 # flanneld on every node, kg in flannel compatibility
        locations:
          - name: aws                  # topology.kubernetes.io/region=aws
            cidr: 10.10.1.0/24         # the location's LAN (kg --internal-cidr)
            nodes:
              - {name: a1, public: true, pods: 1}
              - {name: a2}
    peers:
      - {name: laptop}                 # a namespace with only an internet address
      - {name: cafe-laptop, nat: cafe} # behind a NAT: on the NAT's inside network
    nats:                              # optional settings of the NATs nodes and peers name
      - {name: cafe, publicIP: 198.51.100.200, cidr: 10.250.0.0/24}

A node or peer with ``nat: NAME`` sits behind NAT NAME: a router namespace with an outside
address on the internet, legs on the LANs of its nodes' locations (at each LAN's last host
address) and on an inside network of its own (for its peers), masquerading what leaves
through the outside leg. NAT i's inside network defaults to 10.250.i.0/24 (the router at .1,
its peers from .2), its outside address to the next free one of the first internet subnet.

is turned by ``load``/``parse`` into frozen dataclasses in which every address is decided
(``LabSpec.resolve``): management, LAN, public, pod CIDRs. Defaults: cluster k (0-based) uses
management 172.31.(254-k).0/24, LAN 10.(10(k+1)).(j+1).0/24 for location j, pod CIDR
10.(2+10k).0.0/16, services 10.(3+10k).0.0/16, WireGuard 10.(4+10k).0.0/16; public node
addresses come from the internet's first subnet (198.51.100.1, .2, ...) and peers' from the
second (203.0.113.1, ...). 192.0.2.0/24 is refused anywhere.

A cluster's ``stack`` (``ipv4``, the default; ``ipv6``; ``dual``) decides its families: the
underlay (LAN and internet addresses of its nodes, their Node InternalIPs), the pod CIDRs (Node
``spec.podCIDRs``, host-local ranges), the service CIDRs and kg's ``--subnet``. IPv6 defaults for
cluster k: LAN of location j fd00:<10(k+1)>:<j+1>::/64 (``cidr6``), pods fd00:<2+10k>::/48 in
/64s (``podCIDR6``, ``nodePrefix6``), services fd00:<3+10k>::/112 (``serviceCIDR6``), WireGuard
fd00:<4+10k>::/64 (``subnet6``, kg's ``--subnet`` in an ``ipv6`` cluster); public IPv6 node
addresses from the lab's ``internet6`` (2001:db8:100::/64, peers' from 2001:db8:113::/64).
``dual`` puts the IPv4 ones first (Node spec.podCIDR is the IPv4 CIDR); ``ipv6`` uses only the
IPv6 ones (the IPv4 fields are still decided but configured nowhere). The management network
stays IPv4 in every stack: it is the lab's own path to the API server, not the cluster's.
"""

from __future__ import annotations

import ipaddress
import pathlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kilo_lab import fields
from kilo_lab.fields import SpecError as SpecError

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address
IPv6Net = ipaddress.IPv6Network
IPv6Addr = ipaddress.IPv6Address
IPNet = IPv4Net | IPv6Net
IPAddr = IPv4Addr | IPv6Addr

FORBIDDEN = ipaddress.ip_network("192.0.2.0/24")
DEFAULT_INTERNET = ("198.51.100.0/24", "203.0.113.0/24")
GRANULARITIES = ("location", "full", "cross")
LIVENESS_MODES = ("compat", "native")
DEFAULT_INTERNET6 = ("2001:db8:100::/64", "2001:db8:113::/64")
STACKS = ("ipv4", "ipv6", "dual")


def by_stack(stack: str, v4: IPAddr | IPNet | None, v6: IPAddr | IPNet | None) -> tuple[Any, ...]:
    """The values a stack uses, its primary family first: ipv4 (v4), dual (v4, v6), ipv6 (v6)."""
    chosen = {"ipv4": (v4,), "dual": (v4, v6), "ipv6": (v6,)}[stack]
    return tuple(v for v in chosen if v is not None)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cluster: str
    location: str
    index: int  # position in the cluster (0-based): picks the pod CIDR
    lan_ip: IPv4Addr
    mgmt_ip: IPv4Addr
    pod_cidr: IPv4Net
    public_ip: IPv4Addr | None = None
    pods: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    agent: bool = True  # run kg on this node
    nat: str | None = None  # behind this NAT: default route via its router on the LAN
    stack: str = "ipv4"  # the cluster's: which of the addresses below are configured
    lan_ip6: IPv6Addr | None = None
    public_ip6: IPv6Addr | None = None
    pod_cidr6: IPv6Net | None = None

    @property
    def public(self) -> bool:
        return bool(self.public_ips)

    @property
    def internal_ips(self) -> tuple[IPAddr, ...]:
        """Its LAN addresses in the cluster's stack (the Node's InternalIPs), primary first."""
        return by_stack(self.stack, self.lan_ip, self.lan_ip6)

    @property
    def public_ips(self) -> tuple[IPAddr, ...]:
        return by_stack(self.stack, self.public_ip, self.public_ip6)

    @property
    def pod_cidrs(self) -> tuple[IPNet, ...]:
        """Node spec.podCIDRs: spec.podCIDR (the primary family's) first."""
        return by_stack(self.stack, self.pod_cidr, self.pod_cidr6)


@dataclass(frozen=True)
class LocationSpec:
    name: str
    cidr: IPv4Net
    nodes: tuple[NodeSpec, ...]
    cidr6: IPv6Net | None = None
    stack: str = "ipv4"

    @property
    def cidrs(self) -> tuple[IPNet, ...]:
        """The LAN's networks in the cluster's stack (kg --internal-cidr)."""
        return by_stack(self.stack, self.cidr, self.cidr6)


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    index: int
    mgmt_cidr: IPv4Net
    pod_cidr: IPv4Net
    service_cidr: IPv4Net
    subnet: IPv4Net
    granularity: str
    locations: tuple[LocationSpec, ...]
    node_prefix: int = 24
    agent_args: tuple[str, ...] = ()
    liveness: str = "compat"  # kg --liveness (native: leader Leases in kube-system, probes)
    flannel: bool = False  # flanneld on every node, kg --compatibility=flannel (kilo_lab.flannel)
    stack: str = "ipv4"  # ipv4 | ipv6 | dual (see the module's description)
    pod_cidr6: IPv6Net | None = None
    service_cidr6: IPv6Net | None = None
    subnet6: IPv6Net | None = None
    node_prefix6: int = 64

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(n for loc in self.locations for n in loc.nodes)

    @property
    def pod_cidrs(self) -> tuple[IPNet, ...]:
        return by_stack(self.stack, self.pod_cidr, self.pod_cidr6)

    @property
    def service_cidrs(self) -> tuple[IPNet, ...]:
        """kube-apiserver's --service-cluster-ip-range (comma-separated), kg's --service-cidr."""
        return by_stack(self.stack, self.service_cidr, self.service_cidr6)

    @property
    def kg_subnet(self) -> IPNet:
        """kg's --subnet: the IPv6 one in an ipv6 cluster (its underlay carries no IPv4)."""
        return self.subnet6 if self.stack == "ipv6" and self.subnet6 is not None else self.subnet

    @property
    def cp_ip(self) -> IPv4Addr:
        """The API server's address on the management bridge."""
        return self.mgmt_cidr.network_address + 1

    @property
    def admin_ip(self) -> IPv4Addr:
        """The admin namespace's address on this cluster's management bridge."""
        return self.mgmt_cidr.broadcast_address - 1


@dataclass(frozen=True)
class PeerSpec:
    name: str
    public_ip: IPv4Addr  # behind a NAT: the NAT's outside address (what the internet sees)
    nat: str | None = None  # behind this NAT: on its inside network, at ``inside_ip``
    inside_ip: IPv4Addr | None = None
    public_ip6: IPv6Addr | None = None  # ipv6: true (or publicIP6): an IPv6 internet address too


@dataclass(frozen=True)
class NatSpec:
    """A NAT router: outside on the internet at ``public_ip``, inside on ``cidr`` (its own
    network, for peers behind it; the router at its first address) and on the LANs of the
    locations whose nodes sit behind it (at each LAN's ``router_ip``)."""

    name: str
    index: int
    public_ip: IPv4Addr
    cidr: IPv4Net

    @property
    def inside_ip(self) -> IPv4Addr:
        """The router's address on its own inside network."""
        return self.cidr.network_address + 1


def router_ip(lan: IPv4Net) -> IPv4Addr:
    """A NAT router's address on a LAN it serves: the LAN's last host address."""
    return lan.broadcast_address - 1


@dataclass(frozen=True)
class LabSpec:
    name: str
    internet: tuple[IPv4Net, ...]
    clusters: tuple[ClusterSpec, ...]
    peers: tuple[PeerSpec, ...] = ()
    agent: bool = True  # run kg on the nodes (False: a static lab, no mesh)
    kube_proxy: bool = False
    nats: tuple[NatSpec, ...] = ()
    internet6: tuple[IPv6Net, ...] = tuple(ipaddress.IPv6Network(n) for n in DEFAULT_INTERNET6)

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(n for c in self.clusters for n in c.nodes)

    def cluster(self, name: str) -> ClusterSpec:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(f"no cluster {name!r} in lab {self.name!r}")

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in lab {self.name!r}")

    def nat(self, name: str) -> NatSpec:
        for n in self.nats:
            if n.name == name:
                return n
        raise KeyError(f"no NAT {name!r} in lab {self.name!r}")

    def nat_lans(self, name: str) -> list[tuple[ClusterSpec, int, LocationSpec]]:
        """(cluster, location index, location) of every LAN with a node behind NAT ``name``."""
        return [
            (c, j, loc)
            for c in self.clusters
            for j, loc in enumerate(c.locations)
            if any(n.nat == name for n in loc.nodes)
        ]

    def nat_gateway(self, node: NodeSpec) -> IPv4Addr | None:
        """The router address a node behind a NAT routes through (None: not behind one)."""
        if node.nat is None:
            return None
        loc = next(loc for loc in self.cluster(node.cluster).locations if loc.name == node.location)
        return router_ip(loc.cidr)

    def hosts(self) -> Iterator[str]:
        """Every host name: nodes, then peers."""
        yield from (n.name for n in self.nodes)
        yield from (p.name for p in self.peers)


# --- parsing ------------------------------------------------------------------------------


def two_clusters(name: str, c1_locations: list[dict[str, Any]]) -> dict[str, Any]:
    """A lab of two clusters with CIDRs of their own (the demo's): c1 with ``c1_locations``
    (each ``{"name", "cidr", "nodes"}``), c2 with location onprem (onprem-1 public, onprem-2)."""
    return {
        "name": name,
        "clusters": [
            {"name": "c1", "podCIDR": "10.2.0.0/16", "serviceCIDR": "10.3.0.0/16",
             "subnet": "10.4.0.0/16", "granularity": "location", "locations": c1_locations},
            {"name": "c2", "podCIDR": "10.12.0.0/16", "serviceCIDR": "10.13.0.0/16",
             "subnet": "10.14.0.0/16", "granularity": "location",
             "locations": [{"name": "onprem", "cidr": "10.20.1.0/24",
                            "nodes": [{"name": "onprem-1", "public": True}, "onprem-2"]}]},
        ],
    }  # fmt: skip


def load(path: str | pathlib.Path) -> LabSpec:
    """Read and validate a lab description from a YAML file."""
    try:
        data = yaml.safe_load(pathlib.Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: {e}") from e
    return parse(data)


def load_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    """A lab description file's data, not yet validated (``parse`` does that)."""
    try:
        data = yaml.safe_load(pathlib.Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: {e}") from e
    if not isinstance(data, dict):
        raise SpecError(f"{path}: not a lab description (a mapping)")
    return data


def parse(data: Any) -> LabSpec:
    """Validate a lab description (the YAML's data) and decide every address."""
    if not isinstance(data, Mapping):
        raise SpecError("a lab description is a mapping with name, clusters, peers")
    fields.only_keys(
        data,
        "lab",
        {"name", "internet", "internet6", "clusters", "peers", "agent", "kubeProxy", "nats"},
    )
    name = fields.as_name(data.get("name"), "lab name")
    if len(name) > 12:
        raise SpecError(f"lab name {name!r}: at most 12 characters")
    internet = tuple(
        fields.as_net(c, "internet")
        for c in fields.as_list(data.get("internet", DEFAULT_INTERNET), "internet")
    )
    if not internet:
        raise SpecError("internet: at least one subnet")
    internet6 = tuple(
        fields.as_net6(c, "internet6")
        for c in fields.as_list(data.get("internet6", DEFAULT_INTERNET6), "internet6")
    )
    if not internet6:
        raise SpecError("internet6: at least one subnet")
    clusters_raw = fields.as_list(data.get("clusters"), "clusters")
    if not clusters_raw:
        raise SpecError("clusters: at least one cluster")
    public_pool = internet[0].hosts()  # shared by the clusters: .1, .2, ... in order
    public_pool6 = internet6[0].hosts()
    clusters = tuple(_cluster(c, k, public_pool, public_pool6) for k, c in enumerate(clusters_raw))
    pub_used = {n.public_ip for c in clusters for n in c.nodes if n.public_ip is not None}
    peers_raw = fields.as_list(data.get("peers", []), "peers")
    named = [n.nat for c in clusters for n in c.nodes if n.nat is not None]
    named += [str(p["nat"]) for p in peers_raw if isinstance(p, Mapping) and "nat" in p]
    nats = _nats(fields.as_list(data.get("nats", []), "nats"), named, public_pool, pub_used)
    pub_used |= {n.public_ip for n in nats}
    peers = _peers(peers_raw, internet, internet6, pub_used, {n.name: n for n in nats})
    spec = LabSpec(
        name=name,
        internet=internet,
        clusters=clusters,
        peers=peers,
        agent=bool(data.get("agent", True)),
        kube_proxy=bool(data.get("kubeProxy", False)),
        nats=nats,
        internet6=internet6,
    )
    _validate(spec)
    return spec


def _cluster(
    raw: Any, k: int, public_pool: Iterator[IPv4Addr], public_pool6: Iterator[IPv6Addr]
) -> ClusterSpec:
    if not isinstance(raw, Mapping):
        raise SpecError(f"clusters[{k}]: a mapping")
    fields.only_keys(
        raw,
        f"clusters[{k}]",
        {
            "name",
            "mgmtCIDR",
            "podCIDR",
            "serviceCIDR",
            "subnet",
            "granularity",
            "nodePrefix",
            "locations",
            "agentArgs",
            "liveness",
            "flannel",
            "stack",
            "podCIDR6",
            "serviceCIDR6",
            "subnet6",
            "nodePrefix6",
        },
    )
    name = fields.as_name(raw.get("name", f"c{k + 1}"), f"clusters[{k}].name")
    where = f"cluster {name}"
    mgmt = fields.as_net(raw.get("mgmtCIDR", f"172.31.{254 - k}.0/24"), f"{where}: mgmtCIDR")
    pod = fields.as_net(raw.get("podCIDR", f"10.{2 + 10 * k}.0.0/16"), f"{where}: podCIDR")
    svc = fields.as_net(raw.get("serviceCIDR", f"10.{3 + 10 * k}.0.0/16"), f"{where}: serviceCIDR")
    subnet = fields.as_net(raw.get("subnet", f"10.{4 + 10 * k}.0.0/16"), f"{where}: subnet")
    gran = str(raw.get("granularity", "location"))
    if gran not in GRANULARITIES:
        raise SpecError(f"{where}: granularity {gran!r}: one of {', '.join(GRANULARITIES)}")
    liveness = str(raw.get("liveness", "compat"))
    if liveness not in LIVENESS_MODES:
        raise SpecError(f"{where}: liveness {liveness!r}: one of {', '.join(LIVENESS_MODES)}")
    stack = str(raw.get("stack", "ipv4"))
    if stack not in STACKS:
        raise SpecError(f"{where}: stack {stack!r}: one of {', '.join(STACKS)}")
    v6 = stack != "ipv4"
    pod6 = svc6 = subnet6 = None
    prefix6 = int(raw.get("nodePrefix6", 64))
    pod_cidrs6: Iterator[IPv6Net] = iter(())
    if v6:
        if raw.get("flannel", False):
            raise SpecError(f"{where}: flannel: the lab runs flanneld in IPv4 clusters only")
        pod6 = fields.as_net6(raw.get("podCIDR6", f"fd00:{2 + 10 * k}::/48"), f"{where}: podCIDR6")
        svc6 = fields.as_net6(
            raw.get("serviceCIDR6", f"fd00:{3 + 10 * k}::/112"), f"{where}: serviceCIDR6"
        )
        subnet6 = fields.as_net6(raw.get("subnet6", f"fd00:{4 + 10 * k}::/64"), f"{where}: subnet6")
        if not pod6.prefixlen <= prefix6 <= 120:
            raise SpecError(f"{where}: nodePrefix6 {prefix6} does not fit podCIDR6 {pod6}")
        pod_cidrs6 = pod6.subnets(new_prefix=prefix6)
    prefix = int(raw.get("nodePrefix", 24))
    if not pod.prefixlen <= prefix <= 30:
        raise SpecError(f"{where}: nodePrefix {prefix} does not fit podCIDR {pod}")
    pod_cidrs = pod.subnets(new_prefix=prefix)
    mgmt_hosts = mgmt.hosts()
    next(mgmt_hosts)  # .1: the API server
    for _ in range(9):
        next(mgmt_hosts, None)  # nodes from .10
    locs_raw = fields.as_list(raw.get("locations"), f"{where}: locations")
    if not locs_raw:
        raise SpecError(f"{where}: at least one location")
    locations: list[LocationSpec] = []
    index = 0
    for j, lraw in enumerate(locs_raw):
        if not isinstance(lraw, Mapping):
            raise SpecError(f"{where}: locations[{j}]: a mapping")
        fields.only_keys(lraw, f"{where}: locations[{j}]", {"name", "cidr", "cidr6", "nodes"})
        lname = fields.as_name(lraw.get("name"), f"{where}: locations[{j}].name")
        lwhere = f"{where}, location {lname}"
        cidr = fields.as_net(lraw.get("cidr", f"10.{10 * (k + 1)}.{j + 1}.0/24"), f"{lwhere}: cidr")
        lan_pool = cidr.hosts()
        cidr6 = None
        lan_pool6: Iterator[IPv6Addr] = iter(())
        if v6:
            cidr6 = fields.as_net6(
                lraw.get("cidr6", f"fd00:{10 * (k + 1)}:{j + 1}::/64"), f"{lwhere}: cidr6"
            )
            lan_pool6 = cidr6.hosts()
        nodes: list[NodeSpec] = []
        for i, nraw in enumerate(fields.as_list(lraw.get("nodes"), f"{lwhere}: nodes")):
            if isinstance(nraw, str):
                nraw = {"name": nraw}
            if not isinstance(nraw, Mapping):
                raise SpecError(f"{lwhere}: nodes[{i}]: a mapping or a name")
            fields.only_keys(
                nraw,
                f"{lwhere}: nodes[{i}]",
                {
                    "name",
                    "public",
                    "publicIP",
                    "ip",
                    "pods",
                    "labels",
                    "annotations",
                    "agent",
                    "nat",
                    "ip6",
                    "publicIP6",
                },
            )
            nname = fields.as_name(nraw.get("name"), f"{lwhere}: nodes[{i}].name")
            nwhere = f"node {nname}"
            lan_ip = (
                fields.as_addr(nraw["ip"], f"{nwhere}: ip")
                if "ip" in nraw
                else next(lan_pool, None)
            )
            if lan_ip is None or lan_ip not in cidr:
                raise SpecError(f"{nwhere}: LAN address {lan_ip} not in {cidr}")
            public_ip: IPv4Addr | None = None
            if "publicIP" in nraw:
                public_ip = fields.as_addr(nraw["publicIP"], f"{nwhere}: publicIP")
            elif nraw.get("public", False) and stack != "ipv6":
                public_ip = fields.take(public_pool, f"{nwhere}: no public address left")
            lan_ip6 = public_ip6 = None
            if v6:
                lan_ip6 = (
                    fields.as_addr6(nraw["ip6"], f"{nwhere}: ip6")
                    if "ip6" in nraw
                    else next(lan_pool6, None)
                )
                if lan_ip6 is None or cidr6 is None or lan_ip6 not in cidr6:
                    raise SpecError(f"{nwhere}: LAN address {lan_ip6} not in {cidr6}")
                if "publicIP6" in nraw:
                    public_ip6 = fields.as_addr6(nraw["publicIP6"], f"{nwhere}: publicIP6")
                elif nraw.get("public", False) or "publicIP" in nraw:
                    public_ip6 = fields.take(public_pool6, f"{nwhere}: no IPv6 public address left")
            elif "ip6" in nraw or "publicIP6" in nraw:
                raise SpecError(f"{nwhere}: ip6/publicIP6 need the cluster's stack ipv6 or dual")
            nat = None
            if "nat" in nraw:
                nat = fields.as_name(nraw["nat"], f"{nwhere}: nat")
                if v6:
                    raise SpecError(f"{nwhere}: the lab's NATs are IPv4 only (stack {stack})")
                if public_ip is not None:
                    raise SpecError(f"{nwhere}: behind NAT {nat}, it has no public address")
            mgmt_ip = fields.take(mgmt_hosts, f"{where}: management network {mgmt} is full")
            pod_cidr = fields.take(pod_cidrs, f"{where}: podCIDR {pod} has no /{prefix} left")
            pod_cidr6 = (
                fields.take(pod_cidrs6, f"{where}: podCIDR6 {pod6} has no /{prefix6} left")
                if v6
                else None
            )
            pods = int(nraw.get("pods", 1))
            if not 0 <= pods <= 20:
                raise SpecError(f"{nwhere}: pods {pods}: between 0 and 20")
            labels = {
                "topology.kubernetes.io/region": lname,
                **fields.as_strmap(nraw.get("labels"), nwhere),
            }
            nodes.append(
                NodeSpec(
                    name=nname,
                    cluster=name,
                    location=lname,
                    index=index,
                    lan_ip=lan_ip,
                    mgmt_ip=mgmt_ip,
                    pod_cidr=pod_cidr,
                    public_ip=public_ip,
                    pods=pods,
                    labels=labels,
                    annotations=fields.as_strmap(nraw.get("annotations"), nwhere),
                    agent=bool(nraw.get("agent", True)),
                    nat=nat,
                    stack=stack,
                    lan_ip6=lan_ip6,
                    public_ip6=public_ip6,
                    pod_cidr6=pod_cidr6,
                )
            )
            index += 1
        if not nodes:
            raise SpecError(f"{lwhere}: at least one node")
        locations.append(
            LocationSpec(name=lname, cidr=cidr, nodes=tuple(nodes), cidr6=cidr6, stack=stack)
        )
    args = tuple(str(a) for a in fields.as_list(raw.get("agentArgs", []), f"{where}: agentArgs"))
    return ClusterSpec(
        name=name,
        index=k,
        mgmt_cidr=mgmt,
        pod_cidr=pod,
        service_cidr=svc,
        subnet=subnet,
        granularity=gran,
        locations=tuple(locations),
        node_prefix=prefix,
        agent_args=args,
        liveness=liveness,
        flannel=bool(raw.get("flannel", False)),
        stack=stack,
        pod_cidr6=pod6,
        service_cidr6=svc6,
        subnet6=subnet6,
        node_prefix6=prefix6,
    )


def _nats(
    raw: list[Any], named: list[str], public_pool: Iterator[IPv4Addr], used: set[IPv4Addr]
) -> tuple[NatSpec, ...]:
    """The NATs: those described under ``nats`` in order, then those only named by a node or
    peer (``nat: NAME``), in order of first mention, with default settings."""
    described: list[Mapping[str, Any]] = []
    for i, nraw in enumerate(raw):
        if isinstance(nraw, str):
            nraw = {"name": nraw}
        if not isinstance(nraw, Mapping):
            raise SpecError(f"nats[{i}]: a mapping or a name")
        fields.only_keys(nraw, f"nats[{i}]", {"name", "publicIP", "cidr"})
        described.append(nraw)
    names = [fields.as_name(d.get("name"), f"nats[{i}].name") for i, d in enumerate(described)]
    if len(set(names)) != len(names):
        raise SpecError(f"nats: a NAT is described twice ({', '.join(names)})")
    for n in named:
        if n not in names:
            names.append(n)
            described.append({"name": n})
    taken = {fields.as_addr(d["publicIP"], "nats: publicIP") for d in described if "publicIP" in d}
    nats: list[NatSpec] = []
    for i, (name, d) in enumerate(zip(names, described, strict=True)):
        where = f"NAT {name}"
        if name not in named:
            raise SpecError(f"{where}: no node or peer is behind it")
        if "publicIP" in d:
            ip = fields.as_addr(d["publicIP"], f"{where}: publicIP")
        else:
            ip = fields.take(public_pool, f"{where}: no public address left")
            while ip in used or ip in taken:
                ip = fields.take(public_pool, f"{where}: no public address left")
        used.add(ip)
        cidr = fields.as_net(d.get("cidr", f"10.250.{i}.0/24"), f"{where}: cidr")
        if cidr.num_addresses < 4:
            raise SpecError(f"{where}: cidr {cidr} is too small")
        nats.append(NatSpec(name=name, index=i, public_ip=ip, cidr=cidr))
    return tuple(nats)


def _peers(
    raw: list[Any],
    internet: Sequence[IPv4Net],
    internet6: Sequence[IPv6Net],
    used: set[IPv4Addr],
    nats: Mapping[str, NatSpec],
) -> tuple[PeerSpec, ...]:
    pool = (internet[1] if len(internet) > 1 else internet[0]).hosts()
    pool6 = (internet6[1] if len(internet6) > 1 else internet6[0]).hosts()
    inside_pools = {name: _inside_pool(n) for name, n in nats.items()}
    peers: list[PeerSpec] = []
    for i, praw in enumerate(raw):
        if isinstance(praw, str):
            praw = {"name": praw}
        if not isinstance(praw, Mapping):
            raise SpecError(f"peers[{i}]: a mapping or a name")
        fields.only_keys(
            praw, f"peers[{i}]", {"name", "publicIP", "nat", "ip", "ipv6", "publicIP6"}
        )
        name = fields.as_name(praw.get("name"), f"peers[{i}].name")
        public_ip6 = None
        if "publicIP6" in praw:
            public_ip6 = fields.as_addr6(praw["publicIP6"], f"peer {name}: publicIP6")
        elif praw.get("ipv6", False):
            public_ip6 = fields.take(pool6, f"peer {name}: no IPv6 public address left")
        if "nat" in praw:
            if public_ip6 is not None:
                raise SpecError(f"peer {name}: the lab's NATs are IPv4 only (no IPv6 address)")
            nat = nats[fields.as_name(praw["nat"], f"peer {name}: nat")]
            if "publicIP" in praw:
                raise SpecError(f"peer {name}: behind NAT {nat.name}, it has no public address")
            if "ip" in praw:
                inside = fields.as_addr(praw["ip"], f"peer {name}: ip")
            else:
                inside = fields.take(inside_pools[nat.name], f"NAT {nat.name}: cidr is full")
            if inside not in nat.cidr or inside in (nat.inside_ip, nat.cidr.broadcast_address):
                raise SpecError(f"peer {name}: ip {inside} is not a free host of {nat.cidr}")
            peers.append(PeerSpec(name, nat.public_ip, nat=nat.name, inside_ip=inside))
            continue
        if "ip" in praw:
            raise SpecError(f"peer {name}: ip is for peers behind a NAT (publicIP otherwise)")
        if "publicIP" in praw:
            ip = fields.as_addr(praw["publicIP"], f"peer {name}: publicIP")
        else:
            ip = fields.take(pool, f"peer {name}: no public address left")
            while ip in used:
                ip = fields.take(pool, f"peer {name}: no public address left")
        used.add(ip)
        peers.append(PeerSpec(name=name, public_ip=ip, public_ip6=public_ip6))
    return tuple(peers)


def _inside_pool(nat: NatSpec) -> Iterator[IPv4Addr]:
    hosts = nat.cidr.hosts()
    next(hosts)  # the router
    return hosts


def _validate(spec: LabSpec) -> None:
    names = [*spec.hosts(), *(c.name for c in spec.clusters)]
    reserved = {"sw", "admin"}
    seen: set[str] = set()
    for n in names:
        if n in seen or n in reserved:
            raise SpecError(
                f"name {n!r} is used twice (or reserved: sw, admin); "
                "cluster, node and peer names must be unique in a lab"
            )
        if re.search(r"-(cp|p\d+)$", n) or n.startswith("nat-"):
            raise SpecError(
                f"name {n!r}: names ending in -cp or -p<number> or starting with nat- are "
                "kept for control planes, pods and NAT routers"
            )
        seen.add(n)
    nets: list[tuple[str, IPv4Net]] = [(f"internet {n}", n) for n in spec.internet]
    for c in spec.clusters:
        nets += [
            (f"{c.name} mgmtCIDR", c.mgmt_cidr),
            (f"{c.name} podCIDR", c.pod_cidr),
            (f"{c.name} serviceCIDR", c.service_cidr),
            (f"{c.name} subnet", c.subnet),
        ]
        nets += [(f"{c.name}/{loc.name} cidr", loc.cidr) for loc in c.locations]
    nets += [(f"NAT {n.name} cidr", n.cidr) for n in spec.nats]
    for i, (wa, a) in enumerate(nets):
        if a.overlaps(FORBIDDEN):
            raise SpecError(f"{wa} {a}: 192.0.2.0/24 is kept out of the lab")
        for wb, b in nets[i + 1 :]:
            if a.overlaps(b):
                raise SpecError(f"{wa} {a} overlaps {wb} {b}")
    nets6: list[tuple[str, IPv6Net]] = [(f"internet6 {n}", n) for n in spec.internet6]
    for c in spec.clusters:
        nets6 += [
            (f"{c.name} {what}", net)
            for what, net in (
                ("podCIDR6", c.pod_cidr6),
                ("serviceCIDR6", c.service_cidr6),
                ("subnet6", c.subnet6),
            )
            if net is not None
        ]
        nets6 += [(f"{c.name}/{loc.name} cidr6", loc.cidr6) for loc in c.locations if loc.cidr6]
    for i, (wa6, a6) in enumerate(nets6):
        for wb6, b6 in nets6[i + 1 :]:
            if a6.overlaps(b6):
                raise SpecError(f"{wa6} {a6} overlaps {wb6} {b6}")
    public6 = [(n.name, n.public_ip6) for n in spec.nodes if n.public_ip6 is not None]
    public6 += [(p.name, p.public_ip6) for p in spec.peers if p.public_ip6 is not None]
    owners6: dict[IPv6Addr, str] = {}
    for who, ip6 in public6:
        assert ip6 is not None
        if not any(ip6 in net for net in spec.internet6):
            raise SpecError(f"{who}: public address {ip6} is in none of the internet6 subnets")
        if ip6 in owners6:
            raise SpecError(f"{who}: public address {ip6} is also {owners6[ip6]}'s")
        owners6[ip6] = who
    public = [(n.name, n.public_ip) for n in spec.nodes if n.public_ip is not None]
    public += [(p.name, p.public_ip) for p in spec.peers if p.nat is None]
    public += [(f"NAT {n.name}", n.public_ip) for n in spec.nats]
    owners: dict[IPv4Addr, str] = {}
    for who, ip in public:
        assert ip is not None
        if not any(ip in net for net in spec.internet):
            raise SpecError(f"{who}: public address {ip} is in none of the internet subnets")
        if ip in owners:
            raise SpecError(f"{who}: public address {ip} is also {owners[ip]}'s")
        owners[ip] = who
    for c in spec.clusters:
        lans: dict[IPv4Addr, str] = {}
        for node in c.nodes:
            if node.lan_ip in lans:
                raise SpecError(
                    f"{node.name}: LAN address {node.lan_ip} is also {lans[node.lan_ip]}'s"
                )
            lans[node.lan_ip] = node.name
        for loc in c.locations:
            behind = {n.nat for n in loc.nodes if n.nat is not None}
            if len(behind) > 1:
                raise SpecError(
                    f"{c.name}/{loc.name}: its nodes are behind NATs {', '.join(sorted(behind))}"
                    " (a LAN has at most one NAT router)"
                )
            if behind:
                gw = router_ip(loc.cidr)
                if gw in lans:
                    raise SpecError(
                        f"{lans[gw]}: LAN address {gw} is the NAT router's on {loc.cidr}"
                    )
    inside: dict[IPv4Addr, str] = {}
    for p in spec.peers:
        if p.inside_ip is not None:
            if p.inside_ip in inside:
                raise SpecError(f"{p.name}: ip {p.inside_ip} is also {inside[p.inside_ip]}'s")
            inside[p.inside_ip] = p.name
