"""The randomized differential's golden set (tests/data/random): seeded random clusters made by
``kilo_lab.kilo_diff`` and run through Kilo 0.7.0's kgctl against a real API server. Ours
replays every command with ``--from-file`` and must match as the hand-made fixtures do
(``test_kilo_compat.replay``). How the set was made and what it leaves out: tests/data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kilo_lab.kilo_diff.golden import Fixture, read_fixtures

from tests.unit.test_kilo_compat import replay

RANDOM = Path(__file__).resolve().parents[1] / "data" / "random"
ALL = read_fixtures(RANDOM)


@pytest.mark.parametrize("fixture", ALL, ids=[f.id for f in ALL])
def test_matches_kilo(
    fixture: Fixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    replay(fixture, capsys, monkeypatch)


def test_golden_set_present() -> None:
    assert len({f.cluster for f in ALL}) >= 200
