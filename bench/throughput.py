"""Pod -> pod TCP throughput across locations: through the mesh, over plain veth, and over a bare
wireguard-go tunnel with no agent (the ceiling). Target: mesh >= 90 % of the bare tunnel.

    python3 bench/throughput.py [--seconds 5] [--reps 3]    # as root; about 1.5 min; iperf3

A lab of one cluster, aws = a1 (leader), a2; gcp = g1 (leader), g2; a pod on every node; kg
with wireguard-go on every node. iperf3 (one stream, ``-t SECONDS``, the four tests taken in turn
REPS times; the receiver's figure) between:

  mesh, leaders' pods     a1-p0 -> g1-p0: pod -> a1 -> kilo0 (wireguard-go) -> "internet"
                          -> g1 -> pod; the path a pod on a location's leader takes
  mesh, followers' pods   a2-p0 -> g2-p0: the same plus a LAN hop at each end
  plain veth              a1-p0 -> g1-p0 over a veth pair joining the two pod namespaces
                          directly (no encryption: the machine's raw forwarding speed)
  bare wireguard-go       a1-p0 -> g1-p0 through wireguard-go in each of the two pod
                          namespaces, peered over that veth pair, configured over UAPI by
                          this script: no agent, no routing hop, no firewall (the ceiling)

The tunnels use MTU 1420 (kilo0's: the underlay's 1500 - 80). Each wireguard-go, iperf3 client
and server compete for the machine's CPUs, so the figures are CPU-bound and fall with load.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from typing import Any

from _common import lab_name, lab_session, machine_note, say, table, two_locations
from kilo_lab import netns
from kilo_lab.binaries import locate, repo_root
from kilo_lab.lab import Lab, LabError

from kilo.dataplane.wgdevice import UserspaceDevice
from kilo.keys import Key
from kilo.model import Endpoint
from kilo.wireguard import WgConf, WgPeer

TARGET = 0.90
VETH = ("kpy-bv0", "kpy-bv1")
VETH_IPS = ("10.99.0.1", "10.99.0.2")
WG_IF = "kpy-bwg"
WG_IPS = ("10.98.0.1", "10.98.0.2")
WG_PORT = 51900
A, B = "a1-p0", "g1-p0"


def spec(name: str) -> dict[str, Any]:
    return two_locations(name)


def wireguard_go_note() -> str:
    binary = locate("wireguard-go")
    pinned = "?"
    root = repo_root()
    if root is not None:
        m = re.search(r"^WG_VERSION=(\S+)", (root / "hack/binaries.sh").read_text(), re.MULTILINE)
        pinned = m.group(1) if m else "?"
    ver = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False
    ).stdout
    ver = ver.splitlines()[0].strip() if ver else "?"
    gover = "?"
    if shutil.which("go"):
        out = subprocess.run(
            ["go", "version", str(binary)], capture_output=True, text=True, check=False
        )
        gover = out.stdout.rsplit(":", 1)[-1].strip() or "?"
    return (
        f"wireguard-go: {ver} (module golang.zx2c4.com/wireguard {pinned}, pinned in "
        f"hack/binaries.sh; built with {gover}, CGO off, -trimpath; GOMAXPROCS unset)\n"
        f"  binary: {binary}"
    )


def iperf(lab: Lab, client: str, server_ip: str, seconds: int) -> float:
    """Gbit/s received by the server in one ``iperf3 -c`` run."""
    for attempt in range(10):
        out = lab.exec(
            client,
            ["iperf3", "-c", server_ip, "-t", str(seconds), "-J", "--connect-timeout", "5000"],
            timeout=seconds + 30,
        )
        try:
            data = json.loads(out.stdout)
        except ValueError as e:
            raise LabError(
                f"iperf3 {client} -> {server_ip}: {out.stderr.strip() or out.stdout[-300:]}"
            ) from e
        if "busy" in data.get("error", "") and attempt < 9:
            time.sleep(1)  # the server is still closing the previous test
            continue
        if "error" in data:
            raise LabError(f"iperf3 {client} -> {server_ip}: {data['error']}")
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    raise AssertionError("unreachable")


def mtu(lab: Lab, host: str, dev: str) -> int:
    return json.loads(netns.ip(lab.ns(host), "-j", "link", "show", dev).stdout)[0]["mtu"]


def plain_veth(lab: Lab) -> None:
    a, b = lab.ns(A), lab.ns(B)
    netns.ip(a, "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1], "netns", b)
    for ns, dev, ip in ((a, VETH[0], VETH_IPS[0]), (b, VETH[1], VETH_IPS[1])):
        netns.ip(ns, "addr", "add", f"{ip}/30", "dev", dev)
        netns.ip(ns, "link", "set", dev, "up")


def bare_tunnel(lab: Lab) -> list[UserspaceDevice]:
    """wireguard-go in both pod namespaces, peered over the veth pair."""
    keys = [Key.generate() for _ in range(2)]
    devs = []
    for i, host in enumerate((A, B)):
        dev = UserspaceDevice(WG_IF, netns=lab.ns(host), binary=str(locate("wireguard-go")))
        devs.append(dev)
        dev.ensure()
        dev.configure_link([ipaddress.ip_interface(f"{WG_IPS[i]}/30")], 1420)
        j = 1 - i
        dev.apply(
            WgConf(
                private_key=keys[i],
                listen_port=WG_PORT,
                peers=[
                    WgPeer(
                        public_key=keys[j].public(),
                        allowed_ips=[ipaddress.ip_interface(f"{WG_IPS[j]}/32")],
                        endpoint=Endpoint(ip=ipaddress.ip_address(VETH_IPS[j]), port=WG_PORT),
                    )
                ],
            )
        )
    return devs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("iperf3") is None:
        sys.exit(
            "iperf3 is missing: apt-get install -y --no-install-recommends iperf3 "
            "(hack/setup.sh installs it)"
        )
    note = machine_note()
    say(note)
    results: list[tuple[str, list[float]]] = []
    servers: list[subprocess.Popen[bytes]] = []
    devs: list[UserspaceDevice] = []
    notes = []
    with lab_session(spec(lab_name("btput"))) as lab:
        try:
            for pod in (B, "g2-p0"):
                servers.append(
                    lab.popen(
                        pod,
                        ["iperf3", "-s"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            lab.wait_ping(A, lab.pods[B].address, timeout=60)
            lab.wait_ping("a2-p0", lab.pods["g2-p0"].address, timeout=60)
            plain_veth(lab)
            devs = bare_tunnel(lab)
            lab.wait_ping(A, VETH_IPS[1], timeout=10)
            lab.wait_ping(A, WG_IPS[1], timeout=10)
            time.sleep(1)  # the servers listen
            notes.append(
                f"MTUs: pod eth0 {mtu(lab, A, 'eth0')}, kilo0 {mtu(lab, 'a1', 'kilo0')}, "
                f"bare tunnel {mtu(lab, A, WG_IF)}, veth {mtu(lab, A, VETH[0])}"
            )
            paths = [
                ("mesh, leaders' pods (a1-p0 -> g1-p0)", A, lab.pods[B].address),
                ("mesh, followers' pods (a2-p0 -> g2-p0)", "a2-p0", lab.pods["g2-p0"].address),
                ("plain veth (a1-p0 -> g1-p0)", A, VETH_IPS[1]),
                ("bare wireguard-go (a1-p0 -> g1-p0)", A, WG_IPS[1]),
            ]
            for rep in range(args.reps):
                for label, client, ip in paths:
                    g = iperf(lab, client, ip, args.seconds)
                    say(f"rep {rep + 1}: {label}: {g:.2f} Gbit/s")
                    for name, xs in results:
                        if name == label:
                            xs.append(g)
                            break
                    else:
                        results.append((label, [g]))
        finally:
            for d in devs:
                d.close()
            for s in servers:
                if s.poll() is None:
                    s.terminate()
                try:
                    s.wait(5)
                except subprocess.TimeoutExpired:
                    s.kill()
                    s.wait(5)
    best = {name: max(xs) for name, xs in results}
    mean = {name: sum(xs) / len(xs) for name, xs in results}
    bare = next(v for k, v in best.items() if k.startswith("bare"))
    bare_mean = next(v for k, v in mean.items() if k.startswith("bare"))
    print(
        f"pod -> pod TCP throughput across locations: iperf3, 1 stream, {args.seconds} s, "
        f"{args.reps} repetitions taken in turn (Gbit/s received)"
    )
    rows = [
        (
            name,
            *xs,
            mean[name],
            best[name],
            f"{100 * mean[name] / bare_mean:.0f} %",
            f"{100 * best[name] / bare:.0f} %",
        )
        for name, xs in results
    ]
    print(
        table(
            [
                "path",
                *[f"rep {i + 1}" for i in range(args.reps)],
                "mean",
                "best",
                "mean/bare",
                "best/bare",
            ],
            rows,
        )
    )
    for n in notes:
        print(n)
    print(wireguard_go_note())
    mesh = next(v for k, v in best.items() if k.startswith("mesh, leaders"))
    pct = mesh / bare
    print(
        f"\ntarget: mesh (leaders' pods) >= {100 * TARGET:.0f} % of the bare wireguard-go "
        f"tunnel, best repetition of each (other load only ever lowers a figure); result: "
        f"{100 * pct:.0f} % ({'met' if pct >= TARGET else 'MISSED'})"
    )
    print(note)


if __name__ == "__main__":
    main()
