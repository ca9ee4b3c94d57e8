"""``kgctl connect PEER``: this machine joins the mesh as the Peer ``PEER`` (Kilo 0.7's command).

Two halves. The pure part computes, from the cluster's objects as ``kgctl`` reads them, what
the machine's WireGuard interface must hold: the config ``kgctl showconf peer`` computes, with
our private key and listen port (``desired``), and a route through the interface for every
allowed IP of it (``routes_for``); and it decides what to do with a Peer of that name that
already exists (``claim``). The loop (``Connector``) keeps the interface and the routes equal to
that: on every change of the watched Nodes and Peers, when wireguard-go was restarted, and
every resync period. Its ports are small protocols, so the loop runs on fakes in the unit tests;
``run`` wires the real adapters, the same ones ``kg`` uses.

Beyond Kilo: the private key is kept in a file (made 0600 if missing) so a reconnection keeps
the identity; a Peer of that name with another public key is never replaced (an error names
it); a route that would capture a tunnel endpoint or the API server, or a default route, is not
set (it would cut the tunnel or the watch).
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kilo.keys import Key
from kilo.mesh import ClusterState, Options, UserError, peer_topology, read_cluster
from kilo.model import IPAddress, Prefix, is_dns1123_subdomain
from kilo.routes import Route
from kilo.translate import object_name, peer_from_object, peer_object
from kilo.wireguard import WgConf

log = logging.getLogger("kilo.connect")

DEFAULT_ALLOWED_IP = "10.10.10.10/32"
DEFAULT_KEY_DIR = "/var/lib/kilo/connect"
Obj = dict[str, Any]


class ConnectError(Exception):
    """Connecting cannot start or go on; the message says why (kgctl prints it, exits 1)."""


def default_key_path(name: str) -> str:
    return f"{DEFAULT_KEY_DIR}/{name}.key"


def check_name(name: str) -> None:
    """A Peer's name (also part of the default key file's path): a DNS-1123 subdomain."""
    if len(name) > 253 or not is_dns1123_subdomain(name):
        raise ConnectError(
            f"invalid peer name {name!r}: a lowercase DNS-1123 subdomain is needed "
            "(letters, digits, '-' and '.')"
        )


# ---------------------------------------------------------------------------- pure part


@dataclass(frozen=True)
class Settings:
    """What ``kgctl connect`` was asked for."""

    name: str
    options: Options  # kgctl's globals: granularity, port (also our listen port), label
    address: Prefix  # --allowed-ip: the peer's own address, also set on the interface
    location_ips: tuple[Prefix, ...] = ()  # --allowed-ips: added to the first node's location
    keepalive: int = 10
    interface: str = "kilo0"
    mtu: int = 1420
    resync_period: float = 30.0
    clean_up: bool = True


@dataclass
class Desired:
    """The interface's config and routes, and what was left out (as sentences)."""

    conf: WgConf
    routes: list[Route]
    warnings: list[str] = field(default_factory=list)


def peer_manifest(name: str, public_key: Key, address: Prefix, keepalive: int) -> Obj:
    """The Peer ``kgctl connect`` creates: its address, keepalive and public key."""
    return peer_object(name, public_key, [address], None, persistent_keepalive=keepalive)


def claim(existing: Obj | None, name: str, public_key: Key) -> bool:
    """Whether the Peer ``name`` must be created (True) or is ours already (False), given the
    object of that name in the cluster (None: there is none). ``ConnectError`` if it belongs
    to someone else (another public key) or cannot be read: it is never replaced."""
    if existing is None:
        return True
    peer, problems = peer_from_object(existing)
    if peer is None or peer.public_key is None:
        why = "; ".join(str(p) for p in problems) or "it has no public key"
        raise ConnectError(f"the Peer {name!r} exists but cannot be read ({why}); not using it")
    if peer.public_key != public_key:
        raise ConnectError(
            f"the Peer {name!r} exists with the public key {peer.public_key}, not ours "
            f"({public_key}); it is someone else's: choose another name, or pass its private "
            "key with --private-key"
        )
    return False


def find(objs: Iterable[Obj], name: str) -> Obj | None:
    return next((o for o in objs if object_name(o) == name), None)


def routes_for(
    conf: WgConf, interface: str, keep_out: Sequence[IPAddress] = ()
) -> tuple[list[Route], list[str]]:
    """A route through ``interface`` for every allowed IP of ``conf``'s peers (each network
    once, in address order), and why any was left out: a default route, or one that would
    carry a tunnel's own endpoint or an address of ``keep_out`` (the API server) into the
    tunnel."""
    guarded: list[IPAddress] = list(keep_out)
    guarded += [p.endpoint.ip for p in conf.peers if p.endpoint is not None and p.endpoint.ip]
    nets: dict[str, Prefix] = {}
    warnings: list[str] = []
    for p in conf.peers:
        for a in p.allowed_ips:
            net = a.network
            if str(net) in nets:
                continue
            if net.prefixlen == 0:
                warnings.append(f"not routing {net} (peer {p.public_key}): a default route")
                continue
            inside = [ip for ip in guarded if ip.version == net.version and ip in net]
            if inside:
                warnings.append(
                    f"not routing {net} (peer {p.public_key}): it holds {inside[0]}, which "
                    "must stay outside the tunnel"
                )
                continue
            nets[str(net)] = ipaddress.ip_interface(str(net))
    order = sorted(nets.values(), key=lambda n: (n.version, int(n.network.network_address), n.ip))
    return [Route(dst=n, dev=interface) for n in order], warnings


def desired(
    state: ClusterState,
    settings: Settings,
    private_key: Key,
    now: int,
    keep_out: Sequence[IPAddress] = (),
) -> Desired:
    """What the interface must hold for the cluster ``state`` at ``now``: the config
    ``kgctl showconf peer NAME`` computes, with our private key and listen port, and its
    routes. ``UserError`` (Kilo's message) when there is none: no ready node, or the Peer is
    not (or no longer) in the cluster."""
    t, _peer = peer_topology(state, settings.name, settings.options, now, settings.location_ips)
    conf = t.peer_conf(settings.name)
    for p in conf.peers:
        p.deduplicate_ips()
    conf.private_key = private_key
    conf.listen_port = settings.options.port
    routes, warnings = routes_for(conf, settings.interface, keep_out)
    return Desired(conf, routes, [str(r) for r in t.refusals] + warnings)


# ---------------------------------------------------------------------------- the loop


class Cluster(Protocol):
    """The watched Nodes, Peers and leader Leases; a Peer created and deleted."""

    def nodes(self) -> list[Obj]: ...
    def peers(self) -> list[Obj]: ...
    def leases(self) -> list[Obj]: ...
    def create_peer(self, obj: Obj) -> Obj:
        """The created object (with its uid); ``PeerExists`` if one of that name exists."""
        ...

    def delete_peer(self, name: str, uid: str) -> None:
        """Delete that Peer if it is still the object ``uid`` (gone already: no error)."""
        ...


class PeerExists(Exception):
    """A Peer of that name was created meanwhile."""


class Interface(Protocol):
    def ensure(self) -> list[str]: ...
    def configure_link(self, addresses: Sequence[Prefix], mtu: int | None) -> list[str]: ...
    def apply(self, desired: WgConf, previous: WgConf | None = None) -> list[str]: ...
    def supervise(self, on_restart: Callable[[], None]) -> None: ...
    def close(self, remove: bool = True) -> None: ...


class Routes(Protocol):
    def reconcile(self, routes: Iterable[Route]) -> list[str]: ...


class Connector:
    """Keeps this machine connected as the Peer ``settings.name``."""

    def __init__(
        self,
        settings: Settings,
        private_key: Key,
        cluster: Cluster,
        interface: Interface,
        routes: Routes,
        keep_out: Sequence[IPAddress] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.private_key = private_key
        self.cluster = cluster
        self.interface = interface
        self.routes = routes
        self.keep_out = list(keep_out)
        self.clock = clock
        self.wake: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()
        self.created_uid: str | None = None  # the Peer we created (deleted on clean-up)
        self.applied: Desired | None = None
        self.started = False  # the interface may exist: clean-up removes it
        self._said: set[str] = set()  # warnings and errors logged while they last

    def claim_peer(self) -> None:
        """Create the Peer unless it is ours already (``ConnectError`` if someone else's)."""
        s = self.settings
        public = self.private_key.public()
        for _ in range(3):
            if not claim(find(self.cluster.peers(), s.name), s.name, public):
                log.info("using the existing Peer %s (our public key %s)", s.name, public)
                return
            try:
                made = self.cluster.create_peer(
                    peer_manifest(s.name, public, s.address, s.keepalive)
                )
            except PeerExists:
                time.sleep(0.2)  # created meanwhile: look again (once the watch has it)
                continue
            meta = made.get("metadata")
            uid = meta.get("uid") if isinstance(meta, dict) else None
            self.created_uid = uid if isinstance(uid, str) else ""
            log.info("created the Peer %s (public key %s)", s.name, public)
            return
        raise ConnectError(f"the Peer {s.name!r} keeps appearing and disappearing; try again")

    def start(self) -> None:
        """The interface: made (or found), given the address and MTU, up; supervised."""
        s = self.settings
        self.started = True
        for c in self.interface.ensure() + self.interface.configure_link([s.address], s.mtu):
            log.info("%s", c)
        self.interface.supervise(lambda: self.wake.put("device"))

    def sync(self) -> bool:
        """Make the interface and routes match the cluster now; whether it could."""
        s = self.settings
        state = read_cluster(
            self.cluster.nodes(),
            self.cluster.peers(),
            s.options.topology_label,
            self.cluster.leases(),
        )
        said: set[str] = set()
        ok = True
        try:
            want = desired(state, s, self.private_key, int(self.clock()), self.keep_out)
        except UserError as e:
            self._say(said, logging.ERROR, f"cannot compute the configuration: {e}")
            self._said = said
            return False
        for w in [str(p) for p in state.problems] + want.warnings:
            self._say(said, logging.WARNING, w)
        parts: list[tuple[str, Callable[[], list[str]]]] = [
            ("WireGuard", lambda: self.interface.apply(want.conf)),
            ("routes", lambda: self.routes.reconcile(want.routes)),
        ]
        for what, apply in parts:
            try:
                for c in apply():
                    log.info("%s", c)
            except Exception as e:  # noqa: BLE001 - each part on its own; retried next time
                self._say(said, logging.ERROR, f"applying the {what} failed: {e}")
                ok = False
        self._said = said
        self.applied = want
        return ok

    def _say(self, said: set[str], level: int, text: str) -> None:
        """Log ``text`` once while it lasts (a resync repeats every warning)."""
        said.add(text)
        if text not in self._said:
            log.log(level, "%s", text)

    def run(self) -> None:
        """Sync now, on every wake-up (cluster events, a device restart, coalesced a little)
        and every resync period, until ``stop``."""
        period = self.settings.resync_period
        next_full = time.monotonic()
        while not self.stopping.is_set():
            wait = next_full - time.monotonic()
            if wait > 0:
                try:
                    self.wake.get(timeout=wait)
                except queue.Empty:
                    pass
                time.sleep(0.05)  # let a burst of events arrive: one sync for all
                while not self.wake.empty():
                    self.wake.get_nowait()
            if self.stopping.is_set():
                break
            if time.monotonic() >= next_full:
                next_full = time.monotonic() + period
            self.sync()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.put("stop")

    def clean_up(self) -> None:
        """With clean-up: our routes, the interface and the Peer we created go. Each part on
        its own: one failing never keeps the others."""
        if not self.settings.clean_up:
            self.interface.close(remove=False)
            return
        steps: list[tuple[str, Callable[[], object]]] = []
        if self.started:
            steps.append(("routes", lambda: self.routes.reconcile([])))
            steps.append(("interface", lambda: self.interface.close(remove=True)))
        if self.created_uid is not None:
            uid = self.created_uid
            steps.append(("Peer", lambda: self.cluster.delete_peer(self.settings.name, uid)))
        for what, step in steps:
            try:
                step()
                log.info("removed the %s", what)
            except Exception as e:  # noqa: BLE001 - the rest is still removed
                log.error("removing the %s failed: %s", what, e)


# ---------------------------------------------------------------------------- the adapters


class KubernetesCluster:
    """``Cluster`` on the Kubernetes backend: its watch, and the Peer written over its
    connection."""

    def __init__(self, kubeconfig: str | None, lease_namespace: str) -> None:
        from kilo.backend.kubernetes import BackendError, KubernetesBackend

        self.backend = KubernetesBackend(kubeconfig, lease_namespace=lease_namespace)
        try:
            self.backend.start()
        except BackendError as e:
            if e.status != 403 or "lease" not in str(e).lower():
                raise
            log.warning("cannot list the leader Leases (%s); leaders by Kilo's rule", e)
            self.backend = KubernetesBackend(api=self.backend.api)
            self.backend.start()

    def on_change(self, wake: Callable[[], None]) -> None:
        self.backend.on_event = lambda _event: wake()

    def nodes(self) -> list[Obj]:
        return self.backend.nodes()

    def peers(self) -> list[Obj]:
        return self.backend.peers()

    def leases(self) -> list[Obj]:
        return self.backend.leases()

    def create_peer(self, obj: Obj) -> Obj:
        from kilo.backend.apiserver import PEER_PATH, BackendError

        try:
            return self.backend.http.json("POST", PEER_PATH, body=obj, patience=10)
        except BackendError as e:
            if e.status == 409:
                raise PeerExists() from None
            raise

    def delete_peer(self, name: str, uid: str) -> None:
        from urllib.parse import quote

        from kilo.backend.apiserver import PEER_PATH, BackendError

        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.backend.http.json("DELETE", f"{PEER_PATH}/{quote(name, safe='')}", body=body)
        except BackendError as e:
            if e.status == 404:
                return  # gone already
            if e.status == 409:
                log.warning("the Peer %s was replaced by another object; leaving it", name)
                return
            raise

    def server_ips(self) -> list[IPAddress]:
        """The API server's address, if the kubeconfig names it by IP."""
        from urllib.parse import urlsplit

        host = urlsplit(self.backend.http.host).hostname or ""
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            return []

    def close(self) -> None:
        self.backend.stop()
        close: Callable[[], None] = self.backend.api.close
        close()


class NetlinkRoutes:
    """``Routes``: our routes (protocol 107) in the main table of this network namespace."""

    def __init__(self) -> None:
        from kilo.dataplane.netlink import Netlink

        self.netlink = Netlink()

    def reconcile(self, routes: Iterable[Route]) -> list[str]:
        return self.netlink.reconcile(routes)


def run(
    settings: Settings,
    key_path: str,
    kubeconfig: str | None,
    lease_namespace: str = "kube-system",
    wireguard: str = "auto",
    wireguard_go: str | None = None,
) -> None:
    """Connect until SIGINT or SIGTERM, then clean up (``ConnectError`` if it cannot start)."""
    from kilo.backend.apiserver import BackendError
    from kilo.dataplane.files import KeyFileError, load_or_create_key
    from kilo.dataplane.wgdevice import DeviceError, open_device

    try:
        key = load_or_create_key(key_path)
    except (KeyFileError, OSError) as e:
        raise ConnectError(f"cannot use the private key {key_path}: {e}") from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d; stopping", signum)
        stop.set()
        connector = current.get("c")
        if connector is not None:
            connector.stop()

    current: dict[str, Connector] = {}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster = KubernetesCluster(kubeconfig, lease_namespace)
    except BackendError as e:
        raise ConnectError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the client's errors are many; say what failed
        raise ConnectError(f"cannot reach the cluster: {e}") from None
    try:
        device = open_device(settings.interface, wireguard, binary=wireguard_go)
        c = Connector(settings, key, cluster, device, NetlinkRoutes(), cluster.server_ips())
        current["c"] = c
        cluster.on_change(lambda: c.wake.put("cluster"))
        try:
            c.claim_peer()
            if not stop.is_set():
                c.start()
                c.run()
        except (BackendError, DeviceError, OSError) as e:
            raise ConnectError(str(e)) from None
        finally:
            c.clean_up()
    finally:
        cluster.close()
