"""A restarted reconciler adopts the collectors it finds, never starting a duplicate."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_run import Daemon, spec
from tests.support import RECONCILER, alive, kernel_state, wait_for


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()
        for daemon in started:
            for pid in daemon.collectors():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _start(tmp_path: Path, daemons: list[Daemon], *extra: str, mark: str | None = None) -> Daemon:
    daemon = Daemon(tmp_path, *extra)
    if mark is not None:
        daemon.mark = mark
    daemons.append(daemon)
    wait_for(lambda: "watching" in daemon.stderr, message="daemon started")
    return daemon


def _keep_config(tmp_path: Path) -> Path:
    config = tmp_path / "reconciler.toml"
    config.write_text('[reconciler]\non_exit = "keep"\n')
    return config


def test_on_exit_keep_then_adopt(tmp_path: Path, daemons: list[Daemon]) -> None:
    config = _keep_config(tmp_path)
    first = _start(tmp_path, daemons, "--config", str(config))
    for name in ("a", "b", "c"):
        (first.specs / f"{name}.toml").write_text(spec(first.mark))
    pids = wait_for(
        lambda: len(first.collectors()) == 3 and sorted(first.collectors()), message="three running"
    )
    assert first.stop() == 0
    assert sorted(first.collectors()) == pids, "collectors must outlive the reconciler"
    state = tomllib.loads((first.state / "state.toml").read_text())
    assert sorted(state["collectors"]) == ["a", "b", "c"]

    # While no reconciler runs: one spec removed, one changed, one left alone.
    (first.specs / "b.toml").unlink()
    (first.specs / "c.toml").write_text(spec(first.mark, "301"))
    second = _start(tmp_path, daemons, "--config", str(config), mark=first.mark)
    wait_for(lambda: len(second.collectors()) == 2, message="b stopped, c restarted")
    wait_for(lambda: "c: restart (spec changed: args)" in second.stderr, message="c restarted")
    survivors = second.collectors()
    a_pid = state["collectors"]["a"]["pid"]
    assert a_pid in survivors, "a must be adopted, not restarted"
    assert not alive(state["collectors"]["b"]["pid"])
    assert "a: adopted running process" in second.stderr
    assert "b: stop (spec file removed)" in second.stderr


def test_killed_reconciler_is_replaced_without_duplicates(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    first = _start(tmp_path, daemons)
    for name in ("a", "b"):
        (first.specs / f"{name}.toml").write_text(spec(first.mark))
    pids = wait_for(
        lambda: len(first.collectors()) == 2 and sorted(first.collectors()), message="two running"
    )
    wait_for(
        lambda: (
            (first.state / "state.toml").exists()
            and len(tomllib.loads((first.state / "state.toml").read_text())["collectors"]) == 2
        ),
        message="state file written",
    )
    first.process.kill()
    first.process.wait()
    second = _start(tmp_path, daemons, mark=first.mark)
    wait_for(lambda: second.stderr.count("adopted running process") == 2, message="adopted")
    assert sorted(second.collectors()) == pids
    assert second.stop() == 0
    assert second.collectors() == [], "adopted collectors are stopped like any other"


def test_stale_record_starts_a_fresh_process(tmp_path: Path, daemons: list[Daemon]) -> None:
    config = _keep_config(tmp_path)
    first = _start(tmp_path, daemons, "--config", str(config))
    (first.specs / "a.toml").write_text(spec(first.mark))
    [old] = wait_for(lambda: first.collectors(), message="running")
    assert first.stop() == 0
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), message="killed")
    second = _start(tmp_path, daemons, "--config", str(config), mark=first.mark)
    [new] = wait_for(lambda: second.collectors(), message="restarted")
    assert new != old
    assert "a: not adopted" in second.stderr


def test_on_exit_changed_by_reload_applies_at_exit(tmp_path: Path, daemons: list[Daemon]) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text('[reconciler]\non_exit = "stop"\n')
    daemon = _start(tmp_path, daemons, "--config", str(config))
    (daemon.specs / "a.toml").write_text(spec(daemon.mark))
    [pid] = wait_for(lambda: daemon.collectors(), message="running")
    config.write_text('[reconciler]\non_exit = "keep"\n')
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in daemon.stderr, message="reloaded")
    assert daemon.stop() == 0
    assert daemon.collectors() == [pid], "the reloaded on_exit = keep must apply"


def _cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILER, *args, "--socket", str(daemon.state / "api.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_operator_pause_survives_a_reconciler_restart(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    first = _start(tmp_path, daemons)
    path = first.specs / "a.toml"
    path.write_text(spec(first.mark))
    wait_for(lambda: first.collectors(), message="running")
    paused = _cli(first, "pause", "a")
    assert paused.returncode == 0, paused.stderr
    assert first.stop() == 0  # on_exit = stop: the collector goes with it

    second = _start(tmp_path, daemons, mark=first.mark)
    [pid] = wait_for(lambda: second.collectors(), message="started again")
    wait_for(lambda: kernel_state(pid) == "T", message="paused again by the saved override")
    status = _cli(second, "status", "a")
    assert "paused by operator" in status.stdout, status.stdout

    # A change to the spec file ends the override.
    path.write_text(spec(first.mark, "301"))
    wait_for(
        lambda: (pids := second.collectors()) and kernel_state(pids[0]) in ("S", "R"),
        message="running again after the spec changed",
    )
