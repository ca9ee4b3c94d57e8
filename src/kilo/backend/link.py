"""``kgctl link``'s side of the API: one linked cluster (its Nodes, Peers and Leases read, the
Peers a link owns listed and written), and the passes that keep two clusters linked."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kilo.backend.apiserver import PEER_PATH, BackendError
from kilo.backend.kubernetes import KubernetesBackend
from kilo.link import LINK_LABEL, Changes, carrier_of, changes, exported_peers
from kilo.mesh import ClusterState, Options, UserError, read_cluster
from kilo.model import Prefix
from kilo.topology import TopologyError

log = logging.getLogger("kilo.link")

Obj = dict[str, Any]


@dataclass
class End:
    """One cluster of a link: where it is, its name, and what its leaders carry beyond their
    segments (e.g. its service CIDR)."""

    kubeconfig: str | Path
    name: str
    extra_ips: Sequence[Prefix] = ()
    lease_namespace: str = "kube-system"
    _backend: KubernetesBackend | None = field(default=None, repr=False)

    @property
    def backend(self) -> KubernetesBackend:
        if self._backend is None:
            self._backend = KubernetesBackend(self.kubeconfig, lease_namespace=self.lease_namespace)
        return self._backend

    def state(self, topology_label: str) -> ClusterState:
        nodes, peers = self.backend.list_objects()
        leases: list[Obj] = []
        try:
            leases = self.backend.list_kind("Lease")[0]
        except BackendError as e:  # a link without Lease access: Kilo's leader rule
            log.debug("%s: no Leases: %s", self.name, e)
        return read_cluster(nodes, peers, topology_label, leases)

    def owned(self, source: str) -> list[Obj]:
        items = self.backend.http.json(
            "GET", PEER_PATH, query={"labelSelector": f"{LINK_LABEL}={source}"}
        ).get("items", [])
        return [o for o in items if isinstance(o, dict)]

    def write(self, ch: Changes) -> list[str]:
        """Applies each change on its own; the errors, one line each."""
        errors: list[str] = []
        http = self.backend.http
        for obj in ch.create:
            name = obj["metadata"]["name"]
            try:
                http.json("POST", PEER_PATH, body=obj, patience=10)
                log.info("%s: created Peer %s", self.name, name)
            except BackendError as e:
                why = "exists and is not this link's; left alone" if e.status == 409 else str(e)
                errors.append(f"{self.name}: Peer {name}: {why}")
        for obj in ch.update:
            name = obj["metadata"]["name"]
            try:
                http.json("PUT", f"{PEER_PATH}/{quote(name, safe='')}", body=obj, patience=10)
                log.info("%s: updated Peer %s", self.name, name)
            except BackendError as e:
                errors.append(f"{self.name}: Peer {name}: {e}")
        for name, uid in ch.delete:
            body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
            if uid:
                body["preconditions"] = {"uid": uid}
            try:
                http.json("DELETE", f"{PEER_PATH}/{quote(name, safe='')}", body=body, patience=10)
                log.info("%s: deleted Peer %s", self.name, name)
            except BackendError as e:
                if e.status != 404:
                    errors.append(f"{self.name}: Peer {name}: {e}")
        return errors

    def close(self) -> None:
        if self._backend is not None:
            close: Callable[[], None] = self._backend.api.close
            close()
            self._backend = None


def sync(src: End, dst: End, opts: Options, now: int) -> tuple[Changes, list[str], list[str]]:
    """One pass in one direction: src's leaders as Peers in dst; the changes, warnings and
    errors. A source that cannot be read or has no ready node changes nothing (a cluster that
    is briefly unreadable must not unlink)."""
    try:
        owned = dst.owned(src.name)
    except (BackendError, OSError) as e:
        return Changes(), [], [f"{dst.name}: Peers not listed ({e})"]
    try:
        state = src.state(opts.topology_label)
        carrier = carrier_of(owned, src.extra_ips)
        desired, warnings = exported_peers(state, opts, now, src.name, src.extra_ips, carrier)
    except (BackendError, UserError, TopologyError, OSError) as e:
        why = f"{src.name}: not read ({e}); its Peers in {dst.name} stay as they are"
        return Changes(), [], [why]
    ch = changes(desired, owned, src.name)
    return ch, warnings, dst.write(ch)


def unlink(src: End, dst: End) -> list[str]:
    """Deletes the Peers src's link made in dst."""
    try:
        ch = changes({}, dst.owned(src.name), src.name)
    except (BackendError, OSError) as e:
        return [f"{dst.name}: Peers not listed ({e})"]
    return dst.write(ch)


def run(
    a: End,
    b: End,
    opts: Options,
    period: float,
    clock: Callable[[], float],
    stop: threading.Event,
    once: bool = False,
) -> int:
    """Passes in both directions every ``period`` seconds until ``stop`` (one with ``once``);
    each warning or error is logged when it first appears. 1 if the last pass had errors."""
    said: set[str] = set()
    while True:
        now = int(clock())
        lines: list[str] = []
        errors = 0
        for src, dst in ((a, b), (b, a)):
            _, warnings, failed = sync(src, dst, opts, now)
            lines += warnings + failed
            errors += len(failed)
        for line in lines:
            if line not in said:
                log.warning("%s", line)
        said = set(lines)
        if once or stop.wait(period):
            return 1 if errors else 0
