"""Helpers shared by the agent's integration tests (tests/integration/test_agent_*.py).

No tests here: a lab per module (``agent_lab``), reading an agent's ``/metrics``, pings with a
loss count, a snapshot of a node's data plane, and the check that a lab left nothing behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from kilo_lab import netns, procs
from kilo_lab.lab import Lab
from kilo_lab.layout import METRICS_PORT, kg_socket_dir, state_dir
from kilo_lab.poll import wait_until
from kilo_lab.testing import need_lab, root_snapshot

PEER_API = "kilo.squat.ai/v1alpha1"


def lab_name(prefix: str) -> str:
    """A short random lab name (at most 12 characters), so test runs never collide."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"[:12]


def two_locations(
    name: str,
    *,
    agent_args: list[str] | None = None,
    peers: list[str] | None = None,
    kube_proxy: bool = False,
    annotations: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """Two locations x two nodes (a1, g1 public: the leaders; a2, g2 private), one pod each."""
    ann = annotations or {}

    def node(n: str, public: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"name": n, "public": public}
        if n in ann:
            d["annotations"] = dict(ann[n])
        return d

    return {
        "name": name,
        "kubeProxy": kube_proxy,
        "clusters": [
            {
                "name": "c1",
                "granularity": "location",
                "agentArgs": list(agent_args or []),
                "locations": [
                    {"name": "aws", "nodes": [node("a1", True), node("a2", False)]},
                    {"name": "gcp", "nodes": [node("g1", True), node("g2", False)]},
                ],
            }
        ],
        "peers": [{"name": p} for p in (peers or [])],
    }


LEADERS = ("a1", "g1")
FOLLOWERS = ("a2", "g2")


def preconditions() -> None:
    need_lab("wireguard-go")


# --- the root namespace and leftovers ------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (e.g. the lab's state directory)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(int(d))
    return found


@dataclass
class Leftovers:
    namespaces: list[str]
    processes: list[int]
    named_processes: list[int]
    wg_dirs: list[str]
    state_dir: bool
    root_changes: list[str]

    def empty(self) -> bool:
        return not (
            self.namespaces
            or self.processes
            or self.named_processes
            or self.wg_dirs
            or self.state_dir
            or self.root_changes
        )


class Tracker:
    """Records what a lab made while it runs, to check after ``down`` that all of it is gone."""

    def __init__(self, lab: Lab, root_before: dict[str, str]) -> None:
        self.lab = lab
        self.root_before = root_before
        self.pids: set[int] = set()
        self.wg_dirs: set[str] = set()

    def record(self) -> None:
        for n in self.lab.state.get("namespaces", []):
            self.pids.update(procs.pids(n))
            d = kg_socket_dir(n)
            if d is not None:
                self.wg_dirs.add(d)

    def leftovers(self) -> Leftovers:
        name = self.lab.name
        after = root_snapshot()
        return Leftovers(
            namespaces=netns.names(f"kpy-{name}-"),
            processes=sorted(p for p in self.pids if procs.alive(p)),
            named_processes=processes_mentioning(f"/kpy-lab/{name}/")
            + processes_mentioning(f"kpy-{name}-"),
            wg_dirs=[d for d in sorted(self.wg_dirs) if os.path.exists(d)],
            state_dir=state_dir(name).exists(),
            root_changes=[k for k, v in after.items() if v != self.root_before[k]],
        )


@contextmanager
def agent_lab(spec: dict[str, Any]) -> Iterator[tuple[Lab, Tracker]]:
    """A running lab with kg on every node; always torn down (idempotent after a test did)."""
    preconditions()
    before = root_snapshot()
    lab = Lab(spec, agent=True)
    tracker = Tracker(lab, before)
    lab.up()
    try:
        tracker.record()
        yield lab, tracker
    finally:
        tracker.record()
        lab.down()


def pod(lab: Lab, node: str) -> str:
    """The address of node ``node``'s first pod."""
    return lab.pods[f"{node}-p0"].address


def reach(lab: Lab, src: str, dst: str, timeout: float = 60, dump: Sequence[str] = ()) -> float:
    """Wait until ``src`` pings ``dst`` (the seconds it took), or fail the test, with the
    WireGuard devices and routes of the nodes ``dump`` names in the message."""
    try:
        return lab.wait_ping(src, dst, timeout=timeout)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{src} does not reach {dst}: {e}{node_state(lab, *dump)}")


def node_state(lab: Lab, *nodes: str) -> str:
    """The nodes' WireGuard devices and routes, for a failure's message."""
    return "".join(
        f"\n== {n}\n{lab.wg(n, 'show', 'kilo0').stdout}\n{lab.exec(n, ['ip', 'route']).stdout}"
        for n in nodes
    )


def wg_bytes(lab: Lab, node: str) -> int:
    """Bytes received and sent over all of ``node``'s WireGuard peers."""
    out = lab.wg(node, "show", "kilo0", "transfer").stdout
    return sum(int(a) + int(b) for _, a, b in (line.split("\t") for line in out.splitlines()))


def check_nothing_left(lab: Lab, tracker: Tracker) -> None:
    """Take the lab down and assert that nothing of it remains."""
    tracker.record()
    lab.down()
    left = tracker.leftovers()
    assert left.empty(), f"left behind after the lab went down: {left}"


# --- talking to agents ----------------------------------------------------------------------


def metrics(lab: Lab, node: str) -> dict[str, float]:
    """The agent's /metrics as {"name{labels}": value} (fetched from the admin namespace)."""
    ip = lab.spec.node(node).mgmt_ip
    r = lab.exec("admin", ["curl", "-sf", "-m", "5", f"http://{ip}:{METRICS_PORT}/metrics"])
    if r.returncode != 0:
        raise AssertionError(f"/metrics of {node}: curl exited {r.returncode}: {r.stderr}")
    out: dict[str, float] = {}
    for line in r.stdout.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def health(lab: Lab, node: str) -> int:
    ip = lab.spec.node(node).mgmt_ip
    r = lab.exec(
        "admin",
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "5",
            f"http://{ip}:{METRICS_PORT}/health",
        ],
    )
    return int(r.stdout or 0)


def wait_for(
    what: str, cond: Callable[..., bool], timeout: float, *args: Any, interval: float = 0.25
) -> float:
    """Poll ``cond(*args)`` until true; returns the seconds it took (fails the test on
    timeout)."""
    return wait_until(what, lambda: cond(*args), timeout, interval, error=pytest.fail.Exception)


def wait_healthy(lab: Lab, node: str, timeout: float = 30) -> float:
    return wait_for(f"kg on {node} healthy", lambda: health(lab, node) == 200, timeout)


def wg_keys(lab: Lab, node: str) -> set[str]:
    """The public keys of the WireGuard peers of ``node``'s kilo0."""
    out = lab.wg(node, "show", "kilo0", "peers").stdout
    return set(out.split())


# --- pings ------------------------------------------------------------------------------------


@dataclass
class PingResult:
    sent: int
    received: int
    missing: list[int]  # sequence numbers without a reply (the last 50 sent are not judged)
    seconds: float
    output: str

    @property
    def lost(self) -> int:
        return len(self.missing)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def gaps(self) -> str:
        """The missing sequence numbers as runs (for a failure message)."""
        runs: list[tuple[int, int]] = []
        for i in self.missing:
            if runs and runs[-1][1] == i - 1:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
        return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:20])


def parse_ping(out: str, seconds: float = 0.0, grace: int = 50) -> PingResult:
    """The result of a ``ping`` run without -q: which sequence numbers got a reply. Packets
    still in flight when the run was interrupted (the last ``grace`` sent) are not judged."""
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    if m is None:
        raise AssertionError(f"no ping summary in:\n{out[-2000:]}")
    sent = int(m.group(1))
    replied = {int(x) for x in re.findall(r"icmp_seq=(\d+) ", out)}
    missing = [i for i in range(1, max(sent - grace, 0) + 1) if i not in replied]
    return PingResult(sent, int(m.group(2)), missing, seconds, out)


class Flood:
    """About 100 pings/s (at least) in the background in ``host``, until ``stop``.

    ``ping -i 0.01`` sends only about 60/s on these machines (the interval is rounded up to
    timer ticks); ``-i 0.008`` gives about 120/s. The achieved rate is in the result."""

    INTERVAL = "0.008"

    def __init__(self, lab: Lab, host: str, ip: str, limit: int = 100_000) -> None:
        self.started = time.monotonic()
        # a file, not a pipe: a full pipe would stall ping (a line per reply)
        self.out = tempfile.TemporaryFile("w+")
        self.proc = lab.popen(
            host,
            ["ping", "-n", "-i", self.INTERVAL, "-W", "2", "-c", str(limit), ip],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> PingResult:
        """Interrupt it (ping then prints its summary) and count the replies."""
        seconds = time.monotonic() - self.started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.seek(0)
        out = self.out.read()
        self.out.close()
        return parse_ping(out, seconds)


# --- the data plane of a node -------------------------------------------------------------------


def dataplane(lab: Lab, node: str) -> dict[str, str]:
    """What the agent manages on ``node``, without counters: routes (protocol 107), rules, the
    nft table, kilo0's addresses and MTU, the WireGuard config."""

    def run(*argv: str) -> str:
        return lab.exec(node, list(argv), check=True).stdout

    dump = lab.wg(node, "show", "kilo0", "dump").stdout.splitlines()
    # interface: private key, public key, port, fwmark; peers: key, psk, endpoint, allowed IPs,
    # [handshake, rx, tx], keepalive - the bracketed counters are dropped
    wg = [dump[0]] + ["\t".join(f[:4] + f[7:]) for f in (line.split("\t") for line in dump[1:])]
    link = re.sub(
        r"\s+(?:valid_lft|preferred_lft)\s+\S+", "", run("ip", "-d", "addr", "show", "dev", "kilo0")
    )
    return {
        "routes": run("ip", "route", "show", "table", "all", "proto", "107"),
        "rules": run("ip", "rule", "show") + run("ip", "-6", "rule", "show"),
        "nft": run("nft", "list", "table", "inet", "kilo"),
        "link": link,
        "wg": "\n".join(sorted(wg)),
    }


def changes_total(lab: Lab, node: str) -> float:
    return metrics(lab, node).get("kilo_reconcile_changes_total", 0.0)


def reconciles_total(lab: Lab, node: str) -> float:
    return metrics(lab, node).get("kilo_reconciles_total", 0.0)


def log_lines(lab: Lab, node: str, needle: str) -> list[str]:
    try:
        text = lab.agent_log(node).read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if needle in line]


def peer_object(
    name: str, public_key: str, allowed_ips: list[str], keepalive: int = 0
) -> dict[str, Any]:
    spec: dict[str, Any] = {"allowedIPs": allowed_ips, "publicKey": public_key}
    if keepalive:
        spec["persistentKeepalive"] = keepalive
    return {"apiVersion": PEER_API, "kind": "Peer", "metadata": {"name": name}, "spec": spec}


def genkey() -> tuple[str, str]:
    """A WireGuard key pair (private, public) from ``wg genkey`` / ``wg pubkey``."""
    priv = subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    pub = subprocess.run(
        ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
    ).stdout.strip()
    return priv, pub
