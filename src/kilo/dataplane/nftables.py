"""Our nftables tables, replaced atomically with ``nft -j -f -``.

The adapter owns a fixed set of tables (by default ``table inet kilo``) and nothing else: a
desired ruleset that would create, change or delete any other table is refused, and ``remove()``
deletes only ours. ``apply`` sends one transaction per call (for each desired table: ``add``,
``delete``, ``add`` again, then its chains, sets and rules; owned tables no longer wanted are
deleted in the same transaction), so the kernel swaps the old ruleset for the new one at once
and a reader never sees a half-written table.

A no-op is detected by listing our tables (``nft -j list table``) and comparing them, without
handles and counter values, to the desired objects; ``apply`` then sends nothing and returns
``[]``. Where nft lists an object in another spelling than the one given, the listing taken
right after our last apply of the same ruleset is accepted too. Cheaper first: when the desired
objects are those this adapter last wrote, the table's plain listing (``nft -s list table``, a
few milliseconds in C) is compared with the one taken right after that write, and only when it
differs is the table read as JSON and compared object by object.

``apply(ruleset, previous)``, with the ruleset last applied without a failure, reads nothing
first: the tables that differ from ``previous`` are changed in one transaction (only set
elements added and deleted where nothing else differs, else the table replaced), and the plain
listing is taken after it for the next verification.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from typing import Any, Protocol, cast

OBJECTS = ("chain", "set", "map", "flowtable", "counter", "quota", "ct helper", "limit")


class NftError(RuntimeError):
    """nft failed; the message carries its error output."""


class HasNftJson(Protocol):
    def nft_json(self) -> dict[str, Any]: ...


TableId = tuple[str, str]  # (family, name)


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without its handle, with counters' values zeroed (they are state, not config)."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            if set(x) == {"counter"}:
                return {"counter": None}
            return {k: clean(v) for k, v in x.items() if k != "handle"}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return cast(dict[str, Any], clean(obj))


def _table_of(kind: str, obj: dict[str, Any]) -> TableId:
    if kind == "table":
        return obj["family"], obj["name"]
    return obj["family"], obj["table"]


def desired_objects(
    ruleset: HasNftJson | dict[str, Any] | list[dict[str, Any]],
) -> dict[TableId, list[tuple[str, dict[str, Any]]]]:
    """The objects to create, per table, from a Ruleset, an ``{"nftables": [...]}`` transaction
    (its ``add``/``create`` commands; table add/delete/flush are our business) or a plain list
    of ``{"chain": {...}}``/``{"rule": {...}}`` objects."""
    if hasattr(ruleset, "nft_json"):
        ruleset = ruleset.nft_json()
    cmds = ruleset["nftables"] if isinstance(ruleset, dict) else ruleset
    out: dict[TableId, list[tuple[str, dict[str, Any]]]] = {}
    for cmd in cmds:
        verb = next(iter(cmd))
        if verb in ("delete", "flush", "destroy") and "table" in cmd[verb]:
            continue
        body = cmd[verb] if verb in ("add", "create") else cmd
        kind = next(iter(body))
        if kind == "metainfo":
            continue
        if verb not in ("add", "create") and kind not in (*OBJECTS, "rule", "element", "table"):
            raise ValueError(f"unsupported nft command {cmd!r}")
        obj = body[kind]
        tid = _table_of(kind, obj)
        objs = out.setdefault(tid, [])
        if kind != "table":
            objs.append((kind, obj))
    return out


def _canonical(objs: Iterable[tuple[str, dict[str, Any]]]) -> str:
    """A comparable form: non-rule objects sorted by name, rules in order within their chain."""
    things: list[tuple[str, str, str]] = []
    rules: dict[str, list[str]] = {}
    for kind, obj in objs:
        o = _strip(obj)
        if kind == "rule":
            rules.setdefault(o["chain"], []).append(json.dumps(o, sort_keys=True))
        else:
            things.append((kind, str(o.get("name", "")), json.dumps(o, sort_keys=True)))
    return json.dumps([sorted(things), sorted(rules.items())])


class Nftables:
    """The tables ``owned`` (default ``inet kilo``) in ``netns`` (None: the current namespace)."""

    def __init__(
        self,
        owned: Iterable[TableId] = (("inet", "kilo"),),
        netns: str | None = None,
        nft: str = "nft",
    ) -> None:
        self.owned = set(owned)
        self.netns = netns
        self.nft = nft
        self._learned: dict[TableId, tuple[str, str]] = {}  # table -> (desired hash, listing)
        self._written: dict[TableId, tuple[list[tuple[str, dict[str, Any]]], str]] = {}
        # table -> (the objects we last wrote, its plain listing right after)

    def _run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.nft, *args]
        if self.netns:
            path = self.netns if "/" in self.netns else f"/run/netns/{self.netns}"
            argv = ["nsenter", f"--net={path}", "--", *argv]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True)

    def tables(self) -> set[TableId]:
        """Which of our tables exist."""
        p = self._run("-j", "list", "tables")
        if p.returncode != 0:
            raise NftError(f"nft list tables: {p.stderr.strip()}")
        found = {
            (t["table"]["family"], t["table"]["name"])
            for t in json.loads(p.stdout or '{"nftables": []}')["nftables"]
            if "table" in t
        }
        return found & self.owned

    def current(self, table: TableId) -> list[tuple[str, dict[str, Any]]] | None:
        """The objects of one of our tables as nft lists them, None if it does not exist."""
        p = self._run("-j", "list", "table", *table)
        if p.returncode != 0:
            if "No such file or directory" in p.stderr:
                return None
            raise NftError(f"nft list table {' '.join(table)}: {p.stderr.strip()}")
        out = []
        for item in json.loads(p.stdout)["nftables"]:
            kind = next(iter(item))
            if kind not in ("metainfo", "table"):
                out.append((kind, item[kind]))
        return out

    def listing(self, table: TableId) -> str | None:
        """The table's plain listing without state (``nft -s list table``); None if missing."""
        p = self._run("-s", "list", "table", *table)
        return p.stdout if p.returncode == 0 else None

    def _as_written(self, tid: TableId, objs: list[tuple[str, dict[str, Any]]]) -> bool:
        """Whether the table still holds ``objs`` exactly as this adapter wrote them."""
        written = self._written.get(tid)
        return written is not None and written[0] == objs and self.listing(tid) == written[1]

    def _remember(self, tid: TableId, objs: list[tuple[str, dict[str, Any]]]) -> None:
        listed = self.listing(tid)
        if listed is not None:
            self._written[tid] = (objs, listed)

    def apply(
        self,
        ruleset: HasNftJson | dict[str, Any] | list[dict[str, Any]],
        previous: HasNftJson | dict[str, Any] | list[dict[str, Any]] | None = None,
    ) -> list[str]:
        """Make our tables exactly ``ruleset`` in one transaction; ``[]`` if they already are.
        With ``previous`` (the ruleset last applied without a failure) nothing is read first:
        the tables whose objects differ from it are replaced, and those it held and ``ruleset``
        does not are deleted."""
        want = desired_objects(ruleset)
        foreign = set(want) - self.owned
        if foreign:
            raise ValueError(f"refusing to touch tables we do not own: {sorted(foreign)}")
        if previous is not None:
            return self._change(desired_objects(previous), want)
        existing = self.tables()
        cmds: list[dict[str, Any]] = []
        changes: list[str] = []
        pending: dict[TableId, str] = {}
        for tid, objs in want.items():
            if tid in existing and self._as_written(tid, objs):
                continue
            digest = hashlib.sha256(_canonical(objs).encode()).hexdigest()
            cur = self.current(tid) if tid in existing else None
            if cur is not None:
                now = _canonical(cur)
                if now == _canonical(objs) or self._learned.get(tid) == (digest, now):
                    continue
            changes.append(_describe(tid, cur, objs))
            pending[tid] = digest
            cmds += _replace_table(tid, objs)
        for tid in sorted(existing - set(want)):
            cmds.append({"delete": {"table": {"family": tid[0], "name": tid[1]}}})
            changes.append(f"delete nft table {' '.join(tid)}")
        if not cmds:
            return []
        self._transaction(cmds)
        for tid, digest in pending.items():
            listed = self.current(tid)
            self._learned[tid] = (digest, _canonical(listed or []))
            self._remember(tid, want[tid])
        for tid in existing - set(want):
            self._written.pop(tid, None)
        return changes

    def _change(
        self,
        before: dict[TableId, list[tuple[str, dict[str, Any]]]],
        want: dict[TableId, list[tuple[str, dict[str, Any]]]],
    ) -> list[str]:
        cmds: list[dict[str, Any]] = []
        changes: list[str] = []
        pending: list[TableId] = []
        for tid, objs in want.items():
            had = before.get(tid)
            if had is not None and had == objs:
                continue
            changes.append(_describe(tid, had, objs))
            pending.append(tid)
            elements = None if had is None else _element_changes(tid, had, objs)
            cmds += _replace_table(tid, objs) if elements is None else elements
        for tid in sorted((set(before) & self.owned) - set(want)):
            cmds.append({"delete": {"table": {"family": tid[0], "name": tid[1]}}})
            changes.append(f"delete nft table {' '.join(tid)}")
            self._learned.pop(tid, None)
            self._written.pop(tid, None)
        if not cmds:
            return []
        self._transaction(cmds)
        for tid in pending:  # what nft made of it, for the next verification
            self._learned.pop(tid, None)
            self._remember(tid, want[tid])
        return changes

    def remove(self) -> list[str]:
        """Delete our tables (all of them); ``[]`` if there were none."""
        existing = sorted(self.tables())
        if existing:
            self._transaction(
                [{"delete": {"table": {"family": f, "name": n}}} for f, n in existing]
            )
        self._learned.clear()
        self._written.clear()
        return [f"delete nft table {f} {n}" for f, n in existing]

    def _transaction(self, cmds: list[dict[str, Any]]) -> None:
        p = self._run("-j", "-f", "-", stdin=json.dumps({"nftables": cmds}))
        if p.returncode != 0:
            raise NftError(f"nft -j -f -: {p.stderr.strip()}")


def _replace_table(tid: TableId, objs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Commands that make table ``tid`` hold exactly ``objs`` (whether it exists or not)."""
    table = {"family": tid[0], "name": tid[1]}
    return [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        *({"add": {kind: obj}} for kind, obj in objs),
    ]


def _element_changes(
    tid: TableId,
    had: list[tuple[str, dict[str, Any]]],
    want: list[tuple[str, dict[str, Any]]],
) -> list[dict[str, Any]] | None:
    """The element deletions and additions that turn ``had`` into ``want`` when nothing else
    differs (the same objects in the same order, sets apart from their elements); None when
    something else does (the table is then replaced)."""
    if len(had) != len(want):
        return None
    deletes: list[dict[str, Any]] = []
    adds: list[dict[str, Any]] = []
    for (kind, old), (kind2, new) in zip(had, want, strict=True):
        if kind != kind2:
            return None
        if kind != "set":
            if old != new:
                return None
            continue
        if {k: v for k, v in old.items() if k != "elem"} != {
            k: v for k, v in new.items() if k != "elem"
        }:
            return None
        before = {_elem_key(e): e for e in old.get("elem", [])}
        after = {_elem_key(e): e for e in new.get("elem", [])}
        ref = {"family": tid[0], "table": tid[1], "name": new["name"]}
        gone = [e for k, e in before.items() if k not in after]
        came = [e for k, e in after.items() if k not in before]
        if gone:
            deletes.append({"delete": {"element": {**ref, "elem": gone}}})
        if came:
            adds.append({"add": {"element": {**ref, "elem": came}}})
    return deletes + adds


def _describe(
    tid: TableId,
    cur: list[tuple[str, dict[str, Any]]] | None,
    want: list[tuple[str, dict[str, Any]]],
) -> str:
    name = " ".join(tid)
    new = [json.dumps(_strip(o), sort_keys=True) for k, o in want if k == "rule"]
    if cur is None:
        return f"create nft table {name} ({len(want) - len(new)} objects, {len(new)} rules)"
    old = [json.dumps(_strip(o), sort_keys=True) for k, o in cur if k == "rule"]
    old_set, new_set = set(old), set(new)  # (lists were searched: quadratic in the rules)
    added = sum(1 for r in new if r not in old_set)
    removed = sum(1 for r in old if r not in new_set)
    old_elems, new_elems = _elements(cur), _elements(want)
    if old_elems == new_elems:
        return f"replace nft table {name} (+{added} -{removed} rules)"
    came, gone = len(new_elems - old_elems), len(old_elems - new_elems)
    return f"replace nft table {name} (+{added} -{removed} rules, +{came} -{gone} set elements)"


def _elem_key(e: Any) -> object:
    """A set element as a hashable value (an address is its text, a prefix its pair)."""
    if isinstance(e, str):
        return e
    if isinstance(e, dict) and isinstance(p := e.get("prefix"), dict) and len(e) == 1:
        return (p.get("addr"), p.get("len"))
    return json.dumps(e, sort_keys=True)


def _elements(objs: list[tuple[str, dict[str, Any]]]) -> set[tuple[str, object]]:
    """Every set element of ``objs`` as (set name, element)."""
    return {
        (str(o.get("name")), _elem_key(e)) for k, o in objs if k == "set" for e in o.get("elem", [])
    }
