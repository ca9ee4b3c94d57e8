"""``Lab``: bring a lab (``spec.LabSpec``) up as namespaces and real processes, and down again.

The lab is assembled from parts of one job each: ``network`` (namespaces and links),
``controlplane`` (etcd + kube-apiserver per cluster), ``daemons`` (kg and kube-proxy on the
nodes), ``pods`` (CNI), ``state`` (the state file) and ``teardown``; ``Lab`` orders them and
offers what tests, benchmarks, the demo and the CLI do with a running lab (``commands``: what
runs in it; ``joining``: nodes joining and leaving). The root namespace gets no link, address
or route.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kilo_lab import flannel, joining, nat, netns, pods, procs, state
from kilo_lab.binaries import BinaryMissing, locate
from kilo_lab.commands import Commands
from kilo_lab.controlplane import ControlPlane
from kilo_lab.daemons import Daemons
from kilo_lab.errors import LabError
from kilo_lab.layout import API_PORT, Paths, expected_namespaces, nat_host, state_dir
from kilo_lab.network import Network
from kilo_lab.objects import crd_manifest, node_object
from kilo_lab.pods import Pod
from kilo_lab.spec import LabSpec, NodeSpec, load_yaml, parse
from kilo_lab.teardown import teardown

__all__ = ["Lab", "LabError", "Pod", "load_yaml", "preflight", "running"]

log = logging.getLogger(__name__)
TOOLS = ("ip", "ping", "unshare", "mount", "sh")


#: What of kube-controller-manager the lab runs: Endpoints mirrored into EndpointSlices (the
#: Service a user puts in front of a Peer's server). Pods have no kubelet to report them, so
#: the EndpointSlice controller for selectors would have nothing to read.
CONTROLLERS = ("endpointslicemirroring",)


KUBELET_ANNOTATION = "volumes.kubernetes.io/controller-managed-attach-detach"


class Lab(Commands):
    """One lab: ``up()`` builds it, ``down()`` removes everything; a context manager too.

    ``agent`` (default: the spec's ``agent``) runs kg on the nodes; without it the lab is static
    (no mesh): each node's conflist has its pod CIDR from the start and pods reach only their
    own node.
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
        self.paths = Paths(self.dir)
        self.store = state.Store(self.dir)
        self.network = Network(self.spec.name, self.store)
        self.daemons = Daemons(lambda: self.spec, self.paths, self.store, self.ns, proxy_mode)
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.agent_timeout = agent_timeout
        self.control_planes: dict[str, ControlPlane] = {}
        self.pods: dict[str, Pod] = {}
        self.timings: dict[str, float] = {}

    # ---- names, paths and parts

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> dict[str, Any]:
        """What the state file says ({} when the lab is down)."""
        return self.store.data

    @property
    def agents(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.daemons.agents

    @property
    def proxies(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.daemons.proxies

    def ns(self, host: str) -> str:
        """The namespace of a node, peer, pod (``<node>-p<i>``), ``admin``, ``sw``, or a
        cluster's control plane (``<cluster>-cp`` or just the cluster's name)."""
        if any(c.name == host for c in self.spec.clusters):
            host = f"{host}-cp"
        return self.network.ns(host)

    def node_dir(self, node: str) -> pathlib.Path:
        return self.paths.node_dir(node)

    def kubeconfig(self, cluster: str) -> pathlib.Path:
        return self.paths.kubeconfig(cluster)

    def conflist_path(self, node: str) -> pathlib.Path:
        return self.paths.conflist(node)

    def agent_log(self, node: str) -> pathlib.Path:
        return self.paths.agent_log(node)

    # ---- lifecycle

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        """Build everything; on any failure (or interruption) tear down what was made."""
        preflight(self.agent, nat=bool(self.spec.nats))
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
            self.store.create(self.name, self.agent, self.raw)
            self._step("network", self._build_network)
            self._step("control planes", self._start_control_planes)
            self._step("nodes registered", self._register_nodes)
            if any(c.flannel for c in self.spec.clusters):
                self._step("flannel", self._start_flannel)
            if self.agent:
                self._step("agents", self._start_agents)
            else:
                for n in self.spec.nodes:
                    self.daemons.write_conflist(n, with_range=True)
            self._step("pods", self._make_pods)
            if self.spec.kube_proxy:
                self._step("kube-proxy", self._start_proxies)
            self.store.set_phase("ready")
        except BaseException:
            self.progress("bring-up failed; tearing down")
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        self.progress(f"lab {self.name} is up ({self.timings['up']:.1f} s)")

    def down(self) -> None:
        """Stop every process and remove every namespace, link and file of the lab."""
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            self.store.set_phase("stopping")
        self.daemons.stop_all()
        for cp in self.control_planes.values():
            with contextlib.suppress(Exception):
                cp.close()
        self.control_planes.clear()
        teardown(
            self.name,
            self.dir.parent,
            spec=self.spec,
            data=self.state or None,
            progress=self.progress,
        )
        self.pods.clear()
        self.store.clear()
        self.timings["down"] = time.monotonic() - t0

    def _step(self, what: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        self.timings[what] = time.monotonic() - t
        self.progress(f"{what}: done in {self.timings[what]:.1f} s")

    # ---- bring-up steps

    def _build_network(self) -> None:
        self.network.build(self.spec)
        for c in self.spec.clusters:
            self.store.add(
                "clusters",
                c.name,
                {
                    "netns": self.ns(f"{c.name}-cp"),
                    "server": f"https://{c.cp_ip}:{API_PORT}",
                    "kubeconfig": str(self.kubeconfig(c.name)),
                },
            )
        for n in self.spec.nodes:
            self._record_node(n)
        for p in self.spec.peers:
            entry = {"netns": self.ns(p.name), "public_ip": str(p.public_ip)}
            if p.nat is not None:
                entry |= {"nat": p.nat, "inside_ip": str(p.inside_ip)}
            self.store.add("peers", p.name, entry)
        for router in self.spec.nats:
            self.store.add(
                "nats",
                router.name,
                {"netns": self.ns(nat_host(router.name)), "public_ip": str(router.public_ip)},
            )

    def _record_node(self, n: NodeSpec) -> None:
        d = self.node_dir(n.name)
        (d / "cni").mkdir(parents=True, exist_ok=True)
        self.paths.cni_data(n.name).mkdir(exist_ok=True)
        self.store.add(
            "nodes",
            n.name,
            {
                "netns": self.ns(n.name),
                "cluster": n.cluster,
                "location": n.location,
                "lan_ip": ",".join(str(ip) for ip in n.internal_ips),
                "mgmt_ip": str(n.mgmt_ip),
                "public_ip": ",".join(str(ip) for ip in n.public_ips) or None,
                "nat": n.nat,
                "pod_cidr": ",".join(str(c) for c in n.pod_cidrs),
                "dir": str(d),
            },
        )

    def _start_control_planes(self) -> None:
        crds = crd_manifest()
        for c in self.spec.clusters:
            cp = ControlPlane(
                bind_address=str(c.cp_ip),
                netns=self.ns(f"{c.name}-cp"),
                service_cidr=",".join(str(s) for s in c.service_cidrs),
                port=API_PORT,
                controllers=CONTROLLERS,
            )
            self.control_planes[c.name] = cp
            try:
                cp.start()
            finally:
                if cp.dir is not None:
                    self.store.append("dirs", str(cp.dir))
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
            self.apply(c.name, [node_object(n) for n in c.nodes], verb="create")

    def _flannel_nodes(self) -> list[NodeSpec]:
        return [n for c in self.spec.clusters if c.flannel for n in c.nodes]

    def _start_flannel(self) -> None:
        """flanneld on every node of a flannel cluster; each node's conflist gets the range of
        flannel's subnet.env (kg runs with --cni=false there)."""
        for n in self._flannel_nodes():
            # what a kubelet annotates its Node with; flanneld cannot take a Node without any
            self.kubectl(n.cluster, "annotate", "node", n.name, f"{KUBELET_ANNOTATION}=true")
        started = {n.name: self.daemons.start_flannel(n) for n in self._flannel_nodes()}
        deadline = time.monotonic() + self.agent_timeout
        for n in self._flannel_nodes():
            left = max(0.0, deadline - time.monotonic())
            subnet = flannel.wait_subnet(n, self.node_dir(n.name), started[n.name], left)
            if subnet != n.pod_cidr:
                raise LabError(f"flanneld on {n.name} took {subnet}, not its podCIDR {n.pod_cidr}")
            self.daemons.write_conflist(n, with_range=True)

    def _start_agents(self) -> None:
        flannels = {n.name for n in self._flannel_nodes()}
        for n in self.spec.nodes:
            if n.name not in flannels:
                self.daemons.write_conflist(n, with_range=not n.agent)
            if n.agent:
                self.start_agent(n.name)
        deadline = time.monotonic() + self.agent_timeout
        for n in self.spec.nodes:
            if n.agent and n.name not in flannels:
                self.daemons.wait_conflist(n, max(0.0, deadline - time.monotonic()))

    def _make_pods(self) -> None:
        for n in self.spec.nodes:
            for i in range(n.pods):
                self.add_pod(n.name, i)

    def _start_proxies(self) -> None:
        for n in self.spec.nodes:
            self.daemons.start_proxy(n)

    # ---- kg

    def start_agent(
        self, node: str, extra_args: Sequence[str] = (), argv: Sequence[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start kg on ``node`` (logging to its kg.log, appended); ``argv``: another agent."""
        return self.daemons.start_agent(node, extra_args, argv)

    def stop_agent(self, node: str, timeout: float = 15.0) -> int | None:
        """SIGTERM kg on ``node`` and wait for it (SIGKILL after ``timeout``); its exit code
        (None if it was not running)."""
        return self.daemons.stop_agents([node], timeout).get(node)

    def restart_agent(self, node: str) -> subprocess.Popen[bytes]:
        self.stop_agent(node)
        return self.start_agent(node)

    def agent_running(self, node: str) -> bool:
        return self.daemons.agent_running(node)

    def kill_agent(self, node: str) -> None:
        """SIGKILL the kg the lab started on ``node`` and the wireguard-go it started (its
        children in the node's namespace), by PID: a node that stops without a word."""
        proc = self.agents.get(node)
        if proc is None or proc.poll() is not None:
            raise LabError(f"kg is not running on {node}")
        victims = [(proc.pid, procs.start_time(proc.pid))]
        victims += [(p, procs.start_time(p)) for p in procs.children(self.ns(node), proc.pid)]
        for pid, _ in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        for pid, started in victims:
            deadline = time.monotonic() + 10
            while procs.alive(pid, started) and time.monotonic() < deadline:
                time.sleep(0.05)

    # ---- pods

    def add_pod(self, node: str, index: int | None = None) -> Pod:
        """A pod namespace on ``node``, networked by the CNI plugins from the node's conflist."""
        if index is None:
            index = 0
            while f"{node}-p{index}" in self.pods:
                index += 1
        name = f"{node}-p{index}"
        conf = pods.read_conflist(self.conflist_path(node))
        if conf is None:
            raise LabError(f"{node}: no valid conflist at {self.conflist_path(node)}")
        if not os.path.isdir(pods.CNI_DATA):
            self.state["made_var_lib_cni"] = True
        pns = self.network.new_ns(name)
        runtime = pods.Runtime(self.ns(node), self.paths.cni_data(node))
        try:
            net = runtime.add(
                conf,
                pns,
                pns,
                args=f"IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE=default",
            )
        except pods.CNIError as e:
            raise LabError(str(e)) from e
        pod = Pod(
            name=name,
            node=node,
            netns=pns,
            container_id=pns,
            ip=str(net.ip),
            result=net.result,
            ip6=None if net.ip6 is None else str(net.ip6),
        )
        self.pods[name] = pod
        self.store.add("pods", name, {**dataclasses.asdict(pod), "conflist": conf})
        return pod

    def delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        entry = self.store.remove("pods", name) or {}
        pods.delete_quietly(
            self.ns(pod.node),
            self.paths.cni_data(pod.node),
            entry.get("conflist") or pods.node_conflist(None),
            pod.container_id,
            pod.netns,
            pod.result,
        )
        self.network.remove_ns(pod.netns)

    # ---- nodes joining and leaving

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
        """A new node joins the running lab (see ``joining.add_node``)."""
        return joining.add_node(
            self,
            cluster,
            location,
            name,
            public=public,
            pods=pods,
            agent=agent,
            labels=labels,
            annotations=annotations,
        )

    def remove_node(self, name: str, delete_object: bool = True) -> None:
        """A node leaves the running lab (see ``joining.remove_node``)."""
        joining.remove_node(self, name, delete_object)

    # ---- NATs

    def nat_flows(self, name: str) -> list[nat.Flow]:
        """The UDP flows NAT ``name`` translates now (inside source -> outside address:port)."""
        self.spec.nat(name)
        return nat.mappings(self.ns(nat_host(name)))

    def nat_forget(self, name: str) -> None:
        """NAT ``name`` forgets its mappings (conntrack flushed): the next packet of each flow
        leaves through a new source port."""
        self.spec.nat(name)
        nat.forget(self.ns(nat_host(name)))

    def status(self) -> dict[str, Any]:
        st = state.status(self.name, self.dir.parent)
        if st is None:
            raise LabError(f"no lab {self.name!r} (no state in {self.dir})")
        return st


# --- preflight and helpers ----------------------------------------------------------------


def preflight(agent: bool = True, nat: bool = False) -> None:
    """Raise LabError naming what is missing to run a lab here (``nat``: NAT routers too)."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces)")
    missing = [t for t in (*TOOLS, *(("nft",) if nat else ())) if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}")
    reason = pods.plugins_available()
    if reason:
        raise LabError(reason)
    for b in ("etcd", "kube-apiserver", "kubectl", *(("wireguard-go",) if agent else ())):
        try:
            locate(b)
        except BinaryMissing as e:
            raise LabError(str(e)) from e


@contextlib.contextmanager
def running(spec: LabSpec | Mapping[str, Any], **kw: Any) -> Iterator[Lab]:
    """``with running(spec) as lab:`` brings a lab up and always down."""
    lab = Lab(spec, **kw)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
