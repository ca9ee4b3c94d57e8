"""Our nftables table applied atomically in a network namespace of our own."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from kilo.dataplane.nftables import Nftables
from kilo.firewall import NAT_CHAIN, BaseChain, Match, Ruleset

pytestmark = pytest.mark.integration
if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
    pytestmark = [pytest.mark.integration, pytest.mark.skip(reason="needs root, nft and ip")]

P = ipaddress.ip_interface


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"kpy-nft{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, "nft", *args, stdin=stdin)


def ruleset(*extra: str) -> Ruleset:
    rs = Ruleset()
    rs.base_chains.append(BaseChain("postrouting", "nat", "postrouting", 100))
    rs.base_chains.append(BaseChain("forward", "filter", "forward", 0))
    rs.chains.append(NAT_CHAIN)
    rs.add(
        "postrouting",
        f"jump {NAT_CHAIN}",
        Match("saddr", P("10.2.1.0/24")),
        "Kilo: jump to KILO-NAT chain",
    )
    rs.add(
        "forward",
        "accept",
        Match("saddr", P("10.2.1.0/24")),
        "Kilo: forward packets from the pod subnet",
    )
    rs.add(
        NAT_CHAIN,
        "return",
        Match("daddr", P("10.4.0.1/32")),
        "Kilo: do not NAT packets destined for WireGuard IPs",
    )
    rs.add(
        NAT_CHAIN,
        "return",
        Match("daddr", P("fd00:4::/64")),
        "Kilo: do not NAT packets destined for known IPs",
    )
    for cidr in extra:
        rs.add(
            NAT_CHAIN,
            "return",
            Match("daddr", P(cidr)),
            "Kilo: do not NAT packets destined for peers",
        )
    rs.add(NAT_CHAIN, "masquerade", None, "Kilo: NAT remaining packets")
    return rs


FOREIGN = (
    "table ip other {\n\tchain input {\n"
    "\t\ttype filter hook input priority 0; policy accept;\n"
    "\t\tip saddr 10.9.0.0/16 counter accept\n\t}\n}\n"
)


def test_apply_noop_change_remove(ns: str) -> None:
    nft(ns, "-f", "-", stdin=FOREIGN)
    foreign_before = nft(ns, "list", "table", "ip", "other")
    fw = Nftables(netns=ns)
    assert fw.remove() == []
    assert fw.apply(ruleset()) == ["create nft table inet kilo (3 objects, 5 rules)"]
    listed = nft(ns, "list", "table", "inet", "kilo")
    assert "ip saddr 10.2.1.0/24 jump kilo-nat" in listed and "masquerade" in listed
    assert fw.apply(ruleset()) == []
    assert Nftables(netns=ns).apply(ruleset()) == []  # a fresh agent sees the no-op too

    assert fw.apply(ruleset("10.5.0.0/24")) == ["replace nft table inet kilo (+1 -0 rules)"]
    assert "ip daddr 10.5.0.0/24 return" in nft(ns, "list", "table", "inet", "kilo")
    assert fw.apply(ruleset("10.5.0.0/24")) == []

    # Someone edits our table: the next apply puts it back.
    nft(ns, "add", "rule", "inet", "kilo", NAT_CHAIN, "ip", "daddr", "10.66.0.0/16", "accept")
    assert fw.apply(ruleset("10.5.0.0/24")) == ["replace nft table inet kilo (+0 -1 rules)"]
    assert "10.66.0.0" not in nft(ns, "list", "table", "inet", "kilo")

    assert fw.remove() == ["delete nft table inet kilo"]
    assert fw.remove() == []
    tables = json.loads(nft(ns, "-j", "list", "tables"))["nftables"]
    assert [(t["table"]["family"], t["table"]["name"]) for t in tables if "table" in t] == [
        ("ip", "other")
    ]
    assert nft(ns, "list", "table", "ip", "other") == foreign_before


def test_dropped_chain_and_foreign_tables_refused(ns: str) -> None:
    fw = Nftables(netns=ns)
    fw.apply(ruleset())
    smaller = Ruleset()
    smaller.base_chains.append(BaseChain("postrouting", "nat", "postrouting", 100))
    smaller.add("postrouting", "masquerade", None, "only this")
    assert fw.apply(smaller) == ["replace nft table inet kilo (+1 -5 rules)"]
    listed = nft(ns, "list", "table", "inet", "kilo")
    assert "chain forward" not in listed and NAT_CHAIN not in listed  # chains go too, atomically
    with pytest.raises(ValueError, match="do not own"):
        fw.apply({"nftables": [{"add": {"table": {"family": "ip", "name": "other"}}}]})
    # A table we own but no longer want is deleted in the same transaction.
    both = Nftables(owned=[("inet", "kilo"), ("ip", "kilo")], netns=ns)
    ip_only = [
        {"add": {"table": {"family": "ip", "name": "kilo"}}},
        {"add": {"chain": {"family": "ip", "table": "kilo", "name": "c"}}},
        {
            "add": {
                "rule": {
                    "family": "ip",
                    "table": "kilo",
                    "chain": "c",
                    "expr": [{"counter": None}, {"accept": None}],
                }
            }
        },
    ]
    assert both.apply(ip_only) == [
        "create nft table ip kilo (1 objects, 1 rules)",
        "delete nft table inet kilo",
    ]
    assert both.apply(ip_only) == []  # counters' values do not count as a change
    assert both.remove() == ["delete nft table ip kilo"]


def test_a_change_from_what_was_applied_replaces_the_table_without_reading_it(ns: str) -> None:
    fw = Nftables(netns=ns)
    fw.apply(ruleset())
    reads: list[tuple[str, ...]] = []
    run = fw._run

    def counted(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if "list" in args:
            reads.append(args)
        return run(*args, stdin=stdin)

    fw._run = counted  # type: ignore[method-assign]
    assert fw.apply(ruleset(), ruleset()) == [] and reads == []  # the same: nothing at all
    assert fw.apply(ruleset("10.5.0.0/24"), ruleset()) == [
        "replace nft table inet kilo (+1 -0 rules)"
    ]
    assert reads == [("-s", "list", "table", "inet", "kilo")]  # its plain listing, after
    assert "ip daddr 10.5.0.0/24 return" in nft(ns, "list", "table", "inet", "kilo")
    reads.clear()
    assert fw.apply(ruleset("10.5.0.0/24")) == []  # verified against the kernel: the same
    assert ("-j", "list", "table", "inet", "kilo") not in reads  # by the plain listing alone
    # An edit by someone else shows in the plain listing: read in full, and put back.
    nft(ns, "add", "rule", "inet", "kilo", NAT_CHAIN, "ip", "daddr", "10.66.0.0/16", "accept")
    assert fw.apply(ruleset("10.5.0.0/24")) == ["replace nft table inet kilo (+0 -1 rules)"]
    assert "10.66.0.0" not in nft(ns, "list", "table", "inet", "kilo")
    assert fw.apply(ruleset("10.5.0.0/24")) == []


def sets_ruleset(*peers: str) -> Ruleset:
    """A ruleset of address sets, as ``kilo.firewall.ruleset`` makes them."""
    rs = Ruleset()
    rs.base_chains.append(BaseChain("postrouting", "nat", "postrouting", 100))
    rs.chains.append(NAT_CHAIN)
    known = [
        P(c) for c in ("10.2.0.0/16", "10.2.1.0/24", "10.2.1.7/32", "10.3.0.0/24", "fd00::/64")
    ]
    rs.add_sets(NAT_CHAIN, "return", "daddr", "known", known, "Kilo: known")
    rs.add_sets(NAT_CHAIN, "return", "daddr", "peers", [P(c) for c in peers], "Kilo: peers")
    rs.add(NAT_CHAIN, "masquerade", None, "Kilo: NAT remaining packets")
    return rs


def test_sets_of_nested_networks_and_element_changes(ns: str) -> None:
    fw = Nftables(netns=ns)
    # nested and duplicated networks would be refused by an interval set: only the outermost go
    assert fw.apply(sets_ruleset("10.5.0.1/32", "10.5.0.1/32")) == [
        "create nft table inet kilo (5 objects, 4 rules)"
    ]
    listed = nft(ns, "list", "table", "inet", "kilo")
    assert "10.2.0.0/16" in listed and "10.2.1.0/24" not in listed and "fd00::/64" in listed
    assert "ip daddr @known-ipv4 return" in listed and "ip6 daddr @known-ipv6 return" in listed
    assert fw.apply(sets_ruleset("10.5.0.1/32")) == []
    assert Nftables(netns=ns).apply(sets_ruleset("10.5.0.1/32")) == []  # a fresh agent too
    # A change of elements only: elements added and deleted, the table not replaced.
    sent: list[str] = []
    run = fw._run

    def seen(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if stdin is not None:
            sent.append(stdin)
        return run(*args, stdin=stdin)

    fw._run = seen  # type: ignore[method-assign]
    before, after = sets_ruleset("10.5.0.1/32"), sets_ruleset("10.5.0.2/32", "10.6.0.0/16")
    assert fw.apply(after, before) == [
        "replace nft table inet kilo (+0 -0 rules, +2 -1 set elements)"
    ]
    cmds = json.loads(sent[-1])["nftables"]
    assert [next(iter(c)) for c in cmds] == ["delete", "add"]
    assert all("element" in c[v] for c in cmds for v in c)
    listed = nft(ns, "list", "table", "inet", "kilo")
    assert "10.5.0.2" in listed and "10.6.0.0/16" in listed and "10.5.0.1 " not in listed
    assert fw.apply(after) == []
    # A peer's network that swallows another: the contained one leaves, the bigger one comes.
    bigger = sets_ruleset("10.5.0.0/16", "10.6.0.0/16")
    assert fw.apply(bigger, after) == [
        "replace nft table inet kilo (+0 -0 rules, +1 -1 set elements)"
    ]
    assert "10.5.0.0/16" in nft(ns, "list", "table", "inet", "kilo")
    assert Nftables(netns=ns).apply(bigger) == []
