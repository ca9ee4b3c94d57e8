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
        locations:
          - name: aws                  # topology.kubernetes.io/region=aws
            cidr: 10.10.1.0/24         # the location's LAN (kg --internal-cidr)
            nodes:
              - {name: a1, public: true, pods: 1}
              - {name: a2}
    peers:
      - {name: laptop}                 # a namespace with only an internet address

is turned by ``load``/``parse`` into frozen dataclasses in which every address is decided
(``LabSpec.resolve``): management, LAN, public, pod CIDRs. Defaults: cluster k (0-based) uses
management 172.31.(254-k).0/24, LAN 10.(10(k+1)).(j+1).0/24 for location j, pod CIDR
10.(2+10k).0.0/16, services 10.(3+10k).0.0/16, WireGuard 10.(4+10k).0.0/16; public node
addresses come from the internet's first subnet (198.51.100.1, .2, ...) and peers' from the
second (203.0.113.1, ...). 192.0.2.0/24 is refused anywhere.
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

FORBIDDEN = ipaddress.ip_network("192.0.2.0/24")
DEFAULT_INTERNET = ("198.51.100.0/24", "203.0.113.0/24")
GRANULARITIES = ("location", "full", "cross")
LIVENESS_MODES = ("compat", "native")


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

    @property
    def public(self) -> bool:
        return self.public_ip is not None


@dataclass(frozen=True)
class LocationSpec:
    name: str
    cidr: IPv4Net
    nodes: tuple[NodeSpec, ...]


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

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(n for loc in self.locations for n in loc.nodes)

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
    public_ip: IPv4Addr


@dataclass(frozen=True)
class LabSpec:
    name: str
    internet: tuple[IPv4Net, ...]
    clusters: tuple[ClusterSpec, ...]
    peers: tuple[PeerSpec, ...] = ()
    agent: bool = True  # run kg on the nodes (False: a static lab, no mesh)
    kube_proxy: bool = False

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
    fields.only_keys(data, "lab", {"name", "internet", "clusters", "peers", "agent", "kubeProxy"})
    name = fields.as_name(data.get("name"), "lab name")
    if len(name) > 12:
        raise SpecError(f"lab name {name!r}: at most 12 characters")
    internet = tuple(
        fields.as_net(c, "internet")
        for c in fields.as_list(data.get("internet", DEFAULT_INTERNET), "internet")
    )
    if not internet:
        raise SpecError("internet: at least one subnet")
    clusters_raw = fields.as_list(data.get("clusters"), "clusters")
    if not clusters_raw:
        raise SpecError("clusters: at least one cluster")
    public_pool = internet[0].hosts()  # shared by the clusters: .1, .2, ... in order
    clusters = tuple(_cluster(c, k, public_pool) for k, c in enumerate(clusters_raw))
    pub_used = [n.public_ip for c in clusters for n in c.nodes if n.public_ip is not None]
    peers = _peers(fields.as_list(data.get("peers", []), "peers"), internet, set(pub_used))
    spec = LabSpec(
        name=name,
        internet=internet,
        clusters=clusters,
        peers=peers,
        agent=bool(data.get("agent", True)),
        kube_proxy=bool(data.get("kubeProxy", False)),
    )
    _validate(spec)
    return spec


def _cluster(raw: Any, k: int, public_pool: Iterator[IPv4Addr]) -> ClusterSpec:
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
        fields.only_keys(lraw, f"{where}: locations[{j}]", {"name", "cidr", "nodes"})
        lname = fields.as_name(lraw.get("name"), f"{where}: locations[{j}].name")
        lwhere = f"{where}, location {lname}"
        cidr = fields.as_net(lraw.get("cidr", f"10.{10 * (k + 1)}.{j + 1}.0/24"), f"{lwhere}: cidr")
        lan_pool = cidr.hosts()
        nodes: list[NodeSpec] = []
        for i, nraw in enumerate(fields.as_list(lraw.get("nodes"), f"{lwhere}: nodes")):
            if isinstance(nraw, str):
                nraw = {"name": nraw}
            if not isinstance(nraw, Mapping):
                raise SpecError(f"{lwhere}: nodes[{i}]: a mapping or a name")
            fields.only_keys(
                nraw,
                f"{lwhere}: nodes[{i}]",
                {"name", "public", "publicIP", "ip", "pods", "labels", "annotations", "agent"},
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
            elif nraw.get("public", False):
                public_ip = fields.take(public_pool, f"{nwhere}: no public address left")
            mgmt_ip = fields.take(mgmt_hosts, f"{where}: management network {mgmt} is full")
            pod_cidr = fields.take(pod_cidrs, f"{where}: podCIDR {pod} has no /{prefix} left")
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
                )
            )
            index += 1
        if not nodes:
            raise SpecError(f"{lwhere}: at least one node")
        locations.append(LocationSpec(name=lname, cidr=cidr, nodes=tuple(nodes)))
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
    )


def _peers(
    raw: list[Any], internet: Sequence[IPv4Net], used: set[IPv4Addr]
) -> tuple[PeerSpec, ...]:
    pool = (internet[1] if len(internet) > 1 else internet[0]).hosts()
    peers: list[PeerSpec] = []
    for i, praw in enumerate(raw):
        if isinstance(praw, str):
            praw = {"name": praw}
        if not isinstance(praw, Mapping):
            raise SpecError(f"peers[{i}]: a mapping or a name")
        fields.only_keys(praw, f"peers[{i}]", {"name", "publicIP"})
        name = fields.as_name(praw.get("name"), f"peers[{i}].name")
        if "publicIP" in praw:
            ip = fields.as_addr(praw["publicIP"], f"peer {name}: publicIP")
        else:
            ip = fields.take(pool, f"peer {name}: no public address left")
            while ip in used:
                ip = fields.take(pool, f"peer {name}: no public address left")
        used.add(ip)
        peers.append(PeerSpec(name=name, public_ip=ip))
    return tuple(peers)


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
        if re.search(r"-(cp|p\d+)$", n):
            raise SpecError(
                f"name {n!r}: names ending in -cp or -p<number> are kept for "
                "control planes and pods"
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
    for i, (wa, a) in enumerate(nets):
        if a.overlaps(FORBIDDEN):
            raise SpecError(f"{wa} {a}: 192.0.2.0/24 is kept out of the lab")
        for wb, b in nets[i + 1 :]:
            if a.overlaps(b):
                raise SpecError(f"{wa} {a} overlaps {wb} {b}")
    public = [(n.name, n.public_ip) for n in spec.nodes if n.public_ip is not None]
    public += [(p.name, p.public_ip) for p in spec.peers]
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
