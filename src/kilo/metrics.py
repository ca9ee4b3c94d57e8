"""The agent's Prometheus metrics (prometheus-client), named as Kilo names them where Kilo has
them (``kilo_leader``, ``kilo_nodes``, ``kilo_peers``, ``kilo_reconciles_total``,
``kilo_errors_total{event}``), plus our own (changes made, unreadable values, per-peer
handshake age and bytes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kilo.keys import Key
from kilo.wgstate import PeerState

# The *_created series say when a counter was made; nobody asked for them and Kilo has none.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


_PEER_GAUGES = (
    (
        "kilo_peer_last_handshake_age_seconds",
        "Seconds since the last WireGuard handshake with a peer.",
    ),
    ("kilo_peer_receive_bytes", "Bytes received from a WireGuard peer."),
    ("kilo_peer_transmit_bytes", "Bytes sent to a WireGuard peer."),
)


class PeerGauges(Collector):
    """The per-peer gauges, made when scraped from the peers the device last reported. At
    1,000 peers they are 3,000 series: as gauge children they cost megabytes and a rebuild at
    every reconcile; here they cost one list until someone reads them."""

    def __init__(self) -> None:
        self._values: tuple[dict[str, float], ...] = ({}, {}, {})

    def set(self, values: tuple[dict[str, float], dict[str, float], dict[str, float]]) -> None:
        self._values = values

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(n, h, labels=["peer"]) for n, h in _PEER_GAUGES]

    def collect(self) -> list[Metric]:
        out: list[Metric] = []
        for (name, help_text), values in zip(_PEER_GAUGES, self._values, strict=True):
            family = GaugeMetricFamily(name, help_text, labels=["peer"])
            for peer, value in values.items():
                family.add_metric([peer], value)
            out.append(family)
        return out


class AgentMetrics:
    """One agent's metrics, in a registry of its own (several agents may share a process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.leader = Gauge("kilo_leader", "Leadership status of the node.", registry=r)
        self.nodes = Gauge("kilo_nodes", "Number of nodes in the mesh.", registry=r)
        self.peers = Gauge("kilo_peers", "Number of peers in the mesh.", registry=r)
        self.reconciles = Counter(
            "kilo_reconciles", "Number of reconciliation attempts.", registry=r
        )
        self.errors = Counter(
            "kilo_errors",
            "Number of errors that occurred while administering the mesh.",
            ["event"],
            registry=r,
        )
        self.changes = Counter(
            "kilo_reconcile_changes",
            "Changes made to devices, routes, rules and the firewall.",
            registry=r,
        )
        self.events = Counter(
            "kilo_cluster_events",
            "Changes of Nodes and Peers the agent was told of by its watches.",
            registry=r,
        )
        self.key_rotations = Counter(
            "kilo_key_rotations",
            "WireGuard key rotations done (a failed one is counted in kilo_errors, rotation).",
            registry=r,
        )
        self.kernel_calls = Counter(
            "kilo_kernel_calls",
            "Parts of the data plane read from or applied to the kernel (device, link, "
            "firewall, routes, IPIP device), and reads of the device's peers.",
            ["part"],
            registry=r,
        )
        self.problems = Gauge(
            "kilo_object_problems",
            "Values of Node and Peer objects that could not be read.",
            registry=r,
        )
        self.peer_gauges = PeerGauges()
        r.register(self.peer_gauges)

    def error(self, event: str) -> None:
        self.errors.labels(event=event).inc()

    def set_peer_states(
        self, states: Iterable[PeerState], names: Mapping[bytes, str], now: float
    ) -> None:
        """Per-peer gauges for exactly the device's current peers, named by node or Peer."""
        age: dict[str, float] = {}
        rx: dict[str, float] = {}
        tx: dict[str, float] = {}
        for st in states:
            name = names.get(bytes(st.public_key)) or str(Key(st.public_key))
            if st.last_handshake:
                age[name] = float(round(now - st.last_handshake, 3))
            rx[name] = float(st.rx_bytes)
            tx[name] = float(st.tx_bytes)
        self.peer_gauges.set((age, rx, tx))

    def render(self) -> bytes:
        """The text exposition format."""
        return prometheus_client.generate_latest(self.registry)
