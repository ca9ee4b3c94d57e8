"""X25519 through OpenSSL's libcrypto (kilo.x25519) gives what ``cryptography`` gives, and falls
back to it when the library cannot be bound."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kilo import x25519
from kilo.keys import Key


def _reference(private: bytes) -> bytes:
    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_rfc7748_vector() -> None:
    assert x25519.public_key(x25519._RFC7748_PRIVATE) == x25519._RFC7748_PUBLIC


def test_openssl_binding_is_used_here_and_agrees_with_cryptography() -> None:
    impl = x25519._openssl()
    assert impl is not None  # the test machine's Python has libcrypto
    for _ in range(50):
        key = Key.generate()
        assert impl(bytes(key)) == _reference(bytes(key)) == bytes(key.public())
    unclamped = bytes(range(32))  # X25519 clamps inside: any 32 bytes are a private key
    assert impl(unclamped) == _reference(unclamped)


def test_generated_keys_are_clamped_and_distinct() -> None:
    keys = {Key.generate() for _ in range(20)}
    assert len(keys) == 20
    for k in keys:
        assert k[0] & 7 == 0 and k[31] & 128 == 0 and k[31] & 64 == 64


def test_falls_back_to_cryptography_without_libcrypto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(x25519, "_LIBCRYPTO_NAMES", ("libkpy-no-such-crypto.so",))
    monkeypatch.setattr(x25519.ctypes.util, "find_library", lambda name: None)
    assert x25519._openssl() is None
    monkeypatch.setattr(x25519, "_IMPL", [])
    private = bytes(Key.generate())
    assert x25519.public_key(private) == _reference(private)
    assert x25519._IMPL == [x25519._cryptography]
