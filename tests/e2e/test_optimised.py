"""``reconciler run`` starts again under ``python -OO`` where that bytecode is at hand."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.imports import STANDARD_LIBRARY_PROBE, optimised_command
from tests.support import (
    MARK_ENV,
    RECONCILER,
    alive,
    cmdline,
    end_daemon,
    marked_pids,
    start_daemon,
    wait_for,
)


def run_one(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Start ``reconciler run`` with one collector; its command line once the collector runs,
    and its exit code after SIGTERM."""
    specs = tmp_path / "specs"
    specs.mkdir()
    mark = f"optimised-{os.getpid()}-{tmp_path.name}"
    (specs / "a.toml").write_text(
        f'type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["300"]\n'
        f'env = {{ {MARK_ENV} = "{mark}" }}\n'
    )
    daemon = start_daemon(
        specs=specs, state=tmp_path / "state", stderr_path=tmp_path / "stderr", env=env
    )
    try:
        [collector] = wait_for(lambda: marked_pids(mark), timeout=30, message="collector runs")
        # The collector is the child of the process started: exec kept its pid.
        parent = int(Path(f"/proc/{collector}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent == daemon.pid
        command = cmdline(daemon.pid)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        assert not alive(collector)
        return command, code
    finally:
        end_daemon(daemon, mark)


def test_run_starts_again_under_OO_keeping_its_pid(tmp_path: Path) -> None:
    if not os.path.exists(importlib.util.cache_from_source(STANDARD_LIBRARY_PROBE, optimization=2)):
        pytest.skip("this interpreter's standard library has no -OO bytecode")
    # make venv compiles the rest: pydantic's and the reconciler's.
    assert optimised_command() is not None
    command, code = run_one(tmp_path)
    assert command[:2] == [sys.executable, "-OO"]
    assert command[2:4] == [RECONCILER, "run"]
    assert code == 0, (tmp_path / "stderr").read_text()


def test_run_without_OO_bytecode_runs_as_started(tmp_path: Path) -> None:
    # Bytecode looked for (and written) under an empty directory: none of it is there.
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(tmp_path / "pycache"))
    command, code = run_one(tmp_path, env=env)
    assert "-OO" not in command
    assert command[1:3] == [RECONCILER, "run"]
    assert code == 0, (tmp_path / "stderr").read_text()


def test_no_second_start_when_already_optimised(monkeypatch: pytest.MonkeyPatch) -> None:
    class Flags:
        optimize = 2

    monkeypatch.setattr(sys, "flags", Flags())
    assert optimised_command() is None


def test_command_keeps_the_interpreter_options(monkeypatch: pytest.MonkeyPatch) -> None:
    if optimised_command() is None:
        pytest.skip("no -OO bytecode here")
    monkeypatch.setattr(sys, "orig_argv", ["python", "-X", "dev", "/bin/reconciler", "run"])
    assert optimised_command() == [sys.executable, "-OO", "-X", "dev", "/bin/reconciler", "run"]


def test_python_m_reconciler_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("reconciler ")
