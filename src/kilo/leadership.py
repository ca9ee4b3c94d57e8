"""Who leads each location in the native liveness mode, and what this node does about it (pure).

Two liveness modes (``Liveness``):

- ``compat``: Kilo's. Every agent writes ``last-seen`` every 30 s; a node is ready if it checked
  in within 60 s; a location's leader is Kilo's choice among its ready nodes. Every agent sees
  every check-in, so the watch traffic grows with the square of the cluster.
- ``native``: ours. A node announces it (annotation ``kilo.squat.ai/liveness: lease``) and is
  ready without check-ins. Each location of more than one ready node has a Lease naming its
  leader; leadership sticks to the holder. The location's other nodes probe the holder over
  the private network; the holder probes a few other locations' leaders through the tunnel. A
  holder silent for ``FAIL_AFTER_SECONDS`` is replaced by its successor (Kilo's choice among the
  rest), each further successor waiting ``STAGGER_SECONDS`` more; a holder that can reach no
  other location through the tunnel (after it could) hands the Lease to its successor. The
  API server's optimistic concurrency makes one writer win; everybody follows the Lease.

The native rules apply only while every ready node announces the native mode; while one does
not (a Kilo agent, or one of ours in compat mode: a cluster being migrated), every agent
follows Kilo's rule and keeps checking in, so mixed clusters agree on every leader.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kilo.leases import RENEW_PERIOD_SECONDS, Lease
from kilo.model import Granularity, Node
from kilo.prefixes import ip_of
from kilo.topology import Topology, find_leader, segment_key

#: Probe period, and how long a target may stay silent before it counts as gone: a blip
#: shorter than that changes nothing.
PROBE_INTERVAL_SECONDS = 0.2
FAIL_AFTER_SECONDS = 1.0
#: Extra silence each further successor waits before it takes over.
STAGGER_SECONDS = 1.0
#: Of two leaders probing each other through the tunnel, the one with the greater name waits
#: this long before probing a new peer (see ``ProbeTarget.hold_off``).
HOLD_OFF_SECONDS = 0.5
#: How many other locations' leaders a leader probes through the tunnel: enough that "none
#: answers" means its own WireGuard path is cut, few enough that the probes do not grow with
#: the number of locations (at 50 locations, every leader probing every other one sends and
#: answers about 250 probes a second).
TUNNEL_PROBES = 4


class Liveness(str, enum.Enum):
    COMPAT = "compat"
    NATIVE = "native"


def native_cluster(ready: Mapping[str, Node]) -> bool:
    """Every ready node runs the native mode (then, and only then, its rules apply)."""
    return bool(ready) and all(n.lease_liveness for n in ready.values())


def members_by_segment(
    ready: Mapping[str, Node], granularity: Granularity
) -> dict[str, list[Node]]:
    groups: dict[str, list[Node]] = {}
    for n in ready.values():
        groups.setdefault(segment_key(n, granularity), []).append(n)
    for members in groups.values():
        members.sort(key=lambda n: n.name)
    return groups


def succession(members: Sequence[Node], exclude: Iterable[str] = ()) -> list[str]:
    """The members in the order Kilo's rule would choose them, leaving out ``exclude``."""
    left = [n for n in members if n.name not in set(exclude)]
    order: list[str] = []
    while left:
        order.append(left.pop(find_leader(left)).name)
    return order


def lease_leader(members: Sequence[Node], lease: Lease | None, now: float, credit: float) -> str:
    """The leader of a location (members sorted by name, at least one): the Lease's holder
    while the Lease is valid and names a member; else Kilo's choice, leaving out the holder of
    an expired Lease."""
    names = {n.name for n in members}
    if lease is not None and lease.holder in names:
        if lease.valid(now, credit):
            return lease.holder
        order = succession(members, exclude=(lease.holder,))
        if order:
            return order[0]
    return members[find_leader(list(members))].name


def leaders(
    groups: Mapping[str, Sequence[Node]],
    leases: Mapping[str, Lease],
    now: float,
    credit: float = 0.0,
) -> dict[str, str]:
    """Every location's leader in the native mode (segment key -> node name)."""
    return {
        loc: lease_leader(members, leases.get(loc), now, credit)
        for loc, members in groups.items()
        if members
    }


class Action(str, enum.Enum):
    ACQUIRE = "acquire"  # write the Lease with this node as holder
    RENEW = "renew"
    HAND_OVER = "hand over"  # write the Lease with the successor as holder


@dataclass(frozen=True)
class LeaseChange:
    """A write of the local location's Lease, with why."""

    action: Action
    location: str
    holder: str
    previous: Lease | None  # the version read (the write is conditional on it)
    reason: str


@dataclass(frozen=True)
class Health:
    """What this node's probes say (seconds of silence; 0 when answering)."""

    holder_silent: float = 0.0  # the Lease's holder, probed over the private network
    tunnel_dead: bool = False  # holder only: no other location answers, after one did
    successor_silent: float = 0.0  # holder only: its successor, over the private network


def decide(
    me: str,
    location: str,
    members: Sequence[Node],
    lease: Lease | None,
    now: float,
    health: Health,
    credit: float = 0.0,
) -> LeaseChange | None:
    """What this node writes to its location's Lease now, if anything. ``members``: the ready
    nodes of its location, sorted by name, itself included."""
    if len(members) < 2 or me not in {n.name for n in members}:
        return None
    leader = lease_leader(members, lease, now, credit)
    holds = lease is not None and lease.holder == me and lease.valid(now, credit)
    if leader == me and not holds:
        return LeaseChange(Action.ACQUIRE, location, me, lease, "no valid Lease names a member")
    if holds and lease is not None:
        order = succession(members, exclude=(me,))
        if health.tunnel_dead and order and health.successor_silent < FAIL_AFTER_SECONDS:
            return LeaseChange(
                Action.HAND_OVER,
                location,
                order[0],
                lease,
                "no other location answers through the tunnel",
            )
        if now >= lease.renewed + RENEW_PERIOD_SECONDS:
            return LeaseChange(Action.RENEW, location, me, lease, "renewal due")
        return None
    order = succession(members, exclude=(leader,))
    rank = order.index(me)
    if health.holder_silent >= FAIL_AFTER_SECONDS + rank * STAGGER_SECONDS:
        return LeaseChange(
            Action.ACQUIRE,
            location,
            me,
            lease,
            f"leader {leader} silent for {health.holder_silent:.1f} s",
        )
    return None


@dataclass(frozen=True)
class ProbeTarget:
    """Whom this node probes, and why: ``holder`` and ``successor`` over the private network,
    ``tunnel`` another location's leader through the WireGuard tunnel.

    ``hold_off``: wait ``HOLD_OFF_SECONDS`` before the first probe to this target (or to a new
    node at its address). Two leaders that probe each other through a tunnel both configure
    the new peer within milliseconds of each other (a Node deleted: every agent sees it at
    once); their first probes then make both WireGuard ends send a handshake initiation at the
    same moment, each consumes the other's, each rejects the response to its own, and nothing
    moves until WireGuard retries 5 s later (seen in the lab). So only the one with the smaller
    name probes at once."""

    role: str
    name: str
    address: str
    hold_off: bool = False


def probe_targets(
    me: str, members: Sequence[Node], leader: str, topology: Topology | None
) -> tuple[ProbeTarget, ...]:
    """Followers probe their leader; the leader probes its successor and, through the tunnel,
    up to ``TUNNEL_PROBES`` other locations' leaders (the first by a hash of both names, so
    the probes spread evenly over the leaders)."""
    if len(members) < 2:
        return ()
    by_name = {n.name: n for n in members}
    if leader != me:
        n = by_name.get(leader)
        address = _private_address(n)
        return (ProbeTarget("holder", leader, address),) if address else ()
    out: list[ProbeTarget] = []
    order = succession(members, exclude=(me,))
    if order:
        address = _private_address(by_name[order[0]])
        if address:
            out.append(ProbeTarget("successor", order[0], address))
    if topology is not None:
        others = [
            (s.hostnames[s.leader], str(s.wireguard_ip))
            for s in topology.segments
            if s.location != topology.location and s.wireguard_ip is not None
        ]
        others.sort(key=lambda o: _rendezvous(me, o[0]))
        for name, address in sorted(others[:TUNNEL_PROBES]):
            out.append(ProbeTarget("tunnel", name, address, hold_off=me > name))
    return tuple(out)


def _rendezvous(me: str, other: str) -> bytes:
    return hashlib.blake2b(f"{me}\0{other}".encode(), digest_size=8).digest()


def _private_address(n: Node | None) -> str | None:
    if n is None:
        return None
    if n.internal_ip is not None:
        return str(ip_of(n.internal_ip))
    if n.endpoint is not None and n.endpoint.ip is not None:
        return str(n.endpoint.ip)
    return None


class ProbeTracker:
    """Replies to probes, by target, against a monotonic clock given by the caller."""

    def __init__(self) -> None:
        self._targets: dict[tuple[str, str], ProbeTarget] = {}
        self._since: dict[tuple[str, str], float] = {}  # probing started or last reply
        self._answered: set[tuple[str, str]] = set()  # replied at least once
        self._appeared: dict[tuple[str, str], float] = {}  # when this node became the target

    def set_targets(self, targets: Iterable[ProbeTarget], now: float) -> None:
        """The targets from now on. A target whose node changed at the same address (another
        location's new leader has its WireGuard IP) starts afresh: silent from now, never
        answered."""
        fresh = {(t.role, t.address): t for t in targets}
        for k in list(self._since):
            old = self._targets.get(k)
            if k not in fresh or (old is not None and old.name != fresh[k].name):
                del self._since[k]
                self._answered.discard(k)
                self._appeared.pop(k, None)
        for k in fresh:
            self._since.setdefault(k, now)
            self._appeared.setdefault(k, now)
        self._targets = fresh

    def targets(self) -> list[ProbeTarget]:
        return list(self._targets.values())

    def due(self, now: float) -> list[ProbeTarget]:
        """The targets to probe now: all but those still in their hold-off."""
        return [
            t
            for k, t in self._targets.items()
            if not t.hold_off or now - self._appeared.get(k, now) >= HOLD_OFF_SECONDS
        ]

    def replied(self, address: str, now: float) -> None:
        for k in self._targets:
            if k[1] == address:
                self._since[k] = now
                self._answered.add(k)

    def silent(self, role: str, now: float) -> float:
        """The longest silence among the targets of ``role`` (0 if none)."""
        return max((now - self._since[k] for k in self._targets if k[0] == role), default=0.0)

    def health(self, now: float) -> Health:
        tunnels = [k for k in self._targets if k[0] == "tunnel"]
        dead = (
            bool(tunnels)
            and any(k in self._answered for k in tunnels)
            and all(now - self._since[k] >= FAIL_AFTER_SECONDS for k in tunnels)
        )
        return Health(
            holder_silent=self.silent("holder", now),
            tunnel_dead=dead,
            successor_silent=self.silent("successor", now),
        )

    def state(self, now: float) -> tuple[int, ...]:
        """Per target, how many of the silence thresholds it has passed (0: answering): the
        prober wakes the agent when this changes. The thresholds are every successor's turn,
        ``FAIL_AFTER_SECONDS`` and then each ``STAGGER_SECONDS`` more, so the second successor
        is woken at its turn too (up to ``MAX_STAGGER_STEPS`` successors; further ones wait
        for the resync)."""
        return tuple(_steps(now - self._since[k]) for k in sorted(self._targets))


#: How many successors' turns the prober wakes the agent for (a silent target then costs at
#: most this many extra reconciles).
MAX_STAGGER_STEPS = 8


def health_turns(h: Health) -> tuple[bool, int, bool]:
    """What of ``h`` the failover decisions depend on: the thresholds passed (every successor's
    turn, uncapped), not the seconds themselves."""
    turns = 0
    if h.holder_silent >= FAIL_AFTER_SECONDS:
        turns = 1 + int((h.holder_silent - FAIL_AFTER_SECONDS) // STAGGER_SECONDS)
    return h.tunnel_dead, turns, h.successor_silent >= FAIL_AFTER_SECONDS


def _steps(silence: float) -> int:
    if silence < FAIL_AFTER_SECONDS:
        return 0
    return 1 + min(MAX_STAGGER_STEPS, int((silence - FAIL_AFTER_SECONDS) // STAGGER_SECONDS))
