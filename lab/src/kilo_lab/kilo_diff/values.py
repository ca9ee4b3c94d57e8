"""The values the generator draws from: mostly what a healthy cluster holds, mixed with what a
hand-edited or hostile one may hold (each drawn value a string, as annotations are).

Left out on purpose (README "Where we differ from Kilo"): node keepalives that Go's ``ParseInt``
reads as a number outside 0-65535, including those beyond int64 (it returns the clamped value
with its error, which Kilo ignores; Kilo then wraps the duration and prints 2^64-1 where ours
reads 0 and warns), the granularity ``cross`` (ours knows it, Kilo does not), discovered
endpoints without a port (Kilo prints port 0) or null under a key in use (Kilo drops that
endpoint), Peers with a negative port (Kilo's kgctl hangs) and Peers claiming a node's address
(ours drops such a claim, kgctl included). ``generate`` says the rest (a subnet one short).
"""

from __future__ import annotations

import base64
import random

Rng = random.Random


def key(rng: Rng) -> str:
    """A well-formed WireGuard key (32 random bytes, base64)."""
    return base64.b64encode(rng.randbytes(32)).decode()


def odd_key(rng: Rng) -> str:
    """A key spelt in a way a reader may or may not take."""
    k = key(rng)
    return rng.choice(
        [
            "",
            "not-a-key",
            k.rstrip("="),  # no padding
            k[:20] + "\r\n" + k[20:],  # a line break inside (Go's decoder skips it)
            k[:20] + " " + k[20:],
            " " + k,
            k + "\n",
            k.replace("+", "-").replace("/", "_"),  # URL-safe alphabet
            base64.b64encode(rng.randbytes(33)).decode(),
            base64.b64encode(rng.randbytes(31)).decode(),
            base64.b64encode(bytes(32)).decode(),  # the all-zero key
            k[:-2] + "B=",  # non-canonical last character
        ]
    )


def port(rng: Rng) -> str:
    return rng.choice(["51820"] * 6 + ["51821", "1", "65535", "443"])


def odd_port(rng: Rng) -> str:
    return rng.choice(
        ["0", "65536", "051820", "+51820", "5_1820", " 51820", "51820 ", "\u0665\u0661", "-1", ""]
    )


def endpoint_host(rng: Rng, public: bool, v6: bool) -> str:
    if v6:
        return f"[{'2001:db8' if public else 'fd00'}::{rng.randrange(1, 0xFFFF):x}]"
    if public:
        return f"{rng.choice(['198.51.100', '203.0.113'])}.{rng.randrange(1, 255)}"
    return f"10.{rng.randrange(0, 3)}.{rng.randrange(0, 255)}.{rng.randrange(1, 255)}"


def odd_endpoint(rng: Rng) -> str:
    n = rng.randrange(1, 255)
    return rng.choice(
        [
            f"[::ffff:203.0.113.{n}]:51820",  # IPv4-mapped IPv6
            f"::ffff:203.0.113.{n}:51820",
            f"[fe80::{n:x}%eth0]:51820",  # a zone
            f"[2001:db8::{n:x}]:{odd_port(rng)}",
            f"203.0.113.{n}:{odd_port(rng)}",
            f"203.0.113.{n}",  # no port
            f"2001:db8::{n:x}:51820",  # IPv6 without brackets
            f"203.0.113.0{n}:51820",  # a leading zero
            f"n{n}.example.com:{rng.choice(['51820', '051820', '0051820'])}",
            f"[n{n}.example.com]:51820",
            f"N{n}.Example.com:51820",  # upper case: no DNS-1123 name
            f"n{n}.example.com.:51820",
            f"n{n}_x.example.com:51820",
            "localhost:51820",
            f" 203.0.113.{n}:51820",
            f"203.0.113.{n}:51820\n",
            "1.2.3.4.5:51820",
            f"{n}:51820",
            ":51820",
            "",
        ]
    )


def integer(rng: Rng, good: int) -> str:
    """An integer annotation: usually ``good``, else a spelling Go's ``ParseInt`` may refuse."""
    g = str(good)
    return rng.choice(
        [
            g,
            g,
            g,
            f"+{g}",
            f" {g}",
            f"{g} ",
            f"{g}\n",
            g[:1] + "_" + g[1:] if len(g) > 1 else f"{g}_0",
            "".join(chr(0x0660 + int(d)) for d in g),  # Arabic-Indic digits
            "".join(chr(0xFF10 + int(d)) for d in g),  # full-width digits
            f"0{g}",
            f"{g}.0",
            f"0x{good:x}",
            "abc",
            "",
        ]
    )


def keepalive(rng: Rng) -> str:
    """A ``persistent-keepalive`` annotation that parses, if at all, within 0-65535."""
    return rng.choice(
        ["25", "10", "0", "1", "65535", "abc", "", " 7", "5_0", "\u0661\u0660", "+15", "007"]
    )


def last_seen(rng: Rng, now: int, ready: bool) -> str | None:
    """A ``last-seen`` annotation (None: absent); ``ready`` asks for a value Kilo reads as
    recent. Nothing lands within a minute of the ready/stale edge (the commands run for a few
    seconds after ``now``)."""
    if ready:
        return rng.choice([str(now)] * 8 + [f"+{now}", f"0{now}", str(now + 3600)])
    return rng.choice(
        [
            str(now - 120),
            str(now - 120),
            str(now - 86400),
            None,
            "",
            "0",
            f" {now}",
            f"{now}\n",
            f"{str(now)[:3]}_{str(now)[3:]}",
            "".join(chr(0xFF10 + int(d)) for d in str(now)),
            f"{now}.5",
            "9223372036854775808",  # beyond int64: Go reads 0
            "-1",
        ]
    )


def cidr_variants(rng: Rng, addr: str, plen: int) -> str:
    """``addr/plen`` in one of the spellings a reader may or may not take."""
    v6 = ":" in addr
    return rng.choice(
        [
            f"{addr}/{plen}",
            f"{addr}/{plen}",
            f"{addr}/{plen}",
            f"{addr}",  # no prefix length
            f"{addr}/0{plen}",
            f"{addr}/{plen + (129 if v6 else 33)}",
            f" {addr}/{plen}",
            f"{addr}/{plen}\n",
            f"{addr}/+{plen}",
        ]
        + ([f"fe80::1%eth0/{plen}", f"{addr}%eth0/{plen}"] if v6 else [])
        + (
            [
                f"::ffff:{addr}/{plen + 96}",  # IPv4-mapped
                f"::ffff:{addr}/{plen}",
                f"{addr}/255.255.255.0",  # netmask notation
                f"{addr}/{plen}/{plen}",
            ]
            if not v6
            else []
        )
    )


def location(rng: Rng) -> str:
    return rng.choice(
        ["aws", "gcp", "onprem", "dc-1", "eu.west", "a_b", "AWS", "", "with space", "ümlaut"]
    )


def label_location(rng: Rng) -> str:
    """A location as a label value (the API server takes only ``[A-Za-z0-9_.-]``)."""
    return rng.choice(["aws", "gcp", "onprem", "dc-1", "eu.west", "a_b", "AWS"])


def granularity(rng: Rng) -> str | None:
    """One granularity annotation for every node of a cluster (Kilo takes the first listed
    node's); None: no annotation."""
    return rng.choice(["location"] * 5 + ["full"] * 3 + [None, "", "Location", "full "])


#: A well-formed public key no generated node or peer has.
NOBODY = base64.b64encode(bytes([1] * 32)).decode()


def discovered_json(rng: Rng, entries: dict[str, tuple[str, int]]) -> str:
    """A ``discovered-endpoints`` annotation for the entries (key -> (IP, port)), in one of the
    shapes Go's ``encoding/json`` reads into ``map[string]*net.UDPAddr`` (or refuses)."""
    import json

    # no entry without a Port: Go reads port 0 and Kilo prints that endpoint (ours ignores it)
    shape = rng.choice(["go", "go", "go", "lower", "extra", "null", "strport", "bad"])
    out: dict[str, object] = {}
    for k, (ip, p) in entries.items():
        if shape == "lower":
            out[k] = {"ip": ip, "port": p}
        elif shape == "extra":
            out[k] = {"IP": ip, "Port": p, "Zone": "", "Other": 1}
        elif shape == "strport":
            out[k] = {"IP": ip, "Port": str(p)}
        else:
            out[k] = {"IP": ip, "Port": p, "Zone": ""}
    if shape == "null" and out:
        # a null entry under a key of nobody in the cluster: under a real key Kilo takes it as
        # "no endpoint" and prints that node or peer without one (ours ignores the entry)
        out[NOBODY] = None
    text = json.dumps(out, separators=(",", ":"))
    if shape == "bad":
        return text[:-1] if rng.random() < 0.5 else "null"
    return text
