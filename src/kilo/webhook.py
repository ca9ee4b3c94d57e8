"""``kg webhook``: the validating admission webhook for Peers (HTTPS, AdmissionReview v1).

Kilo's ``kg webhook`` checks one Peer's syntax; this one refuses what the agents would refuse,
by the agents' own code (``kilo.admission``): a Peer that uses a node's or another Peer's key,
claims a default route or the cluster's own addresses, or overlaps an older Peer. It reads the
Nodes and Peers from the API server for every request. Kilo's flags (``--cert-file``,
``--key-file``, ``--listen``, ``--listen-metrics``) and path (``/validate``) are kept.

TLS: given ``--cert-file`` and ``--key-file`` (cert-manager, kube-webhook-certgen, ...) it
serves those. Without them it makes its own CA and serving certificate at start-up, for the
Service's DNS names (``--service``, ``--namespace``) and ``--tls-san``, keeps both in memory
only, and writes the CA into the ``caBundle`` of every webhook of the
ValidatingWebhookConfiguration ``--webhook-configuration`` (checked again every 30 s, so a
configuration applied later is patched too). Run one replica: each start makes a new CA.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kilo import __version__
from kilo.admission import (
    MAX_REVIEW_BYTES,
    AdmissionSettings,
    BadReview,
    decide,
    parse_review,
    response,
)
from kilo.authorise import PeerPolicy
from kilo.model import DEFAULT_SUBNET, REGION_LABEL, Prefix
from kilo.strict import parse_network

log = logging.getLogger("kilo.webhook")

PATHS = ("/validate", "/validate-peer")
WEBHOOK_CONFIGURATION = "peers.kilo.squat.ai"
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

#: Node and Peer objects as the API server lists them.
ClusterReader = Callable[[], tuple[list[Any], list[Any]]]


# TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca_pem: bytes  # what the API server trusts (the caBundle); empty for files given
    cert_pem: bytes
    key_pem: bytes


def self_signed(names: Sequence[str], days: int = 3650) -> Certificates:
    """A fresh CA and a serving certificate it signs for ``names`` (DNS names or IPs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kilo peer validation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Certificates(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def server_context(certs: Certificates) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: a private directory, removed once read
    with tempfile.TemporaryDirectory(prefix="kilo-webhook-") as d:
        cert, key = Path(d) / "tls.crt", Path(d) / "tls.key"
        cert.write_bytes(certs.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(certs.key_pem)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# the server -------------------------------------------------------------------------------


class Metrics:
    """Kilo's webhook metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter(
            "admission_requests_total",
            "The number of received admission reviews requests",
            ["operation", "response"],
            registry=self.registry,
        )
        self.requests = Counter(
            "http_requests_total",
            "The number of received http requests",
            ["handler", "method"],
            registry=self.registry,
        )
        self.errors = Counter("errors_total", "The total number of errors", registry=self.registry)


@dataclass
class Config:
    listen: tuple[str, int]
    certs: Certificates
    cluster: ClusterReader
    settings: AdmissionSettings = field(default_factory=AdmissionSettings)
    metrics_listen: tuple[str, int] | None = None
    request_timeout: float = 10.0  # seconds a client may take to send its request


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def server_bind(self) -> None:
        import socketserver

        socketserver.TCPServer.server_bind(self)  # no FQDN lookup (see kilo.server)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)


def _handler(cfg: Config, metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = cfg.request_timeout
        server_version = "kilo-webhook"
        sys_version = ""

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _fail(self, code: int, message: str) -> None:
            metrics.errors.inc()
            log.info("%s: HTTP %d: %s", self.address_string(), code, message)
            self.close_connection = True
            self._send(code, (message + "\n").encode())

        def do_GET(self) -> None:
            metrics.requests.labels("other", "GET").inc()
            if self.path == "/healthz":
                self._send(200, b"ok\n")
            else:
                self._fail(404 if self.path not in PATHS else 405, "POST an AdmissionReview")

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            metrics.requests.labels(path if path in PATHS else "other", "POST").inc()
            try:
                self._review(path)
            except (OSError, TimeoutError):
                raise  # the connection broke: nothing to answer on
            except Exception as e:
                log.exception("review failed")
                with contextlib.suppress(OSError):
                    self._fail(500, f"internal error: {type(e).__name__}")

        def _review(self, path: str) -> None:
            if path not in PATHS:
                self._fail(404, f"not found; POST AdmissionReviews to {PATHS[0]}")
                return
            ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip()
            if ctype != "application/json":
                self._fail(415, f"Content-Type {ctype!r}, expected application/json")
                return
            raw = self.headers.get("Content-Length", "")
            if not raw.isdigit() or len(raw) > 12:
                self._fail(411, "Content-Length required")
                return
            if int(raw) > MAX_REVIEW_BYTES:
                self._fail(413, f"body over {MAX_REVIEW_BYTES} bytes")
                return
            body = self.rfile.read(int(raw))
            try:
                req = parse_review(body)
            except BadReview as e:
                self._fail(400, f"not an AdmissionReview: {e}")
                return
            nodes: list[Any] = []
            peers: list[Any] = []
            if req.needs_cluster:
                try:
                    nodes, peers = cfg.cluster()
                except Exception as e:  # noqa: BLE001 - the failure policy decides
                    self._fail(500, f"cannot read the cluster's Nodes and Peers: {e}")
                    return
            verdict = decide(req, nodes, peers, cfg.settings, time.time())
            answer = "allowed" if verdict.allowed else "denied"
            metrics.reviews.labels(req.operation, answer).inc()
            if not verdict.allowed:
                log.info("denied %s of a Peer: %s", req.operation, verdict.message)
            self._send(200, json.dumps(response(req.uid, verdict)).encode(), "application/json")

    return Handler


def _metrics_handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def do_GET(self) -> None:
            ok = self.path.split("?", 1)[0] == "/metrics"
            body = generate_latest(metrics.registry) if ok else b"not found\n"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST if ok else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class Webhook:
    """The HTTPS server (and the metrics server), each in a thread of its own."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._servers[0].server_address[1])

    def start(self) -> None:
        ctx = server_context(self.cfg.certs)
        srv = _Server(self.cfg.listen, _handler(self.cfg, self.metrics), bind_and_activate=False)
        try:
            srv.server_bind()
            srv.server_activate()
            # the handshake happens in the request's thread, under its timeout
            srv.socket = ctx.wrap_socket(
                srv.socket, server_side=True, do_handshake_on_connect=False
            )
        except BaseException:
            srv.server_close()
            raise
        self._servers.append(srv)
        if self.cfg.metrics_listen is not None:
            self._servers.append(_Server(self.cfg.metrics_listen, _metrics_handler(self.metrics)))
        for s in self._servers:
            t = threading.Thread(target=s.serve_forever, name="kilo-webhook", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()


# the API server ---------------------------------------------------------------------------


def cluster_reader(kubeconfig: str | None) -> tuple[ClusterReader, Any]:
    """What reads the Nodes and Peers, and the raw API connection (for the caBundle)."""
    import urllib3

    from kilo.backend.apiserver import NODE_PATH, PEER_PATH, ApiHttp, api_client

    api = ApiHttp(api_client(kubeconfig))
    timeout = urllib3.Timeout(connect=2, read=3)  # the API server waits 5 s at most (manifest)

    def read() -> tuple[list[Any], list[Any]]:
        nodes = api.json("GET", NODE_PATH, patience=1, timeout=timeout)
        peers = api.json("GET", PEER_PATH, patience=1, timeout=timeout)
        return list(nodes.get("items") or []), list(peers.get("items") or [])

    return read, api


def patch_ca_bundle(api: Any, name: str, ca_pem: bytes) -> bool:
    """Writes ``ca_pem`` into every webhook of the configuration ``name`` that lacks it; False
    when the configuration does not exist (yet)."""
    from kilo.backend.apiserver import BackendError

    try:
        vwc = api.json("GET", VWC_PATH + name, patience=1)
    except BackendError as e:
        if e.status == 404:
            return False
        raise
    bundle = base64.b64encode(ca_pem).decode()
    ops: list[dict[str, Any]] = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": vwc["metadata"]["resourceVersion"],
        }
    ]
    for i, w in enumerate(vwc.get("webhooks") or []):
        if (w.get("clientConfig") or {}).get("caBundle") != bundle:
            ops.append(
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            )
    if len(ops) > 1:
        api.json(
            "PATCH",
            VWC_PATH + name,
            body=ops,
            content_type="application/json-patch+json",
            patience=1,
        )
        log.info("wrote the CA into the caBundle of %d webhooks of %s", len(ops) - 1, name)
    return True


def keep_ca_bundle(
    api: Any, name: str, ca_pem: bytes, stop: threading.Event, period: float
) -> None:
    while True:
        try:
            if not patch_ca_bundle(api, name, ca_pem):
                log.warning("ValidatingWebhookConfiguration %s not found (yet)", name)
        except Exception as e:  # noqa: BLE001 - tried again in a period
            log.warning("cannot write the caBundle of %s: %s", name, e)
        if stop.wait(period):
            return


# the command ------------------------------------------------------------------------------


def _cidrs(values: list[str]) -> tuple[Prefix, ...]:
    return tuple(parse_network(c) for raw in values for c in filter(None, raw.split(",")))


def _namespace() -> str:
    try:
        return SA_NAMESPACE.read_text().strip() or "kube-system"
    except OSError:
        return os.environ.get("POD_NAMESPACE") or "kube-system"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kg webhook",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cert-file", default="", help="The path to a certificate file")
    p.add_argument("--key-file", default="", help="The path to a key file")
    p.add_argument("--listen", default=":8443", help="The webhook's HTTPS address (HOST:PORT).")
    p.add_argument(
        "--listen-metrics", default=":1107", help="The metrics' address; '' turns them off."
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="Path to kubeconfig (default: in-cluster config, else $KUBECONFIG or ~/.kube/config).",
    )
    p.add_argument(
        "--service",
        default="kilo-peer-validation",
        help="The webhook's Service: the self-signed certificate is for its DNS names.",
    )
    p.add_argument(
        "--namespace", default=None, help="The Service's namespace (default: the pod's own)."
    )
    p.add_argument(
        "--tls-san",
        action="append",
        default=[],
        help="Another DNS name or IP address for the self-signed certificate (repeatable).",
    )
    p.add_argument(
        "--webhook-configuration",
        default=WEBHOOK_CONFIGURATION,
        help="The ValidatingWebhookConfiguration whose caBundle gets the self-signed CA; "
        "'' leaves it alone.",
    )
    # as the agent's
    p.add_argument("--subnet", default=str(DEFAULT_SUBNET), help="The agents' --subnet.")
    p.add_argument(
        "--service-cidr", action="append", default=[], help="The agents' --service-cidr."
    )
    p.add_argument(
        "--peer-allowed-ranges",
        action="append",
        default=[],
        help="The agents' --peer-allowed-ranges.",
    )
    p.add_argument("--topology-label", default=REGION_LABEL, help="The agents' --topology-label.")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["all", "debug", "info", "warn", "error", "none"],
        help="Log level to use.",
    )
    p.add_argument("--version", action="version", version=__version__)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    from kilo.server import parse_listen

    a = parser().parse_args(argv)
    levels = {"all": 10, "debug": 10, "info": 20, "warn": 30, "error": 40, "none": 60}
    logging.basicConfig(
        level=levels[a.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        settings = AdmissionSettings(
            wireguard_subnet=parse_network(a.subnet),
            service_cidrs=_cidrs(a.service_cidr),
            policy=PeerPolicy(allowed_ranges=_cidrs(a.peer_allowed_ranges)),
            topology_label=a.topology_label,
        )
        listen = parse_listen(a.listen)
        metrics_listen = parse_listen(a.listen_metrics) if a.listen_metrics else None
        if bool(a.cert_file) != bool(a.key_file):
            raise ValueError("give both --cert-file and --key-file, or neither")
    except ValueError as e:
        print(f"kg webhook: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        reader, api = cluster_reader(a.kubeconfig)
        if a.cert_file:
            certs = Certificates(b"", Path(a.cert_file).read_bytes(), Path(a.key_file).read_bytes())
        else:
            ns = a.namespace or _namespace()
            svc = a.service
            names = [f"{svc}.{ns}.svc", svc, f"{svc}.{ns}", f"{svc}.{ns}.svc.cluster.local"]
            certs = self_signed([*names, *a.tls_san])
        hook = Webhook(Config(listen, certs, reader, settings, metrics_listen))
        hook.start()
    except Exception as e:  # noqa: BLE001 - a message, not a traceback
        log.error("cannot start: %s", e)
        sys.exit(1)
    log.info("serving Peer reviews on %s:%d%s", *listen, PATHS[0])
    stop = threading.Event()
    keeper = None
    if certs.ca_pem and a.webhook_configuration:
        keeper = threading.Thread(
            target=keep_ca_bundle,
            args=(api, a.webhook_configuration, certs.ca_pem, stop, 30.0),
            name="kilo-webhook-ca",
            daemon=True,
        )
        keeper.start()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    hook.stop()
    if keeper is not None:
        keeper.join(timeout=5)
    log.info("stopped")
