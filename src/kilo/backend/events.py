"""The Kubernetes Event writer (``kilo.ports.EventSink``): Events about problems with Nodes
and Peers (``kilo.events``), written off the agent's loop.

``emit`` only queues (a bounded queue: when it is full, an Event is dropped and counted);
a thread of its own writes them, at most ``per_minute`` writes a minute (a token bucket, so a
burst of that many goes out at once). Writing one Event: create it; if it is there already
(409: this problem was told before, by this agent or another, under the same name), read it
and patch ``count`` + 1 and ``lastTimestamp``, conditional on the version read (a concurrent
update by another agent is retried). A Peer's uid is looked up, so that ``kubectl describe
peer`` finds the Event. Nothing is raised to the caller: failures are logged and counted
(``on_error``, ``failed``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client

from kilo.backend.apiserver import PEER_PATH, ApiHttp, BackendError, api_client
from kilo.events import ProblemEvent, timestamp

log = logging.getLogger(__name__)

#: Default limits: writes a minute, Events waiting to be written.
PER_MINUTE = 30
QUEUE_SIZE = 256
#: Attempts at a conditional update that other agents' updates keep beating.
UPDATE_ATTEMPTS = 3


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/events"


class KubernetesEventSink:
    """Writes ``ProblemEvent``s to the API server in a background thread."""

    def __init__(
        self,
        kubeconfig: str | Path | None = None,
        *,
        api: k8s_client.ApiClient | None = None,
        per_minute: int = PER_MINUTE,
        queue_size: int = QUEUE_SIZE,
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        patience: float = 2.0,
    ) -> None:
        self.http = ApiHttp(api or api_client(kubeconfig))
        self.per_minute = max(1, per_minute)
        self.on_error = on_error
        self.clock = clock
        self.patience = patience
        self.created = self.updated = self.failed = self.dropped = 0
        self._queue: queue.Queue[ProblemEvent] = queue.Queue(maxsize=max(1, queue_size))
        self._tokens = float(self.per_minute)
        self._filled = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- the port ---------------------------------------------------------------------------
    def emit(self, events: Sequence[ProblemEvent]) -> None:
        """Queue the Events to be written; never blocks, never raises."""
        if self._stop.is_set():
            return
        self._ensure_thread()
        for ev in events:
            try:
                self._queue.put_nowait(ev)
            except queue.Full:
                self.dropped += 1
                self._count_error()
                log.log(
                    logging.WARNING if self.dropped == 1 else logging.DEBUG,
                    "Event queue full: not telling %s %s: %s (%d dropped)",
                    ev.kind,
                    ev.object_name,
                    ev.message,
                    self.dropped,
                )

    # -- lifecycle --------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued Event was written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._queue.all_tasks_done:
                if not self._queue.unfinished_tasks:
                    return True
                self._queue.all_tasks_done.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Stop writing; what is still queued is dropped."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="kilo-events")
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ev = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if self._take_token():
                    self.write(ev)
            except Exception as e:  # noqa: BLE001 - the loop must never see it
                self.failed += 1
                self._count_error()
                log.warning("could not write the Event %s about %s %s: %s",
                            ev.name, ev.kind, ev.object_name, e)  # fmt: skip
            finally:
                self._queue.task_done()

    def _take_token(self) -> bool:
        """Wait for a write to be allowed by the rate limit; False if stopped meanwhile."""
        while not self._stop.is_set():
            now = time.monotonic()
            rate = self.per_minute / 60.0
            self._tokens = min(float(self.per_minute), self._tokens + (now - self._filled) * rate)
            self._filled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self._stop.wait((1.0 - self._tokens) / rate)
        return False

    def _count_error(self) -> None:
        try:
            self.on_error()
        except Exception:  # noqa: BLE001 - a metric must not break the writer
            pass

    # -- writing one Event --------------------------------------------------------------------
    def write(self, ev: ProblemEvent) -> str:
        """Create the Event, or count a repeat of it: ``"created"`` or ``"updated"``. Raises
        ``BackendError`` when the API server refuses or cannot be reached."""
        path = events_path(ev.namespace)
        if ev.kind == "Peer" and not ev.uid:
            ev = replace(ev, uid=self._peer_uid(ev.object_name))
        try:
            self._json("POST", path, body=ev.body(self.clock()))
        except BackendError as e:
            if e.status != 409:
                raise
        else:
            self.created += 1
            log.debug("Event %s created: %s %s: %s", ev.name, ev.kind, ev.object_name, ev.message)
            return "created"
        item = f"{path}/{quote(ev.name, safe='')}"
        for attempt in range(UPDATE_ATTEMPTS):
            current = self._json("GET", item)
            meta = current.get("metadata")
            version = meta.get("resourceVersion") if isinstance(meta, dict) else None
            count = current.get("count")
            patch = {
                "metadata": {"resourceVersion": version},
                "count": (count if isinstance(count, int) and count > 0 else 1) + 1,
                "lastTimestamp": timestamp(self.clock()),
            }
            try:
                self._json("PATCH", item, body=patch, content_type="application/merge-patch+json")
            except BackendError as e:
                if e.status != 409 or attempt == UPDATE_ATTEMPTS - 1:
                    raise
                continue  # another agent counted it meanwhile: read again
            self.updated += 1
            return "updated"
        raise AssertionError("unreachable")  # pragma: no cover

    def _peer_uid(self, name: str) -> str:
        try:
            obj = self._json("GET", f"{PEER_PATH}/{quote(name, safe='')}")
        except BackendError as e:  # gone, or not readable: the Event names it all the same
            log.debug("Peer %s: no uid for its Event: %s", name, e)
            return ""
        meta = obj.get("metadata")
        uid = meta.get("uid") if isinstance(meta, dict) else None
        return uid if isinstance(uid, str) else ""

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return self.http.json(
                method,
                path,
                patience=self.patience,
                timeout=urllib3.Timeout(connect=5, read=10),
                **kwargs,
            )
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise BackendError(f"{method} {path}: {e}") from e
