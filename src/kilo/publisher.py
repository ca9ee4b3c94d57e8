"""Writing the local node's own annotations back to the cluster: when they change, and on
every check-in (Kilo's ``last-seen`` heartbeat), retried sooner while the API server is away."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from kilo.model import CHECK_IN_PERIOD_SECONDS
from kilo.ports import Clock, ClusterBackend
from kilo.translate import LAST_SEEN

log = logging.getLogger("kilo.agent")

#: Seconds between attempts after a failed check-in (an API outage), instead of a full period.
CHECK_IN_RETRY_SECONDS = 5.0


class Publisher:
    def __init__(
        self,
        backend: ClusterBackend,
        hostname: str,
        clock: Clock,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.backend = backend
        self.hostname = hostname
        self.clock = clock
        self.on_error = on_error
        self.ok = True  # the last attempt reached the API server
        self._written: dict[str, str] | None = None  # the last written, without last-seen
        self._attempted = 0.0  # monotonic time of the last check-in attempt

    def next_check_in(self) -> float:
        """When the next check-in is due (monotonic): a period after the last, sooner after a
        failure so that the node is seen again soon after the API server returns."""
        wait = CHECK_IN_PERIOD_SECONDS if self.ok else CHECK_IN_RETRY_SECONDS
        return self._attempted + wait

    def check_in(self, annotations: Mapping[str, str] | None) -> bool:
        """Write ``annotations`` with last-seen set to now, changed or not (None: nothing to
        write yet; the attempt still counts)."""
        self._attempted = self.clock.monotonic()
        if annotations is None:
            return self.ok
        fresh = dict(annotations)
        fresh[LAST_SEEN] = str(int(self.clock.time()))
        return self.publish(fresh, force=True)

    def publish(self, annotations: Mapping[str, str], force: bool = False) -> bool:
        """Write the annotations if they differ from the last written (last-seen aside), or
        always with ``force``; False if the API server refused or could not be reached."""
        comparable = {k: v for k, v in annotations.items() if k != LAST_SEEN}
        if not force and comparable == self._written:
            return True
        try:
            self.backend.set_node_annotations(self.hostname, annotations)
        except Exception as e:  # noqa: BLE001 - the API may be away; retried at the next check-in
            self.on_error()
            if self.ok:
                log.error("failed to update the local node's annotations: %s", e)
            else:
                log.debug("still failing to update the local node's annotations: %s", e)
            self.ok = False
            return False
        if not self.ok:
            log.info("updated the local node's annotations again")
        self._written = comparable
        self._attempted = self.clock.monotonic()
        self.ok = True
        return True
