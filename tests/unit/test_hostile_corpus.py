"""The hostile corpus (``tests/data/hostile``) against every reader and writer.

Each case adds one hostile Node or Peer to a small healthy cluster (``baseline``) and checks, as
the project's rule asks: reading never raises and reports every bad value once; what the writers
produce (kgctl's INI, YAML, JSON and DOT; the agent's WireGuard INI and UAPI, nftables JSON, routes
and annotations) carries no syntax from the cluster; and no healthy tunnel changes (the baseline's
peers, routes and kgctl outputs are as without the hostile object).

One harness: ``readers``, ``kgctl`` and ``agent`` each collect every violation of a case (a
``Findings``) and fail with all of them, so one run shows everything that is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from kilo.backend.file import load_objects
from kilo.backend.objects import lean
from kilo.cache import ObjectCache
from kilo.cli.kgctl import run as kgctl_run
from kilo.dataplane.uapi import encode_set
from kilo.dataplane.wgdevice import diff, diff_confs
from kilo.hostinfo import HostAddress
from kilo.keys import Key
from kilo.mesh import read_cluster
from kilo.model import REGION_LABEL, Endpoint, Prefix, Problem, UdpAddress
from kilo.plan import ClusterView, LocalFacts, Plan, Settings, Status, plan
from kilo.routes import Encapsulation, Strategy
from kilo.translate import node_annotations, node_from_object, object_name, peer_from_object
from kilo.wgstate import DeviceState
from kilo.wireguard import WgConf, WgPeer
from tests.unit.helpers import NOW, key_for, node_obj, peer_obj

Obj = dict[str, Any]
T = TypeVar("T")
CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"

# ---------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "Node" or "Peer": the list the object arrives in
    obj: Any
    bad: tuple[str, ...]
    tags: tuple[str, ...]
    refused: tuple[str, ...] = ()
    kgctl_as_kilo: bool = False
    note: str = ""

    @property
    def name(self) -> str:
        """The object's name as a reader sees it ("" where there is none)."""
        meta = self.obj.get("metadata") if isinstance(self.obj, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        return name if isinstance(name, str) else ""

    @property
    def api_version(self) -> str:
        return "v1" if self.kind == "Node" else "kilo.squat.ai/v1alpha1"

    def __str__(self) -> str:
        return self.id


def expand(value: Any) -> Any:
    """The corpus's shorthands (``$repeat``, ``$concat``) replaced by the text they make."""
    if isinstance(value, dict):
        if "$repeat" in value:
            return str(value["$repeat"]) * int(value["$times"])
        if "$concat" in value:
            return "".join(expand(v) for v in value["$concat"])
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def load_corpus(directory: Path = CORPUS) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(directory.glob("*.yaml")):
        for raw in yaml.safe_load(path.read_text())["cases"]:
            cases.append(
                Case(
                    id=raw["id"],
                    kind=raw["kind"],
                    obj=expand(raw["object"]),
                    bad=tuple(raw["bad"]),
                    tags=tuple(raw["tags"]),
                    refused=tuple(raw.get("refused", ())),
                    kgctl_as_kilo=bool(raw.get("kgctl_as_kilo", False)),
                    note=raw.get("note", ""),
                )
            )
    return cases


CASES = load_corpus()

# ---------------------------------------------------------------------------- the baseline


def private_key(name: str) -> Key:
    return Key(hashlib.sha256(b"kilo-hostile-corpus/" + name.encode()).digest())


def public_key(name: str) -> str:
    return str(private_key(name).public())


@dataclass(frozen=True)
class BaseNode:
    location: str
    endpoint: str
    internal_ip: str
    pod_cidr: str
    annotations: tuple[tuple[str, str], ...] = ()  # besides the helpers' own (kilo.squat.ai/)


BASE_NODES = {
    "a1": BaseNode("aws", "203.0.113.1:51820", "10.1.0.1/24", "10.2.1.0/24",
                   (("wireguard-ip", "10.4.0.1/16"),)),
    "a2": BaseNode("aws", "10.1.0.2:51820", "10.1.0.2/24", "10.2.2.0/24"),
    "b1": BaseNode("gcp", "203.0.113.2:51820", "10.3.0.1/24", "10.2.3.0/24",
                   (("wireguard-ip", "10.4.0.2/16"),)),
    "c1": BaseNode("onprem", "203.0.113.3:51820", "10.6.0.1/24", "10.2.4.0/24",
                   (("wireguard-ip", "10.4.0.3/16"), ("persistent-keepalive", "25"))),
}  # fmt: skip
LEADERS = ("a1", "b1", "c1")
BASE_PEERS = ("gw", "laptop")


def baseline_objects() -> tuple[list[Obj], list[Obj]]:
    nodes = []
    for name, b in BASE_NODES.items():
        obj = node_obj(
            name, b.location, b.endpoint, b.internal_ip, b.pod_cidr, key=public_key(name)
        )
        ann = obj["metadata"]["annotations"]
        ann["kilo.squat.ai/granularity"] = "location"
        ann.update((f"kilo.squat.ai/{k}", v) for k, v in b.annotations)
        nodes.append(obj)
    laptop = peer_obj("laptop", ["10.5.0.1/32"], persistentKeepalive=10)
    gw = peer_obj(
        "gw",
        ["10.5.1.0/24", "fd05:1::/64"],
        endpoint={"dnsOrIP": {"ip": "192.0.2.10"}, "port": 51820},
        presharedKey=key_for("gw-psk"),
    )
    laptop["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    gw["metadata"]["creationTimestamp"] = "2026-01-01T00:00:01Z"
    return nodes, [gw, laptop]


def cluster_with(case: Case | None) -> tuple[list[Any], list[Any]]:
    nodes, peers = baseline_objects()
    if case is not None:
        (nodes if case.kind == "Node" else peers).append(case.obj)
    return nodes, peers


# ---------------------------------------------------------------------------- findings


class Findings:
    """Every violation found for one case, shown together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        text = f"{where}: {what}"
        self.items.append(text if len(text) <= 400 else text[:400] + " ...")

    def check(self, ok: bool, where: str, what: str) -> None:
        if not ok:
            self.add(where, what)

    def guard(self, where: str, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or None with the exception as a finding."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - every exception is a finding
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self.add(where, f"raised {type(e).__name__}: {e} (at {tb.filename}:{tb.lineno})")
            return None

    def assert_none(self) -> None:
        assert not self.items, "\n" + "\n".join(self.items)


# ---------------------------------------------------------------------------- text grammars

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS = re.compile(rf"{_LABEL}(\.{_LABEL})*\Z")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}\Z")
_V6 = re.compile(r"[0-9a-f:.]+\Z")
_BASE64_KEY = re.compile(r"[A-Za-z0-9+/]{43}=\Z")
_HEX_KEY = re.compile(r"[0-9a-f]{64}\Z")
_NUMBER = re.compile(r"(0|[1-9][0-9]{0,9})\Z")


def is_address(text: str) -> bool:
    """An IP address as printed: dotted IPv4 or canonical-charset IPv6, no zone."""
    if _V4.match(text):
        return True
    if not _V6.match(text) or ":" not in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_cidr(text: str) -> bool:
    addr, sep, plen = text.partition("/")
    if not sep or not _NUMBER.match(plen) or not is_address(addr):
        return False
    return int(plen) <= (32 if _V4.match(addr) else 128)


def is_number(text: str, lo: int, hi: int) -> bool:
    return _NUMBER.match(text) is not None and lo <= int(text) <= hi


def is_udp(text: str, allow_dns: bool) -> bool:
    """``IPv4:port``, ``[IPv6]:port`` or (with ``allow_dns``) ``dns-name:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not is_number(port, 1, 65535):
        return False
    if host.startswith("[") and host.endswith("]"):
        return ":" in host and is_address(host[1:-1])
    if _V4.match(host):
        return True
    return allow_dns and len(host) <= 253 and _DNS.match(host) is not None


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def covered(a: ipaddress.IPv4Network | ipaddress.IPv6Network, by: Iterable[Any]) -> Any:
    """The first of ``by`` (networks) that ``a`` equals or lies inside, or None."""
    for b in by:
        if a.version == b.version and a.subnet_of(b):
            return b
    return None


_INI_VALUES: dict[str, Callable[[str], bool]] = {
    "PrivateKey": lambda v: _BASE64_KEY.match(v) is not None,
    "ListenPort": lambda v: is_number(v, 0, 65535),
    "PublicKey": lambda v: _BASE64_KEY.match(v) is not None,
    "PresharedKey": lambda v: _BASE64_KEY.match(v) is not None,
    "AllowedIPs": lambda v: all(is_cidr(a) for a in v.split(", ")),
    "Endpoint": lambda v: is_udp(v, allow_dns=True),
    "PersistentKeepalive": lambda v: is_number(v, 0, 65535),
}
_INI_SECTIONS = {
    "Interface": {"PrivateKey", "ListenPort"},
    "Peer": {"PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive"},
}


@dataclass
class IniSection:
    header: str
    lines: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def ini_sections(text: str, where: str, f: Findings) -> list[IniSection]:
    """The sections of a WireGuard INI text; every line that is not Kilo's grammar is a
    finding."""
    sections: list[IniSection] = []
    if "%" in text:
        f.add(where, "INI holds '%' (an IPv6 zone?)")
    for n, line in enumerate(text.split("\n"), 1):
        if _CONTROL.search(line):
            f.add(where, f"INI line {n} holds a control character: {line!r}")
            continue
        if line == "":
            continue
        m = re.fullmatch(r"\[(Interface|Peer)\]", line)
        if m:
            sections.append(IniSection(m.group(1), [line]))
            continue
        m = re.fullmatch(r"([A-Za-z]+) = (\S+(?:, \S+)*)", line)
        if not m or not sections:
            f.add(where, f"INI line {n} is not 'Key = value' in a section: {line!r}")
            continue
        key, value = m.groups()
        s = sections[-1]
        if key not in _INI_SECTIONS[s.header]:
            f.add(where, f"INI line {n}: {key} is no key of [{s.header}]: {line!r}")
        elif key in s.values:
            f.add(where, f"INI line {n}: {key} twice in one section: {line!r}")
        elif not _INI_VALUES[key](value):
            f.add(where, f"INI line {n}: not a valid {key}: {line!r}")
        s.values[key] = value
        s.lines.append(line)
    for s in sections:
        if s.header == "Peer" and "PublicKey" not in s.values:
            f.add(where, f"a [Peer] without PublicKey: {s.text!r}")
    return sections


def by_public_key(sections: Sequence[IniSection]) -> dict[str, list[IniSection]]:
    out: dict[str, list[IniSection]] = {}
    for s in sections:
        if s.header == "Peer":
            out.setdefault(s.values.get("PublicKey", ""), []).append(s)
    return out


_UAPI_VALUES: dict[str, Callable[[str], bool]] = {
    "set": lambda v: v == "1",
    "private_key": lambda v: _HEX_KEY.match(v) is not None,
    "listen_port": lambda v: is_number(v, 0, 65535),
    "fwmark": lambda v: is_number(v, 0, 2**32 - 1),
    "replace_peers": lambda v: v == "true",
    "public_key": lambda v: _HEX_KEY.match(v) is not None,
    "remove": lambda v: v == "true",
    "update_only": lambda v: v == "true",
    "preshared_key": lambda v: _HEX_KEY.match(v) is not None,
    "endpoint": lambda v: is_udp(v, allow_dns=False),
    "persistent_keepalive_interval": lambda v: is_number(v, 0, 65535),
    "replace_allowed_ips": lambda v: v == "true",
    "allowed_ip": is_cidr,
}


def uapi_problems(text: str, where: str, f: Findings) -> None:
    """A ``set=1`` request: ``key=value`` lines of WireGuard's keys, one blank line at the end."""
    if "%" in text:
        f.add(where, "UAPI text holds '%' (an IPv6 zone?)")
    if not text.endswith("\n\n") or text.endswith("\n\n\n"):
        f.add(where, f"UAPI text does not end with exactly one blank line: {text[-40:]!r}")
    lines = text[:-2].split("\n") if text.endswith("\n\n") else text.split("\n")
    if lines[:1] != ["set=1"]:
        f.add(where, f"UAPI text does not start with set=1: {lines[:1]!r}")
    keys: list[str] = []
    for line in lines:
        key, sep, value = line.partition("=")
        if _CONTROL.search(line):
            f.add(where, f"UAPI line holds a control character: {line!r}")
        elif not sep or key not in _UAPI_VALUES:
            f.add(where, f"UAPI line is no known key=value: {line!r}")
        elif not _UAPI_VALUES[key](value):
            f.add(where, f"UAPI line has no valid {key}: {line!r}")
        if key == "public_key":
            keys.append(value)
    dup = {k for k in keys if keys.count(k) > 1}
    f.check(not dup, where, f"UAPI update names a peer twice: {sorted(dup)}")


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from strings_in(k)
            yield from strings_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings_in(v)


def clean_strings(value: Any, where: str, f: Findings, zone: bool = True) -> None:
    """No string in ``value`` (a decoded JSON/YAML document) holds a control character (or,
    with ``zone``, a '%')."""
    for s in strings_in(value):
        if _CONTROL.search(s):
            f.add(where, f"string with a control character: {s!r}")
        elif zone and "%" in s:
            f.add(where, f"string with '%' (an IPv6 zone?): {s!r}")


# ---------------------------------------------------------------------------- DOT


@dataclass(frozen=True)
class Tok:
    kind: str  # "id" (quoted or bare), or the punctuation itself
    text: str
    line: int
    breaks: int = 0  # raw line breaks inside a quoted string


def dot_tokens(text: str, where: str, f: Findings) -> list[Tok]:
    """Graphviz's lexer, as far as kgctl's output needs it: quoted strings (``\\"`` and ``\\\\``
    escaped), bare words, ``->`` and ``{}[]=;,``."""
    toks: list[Tok] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t":
            i += 1
        elif c == '"':
            start, breaks, j, buf = line, 0, i + 1, []
            while True:
                if j >= n:
                    f.add(where, f"DOT string opened on line {start} is never closed")
                    break
                d = text[j]
                if d == "\\" and j + 1 < n:
                    e = text[j + 1]
                    if e == "\n":
                        f.add(where, f"DOT line {line}: an escaped line break inside a string")
                        line += 1
                    buf.append(e if e in '"\\' else "\\" + e)
                    j += 2
                    continue
                if d == '"':
                    j += 1
                    break
                if d == "\n":
                    # Kilo's one quirk: a peer's label ends with a real line break, then '"'.
                    if text[j + 1 : j + 2] != '"':
                        f.add(where, f"DOT line {line}: a line break inside a string")
                    line += 1
                    breaks += 1
                elif _CONTROL.match(d):
                    f.add(where, f"DOT line {line}: a control character inside a string: {d!r}")
                buf.append(d)
                j += 1
            toks.append(Tok("id", "".join(buf), start, breaks))
            i = j
        elif text.startswith("->", i):
            toks.append(Tok("->", "->", line))
            i += 2
        elif c in "{}[]=;,":
            toks.append(Tok(c, c, line))
            i += 1
        elif c.isascii() and (c.isalnum() or c in "_."):
            j = i
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] in "_."):
                j += 1
            toks.append(Tok("id", text[i:j], line))
            i = j
        else:
            f.add(where, f"DOT line {line}: unexpected character {c!r} outside a string")
            i += 1
    return toks


@dataclass
class Dot:
    nodes: set[str] = field(default_factory=set)
    edges: set[tuple[str, str]] = field(default_factory=set)
    subgraphs: list[str] = field(default_factory=list)


class _DotParser:
    """``digraph ID { stmt* }`` with attribute, node, edge and subgraph statements; each simple
    statement on one line of its own (a string's line breaks aside)."""

    def __init__(self, toks: list[Tok], where: str, f: Findings) -> None:
        self.toks, self.i, self.where, self.f = toks, 0, where, f
        self.graph = Dot()
        self.last_line = 0

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str, text: str | None = None) -> Tok:
        t = self.peek()
        if t is None or t.kind != kind or (text is not None and t.text != text):
            raise ValueError(f"expected {text or kind}, got {t}")
        self.i += 1
        return t

    def parse(self) -> Dot:
        try:
            self.take("id", "digraph")
            self.take("id")
            self.take("{")
            self.body()
            self.take("}")
            if self.peek() is not None:
                raise ValueError(f"text after the graph: {self.peek()}")
        except ValueError as e:
            self.f.add(self.where, f"DOT does not parse: {e}")
        return self.graph

    def starts_line(self, t: Tok) -> None:
        if t.line <= self.last_line:
            self.f.add(
                self.where, f"DOT line {t.line}: a second statement on one line ({t.text!r})"
            )

    def body(self) -> None:
        while (t := self.peek()) is not None and t.kind != "}":
            if t.kind == "id" and t.text == "subgraph":
                self.starts_line(t)
                self.i += 1
                self.graph.subgraphs.append(self.take("id").text)
                self.take("{")
                self.last_line = t.line
                self.body()
                end = self.take("}")
                self.last_line = end.line
                if (s := self.peek()) is not None and s.kind == ";":
                    self.i += 1
                    self.last_line = s.line
                continue
            self.statement()

    def statement(self) -> None:
        first = self.take("id")
        self.starts_line(first)
        breaks = first.breaks
        nxt = self.peek()
        if nxt is not None and nxt.kind == "=":
            self.i += 1
            breaks += self.take("id").breaks
        elif nxt is not None and nxt.kind == "->":
            self.i += 1
            second = self.take("id")
            self.graph.edges.add((first.text, second.text))
            breaks += second.breaks + self.attrs()
        else:
            self.graph.nodes.add(first.text)
            breaks += self.attrs()
        end = self.take(";")
        if end.line - first.line > breaks:
            self.f.add(self.where, f"DOT lines {first.line}-{end.line}: a statement over lines")
        self.last_line = end.line

    def attrs(self) -> int:
        breaks = 0
        if (t := self.peek()) is None or t.kind != "[":
            return 0
        self.i += 1
        while (t := self.peek()) is not None and t.kind != "]":
            breaks += self.take("id").breaks
            self.take("=")
            breaks += self.take("id").breaks
            if (c := self.peek()) is not None and c.kind == ",":
                self.i += 1
        self.take("]")
        return breaks


def parse_dot(text: str, where: str, f: Findings) -> Dot:
    return _DotParser(dot_tokens(text, where, f), where, f).parse()


# ---------------------------------------------------------------------------- kgctl


@dataclass(frozen=True)
class Run:
    rc: int | None  # None: it raised
    out: str
    err: str
    crash: str = ""


def write_dump(path: Path, nodes: list[Any], peers: list[Any]) -> Path:
    """A ``kubectl get nodes,peers`` List: JSON where JSON can hold the objects (fast for the
    1 MB cases), else YAML (keys that are not strings)."""
    doc = {"apiVersion": "v1", "kind": "List", "items": [*nodes, *peers]}
    keys_ok = all(isinstance(k, str) for k in _keys(doc))
    path.write_text(json.dumps(doc) if keys_ok else yaml.safe_dump(doc))
    return path


def _keys(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)


#: The pseudo-command for ``graph`` with readiness judged at the dump's own reference time
#: (no ``--now``: the newest check-in the dump holds).
DUMP_TIME_GRAPH = ("graph", "(no --now)")


def kgctl(dump: Path, *args: str) -> Run:
    """kgctl in-process on a dump, readiness judged at ``NOW`` (but for ``DUMP_TIME_GRAPH``),
    the granularity given (the first node by name, which may be the hostile one, must not
    decide it)."""
    now = [] if args == DUMP_TIME_GRAPH else ["--now", str(NOW)]
    args = args[:1] if args == DUMP_TIME_GRAPH else args
    argv = ["--from-file", str(dump), *now, "--mesh-granularity", "location", *args]
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = kgctl_run(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    except Exception:  # noqa: BLE001 - a traceback is a finding
        out.flush()
        return Run(
            None, raw.getvalue().decode("utf-8", "replace"), err.getvalue(), traceback.format_exc()
        )
    out.flush()
    return Run(rc, raw.getvalue().decode("utf-8", "replace"), err.getvalue())


def kgctl_commands(case: Case | None) -> list[tuple[str, ...]]:
    cmds: list[tuple[str, ...]] = []
    for n in BASE_NODES:
        cmds.append(("showconf", "node", n))
        cmds.append(("showconf", "node", n, "--as-peer"))
        cmds.append(("showconf", "node", n, "--as-peer", "-o", "yaml"))
        cmds.append(("showconf", "node", n, "--as-peer", "-o", "json"))
    for p in BASE_PEERS:
        cmds.append(("showconf", "peer", p))
        cmds.append(("showconf", "peer", p, "--as-peer", "-o", "yaml"))
    cmds.append(("graph",))
    cmds.append(DUMP_TIME_GRAPH)
    if case is not None and case.name and not case.name.startswith("-"):
        kind = case.kind.lower()
        cmds.append(("showconf", kind, case.name))
        cmds.append(("showconf", kind, case.name, "--as-peer", "-o", "json"))
        cmds.append(("showconf", kind, case.name, "--as-peer", "-o", "yaml"))
    return cmds


_STDERR_LINE = re.compile(r"warning: |error: (did not find any |cannot generate |failed to )")


def check_run(cmd: tuple[str, ...], r: Run, f: Findings) -> None:
    """One kgctl run on its own: no traceback, a sensible exit status, outputs in grammar."""
    where = "kgctl " + " ".join(map(repr, cmd))
    if r.crash:
        f.add(where, "traceback: " + r.crash.strip().splitlines()[-1])
        return
    f.check(r.rc in (0, 1), where, f"exit status {r.rc}")
    for line in r.err.split("\n")[:-1] if r.err.endswith("\n") else r.err.split("\n"):
        if _CONTROL.search(line):
            f.add(where, f"stderr line with a control character: {line!r}")
        elif line and not _STDERR_LINE.match(line):
            f.add(where, f"stderr line kgctl does not print: {line!r}")
    if r.rc != 0 or not r.out:
        return
    if cmd[0] == "graph":
        parse_dot(r.out, where, f)
    elif "-o" in cmd:
        fmt = cmd[cmd.index("-o") + 1]
        doc = f.guard(where, lambda: yaml.safe_load(r.out) if fmt == "yaml" else json.loads(r.out))
        if isinstance(doc, dict):
            name = doc.get("metadata", {}).get("name")  # free text, escaped by YAML and JSON
            f.check(name == cmd[2], where, f"metadata.name {name!r}, not {cmd[2]!r}")
            clean_strings({k: v for k, v in doc.items() if k != "metadata"}, where, f)
            spec = doc.get("spec", {})
            for a in spec.get("allowedIPs") or []:
                f.check(isinstance(a, str) and is_cidr(a), where, f"allowed IP {a!r}")
    else:
        ini_sections(r.out, where, f)


def _quiet(err: str) -> str:
    """stderr without the warnings (those the hostile object adds are expected)."""
    return "".join(line for line in err.splitlines(True) if not line.startswith("warning: "))


def compare_run(cmd: tuple[str, ...], base: Run, r: Run, f: Findings, case: Case) -> None:
    """A baseline command's output with the hostile object, against the baseline's."""
    where = "kgctl " + " ".join(map(repr, cmd))
    if r.crash:
        return  # reported by check_run
    if (r.rc, _quiet(r.err)) != (base.rc, _quiet(base.err)):
        f.add(where, f"exit {r.rc} {_quiet(r.err)!r}; the baseline's: exit {base.rc}")
        return
    if cmd[0] == "graph":
        quiet = Findings()
        b, h = parse_dot(base.out, where, quiet), parse_dot(r.out, where, quiet)
        lines = set(r.out.split("\n"))
        for line in base.out.split("\n"):
            f.check(line in lines, where, f"the baseline's DOT line {line!r} is gone")
        new_nodes = h.nodes - b.nodes
        f.check(
            len(new_nodes) <= 1, where, f"DOT nodes beside the hostile one: {sorted(new_nodes)}"
        )
        f.check(len(h.subgraphs) <= len(b.subgraphs) + 1, where, f"DOT subgraphs: {h.subgraphs}")
        for a, z in h.edges - b.edges:
            f.check(
                {a, z} & new_nodes != set(), where, f"a DOT edge between old nodes: {a!r}->{z!r}"
            )
            f.check({a, z} <= h.nodes, where, f"a DOT edge to an undeclared node: {a!r}->{z!r}")
    elif "--as-peer" in cmd or not r.out:
        f.check(r.out == base.out, where, f"output changed: {r.out!r}")
    else:
        compare_ini(where, ini_sections(base.out, where, Findings()), r.out, f)


def compare_ini(where: str, base: list[IniSection], text: str, f: Findings) -> None:
    """The baseline's sections are all there, once each and unchanged; no other section claims
    an allowed IP equal to or inside one of theirs."""
    sections = ini_sections(text, where, Findings())  # the grammar is check_run's
    keyed = by_public_key(sections)
    protected = []
    for s in base:
        if s.header == "Interface":
            ours = [x for x in sections if x.header == "Interface"]
            f.check([x.text for x in ours] == [s.text], where, f"[Interface] changed: {ours[:1]!r}")
            continue
        k = s.values["PublicKey"]
        have = keyed.get(k, [])
        f.check(len(have) <= 1, where, f"{len(have)} sections with the baseline's key {k}")
        f.check(
            any(h.text == s.text for h in have),
            where,
            f"the section of {k} changed: {[h.text for h in have]!r}, was {s.text!r}",
        )
        protected += [network(a) for a in s.values.get("AllowedIPs", "").split(", ") if a]
    base_keys = {s.values.get("PublicKey") for s in base}
    for s in sections:
        if s.header != "Peer" or s.values.get("PublicKey") in base_keys:
            continue
        for a in s.values.get("AllowedIPs", "").split(", "):
            if a and is_cidr(a) and (hit := covered(network(a), protected)) is not None:
                f.add(where, f"a new section claims {a} of the baseline's {hit}")


# ---------------------------------------------------------------------------- the agent


def fake_resolve(ep: Endpoint) -> UdpAddress | None:
    """No DNS in unit tests: a name resolves to a documentation address."""
    if ep.dns:
        return ipaddress.ip_address("192.0.2.53"), ep.port
    return (ep.ip, ep.port) if ep.ip is not None and ep.port else None


def agent_view(nodes: list[Any], peers: list[Any]) -> ClusterView:
    """The cluster as the agent reads it: the backend's ``lean`` objects through the cache
    (read twice: a resync must not repeat a problem)."""
    cache = ObjectCache(REGION_LABEL)
    lean_nodes = [lean(o, "Node", "v1") for o in nodes]
    lean_peers = [lean(o, "Peer", "kilo.squat.ai/v1alpha1") for o in peers]
    cache.read(lean_nodes, lean_peers)
    return cache.read(lean_nodes, lean_peers)


def internal_ip(name: str) -> HostAddress:
    return HostAddress("eth0", ipaddress.ip_interface(BASE_NODES[name].internal_ip))


def agent_plan(view: ClusterView, host: str, key: Key, addr: HostAddress | None) -> Plan:
    facts = LocalFacts(private_key=key, now=float(NOW), private_ip=addr, underlay_mtu=1500)
    settings = Settings(
        hostname=host, encapsulation=Encapsulation(Strategy.NEVER), forward_rules=True
    )
    return plan(view, facts, settings)


def check_writers(p: Plan, where: str, f: Findings) -> None:
    """Everything the plan would write, in its grammar."""
    if p.annotations is not None:
        for k, v in p.annotations.items():
            f.check(not _CONTROL.search(k + v), where, f"annotation {k}={v!r}")
    if p.node is not None:
        f.guard(f"{where}: node_annotations", node_annotations, p.node)
    dp = p.dataplane
    if dp is None:
        return
    conf = dp.wireguard
    ini = f.guard(f"{where}: WgConf.render", conf.render)
    if ini is not None:
        ini_sections(ini, f"{where}: INI", f)
    for name, make in (
        ("diff(empty device)", lambda: diff(DeviceState(), conf, fake_resolve)[0]),
        ("diff_confs(nothing)", lambda: diff_confs(WgConf(), conf, fake_resolve)[0]),
    ):
        up = f.guard(f"{where}: {name}", make)
        if up is not None:
            text = f.guard(f"{where}: encode_set({name})", encode_set, up)
            if text is not None:
                uapi_problems(text, f"{where}: UAPI {name}", f)
    nft = f.guard(f"{where}: nft_json", lambda: json.dumps(dp.ruleset.nft_json(), allow_nan=False))
    if nft is not None:
        clean_strings(json.loads(nft), f"{where}: nft JSON", f)
    for x in (*dp.routes, *dp.rules):
        text = str(x)
        f.check(not _CONTROL.search(text) and "%" not in text, where, f"route/rule {text!r}")


def protected_prefixes(p: Plan) -> list[Any]:
    """What the baseline's mesh routes: every segment's and peer's allowed IPs."""
    assert p.topology is not None
    t = p.topology
    out = [a.network for s in t.segments for a in (*s.allowed_ips, *s.allowed_location_ips)]
    return out + [a.network for peer in t.peers for a in peer.allowed_ips]


def compare_plans(base: Plan, p: Plan, where: str, f: Findings) -> None:
    """No healthy tunnel (peer), route or annotation of the baseline changes, and nothing new
    claims what the baseline routes."""
    if p.status is not Status.OK or p.dataplane is None or base.dataplane is None:
        f.add(where, f"plan status {p.status.value}: {p.reason}")
        return
    bconf, conf = base.dataplane.wireguard, p.dataplane.wireguard
    f.check(
        (conf.private_key, conf.listen_port) == (bconf.private_key, bconf.listen_port),
        where,
        f"listen port {conf.listen_port}, was {bconf.listen_port}",
    )
    keyed: dict[Key, list[WgPeer]] = {}
    for peer in conf.peers:
        keyed.setdefault(peer.public_key, []).append(peer)
    for k, same in keyed.items():
        f.check(len(same) == 1, where, f"{len(same)} peers with the key {k}")
    f.check(bconf.private_key is None or bconf.private_key.public() not in keyed, where,
            "a peer with the device's own key")  # fmt: skip
    for b in bconf.peers:
        have = keyed.get(b.public_key, [])
        f.check(have == [b], where, f"peer {b.public_key} changed: {have!r}, was {b!r}")
    protected = protected_prefixes(base)
    old = {b.public_key for b in bconf.peers}
    for peer in conf.peers:
        if peer.public_key in old:
            continue
        for a in peer.allowed_ips:
            if (hit := covered(a.network, protected)) is not None:
                f.add(where, f"new peer {peer.public_key} claims {a} of the baseline's {hit}")
    up = f.guard(f"{where}: diff_confs", lambda: diff_confs(bconf, conf, fake_resolve)[0])
    if up is not None:
        touched = [u.public_key for u in up.peers if u.public_key in old]
        f.check(not touched, where, f"the update from the baseline touches {touched}")
    f.check(p.dataplane.addresses == base.dataplane.addresses, where, "the link's addresses")
    routes = set(p.dataplane.routes)
    for r in base.dataplane.routes:
        f.check(r in routes, where, f"the baseline's route {r} is gone")
    for r in routes - set(base.dataplane.routes):
        if (hit := covered(r.dst.network, protected)) is not None:
            f.add(where, f"a new route {r} takes {hit} of the baseline")
    f.check(set(base.dataplane.rules) <= set(p.dataplane.rules), where, "baseline rules are gone")
    f.check(p.annotations == base.annotations, where, f"annotations {p.annotations}")


# ---------------------------------------------------------------------------- problems


def names_field(reported: str, bad: str) -> bool:
    """Whether a Problem's field names the bad field: the same, inside it, or around it
    (but not merely ``spec``, ``metadata`` or the whole object)."""
    if bad == "":
        return True
    if reported == bad or reported.startswith((bad + ".", bad + "[")):
        return True
    return reported not in ("", "spec", "metadata") and bad.startswith(
        (reported + ".", reported + "[")
    )


def check_problems(
    case: Case, problems: Sequence[Problem], where: str, f: Findings, bad: bool = True
) -> None:
    """Each bad field is named by a problem of the object; none is repeated; none hides an
    exception or adds a line."""
    mine = [p for p in problems if p.kind == case.kind and p.name == case.name]
    if bad:
        for field_name in case.bad:
            f.check(
                any(names_field(p.field, field_name) for p in mine),
                where,
                f"no problem names {field_name!r} (the object's: {[p.field for p in mine]})",
            )
    seen: set[tuple[str, str, str, str]] = set()
    for p in problems:
        key = (p.kind, p.name, p.field, p.value)
        f.check(key not in seen, where, f"a problem twice: {p}")
        seen.add(key)
        f.check(not _CONTROL.search(str(p)), where, f"a problem that adds a line: {str(p)!r}")
        f.check(
            not re.search(r"unreadable|could not be read", p.reason),
            where,
            f"a reader raised inside: {p}",
        )


def check_refused(case: Case, problems: Sequence[Problem], where: str, f: Findings) -> None:
    """Each claim the case makes is refused with a problem naming the object or its location."""
    names = {case.name, *(f"location:{loc}" for loc in _locations(case.obj))}
    for value in case.refused:
        f.check(
            any(value in p.value and p.name in names for p in problems),
            where,
            f"the claim {value} is not refused (problems: {[str(p) for p in problems]})",
        )


def _locations(obj: Any) -> list[str]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    out = []
    for m in (meta.get("annotations"), meta.get("labels")):
        if isinstance(m, dict):
            out += [v for k, v in m.items() if k in ("kilo.squat.ai/location", REGION_LABEL)]
    return [x for x in out if isinstance(x, str)]


def check_model(value: Any, where: str, f: Findings) -> None:
    """What a reader returns holds only values a writer takes: no zone, no control character,
    ports and keepalives in range."""
    if value is None:
        return
    for attr in ("endpoint",):
        ep = getattr(value, attr, None)
        if ep is not None:
            ok = 1 <= ep.port <= 65535 and (
                (ep.dns is not None and _DNS.match(ep.dns) and len(ep.dns) <= 253)
                or (ep.dns is None and ep.ip is not None and is_address(str(ep.ip)))
            )
            f.check(bool(ok), where, f"read endpoint {ep!r}")
    prefixes: list[Prefix] = []
    for attr in ("internal_ip", "cni_compatibility_ip", "subnet", "wireguard_ip"):
        if (p := getattr(value, attr, None)) is not None:
            prefixes.append(p)
    prefixes += list(getattr(value, "allowed_location_ips", ()))
    prefixes += list(getattr(value, "allowed_ips", ()))
    for p in prefixes:
        f.check(is_cidr(str(p)), where, f"read prefix {str(p)!r}")
    ka = getattr(value, "persistent_keepalive", 0)
    f.check(type(ka) is int and 0 <= ka <= 65535, where, f"read keepalive {ka!r}")
    for k, ep in (getattr(value, "discovered_endpoints", None) or {}).items():
        f.check(_BASE64_KEY.match(k) is not None, where, f"read discovered key {k!r}")
        f.check(
            ep.ip is not None and is_address(str(ep.ip)) and 1 <= ep.port <= 65535,
            where,
            f"read discovered endpoint {ep!r}",
        )


# ---------------------------------------------------------------------------- the baseline, once


@dataclass
class Baseline:
    runs: dict[tuple[str, ...], Run]
    plans: dict[str, Plan]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    nodes, peers = cluster_with(None)
    dump = write_dump(tmp_path_factory.mktemp("baseline") / "cluster.json", nodes, peers)
    runs = {cmd: kgctl(dump, *cmd) for cmd in kgctl_commands(None)}
    view = agent_view(nodes, peers)
    plans = {n: agent_plan(view, n, private_key(n), internal_ip(n)) for n in LEADERS}
    return Baseline(runs, plans)


def test_the_baseline_is_healthy(baseline: Baseline) -> None:
    """The checks themselves, on the cluster without a hostile object: nothing to find."""
    f = Findings()
    for cmd, r in baseline.runs.items():
        check_run(cmd, r, f)
        f.check(r.rc == 0, " ".join(cmd), f"exit {r.rc}: {r.err}")
    not_leader = 'warning: Node "a2" is not a leader node\n'
    assert baseline.runs[("showconf", "node", "a2")].err == not_leader
    for n, p in baseline.plans.items():
        f.check(p.status is Status.OK and p.leader, n, f"{p.status}: {p.reason}")
        f.check(not p.problems, n, f"problems {p.problems}")
        check_writers(p, f"plan for {n}", f)
        assert p.dataplane is not None
        f.check(len(p.dataplane.wireguard.peers) == 4, n, "two segments and two peers")
    f.assert_none()


def test_the_corpus() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids repeat"
    assert len(CASES) >= 60
    for c in CASES:
        assert c.kind in ("Node", "Peer"), c.id
        assert c.tags, c.id


# ---------------------------------------------------------------------------- per case


@pytest.mark.parametrize("case", CASES, ids=str)
def test_readers(case: Case) -> None:
    """Every reader takes the object without raising, reports each bad field once and returns
    only values a writer takes."""
    f = Findings()
    read = node_from_object if case.kind == "Node" else peer_from_object
    result = f.guard(f"{read.__name__}", lambda: read(case.obj))
    if result is not None:
        value, problems = result
        check_problems(case, problems, read.__name__, f)
        check_model(value, read.__name__, f)
    other = peer_from_object if case.kind == "Node" else node_from_object
    f.guard(f"{other.__name__} (the wrong kind)", lambda: other(case.obj))
    f.guard("lean", lambda: lean(case.obj, case.kind, case.api_version))
    nodes, peers = cluster_with(case)
    state = f.guard("mesh.read_cluster (kgctl)", lambda: read_cluster(nodes, peers, REGION_LABEL))
    if state is not None:
        check_problems(case, state.problems, "mesh.read_cluster", f)
        f.check(
            {n.name for n in state.nodes} >= set(BASE_NODES)
            and {p.name for p in state.peers} >= set(BASE_PEERS),
            "mesh.read_cluster",
            "a baseline object is lost",
        )
    f.guard(
        "ObjectCache.read (objects as given)", lambda: ObjectCache(REGION_LABEL).read(nodes, peers)
    )
    f.assert_none()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_load_dump(case: Case, tmp_path: Path) -> None:
    """A dump holding the object loads, and every baseline object with it: one bad item does
    not stop the rest."""
    nodes, peers = cluster_with(case)
    dump = write_dump(tmp_path / "cluster.json", nodes, peers)
    f = Findings()
    loaded = f.guard("backend.file.load_objects", lambda: load_objects(dump))
    if loaded is not None:
        names = {object_name(o) for o in loaded[0] + loaded[1]}
        lost = (set(BASE_NODES) | set(BASE_PEERS)) - names
        f.check(not lost, "backend.file.load_objects", f"baseline objects lost: {sorted(lost)}")
    f.assert_none()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kgctl(case: Case, baseline: Baseline, tmp_path: Path) -> None:
    """kgctl's outputs: in grammar, and (unless it reproduces Kilo's honouring of the claim)
    the baseline's outputs unchanged."""
    nodes, peers = cluster_with(case)
    dump = write_dump(tmp_path / "cluster.json", nodes, peers)
    f = Findings()
    for cmd in kgctl_commands(case):
        r = kgctl(dump, *cmd)
        check_run(cmd, r, f)
        if cmd in baseline.runs and not case.kgctl_as_kilo:
            compare_run(cmd, baseline.runs[cmd], r, f, case)
    f.assert_none()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_agent(case: Case, baseline: Baseline) -> None:
    """The agent's plan on each baseline leader (and on the hostile node itself): it never
    raises, writes only its grammar, changes no healthy tunnel, and reports each bad value and
    refused claim once."""
    nodes, peers = cluster_with(case)
    f = Findings()
    view = f.guard("agent read (lean + ObjectCache)", lambda: agent_view(nodes, peers))
    if view is None:
        f.assert_none()
        return
    for n in LEADERS:
        where = f"plan for {n}"
        p = f.guard(where, agent_plan, view, n, private_key(n), internal_ip(n))
        if p is None:
            continue
        check_writers(p, where, f)
        compare_plans(baseline.plans[n], p, where, f)
        check_problems(case, p.problems, where, f, bad=n == LEADERS[0])
        check_refused(case, p.problems, where, f)
    if case.kind == "Node" and case.name in view.nodes:
        where = "plan for the hostile node itself"
        key = Key(hashlib.sha256(case.id.encode()).digest())
        p = f.guard(where, lambda: agent_plan(view, case.name, key, None))
        if p is not None:
            check_writers(p, where, f)
            check_problems(case, p.problems, where, f, bad=False)
    f.assert_none()
