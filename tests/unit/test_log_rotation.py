"""Size-based copytruncate rotation of collector log files (reconciler.process.logs).

Real files under tmp_path; the "collector" is a descriptor opened with O_APPEND
in the test, as the process manager opens one for a collector's stdout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.process.logs import any_log_over, backup_path, rotate_all, rotate_if_needed


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "procmond.log"


@pytest.fixture
def append_fd(log: Path) -> Iterator[int]:
    """A collector's view of its log: O_APPEND, opened before any rotation."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        yield fd
    finally:
        os.close(fd)


def backups_of(log: Path) -> dict[int, bytes]:
    found = {}
    for number in range(1, 20):
        backup = backup_path(log, number)
        if backup.exists():
            found[number] = backup.read_bytes()
    return found


@pytest.mark.parametrize(
    ("size_bytes", "rotated"),
    [
        pytest.param(99, False, id="below-max"),
        pytest.param(100, False, id="exactly-max"),
        pytest.param(101, True, id="past-max"),
    ],
)
def test_rotates_only_past_max_bytes(log: Path, size_bytes: int, rotated: bool) -> None:
    content = b"x" * size_bytes
    log.write_bytes(content)

    assert rotate_if_needed(log, max_bytes=100, backups=3) is rotated

    assert log.read_bytes() == (b"" if rotated else content)
    # A backup holds the newest max_bytes at most (here no line to cut at).
    assert backups_of(log) == ({1: content[-100:]} if rotated else {})


def test_backups_shift_and_the_oldest_is_dropped(log: Path) -> None:
    generations = [f"generation {n}\n".encode() * 10 for n in range(1, 6)]
    for content in generations:
        log.write_bytes(content)
        assert rotate_if_needed(log, max_bytes=100, backups=3)

    # 130 bytes each: the backup keeps the newest whole lines that fit in 100.
    newest = [f"generation {n}\n".encode() * 7 for n in range(1, 6)]
    assert backups_of(log) == {1: newest[4], 2: newest[3], 3: newest[2]}
    assert log.read_bytes() == b""


def test_backups_beyond_a_lowered_setting_are_removed(log: Path) -> None:
    for number in range(1, 6):
        backup_path(log, number).write_bytes(b"old %d" % number)
    log.write_bytes(b"new" * 10)

    assert rotate_if_needed(log, max_bytes=10, backups=2)

    assert backups_of(log) == {1: (b"new" * 10)[-10:], 2: b"old 1"}


def test_no_backups_means_truncate_only(log: Path) -> None:
    log.write_bytes(b"y" * 50)

    assert rotate_if_needed(log, max_bytes=10, backups=0)

    assert log.read_bytes() == b""
    assert backups_of(log) == {}


def test_an_append_writer_continues_at_the_start_of_the_truncated_file(
    log: Path, append_fd: int
) -> None:
    before = b"line before rotation\n" * 20
    os.write(append_fd, before)

    assert rotate_if_needed(log, max_bytes=100, backups=1)
    after = b"line after rotation\n"
    os.write(append_fd, after)

    # No sparse gap where the old content was: the file holds exactly the new line.
    assert log.stat().st_size == len(after)
    assert log.read_bytes() == after
    # The newest whole lines within max_bytes.
    assert backup_path(log, 1).read_bytes() == b"line before rotation\n" * 4


def test_backup_keeps_the_log_file_mode(log: Path, append_fd: int) -> None:
    os.chmod(log, 0o640)
    os.write(append_fd, b"z" * 20)

    assert rotate_if_needed(log, max_bytes=10, backups=1)

    assert backup_path(log, 1).stat().st_mode & 0o777 == 0o640


def test_a_missing_file_is_not_rotated(log: Path) -> None:
    assert not rotate_if_needed(log, max_bytes=10, backups=1)
    assert not log.exists()


@pytest.mark.parametrize(
    ("max_bytes", "backups"),
    [pytest.param(0, 1, id="max-bytes-zero"), pytest.param(10, -1, id="negative-backups")],
)
def test_nonsense_settings_are_refused(log: Path, max_bytes: int, backups: int) -> None:
    log.write_bytes(b"x" * 100)
    with pytest.raises(ValueError):
        rotate_if_needed(log, max_bytes=max_bytes, backups=backups)


def test_rotate_all_rotates_every_big_log_directly_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_bytes(b"b" * 100)
    (tmp_path / "small.log").write_bytes(b"s")
    (tmp_path / "big.log.1").write_bytes(b"an old backup, not a log" * 10)
    (tmp_path / "notes.txt").write_bytes(b"n" * 100)
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "deep.log").write_bytes(b"d" * 100)

    rotated = rotate_all(tmp_path, max_bytes=10, backups=2)

    assert rotated == [tmp_path / "big.log"]
    assert (tmp_path / "big.log").read_bytes() == b""
    assert (tmp_path / "big.log.1").read_bytes() == b"b" * 10
    assert (tmp_path / "big.log.2").read_bytes() == b"an old backup, not a log" * 10
    assert (tmp_path / "small.log").read_bytes() == b"s"
    assert (tmp_path / "notes.txt").read_bytes() == b"n" * 100
    assert (tmp_path / "nested" / "deep.log").read_bytes() == b"d" * 100


def test_rotate_all_of_a_missing_directory_does_nothing(tmp_path: Path) -> None:
    assert rotate_all(tmp_path / "logs", max_bytes=10, backups=2) == []


def test_rotate_all_never_truncates_through_a_symlink_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    elsewhere = tmp_path / "precious"
    elsewhere.write_bytes(b"p" * 100)
    (logs / "a-planted.log").symlink_to(elsewhere)
    (logs / "b-real.log").write_bytes(b"r" * 100)

    rotated = rotate_all(logs, max_bytes=10, backups=1)

    assert rotated == [logs / "b-real.log"]
    assert elsewhere.read_bytes() == b"p" * 100
    assert "a-planted.log" in caplog.text


def test_a_flood_never_makes_a_backup_larger_than_the_limit(log: Path, append_fd: int) -> None:
    """A collector that writes far past the limit between two checks costs only its
    own old output: each backup is at most max_bytes, ending with the newest line."""
    for n in range(10_000):
        os.write(append_fd, b"flood line %05d\n" % n)
    assert log.stat().st_size > 100 * 1024

    assert rotate_if_needed(log, max_bytes=1024, backups=2)

    backup = backup_path(log, 1).read_bytes()
    assert len(backup) <= 1024
    assert backup.endswith(b"flood line 09999\n")
    assert backup.startswith(b"flood line ")
    assert log.read_bytes() == b""


def test_the_previous_run_gets_no_backups_and_keeps_its_newest_part(tmp_path: Path) -> None:
    (tmp_path / "web.previous.log").write_bytes(b"p\n" * 2500)
    (tmp_path / "web.log").write_bytes(b"c\n" * 2500)
    (tmp_path / "db.previous.log").write_bytes(b"small\n")

    rotated = rotate_all(tmp_path, max_bytes=2048, backups=1)

    assert rotated == [tmp_path / "web.log", tmp_path / "web.previous.log"]
    assert (tmp_path / "web.previous.log").read_bytes() == b"p\n" * 1024
    assert not (tmp_path / "web.previous.log.1").exists()
    assert (tmp_path / "db.previous.log").read_bytes() == b"small\n"


def test_any_log_over_says_whether_a_rotation_is_needed(tmp_path: Path) -> None:
    assert not any_log_over(tmp_path / "missing", max_bytes=10)
    (tmp_path / "a.log").write_bytes(b"x" * 10)
    (tmp_path / "notes.txt").write_bytes(b"n" * 100)
    assert not any_log_over(tmp_path, max_bytes=10)
    (tmp_path / "b.log").write_bytes(b"x" * 11)
    assert any_log_over(tmp_path, max_bytes=10)
