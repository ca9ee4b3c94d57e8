"""The agent's loop: read, plan, apply, publish; nothing else is computed here.

Events from the cluster backend (debounced) and a resync timer trigger a reconcile: read the
cluster (translated once per object version) and the node's own facts, compute the plan (pure,
``kilo.plan``), apply it through the ports one part at a time (``kilo.apply``), publish the
node's own annotations (``kilo.publisher``). A check-in timer refreshes ``last-seen``. An API
outage leaves the last applied state in place; a restart adopts the running WireGuard device
and finds nothing to change. All time comes from the ``Clock`` port, so the loop is tested
through fakes (tests/unit/test_agent_loop.py).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kilo.apply import Applied, apply_plan
from kilo.cache import ObjectCache
from kilo.events import Told
from kilo.hostinfo import HostAddress, choose_ips
from kilo.keys import Key
from kilo.leadership import LeaseChange, Liveness
from kilo.leases import RENEW_PERIOD_SECONDS, Lease, lease_from_object, lease_object
from kilo.metrics import AgentMetrics
from kilo.model import REGION_LABEL, Prefix
from kilo.plan import (
    LocalFacts,
    Outage,
    Plan,
    Settings,
    Status,
    facts_key,
    next_expiry,
    node_ready,
    plan,
    ready_nodes,
)
from kilo.ports import (
    Clock,
    ClusterBackend,
    EventSink,
    Files,
    Firewall,
    Host,
    NoEvents,
    NoProber,
    Prober,
    RoutingTables,
    SystemClock,
    WireGuardDevice,
)
from kilo.problems import ProblemLog
from kilo.publisher import Publisher
from kilo.rekeyed import rekeyed
from kilo.rotation import RotationSchedule
from kilo.topology import Topology
from kilo.wgstate import PeerState
from kilo.wireguard import WgConf

log = logging.getLogger("kilo.agent")

#: After an event, how long to wait for the rest of a burst before reconciling.
DEBOUNCE_SECONDS = 0.05


def settle_heap(full: bool = True) -> None:
    """Take what is alive now (the cache's translated objects above all) out of the garbage
    collector's way: collect once, then freeze the survivors. The collector then never walks
    them again; without this, the full collections the plan's allocations trigger walk every
    cached Node and prefix, and grow with the cluster (at 5,000 nodes a third of the plan's
    time). Frozen objects are still freed as soon as nothing refers to them. ``full``: unfreeze
    first and collect everything, so garbage cycles among earlier survivors are collected too
    (tens of milliseconds at 1,000 nodes: at the resync); else collect only the young
    generations, what came since (a change between resyncs). Called after a read that changed
    the cache (the pure core never touches the collector)."""
    if full:
        gc.unfreeze()
        gc.collect()
        _trim()
    else:
        gc.collect(1)
    gc.freeze()


def _load_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc: the memory stays with the allocator
        return None


_MALLOC_TRIM = _load_trim()


def _trim() -> None:
    """Give the C allocator's free pages back to the system (glibc's ``malloc_trim``): what a
    listing or a plan freed otherwise stays in the process's resident memory."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True)
class AgentConfig:
    settings: Settings
    topology_label: str = REGION_LABEL
    internal_cidrs: tuple[Prefix, ...] = ()
    resync_period: float = 30.0
    create_interface: bool = True
    clean_up: bool = False
    clean_up_interface: bool = False
    lease_namespace: str = "kube-system"
    key_rotation_period: float = 0.0  # seconds between key rotations; 0: only when asked


@dataclass
class Ports:
    backend: ClusterBackend
    device: WireGuardDevice
    routes: RoutingTables
    firewall: Firewall
    host: Host
    files: Files
    clock: Clock = field(default_factory=SystemClock)
    prober: Prober = field(default_factory=NoProber)
    event_sink: EventSink = field(default_factory=NoEvents)


@dataclass(frozen=True)
class ProbeChange:
    """A wake-up from the prober: a target went silent or answers again."""


class Agent:
    def __init__(self, cfg: AgentConfig, ports: Ports) -> None:
        self.cfg = cfg
        self.ports = ports
        self.metrics = AgentMetrics()
        self.cache = ObjectCache(cfg.topology_label)
        self.problems = ProblemLog(self.metrics.problems.set)
        self.told = Told()  # the problems told as Kubernetes Events
        self.publisher = Publisher(
            ports.backend,
            cfg.settings.hostname,
            ports.clock,
            on_error=lambda: self.metrics.error("local"),
        )
        self.private_key = ports.files.load_or_create_key()
        self.private_ip: HostAddress | None = None
        self.public_ip: HostAddress | None = None
        self.underlay_mtu: int | None = None
        self.plan: Plan | None = None  # the last plan
        self.topology: Topology | None = None  # the last complete one (for /graph)
        self.last_changes: list[str] = []
        self.last_reconcile_ok = False
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._next_resync = 0.0
        self._next_expiry = float("inf")  # monotonic time when a ready node turns not ready
        self._verify = True  # the next reconcile applies every part (checks the kernel)
        self._applied: Plan | None = None  # the last plan applied without a failure
        self._ready: frozenset[str] = frozenset()
        self._full_read = True  # the next reconcile lists every object (else: the cache)
        self._changed = True  # the cache changed in a way that matters since the last plan
        self.leases: dict[str, Lease] = {}  # by segment key (native liveness)
        self._next_lease = float("inf")  # monotonic: a Lease to renew or that expires
        self.rotation = RotationSchedule(cfg.key_rotation_period, ports.clock.monotonic())
        self.last_failures: list[str] = []  # the parts the last apply could not apply
        self._device_peers: tuple[PeerState, ...] | None = None  # as the last facts read them
        self._facts_key: tuple[Any, ...] | None = None  # the facts of the last plan (facts_key)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.create_interface:
            for c in self.ports.device.ensure():
                log.info("device: %s", c)
        self.ports.device.supervise(self.request_reconcile)
        self.discover_host()
        if self.cfg.settings.liveness is Liveness.NATIVE:
            self.ports.prober.start(lambda: self.ports.backend.events.put(ProbeChange()))
        self.ports.backend.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.ports.backend.events.put(None)  # wake the loop now, not at the next event

    def request_reconcile(self) -> None:
        """A full reconcile now (the device was restarted underneath us, say)."""
        self._verify = True
        self._dirty.set()
        self.ports.backend.events.put(None)  # wake the loop

    def request_rotation(self) -> None:
        """Rotate the WireGuard key as soon as the loop wakes (``kg`` calls it on SIGUSR1)."""
        self.rotation.ask()
        self.ports.backend.events.put(None)  # wake the loop

    def discover_host(self) -> None:
        """The node's private and public IP (Kilo's choice) and its underlay's MTU."""
        host = self.ports.host
        private, public = choose_ips(
            host.addresses(), self.cfg.internal_cidrs, skip=(self.cfg.settings.interface,)
        )
        self.private_ip, self.public_ip = private, public
        if self.cfg.settings.mtu is None:
            self.underlay_mtu = host.underlay_mtu()
        log.info(
            "private IP %s, public IP %s",
            f"{private.prefix} on {private.ifname}" if private else "none",
            f"{public.prefix} on {public.ifname}" if public else "none",
        )

    def run(self) -> None:
        """Until ``stop``: reconcile on events (debounced) and every resync period; check in."""
        while not self._stop.is_set():
            self.step()

    def step(self) -> None:
        """Wait for an event or the next timer, then do what is due."""
        clock = self.ports.clock
        due = min(
            self._next_resync,
            self.publisher.next_check_in(),
            self._next_expiry,
            self._next_lease,
            self.rotation.due(),
        )
        arrived = clock.wait(self.ports.backend.events, due - clock.monotonic())
        if arrived:
            events = arrived + self._drain_events()
            clock.sleep(DEBOUNCE_SECONDS)  # let the rest of a burst arrive
            if self._take(events + self._drain_events()):
                self._dirty.set()
        if self._stop.is_set():
            return
        now = clock.monotonic()
        if self.rotation.is_due(now):
            self.rotate_key()
            now = clock.monotonic()
        resync = now >= self._next_resync
        if now >= self._next_lease:  # a renewal is due, or a Lease expired
            self._next_lease = float("inf")
            self._changed = True
            self._dirty.set()
        if self._dirty.is_set() or resync or now >= self._next_expiry:
            self._dirty.clear()
            self.reconcile(verify=resync or self._verify)
            if resync:
                self._next_resync = now + self.cfg.resync_period
        if clock.monotonic() >= self.publisher.next_check_in():
            self.check_in()

    def _drain_events(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.ports.backend.events.get_nowait())
            except queue.Empty:
                return out

    def take_event(self, event: Any) -> None:
        """One watch event, in the watch's own thread as it arrives (the backend's callback): the
        cache is brought up to date at once and the loop is woken only if the event matters to
        the plan. A check-in that only moves ``last-seen`` of a node whose readiness it does not
        change (nearly every event in Kilo's liveness mode) never wakes the loop."""
        if self._take([event]):
            self._dirty.set()
            self.ports.backend.events.put(None)  # wake the loop: it debounces and reconciles

    def _take(self, events: list[Any]) -> bool:
        """Bring the cache up to date with watch events, one object each; True if one of them
        matters to the plan: a change beyond a check-in time, or a node whose check-in made it
        ready or not. An event of no known shape asks for a full read."""
        with self._lock:
            now, outages = self.ports.clock.time(), self.ports.backend.outages()
            relevant = False
            for e in events:
                if e is None:  # a wake-up, not a change
                    continue
                if isinstance(e, ProbeChange):
                    self._changed = relevant = True
                    continue
                self.metrics.events.inc()
                kind, etype, obj = (getattr(e, a, None) for a in ("kind", "type", "object"))
                if kind == "Lease" and isinstance(obj, dict) and etype in ("ADDED", "MODIFIED"):
                    if self._lease_seen(obj):
                        self._changed = relevant = True
                    continue
                if kind == "Lease" and isinstance(obj, dict) and etype == "DELETED":
                    gone = [k for k, v in self.leases.items() if v.name == _name_of(obj)]
                    for k in gone:
                        del self.leases[k]
                    self._changed = relevant = relevant or bool(gone)
                    continue
                if (
                    kind not in ("Node", "Peer")
                    or not isinstance(obj, dict)
                    or etype not in ("ADDED", "MODIFIED", "DELETED")
                ):
                    self._full_read = True
                    relevant = True
                    continue
                seen = getattr(e, "check_in", None)  # proven by the backend: the time alone
                name = None
                if isinstance(seen, str) and kind == "Node":
                    name = self.cache.check_in(obj, getattr(e, "old", None), seen)
                if name is None:
                    name = self.cache.update(kind, etype, obj)
                if self.cache.changed:
                    self._changed = relevant = True
                elif name is not None:
                    n = self.cache.node(name)
                    relevant |= (n is not None and node_ready(n, now, outages)) != (
                        name in self._ready
                    )
            return relevant

    def shutdown(self) -> None:
        """After ``run``: leave the data plane as it is (a restart drops nothing) unless clean-up
        was asked for, in which case remove everything we made."""
        p = self.ports
        p.backend.stop()
        if self.cfg.clean_up:
            for step, f in (("firewall", p.firewall.remove), ("routes", p.routes.remove_all)):
                try:
                    for c in f():
                        log.info("clean-up %s: %s", step, c)
                except Exception as e:  # noqa: BLE001 - clean up as much as we can
                    log.error("clean-up of %s failed: %s", step, e)
            try:
                p.backend.clean_up(self.cfg.settings.hostname)
            except Exception as e:  # noqa: BLE001
                log.error("removing the node's annotations failed: %s", e)
        p.device.close(remove=self.cfg.clean_up and self.cfg.clean_up_interface)
        p.prober.stop()

    # -- native liveness: the locations' Leases --------------------------------------------
    def _lease_seen(self, obj: dict[str, Any]) -> bool:
        """Take a Lease as read; True if a leader may have changed. A renewal of a Lease that
        was valid, by the same holder (every Lease, every minute), changes no leader: it only
        moves the Lease timer, and costs no plan."""
        lease, problems = lease_from_object(obj)
        self.problems.report(tuple(problems))
        if lease is None:
            return False
        old = self.leases.get(lease.location)
        if old is not None and old.resource_version == lease.resource_version:
            return False
        self.leases[lease.location] = lease
        now = self.ports.clock.time()
        renewal = (
            old is not None
            and (old.holder, old.duration) == (lease.holder, lease.duration)
            and lease.renewed >= old.renewed
            and old.valid(now)
        )
        if renewal and self.plan is not None and self.plan.native:
            self._set_lease_timer(now)
        return not renewal

    def _read_leases(self) -> None:
        fresh: dict[str, Lease] = {}
        for obj in self.ports.backend.leases():
            lease, _ = lease_from_object(obj)
            if lease is not None:
                fresh[lease.location] = lease
        if fresh != self.leases:
            self._changed = True
        self.leases = fresh

    def _write_lease(self, change: LeaseChange) -> None:
        """Write the local location's Lease; the API server refuses it if another agent wrote
        that Lease first, and then its version, arriving by the watch, decides."""
        now = self.ports.clock.time()
        obj = lease_object(
            change.location, change.holder, now, self.cfg.lease_namespace, change.previous
        )
        try:
            written = self.ports.backend.write_lease(obj)
        except Exception as e:  # noqa: BLE001 - a conflict or an outage: the watch decides
            log.info("Lease of %s: %s not written: %s", change.location, change.action.value, e)
            return
        if change.action.value != "renew":
            log.info(
                "Lease of %s: %s, holder %s (%s)",
                change.location,
                change.action.value,
                change.holder,
                change.reason,
            )
        if self._lease_seen(written):
            self._changed = True
            self._dirty.set()
            self.ports.backend.events.put(None)  # plan again with the new leader, now

    def _set_lease_timer(self, now: float) -> None:
        """Wake when this node's Lease is due for renewal or any Lease would expire."""
        me = self.cfg.settings.hostname
        at = min(
            (
                lease.renewed + (RENEW_PERIOD_SECONDS if lease.holder == me else lease.duration)
                for lease in self.leases.values()
            ),
            default=None,
        )
        mono = self.ports.clock.monotonic()
        self._next_lease = float("inf") if at is None else mono + max(0.1, at - now)

    # -- one reconcile: read, plan, apply, publish -----------------------------------------
    def facts(self, now: float, outages: tuple[Outage, ...] | list[Outage]) -> LocalFacts:
        p = self.ports
        try:
            self.metrics.kernel_calls.labels(part="WireGuard peers").inc()
            handshakes = tuple(p.device.peers())
            self._device_peers = handshakes
        except Exception:  # noqa: BLE001 - no device yet: nothing discovered
            handshakes, self._device_peers = (), None
        return LocalFacts(
            private_key=self.private_key,
            now=now,
            private_ip=self.private_ip,
            public_ip=self.public_ip,
            underlay_mtu=self.underlay_mtu,
            outages=tuple(outages),
            handshakes=handshakes,
            health=p.prober.health(),
            cni_conf=p.files.read_cni() if self.cfg.settings.cni else None,
        )

    def reconcile(
        self, verify: bool = True, before_apply: Callable[[Plan], bool] | None = None
    ) -> list[str]:
        """Read, plan, apply, publish. ``before_apply`` (a key rotation's: publish the new key
        first) is called with the plan just before it is applied; False: apply nothing.
        Without ``verify``, a read that finds nothing the plan depends on changed (a check-in
        that only moved ``last-seen``) costs no plan, and parts of the plan equal to those last
        applied are not applied again: nothing is read from or written to the kernel. With it
        (the resync), every part is applied, which repairs what changed underneath (a route
        removed by hand)."""
        with self._lock:
            p = self.ports
            try:
                if verify or self._full_read:
                    cluster = self.cache.read(p.backend.nodes(), p.backend.peers())
                    self._full_read = False
                    self._changed |= self.cache.changed
                    if self.cfg.settings.liveness is Liveness.NATIVE:
                        self._read_leases()
                else:
                    cluster = self.cache.view()
                if self.leases:
                    cluster = replace(cluster, leases=dict(self.leases))
                if self._changed:
                    settle_heap(full=verify)
                now, outages = p.clock.time(), p.backend.outages()
            except Exception as e:  # noqa: BLE001 - keep running; the last good state stays
                self.metrics.reconciles.inc()
                self._failed(f"cannot read the cluster: {e}")
                return []
            ready = frozenset(ready_nodes(cluster.nodes, now, outages))
            self._set_expiry(next_expiry(cluster.nodes, now, outages), now)
            unchanged = not self._changed and ready == self._ready
            self._ready = ready
            settled = unchanged and self._applied is not None and self.last_reconcile_ok
            if settled and not verify:
                self.last_changes = []
                return []
            facts = self.facts(now, outages)
            key = facts_key(cluster, facts, ready)
            if settled and before_apply is None and key == self._facts_key:
                return self._verify_applied()
            self._changed = False
            self.metrics.reconciles.inc()
            self._verify = False
            self._facts_key = key
            desired = plan(cluster, facts, self.cfg.settings)
            before = self.plan.dataplane if self.plan is not None else None
            self.plan = desired
            self.problems.report(desired.problems)
            self._tell(desired, now)
            if self.cfg.settings.liveness is Liveness.NATIVE:
                p.prober.set_targets(desired.probes)
                if desired.native:
                    self._set_lease_timer(now)
                if desired.lease_change is not None:
                    self._write_lease(desired.lease_change)
            if desired.status is Status.ABSENT:
                log.warning("%s; nothing to do", desired.reason)
                self.last_reconcile_ok = True
                self.last_changes = []
                return []
            if before_apply is not None and not before_apply(desired):
                self.last_changes = []
                return []
            previous = None if verify else self._applied
            applied = self._apply(desired, previous)
            self._nudge(before.wireguard if before else None, desired, applied.failures)
            if desired.annotations is not None:
                self.publisher.publish(desired.annotations)
            self._record(desired, applied.changes)
            self.last_failures = applied.failures
            self._applied = desired if applied.ok and desired.status is Status.OK else None
            if not applied.ok:
                self._failed("; ".join(applied.failures))
            elif desired.status is Status.NO_TOPOLOGY:
                self._failed(f"{desired.reason}; leaving the data plane as it is")
            else:
                if desired.status is Status.NOT_READY:
                    log.warning("%s; waiting", desired.reason)
                self.last_reconcile_ok = True
            return applied.changes

    def _apply(self, desired: Plan, previous: Plan | None) -> Applied:
        """``apply_plan`` through the ports, each part applied counted as a kernel call."""
        p = self.ports
        applied = apply_plan(desired, p.device, p.routes, p.firewall, p.host, p.files, previous)
        for part in applied.parts:
            self.metrics.kernel_calls.labels(part=part).inc()
        return applied

    def _verify_applied(self) -> list[str]:
        """The resync of a cluster in which nothing changed: the plan would be the one applied
        last, so it is not made again; the kernel is read and repaired against that plan."""
        applied_plan = self._applied
        assert applied_plan is not None
        self.metrics.reconciles.inc()
        self._verify = False
        applied = self._apply(applied_plan, None)
        self._record(applied_plan, applied.changes)
        self.last_failures = applied.failures
        if not applied.ok:
            self._applied = None
            self._failed("; ".join(applied.failures))
        return applied.changes

    def _nudge(self, before: WgConf | None, desired: Plan, failures: list[str]) -> None:
        """A packet towards each peer whose key just changed: our device starts the handshake
        with its new key at once, not when it retries (kilo.rekeyed)."""
        dp = desired.dataplane
        if dp is None or any(f.startswith("WireGuard configuration") for f in failures):
            return
        targets = rekeyed(before, dp.wireguard)
        if targets:
            try:
                self.ports.host.nudge(targets)
            except Exception as e:  # noqa: BLE001 - a courtesy: the peer retries by itself
                log.debug("nudging %s: %s", targets, e)

    # -- key rotation ----------------------------------------------------------------------
    def rotate_key(self) -> bool:
        """A new WireGuard key, in the order that loses least: write it to the key file (a
        restart then uses it), publish its public key in the Node's annotation, then set it on
        the device at once. The private key change expires the device's sessions, and peers
        reach us again once they hold the new public key: the gap is the propagation time.
        Publishing before applying keeps the device on a key the peers know until then.
        A failure in any step rolls back to the old key (file, annotation, device), so the file
        and the device never differ; True if the new key is in use."""
        with self._lock:
            self.rotation.done(self.ports.clock.monotonic())
            old, new = self.private_key, Key.generate()
            try:
                self.ports.files.write_key(new)
            except Exception as e:  # noqa: BLE001 - the old key stays, in the file and in use
                return self._rotation_failed(f"cannot write the new key: {e}")
            self.private_key = new
            why = ["no plan reached the device (the cluster cannot be read, or no local node)"]

            def publish_first(desired: Plan) -> bool:
                why.clear()
                if desired.status is not Status.OK or desired.annotations is None:
                    why.append(f"the data plane is not planned ({desired.reason or 'no plan'})")
                    return False
                if not self.publisher.publish(desired.annotations):
                    why.append("the new public key could not be published")
                    return False
                return True

            self._changed = True  # the key is an input of the plan
            self.reconcile(verify=False, before_apply=publish_first)
            device = [f for f in self.last_failures if f.startswith("WireGuard configuration")]
            if not why and not device:
                log.info("rotated the WireGuard key: public key now %s", new.public())
                self.metrics.key_rotations.inc()
                return True
            return self._roll_back(old, "; ".join(why + device))

    def _roll_back(self, old: Key, why: str) -> bool:
        """Back to the old key: in the file first, then published and on the device (a full
        reconcile). If the old key cannot be written back, the new one (in the file) stays in
        use and the loop keeps applying and publishing it, so a restart changes nothing."""
        try:
            self.ports.files.write_key(old)
        except Exception as e:  # noqa: BLE001 - keep the key the file holds
            log.error("key rotation: %s; the old key cannot be written back (%s): "
                      "keeping the new key", why, e)  # fmt: skip
            self.metrics.error("rotation")
            self.request_reconcile()
            return False
        self.private_key = old
        self._changed = True
        self.reconcile(verify=True)
        return self._rotation_failed(why)

    def _rotation_failed(self, why: str) -> bool:
        self.metrics.error("rotation")
        log.error("key rotation failed: %s; keeping the old key", why)
        return False

    def _set_expiry(self, at: float | None, now: float) -> None:
        """Wake when the next ready node would expire (as a monotonic deadline)."""
        mono = self.ports.clock.monotonic()
        self._next_expiry = float("inf") if at is None else mono + max(0.0, at - now)

    def _tell(self, desired: Plan, now: float) -> None:
        """Events on the offending Nodes and Peers for the problems not told before (or long
        ago); the sink writes them off the loop."""
        events = self.told.events(desired.problems, now, self.cfg.settings.hostname)
        if events:
            try:
                self.ports.event_sink.emit(events)
            except Exception as e:  # noqa: BLE001 - Events are a courtesy; the loop goes on
                self.metrics.error("events")
                log.warning("could not queue %d Events: %s", len(events), e)

    def _failed(self, why: str) -> None:
        self.last_reconcile_ok = False
        self.metrics.error("apply")
        log.error("reconcile failed: %s", why)

    def _record(self, desired: Plan, changes: list[str]) -> None:
        self.last_changes = changes
        if changes:
            self.metrics.changes.inc(len(changes))
            for c in changes:
                log.info("changed: %s", c)
        self.metrics.nodes.set(desired.ready_nodes)
        self.metrics.peers.set(desired.ready_peers)
        if desired.status is Status.OK and desired.topology is not None:
            self.topology = desired.topology
            self.metrics.leader.set(1 if desired.leader else 0)
            self._peer_metrics(desired.topology)

    def _peer_metrics(self, t: Topology) -> None:
        """Per-peer figures from the device as this reconcile read it (for the plan's facts):
        one read of the device per reconcile, not two."""
        states = self._device_peers
        if states is None:  # no device: no per-peer figures
            return
        names: dict[bytes, str] = {}
        for s in t.segments:
            if s.key is not None:
                names[bytes(s.key)] = s.hostnames[s.leader]
        for peer in t.peers:
            if peer.public_key is not None:
                names[bytes(peer.public_key)] = peer.name
        self.metrics.set_peer_states(states, names, self.ports.clock.time())

    def check_in(self) -> None:
        """Kilo's heartbeat: the node's annotations with a fresh last-seen."""
        with self._lock:
            annotations = self.plan.annotations if self.plan is not None else None
            if self.plan is not None and self.plan.native:
                annotations = None  # no check-ins: the Leases prove liveness
            self.publisher.check_in(annotations)


def _name_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""
