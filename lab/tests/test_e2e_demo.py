"""End to end: the demo command itself (``python -m kilo_lab.demo``, what hack/demo.sh runs) on
lab/demo.yaml under a random lab name: every act passes, the summary table and the SVG graphs
are there, the exit code says so, and nothing is left behind, also when it is interrupted.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import yaml

from kilo_lab.observe import leftovers
from kilo_lab.testing import REPO, need_lab

pytestmark = pytest.mark.integration


@pytest.fixture
def demo_lab(tmp_path: pathlib.Path) -> tuple[str, pathlib.Path]:
    need_lab("wireguard-go", "kube-proxy")
    data: dict[str, Any] = yaml.safe_load((REPO / "lab" / "demo.yaml").read_text())
    name = f"demo{uuid.uuid4().hex[:6]}"
    data["name"] = name
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return name, path


def run_demo(path: pathlib.Path, out: pathlib.Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kilo_lab.demo",
            "--lab",
            str(path),
            "--out",
            str(out),
            "--color",
            "never",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def test_the_demo_plays_every_act(
    demo_lab: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    name, path = demo_lab
    proc = run_demo(path, tmp_path / "out")
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    assert proc.returncode == 0, output[-4000:]
    for title in ("=== Act 1", "=== Act 2", "=== Act 3"):
        assert title in output
    assert "FAIL" not in output
    header = re.search(r"^act\s+check\s+result\s+time$", output, re.M)
    assert header is not None, output[-3000:]
    table = output[header.start() :]
    for act in (
        "act 1: the mesh",
        "act 2: peers",
        "act 3: multi-cluster",
        "graphs",
        "torn down: no namespace, process or file left",
    ):
        assert act in table
    for cluster in ("c1", "c2"):
        svg = tmp_path / "out" / f"{name}-{cluster}.svg"
        assert f"graph: {svg}" in output and svg.stat().st_size > 1000
    assert 'Node "aws-2" is not a leader node' in output  # the talk's loop, as it prints
    assert leftovers(name) == []


def test_an_interrupted_demo_leaves_nothing(
    demo_lab: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    name, path = demo_lab
    proc = run_demo(path, tmp_path / "out")
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("=== Act 2") or time.monotonic() > deadline:
                break
        assert any(line.startswith("=== Act 2") for line in lines), "".join(lines)[-3000:]
        time.sleep(3)  # in the middle of act 2: peers and their wireguard-go being set up
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in rest
    assert re.search(r"torn down: no namespace, process or file left\s+pass", rest), rest
    assert leftovers(name) == []
    assert not [p for p in pathlib.Path("/proc").iterdir() if p.name.isdigit() and _in_lab(p, name)]


def _in_lab(proc: pathlib.Path, name: str) -> bool:
    """Whether a process still runs with one of the lab's names on its command line."""
    try:
        return f"kpy-{name}-" in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_a_failed_check_fails_the_demo(
    demo_lab: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """A lab without a second cluster cannot play act 3: that check fails, the rest is played,
    the lab is still torn down, and the exit code is 1."""
    name, path = demo_lab
    data = yaml.safe_load(path.read_text())
    data["clusters"] = data["clusters"][:1]
    for loc in data["clusters"][0]["locations"]:
        loc["nodes"] = loc["nodes"][:1]
    path.write_text(yaml.safe_dump(data))
    proc = run_demo(path, tmp_path / "out")
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    assert proc.returncode == 1, output[-4000:]
    assert re.search(r"act 3: multi-cluster\s+a second cluster\s+FAIL", output), output[-3000:]
    assert re.search(r"act 2: peers\s+laptop curls pod \S+ \(\S+\)\s+pass", output)
    assert re.search(r"torn down: no namespace, process or file left\s+pass", output)
    assert leftovers(name) == []
