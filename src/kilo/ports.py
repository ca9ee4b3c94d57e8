"""The agent's ports: what it needs from the world, as ``typing.Protocol``s.

The agent (``kilo.agent``) talks to the cluster, the WireGuard device, the routing tables, the
firewall, the host and its files only through these. The real adapters live in
``kilo.backend`` and ``kilo.dataplane``; the unit tests drive the agent's loop through in-memory
fakes of the same shape (tests/unit/fakes.py). Every apply-style call returns the changes it
made as human-readable strings, and raises when it could not do what it was asked.

The three data-plane writers (``WireGuardDevice.apply``, ``RoutingTables.reconcile``,
``Firewall.apply``) take ``previous``: the same part as it was last applied in full without a
failure. Given it, the adapter computes the change from the two values alone (nothing is read
from the kernel) and writes only that; without it (the first apply, after a failure, at a
resync, after the device restarted) it reads what the kernel holds and repairs every
difference.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from kilo.events import ProblemEvent
from kilo.firewall import Ruleset
from kilo.hostinfo import HostAddress
from kilo.keys import Key
from kilo.leadership import Health, ProbeTarget
from kilo.model import IPAddress, Prefix
from kilo.routes import Route, Rule
from kilo.wgstate import PeerState
from kilo.wireguard import WgConf

Obj = dict[str, Any]
#: An API server outage: (start, end) in Unix seconds; end None while it lasts.
Outage = tuple[float, float | None]
#: The routes and rules last applied, as ``RoutingTables.reconcile``'s ``previous``.
RoutesAndRules = tuple[Sequence[Route], Sequence[Rule]]


class ClusterBackend(Protocol):
    """The cluster's Node and Peer objects, kept current by a watch; the local node's
    annotations written back."""

    #: Something is put here whenever a Node or Peer changed (the agent only counts arrivals).
    events: queue.Queue[Any]

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def nodes(self) -> list[Obj]: ...
    def peers(self) -> list[Obj]: ...
    def outages(self) -> list[Outage]: ...
    def set_node_annotations(self, name: str, annotations: Mapping[str, str | None]) -> object: ...
    def clean_up(self, name: str) -> object: ...
    def leases(self) -> list[Obj]:
        """The locations' leader Leases (native liveness; empty when they are not watched)."""
        ...

    def write_lease(self, lease: Obj) -> Obj:
        """Create the Lease (no resourceVersion) or update that version of it; raises if the
        API server refused (another agent wrote it first: a conflict)."""
        ...


class WireGuardDevice(Protocol):
    """The node's WireGuard interface (kernel or wireguard-go)."""

    def ensure(self) -> list[str]: ...
    def supervise(self, on_restart: Callable[[], None]) -> None: ...
    def apply(self, desired: WgConf, previous: WgConf | None = None) -> list[str]: ...
    def configure_link(self, addresses: Sequence[Prefix], mtu: int | None) -> list[str]: ...
    def peers(self) -> list[PeerState]: ...
    def close(self, remove: bool = True) -> None: ...


class RoutingTables(Protocol):
    """Routes and policy rules; only those marked as the agent's (protocol 107) are touched."""

    def reconcile(
        self,
        routes: Iterable[Route],
        rules: Iterable[Rule] = (),
        previous: RoutesAndRules | None = None,
    ) -> list[str]: ...
    def remove_all(self) -> list[str]: ...


class Firewall(Protocol):
    """The agent's own nftables table, replaced in one transaction."""

    def apply(self, ruleset: Ruleset, previous: Ruleset | None = None) -> list[str]: ...
    def remove(self) -> list[str]: ...


class Host(Protocol):
    """Facts of the local host and the few host-level things the agent makes."""

    def addresses(self) -> list[HostAddress]: ...
    def underlay_mtu(self) -> int | None: ...
    def ensure_ipip(self, pod_cidr: Prefix | None) -> list[str]: ...
    def nudge(self, addresses: Sequence[IPAddress]) -> None:
        """One datagram to each address, so that WireGuard starts a handshake (kilo.rekeyed)."""
        ...


class Files(Protocol):
    """The agent's files: its private key and the CNI configuration list."""

    def load_or_create_key(self) -> Key: ...
    def write_key(self, key: Key) -> None:
        """Replace the stored private key (atomically, mode 0600): a key rotation's first step."""
        ...

    def read_cni(self) -> Obj | None:
        """The current conflist; None if missing or unreadable (then the default is written)."""
        ...

    def write_cni(self, conf: Obj) -> list[str]: ...


class Prober(Protocol):
    """Liveness probes (native liveness): answers others' probes, probes the targets it is
    given, and calls ``on_change`` when one goes silent or answers again."""

    def start(self, on_change: Callable[[], None]) -> None: ...
    def stop(self) -> None: ...
    def set_targets(self, targets: Iterable[ProbeTarget]) -> None: ...
    def health(self) -> Health: ...


class NoProber:
    """The compat mode's: no probes."""

    def start(self, on_change: Callable[[], None]) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_targets(self, targets: Iterable[ProbeTarget]) -> None:
        pass

    def health(self) -> Health:
        return Health()


class EventSink(Protocol):
    """Kubernetes Events about the cluster's objects (``kilo.events``). ``emit`` must not
    block the loop nor raise: the writer queues, rate-limits and counts its own failures."""

    def emit(self, events: Sequence[ProblemEvent]) -> None: ...


class NoEvents:
    """No Events (the default; the problems are still logged and counted)."""

    def emit(self, events: Sequence[ProblemEvent]) -> None:
        pass


class Clock(Protocol):
    """Time, and waiting for the backend's events: the loop's only sources of time."""

    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
    def wait(self, events: queue.Queue[Any], timeout: float) -> list[Any]:
        """Wait up to ``timeout`` seconds for an event: ``[event]`` if one arrived (it is
        taken from the queue), ``[]`` if none did."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, events: queue.Queue[Any], timeout: float) -> list[Any]:
        try:
            return [events.get(timeout=max(0.0, timeout))]
        except queue.Empty:
            return []
