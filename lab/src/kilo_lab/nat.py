"""NAT routers: a namespace between hosts behind it and the internet, as a home router is.

The router ``kpy-L-nat-<nat>`` forwards between its inside legs (its own inside network and the
LANs whose nodes sit behind it) without translating, and masquerades whatever leaves through
its outside leg ``kpy-inet`` with ``masquerade random``: every new flow gets a random source
port (address- and port-dependent mapping, as a symmetric NAT's), so a flow whose conntrack
entry is forgotten (``forget``) comes back out through another port. From the outside only
replies get in (``ct state established,related``): an inside host is reached only through a
mapping it made itself, and only from the address it made it to.

``mappings`` reads the router's UDP translations from conntrack (``conntrack -L``, package
``conntrack``); ``forget`` flushes them (``conntrack -F``), as a router that reboots or whose
entries time out does.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from dataclasses import dataclass

from kilo_lab import netns
from kilo_lab.errors import LabError
from kilo_lab.layout import IF_INET

TABLE = "kpy-nat"


def ruleset(outside: str = IF_INET) -> str:
    """The router's nftables table: masquerade (random ports) out of ``outside``; from
    ``outside`` only replies are forwarded."""
    return (
        f"table ip {TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{outside}" masquerade random\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{outside}" ct state established,related accept\n'
        f'    iifname "{outside}" drop\n'
        "  }\n"
        "}\n"
    )


def install(ns: str) -> None:
    """The ruleset in router namespace ``ns`` (it goes with the namespace)."""
    netns.run(["nft", "-f", "-"], netns=ns, input=ruleset())


@dataclass(frozen=True)
class Flow:
    """One UDP flow through the NAT: inside ``src:sport`` to ``dst:dport``, seen outside as
    coming from ``public:port``."""

    src: ipaddress.IPv4Address
    sport: int
    dst: ipaddress.IPv4Address
    dport: int
    public: ipaddress.IPv4Address
    port: int


_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")


def parse_conntrack(text: str) -> list[Flow]:
    """The translated UDP flows of ``conntrack -L`` output (original tuple, then reply tuple;
    a flow whose reply does not come back to its source is translated)."""
    out: list[Flow] = []
    for line in text.splitlines():
        if not line.startswith("udp"):
            continue
        values = _FIELD.findall(line)
        if len(values) < 8:
            continue
        orig = dict(values[:4])
        reply = dict(values[4:8])
        if (orig["src"], orig["sport"]) == (reply["dst"], reply["dport"]):
            continue  # not translated (inside to inside, or to the router itself)
        out.append(
            Flow(
                src=ipaddress.IPv4Address(orig["src"]),
                sport=int(orig["sport"]),
                dst=ipaddress.IPv4Address(orig["dst"]),
                dport=int(orig["dport"]),
                public=ipaddress.IPv4Address(reply["dst"]),
                port=int(reply["dport"]),
            )
        )
    return out


def _conntrack() -> str:
    tool = shutil.which("conntrack")
    if tool is None:
        raise LabError("conntrack is missing (Debian package conntrack)")
    return tool


def mappings(ns: str) -> list[Flow]:
    """The UDP flows router namespace ``ns`` translates right now."""
    out = netns.run([_conntrack(), "-L", "-p", "udp"], netns=ns, check=False)
    if out.returncode != 0:
        raise LabError(f"conntrack -L in {ns}: {out.stderr.strip()}")
    return parse_conntrack(out.stdout)


def forget(ns: str) -> None:
    """Flush the router's conntrack table: every flow gets a new mapping (a new source port)
    with its next packet."""
    out = netns.run([_conntrack(), "-F"], netns=ns, check=False)
    if out.returncode != 0:
        raise LabError(f"conntrack -F in {ns}: {out.stderr.strip()}")
