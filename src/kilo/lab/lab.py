"""Bring a lab (``topology_spec.LabSpec``) up as namespaces and real processes, and down again.

Layout of one lab named L (every name starts with ``kpy-``):

- ``kpy-L-sw``: the switch namespace holding every bridge: ``kpy-inet`` (the "internet"),
  ``kpy-m<k>`` (cluster k's management network), ``kpy-l<k>-<j>`` (cluster k, location j's LAN);
  the switch ends of the veth pairs are ``kpy-v<n>``.
- ``kpy-L-<cluster>-cp``: etcd + kube-apiserver (``ControlPlane``) on the cluster's management
  address (172.31.254.1:6443 for the first cluster).
- ``kpy-L-admin``: on every management network (its .254); kubectl and kgctl run here.
- ``kpy-L-<node>``: ``kpy-lan`` (LAN address), ``kpy-mgmt`` (only to reach the API server),
  ``kpy-inet`` (public address, for ``public: true`` nodes); a default route on-link through
  ``kpy-inet`` (public) or ``kpy-lan``; IPv4 forwarding on. ``kg`` runs here.
- ``kpy-L-<node>-p<i>``: pods, made by the real CNI plugins from the node's conflist.
- ``kpy-L-<peer>``: only ``kpy-inet``.

The root namespace gets no link, address or route. State lives in ``/run/kpy-lab/L/``:
``state.json`` records what exists (so ``teardown(L)`` works from another process and after a
crash), kubeconfigs, and per node its key, conflist, host-local leases and ``kg.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from kilo.lab import cni, netns
from kilo.lab.binaries import locate, repo_root
from kilo.lab.controlplane import ControlPlane
from kilo.lab.topology_spec import ClusterSpec, LabSpec, NodeSpec, parse

log = logging.getLogger(__name__)

STATE_ROOT = pathlib.Path(os.environ.get("KPY_LAB_STATE", "/run/kpy-lab"))
API_PORT = 6443
METRICS_PORT = 1107
WG_SOCKET_ROOT = "/run/kilo/wireguard"
KG_ARGV_ENV = "KPY_LAB_KG"  # override how kg is started (a shell-like argv prefix)
IF_LAN, IF_MGMT, IF_INET = "kpy-lan", "kpy-mgmt", "kpy-inet"
TOOLS = ("ip", "ping", "unshare", "mount", "sh")


class LabError(RuntimeError):
    """The lab could not be brought up (or a helper failed); the message says why."""


@dataclass
class Pod:
    name: str  # <node>-p<i>
    node: str
    netns: str
    container_id: str
    ip: str  # address/prefix length
    result: dict[str, Any]

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]


# --- naming -------------------------------------------------------------------------------


def ns_name(lab: str, host: str) -> str:
    return f"kpy-{lab}-{host}"


def state_dir(lab: str, root: pathlib.Path | None = None) -> pathlib.Path:
    return (root or STATE_ROOT) / lab


def expected_namespaces(spec: LabSpec) -> list[str]:
    """Every namespace name a lab of this spec may create (pods beyond the spec are found by
    pattern in ``teardown``)."""
    names = [ns_name(spec.name, "sw"), ns_name(spec.name, "admin")]
    names += [ns_name(spec.name, f"{c.name}-cp") for c in spec.clusters]
    names += [ns_name(spec.name, h) for h in spec.hosts()]
    names += [ns_name(spec.name, f"{n.name}-p{i}") for n in spec.nodes for i in range(n.pods)]
    return names


# --- the lab ------------------------------------------------------------------------------


class Lab:
    """One lab: ``up()`` builds it, ``down()`` removes everything; a context manager too.

    ``agent`` (default: the spec's ``agent``) runs kg on the nodes; without it the lab is static
    (no mesh): the lab writes each node's conflist itself and pods reach only their own node.
    """

    def __init__(
        self,
        spec: LabSpec | Mapping[str, Any],
        *,
        agent: bool | None = None,
        state_root: pathlib.Path | None = None,
        progress: Callable[[str], None] | None = None,
        agent_timeout: float = 60.0,
        proxy_mode: str = "iptables",
    ) -> None:
        self.spec = spec if isinstance(spec, LabSpec) else parse(spec)
        self.raw: Mapping[str, Any] | None = None if isinstance(spec, LabSpec) else spec
        self.agent = self.spec.agent if agent is None else agent
        self.dir = state_dir(self.spec.name, state_root)
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.agent_timeout = agent_timeout
        self.proxy_mode = proxy_mode
        self.control_planes: dict[str, ControlPlane] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.proxies: dict[str, subprocess.Popen[bytes]] = {}
        self.pods: dict[str, Pod] = {}
        self.state: dict[str, Any] = {}
        self._veths = 0
        self.timings: dict[str, float] = {}

    # ---- names and paths

    @property
    def name(self) -> str:
        return self.spec.name

    def ns(self, host: str) -> str:
        """The namespace of a node, peer, pod (``<node>-p<i>``), ``admin``, ``sw``, or a
        cluster's control plane (``<cluster>-cp`` or just the cluster's name)."""
        if any(c.name == host for c in self.spec.clusters):
            host = f"{host}-cp"
        return ns_name(self.name, host)

    def node_dir(self, node: str) -> pathlib.Path:
        return self.dir / "nodes" / node

    def kubeconfig(self, cluster: str) -> pathlib.Path:
        return self.dir / "clusters" / cluster / "kubeconfig"

    def conflist_path(self, node: str) -> pathlib.Path:
        return self.node_dir(node) / "cni" / "10-kilo.conflist"

    def agent_log(self, node: str) -> pathlib.Path:
        return self.node_dir(node) / "kg.log"

    # ---- lifecycle

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        """Build everything; on any failure (or interruption) tear down what was made."""
        preflight(self.agent)
        if (self.dir / "state.json").exists():
            raise LabError(
                f"lab {self.name!r} is already up (state in {self.dir}); "
                f"run `kilo-lab down {self.name}` first"
            )
        leftovers = [n for n in expected_namespaces(self.spec) if netns.exists(n)]
        if leftovers:
            raise LabError(
                f"namespaces of lab {self.name!r} already exist: {', '.join(leftovers)}"
                f" (`kilo-lab down {self.name}` removes them)"
            )
        t0 = time.monotonic()
        try:
            self._init_state()
            self._step("network", self._build_network)
            self._step("control planes", self._start_control_planes)
            self._step("nodes registered", self._register_nodes)
            if self.agent:
                self._step("agents", self._start_agents)
            else:
                for n in self.spec.nodes:
                    self._write_conflist(n, with_range=True)
            self._step("pods", self._make_pods)
            if self.spec.kube_proxy:
                self._step("kube-proxy", self._start_proxies)
            self.state["phase"] = "ready"
            self._save()
        except BaseException:
            self.progress("bring-up failed; tearing down")
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        self.progress(f"lab {self.name} is up ({self.timings['up']:.1f} s)")

    def down(self) -> None:
        """Stop every process and remove every namespace, link and file of the lab."""
        t0 = time.monotonic()
        if self.state:
            self.state["phase"] = "stopping"
            with contextlib.suppress(OSError):
                self._save()
        self.stop_agents(list(self.agents), timeout=10)
        _stop_popens(list(self.proxies.values()))
        self.proxies.clear()
        for cp in self.control_planes.values():
            with contextlib.suppress(Exception):
                cp.close()
        self.control_planes.clear()
        teardown(
            self.name,
            self.dir.parent,
            spec=self.spec,
            state=self.state or None,
            progress=self.progress,
        )
        self.pods.clear()
        self.state = {}
        self.timings["down"] = time.monotonic() - t0

    def _step(self, what: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        self.timings[what] = time.monotonic() - t
        self.progress(f"{what}: done in {self.timings[what]:.1f} s")

    # ---- state file

    def _init_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=False, mode=0o700)
        self.state = {
            "name": self.name,
            "phase": "starting",
            "agent": self.agent,
            "spec": self.raw if self.raw is not None else None,
            "owner": {"pid": os.getpid(), "start": netns.start_time(os.getpid())},
            "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "namespaces": [],
            "processes": {},
            "dirs": [],
            "wg_dirs": [],
            "made_var_lib_cni": False,
            "clusters": {},
            "nodes": {},
            "peers": {},
            "pods": {},
        }
        self._save()

    def _save(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1, default=str))
        tmp.replace(self.dir / "state.json")

    def _record_ns(self, name: str) -> None:
        self.state["namespaces"].append(name)
        self._save()

    def _record_proc(self, key: str, pid: int, host: str) -> None:
        self.state["processes"][key] = {"pid": pid, "start": netns.start_time(pid), "host": host}
        self._save()

    # ---- network

    def _new_ns(self, host: str, forwarding: bool = False) -> str:
        name = self.ns(host)
        self._record_ns(name)  # first: a half-made namespace is still removed
        netns.create(name, forwarding=forwarding, strict_arp=True)
        return name

    def _attach(self, host_ns: str, ifname: str, bridge: str, cidr: str) -> None:
        self._veths += 1
        netns.add_veth(host_ns, ifname, self.ns("sw"), f"kpy-v{self._veths}", master_b=bridge)
        netns.add_address(host_ns, ifname, cidr)

    def _build_network(self) -> None:
        spec = self.spec
        sw = self._new_ns("sw")
        netns.add_bridge(sw, "kpy-inet")
        for c in spec.clusters:
            netns.add_bridge(sw, f"kpy-m{c.index}")
            for j, _loc in enumerate(c.locations):
                netns.add_bridge(sw, f"kpy-l{c.index}-{j}")
        admin = self._new_ns("admin")
        for c in spec.clusters:
            plen = c.mgmt_cidr.prefixlen
            self._attach(admin, f"kpy-m{c.index}", f"kpy-m{c.index}", f"{c.admin_ip}/{plen}")
            cp = self._new_ns(f"{c.name}-cp")
            self._attach(cp, IF_MGMT, f"kpy-m{c.index}", f"{c.cp_ip}/{plen}")
            self.state["clusters"][c.name] = {
                "netns": cp,
                "server": f"https://{c.cp_ip}:{API_PORT}",
                "kubeconfig": str(self.kubeconfig(c.name)),
            }
            for j, loc in enumerate(c.locations):
                for n in loc.nodes:
                    self._build_node(c, n, f"kpy-l{c.index}-{j}", loc.cidr.prefixlen)
        for p in spec.peers:
            pns = self._new_ns(p.name)
            plen = next(net.prefixlen for net in spec.internet if p.public_ip in net)
            self._attach(pns, IF_INET, "kpy-inet", f"{p.public_ip}/{plen}")
            netns.add_route(pns, "default", IF_INET)
            self.state["peers"][p.name] = {"netns": pns, "public_ip": str(p.public_ip)}
        self._save()

    def _build_node(self, c: ClusterSpec, n: NodeSpec, lan_bridge: str, lan_plen: int) -> None:
        ns = self._new_ns(n.name, forwarding=True)
        self._attach(ns, IF_LAN, lan_bridge, f"{n.lan_ip}/{lan_plen}")
        self._attach(ns, IF_MGMT, f"kpy-m{c.index}", f"{n.mgmt_ip}/{c.mgmt_cidr.prefixlen}")
        if n.public_ip is not None:
            plen = next(net.prefixlen for net in self.spec.internet if n.public_ip in net)
            self._attach(ns, IF_INET, "kpy-inet", f"{n.public_ip}/{plen}")
            netns.add_route(ns, "default", IF_INET)
        else:
            netns.add_route(ns, "default", IF_LAN)
        d = self.node_dir(n.name)
        (d / "cni").mkdir(parents=True, exist_ok=True)
        (d / "cni-data").mkdir(exist_ok=True)
        ino = netns.inode(ns)
        if ino is not None:
            self.state["wg_dirs"].append(f"{WG_SOCKET_ROOT}/net-{ino}")
        self.state["nodes"][n.name] = {
            "netns": ns,
            "cluster": c.name,
            "location": n.location,
            "lan_ip": str(n.lan_ip),
            "mgmt_ip": str(n.mgmt_ip),
            "public_ip": str(n.public_ip) if n.public_ip else None,
            "pod_cidr": str(n.pod_cidr),
            "dir": str(d),
        }

    # ---- control planes and Node objects

    def _start_control_planes(self) -> None:
        crds = _crd_manifest()
        for c in self.spec.clusters:
            cp = ControlPlane(
                bind_address=str(c.cp_ip),
                netns=self.ns(f"{c.name}-cp"),
                service_cidr=str(c.service_cidr),
                port=API_PORT,
            )
            self.control_planes[c.name] = cp
            try:
                cp.start()
            finally:
                if cp.dir is not None:
                    self.state["dirs"].append(str(cp.dir))
                    self._save()
            path = self.kubeconfig(c.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cp.kubeconfig, path)
            path.chmod(0o600)
            if crds is not None:
                self.kubectl(c.name, "apply", "-f", str(crds))
        for c in self.spec.clusters:
            if crds is not None:
                self.kubectl(
                    c.name,
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/peers.kilo.squat.ai",
                )

    def _register_nodes(self) -> None:
        for c in self.spec.clusters:
            items = [node_object(n) for n in c.nodes]
            doc = {"apiVersion": "v1", "kind": "List", "items": items}
            self.kubectl(c.name, "create", "-f", "-", input=json.dumps(doc))

    # ---- agents

    def _write_conflist(self, n: NodeSpec, with_range: bool) -> None:
        """The conflist Kilo's install-cni step puts on a node; kg fills in the pod CIDR."""
        path = self.conflist_path(n.name)
        conf = cni.kilo_conflist(str(n.pod_cidr) if with_range else None)
        path.write_text(json.dumps(conf, indent=2) + "\n")

    def agent_argv(self, node: str) -> list[str]:
        """How kg is run on ``node`` (inside its namespace)."""
        n = self.spec.node(node)
        c = self.spec.cluster(n.cluster)
        loc = next(loc for loc in c.locations if loc.name == n.location)
        d = self.node_dir(node)
        prefix = os.environ.get(KG_ARGV_ENV)
        base = prefix.split() if prefix else [sys.executable, "-m", "kilo.cli.kg"]
        return [
            *base,
            f"--hostname={node}",
            f"--kubeconfig={self.kubeconfig(c.name)}",
            f"--private-key={d / 'key'}",
            f"--cni-path={self.conflist_path(node)}",
            "--interface=kilo0",
            "--encapsulate=never",
            f"--mesh-granularity={c.granularity}",
            f"--subnet={c.subnet}",
            f"--internal-cidr={loc.cidr}",
            f"--service-cidr={c.service_cidr}",
            f"--listen={n.mgmt_ip}:{METRICS_PORT}",
            "--wireguard=userspace",
            *c.agent_args,
        ]

    def _start_agents(self) -> None:
        for n in self.spec.nodes:
            self._write_conflist(n, with_range=False)
            if n.agent:
                self.start_agent(n.name)
        deadline = time.monotonic() + self.agent_timeout
        for n in self.spec.nodes:
            if not n.agent:
                self._write_conflist(n, with_range=True)
                continue
            self._wait_conflist(n, deadline)

    def _wait_conflist(self, n: NodeSpec, deadline: float) -> None:
        """Wait until kg has put the node's pod CIDR into its conflist."""
        while True:
            conf = cni.read_conflist(self.conflist_path(n.name))
            if conf is not None and cni.conflist_subnet(conf) == str(n.pod_cidr):
                return
            proc = self.agents.get(n.name)
            if proc is not None and proc.poll() is not None:
                raise LabError(
                    f"kg on {n.name} exited with {proc.returncode}:\n"
                    f"{_tail(self.agent_log(n.name))}"
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"kg on {n.name} did not write the pod CIDR {n.pod_cidr} into "
                    f"{self.conflist_path(n.name)} within {self.agent_timeout:.0f} s:"
                    f"\n{_tail(self.agent_log(n.name))}"
                )
            time.sleep(0.1)

    def start_agent(self, node: str, extra_args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start kg on ``node`` (logging to its kg.log, appended)."""
        if node in self.agents and self.agents[node].poll() is None:
            raise LabError(f"kg already runs on {node}")
        ns = self.ns(node)
        argv = ["ip", "netns", "exec", ns, *self.agent_argv(node), *extra_args]
        env = dict(os.environ)
        with contextlib.suppress(Exception):
            env.setdefault("KILO_BIN_WIREGUARD_GO", str(locate("wireguard-go")))
        env["PYTHONUNBUFFERED"] = "1"
        logf = self.agent_log(node)
        with open(logf, "ab") as out:
            out.write(f"--- kpy-lab: starting kg on {node} at {time.ctime()}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.node_dir(node),
                start_new_session=True,
            )
        self.agents[node] = proc
        self._record_proc(f"kg/{node}", proc.pid, node)
        return proc

    def stop_agent(self, node: str, timeout: float = 15.0) -> int | None:
        """SIGTERM kg on ``node`` and wait for it (SIGKILL after ``timeout``); returns its exit
        code (None if it was not running)."""
        return self.stop_agents([node], timeout).get(node)

    def stop_agents(self, nodes: Sequence[str], timeout: float = 15.0) -> dict[str, int | None]:
        """Stop kg on several nodes at once (all get SIGTERM first, then they are waited for)."""
        procs = {n: self.agents.pop(n) for n in nodes if n in self.agents}
        codes = dict(zip(procs, _stop_popens(list(procs.values()), timeout)))
        if self.state and procs:
            for n in procs:
                self.state["processes"].pop(f"kg/{n}", None)
            with contextlib.suppress(OSError):
                self._save()
        return codes

    def restart_agent(self, node: str) -> subprocess.Popen[bytes]:
        self.stop_agent(node)
        return self.start_agent(node)

    def agent_running(self, node: str) -> bool:
        proc = self.agents.get(node)
        return proc is not None and proc.poll() is None

    # ---- pods

    def _make_pods(self) -> None:
        for n in self.spec.nodes:
            for i in range(n.pods):
                self.add_pod(n.name, i)

    def add_pod(self, node: str, index: int | None = None) -> Pod:
        """A pod namespace on ``node``, networked by the CNI plugins from the node's conflist."""
        if index is None:
            index = 0
            while f"{node}-p{index}" in self.pods:
                index += 1
        name = f"{node}-p{index}"
        conf = cni.read_conflist(self.conflist_path(node))
        if conf is None:
            raise LabError(f"{node}: no valid conflist at {self.conflist_path(node)}")
        if not os.path.isdir(cni.CNI_DATA):
            self.state["made_var_lib_cni"] = True
        pns = self._new_ns(name)
        runtime = cni.Runtime(self.ns(node), self.node_dir(node) / "cni-data")
        cid = pns
        try:
            net = runtime.add(
                conf,
                cid,
                pns,
                args=f"IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE=default",
            )
        except cni.CNIError as e:
            raise LabError(str(e)) from e
        pod = Pod(
            name=name, node=node, netns=pns, container_id=cid, ip=str(net.ip), result=net.result
        )
        self.pods[name] = pod
        self.state["pods"][name] = {**asdict(pod), "conflist": conf}
        self._save()
        return pod

    def delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        entry = self.state["pods"].pop(name, {})
        _cni_del(
            self.ns(pod.node),
            self.node_dir(pod.node) / "cni-data",
            entry.get("conflist") or cni.kilo_conflist(None),
            pod.container_id,
            pod.netns,
            pod.result,
        )
        netns.kill_all_in(pod.netns)
        netns.delete(pod.netns)
        self.state["namespaces"] = [n for n in self.state["namespaces"] if n != pod.netns]
        self._save()

    # ---- nodes joining and leaving a running lab

    def add_node(
        self,
        cluster: str,
        location: str,
        name: str,
        *,
        public: bool = False,
        pods: int = 1,
        agent: bool | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> NodeSpec:
        """A new node joins a running lab: namespace and links, Node object, kg (if the lab runs
        agents), its pods and kube-proxy. Addresses are the next free ones."""
        c = self.spec.cluster(cluster)
        j, loc = next(
            ((j, loc) for j, loc in enumerate(c.locations) if loc.name == location), (-1, None)
        )
        if loc is None:
            raise LabError(f"cluster {cluster} has no location {location!r}")
        if name in set(self.spec.hosts()) | {x.name for x in self.spec.clusters}:
            raise LabError(f"name {name!r} is taken")
        all_nodes = self.spec.nodes
        used_public = {n.public_ip for n in all_nodes} | {p.public_ip for p in self.spec.peers}
        public_ip = (
            next((ip for ip in self.spec.internet[0].hosts() if ip not in used_public), None)
            if public
            else None
        )
        if public and public_ip is None:
            raise LabError("no public address left")
        index = max((n.index for n in c.nodes), default=-1) + 1
        node = NodeSpec(
            name=name,
            cluster=cluster,
            location=location,
            index=index,
            lan_ip=next(ip for ip in loc.cidr.hosts() if ip not in {n.lan_ip for n in c.nodes}),
            mgmt_ip=next(
                ip
                for ip in list(c.mgmt_cidr.hosts())[10:-1]
                if ip not in {n.mgmt_ip for n in c.nodes}
            ),
            pod_cidr=list(c.pod_cidr.subnets(new_prefix=c.node_prefix))[index],
            public_ip=public_ip,
            pods=pods,
            labels={"topology.kubernetes.io/region": location, **(labels or {})},
            annotations=dict(annotations or {}),
            agent=self.agent if agent is None else agent,
        )
        new_loc = dataclasses.replace(loc, nodes=(*loc.nodes, node))
        locs = tuple(new_loc if x is loc else x for x in c.locations)
        clusters = tuple(
            dataclasses.replace(x, locations=locs) if x is c else x for x in self.spec.clusters
        )
        self.spec = dataclasses.replace(self.spec, clusters=clusters)
        self._build_node(c, node, f"kpy-l{c.index}-{j}", loc.cidr.prefixlen)
        self._save()
        self._forget_neighbours(node)
        self.kubectl(cluster, "create", "-f", "-", input=json.dumps(node_object(node)))
        self._write_conflist(node, with_range=not (self.agent and node.agent))
        if self.agent and node.agent:
            self.start_agent(name)
            self._wait_conflist(node, time.monotonic() + self.agent_timeout)
        for i in range(pods):
            self.add_pod(name, i)
        if self.spec.kube_proxy:
            self._start_proxy(node)
        return node

    def _forget_neighbours(self, node: NodeSpec) -> None:
        """A joining node may reuse the address of one that left: drop the other hosts' cached
        link-layer entries for it, as the gratuitous ARP of a booting machine would."""
        for host in self.spec.hosts():
            if host == node.name:
                continue
            for ip in (node.lan_ip, node.public_ip):
                if ip is not None:
                    subprocess.run(
                        ["ip", "-n", self.ns(host), "neigh", "flush", "to", str(ip)],
                        capture_output=True,
                        check=False,
                    )

    def remove_node(self, name: str, delete_object: bool = True) -> None:
        """A node leaves: its agent, kube-proxy, pods and namespace go (and, by default, its
        Node object, as when a node is deleted from the cluster)."""
        node = self.spec.node(name)
        self.stop_agent(name)
        proxy = self.proxies.pop(name, None)
        if proxy is not None:
            _stop_popens([proxy])
            self.state["processes"].pop(f"kube-proxy/{name}", None)
        for pod in [p for p in self.pods if self.pods[p].node == name]:
            self.delete_pod(pod)
        ns = self.ns(name)
        ino = netns.inode(ns)
        netns.kill_all_in(ns)
        netns.delete(ns)
        if ino is not None:
            shutil.rmtree(f"{WG_SOCKET_ROOT}/net-{ino}", ignore_errors=True)
        self.state["namespaces"] = [n for n in self.state["namespaces"] if n != ns]
        self.state["nodes"].pop(name, None)
        self._save()
        if delete_object:
            self.kubectl(node.cluster, "delete", "node", name, "--wait=false")
        c = self.spec.cluster(node.cluster)
        locs = tuple(
            dataclasses.replace(loc, nodes=tuple(n for n in loc.nodes if n.name != name))
            for loc in c.locations
        )
        self.spec = dataclasses.replace(
            self.spec,
            clusters=tuple(
                dataclasses.replace(x, locations=locs) if x is c else x for x in self.spec.clusters
            ),
        )
        shutil.rmtree(self.node_dir(name), ignore_errors=True)

    # ---- kube-proxy (ClusterIP Services)

    def _start_proxies(self) -> None:
        for n in self.spec.nodes:
            self._start_proxy(n)

    def _start_proxy(self, n: NodeSpec) -> None:
        binary = str(locate("kube-proxy"))
        c = self.spec.cluster(n.cluster)
        d = self.node_dir(n.name)
        argv = [
            "ip",
            "netns",
            "exec",
            self.ns(n.name),
            binary,
            f"--kubeconfig={self.kubeconfig(c.name)}",
            f"--hostname-override={n.name}",
            f"--cluster-cidr={c.pod_cidr}",
            f"--proxy-mode={self.proxy_mode}",
            # leave the machine-wide conntrack settings alone
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
            "--nodeport-addresses=primary",
            "--v=1",
        ]
        with open(d / "kube-proxy.log", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ, GOMAXPROCS="1", GOMEMLIMIT="128MiB"),
            )
        self.proxies[n.name] = proc
        self._record_proc(f"kube-proxy/{n.name}", proc.pid, n.name)

    # ---- helpers for tests, the demo and the CLI

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        input: str | None = None,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host``'s namespace and capture its output."""
        e = dict(os.environ, **(env or {}))
        return netns.run(
            argv, netns=self.ns(host), check=check, input=input, timeout=timeout, env=e
        )

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace in the background (stopped by ``down``)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], **kw)

    def kubectl(
        self,
        cluster: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """kubectl against ``cluster``, run in the admin namespace."""
        argv = [str(locate("kubectl")), f"--kubeconfig={self.kubeconfig(cluster)}", *args]
        try:
            return netns.run(
                argv, netns=self.ns("admin"), check=check, input=input, timeout=timeout
            )
        except netns.NetnsError as e:
            raise LabError(f"kubectl ({cluster}) {' '.join(args)}: {e}") from e

    def kgctl(
        self,
        cluster: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """kgctl against ``cluster``, run in the admin namespace."""
        argv = [
            sys.executable,
            "-m",
            "kilo.cli.kgctl",
            f"--kubeconfig={self.kubeconfig(cluster)}",
            *args,
        ]
        try:
            return netns.run(
                argv, netns=self.ns("admin"), check=check, input=input, timeout=timeout
            )
        except netns.NetnsError as e:
            raise LabError(f"kgctl ({cluster}) {' '.join(args)}: {e}") from e

    def wg(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``wg ARGS`` on ``node``, seeing its wireguard-go socket (e.g. ``showconf kilo0``)."""
        from kilo.dataplane.wgdevice import UserspaceDevice

        argv = UserspaceDevice("kilo0", netns=self.ns(node)).wg_argv(*args)
        return netns.run(argv, check=check)

    def service(
        self,
        cluster: str,
        name: str,
        port: int,
        backends: Sequence[tuple[str, int]],
        namespace: str = "default",
    ) -> str:
        """A selector-less Service with an EndpointSlice listing ``backends`` (ip, port), as
        the (absent) endpoint controllers would make it; returns its ClusterIP. kube-proxy
        (``kubeProxy: true``) makes it reachable from nodes and pods."""
        target = backends[0][1] if backends else port
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "ports": [{"name": "p", "port": port, "targetPort": target, "protocol": "TCP"}]
            },
        }
        eps = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-lab",
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": target, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip, _ in backends],
        }
        doc = {"apiVersion": "v1", "kind": "List", "items": [svc, eps]}
        self.kubectl(cluster, "apply", "-f", "-", input=json.dumps(doc))
        return self.kubectl(
            cluster, "get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
        ).stdout.strip()

    def ping(self, host: str, ip: str, count: int = 1, wait: float = 1.0) -> bool:
        proc = self.exec(host, ["ping", "-n", "-q", "-c", str(count), "-W", str(wait), ip])
        return proc.returncode == 0

    def wait_ping(self, host: str, ip: str, timeout: float = 30.0) -> float:
        """Ping until a reply comes; returns the seconds it took (LabError on timeout)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.ping(host, ip, wait=0.5):
                return time.monotonic() - t0
        raise LabError(f"{host} got no reply from {ip} within {timeout:.0f} s")

    def status(self) -> dict[str, Any]:
        return status(self.name, self.dir.parent)


# --- objects ------------------------------------------------------------------------------


def node_object(n: NodeSpec) -> dict[str, Any]:
    """The Node a kubelet would register for ``n``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        "kubernetes.io/hostname": n.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **n.labels,
    }
    meta: dict[str, Any] = {"name": n.name, "labels": labels}
    if n.annotations:
        meta["annotations"] = dict(n.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": {"podCIDR": str(n.pod_cidr), "podCIDRs": [str(n.pod_cidr)]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": str(n.lan_ip)},
                {"type": "Hostname", "address": n.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kpy-lab node",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        },
    }


def _crd_manifest() -> pathlib.Path | None:
    root = repo_root()
    path = root / "manifests" / "crds.yaml" if root else None
    return path if path is not None and path.is_file() else None


# --- preflight, teardown and status (usable without a Lab object) --------------------------


def preflight(agent: bool = True) -> None:
    """Raise LabError naming what is missing to run a lab here."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}")
    reason = cni.plugins_available()
    if reason:
        raise LabError(reason)
    for b in ("etcd", "kube-apiserver", "kubectl"):
        try:
            locate(b)
        except Exception as e:
            raise LabError(str(e)) from e


def load_state(name: str, root: pathlib.Path | None = None) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir(name, root) / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_labs(root: pathlib.Path | None = None) -> list[str]:
    base = root or STATE_ROOT
    try:
        return sorted(p.name for p in base.iterdir() if (p / "state.json").exists())
    except FileNotFoundError:
        return []


def teardown(
    name: str,
    root: pathlib.Path | None = None,
    *,
    spec: LabSpec | None = None,
    state: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Remove every trace of lab ``name``: processes (by PID, and any still inside the lab's
    namespaces), pods (CNI DEL), namespaces, socket and state directories. Idempotent; works
    from another process and after a crash. Returns what it could not remove."""
    say = progress or (lambda msg: log.info("%s", msg))
    sdir = state_dir(name, root)
    state = state if state is not None else (load_state(name, root) or {})
    problems: list[str] = []
    if spec is None and state.get("spec"):
        with contextlib.suppress(Exception):
            spec = parse(state["spec"])
    # the processes we recorded: agents and kube-proxies first (SIGTERM, then wait)
    recorded = [(p["pid"], p.get("start")) for p in state.get("processes", {}).values()]
    netns.terminate(recorded, timeout=15)
    # pods: CNI DEL while the node namespaces still exist
    for pname, pod in state.get("pods", {}).items():
        node_ns = ns_name(name, pod["node"])
        if netns.exists(node_ns) and netns.exists(pod["netns"]):
            errors = _cni_del(
                node_ns,
                sdir / "nodes" / pod["node"] / "cni-data",
                pod.get("conflist") or cni.kilo_conflist(None),
                pod["container_id"],
                pod["netns"],
                pod.get("result"),
            )
            problems += [f"pod {pname}: {e}" for e in errors]
    # every namespace of the lab: recorded, derivable from the spec, or a pod by pattern
    names = list(
        dict.fromkeys([*state.get("namespaces", []), *(expected_namespaces(spec) if spec else [])])
    )
    nodes = set(state.get("nodes", {})) | ({n.name for n in spec.nodes} if spec else set())
    pod_re = re.compile(
        rf"^kpy-{re.escape(name)}-({'|'.join(map(re.escape, nodes)) or '-'})"
        r"-p\d+$"
    )
    names += [n for n in netns.names(f"kpy-{name}-") if pod_re.match(n) and n not in names]
    wg_dirs = set(state.get("wg_dirs", []))
    for ns in names:
        ino = netns.inode(ns)
        if ino is not None:
            wg_dirs.add(f"{WG_SOCKET_ROOT}/net-{ino}")
    # processes still inside our namespaces (wireguard-go started by kg, the control plane...)
    order = sorted(
        names,
        key=lambda n: (not n.endswith(tuple(f"-p{i}" for i in range(100))), n.endswith("-cp")),
    )
    for ns in order:
        killed = netns.kill_all_in(ns)
        if killed:
            log.debug("stopped %s in %s", killed, ns)
    for ns in names:
        netns.delete(ns)
    left = [n for n in names if netns.exists(n)]
    problems += [f"namespace {n} still exists" for n in left]
    for d in [*state.get("dirs", []), *wg_dirs]:
        if os.path.basename(d).startswith(("kpy-", "net-")):
            shutil.rmtree(d, ignore_errors=True)
    for d in (WG_SOCKET_ROOT, os.path.dirname(WG_SOCKET_ROOT)):
        with contextlib.suppress(OSError):
            os.rmdir(d)  # only if empty: another agent may still use it
    if state.get("made_var_lib_cni"):
        with contextlib.suppress(OSError):
            os.rmdir(cni.CNI_DATA)
    shutil.rmtree(sdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(sdir.parent)
    if names or state:
        say(f"lab {name} is down" + (f" ({'; '.join(problems)})" if problems else ""))
    return problems


def _cni_del(
    node_ns: str,
    data_dir: pathlib.Path,
    conflist: Mapping[str, Any],
    container_id: str,
    pod_ns: str,
    result: Mapping[str, Any] | None,
) -> list[str]:
    runtime = cni.Runtime(node_ns, data_dir)
    try:
        return runtime.delete(conflist, container_id, pod_ns, prev_result=result, check=False)
    except Exception as e:  # noqa: BLE001  (teardown goes on)
        return [str(e)]


def status(name: str, root: pathlib.Path | None = None) -> dict[str, Any]:
    """What a lab has and whether its processes run (from its state file and the kernel)."""
    state = load_state(name, root)
    if state is None:
        raise LabError(f"no lab {name!r} (no state in {state_dir(name, root)})")
    owner = state.get("owner", {})
    procs = {
        k: {**p, "alive": netns.alive(p["pid"], p.get("start"))}
        for k, p in state.get("processes", {}).items()
    }
    return {
        "name": name,
        "phase": state.get("phase"),
        "owner": {**owner, "alive": bool(owner) and netns.alive(owner["pid"], owner.get("start"))},
        "clusters": state.get("clusters", {}),
        "nodes": state.get("nodes", {}),
        "peers": state.get("peers", {}),
        "pods": {
            k: {"node": v["node"], "ip": v["ip"], "netns": v["netns"]}
            for k, v in state.get("pods", {}).items()
        },
        "processes": procs,
        "namespaces": {n: netns.exists(n) for n in state.get("namespaces", [])},
    }


# --- small helpers ------------------------------------------------------------------------


def _stop_popens(procs: Sequence[subprocess.Popen[Any]], timeout: float = 15.0) -> list[int | None]:
    """SIGTERM each running process, wait for all (up to ``timeout``), SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(
                "pid %d did not stop within %.0f s of SIGTERM; killing it", proc.pid, timeout
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return [proc.returncode for proc in procs]


def _tail(path: pathlib.Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running(spec: LabSpec | Mapping[str, Any], **kw: Any) -> Iterator[Lab]:
    """``with running(spec) as lab:`` brings a lab up and always down."""
    lab = Lab(spec, **kw)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A lab description file's data (validated later by ``Lab``/``parse``)."""
    data = yaml.safe_load(pathlib.Path(path).read_text())
    if not isinstance(data, dict):
        raise LabError(f"{path}: not a lab description (a mapping)")
    return data
