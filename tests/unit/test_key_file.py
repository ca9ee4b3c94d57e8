"""The agent's private key file: its mode, atomic writes, and what a bad file does."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilo.dataplane import files
from kilo.dataplane.files import KeyFileError, load_or_create_key, write_atomically
from kilo.keys import Key


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_generated_key_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "kilo" / "key"
    key = load_or_create_key(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert path.read_text() == f"{key}\n"
    assert os.listdir(path.parent) == ["key"]  # no temporary file left behind


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "key"
    key = load_or_create_key(str(path))
    assert load_or_create_key(path) == key
    assert Key.parse(path.read_text()) == key


def test_group_readable_key_file_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "key"
    key = Key.generate()
    path.write_text(f"{key}\n")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="kilo.agent"):
        assert load_or_create_key(path) == key
    assert _mode(path) == 0o600
    assert str(path) in caplog.text and "0644" in caplog.text


def test_mode_that_cannot_be_tightened_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key"
    path.write_text(f"{Key.generate()}\n")
    os.chmod(path, 0o640)

    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(files.os, "fchmod", refuse)
    with pytest.raises(KeyFileError, match=str(path)):
        load_or_create_key(path)


def test_garbled_key_file_is_an_error_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("not a key\n")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as e:
        load_or_create_key(path)
    assert str(path) in str(e.value) and "remove it" in str(e.value)
    assert path.read_text() == "not a key\n"
    assert _mode(path) == 0o644
    assert os.listdir(tmp_path) == ["key"]


def test_binary_key_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KeyFileError, match="remove it"):
        load_or_create_key(path)
    assert path.read_bytes() == b"\xff\xfe\x00garbage"


@pytest.mark.parametrize("text", ["", " \n\t\n"])
def test_empty_key_file_gets_a_new_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "key"
    path.write_text(text)
    os.chmod(path, 0o644)
    key = load_or_create_key(path)
    assert path.read_text() == f"{key}\n"
    assert _mode(path) == 0o600


def test_symlinked_key_file_is_read_through(tmp_path: Path) -> None:
    target = tmp_path / "secret" / "key"
    target.parent.mkdir()
    key = Key.generate()
    target.write_text(f"{key}\n")
    os.chmod(target, 0o600)
    link = tmp_path / "key"
    link.symlink_to(target)
    assert load_or_create_key(link) == key
    assert link.is_symlink()


def test_writing_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "key"
    link.symlink_to(target)  # an empty key file, through a symlink
    key = load_or_create_key(link)
    assert not link.is_symlink() and link.read_text() == f"{key}\n"
    assert target.read_text() == ""


def _names(*paths: Path) -> Iterator[Path]:
    yield from paths


def test_symlink_at_the_temporary_path_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = tmp_path / ".key.planted.tmp"
    planted.symlink_to(victim)
    dangling = tmp_path / ".key.dangling.tmp"
    dangling.symlink_to(tmp_path / "nowhere")
    names = _names(planted, dangling, tmp_path / ".key.fresh.tmp")
    monkeypatch.setattr(files, "_temp_path", lambda p: next(names))
    key = load_or_create_key(path)
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "nowhere").exists()
    assert planted.is_symlink() and dangling.is_symlink()
    assert path.read_text() == f"{key}\n" and _mode(path) == 0o600
    assert not (tmp_path / ".key.fresh.tmp").exists()


def test_leftover_temporary_file_does_not_break_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "conf"
    leftover = tmp_path / ".conf.crash.tmp"
    leftover.write_text("half")
    os.chmod(leftover, 0o444)
    names = _names(leftover, tmp_path / ".conf.next.tmp")
    monkeypatch.setattr(files, "_temp_path", lambda p: next(names))
    write_atomically(path, "whole\n")
    assert path.read_text() == "whole\n" and _mode(path) == 0o644
    assert leftover.read_text() == "half"
    monkeypatch.undo()
    (tmp_path / "key.tmp").write_text("old-style leftover")  # the former fixed name
    write_atomically(tmp_path / "key", "k\n", 0o600)  # the real names
    assert (tmp_path / "key").read_text() == "k\n" and _mode(tmp_path / "key") == 0o600


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomically(tmp_path / "conf", "{}\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "conf") == 0o644


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key"
    path.write_text("old\n")

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError):
        write_atomically(path, "new\n", 0o600)
    assert os.listdir(tmp_path) == ["key"] and path.read_text() == "old\n"
