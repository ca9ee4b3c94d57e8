"""wireguard-go, started and supervised by the agent, configured over its private UAPI socket."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from kilo.dataplane.uapi import UapiClient, socket_path
from kilo.dataplane.wgdevice import (
    Device,
    DeviceError,
    Mode,
    Resolver,
    configure_link,
    link_kind,
    resolve_endpoint,
)
from kilo.wgstate import DeviceState, DeviceUpdate

log = logging.getLogger(__name__)

SOCKET_ROOT = "/run/kilo/wireguard"


def find_wireguard_go(path: str | None = None) -> str:
    """The wireguard-go binary: ``path`` (kg's ``--wireguard-go``), else the environment's
    ``KILO_BIN_WIREGUARD_GO``, else the first on PATH."""
    found = path or os.environ.get("KILO_BIN_WIREGUARD_GO") or shutil.which("wireguard-go")
    if not found:
        raise DeviceError(
            "wireguard-go not found (pass --wireguard-go, set KILO_BIN_WIREGUARD_GO or put it "
            "on PATH)"
        )
    return found


def netns_path(netns: str) -> str:
    return netns if "/" in netns else f"/run/netns/{netns}"


def default_socket_dir(netns: str | None = None) -> str:
    """The private UAPI directory of a network namespace: the same for every agent run in it."""
    ino = os.stat(netns_path(netns) if netns else "/proc/self/ns/net").st_ino
    return f"{SOCKET_ROOT}/net-{ino}"


def _in_netns(netns: str | None, argv: list[str]) -> list[str]:
    return (["nsenter", f"--net={netns_path(netns)}", "--"] if netns else []) + argv


def _private_mount(socket_dir: str, script: str, *args: str) -> list[str]:
    """argv running ``script`` (sh) with ``socket_dir`` mounted over /var/run/wireguard."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        'mkdir -p /var/run/wireguard && mount --bind "$1" /var/run/wireguard && shift && ' + script,
        "kilo-wg",
        socket_dir,
        *args,
    ]


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class UserspaceDevice(Device):
    """wireguard-go, started and supervised by us; configured over its (private) UAPI socket.

    ``start()`` (also ``ensure()``) adopts a wireguard-go already serving this namespace's socket
    directory (a previous agent's: a restart of the agent does not restart the tunnel), else starts
    one. ``supervise()`` starts a thread that restarts it whenever it dies and then re-applies the
    last link settings and config and calls ``on_restart``. ``close(remove=False)`` stops
    supervising and leaves the process running for the next agent.
    """

    mode = Mode.USERSPACE

    def __init__(
        self,
        name: str,
        *,
        netns: str | None = None,
        socket_dir: str | None = None,
        binary: str | None = None,
        log_level: str = "error",
        on_restart: Callable[[], None] | None = None,
        resolve: Resolver = resolve_endpoint,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(name, netns, resolve)
        self.socket_dir = socket_dir or default_socket_dir(netns)
        self.socket_path = socket_path(name, self.socket_dir)
        self.pid_file = f"{self.socket_dir}/{name}.pid"
        self.log_file = f"{self.socket_dir}/{name}.log"
        self.binary = binary
        self.log_level = log_level
        self.on_restart = on_restart
        self.start_timeout = start_timeout
        self.client = UapiClient(self.socket_path)
        self.restarts = 0
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- process

    def wg_argv(self, *args: str) -> list[str]:
        """argv for ``wg ARGS`` seeing this device's socket (``wg show`` needs it)."""
        return _in_netns(self.netns, _private_mount(self.socket_dir, 'exec wg "$@"', *args))

    def _adoptable(self) -> int | None:
        """The pid of a live wireguard-go serving our socket, if there is one."""
        if link_kind(self.name, self.netns) is None or not self.client.alive():
            return None
        try:
            pid = int(open(self.pid_file).read().strip())
            if "wireguard-go" in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                return pid
        except (OSError, ValueError):
            pass
        return -1  # alive, started by someone else: usable, but not ours to stop

    def ensure(self) -> list[str]:
        return self.start()

    def start(self) -> list[str]:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self.client.alive():
                return []
            pid = self._adoptable()
            if pid is not None:
                self.pid = pid if pid > 0 else None
                log.info("%s: adopting running wireguard-go (pid %s)", self.name, self.pid)
                return []
            self._spawn()
            return [f"start wireguard-go for {self.name} (pid {self.pid})"]

    def _spawn(self) -> None:
        os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
        binary = self.binary or find_wireguard_go()
        argv = _in_netns(
            self.netns, _private_mount(self.socket_dir, 'exec "$1" -f "$2"', binary, self.name)
        )
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": self.log_level}
        with open(self.log_file, "wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc, self.pid = proc, proc.pid
        deadline = time.monotonic() + self.start_timeout
        while not self.client.alive():
            if proc.poll() is not None or time.monotonic() > deadline:
                self._terminate()
                tail = open(self.log_file, errors="replace").read()[-500:].strip()
                raise DeviceError(
                    f"wireguard-go for {self.name} did not come up: {tail or 'no output'}"
                )
            time.sleep(0.01)
        with open(self.pid_file, "w") as f:
            f.write(f"{proc.pid}\n")
        log.info("%s: started wireguard-go (pid %d)", self.name, proc.pid)

    def _running(self) -> bool:
        if self._proc is not None:
            if self._proc.poll() is not None:
                return False
        elif self.pid is not None and not _pid_alive(self.pid):
            return False
        return self.client.alive()

    def _terminate(self) -> None:
        pid, proc = self.pid, self._proc
        self.pid, self._proc = None, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not _pid_alive(pid):
                return
            time.sleep(0.02)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if proc is not None:
            proc.wait()

    # -- supervision

    def supervise(
        self, on_restart: Callable[[], None] | None = None, interval: float = 0.5
    ) -> None:
        """Check every ``interval`` seconds that wireguard-go runs; restart and restore it if
        not, then call ``on_restart``."""
        if on_restart is not None:
            self.on_restart = on_restart
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name=f"wireguard-go {self.name}", daemon=True
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    if self._stop.is_set() or self._running():
                        continue
                    self.restart()
            except Exception as e:  # noqa: BLE001  (keep supervising; try again next round)
                log.error("%s: restarting wireguard-go failed: %s", self.name, e)
                continue
            if self.on_restart is not None:
                try:
                    self.on_restart()
                except Exception as e:  # noqa: BLE001
                    log.error("%s: on_restart failed: %s", self.name, e)

    def restart(self) -> list[str]:
        """Start wireguard-go again and put back the last link settings and config."""
        with self._lock:
            log.warning("%s: wireguard-go is not running; restarting it", self.name)
            self._terminate()
            self._spawn()
            self.restarts += 1
            changes = [f"restart wireguard-go for {self.name} (pid {self.pid})"]
            if self._link is not None:
                changes += configure_link(self.name, *self._link, netns=self.netns)
            if self._conf is not None:
                changes += self.apply(self._conf)
            return changes

    def close(self, remove: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not remove:
            return
        with self._lock:
            if self.pid is None and self._proc is None:
                pid = self._adoptable()
                self.pid = pid if pid and pid > 0 else None
            self._terminate()
            for f in (self.pid_file, self.log_file):
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(self.socket_dir)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise

    # -- config

    def _get(self) -> DeviceState:
        return self.client.get()

    def _set(self, update: DeviceUpdate) -> None:
        self.client.set(update)
