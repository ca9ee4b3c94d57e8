"""The talk's three acts and the graphs, played by a ``Story`` on a running lab.

- Act 1, the mesh: one cluster over two clouds; a leader's ``wg showconf kilo0`` equals
  ``kgctl showconf node``; pods ping each other across clouds.
- Act 2, peers: a Peer ``client`` (10.5.0.1/32) applied with ``kubectl``; the laptop's
  wireguard-go configured from ``kgctl showconf peer client``; ``curl`` from the laptop to a pod;
  a bare-metal server joins as Peer ``bare-metal-1`` and is served in-cluster as Service
  ``bare-metal-1`` (port 8080), reached from a pod through its ClusterIP.
- Act 3, multi-cluster: the seed's loop ``kgctl showconf node $n --as-peer -o yaml
  --allowed-ips $SERVICECIDR | kubectl apply -f -`` both ways; a pod in the first cluster
  reaches a pod and a Service in the second.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import pathlib
import shlex
from typing import TYPE_CHECKING

import yaml
from kilo.wireguard import parse as parse_wg

from kilo_lab import peers
from kilo_lab.console import CheckFailed, fail
from kilo_lab.objects import service_docs
from kilo_lab.observe import (
    cluster_objects,
    leaders,
    node_keys,
    pods_of,
    unreachable_pairs,
    wait_http,
    wg_peers,
)
from kilo_lab.peers import PeerHost
from kilo_lab.poll import Timeout, wait_until
from kilo_lab.spec import ClusterSpec

if TYPE_CHECKING:
    from kilo_lab.story import Story

CLIENT_PEER = "client"
CLIENT_IP = "10.5.0.1/32"  # the talk's Peer `client`
BARE_METAL_IP = "10.5.0.2/32"
BARE_METAL_PORT = 8080
WEB_PORT = 80


def url(ip: str, port: int) -> str:
    return f"http://{ip}/" if port == 80 else f"http://{ip}:{port}/"


def redact(text: str) -> str:
    return "\n".join(
        "PrivateKey = (hidden)" if line.startswith("PrivateKey") else line
        for line in text.splitlines()
    )


def _apply_shown(s: Story, text: str, kubeconfig: str = "", limit: int = 60) -> int:
    """``kubectl apply -f -`` of ``text`` from the admin namespace, shown as a here-document."""
    cmd = f"kubectl {kubeconfig + ' ' if kubeconfig else ''}apply -f -"
    proc = s.sh("admin", cmd, input=text, shown=f"cat <<'EOF' | {cmd}\n{text}EOF", limit=limit)
    return proc.returncode


def _ping_check(s: Story, a: str, b: str, address: str) -> str:
    took = wait_until(
        f"{a} -> {b}", lambda: s.lab.ping(a, address, wait=0.5), s.timeout, 0.0, error=CheckFailed
    )
    return f"reply after {took:.1f} s"


# --- act 1: the mesh ------------------------------------------------------------------------


def act1(s: Story) -> None:
    lab, c1, out = s.lab, s.c1, s.console
    out.title(
        f"Act 1: the mesh. Cluster {c1.name} over {len(c1.locations)} locations "
        f"({', '.join(loc.name for loc in c1.locations)}), granularity {c1.granularity}"
    )
    s.sh("admin", "kubectl get nodes -L topology.kubernetes.io/region")
    found: list[str] = []

    def who_leads() -> str:
        found[:] = leaders(lab, c1.name)
        if not found:
            raise CheckFailed("no node holds WireGuard tunnels")
        if c1.granularity == "location":
            locs = sorted({lab.spec.node(n).location for n in found})
            if len(found) != len(c1.locations) or len(locs) != len(c1.locations):
                raise CheckFailed(f"leaders {found}: want one per location")
        return f"leaders: {', '.join(found)}"

    what = "one leader per location" if c1.granularity == "location" else "every node holds tunnels"
    s.check("1", what, who_leads)
    leader = found[0] if found else c1.nodes[0].name
    followers = [n.name for n in c1.nodes if n.name not in found]
    out.note(f"{leader} is a leader: its WireGuard device (wireguard-go) as `wg` sees it")
    out.command(leader, "wg showconf kilo0")
    live_text = lab.wg(leader, "showconf", "kilo0", check=False)
    out.output(redact(live_text.stdout + live_text.stderr))
    s.sh("admin", f"kgctl showconf node {leader}")
    if followers:
        s.sh("admin", f"kgctl showconf node {followers[0]}")

    def same_conf() -> str:
        def matches() -> bool:
            live = parse_wg(lab.wg(leader, "showconf", "kilo0").stdout)
            want = parse_wg(lab.kgctl(c1.name, "showconf", "node", leader).stdout)
            return wg_peers(live) == wg_peers(want) and bool(live.peers)

        wait_until(f"{leader}: wg showconf kilo0 == kgctl showconf node", matches, 20, 0.3)
        live = parse_wg(lab.wg(leader, "showconf", "kilo0").stdout)
        return f"{len(live.peers)} WireGuard peer(s)"

    s.check("1", f"{leader}'s wg showconf kilo0 equals kgctl showconf node {leader}", same_conf)
    a, b = s.pod_near(c1), s.pod_far(c1)
    out.note(
        f"pod {a.name} (node {a.node}, {lab.spec.node(a.node).location}) pings pod "
        f"{b.name} (node {b.node}, {lab.spec.node(b.node).location})"
    )
    with contextlib.suppress(Timeout):
        wait_until("first ping", lambda: lab.ping(a.name, b.address, wait=0.5), s.timeout, 0.0)
    s.sh(a.name, f"ping -c 2 -W 1 {b.address}", shown=f"ping -c 2 {b.address}")
    pairs = [
        (x.name, y.name)
        for x, y in itertools.permutations(pods_of(lab, c1), 2)
        if lab.spec.node(x.node).location != lab.spec.node(y.node).location
    ]

    def across() -> str:
        bad = unreachable_pairs(lab, pairs, s.timeout)
        if bad:
            raise CheckFailed(f"no reply: {', '.join(f'{x}->{y}' for x, y in bad)}")
        return f"{len(pairs)}/{len(pairs)} pod pairs across locations"

    s.check("1", "pods ping across clouds", across)


# --- act 2: peers ---------------------------------------------------------------------------


def act2(s: Story) -> None:
    lab, c1, out = s.lab, s.c1, s.console
    out.title("Act 2: peers. A laptop and a bare-metal server join the mesh")
    laptop = s.peer_name("laptop")
    bare = s.peer_name("bare-metal-1", exclude=laptop)
    if laptop is None:
        s.check("2", "a laptop peer in the lab", lambda: fail("the lab has no peers"))
        return
    web = s.pod_far(c1)
    join_peer(s, "2", laptop, CLIENT_PEER, CLIENT_IP, endpoint=False)
    web_url = url(web.address, WEB_PORT)
    out.note(f"pod {web.name} on node {web.node} serves HTTP on {web.address}:{WEB_PORT}")
    s.start_server(web.name, web.address, WEB_PORT)

    def curl_pod() -> str:
        return f"HTTP 200 after {wait_http(lab, laptop, web_url, s.timeout):.1f} s"

    if s.check("2", f"{laptop} curls pod {web.name} ({web.address})", curl_pod):
        s.sh(laptop, f"curl -sS -m 5 {web_url} | head -n 3")
    if bare is None:
        return
    bm = join_peer(s, "2", bare, bare, BARE_METAL_IP, endpoint=True)
    out.note(f"{bare} serves HTTP on its WireGuard address {bm.ip}:{BARE_METAL_PORT}")
    s.start_server(bare, bm.ip, BARE_METAL_PORT)
    out.note(
        "the cluster gets a Service without a selector and its Endpoints, as in the "
        "talk; kube-controller-manager mirrors them into the EndpointSlice kube-proxy reads"
    )
    docs = service_docs(bare, [bm.ip], BARE_METAL_PORT)
    _apply_shown(s, yaml.safe_dump_all(docs, sort_keys=False))
    svc_ip = lab.kubectl(
        c1.name, "get", "service", bare, "-o", "jsonpath={.spec.clusterIP}", check=False
    ).stdout.strip()
    s.sh("admin", f"kubectl get service {bare}")
    client = s.pod_near(c1)
    svc_url = url(svc_ip, BARE_METAL_PORT)

    def via_service() -> str:
        if not svc_ip:
            raise CheckFailed(f"Service {bare} has no ClusterIP")
        took = wait_http(lab, client.name, svc_url, s.timeout)
        return f"ClusterIP {svc_ip}:{BARE_METAL_PORT} -> {bm.ip}: HTTP 200 after {took:.1f} s"

    if s.check("2", f"pod {client.name} reaches {bare} via Service {bare}", via_service):
        out.note(
            "the cluster has no DNS here, so the talk's "
            f"`curl http://{bare}.default.svc.cluster.local` uses the ClusterIP"
        )
        s.sh(client.name, f"curl -sS -m 5 {svc_url} | head -n 3")


def join_peer(
    s: Story, act: str, host: str, peer: str, address: str, *, endpoint: bool
) -> PeerHost:
    """Make ``host`` a WireGuard peer of the first cluster: a key, the Peer applied with
    kubectl, wireguard-go configured from ``kgctl showconf peer``, address and routes."""
    lab, c1, out = s.lab, s.c1, s.console
    ph = PeerHost(host=host, peer=peer, address=address)
    s.peer_hosts[peer] = ph
    text = yaml.safe_dump(peers.peer_manifest(lab, ph, endpoint), sort_keys=False)
    out.note(f"{host}: a WireGuard key pair; its public key goes into a Peer `{peer}`")

    def apply() -> str:
        if _apply_shown(s, text) != 0:
            raise CheckFailed("kubectl apply failed")
        return ""

    s.check(act, f"Peer {peer} applied with kubectl", apply)
    conf_text: list[str] = [""]

    def showconf() -> str:
        keys = node_keys(lab, c1.name)
        want = {keys[n] for n in leaders(lab, c1.name) if n in keys}

        def ready() -> bool:
            proc = lab.kgctl(c1.name, "showconf", "peer", peer, check=False)
            conf_text[0] = proc.stdout
            if proc.returncode != 0 or not proc.stdout.strip():
                return False
            return want <= {p.public_key for p in parse_wg(proc.stdout).peers}

        wait_until(f"kgctl showconf peer {peer}: a [Peer] per leader", ready, 20, 0.3)
        s.sh("admin", f"kgctl showconf peer {peer}")
        n = len(parse_wg(conf_text[0]).peers)
        return f"{n} [Peer] section(s): the {len(want)} leader(s)" + (
            f" and {n - len(want)} peer(s) with an endpoint" if n > len(want) else ""
        )

    s.check(act, f"kgctl showconf peer {peer}", showconf)

    def configure() -> str:
        shown = parse_wg(conf_text[0])
        if not shown.peers:
            raise CheckFailed("no configuration to apply")
        peers.start_device(lab, ph)
        out.note(
            f"{host}: wireguard-go {peers.WG_IFACE}, then its config: PrivateKey + ListenPort "
            "+ what kgctl printed"
        )
        path = peers.setconf(lab, ph, peers.device_conf(ph, shown))
        out.command(host, f"wg setconf {peers.WG_IFACE} {path}")
        ph.routes = peers.routes_of(shown)
        script = peers.link_script(ph)
        proc = s.sh(host, script, shown=script.replace(" && for", " &&\nfor"))
        if proc.returncode != 0:
            raise CheckFailed(f"addresses/routes: {proc.stdout.strip()}")
        return f"{len(shown.peers)} peer(s), {len(ph.routes)} route(s)"

    s.check(act, f"{host} configured from kgctl showconf peer {peer}", configure)
    return ph


# --- act 3: multi-cluster -------------------------------------------------------------------


def act3(s: Story) -> None:
    lab, c1, c2, out = s.lab, s.c1, s.c2, s.console
    if c2 is None:
        s.check("3", "a second cluster", lambda: fail("the lab has only one cluster"))
        return
    out.title(f"Act 3: multi-cluster. {c1.name} and {c2.name}, each with CIDRs of its own")
    for k, c in enumerate((c1, c2), start=1):
        out.note(
            f"{c.name}: pods {c.pod_cidr}, services {c.service_cidr} "
            f"($SERVICECIDR{k}), kg --subnet {c.subnet}, "
            f"locations {', '.join(loc.name for loc in c.locations)}"
        )
    s.sh("admin", "kubectl --kubeconfig $KUBECONFIG2 get nodes -L topology.kubernetes.io/region")
    out.note(
        "every node of one cluster becomes a Peer of the other (the talk's loop); "
        "a node that is not a leader prints so, and kubectl then has nothing to apply"
    )
    if c1.granularity == "location" and len(c1.locations) > 1:
        out.note(
            f"each leader of {c1.name} brings $SERVICECIDR1 along: {c2.name} routes "
            f"it to one of them, and kgctl warns about the others"
        )
    for ka, kb, src, dst in ((1, 2, c1, c2), (2, 1, c2, c1)):
        s.sh(
            "admin",
            f"for n in $(kubectl --kubeconfig $KUBECONFIG{ka} get no -o name | "
            f"cut -d'/' -f2); do\n"
            f"  kgctl --kubeconfig $KUBECONFIG{ka} showconf node $n --as-peer -o yaml "
            f"--allowed-ips $SERVICECIDR{ka} | kubectl --kubeconfig $KUBECONFIG{kb} "
            f"apply -f -\ndone",
        )

        def exported(src: ClusterSpec = src, dst: ClusterSpec = dst) -> str:
            want = set(leaders(lab, src.name))
            _, objs = cluster_objects(lab, dst.name)
            have = {p["metadata"]["name"] for p in objs} & {n.name for n in src.nodes}
            if not want or have != want:
                raise CheckFailed(f"Peers in {dst.name}: {sorted(have)}; want {sorted(want)}")
            return f"{len(want)} Peer(s): {', '.join(sorted(want))}"

        s.check("3", f"{src.name}'s leaders are Peers of {dst.name}", exported)
    s.sh("admin", "kubectl --kubeconfig $KUBECONFIG2 get peers")
    a, b = s.pod_near(c1), s.pod_far(c2)
    if s.check(
        "3",
        f"pod {a.name} ({c1.name}) pings pod {b.name} ({c2.name}, {b.address})",
        lambda: _ping_check(s, a.name, b.name, b.address),
    ):
        s.sh(a.name, f"ping -c 2 -W 1 {b.address}", shown=f"ping -c 2 {b.address}")
    s.check(
        "3",
        f"pod {b.name} ({c2.name}) pings pod {a.name} ({c1.name})",
        lambda: _ping_check(s, b.name, a.name, a.address),
    )
    svc = "web"
    out.note(f"{c2.name}: pod {b.name} serves HTTP, behind Service {svc}")
    s.start_server(b.name, b.address, WEB_PORT)
    manifest = yaml.safe_dump_all(service_docs(svc, [b.address], WEB_PORT), sort_keys=False)
    _apply_shown(s, manifest, "--kubeconfig $KUBECONFIG2", limit=10)
    svc_ip = lab.kubectl(
        c2.name, "get", "service", svc, "-o", "jsonpath={.spec.clusterIP}", check=False
    ).stdout.strip()
    s.sh("admin", f"kubectl --kubeconfig $KUBECONFIG2 get service {svc}")

    def via_service() -> str:
        if not svc_ip:
            raise CheckFailed(f"Service {svc} in {c2.name} has no ClusterIP")
        took = wait_http(lab, a.name, url(svc_ip, WEB_PORT), s.timeout)
        return f"ClusterIP {svc_ip} -> {b.address}: HTTP 200 after {took:.1f} s"

    if s.check("3", f"pod {a.name} ({c1.name}) reaches Service {svc} of {c2.name}", via_service):
        s.sh(a.name, f"curl -sS -m 5 {url(svc_ip, WEB_PORT)} | head -n 3")


# --- graphs ---------------------------------------------------------------------------------


def graphs(s: Story, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """``kgctl graph --format svg`` of every cluster into ``out_dir/<lab>-<cluster>.svg``."""
    s.console.title("The mesh of each cluster, rendered by Graphviz")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[pathlib.Path] = []
    for k, c in enumerate(s.lab.spec.clusters, start=1):
        path = out_dir / f"{s.lab.name}-{c.name}.svg"
        paths.append(path)

        def render(c: ClusterSpec = c, k: int = k, path: pathlib.Path = path) -> str:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            quoted = shlex.quote(str(path))
            proc = s.sh(
                "admin",
                f"kgctl --kubeconfig $KUBECONFIG{k} graph --format svg > {quoted} "
                f"&& ls -l {quoted}",
            )
            if proc.returncode != 0:
                raise CheckFailed(f"kgctl graph: {proc.stdout.strip()}")
            text = html.unescape(path.read_text(errors="replace"))
            missing = [n.name for n in c.nodes if n.name not in text]
            if "<svg" not in text or missing:
                raise CheckFailed(f"{path}: not an SVG of the mesh (missing {missing})")
            return str(path)

        s.check("graph", f"kgctl graph --format svg ({c.name})", render)
    return paths
