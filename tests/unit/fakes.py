"""In-memory fakes of the agent's ports (kilo.ports), for unit tests of the agent's loop.

Each fake records what it was asked, reports a change only when what it holds changes (as the
real adapters do), and can be told to fail.
"""

from __future__ import annotations

import copy
import queue
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kilo.events import ProblemEvent
from kilo.firewall import Ruleset
from kilo.hostinfo import HostAddress
from kilo.keys import Key
from kilo.model import Prefix
from kilo.routes import Route, Rule
from kilo.wgstate import PeerState
from kilo.wireguard import WgConf

Obj = dict[str, Any]


class Broken(RuntimeError):
    """What a fake raises when told to fail."""


class FakeClock:
    """Time stands still until the agent waits or sleeps; waiting with no event queued moves
    time to the end of the wait."""

    def __init__(self, wall: float = 1_790_000_000.0) -> None:
        self.wall = wall
        self.mono = 1000.0
        self.waits: list[float] = []

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def wait(self, events: queue.Queue[Any], timeout: float) -> list[Any]:
        self.waits.append(timeout)
        try:
            return [events.get_nowait()]
        except queue.Empty:
            self.advance(max(0.0, timeout))
            return []


@dataclass(frozen=True)
class FakeEvent:
    """A watch event, as the Kubernetes backend emits them."""

    kind: str
    type: str
    object: Obj
    old: Obj | None = None
    check_in: str | None = None  # a check-in the backend proved (``Event.check_in``)


class FakeBackend:
    def __init__(self, nodes: Iterable[Obj] = (), peers: Iterable[Obj] = ()) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.node_objs: dict[str, Obj] = {o["metadata"]["name"]: copy.deepcopy(o) for o in nodes}
        self.peer_objs: dict[str, Obj] = {o["metadata"]["name"]: copy.deepcopy(o) for o in peers}
        self.outage_list: list[tuple[float, float | None]] = []
        self.published: list[tuple[str, dict[str, str | None]]] = []
        self.fail_publish = False
        self.fail_list = False
        self.started = self.stopped = False
        self.cleaned: list[str] = []
        self.lease_objs: dict[str, Obj] = {}
        self.lease_writes: list[Obj] = []
        self._rv = 1

    def _bump(self, obj: Obj) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    def put_node(self, obj: Obj) -> None:
        self._put("Node", self.node_objs, obj)

    def put_peer(self, obj: Obj) -> None:
        self._put("Peer", self.peer_objs, obj)

    def _put(self, kind: str, table: dict[str, Obj], obj: Obj) -> None:
        obj = copy.deepcopy(obj)
        self._bump(obj)
        name = obj["metadata"]["name"]
        etype = "MODIFIED" if name in table else "ADDED"
        table[name] = obj
        self.events.put(FakeEvent(kind, etype, copy.deepcopy(obj)))

    def delete_node(self, name: str) -> None:
        obj = self.node_objs.pop(name)
        self.events.put(FakeEvent("Node", "DELETED", obj))

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def nodes(self) -> list[Obj]:
        if self.fail_list:
            raise Broken("the API server is away")
        return copy.deepcopy(list(self.node_objs.values()))  # the watch's own objects

    def peers(self) -> list[Obj]:
        if self.fail_list:
            raise Broken("the API server is away")
        return copy.deepcopy(list(self.peer_objs.values()))  # the watch's own objects

    def outages(self) -> list[tuple[float, float | None]]:
        return list(self.outage_list)

    def set_node_annotations(self, name: str, annotations: Mapping[str, str | None]) -> Obj:
        if self.fail_publish:
            raise Broken("the API server is away")
        self.published.append((name, dict(annotations)))
        obj = copy.deepcopy(self.node_objs[name])  # a new object, as a real watch decodes
        self.node_objs[name] = obj
        ann = obj["metadata"].setdefault("annotations", {})
        for k, v in annotations.items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v
        self._bump(obj)
        self.events.put(FakeEvent("Node", "MODIFIED", copy.deepcopy(obj)))  # the watch sees it
        return obj

    def leases(self) -> list[Obj]:
        return copy.deepcopy(list(self.lease_objs.values()))

    def write_lease(self, lease: Obj) -> Obj:
        """As the API server: a create of an existing Lease, or an update of a version that is
        not the current one, is refused (409)."""
        if self.fail_publish:
            raise Broken("the API server is away")
        name = lease["metadata"]["name"]
        current = self.lease_objs.get(name)
        rv = lease["metadata"].get("resourceVersion")
        if (current is None) != (not rv) or (
            current is not None and current["metadata"]["resourceVersion"] != rv
        ):
            raise Broken("409 Conflict")
        self.lease_writes.append(copy.deepcopy(lease))
        self.put_lease(lease)
        return copy.deepcopy(self.lease_objs[name])

    def put_lease(self, obj: Obj) -> None:
        self._put("Lease", self.lease_objs, obj)

    def clean_up(self, name: str) -> Obj:
        self.cleaned.append(name)
        return self.node_objs.get(name, {})


@dataclass
class FakeDevice:
    conf: WgConf | None = None
    link: tuple[list[str], int | None] | None = None
    states: list[PeerState] = field(default_factory=list)
    applied: int = 0
    fail: bool = False
    ensured: bool = False
    on_restart: Callable[[], None] | None = None
    closed: bool | None = None  # the ``remove`` it was closed with
    reads: int = 0  # peers() calls: reads of the device's state
    diffs: int = 0  # applies given the previous config (no read of the device)

    def ensure(self) -> list[str]:
        self.ensured = True
        return ["create device"]

    def supervise(self, on_restart: Callable[[], None]) -> None:
        self.on_restart = on_restart

    def apply(self, desired: WgConf, previous: WgConf | None = None) -> list[str]:
        if self.fail:
            raise Broken("the device refused the configuration")
        self.applied += 1
        self.diffs += previous is not None
        if desired.render() == (self.conf.render() if self.conf else None):
            return []
        self.conf = desired
        return ["configure device"]

    def configure_link(self, addresses: Sequence[Prefix], mtu: int | None) -> list[str]:
        want = (sorted(str(a) for a in addresses), mtu)
        if want == self.link:
            return []
        self.link = want
        return [f"link {want}"]

    def peers(self) -> list[PeerState]:
        self.reads += 1
        return list(self.states)

    def close(self, remove: bool = True) -> None:
        self.closed = remove


@dataclass
class FakeRoutes:
    routes: list[Route] | None = None
    rules: list[Rule] | None = None
    fail: bool = False
    removed: bool = False
    calls: int = 0
    diffs: int = 0  # calls given what was applied before (no read of the tables)

    def reconcile(
        self,
        routes: Iterable[Route],
        rules: Iterable[Rule] = (),
        previous: tuple[Sequence[Route], Sequence[Rule]] | None = None,
    ) -> list[str]:
        self.calls += 1
        self.diffs += previous is not None
        if self.fail:
            raise Broken("a route was refused")
        want, want_rules = list(routes), list(rules)
        if (want, want_rules) == (self.routes, self.rules):
            return []
        self.routes, self.rules = want, want_rules
        return [f"{len(want)} routes, {len(want_rules)} rules"]

    def remove_all(self) -> list[str]:
        self.removed = True
        return ["remove routes"]


@dataclass
class FakeFirewall:
    ruleset: dict[str, Any] | None = None
    fail: bool = False
    removed: bool = False

    calls: int = 0
    diffs: int = 0  # applies given the previous ruleset (no read of the table)

    def apply(self, ruleset: Ruleset, previous: Ruleset | None = None) -> list[str]:
        self.calls += 1
        self.diffs += previous is not None
        if self.fail:
            raise Broken("nft refused the transaction")
        want = ruleset.nft_json()
        if want == self.ruleset:
            return []
        self.ruleset = want
        return ["replace table"]

    def remove(self) -> list[str]:
        self.removed = True
        return ["remove table"]


@dataclass
class FakeHost:
    address_list: list[HostAddress] = field(default_factory=list)
    mtu: int | None = 1500
    ipip: list[Prefix | None] = field(default_factory=list)
    nudged: list[str] = field(default_factory=list)

    def addresses(self) -> list[HostAddress]:
        return list(self.address_list)

    def underlay_mtu(self) -> int | None:
        return self.mtu

    def ensure_ipip(self, pod_cidr: Prefix | None) -> list[str]:
        self.ipip.append(pod_cidr)
        return []

    def nudge(self, addresses: Sequence[Any]) -> None:
        self.nudged += [str(a) for a in addresses]


@dataclass
class FakeFiles:
    key: Key = field(default_factory=Key.generate)
    cni: Obj | None = None
    cni_writes: int = 0
    key_writes: list[Key] = field(default_factory=list)
    fail_key_writes: int = 0  # the next this many key writes fail

    def load_or_create_key(self) -> Key:
        return self.key

    def write_key(self, key: Key) -> None:
        if self.fail_key_writes > 0:
            self.fail_key_writes -= 1
            raise Broken("the key file cannot be written")
        self.key = key
        self.key_writes.append(key)

    def read_cni(self) -> Obj | None:
        return copy.deepcopy(self.cni)

    def write_cni(self, conf: Obj) -> list[str]:
        self.cni = copy.deepcopy(conf)
        self.cni_writes += 1
        return ["write CNI"]


class FakeProber:
    """The prober port: the test says what the probes find."""

    def __init__(self) -> None:
        from kilo.leadership import Health, ProbeTarget

        self.health_now = Health()
        self.targets: list[ProbeTarget] = []
        self.started = False
        self.on_change: Any = None

    def start(self, on_change: Any) -> None:
        self.started, self.on_change = True, on_change

    def stop(self) -> None:
        self.started = False

    def set_targets(self, targets: Iterable[Any]) -> None:
        self.targets = list(targets)

    def health(self) -> Any:
        return self.health_now


class FakeEventSink:
    """The Event sink port: records what the agent emits; told to fail, it raises."""

    def __init__(self) -> None:
        self.emitted: list[list[ProblemEvent]] = []
        self.fail = False

    def emit(self, events: Sequence[ProblemEvent]) -> None:
        if self.fail:
            raise Broken("the Event queue is gone")
        self.emitted.append(list(events))

    @property
    def all(self) -> list[ProblemEvent]:
        return [e for batch in self.emitted for e in batch]
