"""WireGuard keys: Curve25519, 32 bytes, shown in standard base64.

``Key`` is the one type for a key anywhere in the code: a ``bytes`` of exactly 32 bytes (so it
compares, hashes and packs like the raw key), printed as base64 by ``str()`` and never in full
by ``repr()`` (a private key must not leak into a log by accident).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from functools import lru_cache

from kilo.x25519 import public_key

KEY_LEN = 32


class InvalidKey(ValueError):
    """A WireGuard key that is not 32 bytes of standard base64."""


class Key(bytes):
    """A WireGuard key (public, private or preshared): exactly 32 bytes."""

    __slots__ = ()

    def __new__(cls, raw: bytes) -> Key:
        if len(raw) != KEY_LEN:
            raise InvalidKey(f"decodes to {len(raw)} bytes, want {KEY_LEN}")
        return super().__new__(cls, raw)

    @classmethod
    def parse(cls, text: str) -> Key:
        """Decode standard base64 as Go's decoder does (line breaks are skipped, any other
        character outside the alphabet is refused); ``InvalidKey`` with the reason otherwise."""
        if not isinstance(text, str):
            raise InvalidKey(f"not a string but {type(text).__name__}")
        try:
            raw = base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidKey(f"not base64: {e}") from None
        return cls(raw)

    @classmethod
    def generate(cls) -> Key:
        """A new private key: 32 random bytes, clamped as ``wg genkey`` and OpenSSL do."""
        raw = bytearray(secrets.token_bytes(KEY_LEN))
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        return cls(bytes(raw))

    @classmethod
    def zero(cls) -> Key:
        return cls(bytes(KEY_LEN))

    def public(self) -> Key:
        """The public key of this private key."""
        return _public(bytes(self))

    def is_zero(self) -> bool:
        return not any(self)

    def __str__(self) -> str:
        return base64.b64encode(self).decode("ascii")

    def short(self) -> str:
        """The first characters of the base64 form, for logs and change descriptions."""
        return str(self)[:8] + "…"

    def __repr__(self) -> str:
        return f"Key({self.short()!r})"


def is_zero(key: bytes | None) -> bool:
    """No key, or the all-zero key (WireGuard's "none")."""
    return key is None or not any(key)


@lru_cache(maxsize=8)
def _public(private: bytes) -> Key:
    """X25519 (``kilo.x25519``: OpenSSL's, without loading ``cryptography``); the plan asks
    for the node's public key at every reconcile, so the last few answers are kept."""
    return Key(public_key(private))
