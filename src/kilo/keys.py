"""WireGuard keys: Curve25519, 32 bytes, shown in standard base64."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_LEN = 32


class KeyError_(ValueError):
    """A WireGuard key that is not 32 bytes of standard base64."""


def parse_key(text: str) -> bytes:
    """Decode a base64 WireGuard key, raising ``KeyError_`` with the reason."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyError_(f"not base64: {e}") from None
    if len(raw) != KEY_LEN:
        raise KeyError_(f"decodes to {len(raw)} bytes, want {KEY_LEN}")
    return raw


def key_str(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def is_zero(key: bytes | None) -> bool:
    return key is None or not any(key)


def generate_private_key() -> bytes:
    k = X25519PrivateKey.generate()
    return k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_key(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
