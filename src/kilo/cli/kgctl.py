"""``kgctl``: show and export a Kilo mesh, compatible with Kilo's ``kgctl``.

Beyond Kilo: ``--from-file`` reads a saved ``kubectl get nodes,peers -o yaml|json`` instead of a
live cluster; ``graph --format svg|png`` renders through Graphviz's ``dot``; the granularity
``cross`` is accepted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from kilo import __version__
from kilo.mesh import (
    ClusterState,
    Options,
    Output,
    UserError,
    dump_reference_time,
    graph_text,
    read_cluster,
    showconf_node,
    showconf_peer,
)
from kilo.model import DEFAULT_PORT, REGION_LABEL, Granularity
from kilo.render import DotMissing, run_dot
from kilo.strict import parse_network

GRANULARITIES = [g.value for g in Granularity]
OUTPUTS = ["json", "wireguard", "yaml"]


def _default_kubeconfig() -> str:
    env = os.environ.get("KUBECONFIG", "")
    if env and os.path.exists(env.split(os.pathsep)[0]):
        return env.split(os.pathsep)[0]
    return os.path.join(os.environ.get("HOME", "/root"), ".kube", "config")


def _add_globals(p: argparse.ArgumentParser, top: bool) -> None:
    """Kilo's persistent flags: accepted before or after the subcommand."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument(
        "--backend",
        default=d("kubernetes"),
        help="The backend for the mesh. Possible values: kubernetes",
    )
    p.add_argument(
        "--kubeconfig",
        default=d(None),
        help="Path to kubeconfig (default: $KUBECONFIG, else ~/.kube/config).",
    )
    p.add_argument(
        "--mesh-granularity",
        default=d("auto"),
        help="The granularity of the network mesh to create. "
        f"Possible values: {', '.join(GRANULARITIES)}",
    )
    p.add_argument(
        "--port",
        type=int,
        default=d(DEFAULT_PORT),
        help="The WireGuard port over which the nodes communicate.",
    )
    p.add_argument(
        "--topology-label",
        default=d(REGION_LABEL),
        help="Kubernetes node label used to group nodes into logical locations.",
    )
    p.add_argument(
        "--from-file",
        default=d(None),
        metavar="FILE",
        help="Read the cluster from a saved 'kubectl get nodes,peers -o yaml|json' "
        "instead of the API.",
    )
    p.add_argument(
        "--lease-namespace",
        default=d("kube-system"),
        help="Where the locations' leader Leases are kept (clusters in the native liveness "
        "mode: their holders are the leaders).",
    )
    p.add_argument(
        "--now",
        type=int,
        default=d(None),
        metavar="UNIX",
        help="With --from-file: judge node readiness at this Unix time "
        "(default: the newest kilo.squat.ai/last-seen in the file).",
    )


def _add_showconf_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--as-peer",
        action="store_true",
        help="Show the resource as a peer, "
        "to configure it as a peer of another WireGuard interface.",
    )
    p.add_argument(
        "-o",
        "--output",
        default="wireguard",
        help=f"The output format of the resource. Possible values: {', '.join(OUTPUTS)}",
    )
    p.add_argument(
        "--allowed-ips",
        action="append",
        default=[],
        help="Add the given CIDRs (comma-separated, repeatable) to the allowed IPs. "
        "Only with --as-peer.",
    )


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one ``error:`` line and exit code 1, as Kilo's kgctl exits."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def parser(prog: str = "kgctl") -> argparse.ArgumentParser:
    root = _Parser(prog=prog, description="Manage a Kilo network")
    root.add_argument("--version", action="version", version=__version__)
    _add_globals(root, top=True)
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    g = sub.add_parser("graph", help="Generates a graph of the Kilo network")
    _add_globals(g, top=False)
    g.add_argument(
        "--format",
        default="dot",
        choices=["dot", "svg", "png"],
        help="dot text (default), or render through Graphviz's dot program.",
    )
    sc = sub.add_parser(
        "showconf", help="Show the WireGuard configuration for a node or peer in the Kilo network"
    )
    _add_globals(sc, top=False)
    scs = sc.add_subparsers(dest="kind", metavar="node|peer")
    scs.required = True
    for kind in ("node", "peer"):
        k = scs.add_parser(
            kind, help=f"Show the WireGuard configuration for a {kind} in the Kilo network"
        )
        k.add_argument("name")
        _add_globals(k, top=False)
        _add_showconf_flags(k)
    _add_connect(sub)
    _add_status(sub)
    _add_link(sub)
    comp = sub.add_parser("completion", help="Print a shell completion script (bash, zsh, fish)")
    comp.add_argument("shell", choices=["bash", "zsh", "fish"])
    return root


def _add_status(sub: Any) -> None:
    """``kgctl status``: nodes, leaders, tunnels and refused objects (beyond Kilo)."""
    st = sub.add_parser("status", help="Show the mesh's nodes, leaders, peers and refused objects")
    _add_globals(st, top=False)
    st.add_argument(
        "-o", "--output", default="table", choices=["table", "wide", "json", "yaml"],
        help="table (default), wide (more columns), json or yaml.",
    )  # fmt: skip
    st.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL|FILE",
        help="An agent's /metrics (e.g. http://NODE:1107/metrics, repeatable): adds each "
        "tunnel's last handshake and bytes as that agent sees them.",
    )
    st.add_argument(
        "--service-cidr",
        action="append",
        default=[],
        help="The service CIDRs the agents guard (as kg's flag), for the refusals shown.",
    )
    st.add_argument(
        "--peer-allowed-ranges",
        default="",
        help="The agents' --peer-allowed-ranges, for the refusals shown.",
    )


def _add_link(sub: Any) -> None:
    """``kgctl link``: two clusters kept linked (beyond Kilo)."""
    from kilo.cli.kg import LOG_LEVELS

    k = sub.add_parser(
        "link", help="Keep two clusters linked: each one's leaders as Peers in the other"
    )
    _add_globals(k, top=False)
    k.add_argument("--name", required=True, help="This cluster's name (--kubeconfig's).")
    k.add_argument("--to-kubeconfig", required=True, help="The other cluster's kubeconfig.")
    k.add_argument("--to-name", required=True, help="The other cluster's name.")
    k.add_argument(
        "--allowed-ips",
        action="append",
        default=[],
        help="More of this cluster's CIDRs (e.g. its service CIDR) for its Peers in the other.",
    )
    k.add_argument(
        "--to-allowed-ips",
        action="append",
        default=[],
        help="More of the other cluster's CIDRs for its Peers in this one.",
    )
    k.add_argument("--resync-period", default="10s", help="How often to pass (e.g. 10s).")
    k.add_argument("--once", action="store_true", help="One pass each way, then exit.")
    k.add_argument(
        "--unlink", action="store_true", help="Delete the Peers this link made, then exit."
    )
    k.add_argument("--log-level", default="info", choices=list(LOG_LEVELS), help="Log level.")


def _link(a: argparse.Namespace, opts: Options) -> int:
    import logging
    import signal
    import threading

    from kilo.backend.link import End, run, unlink
    from kilo.cli.kg import LOG_LEVELS, _duration
    from kilo.link import check_cluster_name

    logging.basicConfig(
        level=LOG_LEVELS[a.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for quiet in ("urllib3", "kubernetes"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    if a.from_file:
        raise UserError("kgctl link needs live clusters, not --from-file")
    try:
        check_cluster_name(a.name)
        check_cluster_name(a.to_name)
        period = _duration(a.resync_period)
    except ValueError as e:
        raise UserError(str(e)) from None
    if a.name == a.to_name or period <= 0:
        raise UserError("--name and --to-name must differ, and --resync-period be positive")
    here = End(a.kubeconfig or _default_kubeconfig(), a.name,
               _cidrs(a.allowed_ips, "--allowed-ips"), a.lease_namespace)  # fmt: skip
    there = End(a.to_kubeconfig, a.to_name,
                _cidrs(a.to_allowed_ips, "--to-allowed-ips"), a.lease_namespace)  # fmt: skip
    try:
        if a.unlink:
            errors = unlink(here, there) + unlink(there, here)
            for line in errors:
                print(f"error: {line}", file=sys.stderr)
            return 1 if errors else 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        return run(here, there, opts, period, time.time, stop, once=a.once)
    finally:
        here.close()
        there.close()


METRICS_LIMIT = 16 << 20


def _metrics_text(source: str) -> str:
    if source.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(source, timeout=5) as r:
                return bytes(r.read(METRICS_LIMIT)).decode("utf-8", "replace")
        except (OSError, ValueError) as e:
            raise UserError(f"failed to read metrics from {source}: {e}") from None
    try:
        with open(source, "rb") as f:
            return f.read(METRICS_LIMIT).decode("utf-8", "replace")
    except OSError as e:
        raise UserError(f"failed to read metrics from {source}: {e}") from None


def _cidrs(values: Sequence[str], flag: str) -> list[Any]:
    out = []
    for raw in values:
        for cidr in filter(None, raw.split(",")):
            try:
                out.append(parse_network(cidr))
            except ValueError:
                raise UserError(f'{flag} must contain only valid CIDRs; got "{cidr}"') from None
    return out


def _status(a: argparse.Namespace, state: ClusterState, opts: Options, now: int) -> Output:
    from kilo import status
    from kilo.authorise import PeerPolicy

    tunnels: dict[str, status.Tunnel] = {}
    for source in a.metrics:
        tunnels.update(status.tunnels_from_metrics(_metrics_text(source)))
    policy = PeerPolicy(tuple(_cidrs([a.peer_allowed_ranges], "--peer-allowed-ranges")))
    rep, warnings = status.report(
        state, opts, now, tunnels, _cidrs(a.service_cidr, "--service-cidr"), policy
    )
    text = status.render(rep, a.output, bool(a.metrics))
    return Output(stdout=text, stderr="".join(f"warning: {w}\n" for w in warnings))


def _add_connect(sub: Any) -> None:
    """``kgctl connect PEER``: Kilo's flags, plus --private-key's file and kg's --wireguard."""
    from kilo.cli.kg import LOG_LEVELS, _bool
    from kilo.connect import DEFAULT_ALLOWED_IP, DEFAULT_KEY_DIR

    c = sub.add_parser("connect", help="Connect to the cluster as a WireGuard peer")
    c.add_argument("name", metavar="PEER")
    _add_globals(c, top=False)
    c.add_argument(
        "-a",
        "--allowed-ip",
        default=DEFAULT_ALLOWED_IP,
        help="The peer's own address (CIDR), set on the interface and given to a new Peer.",
    )
    c.add_argument(
        "--allowed-ips",
        action="append",
        default=[],
        help="More cluster CIDRs to route (comma-separated, repeatable), e.g. the service "
        "CIDR; added to the first ready node's location.",
    )
    c.add_argument(
        "--private-key",
        default=None,
        help=f"The private key file (default {DEFAULT_KEY_DIR}/PEER.key; made 0600 if missing).",
    )
    c.add_argument(
        "--clean-up",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="Remove the interface, the routes and a Peer it created on exit (default true).",
    )
    c.add_argument("--mtu", type=int, default=1420, help="The interface's MTU.")
    c.add_argument("--resync-period", default="30s", help="How often to reconcile (e.g. 30s).")
    c.add_argument("-i", "--interface", default="kilo0", help="The WireGuard interface.")
    c.add_argument(
        "--persistent-keepalive", type=int, default=10, help="A new Peer's keepalive (seconds)."
    )
    c.add_argument("--log-level", default="info", choices=list(LOG_LEVELS), help="Log level.")
    c.add_argument(
        "--wireguard",
        default="auto",
        choices=["auto", "kernel", "userspace"],
        help="The kernel module if present (auto), or wireguard-go.",
    )
    c.add_argument(
        "--wireguard-go",
        default=None,
        metavar="PATH",
        help="wireguard-go (default: $KILO_BIN_WIREGUARD_GO, else on PATH).",
    )


def _connect(a: argparse.Namespace, opts: Options) -> int:
    import logging

    from kilo.cli.kg import LOG_LEVELS, _duration
    from kilo.connect import ConnectError, Settings, check_name, default_key_path, run
    from kilo.strict import parse_cidr

    logging.basicConfig(
        level=LOG_LEVELS[a.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for quiet in ("pyroute2", "urllib3", "kubernetes"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    try:
        check_name(a.name)
        if a.from_file:
            raise UserError("kgctl connect needs a live cluster, not --from-file")
        try:
            address = parse_cidr(a.allowed_ip)
        except ValueError:
            raise UserError(f'allowed-ip must be a valid CIDR; got "{a.allowed_ip}"') from None
        try:
            period = _duration(a.resync_period)
        except ValueError as e:
            raise UserError(str(e)) from None
        if not 0 < a.mtu <= 65535 or not 0 <= a.persistent_keepalive <= 65535 or period <= 0:
            raise UserError("--mtu, --persistent-keepalive and --resync-period must be positive")
        settings = Settings(
            name=a.name,
            options=opts,
            address=address,
            location_ips=tuple(opts.allowed_ips),
            keepalive=a.persistent_keepalive,
            interface=a.interface,
            mtu=a.mtu,
            resync_period=period,
            clean_up=a.clean_up,
        )
        run(
            settings,
            a.private_key or default_key_path(a.name),
            a.kubeconfig or _default_kubeconfig(),
            a.lease_namespace,
            a.wireguard,
            a.wireguard_go,
        )
    except (ConnectError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _options(a: argparse.Namespace) -> Options:
    if not 1 <= a.port <= 65535:
        raise UserError(f"invalid port: port mus be in range [1:65535], but got {a.port}")
    if a.mesh_granularity not in GRANULARITIES:
        raise UserError(
            f"mesh granularity {a.mesh_granularity} unknown; "
            f"posible values are: [{' '.join(GRANULARITIES)}]"
        )
    if a.backend != "kubernetes":
        raise UserError(f"backend {a.backend} unknown; posible values are: [kubernetes]")
    opts = Options(
        granularity=Granularity(a.mesh_granularity), port=a.port, topology_label=a.topology_label
    )
    if a.command in ("showconf", "connect"):
        if a.command == "connect":
            a.output, a.as_peer = "wireguard", False
        if a.output not in OUTPUTS:
            raise UserError(
                f"output format {a.output} unknown; posible values are: {', '.join(OUTPUTS)}"
            )
        opts.output, opts.as_peer = a.output, a.as_peer
        for raw in a.allowed_ips:
            for cidr in filter(None, raw.split(",")):
                try:
                    if "/" not in cidr:
                        raise ValueError
                    opts.allowed_ips.append(parse_network(cidr))
                except ValueError:
                    raise UserError(
                        f'allowed-ips must contain only valid CIDRs; got "{cidr}"'
                    ) from None
    return opts


def _load(a: argparse.Namespace, opts: Options) -> tuple[ClusterState, int]:
    if a.from_file:
        from kilo.backend.file import DumpError, load_objects

        try:
            nodes, peers, leases = load_objects(a.from_file)
        except DumpError as e:
            raise UserError(str(e)) from None
        state = read_cluster(nodes, peers, opts.topology_label, leases)
        return state, a.now if a.now is not None else dump_reference_time(state, int(time.time()))
    try:
        from kilo.backend.kubernetes import list_leases, list_objects
    except ImportError as e:
        raise UserError(f"the Kubernetes backend is not available: {e}") from None
    kubeconfig = a.kubeconfig or _default_kubeconfig()
    try:
        nodes, peers = list_objects(kubeconfig)
    except Exception as e:  # noqa: BLE001  (the client's errors are many; say what failed)
        raise UserError(f"failed to list nodes and peers: {e}") from None
    state = read_cluster(nodes, peers, opts.topology_label)
    if any(n.lease_liveness for n in state.nodes):  # Leases name the leaders only then
        try:
            leases = list_leases(kubeconfig, a.lease_namespace)
        except Exception as e:  # noqa: BLE001
            print(
                f"warning: failed to list the leader Leases in {a.lease_namespace}: {e}; "
                "leaders by Kilo's rule",
                file=sys.stderr,
            )
        else:
            state = read_cluster(nodes, peers, opts.topology_label, leases)
    return state, int(time.time())


def _render(dot_text: str, fmt: str) -> bytes:
    if fmt == "dot":
        return dot_text.encode()
    try:
        r = run_dot(dot_text, fmt)  # no limits: the user asked for it on their own machine
    except DotMissing:
        raise UserError(
            f"--format {fmt} needs Graphviz's 'dot' program, which is not installed "
            "(apt-get install graphviz); --format dot prints the graph as text"
        ) from None
    if not r.ok:
        raise UserError(r.error)
    return r.body


def run(argv: Sequence[str], prog: str = "kgctl") -> int:
    a = parser(prog).parse_args(argv)
    if a.command == "completion":
        from kilo.cli.completion import script

        sys.stdout.write(script(parser(), "kgctl", a.shell))
        return 0
    if a.command == "link":
        try:
            return _link(a, _options(a))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if a.command == "connect":
        try:
            return _connect(a, _options(a))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        opts = _options(a)
        state, now = _load(a, opts)
        for p in state.problems:
            print(f"warning: {p}", file=sys.stderr)
        out: Output
        if a.command == "status":
            out = _status(a, state, opts, now)
        elif a.command == "graph":
            out = graph_text(state, opts, now)
            rendered = _render(out.stdout, a.format)
        elif a.kind == "node":
            out = showconf_node(state, a.name, opts, now)
        else:
            out = showconf_peer(state, a.name, opts, now)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in out.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if a.command == "graph":
        sys.stdout.flush()
        sys.stdout.buffer.write(rendered)
        sys.stdout.flush()
        return 0
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return 0


def _main(argv: Sequence[str], prog: str) -> NoReturn:
    """``run``, and whatever escapes it (a bug, never the input) one ``error:`` line too."""
    try:
        rc = run(argv, prog)
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:  # noqa: BLE001 - the last line of defence of the command line
        print(f"error: {prog}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        rc = 1
    sys.exit(rc)


def main() -> None:
    _main(sys.argv[1:], "kgctl")


def kubectl_plugin() -> None:
    """``kubectl-kilo``: kubectl runs it for ``kubectl kilo ...``."""
    _main(sys.argv[1:], "kubectl kilo")


if __name__ == "__main__":
    main()
