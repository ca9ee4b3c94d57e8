"""Golden kgctl fixtures in the layout of ``tests/data`` (its README is the format's
reference): writing them, reading them back, and comparing a kgctl's result with one.

The comparison is the one every golden test uses: the exit code must match, and each of our
stderr lines starts with ``warning: `` or ``error: ``; for an error, the message (Kilo's last
stderr line, after cobra's usage text; ours that line after ``error: ``, and it may also offer
``cross``); for a success, stdout byte for byte, and Kilo's stderr lines among ours after
``warning: ``, in order (ours add the values refused). Kilo's
``--as-peer -o yaml|json`` defects (``<nil>`` endpoints, a DNS name printed as its port,
keepalives in nanoseconds) are compared as objects, everywhere but in ``endpoint`` and with the
keepalive in seconds.
"""

from __future__ import annotations

import difflib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

WARNING = "warning: "
ERROR = "error: "


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


@dataclass(frozen=True)
class Fixture:
    """One command of a golden cluster; ``argv`` starts after ``kgctl``."""

    cluster: str
    stem: str
    argv: list[str]
    now: int
    expected: Result
    dump: Path

    @property
    def id(self) -> str:
        return f"{self.cluster}/{self.stem}"


def stem(argv: Sequence[str]) -> str:
    return "_".join(argv).replace("/", "_")


def header(cluster: str, now: int, notes: Sequence[str] = ()) -> str:
    lines = [
        f"# cluster {cluster}: kgctl argv per fixture (run with --kubeconfig appended, "
        "HOME=/root, KUBECONFIG unset)",
        f"# now (unix time when the objects were created, last-seen of ready nodes) = {now}",
        "# format: STEM<TAB>EXIT_CODE<TAB>ARGV (shell-quoted); files: STEM.out (stdout), "
        "STEM.err (stderr, if non-empty), STEM.rc (exit code, if non-zero)",
        *(f"# {n}" for n in notes),
    ]
    return "\n".join(lines) + "\n"


def write_cluster(
    root: Path,
    cluster: str,
    dump: str,
    now: int,
    results: Sequence[tuple[list[str], Result]],
    notes: Sequence[str] = (),
) -> None:
    """``root/clusters/CLUSTER.yaml`` and ``root/expected/CLUSTER/`` for the results."""
    (root / "clusters").mkdir(parents=True, exist_ok=True)
    (root / "clusters" / f"{cluster}.yaml").write_text(dump)
    exp = root / "expected" / cluster
    exp.mkdir(parents=True, exist_ok=True)
    for old in exp.iterdir():
        old.unlink()
    lines = [header(cluster, now, notes)]
    for argv, r in results:
        s = stem(argv)
        lines.append(f"{s}\t{r.rc}\t{shlex.join(['kgctl', *argv])}\n")
        (exp / f"{s}.out").write_text(r.out)
        if r.err:
            (exp / f"{s}.err").write_text(r.err)
        if r.rc:
            (exp / f"{s}.rc").write_text(f"{r.rc}\n")
    (exp / "commands.txt").write_text("".join(lines))


def read_fixtures(root: Path) -> list[Fixture]:
    """Every fixture under ``root`` (a directory with ``clusters/`` and ``expected/``)."""
    out = []
    for commands in sorted(root.glob("expected/*/commands.txt")):
        cluster, exp = commands.parent.name, commands.parent
        now = 0
        for line in commands.read_text().splitlines():
            if line.startswith("# now"):
                now = int(line.rsplit("=", 1)[1])
            if line.startswith("#") or not line.strip():
                continue
            s, rc, argv = line.split("\t")
            err = exp / f"{s}.err"
            expected = Result(
                int(rc), (exp / f"{s}.out").read_text(), err.read_text() if err.exists() else ""
            )
            dump = root / "clusters" / f"{cluster}.yaml"
            out.append(Fixture(cluster, s, shlex.split(argv)[1:], now, expected, dump))
    return out


def kilo_defect(expected: str) -> bool:
    """Kilo's ``--as-peer -o yaml|json`` output with one of its defects (see README)."""
    return (
        "<nil>" in expected
        or "\\u003cnil\\u003e" in expected
        or "000000000" in expected
        or '"51820"' in expected
        or 'dns: "' in expected
    )


def _load(text: str) -> Any:
    return json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)


def _strip(obj: Any) -> tuple[Any, int]:
    spec = dict(obj["spec"])
    spec.pop("endpoint", None)
    pka = int(spec.pop("persistentKeepalive", 0))
    return {**obj, "spec": spec}, pka


def _diff(expected: str, got: str) -> str:
    return "".join(
        difflib.unified_diff(
            expected.splitlines(True), got.splitlines(True), "expected", "got", n=2
        )
    )


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def mismatch(expected: Result, got: Result) -> str | None:
    """Why ``got`` does not match the golden ``expected``; None when it does."""
    if got.rc != expected.rc:
        return f"exit code {got.rc}, expected {expected.rc}\n{got.err[-2000:]}"
    bare = [line for line in got.err.splitlines() if not line.startswith((WARNING, ERROR))]
    if bare:
        return f"stderr lines without {WARNING!r} or {ERROR!r}: {bare[:3]!r}"
    if expected.rc != 0:
        mine = _last_line(got.err).replace(" cross", "")
        theirs = _last_line(expected.err)
        if not mine.startswith(ERROR):
            return f"last stderr line {mine!r} is not an error"
        mine = mine.removeprefix(ERROR)
        return None if mine == theirs else f"error {mine!r}, expected {theirs!r}"
    if kilo_defect(expected.out):
        try:
            ours, pka = _strip(_load(got.out))
            theirs, their_pka = _strip(_load(expected.out))
        except (ValueError, KeyError, TypeError, yaml.YAMLError) as e:
            return f"not a Peer object ({e}):\n{_diff(expected.out, got.out)}"
        if ours != theirs or pka != their_pka // 1_000_000_000:
            return f"objects differ:\n{_diff(expected.out, got.out)}"
        return None
    if got.out != expected.out:
        return f"stdout differs:\n{_diff(expected.out, got.out)}"
    if any(line.startswith(ERROR) for line in got.err.splitlines()):
        return f"an error on a success:\n{got.err[-2000:]}"
    # Kilo's few success diagnostics ('Node "x" is not a leader node') are ours as warnings,
    # in the same order; our other warnings (refused values) come between them.
    ours = iter(line.removeprefix(WARNING) for line in got.err.splitlines())
    if not all(line in ours for line in expected.err.splitlines()):
        return f"stderr differs:\n{_diff(expected.err, got.err)}"
    return None
