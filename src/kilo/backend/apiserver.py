"""Requests to the Kubernetes API server: the client's configuration, raw JSON over its
connection pool, and the errors a request ends in.

The HTTP requests go through the official ``kubernetes`` client's configuration and connection
pool (kubeconfig, in-cluster config, client certificates, tokens, exec plugins), but the JSON
is read raw rather than through the generated models, which would rename fields and reformat
timestamps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes.config import incluster_config
from kubernetes.config.config_exception import ConfigException

CRD_NAME = "peers.kilo.squat.ai"
CRD_MANIFEST = "manifests/crds.yaml"
NODE_PATH = "/api/v1/nodes"
PEER_PATH = "/apis/kilo.squat.ai/v1alpha1/peers"
RETRIABLE = frozenset({429, 500, 502, 503, 504})


class BackendError(RuntimeError):
    """A request to the API server failed; the message says which and why."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # the server's Retry-After, when it said one


class CRDMissing(BackendError):
    """The Peer CRD is not installed."""

    def __init__(self) -> None:
        super().__init__(
            f"the Peer custom resource definition ({CRD_NAME}) is not installed in this cluster; "
            f"install it with: kubectl apply -f {CRD_MANIFEST}",
            404,
        )


def api_client(kubeconfig: str | Path | None = None) -> k8s_client.ApiClient:
    """A client from ``kubeconfig``; without one, in-cluster config, else $KUBECONFIG or
    ~/.kube/config, as kubectl does."""
    if kubeconfig:
        return new_client_from_config(config_file=str(kubeconfig))
    cfg = k8s_client.Configuration()
    load_incluster: Callable[..., None] = incluster_config.load_incluster_config
    try:
        load_incluster(client_configuration=cfg)
    except ConfigException:
        return new_client_from_config()
    return k8s_client.ApiClient(cfg)


def new_client_from_config(**kwargs: Any) -> k8s_client.ApiClient:
    """The client's ``new_client_from_config``, its kubeconfig loader imported only when a
    kubeconfig is read: it imports requests and oauthlib (for OIDC), which in-cluster config
    does not need."""
    from kubernetes.config import kube_config

    new_client: Callable[..., k8s_client.ApiClient] = kube_config.new_client_from_config
    return new_client(**kwargs)


class ApiHttp:
    """Raw JSON requests over the client's configured connection pool."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.cfg = api.configuration
        self.pool = api.rest_client.pool_manager
        self.host = str(self.cfg.host).rstrip("/")

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: urllib3.Timeout | None = None,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": "application/json", "User-Agent": "kilo-py"}
        for auth in self.cfg.auth_settings().values():  # refreshes expiring tokens
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = self.host + path + ("?" + urlencode(query) if query else "")
        return self.pool.request(
            method,
            url,
            body=data,
            headers=headers,
            retries=False,
            timeout=timeout or urllib3.Timeout(connect=5, read=30),
            preload_content=not stream,
        )

    def json(
        self, method: str, path: str, *, patience: float = 30.0, **kwargs: Any
    ) -> dict[str, Any]:
        """The decoded response; 429 and 5xx are retried (honouring Retry-After) for up to
        ``patience`` seconds, as the API server says them while it starts up."""
        deadline = time.monotonic() + patience
        while True:
            resp = self.request(method, path, **kwargs)
            if resp.status not in RETRIABLE or time.monotonic() >= deadline:
                break
            delay = retry_after(resp) or 0.5
            time.sleep(min(max(delay, 0.1), 2.0, max(deadline - time.monotonic(), 0.1)))
        if resp.status == 404 and path.startswith(PEER_PATH):
            raise CRDMissing()
        if not 200 <= resp.status < 300:
            raise BackendError(
                f"{method} {path}: HTTP {resp.status}: {reason(resp.data)}", resp.status
            )
        return dict(json.loads(resp.data))


def retry_after(resp: urllib3.BaseHTTPResponse) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def reason(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message") or data[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return data[:200].decode(errors="replace")
