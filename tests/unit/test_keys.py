from __future__ import annotations

import base64

import pytest

from kilo.keys import InvalidKey, Key, is_zero


def test_parse_and_str_round_trip() -> None:
    text = base64.b64encode(bytes(range(32))).decode()
    k = Key.parse(f"{text[:20]}\r\n{text[20:]}\n")  # line breaks are skipped, as Go's decoder does
    assert k == bytes(range(32)) and str(k) == text and f"{k}" == text
    assert hash(k) == hash(bytes(range(32)))
    for spaced in (f" {text}", f"{text} ", f"{text[:20]} {text[20:]}", f"{text}\t"):
        with pytest.raises(InvalidKey):
            Key.parse(spaced)


@pytest.mark.parametrize("text", ["", "c2hvcnQ=", "!!!notbase64!!!", "A" * 44])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidKey):
        Key.parse(text)


def test_length_is_checked_and_invalid_key_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Key(bytes(31))


def test_public_key_and_zero() -> None:
    private = Key.generate()
    assert isinstance(private.public(), Key) and private.public() != private
    assert Key.zero().is_zero() and is_zero(None) and is_zero(Key.zero())
    assert not private.is_zero() and not is_zero(private)


def test_repr_does_not_show_the_whole_key() -> None:
    k = Key.generate()
    assert str(k) not in repr(k) and k.short() in repr(k)
