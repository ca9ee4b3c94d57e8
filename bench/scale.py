"""One real agent among 1,000 simulated nodes: its cost when nothing changes, and how fast a
Peer reaches (and leaves) its WireGuard device.

    python3 bench/scale.py                        # as root; both sizes, about 9 minutes
    python3 bench/scale.py --nodes 1000 --locations 50 --peers 1000 --window 120
    KILO_KG=/path/to/kilo-0.7.0/kg python3 bench/scale.py   # also Kilo's kg, side by side

Per run, everything under a random tag (``kpy-sc<tag>-…`` namespaces, a ``kpy-scale-…``
directory, ``kpy-etcd``/``kpy-apiserver`` processes), removed again on exit, an error, Ctrl-C,
SIGTERM or SIGHUP:

- two network namespaces joined by a veth pair: ``…-cp`` (10.201.0.1/16) holds the lab's
  control plane (etcd + kube-apiserver, ``kilo_lab.controlplane``) with Kilo's CRD applied;
  ``…-n0`` (10.201.0.2/16) is node 0, where ONE real agent runs;
- NODES Node objects in LOCATIONS locations (label ``topology.kubernetes.io/region``): node 0
  (``kpy-n00000``, location ``loc-000``, podCIDR, InternalIP, annotated ``leader`` so that it
  is its location's leader) and NODES-1 others with Kilo's annotations (key, endpoint,
  internal-ip, last-seen, location) so that they are ready; PEERS Peer objects (/32 each);
- the other nodes' check-ins, as their agents would make them: each Node's
  ``kilo.squat.ai/last-seen`` patched (JSON merge patch) every CHECK_IN seconds, spread evenly
  (NODES-1 / CHECK_IN patches per second), by a few threads over persistent HTTPS connections
  made inside ``…-cp``; bounded by the run's end, it stops by itself;
- the agent: our ``kg`` (``python3 -m kilo.cli.kg``, ``--wireguard userspace`` on the pinned
  wireguard-go, ``--encapsulate never``, ``--mesh-granularity location``, private key and CNI
  conflist in the run's directory, ``--listen 10.201.0.2:1107``, ``--clean-up``), or Kilo
  0.7.0's Go ``kg`` when ``$KILO_KG`` names one: wireguard-go and Kilo's kg are then started
  inside one ``unshare --mount`` with the run's directories bound over ``/var/run/wireguard``
  and ``/var/lib/kilo``, and Kilo's kg (``--create-interface=false``) drives that device
  through its UAPI socket.

Figures (over a steady-state WINDOW after the device holds every expected peer plus WARMUP
seconds; nothing but check-ins happens in the window):

  CPU s/min    utime+stime of the agent and its descendants (wireguard-go, helpers; from
               /proc/<pid>/stat, live descendants plus the reaped ones' cutime+cstime), per
               minute of the window; also the agent alone, wireguard-go alone, the agent's main
               thread and its busiest other thread (/proc/<pid>/task/*/stat)
  RSS MB       the agent's VmRSS at the end of the window (MB = 10^6 bytes) and its VmHWM
  reconciles   kilo_reconciles_total from the agent's /metrics, per minute
  kernel calls kilo_kernel_calls_total{part=...} summed over parts, per minute (ours only)
  watch events kilo_cluster_events_total per minute: Node/Peer changes the agent was told of
               (ours only); in compat liveness each check-in is one
  Peer add     POST of a new Peer (clock started just before it) -> its public key on the
               device, read through wireguard-go's UAPI socket every 10 ms; p50/p95 over CHANGES
  Peer delete  DELETE of it -> its key gone from the device; p50/p95

Liveness (``--liveness``): "compat" is Kilo's: the other nodes' ``last-seen`` check-ins as
above, and our kg as Kilo's agents are. "native" is a cluster of our agents only
(``kg --liveness=native``, docs/design.md): every Node carries ``kilo.squat.ai/liveness: lease``
and no ``last-seen``, there are no check-ins, and the leader of each other location renews its
location's Lease (``coordination.k8s.io``, in ``kube-system``) every 60 s (a merge patch of its
``renewTime``, spread evenly), which is what the agent then hears about; it writes its own
location's Lease itself. Kilo's kg has no such mode: with ``$KILO_KG`` and ``--liveness
native`` Kilo is not run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import http.client
import ipaddress
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from _common import (
    comm,
    cpu_ticks,
    machine_note,
    median,
    need_root,
    percentile,
    say,
    stat_fields,
    table,
)
from kilo_lab import netns, procs
from kilo_lab.binaries import BinaryMissing, locate
from kilo_lab.controlplane import ControlPlane
from kilo_lab.objects import crd_manifest
from kilo_lab.poll import Timeout, wait_until
from kilo_lab.signals import raise_on

from kilo.dataplane.uapi import UapiClient, UapiError, socket_path
from kilo.dataplane.wg_userspace import default_socket_dir
from kilo.keys import Key
from kilo.leases import lease_name, lease_object, microtime

TICK = os.sysconf("SC_CLK_TCK")
IFACE = "kilo0"
CP_IP, N0_IP, PLEN = "10.201.0.1", "10.201.0.2", 16
METRICS_PORT = 1107
REGION = "topology.kubernetes.io/region"
ANN = "kilo.squat.ai/"
LIVENESS_MODES = ("compat", "native")
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
RENEW = 60.0  # s: a leader's Lease renewal period (kilo.leases.RENEW_PERIOD_SECONDS)

# targets (issue: "An agent that costs nothing when nothing changes, and heals in seconds")
TARGET_CPU = 0.6  # CPU s per minute
TARGET_RSS = 80.0  # MB
TARGET_EVENTS_NATIVE = 100.0  # per minute, native liveness only
TARGET_P95 = 0.3  # s

SIZES = ((100, 10, 50), (1000, 50, 1000))


class BenchError(RuntimeError):
    pass


class _Stop(BaseException):
    """SIGTERM/SIGHUP: unwind through every clean-up."""


# --- the API server, from the bench ------------------------------------------------------------


class Api:
    """Requests to the control plane as admin over persistent HTTPS connections, one per
    thread; each connection's socket is made inside the control plane's namespace."""

    def __init__(self, cp: ControlPlane) -> None:
        assert cp.dir is not None and cp.netns is not None
        self.ns = cp.netns
        self.host, self.port = cp.bind_address, cp.port
        ctx = ssl.create_default_context(cafile=str(cp.dir / "ca.crt"))
        ctx.load_cert_chain(str(cp.dir / "admin.crt"), str(cp.dir / "admin.key"))
        self.ctx = ctx
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
            netns.call(self.ns, conn.connect)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        ok: Sequence[int] = (200, 201),
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, data, headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            if resp.status not in ok:
                raise BenchError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
            return json.loads(raw) if raw else None
        raise AssertionError("unreachable")


def parallel(jobs: Sequence[Callable[[], object]], workers: int = 4) -> None:
    """Run ``jobs`` on ``workers`` threads; the first error is raised once all have stopped."""
    todo: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
    for j in jobs:
        todo.put(j)
    errors: list[BaseException] = []

    def work() -> None:
        while not errors:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                job()
            except BaseException as e:  # noqa: BLE001  (handed to the caller below)
                errors.append(e)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# --- the cluster's objects ---------------------------------------------------------------------


def node_name(i: int) -> str:
    return f"kpy-n{i:05d}"


def location(i: int, locations: int) -> str:
    return f"loc-{i % locations:03d}"


def pod_cidr(i: int) -> str:
    return f"10.{64 + i // 256}.{i % 256}.0/24"


def internal_ip(i: int) -> str:
    """Node i's internal IP, inside the veth's /16 (so that node 0's routes to its location's
    members through their internal IPs are on-link); node 0 has 10.201.0.2."""
    if i == 0:
        return N0_IP
    return str(ipaddress.ip_address("10.201.1.0") + i)


def node_object(
    i: int, locations: int, key: Key | None, now: int, native: bool = False
) -> dict[str, Any]:
    name = node_name(i)
    meta: dict[str, Any] = {
        "name": name,
        "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            REGION: location(i, locations),
        },
    }
    if i == 0:
        meta["annotations"] = {ANN + "leader": "true"}
        if native:
            meta["annotations"][ANN + "liveness"] = "lease"
    else:
        assert key is not None
        endpoint = ipaddress.ip_address("172.16.0.10") + i
        meta["annotations"] = {
            ANN + "key": str(key),
            ANN + "endpoint": f"{endpoint}:51820",
            ANN + "internal-ip": f"{internal_ip(i)}/{PLEN}",
            ANN + "last-seen": str(now),
            ANN + "location": location(i, locations),
            ANN + "wireguard-ip": f"10.4.{i // 256}.{i % 256}/16",
            ANN + "granularity": "location",
        }
        if native:  # our agents in native liveness: a Lease per location, no check-ins
            del meta["annotations"][ANN + "last-seen"]
            meta["annotations"][ANN + "liveness"] = "lease"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)]},
    }


def node_status(i: int) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip(i)},
                {"type": "Hostname", "address": node_name(i)},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kpy-scale node",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }


PEERS = "/apis/kilo.squat.ai/v1alpha1/peers"


def peer_object(name: str, key: Key, cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": {"allowedIPs": [cidr], "publicKey": str(key), "persistentKeepalive": 0},
    }


def random_public_key() -> Key:
    return Key.generate().public()


def lease_holders(nodes: int, locations: int) -> dict[str, str]:
    """Native liveness: each other location's leader (its first node), by location."""
    out: dict[str, str] = {}
    for i in range(1, nodes):
        loc = location(i, locations)
        if loc != location(0, locations):
            out.setdefault(loc, node_name(i))
    return out


def populate(api: Api, nodes: int, locations: int, peers: int, native: bool = False) -> None:
    """Every Node (node 0 with its status) and every Peer; in native liveness also the other
    locations' Leases, held by their first nodes."""
    now = int(time.time())
    keys = [random_public_key() for _ in range(nodes)]
    jobs: list[Callable[[], object]] = []
    for i in range(nodes):
        obj = node_object(i, locations, keys[i] if i else None, now, native)
        jobs.append(functools.partial(api.request, "POST", "/api/v1/nodes", obj))
    if native:
        for loc, holder in lease_holders(nodes, locations).items():
            lease = lease_object(loc, holder, time.time(), "kube-system")
            jobs.append(functools.partial(api.request, "POST", LEASES, lease))
    for j in range(peers):
        obj = peer_object(f"kpy-peer-{j:05d}", random_public_key(), f"10.5.{j // 256}.{j % 256}/32")
        jobs.append(functools.partial(api.request, "POST", PEERS, obj))
    parallel(jobs)
    path = f"/api/v1/nodes/{node_name(0)}/status"
    api.request("PATCH", path, node_status(0), "application/merge-patch+json")


# --- the other nodes' check-ins ----------------------------------------------------------------


#: What a simulated agent writes: (path, the merge patch made when it is due).
Write = tuple[str, Callable[[], dict[str, Any]]]


def check_in_writes(nodes: int) -> list[Write]:
    """Compat liveness: nodes 1..N-1 patch their ``last-seen``."""

    def body() -> dict[str, Any]:
        return {"metadata": {"annotations": {ANN + "last-seen": str(int(time.time()))}}}

    return [(f"/api/v1/nodes/{node_name(i)}", body) for i in range(1, nodes)]


def renewal_writes(nodes: int, locations: int) -> list[Write]:
    """Native liveness: the other locations' leaders renew their Leases."""

    def body() -> dict[str, Any]:
        return {"spec": {"renewTime": microtime(time.time())}}

    return [(f"{LEASES}/{lease_name(loc)}", body) for loc in lease_holders(nodes, locations)]


class CheckIns:
    """Makes each of ``writes`` every ``period`` seconds, spread evenly, from ``workers``
    threads; stops at ``stop()`` or after ``limit`` seconds, whichever comes first."""

    def __init__(
        self, api: Api, writes: Sequence[Write], period: float, limit: float, workers: int = 4
    ) -> None:
        self.api, self.writes, self.period, self.limit = api, list(writes), period, limit
        self.workers = workers
        self.sent = 0
        self.errors = 0
        self.max_lag = 0.0
        self._q: queue.Queue[tuple[Write, float] | None] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._dispatch, daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def rate(self) -> float:
        return len(self.writes) / self.period

    def _dispatch(self) -> None:
        t0 = time.monotonic()
        others = len(self.writes)
        step = self.period / others if others else self.period
        k = 0
        try:
            while others and not self._stop.is_set():
                due = t0 + k * step
                if due - t0 > self.limit:
                    break
                wait = due - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
                self._q.put((self.writes[k % others], due))
                k += 1
        finally:
            for _ in range(self.workers):
                self._q.put(None)

    def _work(self) -> None:
        try:
            while True:
                item = self._q.get()
                if item is None or self._stop.is_set():
                    return
                (path, body), due = item
                try:
                    self.api.request("PATCH", path, body(), "application/merge-patch+json")
                    with self._lock:
                        self.sent += 1
                        self.max_lag = max(self.max_lag, time.monotonic() - due)
                except (OSError, http.client.HTTPException, BenchError):
                    with self._lock:
                        self.errors += 1
        finally:
            self.api.close()


# --- processes in /proc ------------------------------------------------------------------------


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = stat_fields(int(d))
            if f is not None:
                tree.setdefault(int(f[1]), []).append(int(d))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = children_of(), [], [pid]
    while todo:
        p = todo.pop()
        for c in tree.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} for pid {pid}")


@dataclasses.dataclass
class CpuSample:
    at: float
    agent: int  # the agent's own utime+stime
    total: int  # the agent and all its descendants, reaped ones included
    wg: int  # wireguard-go
    threads: dict[int, int]  # the agent's threads (task id -> utime+stime)


def thread_ticks(pid: int) -> dict[int, int]:
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended
        out[int(task)] = int(fields[11]) + int(fields[12])
    return out


def cpu_sample(pid: int) -> CpuSample:
    desc = descendants(pid)
    total = cpu_ticks(pid, children=True) + sum(cpu_ticks(d, children=True) for d in desc)
    wg = sum(cpu_ticks(d, children=True) for d in desc if comm(d) == "wireguard-go")
    return CpuSample(time.monotonic(), cpu_ticks(pid), total, wg, thread_ticks(pid))


# --- the agent's metrics -----------------------------------------------------------------------


def scrape(ns: str) -> str:
    def get() -> str:
        conn = http.client.HTTPConnection(N0_IP, METRICS_PORT, timeout=5)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    return netns.call(ns, get)


def metric_sum(text: str, name: str) -> float | None:
    """The sum of every series of ``name`` (None if there is none)."""
    pat = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", re.MULTILINE)
    values = [float(v) for v in pat.findall(text)]
    family = re.escape(name.removesuffix("_total"))
    if not values and re.search(rf"^# TYPE {family}(?:_total)? ", text, re.MULTILINE):
        return 0.0  # a labelled family without a series yet
    return sum(values) if values else None


# --- the agents --------------------------------------------------------------------------------


@dataclasses.dataclass
class Agent:
    name: str  # "ours" or "Kilo"
    proc: subprocess.Popen[bytes]
    uapi: str  # the device's UAPI socket
    log: pathlib.Path


def start_ours(
    ns: str, work: pathlib.Path, api_kubeconfig: pathlib.Path, liveness: str = "compat"
) -> Agent:
    wireguard_go = str(locate("wireguard-go"))
    here = pathlib.Path(__file__).resolve().parent.parent
    pythonpath = os.pathsep.join(
        [str(here / "src"), str(here / "lab" / "src"), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    log = work / "kpy-kg.log"
    argv = [
        sys.executable,
        "-m",
        "kilo.cli.kg",
        f"--hostname={node_name(0)}",
        f"--kubeconfig={api_kubeconfig}",
        f"--private-key={work / 'kpy-key'}",
        f"--cni-path={work / 'kpy-10-kilo.conflist'}",
        f"--interface={IFACE}",
        "--encapsulate=never",
        "--mesh-granularity=location",
        "--subnet=10.4.0.0/16",
        f"--internal-cidr={CP_IP}/{PLEN}",
        f"--listen={N0_IP}:{METRICS_PORT}",
        "--wireguard=userspace",
        f"--wireguard-go={wireguard_go}",
        "--clean-up=true",
        "--clean-up-interface=true",
        "--log-level=info",
        f"--liveness={liveness}",
        "--lease-namespace=kube-system",
    ]
    proc = procs.start(
        argv,
        netns_name=ns,
        log_file=log,
        env={"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
        cwd=work,
        banner="kpy-scale: starting our kg",
    )
    return Agent("ours", proc, socket_path(IFACE, default_socket_dir(ns)), log)


def start_kilo(kilo_kg: str, ns: str, work: pathlib.Path, api_kubeconfig: pathlib.Path) -> Agent:
    """wireguard-go and Kilo's kg in one private mount namespace in which the run's directories
    are /var/run/wireguard (the UAPI socket) and /var/lib/kilo (Kilo's private key)."""
    wireguard_go = str(locate("wireguard-go"))
    sockets, state = work / "kpy-wg-sockets", work / "kpy-kilo-state"
    sockets.mkdir(mode=0o700)
    state.mkdir(mode=0o700)
    (work / "kpy-cni").mkdir()
    log = work / "kpy-kilo-kg.log"
    script = (
        'mkdir -p /var/run/wireguard /var/lib/kilo && mount --bind "$1" /var/run/wireguard && '
        'mount --bind "$2" /var/lib/kilo && '
        'WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$3" -f "$4" > "$5" 2>&1 & '
        'for i in $(seq 200); do [ -S "/var/run/wireguard/$4.sock" ] && break; sleep 0.05; done; '
        'ip link set "$4" up; shift 5; exec "$@"'
    )
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "kpy-kilo",
        str(sockets),
        str(state),
        wireguard_go,
        IFACE,
        str(work / "kpy-wireguard-go.log"),
        kilo_kg,
        f"--hostname={node_name(0)}",
        f"--kubeconfig={api_kubeconfig}",
        f"--interface={IFACE}",
        "--create-interface=false",
        "--encapsulate=never",
        "--mesh-granularity=location",
        "--subnet=10.4.0.0/16",
        f"--internal-cidr={CP_IP}/{PLEN}",
        f"--listen={N0_IP}:{METRICS_PORT}",
        "--cni=false",
        f"--cni-path={work / 'kpy-cni' / '10-kilo.conflist'}",
        "--clean-up=true",
        "--log-level=info",
    ]
    proc = procs.start(argv, netns_name=ns, log_file=log, cwd=work, banner="kpy-scale: Kilo's kg")
    return Agent("Kilo", proc, socket_path(IFACE, str(sockets)), log)


def device_keys(uapi: str) -> set[bytes] | None:
    try:
        return {bytes(k) for k in UapiClient(uapi, timeout=2).get().peers}
    except (UapiError, ValueError):
        return None


# --- one run -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    agent: str
    converge_s: float = 0.0
    device_peers: int = 0
    window_s: float = 0.0
    cpu_total: float = 0.0  # s per minute
    cpu_agent: float = 0.0
    cpu_wg: float = 0.0
    cpu_main: float = 0.0  # the agent's main thread (its loop)
    cpu_busiest: float = 0.0  # its busiest other thread (in compat mode: the Node watch)
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    reconciles: float | None = None  # per minute
    kernel_calls: float | None = None
    events: float | None = None
    add: list[float] = dataclasses.field(default_factory=list)
    delete: list[float] = dataclasses.field(default_factory=list)
    check_ins: float = 0.0  # achieved patches per second in the window
    check_in_errors: int = 0
    check_in_lag: float = 0.0
    errors_total: float | None = None


@contextlib.contextmanager
def namespaces(tag: str) -> Iterator[tuple[str, str]]:
    cp_ns, n0_ns = f"kpy-sc{tag}-cp", f"kpy-sc{tag}-n0"
    try:
        netns.create(cp_ns)
        netns.create(n0_ns, forwarding=True)
        netns.add_veth(n0_ns, "kpy-n0", cp_ns, "kpy-cp")
        netns.add_address(cp_ns, "kpy-cp", f"{CP_IP}/{PLEN}")
        netns.add_address(n0_ns, "kpy-n0", f"{N0_IP}/{PLEN}")
        netns.ip(n0_ns, "route", "add", "default", "via", CP_IP)
        yield cp_ns, n0_ns
    finally:
        for ns in (n0_ns, cp_ns):
            procs.stop_all_in(ns)  # only what this run started in its own namespaces
            netns.delete(ns)


def run(
    args: argparse.Namespace, nodes: int, locations: int, peers: int, kilo_kg: str | None
) -> Result:
    tag = uuid.uuid4().hex[:6]
    agent_name = "Kilo" if kilo_kg else "ours"
    say(f"[{agent_name} {nodes}/{locations}/{peers}] run kpy-sc{tag}")
    work = pathlib.Path(tempfile.mkdtemp(prefix="kpy-scale-"))
    socket_dir: str | None = None
    try:
        with (
            namespaces(tag) as (cp_ns, n0_ns),
            ControlPlane(bind_address=CP_IP, netns=cp_ns, memory_limit_mib=2048) as cp,
        ):
            crds = crd_manifest()
            if crds is None:
                raise BenchError("manifests/crds.yaml not found")
            cp.kubectl("apply", "-f", str(crds))
            cp.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", "crd/peers.kilo.squat.ai"
            )
            api = Api(cp)
            t0 = time.monotonic()
            native = args.liveness == "native"
            populate(api, nodes, locations, peers, native)
            say(f"  {nodes} nodes, {peers} peers created in {time.monotonic() - t0:.1f} s")
            limit = args.converge_timeout + args.warmup + args.window + 60 + 2 * args.changes * 5
            if native:
                writes, period = renewal_writes(nodes, locations), RENEW
            else:
                writes, period = check_in_writes(nodes), args.check_in
            check_ins = CheckIns(api, writes, period, limit)
            check_ins.start()
            agent: Agent | None = None
            try:
                kubeconfig = work / "kpy-kubeconfig"
                shutil.copyfile(cp.kubeconfig, kubeconfig)
                if kilo_kg:
                    agent = start_kilo(kilo_kg, n0_ns, work, kubeconfig)
                else:
                    agent = start_ours(n0_ns, work, kubeconfig, args.liveness)
                    socket_dir = default_socket_dir(n0_ns)
                result = measure(args, agent, n0_ns, locations, peers, check_ins, api)
            finally:
                if agent is not None:
                    procs.stop([agent.proc], timeout=20)
                    if args.keep_logs:
                        dest = pathlib.Path(args.keep_logs)
                        dest.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(agent.log, dest / f"kpy-{agent_name}-{nodes}.log")
                check_ins.stop()
                api.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)  # our kg's; it removes it itself
    return result


def measure(
    args: argparse.Namespace,
    agent: Agent,
    n0_ns: str,
    locations: int,
    peers: int,
    check_ins: CheckIns,
    api: Api,
) -> Result:
    r = Result(agent.name)
    want = (locations - 1) + peers  # the other locations' leaders and every Peer

    def converged() -> bool:
        if agent.proc.poll() is not None:
            raise BenchError(
                f"{agent.name} kg exited with {agent.proc.returncode}:\n{procs.tail(agent.log)}"
            )
        keys = device_keys(agent.uapi)
        r.device_peers = len(keys) if keys is not None else 0
        return r.device_peers >= want

    try:
        r.converge_s = wait_until(
            f"{agent.name} kg's device holding {want} peers", converged, args.converge_timeout, 0.5
        )
    except Timeout as e:
        raise BenchError(f"{e} (it has {r.device_peers})\n{procs.tail(agent.log)}") from None
    say(
        f"  device holds {r.device_peers} peers after {r.converge_s:.1f} s; "
        f"warm-up {args.warmup:.0f} s"
    )
    time.sleep(args.warmup)
    pid = agent.proc.pid
    m0, c0, s0 = scrape(n0_ns), cpu_sample(pid), check_ins.sent
    say(f"  measuring for {args.window:.0f} s")
    time.sleep(args.window)
    m1, c1, s1 = scrape(n0_ns), cpu_sample(pid), check_ins.sent
    if agent.proc.poll() is not None:
        raise BenchError(f"{agent.name} kg exited during the window:\n{procs.tail(agent.log)}")
    dt = c1.at - c0.at
    per_min = 60 / dt
    r.window_s = dt
    r.cpu_total = (c1.total - c0.total) / TICK * per_min
    r.cpu_agent = (c1.agent - c0.agent) / TICK * per_min
    r.cpu_wg = (c1.wg - c0.wg) / TICK * per_min
    spent = {t: b - c0.threads.get(t, 0) for t, b in c1.threads.items()}
    r.cpu_main = spent.pop(pid, 0) / TICK * per_min
    r.cpu_busiest = max(spent.values(), default=0) / TICK * per_min
    r.rss_mb = status_kib(pid, "VmRSS") * 1024 / 1e6
    r.hwm_mb = status_kib(pid, "VmHWM") * 1024 / 1e6
    r.check_ins = (s1 - s0) / dt
    r.check_in_errors = check_ins.errors
    r.check_in_lag = check_ins.max_lag

    def rate(name: str) -> float | None:
        a, b = metric_sum(m0, name), metric_sum(m1, name)
        return (b - a) * per_min if a is not None and b is not None else None

    r.reconciles = rate("kilo_reconciles_total")
    r.kernel_calls = rate("kilo_kernel_calls_total")
    r.events = rate("kilo_cluster_events_total")
    r.errors_total = rate("kilo_errors_total")
    say(
        f"  window: CPU {r.cpu_total:.2f} s/min, RSS {r.rss_mb:.0f} MB, reconciles "
        f"{_num(r.reconciles)}/min; Peer add/delete x{args.changes}"
    )
    for k in range(args.changes):
        key = random_public_key()
        name = f"kpy-probe-{k:03d}"
        obj = peer_object(name, key, f"10.6.{k // 256}.{k % 256}/32")
        raw = bytes(key)

        def present(raw: bytes = raw) -> bool:
            keys = device_keys(agent.uapi)
            return keys is not None and raw in keys

        def absent(raw: bytes = raw) -> bool:
            keys = device_keys(agent.uapi)
            return keys is not None and raw not in keys

        t = time.monotonic()
        api.request("POST", PEERS, obj)
        wait_until(f"Peer {name} on the device", present, 30, 0.01)
        r.add.append(time.monotonic() - t)
        time.sleep(0.5)
        t = time.monotonic()
        api.request("DELETE", f"{PEERS}/{name}")
        wait_until(f"Peer {name} gone from the device", absent, 30, 0.01)
        r.delete.append(time.monotonic() - t)
        time.sleep(0.5)
    return r


# --- output ------------------------------------------------------------------------------------


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def report(
    size: tuple[int, int, int],
    ours: Result,
    kilo: Result | None,
    liveness: str,
    kilo_failed: str | None = None,
) -> str:
    nodes, locations, peers = size

    def row(
        figure: str,
        get: Callable[[Result], float | None],
        target: str,
        fmt: str = "{:.2f}",
    ) -> list[str]:
        a = get(ours)
        b = get(kilo) if kilo is not None else None
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        return [figure, _num(a, fmt), _num(b, fmt) if kilo else "not measured", ratio, target]

    def p(values: list[float], q: float) -> float | None:
        return percentile(values, q) if values else None

    def med(values: list[float]) -> float | None:
        return median(values) if values else None

    events_target = (
        f"<= {TARGET_EVENTS_NATIVE:.0f} (native)"
        if liveness != "compat"
        else "- (compat: one per check-in)"
    )
    rows = [
        row("CPU s/min (agent + children)", lambda r: r.cpu_total, f"<= {TARGET_CPU}"),
        row("  agent alone", lambda r: r.cpu_agent, "-"),
        row("  wireguard-go", lambda r: r.cpu_wg, "-"),
        row("  agent's main thread", lambda r: r.cpu_main, "-"),
        row("  its busiest other thread", lambda r: r.cpu_busiest, "-"),
        row("RSS MB (agent)", lambda r: r.rss_mb, f"<= {TARGET_RSS:.0f}", "{:.1f}"),
        row("  peak RSS MB (VmHWM)", lambda r: r.hwm_mb, "-", "{:.1f}"),
        row("reconciles/min", lambda r: r.reconciles, "-", "{:.1f}"),
        row("kernel calls/min", lambda r: r.kernel_calls, "-", "{:.1f}"),
        row("watch events/min", lambda r: r.events, events_target, "{:.0f}"),
        row("errors/min", lambda r: r.errors_total, "0", "{:.1f}"),
        row("Peer add -> device p50 s", lambda r: med(r.add), "-", "{:.3f}"),
        row("Peer add -> device p95 s", lambda r: p(r.add, 95), f"<= {TARGET_P95}", "{:.3f}"),
        row("Peer delete -> gone p50 s", lambda r: med(r.delete), "-", "{:.3f}"),
        row("Peer delete -> gone p95 s", lambda r: p(r.delete, 95), f"<= {TARGET_P95}", "{:.3f}"),
        row("first sync: device full s", lambda r: r.converge_s, "-", "{:.1f}"),
        row("device peers", lambda r: float(r.device_peers), "-", "{:.0f}"),
    ]
    head = (
        f"{nodes} nodes / {locations} locations / {peers} peers; liveness {liveness}; "
        f"window {ours.window_s:.0f} s; "
        f"{'Lease renewals' if liveness == 'native' else 'check-ins'} {ours.check_ins:.1f}/s "
        f"(errors {ours.check_in_errors}, max lag {ours.check_in_lag:.2f} s); "
        f"{len(ours.add)} adds/deletes"
    )
    lines = [head, table(["figure", "ours", "Kilo 0.7.0", "ours/Kilo", "target"], rows)]
    if kilo_failed is not None:
        lines.append(f"Kilo: run failed: {kilo_failed}")
    elif kilo is None:
        lines.append("Kilo: not measured (set KILO_KG)")
    else:
        lines.append(
            f"Kilo run: window {kilo.window_s:.0f} s, check-ins {kilo.check_ins:.1f}/s; "
            "Kilo's kg exports no kernel-call or watch-event counters"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--nodes", type=int, help="one size only: this many Node objects")
    ap.add_argument("--locations", type=int, help="... in this many locations")
    ap.add_argument("--peers", type=int, help="... and this many Peers")
    ap.add_argument("--window", type=float, default=120.0, help="steady-state seconds measured")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds after the first sync")
    ap.add_argument("--changes", type=int, default=10, help="Peer adds (and deletes) timed")
    ap.add_argument("--check-in", type=float, default=30.0, help="each node's check-in period")
    ap.add_argument(
        "--converge-timeout",
        type=float,
        default=900.0,
        help="seconds the agent may take to fill its device at the start",
    )
    ap.add_argument(
        "--liveness",
        default="compat",
        choices=LIVENESS_MODES,
        help="compat: Kilo's last-seen check-ins; native: our agents' Leases (no Kilo run)",
    )
    ap.add_argument("--keep-logs", metavar="DIR", help="copy the agents' logs into DIR")
    args = ap.parse_args()
    given = [args.nodes, args.locations, args.peers]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            sys.exit(f"{sys.argv[0]}: give --nodes, --locations and --peers together")
        sizes: Sequence[tuple[int, int, int]] = ((args.nodes, args.locations, args.peers),)
    else:
        sizes = SIZES
    if args.changes < 10:
        say("note: fewer than 10 adds/deletes: the p95 is a maximum of few")
    need_root()
    try:
        locate("wireguard-go")
        locate("kube-apiserver")
    except BinaryMissing as e:
        sys.exit(f'{sys.argv[0]}: {e} (eval "$(bash hack/binaries.sh --env)")')
    kilo_kg = os.environ.get("KILO_KG") or None
    if kilo_kg and args.liveness == "native":
        say("note: Kilo's kg has no native liveness: not run")
        kilo_kg = None
    if kilo_kg and not os.access(kilo_kg, os.X_OK):
        sys.exit(f"{sys.argv[0]}: KILO_KG={kilo_kg}: not an executable")
    old = raise_on((signal.SIGTERM, signal.SIGHUP), _Stop)
    note = machine_note()
    say(note)
    outputs = []
    try:
        for size in sizes:
            ours = run(args, *size, None)
            kilo, kilo_failed = None, None
            if kilo_kg:
                try:
                    kilo = run(args, *size, kilo_kg)
                except BenchError as e:
                    kilo_failed = str(e).splitlines()[0]
                    say(f"Kilo's run failed: {e}")
            out = report(size, ours, kilo, args.liveness, kilo_failed)
            print(out + "\n", flush=True)
            outputs.append(out)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        left = netns.names("kpy-sc")
        if left:
            say(f"WARNING: left behind: {left}")
    print(note)


if __name__ == "__main__":
    main()
