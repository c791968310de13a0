"""``reconciler run`` as an operator runs it: a real daemon, real files, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MARK_ENV, RECONCILER, alive, marked_pids, start_daemon, wait_for


def spec(mark: str, arg: str = "300") -> str:
    return (
        'type = "sleeper"\nbinary_path = "/bin/sleep"\n'
        f'args = ["{arg}"]\nenv = {{ {MARK_ENV} = "{mark}" }}\n'
    )


class Daemon:
    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.specs = tmp_path / "specs"
        self.specs.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.stderr_path = tmp_path / "reconciler.stderr"
        self.mark = f"e2e-{os.getpid()}-{time.monotonic_ns()}"
        self.process = start_daemon(
            specs=self.specs, state=self.state, stderr_path=self.stderr_path, extra=extra
        )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def collectors(self) -> list[int]:
        return marked_pids(self.mark)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def end(self) -> None:
        """Whatever a test left: kill the daemon if it still runs, then its collectors."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.collectors():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(tmp_path)
    try:
        yield running
    finally:
        running.end()


def test_sigterm_stops_every_collector_and_exits_0(daemon: Daemon) -> None:
    for name in ("a", "b", "c"):
        (daemon.specs / f"{name}.toml").write_text(spec(daemon.mark))
    pids = wait_for(
        lambda: len(daemon.collectors()) == 3 and daemon.collectors(),
        message="three collectors running",
    )
    assert daemon.stop() == 0, daemon.stderr
    assert not any(alive(pid) for pid in pids)
    assert daemon.collectors() == []
    assert "SIGTERM received" in daemon.stderr


def test_every_action_is_logged_with_its_reason(daemon: Daemon) -> None:
    path = daemon.specs / "a.toml"
    path.write_text(spec(daemon.mark))
    first = wait_for(lambda: daemon.collectors(), message="collector running")
    path.write_text(spec(daemon.mark, "301"))
    wait_for(lambda: daemon.collectors() and daemon.collectors() != first, message="restarted")
    assert daemon.stop() == 0
    log = daemon.stderr
    assert "a: start (new spec)" in log
    assert "a: restart (spec changed: args)" in log


def test_invalid_spec_is_logged_naming_file_key_and_reason(daemon: Daemon) -> None:
    (daemon.specs / "a.toml").write_text(spec(daemon.mark) + "argz = 1\n")
    wait_for(lambda: "a.toml: argz: unknown key" in daemon.stderr, message="error logged")
    assert daemon.collectors() == []
    assert daemon.stop() == 0


def test_json_log_format(tmp_path: Path) -> None:
    import json

    running = Daemon(tmp_path, "--log-format", "json")
    try:
        wait_for(lambda: "watching" in running.stderr, message="started")
        assert running.stop() == 0
        lines = [json.loads(line) for line in running.stderr.splitlines() if line.strip()]
        assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def test_sighup_reloads_the_config(tmp_path: Path) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text("[process_manager]\ndefault_graceful_timeout_seconds = 5\n")
    running = Daemon(tmp_path, "--config", str(config))
    try:
        wait_for(lambda: "watching" in running.stderr, message="started")
        config.write_text("[process_manager]\nbogus = 1\n")
        running.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reload refused" in running.stderr, message="refused")
        assert "bogus: unknown key" in running.stderr
        config.write_text("[process_manager]\ndefault_graceful_timeout_seconds = 1\n")
        running.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in running.stderr, message="reloaded")
        assert running.stop() == 0
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def test_bad_config_file_exits_1_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text('[reconciler]\non_exit = "sometimes"\n')
    result = subprocess.run(
        [RECONCILER, "run", "--config", str(config), "--specs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "reconciler.on_exit" in result.stderr and "reconciler.toml" in result.stderr


def test_systemd_is_told_ready_reloading_and_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    running = Daemon(tmp_path)
    try:
        assert b"READY=1" in listener.recv(4096).split(b"\n")
        running.process.send_signal(signal.SIGHUP)
        assert listener.recv(4096) == b"RELOADING=1"
        assert listener.recv(4096) == b"READY=1"
        assert running.stop() == 0
        assert listener.recv(4096) == b"STOPPING=1"
    finally:
        listener.close()
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
