"""The agent's Prometheus metrics (prometheus-client), named as Kilo names them where Kilo has
them (``kilo_leader``, ``kilo_nodes``, ``kilo_peers``, ``kilo_reconciles_total``,
``kilo_errors_total{event}``), plus our own (changes made, unreadable values, per-peer
handshake age and bytes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

from kilo.keys import Key
from kilo.wgstate import PeerState

# The *_created series say when a counter was made; nobody asked for them and Kilo has none.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


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
        self.handshake_age = Gauge(
            "kilo_peer_last_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with a peer.",
            ["peer"],
            registry=r,
        )
        self.rx = Gauge(
            "kilo_peer_receive_bytes", "Bytes received from a WireGuard peer.", ["peer"], registry=r
        )
        self.tx = Gauge(
            "kilo_peer_transmit_bytes", "Bytes sent to a WireGuard peer.", ["peer"], registry=r
        )

    def error(self, event: str) -> None:
        self.errors.labels(event=event).inc()

    def set_peer_states(
        self, states: Iterable[PeerState], names: Mapping[bytes, str], now: float
    ) -> None:
        """Per-peer gauges for exactly the device's current peers, named by node or Peer."""
        for m in (self.handshake_age, self.rx, self.tx):
            m.clear()
        for st in states:
            name = names.get(bytes(st.public_key)) or str(Key(st.public_key))
            if st.last_handshake:
                self.handshake_age.labels(peer=name).set(round(now - st.last_handshake, 3))
            self.rx.labels(peer=name).set(st.rx_bytes)
            self.tx.labels(peer=name).set(st.tx_bytes)

    def render(self) -> bytes:
        """The text exposition format."""
        return prometheus_client.generate_latest(self.registry)
