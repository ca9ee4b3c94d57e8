"""The agent loop: cluster state in, WireGuard, routes, rules, firewall and CNI config out.

Events from the Kubernetes backend and a resync timer trigger a reconcile: translate the cached
Node and Peer objects, merge in the local node's own facts, compute the topology and plan (pure
core), and let each adapter change only what differs. A check-in timer refreshes the local
node's annotations. An API outage leaves the last applied state in place; a restart adopts the
running WireGuard device and finds nothing to change.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kilo import cni as cnilib
from kilo.firewall import ruleset
from kilo.hostinfo import HostAddress, choose_ips, host_addresses
from kilo.keys import generate_private_key, key_str, parse_key, public_key
from kilo.metrics import Registry
from kilo.model import (
    CHECK_IN_PERIOD_SECONDS,
    DEFAULT_CNI_PATH,
    DEFAULT_SUBNET,
    REGION_LABEL,
    Endpoint,
    Granularity,
    Node,
    Peer,
    Prefix,
    Problem,
)
from kilo.routes import Encapsulation, Interfaces, Strategy, routes
from kilo.topology import Topology, TopologyError, new_topology
from kilo.translate import node_annotations, node_from_object, peer_from_object
from kilo.wireguard import WgConf

log = logging.getLogger("kilo.agent")

#: How recent a handshake must be for its source address to count as a discovered endpoint.
NAT_HANDSHAKE_WINDOW = 180
#: Seconds between attempts after a failed check-in (an API outage), instead of a full period.
CHECK_IN_RETRY_SECONDS = 5.0


def unreachable_seconds(
    since: float, now: float, outages: list[tuple[float, float | None]]
) -> float:
    """How many seconds of [since, now] fall into the API server's outages (end None: still
    away). A node cannot check in while the API server is away, so that time does not count
    against its readiness: an outage alone never makes a working node look gone."""
    total = 0.0
    for start, end in outages:
        lo, hi = max(start, since), min(now if end is None else end, now)
        if hi > lo:
            total += hi - lo
    return total


@dataclass
class AgentConfig:
    hostname: str
    kubeconfig: str | None = None
    interface: str = "kilo0"
    port: int = 51820
    subnet: Prefix = DEFAULT_SUBNET
    granularity: Granularity = Granularity.LOCATION
    topology_label: str = REGION_LABEL
    local: bool = True
    encapsulation: Encapsulation = field(default_factory=Encapsulation)
    mtu: int | None = None  # None: auto (underlay MTU - 80)
    cni: bool = True
    cni_path: str = DEFAULT_CNI_PATH
    service_cidrs: list[Prefix] = field(default_factory=list)
    internal_cidrs: list[Prefix] = field(default_factory=list)
    resync_period: float = 30.0
    create_interface: bool = True
    clean_up: bool = False
    clean_up_interface: bool = False
    forward_rules: bool = False
    prioritise_private: bool = False
    private_key_path: str = "/var/lib/kilo/key"
    wireguard_mode: str = "auto"
    nft_table: str = "kilo"


def load_or_create_key(path: str) -> bytes:
    """The private key stored at ``path`` (mode 0600), made if missing or unreadable as a key."""
    p = Path(path)
    try:
        return parse_key(p.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError:
        log.warning(
            "the private key file %s does not hold a WireGuard key; generating a new one", path
        )
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_private_key()
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key_str(key) + "\n")
    os.replace(tmp, p)
    log.info("generated a new WireGuard private key in %s", path)
    return key


class Agent:
    def __init__(self, cfg: AgentConfig, backend: Any, device: Any, netlink: Any, nft: Any) -> None:
        self.cfg = cfg
        self.backend = backend
        self.device = device
        self.netlink = netlink
        self.nft = nft
        self.private_key = load_or_create_key(cfg.private_key_path)
        self.public_key = public_key(self.private_key)
        self.private_ip: HostAddress | None = None
        self.external_ip: HostAddress | None = None
        self.wireguard_ip: Prefix | None = None
        self.discovered: dict[str, Endpoint] = {}
        self.topology: Topology | None = None
        self.last_changes: list[str] = []
        self.last_reconcile_ok = False
        self._published: dict[str, str] | None = None
        self._last_checkin = 0.0
        self._checkin_ok = True
        self._problems_seen: set[str] = set()
        self._problems: list[Problem] = []  # values of the cluster's objects that could not be read
        self._refused: list[Problem] = []  # Peers' allowed IPs the topology refused
        self._translated: dict[tuple[str, str, str], tuple[Any, list[Any]]] = {}
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.metrics = Registry()
        self.m_leader = self.metrics.gauge("kilo_leader", "Leadership status of the node.")
        self.m_nodes = self.metrics.gauge("kilo_nodes", "Number of nodes in the mesh.")
        self.m_peers = self.metrics.gauge("kilo_peers", "Number of peers in the mesh.")
        self.m_reconciles = self.metrics.counter(
            "kilo_reconciles_total", "Number of reconciliation attempts."
        )
        self.m_errors = self.metrics.counter(
            "kilo_errors_total", "Number of errors that occurred while administering the mesh."
        )
        self.m_changes = self.metrics.counter(
            "kilo_reconcile_changes_total",
            "Changes made to devices, routes, rules and the firewall.",
        )
        self.m_problems = self.metrics.gauge(
            "kilo_object_problems", "Values of Node and Peer objects that could not be read."
        )
        self.m_handshake = self.metrics.gauge(
            "kilo_peer_last_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with a peer.",
        )
        self.m_rx = self.metrics.gauge(
            "kilo_peer_receive_bytes", "Bytes received from a WireGuard peer."
        )
        self.m_tx = self.metrics.gauge(
            "kilo_peer_transmit_bytes", "Bytes sent to a WireGuard peer."
        )

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.create_interface:
            for c in self.device.ensure():
                log.info("device: %s", c)
        if hasattr(self.device, "supervise"):
            self.device.on_restart = self.request_reconcile
            self.device.supervise()
        self.discover_ips()
        self.backend.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.backend.events.put(None)  # wake the loop now, not at the next event or resync

    def request_reconcile(self) -> None:
        self._dirty.set()

    def discover_ips(self) -> None:
        addrs = host_addresses()
        private, public = choose_ips(addrs, self.cfg.internal_cidrs, skip=(self.cfg.interface,))
        self.private_ip = private
        self.external_ip = (
            private if self.cfg.prioritise_private and private is not None else public
        )
        log.info(
            "private IP %s, public IP %s",
            f"{private.prefix} on {private.ifname}" if private else "none",
            f"{public.prefix} on {public.ifname}" if public else "none",
        )

    def run(self) -> None:
        """Until ``stop``: reconcile on events (debounced) and every resync period; check in."""
        next_resync = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = max(0.0, min(next_resync, self._next_checkin()) - now)
            try:
                self.backend.events.get(timeout=timeout)
                self._drain_events()
                time.sleep(0.05)  # let a burst of events arrive
                self._drain_events()
                self._dirty.set()
            except queue.Empty:
                pass
            if self._stop.is_set():
                break
            now = time.monotonic()
            if self._dirty.is_set() or now >= next_resync:
                self._dirty.clear()
                self.reconcile()
                if now >= next_resync:
                    next_resync = now + self.cfg.resync_period
            if time.monotonic() >= self._next_checkin():
                self.check_in()

    def _next_checkin(self) -> float:
        """Every check-in period; sooner after a failed one, so that the node is seen again
        soon after the API server returns."""
        return self._last_checkin + (
            CHECK_IN_PERIOD_SECONDS if self._checkin_ok else CHECK_IN_RETRY_SECONDS
        )

    def _drain_events(self) -> None:
        while True:
            try:
                self.backend.events.get_nowait()
            except queue.Empty:
                return

    def shutdown(self) -> None:
        """After ``run``: leave the data plane as it is (a restart drops nothing) unless clean-up
        was asked for, in which case remove everything we made."""
        self.backend.stop()
        if self.cfg.clean_up:
            for step, f in (("firewall", self.nft.remove), ("routes", self.netlink.remove_all)):
                try:
                    for c in f():
                        log.info("clean-up %s: %s", step, c)
                except Exception as e:  # noqa: BLE001 - clean up as much as we can
                    log.error("clean-up of %s failed: %s", step, e)
            try:
                self.backend.clean_up(self.cfg.hostname)
            except Exception as e:  # noqa: BLE001
                log.error("removing the node's annotations failed: %s", e)
        self.device.close(remove=self.cfg.clean_up and self.cfg.clean_up_interface)

    # -- reading the cluster -------------------------------------------------------------
    def _translate(self, kind: str, obj: dict[str, Any]) -> tuple[Any, list[Any]]:
        meta = obj.get("metadata") or {}
        k = (kind, str(meta.get("name")), str(meta.get("resourceVersion", "")))
        hit = self._translated.get(k)
        if hit is None:
            hit = (
                node_from_object(obj, self.cfg.topology_label)
                if kind == "Node"
                else peer_from_object(obj)
            )
            self._translated[k] = hit
        return hit

    def cluster(self) -> tuple[dict[str, Node], dict[str, Peer], Node | None]:
        nodes: dict[str, Node] = {}
        peers: dict[str, Peer] = {}
        problems = []
        seen_keys: set[tuple[str, str, str]] = set()
        for obj in self.backend.nodes():
            n, p = self._translate("Node", obj)
            seen_keys.add(
                ("Node", n.name, str((obj.get("metadata") or {}).get("resourceVersion", "")))
            )
            nodes[n.name] = n
            problems += p
        for obj in self.backend.peers():
            peer, p = self._translate("Peer", obj)
            meta = obj.get("metadata") or {}
            seen_keys.add(("Peer", str(meta.get("name")), str(meta.get("resourceVersion", ""))))
            problems += p
            if peer is not None:
                peers[peer.name] = peer
        self._translated = {k: v for k, v in self._translated.items() if k in seen_keys}
        self._problems = problems
        self.report()
        return nodes, peers, nodes.get(self.cfg.hostname)

    def report(self) -> None:
        """Export the number of current problems (unreadable values, refused claims); log each
        one once."""
        problems = self._problems + self._refused
        self.m_problems.set(len(problems))
        for pr in problems:
            if str(pr) not in self._problems_seen:
                self._problems_seen.add(str(pr))
                log.warning("ignoring a bad value: %s", pr)

    def refused_claims(self, peers: dict[str, Peer], t: Topology) -> list[Problem]:
        """The Peers' allowed IPs the topology refused (inside the mesh's own addresses, or
        claimed by another peer first), as problems to report."""
        kept = {p.name: {str(a) for a in p.allowed_ips} for p in t.peers}
        out = []
        for name, p in sorted(peers.items()):
            for a in p.allowed_ips:
                if str(a) not in kept.get(name, set()):
                    out.append(
                        Problem(
                            "Peer",
                            name,
                            "spec.allowedIPs",
                            str(a),
                            "lies in a node's pod CIDR, internal IP or WireGuard IP, or "
                            "another peer claims it; ignored",
                        )
                    )
        return out

    def local_node(self, api: Node) -> Node:
        """The local node as the agent knows it: the API's view plus our key, IPs and state."""
        endpoint = api.endpoint
        if endpoint is None or not endpoint.ready():
            endpoint = (
                Endpoint(self.cfg.port, self.external_ip.prefix.ip) if self.external_ip else None
            )
        internal = api.internal_ip
        if internal is None and not api.no_internal_ip and self.private_ip is not None:
            internal = self.private_ip.prefix
        # until our first topology, the WireGuard IP the API holds (a restarted agent would
        # otherwise clear it for a moment, and every other agent would see the node change)
        wireguard_ip = self.wireguard_ip if self.topology is not None else api.wireguard_ip
        return replace(
            api,
            endpoint=endpoint,
            key=self.public_key,
            internal_ip=internal,
            last_seen=int(time.time()),
            wireguard_ip=wireguard_ip,
            discovered_endpoints=dict(self.discovered),
            granularity=self.cfg.granularity,
        )

    # -- writing back ----------------------------------------------------------------------
    def publish(self, node: Node, force: bool = False) -> bool:
        """Write the local node's annotations if they differ from the last written (always
        with ``force``); False if the API server refused or could not be reached."""
        ann = node_annotations(node)
        comparable = {k: v for k, v in ann.items() if not k.endswith("/last-seen")}
        if not force and comparable == self._published:
            return True
        try:
            self.backend.set_node_annotations(self.cfg.hostname, ann)
        except Exception as e:  # noqa: BLE001 - the API may be away; retry at the next check-in
            self.m_errors.inc(event="local")
            if self._checkin_ok:
                log.error("failed to update the local node's annotations: %s", e)
            else:
                log.debug("still failing to update the local node's annotations: %s", e)
            self._checkin_ok = False
            return False
        if not self._checkin_ok:
            log.info("updated the local node's annotations again")
        self._published = comparable
        self._last_checkin = time.monotonic()
        self._checkin_ok = True
        return True

    def check_in(self) -> None:
        self._last_checkin = time.monotonic()  # one attempt per period (or retry interval)
        with self._lock:
            for obj in self.backend.nodes():
                if (obj.get("metadata") or {}).get("name") == self.cfg.hostname:
                    self.publish(
                        self.local_node(node_from_object(obj, self.cfg.topology_label)[0]),
                        force=True,
                    )

    # -- reconcile -------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        with self._lock:
            self.m_reconciles.inc()
            changes: list[str] = []  # filled as we go: a failure later keeps what was done
            try:
                self._reconcile(changes)
                self.last_reconcile_ok = True
            except Exception as e:
                changes += getattr(e, "changes", None) or []  # e.g. routes made before a failure
                self.last_reconcile_ok = False
                self.m_errors.inc(event="apply")
                log.exception("reconcile failed: %s", e)
            self.last_changes = changes
            if changes:
                self.m_changes.inc(len(changes))
                for c in changes:
                    log.info("changed: %s", c)
            return changes

    def _reconcile(self, changes: list[str]) -> list[str]:
        nodes, peers, api_self = self.cluster()
        if api_self is None:
            log.warning("node %s is not in the cluster (yet); nothing to do", self.cfg.hostname)
            return []
        me = self.local_node(api_self)
        self.publish(me)
        nodes[me.name] = me
        if self.cfg.cni:
            changes += self.update_cni(me)
        if (
            self.cfg.encapsulation.strategy is not Strategy.NEVER
            and self.private_ip is not None
            and not self.cfg.encapsulation.compatibility
        ):
            from kilo.dataplane import ipip

            changes += ipip.ensure(me.subnet)
        ready = self.ready_nodes(nodes)
        ready_peers = {k: p for k, p in peers.items() if p.ready()}
        self.m_nodes.set(len(ready))
        self.m_peers.set(len(ready_peers))
        if me.name not in ready:
            log.warning(
                "the local node is not ready (endpoint %s, pod CIDR %s); waiting",
                me.endpoint,
                me.subnet,
            )
            return changes
        self.discovered = self.discover_nat_endpoints(ready, ready_peers)
        me = replace(me, discovered_endpoints=dict(self.discovered))
        ready[me.name] = me
        port = me.endpoint.port if me.endpoint is not None else self.cfg.port
        try:
            t = new_topology(
                ready,
                ready_peers,
                self.cfg.granularity,
                me.name,
                port,
                self.private_key,
                self.cfg.subnet,
                self.cfg.service_cidrs,
                me.persistent_keepalive,
            )
        except TopologyError as e:
            self.m_errors.inc(event="apply")
            log.error("cannot compute the topology, leaving the data plane as it is: %s", e)
            return changes
        self.topology = t
        self._refused = self.refused_claims(ready_peers, t)
        self.report()
        self.m_leader.set(1 if t.leader else 0)
        self.wireguard_ip = t.wireguard_cidr if t.leader else None
        mtu = self.cfg.mtu
        if mtu is None:
            from kilo.dataplane.wgdevice import auto_mtu

            mtu = auto_mtu()
        if t.leader:
            changes += self.device.apply(t.conf())
            changes += self.device.configure_link([t.wireguard_cidr], mtu)
        else:
            changes += self.device.apply(WgConf(private_key=self.private_key, listen_port=port))
            changes += self.device.configure_link([], mtu)
        changes += self.nft.apply(
            ruleset(t, self.cfg.cni, self.cfg.forward_rules, self.cfg.nft_table)
        )
        ifs = Interfaces(
            kilo=self.cfg.interface,
            private=self.private_ip.ifname if self.private_ip is not None else self.cfg.interface,
            tunnel="tunl0",
        )
        rs, rules = routes(t, ifs, self.cfg.local, self.cfg.encapsulation)
        changes += self.netlink.reconcile(rs, rules)
        self.publish(replace(me, wireguard_ip=self.wireguard_ip))
        self.update_peer_metrics()
        return changes

    def ready_nodes(self, nodes: dict[str, Node]) -> dict[str, Node]:
        """Kilo's readiness, except that time in which the API server could not be reached is
        not held against a node's last check-in (it could not check in either)."""
        now = time.time()
        outages: list[tuple[float, float | None]] = []
        if hasattr(self.backend, "outages"):
            outages = self.backend.outages()
        ready = {}
        for k, n in nodes.items():
            credit = unreachable_seconds(float(n.last_seen), now, outages) if outages else 0.0
            if n.ready(int(now - credit)):
                ready[k] = n
        return ready

    def discover_nat_endpoints(
        self, nodes: dict[str, Node], peers: dict[str, Peer]
    ) -> dict[str, Endpoint]:
        """Where handshakes with NATed nodes and peers (keepalive > 0) really come from."""
        try:
            states = {p.public_key: p for p in self.device.peers()}
        except Exception:  # noqa: BLE001 - no device yet: nothing discovered
            return {}
        out: dict[str, Endpoint] = {}
        now = time.time()
        for key, keepalive, ep in [
            (n.key, n.persistent_keepalive, n.endpoint) for n in nodes.values()
        ] + [(p.public_key, p.persistent_keepalive, p.endpoint) for p in peers.values()]:
            st = states.get(key) if key is not None else None
            if (
                st is None
                or not keepalive
                or st.endpoint is None
                or now - st.last_handshake > NAT_HANDSHAKE_WINDOW
            ):
                continue
            ip, port = st.endpoint
            if ep is None or ep.ip != ip or ep.port != port:
                out[key_str(key)] = Endpoint(port, ip)  # type: ignore[arg-type]
        return out

    def update_cni(self, me: Node) -> list[str]:
        if me.subnet is None:
            return []
        path = Path(self.cfg.cni_path)
        try:
            conf = json.loads(path.read_text())
        except FileNotFoundError:
            conf = cnilib.default_conflist()
        except (OSError, ValueError) as e:
            log.warning("the CNI config %s is unreadable (%s); writing the default", path, e)
            conf = cnilib.default_conflist()
        if cnilib.pod_cidr_of(conf) == str(me.subnet.network) and path.exists():
            return []
        new = cnilib.with_pod_cidr(conf, me.subnet)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(new, indent=2) + "\n")
        os.replace(tmp, path)
        return [f"set pod CIDR {me.subnet.network} in {path}"]

    def update_peer_metrics(self) -> None:
        try:
            states = self.device.peers()
        except Exception:  # noqa: BLE001
            return
        names: dict[bytes, str] = {}
        if self.topology is not None:
            for s in self.topology.segments:
                if s.key is not None:
                    names[s.key] = s.hostnames[s.leader]
            for p in self.topology.peers:
                if p.public_key is not None:
                    names[p.public_key] = p.name
        now = time.time()
        for m in (self.m_handshake, self.m_rx, self.m_tx):
            m.clear()
        for st in states:
            name = names.get(st.public_key, key_str(st.public_key))
            if st.last_handshake:
                self.m_handshake.set(round(now - st.last_handshake, 3), peer=name)
            self.m_rx.set(st.rx_bytes, peer=name)
            self.m_tx.set(st.tx_bytes, peer=name)
