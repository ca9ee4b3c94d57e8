"""The few API calls the differential makes, as the control plane's admin over HTTPS: create an
object (the API server's refusal is returned, not raised) and delete every Node and Peer."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from typing import Any

from kilo_lab.controlplane import ControlPlane

PEERS = "/apis/kilo.squat.ai/v1alpha1/peers"
NODES = "/api/v1/nodes"


class Api:
    def __init__(self, cp: ControlPlane) -> None:
        assert cp.dir is not None
        self.ctx = ssl.create_default_context(cafile=str(cp.dir / "ca.crt"))
        self.ctx.load_cert_chain(str(cp.dir / "admin.crt"), str(cp.dir / "admin.key"))
        self.host, self.port = "127.0.0.1", cp.port

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
        try:
            data = None if body is None else json.dumps(body)
            conn.request(method, path, data, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def create(self, obj: dict[str, Any]) -> str | None:
        """Create ``obj``; None, or the API server's message when it refuses it."""
        path = NODES if obj["kind"] == "Node" else PEERS
        status, answer = self.call("POST", path, obj)
        if status in (200, 201):
            return None
        msg = answer.get("message", "") if isinstance(answer, dict) else repr(answer)
        return f"HTTP {status}: {msg}"

    def clear(self) -> None:
        """Delete every Node and Peer and wait until none is listed."""
        for path in (NODES, PEERS):
            self.call("DELETE", path)
        for _ in range(200):
            counts = [len(self.call("GET", p)[1].get("items") or []) for p in (NODES, PEERS)]
            if counts == [0, 0]:
                return
            time.sleep(0.05)
        raise RuntimeError("Nodes or Peers are still listed after deleting them")
