"""A node's WireGuard key rotated (kg takes SIGUSR1) -> what pings at about 100/s across the
rotated tunnel lose.

    python3 bench/rotation.py [--runs 5]  # as root; about 1.5 min

The benchmarks' usual lab (aws = a1, a2; gcp = g1, g2; a1 and g1 lead; a pod on every node;
kg with wireguard-go). Each run sends SIGUSR1 to a1's kg (the one the lab started, by PID):
it writes a new key to its key file, publishes the public key in its Node's annotation
``kilo.squat.ai/key`` and sets the private key on its device. g1's agent sees the annotation
change by its watch and puts the new public key on its device; until then the a1-g1 tunnel is
down (a private key change expires the device's sessions).

Timed, per run, from the signal: ``a1 dev``, a1's device has the new public key;
``propagation``, g1's device holds it instead of the old one (``wg show`` polled every ~20 ms
from both). Meanwhile ``ping -D -i 0.008 -W 1`` (about 120/s; ``-i 0.01`` gives only about 60/s
here, ticks) runs from a follower's pod across the tunnel, started 1.5 s before the signal and
stopped 3 s after the propagation: ``lost`` are the requests without a reply (WireGuard queues
what it cannot send while it handshakes, so most of the gap is delayed, not lost); ``gap`` is
the longest time between two consecutive replies, minus the interval (0 if none is late).
Two directions: pinged from the peer's side (g2-p0 -> a2-p0: g1's new peer entry starts the
handshake on its first request) and from the rotated side (a2-p0 -> g2-p0: a1's first
initiation reaches g1 before g1 knows the key and WireGuard retries only after 5 s; g1's agent
sends one datagram towards a1 when it takes the new key (kilo.rekeyed), which starts the
handshake at once).

Target: no loss beyond the propagation time (the gap at most the propagation). Kilo has no key
rotation, so there is no Kilo figure.
"""

from __future__ import annotations

import argparse
import itertools
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from _common import lab_name, lab_session, machine_note, median, say, table, two_locations
from kilo_lab import netns, procs
from kilo_lab.lab import Lab

INTERVAL = 0.008
ROTATED, PEER = "a1", "g1"
DIRECTIONS = {"peer side pings": ("g2-p0", "a2-p0"), "rotated side pings": ("a2-p0", "g2-p0")}
_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+) ")
_SENT = re.compile(r"(\d+) packets transmitted")


@dataclass
class Run:
    direction: str
    run: int
    own_ms: float | None
    propagation_ms: float | None
    sent: int
    lost: int
    gap_ms: float
    rate: float


def peer_keys(lab: Lab, node: str) -> set[str]:
    return set(lab.wg(node, "show", "kilo0", "peers", check=False).stdout.split())


def public_key(lab: Lab, node: str) -> str:
    return lab.wg(node, "show", "kilo0", "public-key", check=False).stdout.strip()


def rotate_and_wait(lab: Lab, timeout: float = 15.0) -> tuple[float | None, float | None]:
    """SIGUSR1 to the rotated node's kg; ms until its own device and the peer's have the new
    key (None: not within ``timeout``)."""
    old = public_key(lab, ROTATED)
    t0 = time.monotonic()
    lab.agents[ROTATED].send_signal(signal.SIGUSR1)
    own = prop = None
    while time.monotonic() - t0 < timeout and (own is None or prop is None):
        if own is None and public_key(lab, ROTATED) not in ("", old):
            own = (time.monotonic() - t0) * 1000
        if prop is None:
            keys = peer_keys(lab, PEER)
            if keys and old not in keys:
                prop = (time.monotonic() - t0) * 1000
        time.sleep(0.02)
    if prop is not None:
        new = public_key(lab, ROTATED)
        if new not in peer_keys(lab, PEER):  # not the new key after all
            prop = None
    return own, prop


def measure(lab: Lab, direction: str, i: int) -> Run:
    src, dst = DIRECTIONS[direction]
    with tempfile.TemporaryFile("w+") as out:
        argv = ["ping", "-n", "-D", "-i", str(INTERVAL), "-W", "1", lab.pods[dst].address]
        proc = subprocess.Popen(
            netns.command(lab.ns(src), argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started = time.monotonic()
        try:
            time.sleep(1.5)
            own, prop = rotate_and_wait(lab)
            time.sleep(3.0)
        finally:
            seconds = time.monotonic() - started
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # ping prints its summary
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                procs.stop([proc], timeout=5)
        out.seek(0)
        text = out.read()
    replies: dict[int, float] = {}
    for line in text.splitlines():
        m = _REPLY.match(line)
        if m:
            replies.setdefault(int(m.group(2)), float(m.group(1)))
    m = _SENT.search(text)
    sent = int(m.group(1)) if m else max(replies, default=0)
    judged = max(sent - 150, 0)  # the last ~1 s were still in flight when stopped
    lost = sum(1 for s in range(1, judged + 1) if s not in replies)
    times = sorted(replies.values())
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    rate = sent / seconds if seconds else 0.0
    return Run(direction, i, own, prop, sent, lost, max(0.0, gap - INTERVAL) * 1000, rate)


def settle(lab: Lab) -> None:
    for src, dst in DIRECTIONS.values():
        lab.wait_ping(src, lab.pods[dst].address, timeout=60)
    time.sleep(1.0)


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    note = machine_note()
    say(note)
    runs: list[Run] = []
    with lab_session(two_locations(lab_name("brot"))) as lab:
        settle(lab)
        for direction in DIRECTIONS:
            for i in range(1, args.runs + 1):
                r = measure(lab, direction, i)
                runs.append(r)
                say(
                    f"{direction} {i}: propagation {fmt(r.propagation_ms)} ms, "
                    f"lost {r.lost} of {r.sent}, gap {r.gap_ms:.0f} ms"
                )
                settle(lab)
    print("Each run: ms from SIGUSR1 to a1's kg (a1 dev: its device has the new key;")
    print("propagation: g1's device holds it); pings across the a1-g1 tunnel")
    rows = [
        (r.direction, r.run, fmt(r.own_ms), fmt(r.propagation_ms), r.sent, r.lost,
         f"{r.lost * INTERVAL * 1000:.0f}", f"{r.gap_ms:.0f}", f"{r.rate:.0f}")
        for r in runs
    ]  # fmt: skip
    heads = ["direction", "run", "a1 dev ms", "propagation ms", "sent", "lost", "lost ms"]
    print(table([*heads, "gap ms", "pings/s"], rows))
    print()
    summary = []
    for d in DIRECTIONS:
        rs = [r for r in runs if r.direction == d]
        props = [r.propagation_ms for r in rs if r.propagation_ms is not None]
        prop = median(props) if props else None
        lost = median([float(r.lost) for r in rs])
        gap = median([r.gap_ms for r in rs])
        lost_ms = median([r.lost * INTERVAL * 1000 for r in rs])
        ok = prop is not None and gap <= prop and lost_ms <= prop
        summary.append(
            (d, len(rs), fmt(prop), f"{lost:.0f}", f"{lost_ms:.0f}", f"{gap:.0f}",
             "no loss beyond the propagation", "met" if ok else "NOT met")
        )  # fmt: skip
    heads = ["direction", "runs", "propagation ms p50", "lost p50", "lost ms p50", "gap ms p50"]
    print(table([*heads, "target", ""], summary))
    print("Kilo: no key rotation (no figure).")
    print(note)


if __name__ == "__main__":
    main()
