"""The daemons of a lab's nodes, started as their command lines: ``kg`` (the product's agent)
``kube-proxy`` and, in clusters with ``flannel: true``, flanneld (``kilo_lab.flannel``).

kg is started as ``python3 -m kilo.cli.kg`` (``$KPY_LAB_KG`` overrides that prefix, e.g. with a
``kg`` console script; ``$KPY_LAB_IMAGE_ROOT`` runs the container image's, see
``kilo_lab.imageroot``) with the flags a DaemonSet would give it, and with the pinned
wireguard-go passed explicitly: ``KILO_BIN_WIREGUARD_GO`` in its environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from kilo.cni import pod_cidr_of

from kilo_lab import flannel, imageroot, pods, procs
from kilo_lab.binaries import BinaryMissing, env_var, locate
from kilo_lab.errors import LabError
from kilo_lab.layout import METRICS_PORT, Paths
from kilo_lab.poll import wait_until
from kilo_lab.spec import LabSpec, NodeSpec
from kilo_lab.state import Store

KG_ARGV_ENV = "KPY_LAB_KG"  # override how kg is started (a shell-like argv prefix)
WIREGUARD_GO_ENV = env_var("wireguard-go")  # KILO_BIN_WIREGUARD_GO, which kg reads


LEASE_NAMESPACE = "kube-system"  # where kg keeps the leader Leases in the native mode


def liveness_args(mode: str) -> list[str]:
    """kg's liveness flags for a cluster's mode (none in compat: kg's default, as before)."""
    if mode == "native":
        return ["--liveness=native", f"--lease-namespace={LEASE_NAMESPACE}"]
    return []


class Daemons:
    """kg and kube-proxy on the nodes of one lab; every process is recorded in the state."""

    def __init__(
        self,
        spec: Callable[[], LabSpec],
        paths: Paths,
        store: Store,
        ns: Callable[[str], str],
        proxy_mode: str = "iptables",
    ) -> None:
        self._spec = spec
        self.paths = paths
        self.store = store
        self.ns = ns
        self.proxy_mode = proxy_mode
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.proxies: dict[str, subprocess.Popen[bytes]] = {}
        self.flannels: dict[str, subprocess.Popen[bytes]] = {}

    # ---- the conflist

    def write_conflist(self, n: NodeSpec, with_range: bool) -> None:
        """The conflist Kilo's install-cni step puts on a node (kg fills in the pod CIDR); a
        static lab (``with_range``) gets it with the range filled in, as kg would write it."""
        cidrs = [str(c) for c in n.pod_cidrs]
        conf = pods.node_conflist(cidrs[0], *cidrs[1:]) if with_range else pods.node_conflist(None)
        self.paths.conflist(n.name).write_text(json.dumps(conf, indent=2) + "\n")

    def wait_conflist(self, n: NodeSpec, timeout: float) -> None:
        """Wait until kg has put the node's pod CIDR into its conflist."""
        path = self.paths.conflist(n.name)

        def written() -> bool:
            conf = pods.read_conflist(path)
            if conf is not None and pod_cidr_of(conf) == str(n.pod_cidrs[0]):
                return True
            proc = self.agents.get(n.name)
            if proc is not None and proc.poll() is not None:
                raise LabError(
                    f"kg on {n.name} exited with {proc.returncode}:\n"
                    f"{procs.tail(self.paths.agent_log(n.name))}"
                )
            return False

        wait_until(
            f"kg on {n.name} writing the pod CIDR {n.pod_cidrs[0]} into {path}",
            written,
            timeout,
            0.1,
            error=LabError,
            detail=lambda: "\n" + procs.tail(self.paths.agent_log(n.name)),
        )

    # ---- kg

    def agent_argv(self, node: str) -> list[str]:
        """How kg is run on ``node`` (inside its namespace)."""
        spec = self._spec()
        c = spec.cluster(spec.node(node).cluster)
        prefix = os.environ.get(KG_ARGV_ENV)
        base = prefix.split() if prefix else [sys.executable, "-m", "kilo.cli.kg"]
        root = imageroot.image_root()  # $KPY_LAB_IMAGE_ROOT: the image's kg (kilo_lab.imageroot)
        if root is not None:
            base = imageroot.kg_argv(root)
        return [
            *base,
            *self.kilo_flags(node),
            f"--private-key={self.paths.node_dir(node) / 'key'}",
            "--wireguard=userspace",
            *liveness_args(c.liveness),
            *(flannel.AGENT_ARGS if c.flannel else ()),
            *c.agent_args,
        ]

    def kilo_flags(self, node: str) -> list[str]:
        """The flags of Kilo's kg that a DaemonSet gives on ``node``: ours and Kilo's agent
        (``kilo_lab.kilo_agent``) both take them."""
        spec = self._spec()
        n = spec.node(node)
        c = spec.cluster(n.cluster)
        loc = next(loc for loc in c.locations if loc.name == n.location)
        return [
            f"--hostname={node}",
            f"--kubeconfig={self.paths.kubeconfig(c.name)}",
            f"--cni-path={self.paths.conflist(node)}",
            "--interface=kilo0",
            "--encapsulate=never",
            f"--mesh-granularity={c.granularity}",
            f"--subnet={c.kg_subnet}",
            *(f"--internal-cidr={cidr}" for cidr in loc.cidrs),
            *(f"--service-cidr={cidr}" for cidr in c.service_cidrs),
            f"--listen={n.mgmt_ip}:{METRICS_PORT}",
        ]

    def start_agent(
        self, node: str, extra_args: Sequence[str] = (), argv: Sequence[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start kg on ``node`` (logging to its kg.log, appended); ``argv`` instead of ours
        runs another agent in its place (e.g. Kilo's, see ``kilo_lab.kilo_agent``)."""
        if self.agent_running(node):
            raise LabError(f"kg already runs on {node}")
        try:
            wireguard_go = str(locate("wireguard-go"))
        except BinaryMissing as e:
            raise LabError(f"kg on {node} needs wireguard-go: {e}") from e
        proc = procs.start(
            list(argv) if argv is not None else [*self.agent_argv(node), *extra_args],
            netns_name=self.ns(node),
            log_file=self.paths.agent_log(node),
            env={WIREGUARD_GO_ENV: wireguard_go, "PYTHONUNBUFFERED": "1"},
            cwd=self.paths.node_dir(node),
            banner=f"kpy-lab: starting kg on {node}",
        )
        self.agents[node] = proc
        self.store.add_process(f"kg/{node}", proc.pid, node)
        return proc

    def stop_agents(self, nodes: Sequence[str], timeout: float = 15.0) -> dict[str, int | None]:
        """Stop kg on several nodes at once; their exit codes (None: it was not running)."""
        stopping = {n: self.agents.pop(n) for n in nodes if n in self.agents}
        procs.stop(stopping.values(), timeout)
        for n in stopping:
            self.store.remove_process(f"kg/{n}")
        return {n: p.returncode for n, p in stopping.items()}

    def agent_running(self, node: str) -> bool:
        proc = self.agents.get(node)
        return proc is not None and proc.poll() is None

    # ---- kube-proxy

    def start_proxy(self, n: NodeSpec) -> None:
        c = self._spec().cluster(n.cluster)
        argv = [
            str(locate("kube-proxy")),
            f"--kubeconfig={self.paths.kubeconfig(c.name)}",
            f"--hostname-override={n.name}",
            f"--cluster-cidr={','.join(str(p) for p in c.pod_cidrs)}",
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
        proc = procs.start(
            argv,
            netns_name=self.ns(n.name),
            log_file=self.paths.proxy_log(n.name),
            env={"GOMAXPROCS": "1", "GOMEMLIMIT": "128MiB"},
        )
        self.proxies[n.name] = proc
        self.store.add_process(f"kube-proxy/{n.name}", proc.pid, n.name)

    def stop_proxy(self, node: str) -> None:
        proc = self.proxies.pop(node, None)
        if proc is not None:
            procs.stop([proc])
            self.store.remove_process(f"kube-proxy/{node}")

    # ---- flanneld (clusters with flannel: true)

    def start_flannel(self, n: NodeSpec) -> subprocess.Popen[bytes]:
        c = self._spec().cluster(n.cluster)
        d = self.paths.node_dir(n.name)
        proc = flannel.start(n, c, d, self.paths.kubeconfig(c.name), self.ns(n.name))
        self.flannels[n.name] = proc
        self.store.add_process(f"flanneld/{n.name}", proc.pid, n.name)
        return proc

    def stop_all(self) -> None:
        self.stop_agents(list(self.agents), timeout=10)
        procs.stop(self.flannels.values())
        for n in self.flannels:
            self.store.remove_process(f"flanneld/{n}")
        self.flannels.clear()
        procs.stop(self.proxies.values())
        self.proxies.clear()
