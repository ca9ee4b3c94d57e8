"""A real, throw-away Kubernetes control plane: etcd + kube-apiserver.

``ControlPlane`` starts both on free ports with a temporary directory (prefix ``kpy-cp-``) holding
their data, a self-signed CA, serving and client certificates, the service-account signing key and
an admin kubeconfig; it waits for ``/readyz`` and removes everything again on exit, failures
included. Only the processes it started are stopped, by PID; they are exec'd through symlinks
named ``kpy-etcd`` and ``kpy-apiserver`` so they are easy to recognise in ``ps``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import http.client
import ipaddress
import json
import pathlib
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kilo_lab import netns, procs
from kilo_lab.binaries import locate
from kilo_lab.certs import CA, cert_creds, write_kubeconfig, write_pki
from kilo_lab.poll import wait_until

_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the log tail."""


# --- processes and namespaces ---------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the thread that started us goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        procs.stop([proc], timeout=10)


# --- the control plane ----------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver for tests and the demo; use as a context manager."""

    def __init__(
        self,
        *,
        bind_address: str = "127.0.0.1",
        netns: str | None = None,
        service_cidr: str = "10.96.0.0/12",
        advertise_address: str | None = None,
        extra_sans: Sequence[str] = (),
        port: int | None = None,
        memory_limit_mib: int = 512,
        apiserver_args: Sequence[str] = (),
        controllers: Sequence[str] = (),
    ) -> None:
        self.bind_address = bind_address
        self.netns = netns
        self.service_cidr = service_cidr
        unspecified = ipaddress.ip_address(bind_address).is_unspecified
        self.advertise_address = advertise_address or ("127.0.0.1" if unspecified else bind_address)
        self.extra_sans = tuple(extra_sans)
        self.memory_limit_mib = memory_limit_mib
        self.apiserver_args = tuple(apiserver_args)
        #: kube-controller-manager's --controllers (none: it is not started)
        self.controllers = tuple(controllers)
        self._controller_manager: subprocess.Popen[bytes] | None = None
        self._port = port
        self.dir: pathlib.Path | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._ca: CA | None = None
        self.port = 0
        self.etcd_port = 0

    # public surface

    @property
    def server(self) -> str:
        host = self.advertise_address
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self._path("admin.kubeconfig")

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def pids(self) -> dict[str, int]:
        """The PIDs of the running processes started by this control plane."""
        running = {
            "etcd": self._etcd,
            "kube-apiserver": self._apiserver,
            "kube-controller-manager": self._controller_manager,
        }
        return {name: p.pid for name, p in running.items() if p is not None and p.poll() is None}

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start etcd and kube-apiserver. The processes get SIGKILL if the thread that started
        them ends (PR_SET_PDEATHSIG), so start them from a thread that outlives them."""
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="kpy-cp-"))
        atexit.register(self.close)
        self._prepare_files()
        if self.netns is not None:
            netns.ip(self.netns, "link", "set", "lo", "up")
        self.etcd_port = netns.free_port("127.0.0.1", self.netns)
        self.port = self._port or netns.free_port(self._probe_host(), self.netns)
        admin = (self._path("admin.crt").read_bytes(), self._path("admin.key").read_bytes())
        self._write_cert_kubeconfig(self.kubeconfig, "kpy-admin", ("system:masters",), admin)
        self._start_etcd()
        self.start_apiserver()
        if self.controllers:
            self._start_controller_manager()

    def close(self) -> None:
        """Stop the processes and remove the directory; safe to call more than once."""
        _stop(self._controller_manager)
        self._controller_manager = None
        _stop(self._apiserver)
        self._apiserver = None
        _stop(self._etcd)
        self._etcd = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.close)

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver (etcd keeps the data); ``start_apiserver`` brings it back."""
        _stop(self._apiserver)
        self._apiserver = None

    def start_apiserver(self) -> None:
        self._apiserver = self._launch_apiserver(self.port, "apiserver")

    @contextlib.contextmanager
    def extra_apiserver(self) -> Iterator[pathlib.Path]:
        """A second kube-apiserver on the same etcd (an HA replica); yields its kubeconfig."""
        port = netns.free_port(self._probe_host(), self.netns)
        proc = self._launch_apiserver(port, f"apiserver-{port}")
        try:
            path = self._path(f"admin-{port}.kubeconfig")
            self._write_cert_kubeconfig(path, "kpy-admin", ("system:masters",), port=port)
            yield path
        finally:
            _stop(proc)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: pathlib.Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (inside its namespace, if any) and capture output."""
        cmd = netns.command(
            self.netns,
            [str(locate("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
        )
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def user_kubeconfig(
        self, user: str, groups: Sequence[str] = (), path: pathlib.Path | None = None
    ) -> pathlib.Path:
        """A kubeconfig authenticating as ``user`` in ``groups`` with a client certificate."""
        path = path or self._path(f"user-{user.replace(':', '_')}.kubeconfig")
        self._write_cert_kubeconfig(path, user, groups)
        return path

    def token_kubeconfig(
        self,
        namespace: str,
        service_account: str,
        path: pathlib.Path | None = None,
        duration: str = "1h",
    ) -> pathlib.Path:
        """A kubeconfig with a fresh token (TokenRequest) for an existing ServiceAccount."""
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path = path or self._path(f"sa-{namespace}-{service_account}.kubeconfig")
        self._write_kubeconfig(path, f"{namespace}:{service_account}", {"token": token})
        return path

    def request(self, path: str, port: int | None = None) -> tuple[int, bytes]:
        """GET ``path`` from the API server as admin; returns (status, body)."""

        def get() -> tuple[int, bytes]:
            ctx = ssl.create_default_context(cafile=str(self._path("ca.crt")))
            ctx.load_cert_chain(str(self._path("admin.crt")), str(self._path("admin.key")))
            conn = http.client.HTTPSConnection(
                self._probe_host(), port or self.port, context=ctx, timeout=5
            )
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        return netns.call(self.netns, get)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, so watches from older resourceVersions get 410
        Gone; returns the revision compacted at."""

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            conn = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=10)
            try:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise ControlPlaneError(f"etcd {path}: HTTP {resp.status}: {data[:200]!r}")
                return dict(json.loads(data))
            finally:
                conn.close()

        def compact() -> int:
            head = post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
            revision = int(head["header"]["revision"])
            post("/v3/kv/compaction", {"revision": revision, "physical": True})
            return revision

        return netns.call(self.netns, compact)

    # internals

    def _path(self, name: str) -> pathlib.Path:
        if self.dir is None:
            raise ControlPlaneError("the control plane is not running")
        return self.dir / name

    def _probe_host(self) -> str:
        return (
            self.advertise_address
            if ipaddress.ip_address(self.bind_address).is_unspecified
            else self.bind_address
        )

    def _prepare_files(self) -> None:
        assert self.dir is not None
        first_service_ips = [
            str(next(ipaddress.ip_network(c).hosts())) for c in self.service_cidr.split(",")
        ]
        sans = [*first_service_ips, self.advertise_address, *self.extra_sans]
        if not ipaddress.ip_address(self.bind_address).is_unspecified:
            sans.append(self.bind_address)
        self._ca = write_pki(self.dir, sans)

    def _write_cert_kubeconfig(
        self,
        path: pathlib.Path,
        user: str,
        groups: Sequence[str],
        cert: tuple[bytes, bytes] | None = None,
        port: int | None = None,
    ) -> None:
        assert self._ca is not None
        crt, key = cert or self._ca.issue(user, groups)
        self._write_kubeconfig(path, user, cert_creds(crt, key), port=port)

    def _write_kubeconfig(
        self, path: pathlib.Path, user: str, creds: dict[str, str], port: int | None = None
    ) -> None:
        server = self.server if port is None else self.server.rsplit(":", 1)[0] + f":{port}"
        write_kubeconfig(path, server, self._path("ca.crt").read_bytes(), user, creds)

    def _spawn(
        self, binary: str, alias: str, args: list[str], log: pathlib.Path, memory_mib: int
    ) -> subprocess.Popen[bytes]:
        link = self._path(alias)
        if not link.exists():
            link.symlink_to(locate(binary))
        return procs.start(
            [str(link), *args],
            netns_name=self.netns,
            log_file=log,
            env={"GOMEMLIMIT": f"{memory_mib}MiB", "GOMAXPROCS": "2"},
            cwd=self.dir,
            new_session=False,
            preexec_fn=_die_with_parent,
        )

    def _start_etcd(self) -> None:
        peer = netns.free_port("127.0.0.1", self.netns)
        client, peer_url = self.etcd_url, f"http://127.0.0.1:{peer}"
        log = self._path("etcd.log")
        self._etcd = self._spawn(
            "etcd",
            "kpy-etcd",
            [
                "--name=kpy-etcd",
                f"--data-dir={self._path('etcd')}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kpy-etcd={peer_url}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=268435456",
                "--snapshot-count=5000",
                "--log-level=warn",
            ],
            log,
            self.memory_limit_mib // 2,
        )
        self._wait(lambda: self._etcd_healthy(), self._etcd, log, "etcd", 30)

    def _etcd_healthy(self) -> bool:
        def get() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=2)
            try:
                conn.request("GET", "/health")
                return conn.getresponse().status == 200
            finally:
                conn.close()

        return netns.call(self.netns, get)

    def _launch_apiserver(self, port: int, tag: str) -> subprocess.Popen[bytes]:
        p = self._path
        log = p(f"{tag}.log")
        proc = self._spawn(
            "kube-apiserver",
            "kpy-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.bind_address}",
                f"--secure-port={port}",
                f"--advertise-address={self.advertise_address}",
                f"--cert-dir={p('certs')}",
                f"--tls-cert-file={p('serving.crt')}",
                f"--tls-private-key-file={p('serving.key')}",
                f"--client-ca-file={p('ca.crt')}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p('sa.pub')}",
                f"--service-account-signing-key-file={p('sa.key')}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--event-ttl=10m",
                "--v=0",
                "--shutdown-watch-termination-grace-period=1s",  # stop in 1 s, not 10, when watched
                *self.apiserver_args,
            ],
            log,
            self.memory_limit_mib,
        )
        try:
            self._wait(
                lambda: self.request("/readyz", port)[0] == 200, proc, log, "kube-apiserver", 90
            )
        except BaseException:
            _stop(proc)
            raise
        return proc

    def _start_controller_manager(self) -> None:
        """kube-controller-manager with only ``self.controllers`` (e.g. the EndpointSlice
        mirroring that turns a selector-less Service's Endpoints into the EndpointSlice
        kube-proxy reads), as the admin, no leader election, no serving port."""
        log = self._path("controller-manager.log")
        self._controller_manager = self._spawn(
            "kube-controller-manager",
            "kpy-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(self.controllers)}",
                "--leader-elect=false",
                "--secure-port=0",
                "--concurrent-endpoint-syncs=2",
                "--v=0",
            ],
            log,
            self.memory_limit_mib // 2,
        )
        time.sleep(0.5)  # it serves nothing to probe: a process that lives on is up
        if self._controller_manager.poll() is not None:
            code = self._controller_manager.returncode
            raise ControlPlaneError(
                f"kube-controller-manager exited with {code}:\n{procs.tail(log)}"
            )

    @staticmethod
    def _wait(
        ready: Callable[[], bool],
        proc: subprocess.Popen[bytes] | None,
        log: pathlib.Path,
        what: str,
        timeout: float,
    ) -> None:
        def up() -> bool:
            if proc is not None and proc.poll() is not None:
                raise ControlPlaneError(f"{what} exited with {proc.returncode}:\n{procs.tail(log)}")
            try:
                return ready()
            except (OSError, http.client.HTTPException):
                return False

        wait_until(
            f"{what} ready",
            up,
            timeout,
            error=ControlPlaneError,
            detail=lambda: "\n" + procs.tail(log),
        )
