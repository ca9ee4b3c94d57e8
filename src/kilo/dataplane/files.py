"""The agent's files: its WireGuard private key and the CNI configuration list."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from kilo.keys import InvalidKey, Key

log = logging.getLogger("kilo.agent")


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` in one rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_or_create_key(path: str | Path) -> Key:
    """The private key stored at ``path`` (mode 0600), made if missing or unreadable as a key."""
    p = Path(path)
    try:
        return Key.parse(p.read_text())
    except FileNotFoundError:
        pass
    except InvalidKey:
        log.warning("the private key file %s does not hold a WireGuard key; generating one", p)
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
