"""Running things in a lab the way a user would: a command in a host's namespace, ``kubectl``
and ``kgctl`` from the admin namespace, ``wg`` seeing a node's wireguard-go, ``ping``."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from kilo_lab import netns, procs, wgtool
from kilo_lab.binaries import locate
from kilo_lab.errors import LabError
from kilo_lab.layout import kg_socket_dir
from kilo_lab.objects import service_docs
from kilo_lab.poll import wait_until
from kilo_lab.spec import LabSpec

KGCTL = [sys.executable, "-m", "kilo.cli.kgctl"]  # kgctl as the lab runs it


class Commands:
    """What ``Lab`` offers to run in a running lab (mixed into ``Lab``)."""

    spec: LabSpec

    def ns(self, host: str) -> str:
        raise NotImplementedError

    def kubeconfig(self, cluster: str) -> pathlib.Path:
        raise NotImplementedError

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
        """Start ``argv`` inside ``host``'s namespace in the background, with ``Popen``'s own
        arguments (it is stopped by ``down``, as is everything in the lab's namespaces)."""
        return subprocess.Popen(netns.command(self.ns(host), argv), **kw)

    def _admin(
        self, what: str, argv: list[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            return netns.run(
                argv, netns=self.ns("admin"), check=check, input=input, timeout=timeout
            )
        except netns.NetnsError as e:
            raise LabError(f"{what}: {e}") from e

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
        return self._admin(f"kubectl ({cluster}) {' '.join(args)}", argv, input, check, timeout)

    def kgctl(
        self,
        cluster: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """kgctl against ``cluster``, run in the admin namespace."""
        argv = [*KGCTL, f"--kubeconfig={self.kubeconfig(cluster)}", *args]
        return self._admin(f"kgctl ({cluster}) {' '.join(args)}", argv, input, check, timeout)

    def apply(self, cluster: str, docs: Sequence[Mapping[str, Any]], verb: str = "apply") -> None:
        """``kubectl apply -f -`` (or ``create``) of ``docs``."""
        text = yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False)
        self.kubectl(cluster, verb, "-f", "-", input=text)

    def wg(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``wg ARGS`` on ``node``, seeing kg's wireguard-go socket (e.g. ``showconf kilo0``)."""
        ns = self.ns(node)
        socket_dir = kg_socket_dir(ns)
        if socket_dir is None:
            raise LabError(f"{node}: no namespace {ns}")
        return netns.run(wgtool.wg_argv(ns, socket_dir, *args), check=check)

    def service(
        self,
        cluster: str,
        name: str,
        port: int,
        backends: Sequence[tuple[str, int]],
        namespace: str = "default",
    ) -> str:
        """A selector-less Service with Endpoints listing ``backends`` (ip, port), which the
        lab's kube-controller-manager mirrors into an EndpointSlice; returns its ClusterIP.
        kube-proxy (``kubeProxy: true``) makes it reachable from nodes and pods."""
        target = backends[0][1] if backends else port
        ips = [ip for ip, _ in backends]
        self.apply(cluster, service_docs(name, ips, port, target_port=target, namespace=namespace))
        return self.kubectl(
            cluster, "get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
        ).stdout.strip()

    def ping(self, host: str, ip: str, count: int = 1, wait: float = 1.0) -> bool:
        proc = self.exec(host, ["ping", "-n", "-q", "-c", str(count), "-W", str(wait), ip])
        return proc.returncode == 0

    def wait_ping(self, host: str, ip: str, timeout: float = 30.0) -> float:
        """Ping until a reply comes; returns the seconds it took (LabError on timeout)."""
        return wait_until(
            f"{host} pinging {ip}",
            lambda: self.ping(host, ip, wait=0.5),
            timeout,
            0.0,
            error=LabError,
        )

    def http_code(self, host: str, url: str, timeout: float = 2.0) -> str:
        """The HTTP status ``curl URL`` gets from ``host`` (``000``: no answer)."""
        argv = ["curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w", "%{http_code}", url]
        return self.exec(host, argv).stdout.strip() or "000"

    def start_server(self, host: str, ip: str, port: int, text: str) -> subprocess.Popen[bytes]:
        """The lab's tiny HTTP server (``kilo_lab.httpd``) on ``ip:port`` in ``host``, in the
        background; it answers when this returns."""
        argv = [sys.executable, "-m", "kilo_lab.httpd", str(port), "--bind", ip, "--text", text]
        proc = procs.start(argv, netns_name=self.ns(host), env=_pythonpath())
        url = f"http://{ip}:{port}/"
        wait_until(
            f"HTTP server on {host} ({url})",
            lambda: proc.poll() is not None or self.http_code(host, url) == "200",
            15,
            0.1,
            error=LabError,
        )
        if proc.poll() is not None:
            raise LabError(f"the HTTP server on {host} ({url}) exited with {proc.returncode}")
        return proc


def _pythonpath() -> dict[str, str]:
    """PYTHONPATH for ``python3 -m kilo_lab...`` in a child: this package's source root first
    (it may not be installed, only on this process's path)."""
    here = str(pathlib.Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{here}:{rest}" if rest else here}
