"""Collectors that misbehave cost only themselves (issue "nothing lost, nothing
duplicated"): a flood of output, a fork bomb, a closed stdout. Each runs
beside a well-behaved collector whose pid must not change, under a real
``reconciler run``; what is checked is read from /proc and the file system."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.test_run import Daemon, spec
from tests.support import MARK_ENV, pids_with_env, wait_for

MIB = 1024 * 1024
FORK_BOMB = """
import os
for _ in range(1000):
    try:
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "300"])
    except OSError:
        pass  # the processes limit: keep trying, as a runaway collector would
os.execv("/bin/sleep", ["sleep", "301"])
"""


def _collector(mark: str, script: str, extra: str = "") -> str:
    return (
        f'type = "misbehaving"\nbinary_path = "/bin/sh"\nargs = ["-c", {json.dumps(script)}]\n'
        f'env = {{ {MARK_ENV} = "{mark}-bad" }}\n{extra}'
    )


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # gone meanwhile


def _bad(daemon: Daemon) -> list[int]:
    return pids_with_env(MARK_ENV, f"{daemon.mark}-bad")


@pytest.fixture
def small_logs(tmp_path: Path) -> Path:
    config = tmp_path / "reconciler.toml"
    config.write_text("[reconciler]\nlog_max_bytes = 1048576\nlog_backups = 2\n")
    return config


def _running(tmp_path: Path, *extra: str) -> Daemon:
    daemon = Daemon(tmp_path, *extra)
    wait_for(lambda: "watching" in daemon.stderr, timeout=30, message="daemon started")
    (daemon.specs / "good.toml").write_text(spec(daemon.mark))
    return daemon


def _end(daemon: Daemon) -> None:
    if daemon.process.poll() is None:
        daemon.process.kill()
        daemon.process.wait()
    for pid in daemon.collectors() + _bad(daemon):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _log_bytes(daemon: Daemon, collector_id: str) -> int:
    logs = daemon.state / "logs"
    return sum(p.stat().st_size for p in logs.glob(f"{collector_id}.*") if p.is_file())


@pytest.mark.timeout(120)
def test_a_gigabyte_of_output_stays_within_the_log_bound(tmp_path: Path, small_logs: Path) -> None:
    daemon = _running(tmp_path, "--config", str(small_logs))
    try:
        [good] = wait_for(lambda: daemon.collectors(), message="the good collector runs")
        (daemon.specs / "flood.toml").write_text(
            _collector(daemon.mark, "head -c 1073741824 /dev/zero; exec sleep 300",
                       'log = "file"\n')
        )
        # The flood is over when the shell has exec'd its sleep.
        wait_for(
            lambda: any(_cmdline(p).startswith(b"sleep") for p in _bad(daemon)),
            timeout=60, message="the 1 GiB was written",
        )
        bound = 1 * MIB * (2 + 1)
        logs = daemon.state / "logs"
        wait_for(
            lambda: list(logs.glob("flood.log.*")) and _log_bytes(daemon, "flood") <= bound,
            timeout=30,
            message=f"flood's logs rotated and cut back to {bound} bytes",
        )
        backups = sorted(logs.glob("flood.log.*"))
        assert all(b.stat().st_size <= MIB for b in backups), "a backup is at most log_max_bytes"
        assert daemon.collectors() == [good], "the good collector was not touched"
        assert daemon.process.poll() is None
    finally:
        _end(daemon)


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC binds a non-root user only")
@pytest.mark.timeout(90)
def test_a_fork_bomb_is_held_to_its_processes_limit_and_stopped_whole(tmp_path: Path) -> None:
    daemon = _running(tmp_path)
    try:
        [good] = wait_for(lambda: daemon.collectors(), message="the good collector runs")
        bomb = daemon.specs / "bomb.toml"
        bomb.write_text(
            'type = "misbehaving"\n'
            f'binary_path = "{sys.executable}"\nargs = ["-c", {json.dumps(FORK_BOMB)}]\n'
            f'env = {{ {MARK_ENV} = "{daemon.mark}-bad" }}\nuser = "nobody"\n'
            "[resource_limits]\nprocesses = 64\n"
        )
        wait_for(
            lambda: any(_cmdline(p) == b"sleep\x00301\x00" for p in _bad(daemon)),
            timeout=60,
            message="the bomb has tried its 1,000 forks",
        )
        assert len(_bad(daemon)) <= 64, "the processes limit held"
        bomb.unlink()
        wait_for(lambda: not _bad(daemon), timeout=30, message="the whole tree was stopped")
        assert daemon.collectors() == [good]
        assert daemon.process.poll() is None
    finally:
        _end(daemon)


@pytest.mark.timeout(60)
def test_a_collector_that_closes_its_output_keeps_running(tmp_path: Path) -> None:
    daemon = _running(tmp_path)
    try:
        [good] = wait_for(lambda: daemon.collectors(), message="the good collector runs")
        (daemon.specs / "mute.toml").write_text(
            _collector(daemon.mark, "exec >&- 2>&- </dev/null; exec sleep 300", 'log = "file"\n')
        )
        [mute] = wait_for(lambda: _bad(daemon), message="the mute collector runs")
        wait_for(lambda: _cmdline(mute) == b"sleep\x00300\x00",
                 message="it closed its output and went on")
        assert not os.path.exists(f"/proc/{mute}/fd/1")
        assert _bad(daemon) == [mute] and daemon.collectors() == [good]
        assert "mute: start (new spec)" in daemon.stderr
        assert "mute: exited" not in daemon.stderr
    finally:
        _end(daemon)
