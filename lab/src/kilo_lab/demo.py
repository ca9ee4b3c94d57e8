"""``kilo-demo`` (``python3 -m kilo_lab.demo``): the talk's three acts, played on a lab.

``hack/demo.sh`` installs what is needed and runs ``main``: bring ``lab/demo.yaml`` up, play the
acts (``acts``) printing every command (and the namespace it runs in) with its output, render
each cluster's graph to SVG, print a summary table, and tear the lab down (``--keep`` leaves it
up). The exit code is 0 iff every check passed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import time
from collections.abc import Sequence

from kilo_lab import procs
from kilo_lab.binaries import repo_root
from kilo_lab.console import Check, summary_table
from kilo_lab.lab import Lab, load_yaml
from kilo_lab.netns import names
from kilo_lab.observe import lab_pids, leftovers
from kilo_lab.signals import raise_on
from kilo_lab.state import load
from kilo_lab.story import Story
from kilo_lab.teardown import teardown


class _Interrupted(BaseException):
    pass


def _parser(root: pathlib.Path) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kilo-demo", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the lab up afterwards (`kilo-lab down NAME` removes it)",
    )
    p.add_argument(
        "--lab",
        default=str(root / "lab" / "demo.yaml"),
        metavar="FILE",
        help="the lab description (default: lab/demo.yaml)",
    )
    p.add_argument(
        "--out",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "kilo-demo"),
        metavar="DIR",
        help="where the SVG graphs go (default: $TMPDIR/kilo-demo)",
    )
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    return p


def _say(s: str) -> None:
    print(s, flush=True)


def _clear_previous(name: str) -> bool:
    """Remove a kept or left-over lab of this name; False if a live process holds it."""
    state = load(name)
    owner = (state or {}).get("owner") or {}
    if owner and owner.get("pid") != os.getpid() and procs.alive(owner["pid"], owner.get("start")):
        _say(
            f"[lab] lab {name!r} is up and held by process {owner['pid']} (another demo or "
            f"`kilo-lab up`); stop it or run `kilo-lab down {name}` first"
        )
        return False
    if state is not None or names(f"kpy-{name}-"):
        _say(f"[lab] a previous lab {name!r} (kept or left over) is still there; removing it first")
        teardown(name, progress=lambda m: _say(f"[lab] {m}"))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser(repo_root() or pathlib.Path.cwd()).parse_args(argv)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    t_start = time.monotonic()
    data = load_yaml(args.lab)
    name = str(data.get("name", ""))
    raise_on((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), _Interrupted)
    _say(f"Kilo in Python: the talk's three acts on lab {args.lab}")
    if not _clear_previous(name):
        return 2
    lab = Lab(data, progress=lambda m: _say(f"[lab] {m}"))
    story: Story | None = None
    checks: list[Check] = []
    interrupted: str | None = None
    graphs: list[pathlib.Path] = []
    phase = "lab up"
    try:
        _say(
            f"[lab] bringing up {name}: {len(lab.spec.clusters)} cluster(s), "
            f"{len(lab.spec.nodes)} nodes, {len(lab.spec.peers)} peers (about 20 s)"
        )
        t0 = time.monotonic()
        lab.up()
        what = (
            f"lab {name} up ({len(lab.spec.nodes)} nodes, {len(lab.pods)} pods, kg on every node)"
        )
        checks.append(Check("lab", what, True, time.monotonic() - t0))
        story = Story(lab, say=_say, color=color, checks=checks)
        phase = "the acts"
        story.act1()
        story.act2()
        story.act3()
        graphs = story.graphs(pathlib.Path(args.out))
    except (KeyboardInterrupt, _Interrupted) as e:
        interrupted = str(e) or "SIGINT"
        _say(f"\n[demo] interrupted ({interrupted})")
    except Exception as e:  # noqa: BLE001  (reported, then torn down)
        checks.append(Check("lab", f"{phase}: ran to the end", False, 0.0, str(e)))
        _say(f"[demo] error: {e}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        keep = args.keep and interrupted is None and bool(lab.state)
        if keep:
            _say(
                f"\n[lab] {name} stays up: `kilo-lab status`, `kilo-lab exec --lab {name} admin`, "
                f"`kilo-lab down {name}`"
            )
        else:
            if story is not None:
                story.close()
            checks.append(_down(lab))
    _say("")
    _say(summary_table(checks))
    _say("")
    failed = [c for c in checks if not c.ok]
    total = time.monotonic() - t_start
    if interrupted:
        _say(f"\ninterrupted after {total:.0f} s")
        return 130
    for g in graphs:
        if g.exists():
            _say(f"graph: {g}")
    _say(f"{len(checks) - len(failed)}/{len(checks)} checks passed in {total:.0f} s")
    return 1 if failed else 0


def _down(lab: Lab) -> Check:
    """Tear the lab down and check that nothing of it is left."""
    pids = lab_pids(lab) if lab.state else []
    t0 = time.monotonic()
    _say("")
    if lab.state or names(f"kpy-{lab.name}-"):  # (a failed `up` removed it already)
        lab.down()
    left = leftovers(lab.name, pids)
    return Check(
        "lab",
        "torn down: no namespace, process or file left",
        not left,
        time.monotonic() - t0,
        "; ".join(left),
    )


if __name__ == "__main__":
    sys.exit(main())
