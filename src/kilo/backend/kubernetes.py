"""The Kubernetes backend: Nodes and Peers from the API server, and this node's annotations.

Objects are handled as plain dicts, in the shape ``kubectl get nodes,peers -o json`` prints
them, so ``kilo.translate`` reads a live cluster exactly as it reads a saved dump.

``KubernetesBackend.start()`` lists both kinds, then watches each from the list's
resourceVersion in a thread of its own. A watch that ends (server timeout, API server restart,
network error) resumes from the last resourceVersion seen; ``410 Gone`` means that version is
too old, so the kind is listed again and the difference to what was known is delivered as
events. Events go to a callback or, by default, to the thread-safe queue ``events``.

The requests themselves (client configuration, raw JSON, retries, errors) are
``kilo.backend.apiserver``'s.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client

from kilo.backend.apiserver import (
    NODE_PATH,
    PEER_PATH,
    RETRIABLE,
    ApiHttp,
    BackendError,
    CRDMissing,
    api_client,
    reason,
    retry_after,
)
from kilo.backend.checkins import CheckIns, with_check_in
from kilo.backend.objects import lean
from kilo.backend.stream import body_reads
from kilo.leases import LEASE_LABEL
from kilo.model import Node
from kilo.translate import OWNED_ANNOTATIONS, node_annotations

__all__ = [
    "BackendError",
    "CRDMissing",
    "Event",
    "KubernetesBackend",
    "api_client",
    "list_leases",
    "list_objects",
]

log = logging.getLogger(__name__)

KINDS: dict[str, tuple[str, str]] = {  # kind -> (collection path, apiVersion)
    "Node": (NODE_PATH, "v1"),
    "Peer": (PEER_PATH, "kilo.squat.ai/v1alpha1"),
}
Obj = dict[str, Any]
OUTAGE_MEMORY = 600.0  # seconds an ended outage is remembered


class _Gone(Exception):
    """The resourceVersion to resume from is too old (HTTP 410): list again."""


@dataclass(frozen=True)
class Event:
    """A change: ``type`` is ADDED, MODIFIED or DELETED; ``old`` is the previous object.
    ``check_in``: the event is a check-in recognised undecoded (``kilo.backend.checkins``):
    ``object`` is ``old`` with a new resourceVersion and this ``last-seen`` value, nothing else."""

    kind: str
    type: str
    object: Obj
    old: Obj | None = None
    check_in: str | None = None

    @property
    def name(self) -> str:
        return str(self.object.get("metadata", {}).get("name", ""))


#: Objects per page when listing (client-go's reflector lists in pages too).
LIST_PAGE = 250


def lease_path(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases"


def _with_type(obj: Obj, kind: str, api_version: str) -> Obj:
    """The object as kubectl prints it: apiVersion and kind first (list items come without
    them) and no metadata.managedFields."""
    out = {"apiVersion": api_version, "kind": kind}
    out.update(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return out


#: How a listed object is kept: ``_with_type`` (as kubectl prints it) or ``lean``.
Keep = Callable[[Obj, str, str], Obj]


def _name(obj: Obj) -> str:
    """The name of a lean object (``lean``: metadata is a dict of strings)."""
    return str(obj["metadata"].get("name", ""))


def _rv(obj: Obj) -> str:
    return str(obj["metadata"].get("resourceVersion", ""))


class KubernetesBackend:
    """Lists and watches Nodes and Peers; writes the local node's own annotations."""

    def __init__(
        self,
        kubeconfig: str | Path | None = None,
        *,
        api: k8s_client.ApiClient | None = None,
        on_event: Callable[[Event], None] | None = None,
        watch_timeout: int = 300,
        lease_namespace: str | None = None,
    ) -> None:
        """``lease_namespace``: also watch the locations' leader Leases there (native
        liveness)."""
        self.api = api or api_client(kubeconfig)
        self.http = ApiHttp(self.api)
        self.on_event = on_event
        self.events: queue.Queue[Event] = queue.Queue()
        self.watch_timeout = watch_timeout
        self.node_watch_pause = NODE_WATCH_PAUSE
        self.relists = 0  # how often a kind was listed again after the first time
        self.kinds = dict(KINDS)
        self.selectors: dict[str, str] = {}  # kind -> label selector
        if lease_namespace is not None:
            self.kinds["Lease"] = (lease_path(lease_namespace), "coordination.k8s.io/v1")
            self.selectors["Lease"] = LEASE_LABEL
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Obj]] = {kind: {} for kind in self.kinds}
        self._rv: dict[str, str | None] = {kind: None for kind in self.kinds}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: dict[str, urllib3.BaseHTTPResponse] = {}
        # wall-clock [start, end] of the spells in which the watches could not reach the API
        # server (end None: still away); the cache is not current then
        self._outages: list[list[float | None]] = []
        self._check_ins = CheckIns()  # Kilo's check-ins recognised without decoding them

    # one-shot reads

    def list_kind(self, kind: str, keep: Keep | None = None) -> tuple[list[Obj], str]:
        """All objects of ``kind`` and the list's resourceVersion; each as ``kubectl`` prints it
        (``keep`` None), or reduced to what the agent reads (``keep=lean``)."""
        path, api_version = self.kinds[kind]
        shape = keep or _with_type
        out: list[Obj] = []
        token = ""
        while True:  # in pages, one consistent snapshot: a page's raw objects are dropped as
            # soon as they are reduced, so the agent's peak memory is a page, not the cluster
            query = {"limit": str(LIST_PAGE)}
            if kind in self.selectors:
                query["labelSelector"] = self.selectors[kind]
            if token:
                query["continue"] = token
            body = self.http.json("GET", path, query=query)
            items = body.get("items")
            if isinstance(items, list):
                out += [shape(item, kind, api_version) for item in items if isinstance(item, dict)]
            del items
            raw_meta = body.get("metadata")
            meta: Obj = raw_meta if isinstance(raw_meta, dict) else {}
            del body
            token = str(meta.get("continue") or "")
            if not token:
                return out, str(meta.get("resourceVersion", ""))

    def list_objects(self) -> tuple[list[Obj], list[Obj]]:
        """The cluster's Node and Peer objects, as ``kubectl get nodes,peers -o json`` items."""
        return self.list_kind("Node")[0], self.list_kind("Peer")[0]

    def nodes(self) -> list[Obj]:
        """The Nodes as last seen by the watch (after ``start``)."""
        with self._lock:
            return list(self._cache["Node"].values())

    def peers(self) -> list[Obj]:
        with self._lock:
            return list(self._cache["Peer"].values())

    def leases(self) -> list[Obj]:
        """The leader Leases as last seen by the watch (none unless they are watched)."""
        with self._lock:
            return list(self._cache.get("Lease", {}).values())

    def write_lease(self, lease: Obj) -> Obj:
        """Create a leader Lease, or replace the version of it named by its resourceVersion
        (HTTP 409 if it changed since: another agent was first)."""
        if "Lease" not in self.kinds:
            raise BackendError("Leases are not watched (not in the native liveness mode)")
        path = self.kinds["Lease"][0]
        meta = lease.get("metadata") or {}
        if meta.get("resourceVersion"):
            return self.http.json(
                "PUT", f"{path}/{quote(str(meta.get('name', '')), safe='')}", body=lease, patience=2
            )
        return self.http.json("POST", path, body=lease, patience=2)

    def outages(self) -> list[tuple[float, float | None]]:
        """The recent spells (wall-clock start, end; end None while it lasts) in which the API
        server could not be reached, oldest first: the agent does not hold them against a
        node's check-in, which could not get through either."""
        with self._lock:
            return [(float(s or 0.0), e) for s, e in self._outages]

    def _unreachable(self) -> None:
        with self._lock:
            if not self._outages or self._outages[-1][1] is not None:
                self._outages.append([time.time(), None])

    def _reached(self) -> None:
        with self._lock:
            if self._outages and self._outages[-1][1] is None:
                self._outages[-1][1] = time.time()
            horizon = time.time() - OUTAGE_MEMORY
            self._outages = [o for o in self._outages if o[1] is None or float(o[1]) > horizon]

    # the local node

    def set_node_annotations(self, name: str, annotations: Mapping[str, str | None]) -> Obj:
        """Merge-patch ``annotations`` (None removes one) into Node ``name``, touching no other
        key. Only the annotations the agent owns may be written."""
        foreign = sorted(set(annotations) - set(OWNED_ANNOTATIONS))
        if foreign:
            raise ValueError(f"not annotations the agent owns: {', '.join(foreign)}")
        body = {"metadata": {"annotations": dict(annotations)}}
        return self.http.json(
            "PATCH",
            f"{NODE_PATH}/{quote(name, safe='')}",
            body=body,
            content_type="application/merge-patch+json",
        )

    def publish_node(self, node: Node) -> Obj:
        """Write the annotations that describe ``node`` (its key, IPs, endpoint, last seen)."""
        return self.set_node_annotations(node.name, node_annotations(node))

    def clean_up(self, name: str) -> Obj:
        """Remove every annotation the agent owns from Node ``name``."""
        return self.set_node_annotations(name, {key: None for key in OWNED_ANNOTATIONS})

    # watching

    def start(self) -> None:
        """List both kinds (errors, such as a missing CRD, are raised here), then watch them in
        background threads until ``stop``."""
        for kind in self.kinds:
            self._relist(kind)
        for kind in self.kinds:
            thread = threading.Thread(
                target=self._run, args=(kind,), daemon=True, name=f"kilo-watch-{kind.lower()}"
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for resp in list(self._streams.values()):
            try:
                resp.shutdown()
            except Exception:  # noqa: BLE001  (the stream may already be gone)
                pass
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def __enter__(self) -> KubernetesBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _emit(self, event: Event) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s", event.type, event.kind, event.name)
        if self.on_event is not None:
            self.on_event(event)
        else:
            self.events.put(event)

    def _relist(self, kind: str) -> None:
        items, rv = self.list_kind(kind, lean)
        self._reached()
        fresh = {name: obj for obj in items if (name := _name(obj))}
        with self._lock:
            old = self._cache[kind]
            self._cache[kind] = fresh
            self._rv[kind] = rv
            if kind == "Node":
                self._check_ins.clear()
        for name, obj in fresh.items():
            if name not in old:
                self._emit(Event(kind, "ADDED", obj))
            elif _rv(old[name]) != _rv(obj):
                self._emit(Event(kind, "MODIFIED", obj, old[name]))
        for name, obj in old.items():
            if name not in fresh:
                self._emit(Event(kind, "DELETED", obj, obj))

    def _run(self, kind: str) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                if self._rv[kind] is None:
                    self._relist(kind)
                    self.relists += 1
                self._watch(kind)
                delay = 0.2
            except _Gone:
                log.info("watch of %ss: resourceVersion expired, listing again", kind)
                self._rv[kind] = None
            except (BackendError, urllib3.exceptions.HTTPError, OSError, ValueError) as err:
                if self._stop.is_set():
                    return
                if not isinstance(err, (BackendError, ValueError)) or (
                    isinstance(err, BackendError) and err.status in RETRIABLE
                ):
                    self._unreachable()  # not a refusal (a missing CRD, RBAC): the server is away
                hint = getattr(err, "retry_after", None)
                wait = min(hint, 5.0) if hint is not None else delay
                log.warning("watch of %ss failed, retrying in %.1f s: %s", kind, wait, err)
                self._stop.wait(wait)
                if hint is None:
                    delay = min(delay * 2, 5.0)

    def _watch(self, kind: str) -> None:
        timeout = self.watch_timeout + random.randint(0, max(self.watch_timeout // 5, 1))
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self._rv[kind] or "",
            "timeoutSeconds": str(timeout),
        }
        if kind in self.selectors:
            query["labelSelector"] = self.selectors[kind]
        log.debug("watching %ss from resourceVersion %s", kind, self._rv[kind])
        resp = self.http.request(
            "GET",
            self.kinds[kind][0],
            query=query,
            stream=True,
            timeout=urllib3.Timeout(connect=5, read=timeout + 30),
        )
        if resp.status != 200:
            data = resp.read()
            resp.release_conn()
            if resp.status == 410:
                raise _Gone()
            if resp.status == 404 and kind == "Peer":
                raise CRDMissing()
            raise BackendError(
                f"watch {kind}s: HTTP {resp.status}: {reason(data)}",
                resp.status,
                retry_after(resp),
            )
        self._reached()
        self._streams[kind] = resp
        try:
            pause = self.node_watch_pause if kind == "Node" else 0.0
            for line in _lines(resp, pause=pause, wait=self._stop.wait):
                if self._stop.is_set():
                    return
                self._line(kind, line)
        finally:
            self._streams.pop(kind, None)
            resp.close()  # never hand a half-read stream back to the pool
            resp.release_conn()

    def _line(self, kind: str, line: bytes) -> None:
        """One line of the watch stream: a check-in taken undecoded, or the event decoded."""
        if kind == "Node" and self._check_in(line):
            return
        obj = self._handle(kind, json.loads(line))
        if kind == "Node" and obj is not None:
            self._check_ins.learn(line, obj)

    def _check_in(self, line: bytes) -> bool:
        """Take ``line`` if it is a check-in ``CheckIns`` recognises (no JSON decoded): the
        node's object as it was with the new resourceVersion and ``last-seen``."""
        hit = self._check_ins.match(line)
        if hit is None:
            return False
        name, before, rv, seen = hit
        with self._lock:
            old = self._cache["Node"].get(name)
            if old is None or _rv(old) != before:
                return False
            obj = with_check_in(old, rv, seen)
            self._cache["Node"][name] = obj
            self._rv["Node"] = rv
        self._check_ins.matched(name, rv)
        self._emit(Event("Node", "MODIFIED", obj, old, seen))
        return True

    def _handle(self, kind: str, event: object) -> Obj | None:
        """One decoded watch event: the cache updated and the change emitted; the object kept
        for an ADDED or MODIFIED event. Anything of no known shape is skipped (logged), never
        raised."""
        if not isinstance(event, dict):
            log.warning("watch of %ss: skipped an event that is not an object", kind)
            return None
        etype, raw = event.get("type"), event.get("object")
        if etype == "ERROR":
            status: Obj = raw if isinstance(raw, dict) else {}
            raw_code = status.get("code")
            code = raw_code if isinstance(raw_code, int) else 0
            if code == 410:
                raise _Gone()
            raise BackendError(f"watch {kind}s: {status.get('message', status)}", code)
        obj = lean(raw, kind, self.kinds[kind][1])
        name, rv = _name(obj), _rv(obj)
        if etype == "BOOKMARK":
            self._rv[kind] = rv or self._rv[kind]
            return None
        if etype not in ("ADDED", "MODIFIED", "DELETED") or not name:
            log.warning("watch of %ss: skipped a %r event of object %r", kind, etype, name)
            return None
        with self._lock:
            old = self._cache[kind].get(name)
            if etype == "DELETED":
                self._cache[kind].pop(name, None)
            else:
                self._cache[kind][name] = obj
            self._rv[kind] = rv or self._rv[kind]
            if kind == "Node":
                self._check_ins.forget(name)
        self._emit(Event(kind, str(etype), obj, old))
        return obj if etype != "DELETED" else None


#: After a read of the Node watch, wait this long before the next and take what arrived
#: meanwhile at once (``kilo.backend.stream.body_reads``): Kilo's check-ins (33 a second at
#: 1,000 nodes) wake the watch five times a second instead of once each; a change after a quiet
#: spell is taken at once, one within a burst at most this much later.
NODE_WATCH_PAUSE = 0.2
#: The longest watch event taken (etcd stores objects of at most 1.5 MiB); a longer line ends
#: the watch with an error, and the watch is made again.
MAX_LINE = 16 << 20


def _lines(
    resp: urllib3.BaseHTTPResponse,
    max_line: int = MAX_LINE,
    pause: float = 0.0,
    wait: Callable[[float], object] = time.sleep,
) -> Iterator[bytes]:
    """The newline-separated JSON documents of a watch stream, as they arrive (``pause``: see
    ``body_reads``)."""
    return split_lines(body_reads(resp, pause=pause, wait=wait), max_line)


def split_lines(chunks: Iterator[bytes], max_line: int = MAX_LINE) -> Iterator[bytes]:
    """The non-blank lines of a stream of byte chunks (a last line without its newline too);
    ``BackendError`` once a line grows beyond ``max_line`` bytes."""
    tail = b""
    for chunk in chunks:
        if b"\n" not in chunk:
            tail += chunk
            if len(tail) > max_line:
                raise BackendError(f"a watch event of more than {max_line} bytes")
            continue
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            if len(line) > max_line:
                raise BackendError(f"a watch event of more than {max_line} bytes")
            if line.strip():
                yield line
        if len(tail) > max_line:
            raise BackendError(f"a watch event of more than {max_line} bytes")
    if tail.strip():
        yield tail


def list_objects(kubeconfig: str | Path | None = None) -> tuple[list[Obj], list[Obj]]:
    """Node and Peer objects of the cluster ``kubeconfig`` points at (see ``api_client``)."""
    backend = KubernetesBackend(kubeconfig)
    try:
        return backend.list_objects()
    finally:
        close: Callable[[], None] = backend.api.close
        close()


def list_leases(kubeconfig: str | Path | None, namespace: str) -> list[Obj]:
    """The locations' leader Leases in ``namespace`` (native liveness)."""
    backend = KubernetesBackend(kubeconfig, lease_namespace=namespace)
    try:
        return backend.list_kind("Lease")[0]
    finally:
        close: Callable[[], None] = backend.api.close
        close()
