"""What the demo prints, and the checks it records.

``Console`` prints titles, notes, the commands run (with the host they run on) and their
output, in colour if asked. ``Checks`` runs a check, records a ``Check`` (act, name, pass or
fail, seconds, detail) and prints PASS/FAIL; ``summary_table`` renders the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ACTS = {
    "lab": "the lab",
    "1": "act 1: the mesh",
    "2": "act 2: peers",
    "3": "act 3: multi-cluster",
    "graph": "graphs",
}


class CheckFailed(AssertionError):
    """A check of the story did not hold; the message says what was seen."""


def fail(msg: str) -> str:
    raise CheckFailed(msg)


@dataclass
class Check:
    act: str
    name: str
    ok: bool
    seconds: float
    detail: str = ""


class Console:
    """The demo's terminal output."""

    def __init__(self, say: Callable[[str], None] | None = None, color: bool = False) -> None:
        self.say = say or (lambda s: print(s, flush=True))
        self.color = color

    def c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def title(self, text: str) -> None:
        self.say("")
        self.say(self.c("1;36", f"=== {text} ==="))

    def note(self, text: str) -> None:
        self.say(self.c("2", f"# {text}"))

    def command(self, host: str, text: str) -> None:
        """A command line as typed on ``host`` (continuation lines indented)."""
        first, *rest = text.splitlines() or [""]
        self.say(self.c("1", f"[{host}] $ {first}"))
        for line in rest:
            self.say(self.c("1", f"  {line}"))

    def output(self, text: str, limit: int = 60) -> None:
        lines = text.rstrip("\n").splitlines()
        for line in lines[:limit]:
            self.say(f"    {line}")
        if len(lines) > limit:
            self.say(f"    ... ({len(lines) - limit} more lines)")


class Checks:
    """The record of checks, printed as they are made."""

    def __init__(self, console: Console, record: list[Check] | None = None) -> None:
        self.console = console
        self.record: list[Check] = record if record is not None else []

    def check(self, act: str, name: str, fn: Callable[[], str | None]) -> bool:
        """Run ``fn`` (its return value is the detail); any exception fails the check."""
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            ok = True
        except Exception as e:  # noqa: BLE001  (any failure is the check's result)
            ok, detail = False, (str(e) or type(e).__name__).strip()
        dt = time.monotonic() - t0
        self.record.append(Check(act, name, ok, dt, detail))
        c = self.console.c
        mark = c("1;32", "PASS") if ok else c("1;31", "FAIL")
        self.console.say(f"{mark} {name} ({dt:.1f} s){': ' + detail if detail else ''}")
        return ok

    def failed(self, act: str | None = None) -> list[Check]:
        return [c for c in self.record if not c.ok and (act is None or c.act == act)]

    def of(self, act: str) -> list[Check]:
        return [c for c in self.record if c.act == act]


def summary_table(checks: Sequence[Check]) -> str:
    rows = [("act", "check", "result", "time")]
    rows += [
        (ACTS.get(c.act, c.act), c.name, "pass" if c.ok else "FAIL", f"{c.seconds:.1f} s")
        for c in checks
    ]
    w = [min(max(len(r[i]) for r in rows), 70) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        name = r[1] if len(r[1]) <= w[1] else r[1][: w[1] - 1] + "~"
        lines.append(f"{r[0]:<{w[0]}}  {name:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}")
        if i == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)
