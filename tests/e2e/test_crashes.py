"""Crash records (``<state_dir>/crashes/``, ``reconciler crashes``) from a real
``reconciler run``: a collector that crashes once, one killed by a signal that
dumps core, and the pruning of old records."""

from __future__ import annotations

# ruff: noqa: F811 - `daemon` is the fixture imported below, taken as an argument
import json
import subprocess
from pathlib import Path

import pytest

from reconciler.crashes import CORE_PATTERN, CrashRecorder, list_files
from tests.e2e.test_run import (
    Daemon,
    daemon,  # noqa: F401 - the fixture
)
from tests.support import MARK_ENV, RECONCILER, wait_for


def _crashes(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILER, "crashes", *args, "--state-dir", str(daemon.state)],
        capture_output=True, text=True, timeout=30,
    )


def _spec(daemon: Daemon, script: str, extra: str = "") -> str:
    return (
        f'type = "crasher"\nbinary_path = "/bin/sh"\nargs = ["-c", {json.dumps(script)}]\n'
        f'log = "file"\nenv = {{ {MARK_ENV} = "{daemon.mark}" }}\n{extra}'
    )


@pytest.mark.timeout(60)
def test_a_crash_is_recorded_with_its_exit_and_last_log_lines(
    daemon: Daemon, tmp_path: Path
) -> None:
    flag = tmp_path / "crashed-once"
    (daemon.specs / "a.toml").write_text(
        _spec(daemon, f'if [ ! -e {flag} ]; then : > {flag}; for i in $(seq 60); do echo "line $i";'
                      ' done; exit 3; fi; exec sleep 300')
    )
    wait_for(lambda: list_files(daemon.state / "crashes", "a"), message="a crash record")
    [record] = json.loads(_crashes(daemon, "a", "--json").stdout)
    assert record["id"] == "a" and record["exit_code"] == 3 and record["signal"] is None
    assert record["log_tail"] == [f"line {i}" for i in range(11, 61)], "the last 50 lines"
    assert record["run_seconds"] >= 0 and record["core_file"] is None
    table = _crashes(daemon)
    assert table.returncode == 0 and "exit 3" in table.stdout and " a " in table.stdout
    detail = _crashes(daemon, "a").stdout
    assert "exited with code 3" in detail and "    line 60" in detail
    # The daemon says it too: the API's last_crash, and `status ID`.
    status = subprocess.run(
        [RECONCILER, "status", "a", "--socket", str(daemon.state / "api.sock")],
        capture_output=True, text=True, timeout=30,
    )
    assert status.returncode == 0, status.stderr
    assert "last crash:" in status.stdout and "exit 3 after" in status.stdout
    assert "  line 60" in status.stdout
    [log_line] = [line for line in status.stdout.splitlines() if line.startswith("log file:")]
    assert log_line.split()[-1] == str(daemon.state.resolve() / "logs" / "a.log")


@pytest.mark.timeout(60)
def test_the_record_keeps_the_crashed_runs_tail_when_the_next_run_writes_at_once(
    daemon: Daemon, tmp_path: Path
) -> None:
    # The record is written after the replacement has started (so as not to delay it);
    # the replacement's own lines must not end up in it.
    flag = tmp_path / "crashed-once"
    (daemon.specs / "a.toml").write_text(
        _spec(daemon, f'if [ ! -e {flag} ]; then : > {flag}; echo "first run"; exit 4; fi; '
                      'for i in $(seq 200); do echo "second run $i"; done; exec sleep 300')
    )
    wait_for(lambda: list_files(daemon.state / "crashes", "a"), message="a crash record")
    log = daemon.state / "logs" / "a.log"
    wait_for(lambda: log.exists() and "second run 200" in log.read_text(), message="run 2")
    [record] = json.loads(_crashes(daemon, "a", "--json").stdout)
    assert record["exit_code"] == 4
    assert record["log_tail"] == ["first run"]


@pytest.mark.timeout(60)
def test_a_signal_that_dumps_core_names_the_core_file(daemon: Daemon, tmp_path: Path) -> None:
    if CORE_PATTERN.read_text().strip() != "core":
        pytest.skip("this machine's core_pattern is not a plain file name")
    work = tmp_path / "work"
    work.mkdir()
    flag = tmp_path / "crashed-once"
    (daemon.specs / "b.toml").write_text(
        _spec(
            daemon,
            f"if [ ! -e {flag} ]; then : > {flag}; kill -SEGV $$; fi; exec sleep 300",
            f'working_dir = "{work}"\n[resource_limits]\ncore_dump = true\n',
        )
    )
    wait_for(lambda: list_files(daemon.state / "crashes", "b"), message="b's crash record")
    [record] = json.loads(_crashes(daemon, "b", "--json").stdout)
    assert record["signal"] == "SIGSEGV"
    assert record["core_file"] == str(work / "core")
    assert (work / "core").stat().st_size > 0


def test_old_records_are_pruned(tmp_path: Path) -> None:
    recorder = CrashRecorder(tmp_path / "crashes", keep=3)
    for n in range(5):
        recorder.record("a", exit_code=n, description=f"exited with code {n}", run_seconds=1.0,
                        log=None, core_dump=False, cwd=str(tmp_path), wall_time=1000.0 + n)
    recorder.record("b", exit_code=1, description="x", run_seconds=1.0, log=None,
                    core_dump=False, cwd=str(tmp_path), wall_time=999.0)
    kept = [json.loads(p.read_text())["exit_code"] for p in list_files(tmp_path / "crashes", "a")]
    assert kept == [2, 3, 4], "the newest three of a"
    assert len(list_files(tmp_path / "crashes", "b")) == 1, "b's are its own"
