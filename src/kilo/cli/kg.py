"""``kg``: the Kilo agent. Flags, defaults and meanings follow Kilo's ``kg``.
``kg webhook``, as in Kilo, is the Peer validation webhook instead (``kg webhook --help``).

Where we differ on purpose:
  --clean-up defaults to false: an ordinary restart keeps the device, routes and firewall so no
      packet is dropped; pass --clean-up=true to remove everything on shutdown.
  --private-key (new): where the WireGuard private key is kept (Kilo: fixed /var/lib/kilo/key).
  --wireguard (new): auto (kernel module if present, else wireguard-go), kernel or userspace.
  --mesh-granularity also accepts cross.
  --key-rotation-period (new) and SIGUSR1: rotate the WireGuard key (Kilo never does).
  The firewall is one nftables table of our own (--nft-table) instead of iptables chains.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from kilo import __version__
from kilo.authorise import PeerPolicy
from kilo.model import (
    DEFAULT_CNI_PATH,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    REGION_LABEL,
    Granularity,
    Prefix,
)
from kilo.routes import Compatibility, Encapsulation, Strategy
from kilo.strict import parse_network

LOG_LEVELS = {
    "all": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 10,
}


def _bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes", "t"):
        return True
    if v.lower() in ("false", "0", "no", "f"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {v!r}")


def _cidrs(values: list[str]) -> list[Prefix]:
    out = []
    for raw in values:
        for c in filter(None, raw.split(",")):
            out.append(parse_network(c))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def b(name: str, default: bool, help: str) -> None:
        p.add_argument(
            name,
            type=_bool,
            nargs="?",
            const=True,
            default=default,
            metavar="BOOL",
            help=f"{help} (default {str(default).lower()})",
        )

    p.add_argument(
        "--backend",
        default="kubernetes",
        help="The backend for the mesh. Possible values: kubernetes",
    )
    b("--clean-up", False, "Should kilo clean up network modifications on shutdown?")
    b("--clean-up-interface", False, "Should Kilo delete its interface when it shuts down?")
    b("--create-interface", True, "Should kilo create an interface on startup?")
    b("--cni", True, "Should Kilo manage the node's CNI configuration?")
    p.add_argument("--cni-path", default=DEFAULT_CNI_PATH, help="Path to CNI config.")
    p.add_argument(
        "--compatibility",
        default="",
        choices=["", "flannel", "cilium"],
        help="Should Kilo run in compatibility mode? Possible values: flannel, cilium",
    )
    p.add_argument(
        "--encapsulate",
        default="always",
        choices=[s.value for s in Strategy],
        help="When should Kilo encapsulate packets within a location? (default always)",
    )
    p.add_argument(
        "--mesh-granularity",
        default="location",
        choices=["location", "full", "cross"],
        help="The granularity of the network mesh to create.",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="Path to kubeconfig (default: in-cluster config, else $KUBECONFIG or ~/.kube/config).",
    )
    p.add_argument(
        "--hostname", required=True, help="Hostname of the node on which this process is running."
    )
    p.add_argument(
        "--interface",
        default=DEFAULT_INTERFACE,
        help="Name of the Kilo interface to use; if it does not exist, it will be created.",
    )
    p.add_argument(
        "--listen", default=":1107", help="The address at which to listen for health and metrics."
    )
    b("--local", True, "Should Kilo manage routes within a location?")
    p.add_argument(
        "--mtu",
        default="auto",
        help="The MTU of the WireGuard interface created by Kilo. "
        "'auto' detects it from the underlay interface.",
    )
    p.add_argument(
        "--topology-label",
        default=REGION_LABEL,
        help="Kubernetes node label used to group nodes into logical locations.",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="The port over which WireGuard peers should communicate.",
    )
    p.add_argument(
        "--service-cidr",
        action="append",
        default=[],
        help="The service CIDR for the Kubernetes cluster (repeatable); not masqueraded.",
    )
    p.add_argument(
        "--peer-allowed-ranges",
        action="append",
        default=[],
        help="CIDRs inside which Peers may claim any allowed IP, the cluster's own addresses "
        "included (repeatable, comma-separated); outside them a Peer may not claim a default "
        "route, the cluster's addresses or another Peer's.",
    )
    p.add_argument(
        "--internal-cidr",
        action="append",
        default=[],
        help="CIDRs to consider for internal IP auto-detection (repeatable).",
    )
    p.add_argument(
        "--subnet",
        default=str(DEFAULT_SUBNET),
        help="CIDR from which to allocate addresses for WireGuard interfaces.",
    )
    p.add_argument(
        "--resync-period",
        default="30s",
        help="How often should the Kilo controllers reconcile? (e.g. 30s, 1m)",
    )
    b(
        "--iptables-forward-rules",
        False,
        "Add default accept rules for forwarding (an nftables forward chain here).",
    )
    b(
        "--prioritise-private-addresses",
        False,
        "Prefer to assign a private IP address to the node's endpoint.",
    )
    p.add_argument(
        "--log-level", default="info", choices=list(LOG_LEVELS), help="Log level to use."
    )
    p.add_argument(
        "--private-key",
        default="/var/lib/kilo/key",
        help="Where the WireGuard private key is kept (mode 0600; made if missing).",
    )
    p.add_argument(
        "--key-rotation-period",
        default="0",
        help="How often to rotate the WireGuard key (e.g. 24h, 30m; 0: never). "
        "SIGUSR1 rotates it at once.",
    )
    p.add_argument(
        "--wireguard",
        default="auto",
        choices=["auto", "kernel", "userspace"],
        help="Which WireGuard to use: the kernel module if present (auto), or wireguard-go.",
    )
    p.add_argument(
        "--wireguard-go",
        default=None,
        metavar="PATH",
        help="The wireguard-go binary for --wireguard userspace "
        "(default: $KILO_BIN_WIREGUARD_GO, else wireguard-go on PATH).",
    )
    p.add_argument(
        "--nft-table",
        default="kilo",
        help="The name of the agent's own nftables table (family inet).",
    )
    p.add_argument(
        "--liveness",
        default="compat",
        choices=["compat", "native"],
        help="How nodes prove they are alive: Kilo's last-seen check-ins (compat), or "
        "per-location leader Leases and probes (native; applies once every node runs it).",
    )
    p.add_argument(
        "--lease-namespace",
        default="kube-system",
        help="Where the locations' leader Leases are kept (native liveness).",
    )
    p.add_argument(
        "--probe-port",
        type=int,
        default=1107,
        help="The UDP port of the liveness probes (native liveness).",
    )
    p.add_argument(
        "--events-per-minute",
        type=int,
        default=30,
        help="At most this many Kubernetes Events a minute about problems with Nodes and Peers "
        "(a Warning on the object, deduplicated; 0: none).",
    )
    p.add_argument(
        "--http-timeout",
        default="10s",
        help="The time a client of --listen has to send its request, and for each read and "
        "write; a slower one is disconnected.",
    )
    p.add_argument(
        "--http-max-connections",
        type=int,
        default=16,
        help="At most this many connections to --listen are served at once; more get a 503.",
    )
    p.add_argument(
        "--graph-cpu-limit",
        default="10s",
        help="The CPU time one /graph?format=svg|png render may take (one at a time, cached "
        "by topology); beyond it /graph answers 503.",
    )
    p.add_argument("--version", action="version", version=__version__)
    return p


def _duration(s: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for u in ("ms", "s", "m", "h"):
        if s.endswith(u) and s[: -len(u)].replace(".", "", 1).isdigit():
            return float(s[: -len(u)]) * units[u]
    if s.replace(".", "", 1).isdigit():
        return float(s)
    raise ValueError(f"invalid duration {s!r}")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["webhook"]:  # Kilo's `kg webhook`: the Peer validation server
        from kilo.webhook import main as webhook

        webhook(args[1:])
        return
    a = parser().parse_args(args)
    logging.basicConfig(
        level=LOG_LEVELS[a.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    log = logging.getLogger("kg")
    from kilo.agent import Agent, AgentConfig, Ports
    from kilo.leadership import Liveness
    from kilo.plan import Settings
    from kilo.server import Limits

    try:
        if a.backend != "kubernetes":
            raise ValueError(f"backend {a.backend} unknown; possible values are: kubernetes")
        if not 1 <= a.port <= 65535:
            raise ValueError(f"invalid port {a.port}")
        settings = Settings(
            hostname=a.hostname,
            interface=a.interface,
            port=a.port,
            subnet=parse_network(a.subnet),
            granularity=Granularity(a.mesh_granularity),
            local=a.local,
            encapsulation=Encapsulation(Strategy(a.encapsulate), Compatibility(a.compatibility)),
            mtu=None if a.mtu == "auto" else int(a.mtu),
            cni=a.cni,
            service_cidrs=tuple(_cidrs(a.service_cidr)),
            peer_policy=PeerPolicy(allowed_ranges=tuple(_cidrs(a.peer_allowed_ranges))),
            forward_rules=a.iptables_forward_rules,
            prioritise_private=a.prioritise_private_addresses,
            nft_table=a.nft_table,
            liveness=Liveness(a.liveness),
        )
        if not 1 <= a.probe_port <= 65535:
            raise ValueError(f"invalid probe port {a.probe_port}")
        if a.events_per_minute < 0:
            raise ValueError(f"invalid number of events a minute {a.events_per_minute}")
        cfg = AgentConfig(
            settings=settings,
            topology_label=a.topology_label,
            internal_cidrs=tuple(_cidrs(a.internal_cidr)),
            resync_period=_duration(a.resync_period),
            create_interface=a.create_interface,
            clean_up=a.clean_up,
            clean_up_interface=a.clean_up_interface,
            lease_namespace=a.lease_namespace,
            key_rotation_period=_duration(a.key_rotation_period),
        )
        limits = Limits(
            timeout=_duration(a.http_timeout),
            max_connections=a.http_max_connections,
            graph_cpu_seconds=max(1, round(_duration(a.graph_cpu_limit))),
        )
        if limits.timeout <= 0 or limits.max_connections < 1:
            raise ValueError("--http-timeout and --http-max-connections must be positive")
    except ValueError as e:
        print(f"kg: {e}", file=sys.stderr)
        sys.exit(2)

    from kilo.backend.events import KubernetesEventSink
    from kilo.backend.kubernetes import BackendError, KubernetesBackend
    from kilo.dataplane.files import AgentFiles, KeyFileError
    from kilo.dataplane.host import LocalHost
    from kilo.dataplane.netlink import Netlink
    from kilo.dataplane.nftables import Nftables
    from kilo.dataplane.prober import UdpProber
    from kilo.dataplane.wgdevice import open_device
    from kilo.server import serve

    try:
        backend = KubernetesBackend(
            a.kubeconfig,
            lease_namespace=a.lease_namespace if a.liveness == "native" else None,
        )
        ports = Ports(
            backend=backend,
            device=open_device(a.interface, a.wireguard, binary=a.wireguard_go),
            routes=Netlink(yielding=yielding_devices(Compatibility(a.compatibility))),
            firewall=Nftables(owned=(("inet", a.nft_table),)),
            host=LocalHost(),
            files=AgentFiles(a.private_key, a.cni_path),
            prober=UdpProber(a.probe_port),
        )
        sink = None
        if a.events_per_minute > 0:
            sink = KubernetesEventSink(api=backend.api, per_minute=a.events_per_minute)
            ports.event_sink = sink
        agent = Agent(cfg, ports)
        if sink is not None:
            sink.on_error = lambda: agent.metrics.error("events")
        backend.on_event = agent.take_event  # check-ins are taken in the watch's thread
        agent.start()
        serve(agent, a.listen, limits)
    except (BackendError, KeyFileError, OSError, RuntimeError, ValueError) as e:
        log.error("cannot start: %s", e)
        sys.exit(1)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d; stopping", signum)
        agent.stop()

    def on_rotate(signum: int, _frame: object) -> None:
        log.info("received signal %d; rotating the WireGuard key", signum)
        # from another thread: the handler may have interrupted the loop inside the queue
        threading.Thread(target=agent.request_rotation, name="rotate", daemon=True).start()

    signal.signal(signal.SIGUSR1, on_rotate)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    finally:
        agent.shutdown()
        if sink is not None:
            sink.close()
    log.info("stopped")


def yielding_devices(compatibility: Compatibility) -> frozenset[str]:
    """The devices whose routes give way to kg's: flanneld's VXLAN device, which it routes
    every node's pod CIDR through, those of other locations too (kg tunnels them)."""
    return frozenset({"flannel.1"}) if compatibility is Compatibility.FLANNEL else frozenset()


if __name__ == "__main__":
    main()
