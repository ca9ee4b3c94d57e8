"""Byte-for-byte compatibility with Kilo 0.7.0's kgctl on the golden fixtures in tests/data.

Each fixture is a cluster dump, a kgctl argv, and what Kilo printed for it against a real API
server. Ours runs the same argv with ``--from-file`` on the dump and must match as
``kilo_lab.kilo_diff.golden.mismatch`` says: stdout and the exit code exactly, for errors the
message (Kilo's last stderr line, after cobra's usage text). The only exceptions are Kilo's
``--as-peer -o yaml|json`` defects we fix on purpose (see README): for those the objects must
agree everywhere but in ``endpoint`` and ``persistentKeepalive``, which we print correctly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kilo_lab.kilo_diff.golden import Fixture, Result, mismatch, read_fixtures

from kilo.cli.kgctl import run

DATA = Path(__file__).resolve().parents[1] / "data"


def replay(f: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    """Run ours on the fixture's dump at its ``now`` and fail with the reason it differs."""
    rc = run(["--from-file", str(f.dump), "--now", str(f.now), *f.argv])
    out, err = capsys.readouterr()
    why = mismatch(f.expected, Result(rc, out, err))
    assert why is None, why


ALL = read_fixtures(DATA)


@pytest.mark.parametrize("fixture", ALL, ids=[f.id for f in ALL])
def test_matches_kilo(fixture: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    replay(fixture, capsys)


def test_all_fixtures_found() -> None:
    assert len(ALL) == 350
