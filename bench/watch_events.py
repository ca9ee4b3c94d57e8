"""CPU per Node watch event, as the agent takes it: the watch stream read, the event decoded, the
cache and readiness updated (``KubernetesBackend`` + ``ObjectCache.update`` + ``ready_nodes``,
what ``Agent.take_event`` does), against a real kube-apiserver.

    python3 bench/watch_events.py [--nodes 200] [--rate 100] [--seconds 20]

A control plane (``kilo_lab.controlplane``, 127.0.0.1, random ports, ``kpy-`` processes and
directory, removed on exit) holds NODES Node objects shaped as ``bench/scale.py`` makes them
(Kilo's annotations, a status); after the backend's first list, NODES-1 of them are patched
(``last-seen``, a JSON merge patch, as a Kilo agent checks in) RATE times a second for SECONDS.
The figure is the watch thread's own CPU time (``pthread_getcpuclockid``) per event received;
the patches are made by another thread over a connection of its own and are not counted.
Then once more with a change beyond the check-in time (a new endpoint annotation) on every
patch, the cost of an event that must be read in full.

Target: at 1,000 nodes Kilo's liveness sends every agent 2,000 check-ins a minute; for their
cost to fit in a third of the agent's whole budget (0.6 CPU-s/min) one may cost 0.1 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

from _common import machine_note, say
from kilo_lab.controlplane import ControlPlane
from kilo_lab.objects import crd_manifest
from scale import node_object, node_status, random_public_key

from kilo.backend import kubernetes
from kilo.backend.kubernetes import KubernetesBackend
from kilo.cache import ObjectCache
from kilo.plan import node_ready

TARGET_MS = 0.1
ANN = "kilo.squat.ai/"


class Patcher:
    def __init__(self, cp: ControlPlane) -> None:
        assert cp.dir is not None
        ctx = ssl.create_default_context(cafile=str(cp.dir / "ca.crt"))
        ctx.load_cert_chain(str(cp.dir / "admin.crt"), str(cp.dir / "admin.key"))
        self.conn = http.client.HTTPSConnection(cp.bind_address, cp.port, context=ctx, timeout=30)

    def request(self, method: str, path: str, body: Any, ctype: str = "application/json") -> None:
        self.conn.request(method, path, json.dumps(body).encode(), {"Content-Type": ctype})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")


def _ticks(tid: int | None) -> tuple[int, int]:
    fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _lines_before(resp: Any, max_line: int = 0, **_: Any) -> Iterator[bytes]:
    """The watch's reader before this bench (urllib3's chunk generator), for the comparison."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf


def run_phase(
    cp: ControlPlane, nodes: int, rate: float, seconds: float, full: bool, before: bool = False
) -> tuple[int, float]:
    cache = ObjectCache("topology.kubernetes.io/region")
    count = [0]

    def take(event: Any) -> None:  # as Agent._take does for a Node event
        if event.kind != "Node":
            return
        count[0] += 1
        name = None
        if event.check_in is not None and not before:
            name = cache.check_in(event.object, event.old, event.check_in)
        if name is None:
            name = cache.update(event.kind, event.type, event.object)
        if not cache.changed and name is not None:
            n = cache.node(name)
            if n is not None:
                node_ready(n, time.time(), [])

    backend = KubernetesBackend(cp.kubeconfig, on_event=take)
    lines = kubernetes._lines
    if before:  # every line decoded, read through urllib3's generator
        backend._check_ins.match = lambda line: None  # type: ignore[method-assign]
        kubernetes._lines = _lines_before
    backend.start()
    try:
        nodes_seen, _ = backend.nodes(), None
        for obj in nodes_seen:
            cache.update("Node", "ADDED", obj)
        watch = next(t for t in backend._threads if t.name == "kilo-watch-node")
        assert watch.ident is not None
        clock = time.pthread_getcpuclockid(watch.ident)
        patcher = Patcher(cp)
        time.sleep(1.0)
        count[0] = 0
        cpu0 = time.clock_gettime(clock)
        us0 = _ticks(watch.native_id)
        t0 = time.monotonic()
        k = 0
        while (now := time.monotonic()) < t0 + seconds:
            i = 1 + k % (nodes - 1)
            ann: dict[str, str] = {ANN + "last-seen": str(int(time.time()))}
            if full:
                ann[ANN + "endpoint"] = f"172.17.{k // 250 % 250}.{k % 250 + 1}:51820"
            patcher.request(
                "PATCH",
                f"/api/v1/nodes/kpy-n{i:05d}",
                {"metadata": {"annotations": ann}},
                "application/merge-patch+json",
            )
            k += 1
            due = t0 + k / rate
            if due > now:
                time.sleep(due - time.monotonic() if due > time.monotonic() else 0)
        deadline = time.monotonic() + 5
        while count[0] < k and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = time.clock_gettime(clock) - cpu0
        us1 = _ticks(watch.native_id)
        us = [(b - a) / os.sysconf("SC_CLK_TCK") for a, b in zip(us0, us1, strict=True)]
        say(f"  watch thread: user {us[0]:.2f} s, system {us[1]:.2f} s")
        say(f"  nodes whose check-ins are recognised undecoded: {len(backend._check_ins)}")
        return count[0], cpu
    finally:
        backend.stop()
        kubernetes._lines = lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0, help="patches per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=2, help="before/after pairs of each kind")
    args = ap.parse_args()
    say(machine_note())
    with ControlPlane(memory_limit_mib=1024) as cp:
        crds = crd_manifest()
        assert crds is not None
        cp.kubectl("apply", "-f", str(crds))
        crd = "crd/peers.kilo.squat.ai"
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", crd)
        patcher = Patcher(cp)
        now = int(time.time())
        for i in range(args.nodes):
            key = random_public_key() if i else None
            patcher.request("POST", "/api/v1/nodes", node_object(i, 10, key, now))
            path = f"/api/v1/nodes/kpy-n{i:05d}/status"
            patcher.request("PATCH", path, node_status(i), "application/merge-patch+json")
        runs: dict[tuple[str, str], list[float]] = {}
        kinds = (("check-in only (last-seen)", False), ("another annotation too", True))
        for _ in range(args.runs):  # before and after alternately: the machine drifts
            for label, full in kinds:
                for code in ("before", "after"):
                    events, cpu = run_phase(
                        cp, args.nodes, args.rate, args.seconds, full, code == "before"
                    )
                    per = 1000 * cpu / events if events else float("nan")
                    runs.setdefault((label, code), []).append(per)
                    say(f"  {label}, {code}: {events} events, {cpu:.3f} CPU-s, {per:.3f} ms")
    print(f"{args.nodes} nodes, {args.rate:.0f} patches/s, {args.seconds:.0f} s x {args.runs} runs")
    print(f"{'event':28s} {'ms before':>10s} {'ms after':>9s}  target (CPU ms/event, median)")
    for label, _full in kinds:
        b, a = (statistics.median(runs[(label, c)]) for c in ("before", "after"))
        target = f"<= {TARGET_MS}" if _full is False else "-"
        print(f"{label:28s} {b:10.3f} {a:9.3f}  {target}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
