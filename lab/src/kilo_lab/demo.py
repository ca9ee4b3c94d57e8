"""The talk's three acts, played on a lab (``python -m kilo.lab.demo``, ``kilo-demo``).

``hack/demo.sh`` installs what is needed and runs ``main``: bring ``lab/demo.yaml`` up, play
the acts printing every command (and the namespace it runs in) with its output, render each
cluster's graph to SVG, print a summary table, and tear the lab down (``--keep`` leaves it up).

- Act 1, the mesh: one cluster over two clouds; a leader's ``wg showconf kilo0`` equals
  ``kgctl showconf node``; pods ping each other across clouds.
- Act 2, peers: a Peer ``client`` (10.5.0.1/32) applied with ``kubectl``; the laptop's
  wireguard-go configured from ``kgctl showconf peer client``; ``curl`` from the laptop to a pod;
  a bare-metal server joins as Peer ``bare-metal-1`` and is served in-cluster as Service
  ``bare-metal-1`` (port 8080), reached from a pod through its ClusterIP.
- Act 3, multi-cluster: the seed's loop ``kgctl showconf node $n --as-peer -o yaml
  --allowed-ips $SERVICECIDR | kubectl apply -f -`` both ways; a pod in the first cluster
  reaches a pod and a Service in the second.

``Story`` holds the acts so the end-to-end tests (tests/integration/test_e2e_*.py) play exactly
the same story on labs of every granularity; each check is recorded as a ``Check``.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import ipaddress
import itertools
import json
import logging
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kilo.keys import generate_private_key, key_str, parse_key, public_key
from kilo.lab import netns
from kilo.lab.binaries import locate, repo_root
from kilo.lab.lab import Lab, LabError, Pod, load_state, load_yaml, state_dir, teardown
from kilo.lab.signals import raise_on
from kilo.lab.topology_spec import ClusterSpec
from kilo.mesh import Options, read_cluster, showconf_node
from kilo.model import Granularity
from kilo.wireguard import WgConf
from kilo.wireguard import parse as parse_wg

CLIENT_PEER = "client"
CLIENT_IP = "10.5.0.1/32"  # the talk's Peer `client`
BARE_METAL_IP = "10.5.0.2/32"
BARE_METAL_PORT = 8080
WEB_PORT = 80
WG_IFACE = "wg0"  # the peers' WireGuard interface
WG_PORT = 51820
KEEPALIVE = 10
ACTS = {
    "lab": "the lab",
    "1": "act 1: the mesh",
    "2": "act 2: peers",
    "3": "act 3: multi-cluster",
    "graph": "graphs",
}


class CheckFailed(AssertionError):
    """A check of the story did not hold; the message says what was seen."""


@dataclass
class Check:
    act: str
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class PeerHost:
    """A lab peer namespace turned into a WireGuard peer of a cluster."""

    host: str  # the lab's peer (namespace) name
    peer: str  # the Peer object's name
    address: str  # its WireGuard address (prefix)
    private_key: bytes
    device: Any = None  # kilo.dataplane.wgdevice.UserspaceDevice
    routes: list[str] = field(default_factory=list)

    @property
    def public_key(self) -> bytes:
        return public_key(self.private_key)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


# --- small pure helpers (also used by the tests) -------------------------------------------


def wg_peers(conf: WgConf) -> dict[bytes, tuple[frozenset[str], str | None]]:
    """A WireGuard config's peers by public key: (allowed IPs, endpoint)."""
    return {
        p.public_key: (
            frozenset(str(a.network) for a in p.allowed_ips),
            str(p.endpoint) if p.endpoint else None,
        )
        for p in conf.peers
    }


def allowed_ips(conf: WgConf) -> set[str]:
    return {str(a.network) for p in conf.peers for a in p.allowed_ips}


def wait_for(what: str, fn: Callable[[], bool], timeout: float, interval: float = 0.3) -> float:
    """Call ``fn`` until it returns true; the seconds it took (CheckFailed after ``timeout``)."""
    t0 = time.monotonic()
    while True:
        if fn():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise CheckFailed(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def http_code(lab: Lab, host: str, url: str, timeout: float = 2.0) -> str:
    out = lab.exec(
        host, ["curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w", "%{http_code}", url]
    )
    return out.stdout.strip() or "000"


def wait_http(lab: Lab, host: str, url: str, timeout: float) -> float:
    """Seconds until ``curl URL`` from ``host`` answers 200."""
    last = ["000"]

    def ok() -> bool:
        last[0] = http_code(lab, host, url)
        return last[0] == "200"

    try:
        return wait_for(f"{host}: curl {url}", ok, timeout, interval=0.2)
    except CheckFailed as e:
        raise CheckFailed(f"{e} (last HTTP code {last[0]})") from None


def unreachable_pairs(
    lab: Lab, pairs: Iterable[tuple[str, str]], timeout: float = 30.0
) -> list[tuple[str, str]]:
    """The (pod, pod) pairs whose ping still gets no reply after ``timeout``."""
    pending = list(pairs)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [(a, b) for a, b in pending if not lab.ping(a, lab.pods[b].address, wait=0.5)]
        if not pending or time.monotonic() > deadline:
            break
    return pending


def cluster_objects(lab: Lab, cluster: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data = json.loads(lab.kubectl(cluster, "get", "nodes,peers", "-o", "json").stdout)
    items = data.get("items", [])
    return (
        [o for o in items if o.get("kind") == "Node"],
        [o for o in items if o.get("kind") == "Peer"],
    )


def leaders(lab: Lab, cluster: str) -> list[str]:
    """The nodes of ``cluster`` that hold WireGuard tunnels (kgctl's notion: ``showconf node``
    prints a config), computed from the live objects."""
    nodes, peers = cluster_objects(lab, cluster)
    opts = Options(granularity=Granularity(lab.spec.cluster(cluster).granularity))
    now = int(time.time())
    out = []
    topo_log = logging.getLogger("kilo.topology")  # kgctl's warnings are kgctl's to print
    level = topo_log.level
    topo_log.setLevel(logging.ERROR)
    try:
        state = read_cluster(nodes, peers, "topology.kubernetes.io/region")
        for n in state.nodes:
            with contextlib.suppress(Exception):
                if showconf_node(state, n.name, opts, now).stdout:
                    out.append(n.name)
    finally:
        topo_log.setLevel(level)
    return out


def node_keys(lab: Lab, cluster: str) -> dict[str, bytes]:
    """Every node's WireGuard public key (its ``kilo.squat.ai/key`` annotation)."""
    nodes, _ = cluster_objects(lab, cluster)
    out: dict[str, bytes] = {}
    for o in nodes:
        key = (o["metadata"].get("annotations") or {}).get("kilo.squat.ai/key")
        if key:
            with contextlib.suppress(ValueError):
                out[o["metadata"]["name"]] = parse_key(key)
    return out


def pods_of(lab: Lab, cluster: ClusterSpec, location: str | None = None) -> list[Pod]:
    names = {n.name for n in cluster.nodes if location is None or n.location == location}
    return [p for _, p in sorted(lab.pods.items()) if p.node in names]


# --- the story ----------------------------------------------------------------------------


class Story:
    """The talk's acts on a running lab; every check is recorded in ``checks``.

    ``say`` prints each line (``print`` by default). The first cluster plays the acts; the second
    (if any) is the "other" cluster of act 3. Peers: ``laptop`` and ``bare-metal-1`` by name,
    else the lab's first and second peer. Each act goes on after a failed check (the later ones
    then usually fail too) and records what it saw; ``close()`` stops what the story started.
    """

    def __init__(
        self,
        lab: Lab,
        *,
        say: Callable[[str], None] | None = None,
        color: bool = False,
        timeout: float = 45.0,
    ) -> None:
        self.lab = lab
        self.say = say or (lambda s: print(s, flush=True))
        self.color = color
        self.timeout = timeout
        self.checks: list[Check] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self.peer_hosts: dict[str, PeerHost] = {}
        self.work = lab.dir / "demo"
        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._bin = self.work / "bin"
        self._bin.mkdir(exist_ok=True)
        kgctl = self._bin / "kgctl"
        kgctl.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m kilo.cli.kgctl "$@"\n')
        kgctl.chmod(0o755)

    # ---- roles

    @property
    def c1(self) -> ClusterSpec:
        return self.lab.spec.clusters[0]

    @property
    def c2(self) -> ClusterSpec | None:
        return self.lab.spec.clusters[1] if len(self.lab.spec.clusters) > 1 else None

    def peer_name(self, preferred: str, exclude: str | None = None) -> str | None:
        """The lab peer ``preferred``, else the first other one (not ``exclude``)."""
        names = [p.name for p in self.lab.spec.peers]
        if preferred in names:
            return preferred
        rest = [n for n in names if n != exclude and n not in ("laptop", "bare-metal-1")]
        return rest[0] if rest else None

    def pod_far(self, cluster: ClusterSpec) -> Pod:
        """A pod on the last node of the cluster's last location (the "far" end)."""
        return pods_of(self.lab, cluster, cluster.locations[-1].name)[-1]

    def pod_near(self, cluster: ClusterSpec) -> Pod:
        """A pod on the last node of the cluster's first location."""
        return pods_of(self.lab, cluster, cluster.locations[0].name)[-1]

    # ---- printing

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def title(self, text: str) -> None:
        self.say("")
        self.say(self._c("1;36", f"=== {text} ==="))

    def note(self, text: str) -> None:
        self.say(self._c("2", f"# {text}"))

    def output(self, text: str, limit: int = 60) -> None:
        lines = text.rstrip("\n").splitlines()
        for line in lines[:limit]:
            self.say(f"    {line}")
        if len(lines) > limit:
            self.say(f"    ... ({len(lines) - limit} more lines)")

    def env(self) -> dict[str, str]:
        """The admin shell's environment: KUBECONFIG1/2, SERVICECIDR1/2 (as in the talk),
        KUBECONFIG_<CLUSTER>, KUBECONFIG (the first cluster), kubectl and kgctl on PATH."""
        env = {
            "PATH": f"{self._bin}:{locate('kubectl').parent}:"
            f"{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "KUBECONFIG": str(self.lab.kubeconfig(self.c1.name)),
        }
        for k, c in enumerate(self.lab.spec.clusters, start=1):
            kc = str(self.lab.kubeconfig(c.name))
            env[f"KUBECONFIG{k}"] = kc
            env[f"SERVICECIDR{k}"] = str(c.service_cidr)
            env[f"KUBECONFIG_{c.name.upper().replace('-', '_')}"] = kc
        return env

    def sh(
        self,
        host: str,
        script: str,
        *,
        show: bool = True,
        input: str | None = None,
        shown: str | None = None,
        timeout: float = 120,
        limit: int = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``sh -c`` in ``host``'s namespace, printing it and its output."""
        if show:
            text = shown if shown is not None else script
            first, *rest = text.splitlines() or [""]
            self.say(self._c("1", f"[{host}] $ {first}"))
            for line in rest:
                self.say(self._c("1", f"  {line}"))
        # stderr into stdout, so that the output reads in the order it was printed
        proc = self.lab.exec(
            host, ["sh", "-c", f"exec 2>&1\n{script}"], input=input, env=self.env(), timeout=timeout
        )
        if show:
            self.output(proc.stdout, limit)
        return proc

    # ---- checks

    def check(self, act: str, name: str, fn: Callable[[], str | None]) -> bool:
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            ok = True
        except Exception as e:  # noqa: BLE001  (any failure is the check's result)
            ok, detail = False, (str(e) or type(e).__name__).strip()
        dt = time.monotonic() - t0
        self.checks.append(Check(act, name, ok, dt, detail))
        mark = self._c("1;32", "PASS") if ok else self._c("1;31", "FAIL")
        self.say(f"{mark} {name} ({dt:.1f} s){': ' + detail if detail else ''}")
        return ok

    def failed(self, act: str | None = None) -> list[Check]:
        return [c for c in self.checks if not c.ok and (act is None or c.act == act)]

    def of(self, act: str) -> list[Check]:
        return [c for c in self.checks if c.act == act]

    # ---- act 1: the mesh

    def act1(self) -> None:
        lab, c1 = self.lab, self.c1
        self.title(
            f"Act 1: the mesh. Cluster {c1.name} over {len(c1.locations)} locations "
            f"({', '.join(loc.name for loc in c1.locations)}), granularity "
            f"{c1.granularity}"
        )
        self.sh("admin", "kubectl get nodes -L topology.kubernetes.io/region")
        found: list[str] = []

        def who_leads() -> str:
            found[:] = leaders(lab, c1.name)
            if not found:
                raise CheckFailed("no node holds WireGuard tunnels")
            if c1.granularity == "location":
                locs = sorted({lab.spec.node(n).location for n in found})
                if len(found) != len(c1.locations) or len(locs) != len(c1.locations):
                    raise CheckFailed(f"leaders {found}: want one per location")
            return f"leaders: {', '.join(found)}"

        self.check(
            "1",
            "one leader per location"
            if c1.granularity == "location"
            else "every node holds tunnels",
            who_leads,
        )
        leader = found[0] if found else c1.nodes[0].name
        followers = [n.name for n in c1.nodes if n.name not in found]
        self.note(f"{leader} is a leader: its WireGuard device (wireguard-go) as `wg` sees it")
        self.say(self._c("1", f"[{leader}] $ wg showconf kilo0"))
        live_text = lab.wg(leader, "showconf", "kilo0", check=False)
        self.output(_redact(live_text.stdout + live_text.stderr))
        self.sh("admin", f"kgctl showconf node {leader}")
        if followers:
            self.sh("admin", f"kgctl showconf node {followers[0]}")

        def same_conf() -> str:
            def matches() -> bool:
                live = parse_wg(lab.wg(leader, "showconf", "kilo0").stdout)
                want = parse_wg(lab.kgctl(c1.name, "showconf", "node", leader).stdout)
                return wg_peers(live) == wg_peers(want) and bool(live.peers)

            wait_for(f"{leader}: wg showconf kilo0 == kgctl showconf node", matches, 20)
            live = parse_wg(lab.wg(leader, "showconf", "kilo0").stdout)
            return f"{len(live.peers)} WireGuard peer(s)"

        self.check(
            "1", f"{leader}'s wg showconf kilo0 equals kgctl showconf node {leader}", same_conf
        )
        a, b = self.pod_near(c1), self.pod_far(c1)
        self.note(
            f"pod {a.name} (node {a.node}, {lab.spec.node(a.node).location}) pings pod "
            f"{b.name} (node {b.node}, {lab.spec.node(b.node).location})"
        )
        with contextlib.suppress(CheckFailed):
            wait_for("first ping", lambda: lab.ping(a.name, b.address, wait=0.5), self.timeout)
        self.sh(a.name, f"ping -c 2 -W 1 {b.address}", shown=f"ping -c 2 {b.address}")
        pairs = [
            (x.name, y.name)
            for x, y in itertools.permutations(pods_of(lab, c1), 2)
            if lab.spec.node(x.node).location != lab.spec.node(y.node).location
        ]

        def across() -> str:
            bad = unreachable_pairs(lab, pairs, self.timeout)
            if bad:
                raise CheckFailed(f"no reply: {', '.join(f'{x}->{y}' for x, y in bad)}")
            return f"{len(pairs)}/{len(pairs)} pod pairs across locations"

        self.check("1", "pods ping across clouds", across)

    # ---- act 2: peers

    def act2(self) -> None:
        lab, c1 = self.lab, self.c1
        self.title("Act 2: peers. A laptop and a bare-metal server join the mesh")
        laptop = self.peer_name("laptop")
        bare = self.peer_name("bare-metal-1", exclude=laptop)
        if laptop is None:
            self.check("2", "a laptop peer in the lab", lambda: _fail("the lab has no peers"))
            return
        web = self.pod_far(c1)
        self.join_peer("2", laptop, CLIENT_PEER, CLIENT_IP, endpoint=False)
        url = _url(web.address, WEB_PORT)
        self.note(f"pod {web.name} on node {web.node} serves HTTP on {web.address}:{WEB_PORT}")
        self.start_server(web.name, web.address, WEB_PORT)

        def curl_pod() -> str:
            took = wait_http(lab, laptop, url, self.timeout)
            return f"HTTP 200 after {took:.1f} s"

        ok = self.check("2", f"{laptop} curls pod {web.name} ({web.address})", curl_pod)
        if ok:
            self.sh(laptop, f"curl -sS -m 5 {url} | head -n 3")
        if bare is None:
            return
        bm = self.join_peer("2", bare, bare, BARE_METAL_IP, endpoint=True)
        self.note(f"{bare} serves HTTP on its WireGuard address {bm.ip}:{BARE_METAL_PORT}")
        self.start_server(bare, bm.ip, BARE_METAL_PORT)
        self.note(
            "the cluster gets a Service without a selector and its Endpoints, as in the "
            "talk, and the EndpointSlice that kube-controller-manager would mirror from "
            "them (the lab runs none; kube-proxy reads EndpointSlices)"
        )
        manifest = yaml.safe_dump_all(
            _service_docs(bare, [bm.ip], BARE_METAL_PORT), sort_keys=False
        )
        self.sh(
            "admin",
            "kubectl apply -f -",
            input=manifest,
            shown=f"cat <<'EOF' | kubectl apply -f -\n{manifest}EOF",
        )
        svc_ip = lab.kubectl(
            c1.name, "get", "service", bare, "-o", "jsonpath={.spec.clusterIP}", check=False
        ).stdout.strip()
        self.sh("admin", f"kubectl get service {bare}")
        client = self.pod_near(c1)

        def via_service() -> str:
            if not svc_ip:
                raise CheckFailed(f"Service {bare} has no ClusterIP")
            took = wait_http(lab, client.name, f"http://{svc_ip}:{BARE_METAL_PORT}/", self.timeout)
            return f"ClusterIP {svc_ip}:{BARE_METAL_PORT} -> {bm.ip}: HTTP 200 after {took:.1f} s"

        ok = self.check("2", f"pod {client.name} reaches {bare} via Service {bare}", via_service)
        if ok:
            self.note(
                "the cluster has no DNS here, so the talk's "
                f"`curl http://{bare}.default.svc.cluster.local` uses the ClusterIP"
            )
            self.sh(client.name, f"curl -sS -m 5 http://{svc_ip}:{BARE_METAL_PORT}/ | head -n 3")

    def join_peer(
        self, act: str, host: str, peer: str, address: str, *, endpoint: bool
    ) -> PeerHost:
        """Make ``host`` a WireGuard peer of the first cluster: a key, the Peer applied with
        kubectl, wireguard-go configured from ``kgctl showconf peer``, address and routes."""
        lab, c1 = self.lab, self.c1
        ph = PeerHost(host=host, peer=peer, address=address, private_key=generate_private_key())
        self.peer_hosts[peer] = ph
        spec: dict[str, Any] = {
            "allowedIPs": [address],
            "publicKey": key_str(ph.public_key),
            "persistentKeepalive": KEEPALIVE,
        }
        if endpoint:
            spec["endpoint"] = {"dnsOrIP": {"ip": _peer_ip(lab, host)}, "port": WG_PORT}
        doc = {
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": peer},
            "spec": spec,
        }
        text = yaml.safe_dump(doc, sort_keys=False)
        self.note(f"{host}: a WireGuard key pair; its public key goes into a Peer `{peer}`")

        def apply() -> str:
            proc = self.sh(
                "admin",
                "kubectl apply -f -",
                input=text,
                shown=f"cat <<'EOF' | kubectl apply -f -\n{text}EOF",
            )
            if proc.returncode != 0:
                raise CheckFailed(f"kubectl apply: {proc.stdout.strip()}")
            return ""

        self.check(act, f"Peer {peer} applied with kubectl", apply)
        conf_text: list[str] = [""]

        def showconf() -> str:
            keys = node_keys(lab, c1.name)
            want = {keys[n] for n in leaders(lab, c1.name) if n in keys}

            def ready() -> bool:
                proc = lab.kgctl(c1.name, "showconf", "peer", peer, check=False)
                conf_text[0] = proc.stdout
                if proc.returncode != 0 or not proc.stdout.strip():
                    return False
                return want <= {p.public_key for p in parse_wg(proc.stdout).peers}

            wait_for(f"kgctl showconf peer {peer}: a [Peer] per leader", ready, 20)
            self.sh("admin", f"kgctl showconf peer {peer}")
            n = len(parse_wg(conf_text[0]).peers)
            return f"{n} [Peer] section(s): the {len(want)} leader(s)" + (
                f" and {n - len(want)} peer(s) with an endpoint" if n > len(want) else ""
            )

        self.check(act, f"kgctl showconf peer {peer}", showconf)

        def configure() -> str:
            from kilo.dataplane.wgdevice import UserspaceDevice

            conf = parse_wg(conf_text[0])
            if not conf.peers:
                raise CheckFailed("no configuration to apply")
            path = self.work / f"{host}.conf"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(
                    f"[Interface]\nPrivateKey = {key_str(ph.private_key)}\n"
                    f"ListenPort = {WG_PORT}\n\n{conf_text[0]}"
                )
            dev = UserspaceDevice(WG_IFACE, netns=lab.ns(host))
            dev.start()
            ph.device = dev
            self.note(
                f"{host}: wireguard-go {WG_IFACE} (kilo.dataplane.wgdevice.UserspaceDevice),"
                f" then its config: PrivateKey + ListenPort + what kgctl printed"
            )
            self.say(self._c("1", f"[{host}] $ wg setconf {WG_IFACE} {path}"))
            out = netns.run(dev.wg_argv("setconf", WG_IFACE, str(path)), check=False)
            if out.returncode != 0:
                raise CheckFailed(f"wg setconf: {out.stderr.strip()}")
            ph.routes = sorted(allowed_ips(conf), key=_net_key)
            script = (
                f"ip address add {address} dev {WG_IFACE} && ip link set {WG_IFACE} up && "
                f"for ip in {' '.join(ph.routes)}; do ip route add $ip dev {WG_IFACE}; done"
            )
            proc = self.sh(host, script, shown=script.replace(" && for", " &&\nfor"))
            if proc.returncode != 0:
                raise CheckFailed(f"addresses/routes: {proc.stdout.strip()}")
            return f"{len(conf.peers)} peer(s), {len(ph.routes)} route(s)"

        self.check(act, f"{host} configured from kgctl showconf peer {peer}", configure)
        return ph

    def start_server(self, host: str, ip: str, port: int) -> None:
        """A tiny HTTP server (``kilo.lab.httpd``) on ``ip:port`` in ``host``, in the
        background; it answers when this returns."""
        text = f"hello from {host} ({ip})"
        argv = [sys.executable, "-m", "kilo.lab.httpd", str(port), "--bind", ip, "--text", text]
        self.say(self._c("1", f"[{host}] $ python3 -m kilo.lab.httpd {port} --bind {ip} &"))
        proc = self.lab.popen(
            host,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.servers.append(proc)
        url = _url(ip, port)
        wait_for(
            f"HTTP server on {host}",
            lambda: http_code(self.lab, host, url) == "200" or proc.poll() is not None,
            15,
            0.1,
        )
        if proc.poll() is not None:
            raise LabError(f"the HTTP server on {host} ({url}) exited with {proc.returncode}")

    # ---- act 3: multi-cluster

    def act3(self) -> None:
        lab, c1, c2 = self.lab, self.c1, self.c2
        if c2 is None:
            self.check("3", "a second cluster", lambda: _fail("the lab has only one cluster"))
            return
        self.title(f"Act 3: multi-cluster. {c1.name} and {c2.name}, each with CIDRs of its own")
        for k, c in enumerate((c1, c2), start=1):
            self.note(
                f"{c.name}: pods {c.pod_cidr}, services {c.service_cidr} "
                f"($SERVICECIDR{k}), kg --subnet {c.subnet}, "
                f"locations {', '.join(loc.name for loc in c.locations)}"
            )
        self.sh(
            "admin", "kubectl --kubeconfig $KUBECONFIG2 get nodes -L topology.kubernetes.io/region"
        )
        self.note(
            "every node of one cluster becomes a Peer of the other (the talk's loop); "
            "a node that is not a leader prints so, and kubectl then has nothing to apply"
        )
        if c1.granularity == "location" and len(c1.locations) > 1:
            self.note(
                f"each leader of {c1.name} brings $SERVICECIDR1 along: {c2.name} routes "
                f"it to one of them, and kgctl warns about the others"
            )
        for ka, kb in ((1, 2), (2, 1)):
            src, dst = (c1, c2) if ka == 1 else (c2, c1)
            loop = (
                f"for n in $(kubectl --kubeconfig $KUBECONFIG{ka} get no -o name | "
                f"cut -d'/' -f2); do\n"
                f"  kgctl --kubeconfig $KUBECONFIG{ka} showconf node $n --as-peer -o yaml "
                f"--allowed-ips $SERVICECIDR{ka} | kubectl --kubeconfig $KUBECONFIG{kb} "
                f"apply -f -\ndone"
            )
            self.sh("admin", loop)

            def exported(src: ClusterSpec = src, dst: ClusterSpec = dst) -> str:
                want = set(leaders(lab, src.name))
                _, peers = cluster_objects(lab, dst.name)
                have = {p["metadata"]["name"] for p in peers} & {n.name for n in src.nodes}
                if not want or have != want:
                    raise CheckFailed(f"Peers in {dst.name}: {sorted(have)}; want {sorted(want)}")
                return f"{len(want)} Peer(s): {', '.join(sorted(want))}"

            self.check("3", f"{src.name}'s leaders are Peers of {dst.name}", exported)
        self.sh("admin", "kubectl --kubeconfig $KUBECONFIG2 get peers")
        a, b = self.pod_near(c1), self.pod_far(c2)

        def pod_to_pod() -> str:
            took = wait_for(
                f"{a.name} -> {b.name}", lambda: lab.ping(a.name, b.address, wait=0.5), self.timeout
            )
            return f"reply after {took:.1f} s"

        ok = self.check(
            "3", f"pod {a.name} ({c1.name}) pings pod {b.name} ({c2.name}, {b.address})", pod_to_pod
        )
        if ok:
            self.sh(a.name, f"ping -c 2 -W 1 {b.address}", shown=f"ping -c 2 {b.address}")

        def back() -> str:
            took = wait_for(
                f"{b.name} -> {a.name}", lambda: lab.ping(b.name, a.address, wait=0.5), self.timeout
            )
            return f"reply after {took:.1f} s"

        self.check("3", f"pod {b.name} ({c2.name}) pings pod {a.name} ({c1.name})", back)
        svc = "web"
        self.note(f"{c2.name}: pod {b.name} serves HTTP, behind Service {svc}")
        self.start_server(b.name, b.address, WEB_PORT)
        manifest = yaml.safe_dump_all(
            _service_docs(svc, [b.address], WEB_PORT, with_endpoints=False), sort_keys=False
        )
        self.sh(
            "admin",
            "kubectl --kubeconfig $KUBECONFIG2 apply -f -",
            input=manifest,
            shown=f"cat <<'EOF' | kubectl --kubeconfig $KUBECONFIG2 apply -f -\n{manifest}EOF",
            limit=10,
        )
        svc_ip = lab.kubectl(
            c2.name, "get", "service", svc, "-o", "jsonpath={.spec.clusterIP}", check=False
        ).stdout.strip()
        self.sh("admin", f"kubectl --kubeconfig $KUBECONFIG2 get service {svc}")

        def via_service() -> str:
            if not svc_ip:
                raise CheckFailed(f"Service {svc} in {c2.name} has no ClusterIP")
            took = wait_http(lab, a.name, _url(svc_ip, WEB_PORT), self.timeout)
            return f"ClusterIP {svc_ip} -> {b.address}: HTTP 200 after {took:.1f} s"

        ok = self.check(
            "3", f"pod {a.name} ({c1.name}) reaches Service {svc} of {c2.name}", via_service
        )
        if ok:
            self.sh(a.name, f"curl -sS -m 5 {_url(svc_ip, WEB_PORT)} | head -n 3")

    # ---- graphs

    def graphs(self, out_dir: pathlib.Path) -> list[pathlib.Path]:
        """``kgctl graph --format svg`` of every cluster into ``out_dir/<lab>-<cluster>.svg``."""
        self.title("The mesh of each cluster, rendered by Graphviz")
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: list[pathlib.Path] = []
        for k, c in enumerate(self.lab.spec.clusters, start=1):
            path = out_dir / f"{self.lab.name}-{c.name}.svg"
            paths.append(path)

            def render(c: ClusterSpec = c, k: int = k, path: pathlib.Path = path) -> str:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                proc = self.sh(
                    "admin",
                    f"kgctl --kubeconfig $KUBECONFIG{k} graph --format svg "
                    f"> {shlex.quote(str(path))} && ls -l {shlex.quote(str(path))}",
                )
                if proc.returncode != 0:
                    raise CheckFailed(f"kgctl graph: {proc.stdout.strip()}")
                text = html.unescape(path.read_text(errors="replace"))
                missing = [n.name for n in c.nodes if n.name not in text]
                if "<svg" not in text or missing:
                    raise CheckFailed(f"{path}: not an SVG of the mesh (missing {missing})")
                return str(path)

            self.check("graph", f"kgctl graph --format svg ({c.name})", render)
        return paths

    # ---- the end

    def close(self) -> None:
        """Stop what the story started (HTTP servers, the peers' wireguard-go)."""
        for proc in self.servers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.servers.clear()
        for ph in self.peer_hosts.values():
            if ph.device is not None:
                with contextlib.suppress(Exception):
                    ph.device.close()
                ph.device = None

    def summary(self) -> str:
        return summary_table(self.checks)


# --- helpers ------------------------------------------------------------------------------


def _url(ip: str, port: int) -> str:
    return f"http://{ip}/" if port == 80 else f"http://{ip}:{port}/"


def _fail(msg: str) -> str:
    raise CheckFailed(msg)


def _net_key(s: str) -> tuple[int, int]:
    n = ipaddress.ip_network(s)
    return int(n.network_address), n.prefixlen


def _redact(text: str) -> str:
    return "\n".join(
        "PrivateKey = (hidden)" if line.startswith("PrivateKey") else line
        for line in text.splitlines()
    )


def _peer_ip(lab: Lab, host: str) -> str:
    for p in lab.spec.peers:
        if p.name == host:
            return str(p.public_ip)
    raise LabError(f"no peer {host!r} in the lab")


def _service_docs(
    name: str, ips: Sequence[str], port: int, with_endpoints: bool = True
) -> list[dict[str, Any]]:
    """A selector-less Service, (optionally) its v1 Endpoints as in the talk, and the
    EndpointSlice kube-proxy reads (which the absent controller manager would mirror)."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
        }
    ]
    if with_endpoints:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": name},
                "subsets": [
                    {
                        "addresses": [{"ip": ip} for ip in ips],
                        "ports": [{"name": "http", "port": port}],
                    }
                ],
            }
        )
    docs.append(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        }
    )
    return docs


def summary_table(checks: Sequence[Check]) -> str:
    rows = [("act", "check", "result", "time")]
    rows += [
        (ACTS.get(c.act, c.act), c.name, "pass" if c.ok else "FAIL", f"{c.seconds:.1f} s")
        for c in checks
    ]
    w = [min(max(len(r[i]) for r in rows), 70) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        name = r[1] if len(r[1]) <= w[1] else r[1][: w[1] - 1] + "~"
        lines.append(f"{r[0]:<{w[0]}}  {name:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}")
        if i == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def leftovers(name: str, pids: Iterable[int] = ()) -> list[str]:
    """What of lab ``name`` still exists: namespaces, live processes, state directory."""
    out = [f"namespace {n}" for n in netns.names(f"kpy-{name}-")]
    out += [f"process {p}" for p in pids if netns.alive(p)]
    if state_dir(name).exists():
        out.append(f"directory {state_dir(name)}")
    return out


# --- the command --------------------------------------------------------------------------


class _Interrupted(BaseException):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    root = repo_root() or pathlib.Path.cwd()
    p = argparse.ArgumentParser(prog="kilo-demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the lab up afterwards (`kilo-lab down NAME` removes it)",
    )
    p.add_argument(
        "--lab",
        default=str(root / "lab" / "demo.yaml"),
        metavar="FILE",
        help="the lab description (default: lab/demo.yaml)",
    )
    p.add_argument(
        "--out",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "kilo-demo"),
        metavar="DIR",
        help="where the SVG graphs go (default: $TMPDIR/kilo-demo)",
    )
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = p.parse_args(argv)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    t_start = time.monotonic()

    def say(s: str) -> None:
        print(s, flush=True)

    data = load_yaml(args.lab)
    name = str(data.get("name", ""))
    raise_on((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), _Interrupted)
    say(f"Kilo in Python: the talk's three acts on lab {args.lab}")
    state = load_state(name)
    owner = (state or {}).get("owner") or {}
    if owner and owner.get("pid") != os.getpid() and netns.alive(owner["pid"], owner.get("start")):
        say(
            f"[lab] lab {name!r} is up and held by process {owner['pid']} (another demo or "
            f"`kilo-lab up`); stop it or run `kilo-lab down {name}` first"
        )
        return 2
    if state is not None or netns.names(f"kpy-{name}-"):
        say(f"[lab] a previous lab {name!r} (kept or left over) is still there; removing it first")
        teardown(name, progress=lambda m: say(f"[lab] {m}"))
    lab = Lab(data, progress=lambda m: say(f"[lab] {m}"))
    story: Story | None = None
    checks: list[Check] = []
    interrupted: str | None = None
    pids: list[int] = []
    graphs: list[pathlib.Path] = []
    phase = "lab up"
    try:
        say(
            f"[lab] bringing up {name}: {len(lab.spec.clusters)} cluster(s), "
            f"{len(lab.spec.nodes)} nodes, {len(lab.spec.peers)} peers (about 20 s)"
        )
        t0 = time.monotonic()
        lab.up()
        checks.append(
            Check(
                "lab",
                f"lab {name} up ({len(lab.spec.nodes)} nodes, "
                f"{len(lab.pods)} pods, kg on every node)",
                True,
                time.monotonic() - t0,
            )
        )
        story = Story(lab, say=say, color=color)
        story.checks = checks
        phase = "the acts"
        story.act1()
        story.act2()
        story.act3()
        graphs = story.graphs(pathlib.Path(args.out))
    except (KeyboardInterrupt, _Interrupted) as e:
        interrupted = str(e) or "SIGINT"
        say(f"\n[demo] interrupted ({interrupted})")
    except Exception as e:  # noqa: BLE001  (reported, then torn down)
        checks.append(Check("lab", f"{phase}: ran to the end", False, 0.0, str(e)))
        say(f"[demo] error: {e}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        keep = args.keep and interrupted is None and bool(lab.state)
        if story is not None and not keep:
            story.close()
        if keep:
            say(
                f"\n[lab] {name} stays up: `kilo-lab status`, `kilo-lab exec --lab {name} admin`, "
                f"`kilo-lab down {name}`"
            )
        else:
            pids = (
                [pid for ns in lab.state.get("namespaces", []) for pid in netns.pids(ns)]
                if lab.state
                else []
            )
            t0 = time.monotonic()
            say("")
            if lab.state or netns.names(f"kpy-{name}-"):  # (a failed `up` removed it already)
                lab.down()
            left = leftovers(name, pids)
            checks.append(
                Check(
                    "lab",
                    "torn down: no namespace, process or file left",
                    not left,
                    time.monotonic() - t0,
                    "; ".join(left),
                )
            )
    say("")
    say(summary_table(checks))
    say("")
    failed = [c for c in checks if not c.ok]
    total = time.monotonic() - t_start
    if interrupted:
        say(f"\ninterrupted after {total:.0f} s")
        return 130
    for g in graphs:
        if g.exists():
            say(f"graph: {g}")
    say(f"{len(checks) - len(failed)}/{len(checks)} checks passed in {total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
