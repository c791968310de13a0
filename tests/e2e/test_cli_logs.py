"""``reconciler logs`` as an operator runs it, against a real ``reconciler run``.

The collectors are ``/bin/sh`` or Python scripts with ``log = "file"`` that
number their lines, so that what ``logs`` prints can be compared line by line:
``-n``, the whole current run, ``--previous`` after a restart (the product
keeps ``<id>.previous.log`` at each start), ``-f`` across a size rotation done
by the daemon (``log_max_bytes`` small) and across a restart (the file renamed
away and a new one opened), and the messages for ``inherit``, ``null`` and an
unknown id. The follower's own rotation handling is also driven directly,
with the product's ``rotate_if_needed``, to check that a follower lagging
behind a copytruncate loses no line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cli.logs import DEFAULT_STATE_DIR, Follower
from reconciler.process.logs import rotate_if_needed
from reconciler.spec.models import ReconcilerSettings
from tests.e2e.test_cli_client import DAEMON_ENV, serving
from tests.e2e.test_cli_client import Daemon as ClientDaemon
from tests.support import MARK_ENV, RECONCILER, SESSION_MARK, wait_for

LOG_MAX_BYTES = 2048


class Daemon(ClientDaemon):
    """A ``reconciler run`` with small log files, on a spec and state directory of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "reconciler.toml"
        self.config.write_text(f"[reconciler]\nlog_max_bytes = {LOG_MAX_BYTES}\nlog_backups = 3\n")
        super().__init__(tmp_path, "--config", str(self.config))
        self.log_dir = self.state / "logs"

    def spec(  # type: ignore[override]
        self, collector_id: str, argv: list[str], *, log: str = "file", state: str = "running"
    ) -> None:
        env = f'{MARK_ENV} = "{SESSION_MARK}", {DAEMON_ENV} = "{self.tag}"'
        (self.specs / f"{collector_id}.toml").write_text(
            f'type = "writer"\nbinary_path = {json.dumps(argv[0])}\nargs = {json.dumps(argv[1:])}\n'
            f'log = "{log}"\nstate = "{state}"\ngraceful_timeout_seconds = 2\n'
            f"env = {{ {env} }}\n"
        )

    def logs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("logs", *args, "--state-dir", str(self.state))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from serving(Daemon(tmp_path))


@contextlib.contextmanager
def following(daemon: Daemon, tmp_path: Path, *args: str) -> Iterator[tuple[Path, Path]]:
    """``reconciler logs ... -f`` in the background; its stdout and stderr go to files."""
    out, err = tmp_path / "follow.out", tmp_path / "follow.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        follower = subprocess.Popen(
            [RECONCILER, "logs", *args, "-f", "--state-dir", str(daemon.state)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "RECONCILER_SOCKET": str(daemon.socket)},
        )
    try:
        yield out, err
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 130, "interrupted, as tail -f is"
        assert "Traceback" not in err.read_text(), "Ctrl-C is no crash"
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def numbered(run: str, first: int, last: int) -> list[str]:
    return [f"{run} line {number}" for number in range(first, last + 1)]


def sh_writer(run_from: str, count: int) -> list[str]:
    """Writes ``<run> line 1`` .. ``<run> line <count>``, the run named by the first line of
    ``run_from`` (a counter the script increments), then sleeps."""
    script = (
        f'run=$(($(cat {run_from} 2>/dev/null || echo 0) + 1)); echo $run > {run_from}; i=1; '
        f'while [ $i -le {count} ]; do echo "run$run line $i"; i=$((i + 1)); done; '
        "exec sleep 300"
    )
    return ["/bin/sh", "-c", script]


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


# -- -n, the whole run, --previous, and the messages ------------------------------------------


def test_last_lines_the_whole_run_and_the_previous_run(daemon: Daemon, tmp_path: Path) -> None:
    daemon.spec("web", sh_writer(str(tmp_path / "runs"), 50))
    wait_for(lambda: "run1 line 50" in daemon.logs("web").stdout, message="web wrote its lines")

    assert daemon.logs("web", "-n", "3").stdout.splitlines() == numbered("run1", 48, 50)
    whole = daemon.logs("web")
    assert (whole.returncode, whole.stdout.splitlines()) == (0, numbered("run1", 1, 50))
    assert daemon.logs("web", "-n", "100").stdout.splitlines() == numbered("run1", 1, 50)
    assert daemon.logs("web", "-n", "all").stdout == whole.stdout
    assert daemon.logs("web", "-n", "0").stdout == ""
    # The state_dir from the config file the daemon was given, as a user passes it.
    config = tmp_path / "client.toml"
    config.write_text(f"[reconciler]\nstate_dir = {json.dumps(str(daemon.state))}\n")
    by_config = daemon.cli("logs", "web", "-n", "1", "--config", str(config))
    assert by_config.stdout.splitlines() == ["run1 line 50"], by_config.stderr

    none_yet = daemon.logs("web", "--previous")
    assert none_yet.returncode == 1
    assert "no previous run's log" in none_yet.stderr and "web.previous.log" in none_yet.stderr

    # A backup rotated during this run comes first in the whole run; -n reaches into it.
    (daemon.log_dir / "web.log.1").write_text("run1 line 0\n")
    assert daemon.logs("web").stdout.splitlines() == numbered("run1", 0, 50)
    assert daemon.logs("web", "-n", "51").stdout.splitlines() == numbered("run1", 0, 50)

    assert daemon.cli("restart", "web").returncode == 0
    wait_for(lambda: "run2 line 50" in daemon.logs("web").stdout, message="the new run wrote")
    # The backup is older than the new run: not part of it.
    assert daemon.logs("web").stdout.splitlines() == numbered("run2", 1, 50)
    assert daemon.logs("web", "-n", "60").stdout.splitlines() == numbered("run2", 1, 50)
    previous = daemon.logs("web", "--previous", "-n", "2")
    assert (previous.returncode, previous.stdout.splitlines()) == (0, numbered("run1", 49, 50))
    assert daemon.logs("web", "--previous").stdout.splitlines() == numbered("run1", 1, 50)


def test_inherit_null_and_unknown_ids_say_why_there_is_nothing(daemon: Daemon) -> None:
    daemon.spec("loud", ["/bin/sleep", "300"], log="inherit")
    daemon.spec("quiet", ["/bin/sleep", "300"], log="null")
    assert daemon.cli("wait", "loud", "quiet", "--timeout", "20").returncode == 0

    loud = daemon.logs("loud")
    assert (loud.returncode, loud.stdout) == (1, "")
    assert loud.stderr.startswith('loud: log = "inherit"') and "journalctl" in loud.stderr
    quiet = daemon.logs("quiet", "-f")
    assert (quiet.returncode, quiet.stdout) == (1, "")
    assert quiet.stderr.startswith('quiet: log = "null"') and "discarded" in quiet.stderr
    unknown = daemon.logs("nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("PROCESS_NOT_FOUND: ") and "nope" in unknown.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("web", "-n", "-1"), id="negative-lines"),
        pytest.param(("web", "-n", "ten"), id="not-a-number"),
        pytest.param(("web", "-f", "--previous"), id="follow-the-previous-run"),
        pytest.param((), id="no-id"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [RECONCILER, "logs", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "usage: reconciler logs" in result.stderr


def test_without_a_daemon_the_files_are_still_read(tmp_path: Path) -> None:
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "web.log").write_text("one\ntwo\nthree\n")
    socket = str(tmp_path / "absent.sock")
    args = ["--state-dir", str(tmp_path / "state"), "--socket", socket]
    result = subprocess.run(
        [RECONCILER, "logs", "web", "-n", "2", *args], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (0, "two\nthree\n")
    assert f"cannot reach the reconciler at {socket}" in result.stderr
    missing = subprocess.run(
        [RECONCILER, "logs", "db", *args], capture_output=True, text=True, timeout=30
    )
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.startswith(f"cannot reach the reconciler at {socket}: no such file")


def test_the_default_state_dir_is_the_daemons() -> None:
    assert ReconcilerSettings().state_dir == DEFAULT_STATE_DIR


# -- -f ---------------------------------------------------------------------------------------

ROTATING_WRITER = """
import os, sys, time
def write(first, last):
    for number in range(first, last + 1):
        os.write(1, f"line {number} ".encode().ljust(99, b".") + b"\\n")
write(1, 60)  # 6000 bytes: past log_max_bytes, the daemon rotates the file
deadline = time.monotonic() + 50
while os.fstat(1).st_size >= 6000 and time.monotonic() < deadline:
    time.sleep(0.05)  # until the copytruncate: then write on
write(61, 80)
time.sleep(300)
"""


@pytest.mark.timeout(90)
def test_follow_goes_on_across_a_size_rotation(daemon: Daemon, tmp_path: Path) -> None:
    daemon.spec("web", [sys.executable, "-c", ROTATING_WRITER])
    with following(daemon, tmp_path, "web", "-n", "all") as (out, err):
        # The daemon checks sizes every 10 s at first: the rotation comes within ~12 s.
        wait_for(
            lambda: (daemon.log_dir / "web.log.1").exists(),
            timeout=30,
            message="the daemon rotated web.log",
        )
        wait_for(lambda: "line 80 " in out.read_text(), timeout=10, message="lines after it")
        wait_for(
            lambda: len(lines_of(out)) >= 80, timeout=2, message="nothing more than 80 lines"
        )
        assert [line.split()[1] for line in lines_of(out)] == [str(n) for n in range(1, 81)]
    assert err.read_text() == ""
    # On disk: the backup holds the newest LOG_MAX_BYTES of the first 60, the file the rest.
    assert len((daemon.log_dir / "web.log.1").read_bytes()) <= LOG_MAX_BYTES
    assert daemon.logs("web", "-n", "1").stdout.startswith("line 80 ")
    # The whole run: the backup (lines 41-60: 2000 bytes, cut at a line), then the file.
    shown = [line.split()[1] for line in daemon.logs("web").stdout.splitlines()]
    assert shown == [str(n) for n in range(41, 81)]


def test_follow_goes_on_across_a_restart(daemon: Daemon, tmp_path: Path) -> None:
    daemon.spec("web", sh_writer(str(tmp_path / "runs"), 30))
    wait_for(lambda: "run1 line 30" in daemon.logs("web").stdout, message="web wrote its lines")
    with following(daemon, tmp_path, "web") as (out, err):
        wait_for(lambda: lines_of(out) == numbered("run1", 21, 30), message="the last 10")
        # A restart renames web.log to web.previous.log and opens a new web.log.
        assert daemon.cli("restart", "web").returncode == 0
        wait_for(
            lambda: "run2 line 30" in out.read_text(), message="the new run's lines followed"
        )
        assert lines_of(out) == numbered("run1", 21, 30) + numbered("run2", 1, 30)
    assert err.read_text() == ""
    assert lines_of(daemon.log_dir / "web.previous.log") == numbered("run1", 1, 30)


def test_follow_waits_for_a_collector_that_has_not_run_yet(daemon: Daemon, tmp_path: Path) -> None:
    argv = sh_writer(str(tmp_path / "runs"), 3)
    daemon.spec("web", argv, state="stopped")
    assert daemon.cli("wait", "web").returncode == 0
    assert "no log file at" in daemon.logs("web").stderr
    with following(daemon, tmp_path, "web") as (out, err):
        wait_for(lambda: "waiting for it" in err.read_text(), message="the follower waits")
        daemon.spec("web", argv)
        wait_for(lambda: lines_of(out) == numbered("run1", 1, 3), message="the first lines")


# -- the follower against the product's rotation, driven step by step -------------------------


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A collector's log and its writing end: O_APPEND, as the process manager opens it."""
    path = tmp_path / "web.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        yield path, fd
    finally:
        os.close(fd)


def write_lines(fd: int, first: int, last: int) -> None:
    for number in range(first, last + 1):
        os.write(fd, f"line {number}\n".encode())


def test_a_lagging_follower_loses_nothing_to_a_copytruncate(log: tuple[Path, int]) -> None:
    path, fd = log
    out = io.BytesIO()
    follower = Follower(path, out)
    try:
        write_lines(fd, 1, 10)
        follower.poll()
        write_lines(fd, 11, 40)  # not yet seen by the follower when the file is rotated
        assert rotate_if_needed(path, max_bytes=300, backups=2)  # lines 2-40 in web.log.1
        write_lines(fd, 41, 45)
        follower.poll()
        write_lines(fd, 46, 50)
        assert rotate_if_needed(path, max_bytes=50, backups=2)  # rotated while up to date
        write_lines(fd, 51, 52)
        follower.poll()
    finally:
        follower.close()
    assert out.getvalue().decode().splitlines() == [f"line {n}" for n in range(1, 53)]


def test_a_follower_sees_a_truncation_that_grew_back_past_its_offset(
    log: tuple[Path, int],
) -> None:
    path, fd = log
    out = io.BytesIO()
    follower = Follower(path, out)
    try:
        write_lines(fd, 1, 3)
        follower.poll()
        os.ftruncate(fd, 0)  # truncated with no backup (log_backups = 0) ...
        write_lines(fd, 100, 120)  # ... and longer again than what was read
        follower.poll()
    finally:
        follower.close()
    assert out.getvalue().decode().splitlines() == [
        *(f"line {n}" for n in range(1, 4)),
        *(f"line {n}" for n in range(100, 121)),
    ]


def test_a_follower_drains_a_renamed_file_then_reads_its_successor(
    log: tuple[Path, int], tmp_path: Path
) -> None:
    path, fd = log
    out = io.BytesIO()
    follower = Follower(path, out)
    try:
        follower.poll()  # the file exists, empty
        write_lines(fd, 1, 5)
        path.rename(tmp_path / "web.previous.log")
        follower.poll()  # renamed away, no successor yet: the old one is read on
        write_lines(fd, 6, 7)
        new = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            write_lines(new, 8, 9)
            follower.poll()
            write_lines(new, 10, 10)
            follower.poll()
        finally:
            os.close(new)
    finally:
        follower.close()
    assert out.getvalue().decode().splitlines() == [f"line {n}" for n in range(1, 11)]
