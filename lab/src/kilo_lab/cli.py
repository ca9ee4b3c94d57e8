"""``kilo-lab``: bring a lab up, look at it, run commands in it, take it down.

kilo-lab up FILE [--keep] [--no-agent]   build the lab; without --keep it stays up until
                                         Ctrl-C (or SIGTERM) and is then torn down; with
                                         --keep a background process holds it and the
                                         command returns once it is ready
kilo-lab down [NAME]                     tear a lab down (the only one if NAME is omitted)
kilo-lab status [NAME] [--json]          what a lab has and whether its processes run
kilo-lab exec [--lab NAME] HOST -- CMD…  run CMD in a node, peer, pod (NODE-pI), ``admin``
                                         or a cluster's control-plane namespace; KUBECONFIG
                                         is set to the host's cluster's kubeconfig
kilo-lab kubeconfig CLUSTER [--lab NAME] print the path of a cluster's kubeconfig
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from kilo_lab import netns, procs
from kilo_lab.binaries import BinaryMissing, locate
from kilo_lab.errors import LabError
from kilo_lab.lab import Lab, load_yaml
from kilo_lab.layout import STATE_ROOT, Paths, ns_name, state_dir
from kilo_lab.signals import raise_on
from kilo_lab.spec import SpecError
from kilo_lab.state import list_labs, load, status
from kilo_lab.teardown import teardown

READY = "kilo-lab: ready"


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _pick(name: str | None) -> str:
    if name:
        return name
    labs = list_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError(f"no lab is up (nothing in {STATE_ROOT})")
    raise LabError(f"several labs are up ({', '.join(labs)}): name one")


class _Stop(Exception):
    pass


def cmd_up(args: argparse.Namespace) -> int:
    data = load_yaml(args.file)
    if args.keep:
        return _up_detached(args)
    lab = Lab(data, agent=False if args.no_agent else None, progress=_say)
    raise_on((signal.SIGTERM, signal.SIGINT), _Stop)
    if args.serve:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        lab.up()
        _print_summary(lab)
        if args.serve:
            print(READY, flush=True)
            _detach_output(lab)
        else:
            _say("Ctrl-C tears the lab down")
        while True:
            time.sleep(3600)
    except _Stop as stop:
        _say(f"{stop}: tearing down")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.down()
    return 0


def _detach_output(lab: Lab) -> None:
    """In the background holder: from now on write to a log file, not the (closed) pipe."""
    fd = os.open(lab.dir / "holder.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _up_detached(args: argparse.Namespace) -> int:
    """Start a holder process (``up --serve``) in a session of its own; relay its progress
    until it says it is ready (0) or exits (its exit code)."""
    argv = [sys.executable, "-m", "kilo_lab.cli", "up", "--serve", str(args.file)]
    if args.no_agent:
        argv.append("--no-agent")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.strip() == READY:
                _say(f"the lab stays up (held by pid {proc.pid}); `kilo-lab down` removes it")
                return 0
            print(line, end="", flush=True)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        for line in proc.stdout:
            print(line, end="", flush=True)
    return proc.wait() or 1


def _print_summary(lab: Lab) -> None:
    st = lab.status()
    for cname, c in st["clusters"].items():
        print(f"cluster {cname}: API {c['server']}  kubeconfig {c['kubeconfig']}")
    for nname, n in st["nodes"].items():
        pub = f" public {n['public_ip']}" if n.get("public_ip") else ""
        print(
            f"  node {nname} ({n['cluster']}/{n['location']}): lan {n['lan_ip']}{pub} "
            f"pods {n['pod_cidr']}"
        )
    for pname, p in st["pods"].items():
        print(f"  pod {pname}: {p['ip']}")
    for pname, p in st["peers"].items():
        print(f"peer {pname}: {_peer_where(p)}")
    for nname, n in st.get("nats", {}).items():
        print(f"NAT {nname}: outside {n['public_ip']}")
    sys.stdout.flush()


def _peer_where(p: dict[str, Any]) -> str:
    if p.get("nat"):
        return f"{p['inside_ip']} behind NAT {p['nat']} ({p['public_ip']})"
    return str(p["public_ip"])


def _stop_holder(name: str) -> None:
    """SIGTERM the process holding lab ``name`` (if another one does) and wait for it."""
    owner = (load(name) or {}).get("owner") or {}
    pid: int | None = owner.get("pid")
    start: int | None = owner.get("start")
    if not pid or pid == os.getpid() or not procs.alive(pid, start):
        return
    _say(f"stopping the process holding lab {name} (pid {pid})")
    procs.stop([(pid, start)], timeout=120)  # it tears the lab down first; teardown then checks


def cmd_down(args: argparse.Namespace) -> int:
    names = list_labs() if args.all else [_pick(args.name)]
    for name in names:
        _stop_holder(name)
        problems = teardown(name, progress=lambda msg: None)
        for p in problems:
            print(f"warning: {p}", file=sys.stderr)
        _say(f"lab {name} is down" + (" (with warnings)" if problems else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list_labs()
    if not names:
        print(f"no lab is up (nothing in {STATE_ROOT})")
        return 0
    out = [st for st in map(status, names) if st is not None]
    if args.json:
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
        return 0
    for st in out:
        owner = st["owner"]
        print(
            f"lab {st['name']}: {st['phase']} (held by pid {owner.get('pid')}, "
            f"{'alive' if owner.get('alive') else 'gone'})"
        )
        for cname, c in st["clusters"].items():
            print(f"  cluster {cname}: {c['server']}  {c['kubeconfig']}")
        for nname, n in st["nodes"].items():
            kg = st["processes"].get(f"kg/{nname}")
            agent = "kg " + ("running" if kg and kg["alive"] else "stopped") if kg else "no kg"
            pub = f" public {n['public_ip']}" if n.get("public_ip") else ""
            pub += f" behind NAT {n['nat']}" if n.get("nat") else ""
            print(
                f"  node {nname} ({n['cluster']}/{n['location']}): lan {n['lan_ip']}{pub} "
                f"pods {n['pod_cidr']}, {agent}"
            )
        for pname, p in st["pods"].items():
            print(f"  pod {pname} on {p['node']}: {p['ip']}")
        for pname, p in st["peers"].items():
            print(f"  peer {pname}: {_peer_where(p)}")
        for nname, n in st.get("nats", {}).items():
            print(f"  NAT {nname}: outside {n['public_ip']}")
        missing = [n for n, ok in st["namespaces"].items() if not ok]
        if missing:
            print(f"  missing namespaces: {', '.join(missing)}")
    return 0


def _host_cluster(state: dict[str, Any], host: str) -> str | None:
    if host in state.get("clusters", {}):
        return host
    if host.endswith("-cp") and host[:-3] in state.get("clusters", {}):
        return host[:-3]
    node = host
    if host in state.get("pods", {}):
        node = state["pods"][host]["node"]
    n = state.get("nodes", {}).get(node)
    return n["cluster"] if n else None


def cmd_exec(args: argparse.Namespace) -> int:
    name = _pick(args.lab)
    state = load(name) or {}
    host = args.host
    ns = ns_name(name, host)
    cluster = _host_cluster(state, host)
    if cluster is not None and host == cluster:
        ns = ns_name(name, f"{cluster}-cp")
    if not netns.exists(ns):
        raise LabError(f"lab {name} has no host {host!r} (no namespace {ns})")
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        cmd = [os.environ.get("SHELL", "/bin/sh")]
    env = dict(os.environ, KPY_LAB=name, KPY_HOST=host)
    try:  # kubectl (and the rest of the pinned binaries) on PATH
        env["PATH"] = f"{locate('kubectl').parent}:{env.get('PATH', '/usr/sbin:/usr/bin')}"
    except BinaryMissing:  # not built: the user's PATH as it is
        pass
    if cluster is not None:
        env["KUBECONFIG"] = str(Paths(state_dir(name)).kubeconfig(cluster))
    elif host == "admin" and len(state.get("clusters", {})) == 1:
        env["KUBECONFIG"] = next(iter(state["clusters"].values()))["kubeconfig"]
    for cname, c in state.get("clusters", {}).items():
        env[f"KUBECONFIG_{cname.upper().replace('-', '_')}"] = c["kubeconfig"]
    argv = netns.command(ns, cmd)
    os.execvpe(argv[0], argv, env)
    return 127  # not reached


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    name = _pick(args.lab)
    path = Paths(state_dir(name)).kubeconfig(args.cluster)
    if not path.exists():
        raise LabError(f"lab {name} has no cluster {args.cluster!r}")
    print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kilo-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring a lab up from a YAML description")
    up.add_argument("file", type=pathlib.Path)
    up.add_argument("--keep", action="store_true", help="leave it up and return")
    up.add_argument("--no-agent", action="store_true", help="static lab: no kg, no mesh")
    up.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="tear a lab down")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true", help="every lab that is up")
    down.set_defaults(fn=cmd_down)
    st = sub.add_parser("status", help="show labs")
    st.add_argument("name", nargs="?")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    ex = sub.add_parser("exec", help="run a command in a host of the lab")
    ex.add_argument("--lab")
    ex.add_argument("host")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(fn=cmd_exec)
    kc = sub.add_parser("kubeconfig", help="print a cluster's kubeconfig path")
    kc.add_argument("cluster")
    kc.add_argument("--lab")
    kc.set_defaults(fn=cmd_kubeconfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (LabError, SpecError, OSError, RuntimeError) as e:
        print(f"kilo-lab: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
