"""The agent's files: its WireGuard private key and the CNI configuration list."""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from kilo.keys import InvalidKey, Key

log = logging.getLogger("kilo.agent")

_MAX_KEY_FILE = 4096  # a key file is 45 bytes; more is not a key


class KeyFileError(Exception):
    """The private key file exists but cannot be used as it is; the message says what to do."""


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` (the name itself, even a symlink) with ``text`` in one rename, so a
    reader never sees half a file. The temporary file beside it is new (never an existing file
    or a symlink) and has ``mode`` before anything is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = _temp_path(path)
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:  # a leftover from a crash, or anything planted there
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)  # exactly ``mode``, whatever the umask
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_key_file(p: Path) -> Key | None:
    """The key in the file at ``p`` (following a symlink), its mode tightened to 0600 if group
    or others may access it; ``None`` if there is no file or it is empty."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"the private key file {p} is not a regular file")
        data = f.read(_MAX_KEY_FILE + 1)
        if not data.strip():
            log.info("the private key file %s is empty", p)
            return None
        try:
            key = Key.parse(data.decode("ascii").strip())
        except (UnicodeDecodeError, InvalidKey) as e:
            reason = "not ASCII" if isinstance(e, UnicodeDecodeError) else str(e)
            raise KeyFileError(
                f"the private key file {p} does not hold a WireGuard key ({reason}); "
                "remove it to generate a new key"
            ) from None
        old = stat.S_IMODE(st.st_mode)
        if old & 0o077:
            log.warning("the private key file %s has mode %04o; setting it to 0600", p, old)
            try:
                os.fchmod(fd, 0o600)
            except OSError as e:
                raise KeyFileError(
                    f"the private key file {p} has mode {old:04o} and cannot be set to 0600 "
                    f"({e.strerror}); make it readable by its owner only"
                ) from None
    return key


def load_or_create_key(path: str | Path) -> Key:
    """The private key stored at ``path``: a file of mode 0600, made if missing or empty.
    ``KeyFileError`` if the file holds anything else or its mode cannot be made 0600."""
    p = Path(path)
    key = _read_key_file(p)
    if key is None:
        key = Key.generate()
        write_atomically(p, f"{key}\n", 0o600)
        log.info("generated a new WireGuard private key in %s", p)
    return key


class AgentFiles:
    """The ``Files`` port on the local file system."""

    def __init__(self, key_path: str | Path, cni_path: str | Path) -> None:
        self.key_path = Path(key_path)
        self.cni_path = Path(cni_path)

    def load_or_create_key(self) -> Key:
        return load_or_create_key(self.key_path)

    def write_key(self, key: Key) -> None:
        write_atomically(self.key_path, f"{key}\n", 0o600)
        log.info("wrote a new WireGuard private key to %s", self.key_path)

    def read_cni(self) -> dict[str, Any] | None:
        try:
            conf = json.loads(self.cni_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning(
                "the CNI config %s is unreadable (%s); writing the default", self.cni_path, e
            )
            return None
        return conf if isinstance(conf, dict) else None

    def write_cni(self, conf: dict[str, Any]) -> list[str]:
        write_atomically(self.cni_path, json.dumps(conf, indent=2) + "\n")
        return [f"set pod CIDR {_pod_cidr(conf)} in {self.cni_path}"]


def _pod_cidr(conf: dict[str, Any]) -> str:
    from kilo.cni import pod_cidr_of

    return pod_cidr_of(conf) or "?"
