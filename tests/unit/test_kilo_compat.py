"""Byte-for-byte compatibility with Kilo 0.7.0's kgctl on the golden fixtures in tests/data.

Each fixture is a cluster dump, a kgctl argv, and what Kilo printed for it against a real API
server. Ours runs the same argv with ``--from-file`` on the dump. Stdout and the exit code must
match exactly; for errors the message (Kilo's last stderr line, after cobra's usage text) must
match. The only exceptions are Kilo's ``--as-peer -o yaml|json`` defects we fix on purpose (see
README): for those the objects must agree everywhere but in ``endpoint`` and
``persistentKeepalive``, which we print correctly.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from kilo.cli.kgctl import run

DATA = Path(__file__).resolve().parents[1] / "data"


def fixtures() -> list[tuple[str, str, int, list[str]]]:
    out = []
    for commands in sorted(DATA.glob("expected/*/commands.txt")):
        cluster = commands.parent.name
        now = ""
        for line in commands.read_text().splitlines():
            if line.startswith("# now"):
                now = line.rsplit("=", 1)[1].strip()
            if line.startswith("#") or not line.strip():
                continue
            stem, rc, argv = line.split("\t")
            out.append((cluster, stem, int(rc), ["--now", now, *shlex.split(argv)[1:]]))
    return out


def kilo_defect(expected: str) -> bool:
    return (
        "<nil>" in expected
        or "\\u003cnil\\u003e" in expected
        or "000000000" in expected
        or '"51820"' in expected
        or 'dns: "' in expected
    )


def _load(text: str) -> dict:
    return json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)


def _strip(obj: dict) -> tuple[dict, int]:
    spec = dict(obj["spec"])
    spec.pop("endpoint", None)
    pka = spec.pop("persistentKeepalive", 0)
    return {**obj, "spec": spec}, pka


ALL = fixtures()


@pytest.mark.parametrize("cluster, stem, rc, argv", ALL, ids=[f"{c}/{s}" for c, s, _, _ in ALL])
def test_matches_kilo(
    cluster: str, stem: str, rc: int, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    exp_dir = DATA / "expected" / cluster
    expected_out = (exp_dir / f"{stem}.out").read_text()
    err_file = exp_dir / f"{stem}.err"
    expected_err = err_file.read_text() if err_file.exists() else ""
    got_rc = run(["--from-file", str(DATA / "clusters" / f"{cluster}.yaml"), *argv])
    out, err = capsys.readouterr()
    assert got_rc == rc, err
    if rc != 0:
        # we also offer granularity "cross"; otherwise Kilo's message word for word
        assert (
            err.strip().splitlines()[-1].replace(" cross", "")
            == expected_err.strip().splitlines()[-1]
        )
        return
    if kilo_defect(expected_out):
        ours, pka = _strip(_load(out))
        theirs, their_pka = _strip(_load(expected_out))
        assert ours == theirs
        assert pka == their_pka // 1_000_000_000
        return
    assert out == expected_out
    if expected_err:
        assert [
            line for line in err.splitlines() if not line.startswith("warning: ")
        ] == expected_err.splitlines()
