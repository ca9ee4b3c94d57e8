"""X25519 public keys without loading ``cryptography``: OpenSSL's own, through ctypes.

The agent needs X25519 for one thing, a private key's public key. ``cryptography`` brings its
own 6 MB Rust library into the process for that (about 7 % of the agent's memory at 1,000
nodes), while the interpreter's ``ssl`` and ``hashlib`` have already loaded OpenSSL's
``libcrypto``, which has X25519 (``EVP_PKEY_new_raw_private_key``, OpenSSL 1.1.1 and later).
So the public key is asked of that library; opening it again costs nothing, it is the same
mapping. The binding proves itself on RFC 7748's test vector before it is used; if the library
or a function is missing or the answer is wrong, ``cryptography`` is used instead (imported
then, and only then). Both are OpenSSL's constant-time code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator

__all__ = ["public_key"]

EVP_PKEY_X25519 = 1034  # NID_X25519
_LIBCRYPTO_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so")

# RFC 7748, section 6.1: Alice's private and public key
_RFC7748_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
_RFC7748_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def _library_names() -> Iterator[str]:
    yield from _LIBCRYPTO_NAMES
    found = ctypes.util.find_library("crypto")  # runs ldconfig: only if the usual names fail
    if found:
        yield found


def _bind(lib: ctypes.CDLL) -> Callable[[bytes], bytes]:
    new_key = lib.EVP_PKEY_new_raw_private_key
    get_public = lib.EVP_PKEY_get_raw_public_key
    free = lib.EVP_PKEY_free
    new_key.restype = ctypes.c_void_p
    new_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    get_public.restype = ctypes.c_int
    get_public.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
    free.restype = None
    free.argtypes = [ctypes.c_void_p]

    def public(private: bytes) -> bytes:
        pkey = new_key(EVP_PKEY_X25519, None, private, len(private))
        if not pkey:
            raise ValueError("libcrypto refused the X25519 private key")
        try:
            out = ctypes.create_string_buffer(32)
            size = ctypes.c_size_t(32)
            if get_public(pkey, out, ctypes.byref(size)) != 1 or size.value != 32:
                raise ValueError("libcrypto gave no X25519 public key")
            return out.raw
        finally:
            free(pkey)

    return public


def _openssl() -> Callable[[bytes], bytes] | None:
    """X25519 through the process's libcrypto, or None when it cannot be bound or is wrong."""
    for name in _library_names():
        try:
            public = _bind(ctypes.CDLL(name))
            if public(_RFC7748_PRIVATE) == _RFC7748_PUBLIC:
                return public
        except (OSError, AttributeError, ValueError, ctypes.ArgumentError):
            continue
    return None


def _cryptography(private: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


_IMPL: list[Callable[[bytes], bytes]] = []


def public_key(private: bytes) -> bytes:
    """The X25519 public key (32 bytes) of a 32-byte private key."""
    if not _IMPL:
        _IMPL.append(_openssl() or _cryptography)
    return _IMPL[0](private)
