"""The client commands as an operator runs them, against a real ``reconciler run``.

``status``, ``restart``, ``pause``, ``resume``, ``events`` and ``wait`` run as
the installed ``reconciler`` command, talking to a daemon started here with
``--socket``; what is checked is what a person or a script sees: output lines,
alignment, exit codes and messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    MARK_ENV,
    RECONCILER,
    SESSION_MARK,
    pids_with_env,
    start_daemon,
    wait_for,
)

DAEMON_ENV = "RECONCILER_E2E_DAEMON"
"""Tags the collectors of one test's daemon, so that its finaliser kills only those."""
SECRET = "e2e-secret-token-value"


class Daemon:
    """A ``reconciler run`` on a spec directory and socket of its own."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.specs = tmp_path / "specs"
        self.specs.mkdir()
        self.state = tmp_path / "state"
        self.socket = self.state / "api.sock"
        self.tag = f"{os.getpid()}-{time.monotonic_ns()}"
        self.stderr_path = tmp_path / "reconciler.stderr"
        self.process = start_daemon(
            specs=self.specs, state=self.state, stderr_path=self.stderr_path, extra=extra
        )

    def spec(
        self,
        collector_id: str,
        *,
        binary: str = "/bin/sleep",
        args: tuple[str, ...] = ("300",),
        extra: str = "",
    ) -> None:
        env = f'{MARK_ENV} = "{SESSION_MARK}", {DAEMON_ENV} = "{self.tag}", TOKEN = "{SECRET}"'
        (self.specs / f"{collector_id}.toml").write_text(
            f'type = "sleeper"\nbinary_path = "{binary}"\nargs = {json.dumps(list(args))}\n'
            f'log = "null"\ngraceful_timeout_seconds = 2\nenv = {{ {env} }}\n{extra}\n'
        )

    def cli(
        self, *args: str, columns: int = 200, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RECONCILER, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RECONCILER_SOCKET": str(self.socket), "COLUMNS": str(columns)},
        )

    def collectors(self) -> dict[str, dict[str, Any]]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return {c["id"]: c for c in json.loads(result.stdout)["collectors"]}

    def collector(self, collector_id: str) -> dict[str, Any] | None:
        return self.collectors().get(collector_id)

    def state_of(self, collector_id: str) -> str | None:
        collector = self.collector(collector_id)
        return collector["state"] if collector else None

    def kill_everything(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in pids_with_env(DAEMON_ENV, self.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from serving(Daemon(tmp_path))


def serving(running: Daemon) -> Iterator[Daemon]:
    """A started daemon once it answers; stopped with SIGTERM (exit 0), its collectors killed."""
    try:
        wait_for(
            lambda: running.cli("status").returncode == 0,
            timeout=30,  # a loaded machine can take more than 10 s to start one
            message=f"the daemon answers on {running.socket}:\n{running.stderr_path.read_text()}",
        )
        yield running
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0
        assert not running.socket.exists(), "the socket is removed on exit"
    finally:
        running.kill_everything()


def columns_of(header: str) -> list[int]:
    return [match.start() for match in re.finditer(r"\S+", header)]


# -- status ---------------------------------------------------------------------------------------


def test_status_table_is_aligned_with_failed_collectors_first(daemon: Daemon) -> None:
    daemon.spec("aaa")
    daemon.spec("mmm-idle", extra='state = "stopped"')
    daemon.spec("zzz-broken", binary="/nonexistent/collector")
    assert daemon.cli("wait", "aaa", "mmm-idle", "--timeout", "20").returncode == 0
    wait_for(lambda: daemon.state_of("zzz-broken") == "failed", message="zzz-broken failed")
    result = daemon.cli("status")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "ID", "TYPE", "DESIRED", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "ERROR",
    ]  # fmt: skip
    assert [row.split()[0] for row in rows] == ["zzz-broken", "aaa", "mmm-idle"]
    starts = columns_of(header)
    for row in rows:
        for start in starts[:-1]:
            assert row[start] != " " and (start == 0 or row[start - 1] == " "), (start, row)
    broken, running, idle = (row.split() for row in rows)
    assert broken[2:5] == ["running", "failed", "unhealthy"]
    assert "/nonexistent/collector" in rows[0]
    assert running[2:5] == ["running", "running", "healthy"]
    assert running[5].isdigit() and re.fullmatch(r"\d+s", running[6])
    assert idle[2:7] == ["stopped", "stopped", "healthy", "-", "-"]


def test_status_cuts_long_errors_to_the_terminal_width(daemon: Daemon) -> None:
    daemon.spec("broken", binary="/nonexistent/" + "very-long-directory-name/" * 6 + "bin")
    wait_for(lambda: daemon.state_of("broken") == "failed", message="broken failed")
    header, row = daemon.cli("status", columns=100).stdout.splitlines()
    assert row.endswith("...") and len(row) <= 100
    assert row.index("SPAWN_FAILED: failed to") == columns_of(header)[-1]


def test_status_json_and_detail(daemon: Daemon) -> None:
    daemon.spec("web")
    assert daemon.cli("wait", "web").returncode == 0
    listing = daemon.cli("status", "--json")
    assert listing.returncode == 0
    data = json.loads(listing.stdout)
    assert data["ready"] is True
    one = json.loads(daemon.cli("status", "web", "--json").stdout)
    assert one["id"] == "web" and one["state"] == "running" and one["converged"] is True
    assert one["spec"]["env_keys"] == sorted([MARK_ENV, DAEMON_ENV, "TOKEN"])
    detail = daemon.cli("status", "web")
    assert detail.returncode == 0
    facts = dict(line.split(":", 1) for line in detail.stdout.splitlines() if ": " in line)
    assert facts["state"].strip() == "running"
    assert facts["pid"].strip() == str(one["pid"])
    assert "TOKEN" in facts["env"] and "values hidden" in facts["env"]
    for output in (listing.stdout, detail.stdout, daemon.cli("events", "--json").stdout):
        assert SECRET not in output
    missing = daemon.cli("status", "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("PROCESS_NOT_FOUND: ") and "nope" in missing.stderr


# -- restart, pause, resume -----------------------------------------------------------------------


def test_restart_pause_and_resume(daemon: Daemon) -> None:
    daemon.spec("web")
    assert daemon.cli("wait", "web").returncode == 0
    before = daemon.collector("web")
    assert before is not None
    restarted = daemon.cli("restart", "web")
    assert restarted.returncode == 0, restarted.stderr
    match = re.fullmatch(r"web restarted \(pid (\d+)\)\n", restarted.stdout)
    assert match and int(match[1]) != before["pid"]
    pid = int(match[1])

    paused = daemon.cli("pause", "web")
    assert (paused.returncode, paused.stdout) == (0, f"web paused (pid {pid})\n")
    row = next(r for r in daemon.cli("status").stdout.splitlines() if r.startswith("web "))
    assert row.split()[2:4] == ["paused*", "paused"]
    assert "operator override" in daemon.cli("status").stdout

    resumed = daemon.cli("resume", "web")
    assert (resumed.returncode, resumed.stdout) == (0, f"web resumed (pid {pid})\n")
    assert daemon.collector("web")["state"] == "running"  # type: ignore[index]


def test_action_errors_print_code_and_message(daemon: Daemon) -> None:
    daemon.spec("idle", extra='state = "stopped"')
    assert daemon.cli("wait", "idle").returncode == 0
    for args, code in [
        (("restart", "nope"), "PROCESS_NOT_FOUND"),
        (("pause", "idle"), "INVALID_STATE"),
        (("resume", "idle"), "INVALID_STATE"),
    ]:
        result = daemon.cli(*args)
        assert result.returncode == 1, (args, result)
        assert result.stdout == ""
        assert result.stderr.startswith(f"{code}: "), (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1


# -- events ---------------------------------------------------------------------------------------


EVENT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (\S+) (\S+) (.+)")


def test_events(daemon: Daemon) -> None:
    daemon.spec("web")
    daemon.spec("other")
    assert daemon.cli("wait", "web", "other").returncode == 0
    assert daemon.cli("restart", "web").returncode == 0
    result = daemon.cli("events")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    parsed = [EVENT_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert {m[1] for m in parsed if m} == {"web", "other"}
    assert "web start new spec" in result.stdout
    assert "web restart restarted by operator" in result.stdout
    only_web = daemon.cli("events", "web").stdout.splitlines()
    assert only_web and all(line.split()[1] == "web" for line in only_web)
    assert daemon.cli("events", "--limit", "2").stdout.splitlines() == lines[-2:]
    events = json.loads(daemon.cli("events", "web", "--json").stdout)["events"]
    assert [e["kind"] for e in events] == [line.split()[2] for line in only_web]


# -- wait -----------------------------------------------------------------------------------------


def test_wait_returns_when_the_named_collectors_converge(daemon: Daemon) -> None:
    # Written just before `wait`: the named ids are waited for until they appear.
    daemon.spec("a")
    daemon.spec("b", extra='state = "paused"')
    result = daemon.cli("wait", "a", "b", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "converged: 2 collectors\n"
    collectors = daemon.collectors()
    assert collectors["a"]["state"] == "running" and collectors["b"]["state"] == "paused"
    assert daemon.cli("wait").returncode == 0


def test_wait_times_out_naming_what_is_pending_and_why(daemon: Daemon) -> None:
    daemon.spec("good")
    (daemon.specs / "bad.toml").write_text('type = "sleeper"\nargz = []\n')
    assert daemon.cli("wait", "good").returncode == 0
    started = time.monotonic()
    result = daemon.cli("wait", "good", "bad", "ghost", "--timeout", "1")
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "TIMEOUT: not converged after 1 s; pending:"
    pending = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert set(pending) == {"bad", "ghost"}
    assert "spec error" in pending["bad"] and "argz" in pending["bad"]
    assert "unknown" in pending["ghost"]


def test_wait_fails_at_once_on_a_failed_collector(daemon: Daemon) -> None:
    daemon.spec("ok")
    daemon.spec("broken", binary="/nonexistent/collector")
    started = time.monotonic()
    result = daemon.cli("wait", "ok", "broken", "--timeout", "30")
    assert result.returncode == 1
    assert time.monotonic() - started < 20, "a failed collector must not wait for the timeout"
    assert "broken: failed on its current spec" in result.stderr
    assert "/nonexistent/collector" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("INVALID_STATE: 1 collector failed")


def test_wait_started_before_the_daemon_waits_for_it(tmp_path: Path) -> None:
    """As an Ansible play does: start the service, then wait at once."""
    specs, state = tmp_path / "specs", tmp_path / "state"
    specs.mkdir()
    (specs / "a.toml").write_text(
        'type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["300"]\nlog = "null"\n'
        f'env = {{ {MARK_ENV} = "{SESSION_MARK}" }}\n'
    )
    waiter = subprocess.Popen(
        [RECONCILER, "wait", "a", "--timeout", "30", "--socket", str(state / "api.sock")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    daemon = None
    try:
        wait_for(lambda: waiter.poll() is None, timeout=1, message="wait is waiting")
        daemon = start_daemon(specs=specs, state=state, stderr_path=tmp_path / "stderr")
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert out.startswith("converged: 1 collector")
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
        if daemon is not None:
            daemon.terminate()
            assert daemon.wait(timeout=30) == 0


# -- no daemon, usage -----------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILER, *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("status",), id="status"),
        pytest.param(("restart", "web"), id="restart"),
        pytest.param(("pause", "web"), id="pause"),
        pytest.param(("events",), id="events"),
        pytest.param(("wait", "--timeout", "1"), id="wait"),
    ],
)
def test_no_daemon_is_one_clear_line_and_exit_1(tmp_path: Path, args: tuple[str, ...]) -> None:
    socket_path = tmp_path / "nobody.sock"
    result = run_cli(*args, "--socket", str(socket_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"cannot reach the reconciler at {socket_path}: no such file "
        "(is `reconciler run` running? use --socket or $RECONCILER_SOCKET to point elsewhere)\n"
    )


def test_the_socket_comes_from_the_environment(tmp_path: Path) -> None:
    socket_path = tmp_path / "from-env.sock"
    result = run_cli("status", env={"RECONCILER_SOCKET": str(socket_path)})
    assert result.returncode == 1 and f"at {socket_path}: no such file" in result.stderr


def test_a_socket_nobody_listens_on_says_so(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    result = run_cli("status", "--socket", str(path))
    assert result.returncode == 1
    assert f"at {path}: connection refused" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("restart",), id="restart-without-id"),
        pytest.param(("pause", "a", "b"), id="pause-two-ids"),
        pytest.param(("status", "a", "b"), id="status-two-ids"),
        pytest.param(("events", "--limit", "0"), id="events-limit-0"),
        pytest.param(("wait", "--timeout", "-1"), id="wait-negative-timeout"),
        pytest.param(("wait", "--timeout", "soon"), id="wait-timeout-not-a-number"),
        pytest.param(("status", "--bogus"), id="unknown-flag"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert "usage: reconciler" in result.stderr


def test_reload_answers_and_the_new_spec_is_seen(daemon: Daemon) -> None:
    wait_for(lambda: daemon.cli("status").returncode == 0, message="daemon up")
    daemon.spec("late")
    result = daemon.cli("reload")
    assert result.returncode == 0 and result.stdout == "reloaded\n", result.stderr
    assert "late" in daemon.collectors(), "reload must have read the new spec file"


def test_validate_checks_manager_configs(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("[process_manager]\nenable_auto_restart = false\n")
    bad.write_text('[reconciler]\non_exit = "sometimes"\n')
    result = run_cli("validate", "--config", str(good), "--config", str(bad))
    assert result.returncode == 1
    assert result.stdout == f"ok {good}\n"
    assert f'{bad}: reconciler.on_exit: must be one of "stop" or "keep"' in result.stderr
    assert run_cli("validate").returncode == 2


def test_env_values_never_reach_logs_status_or_events(daemon: Daemon) -> None:
    daemon.spec("web")
    wait_for(lambda: daemon.collectors().get("web", {}).get("state") == "running", message="up")
    # A broken edit whose error would name the value, were values ever shown.
    (daemon.specs / "web.toml").write_text(
        'type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["300"]\n'
        f'env = {{ TOKEN = "{SECRET}", NUMBER = 271828 }}\n'
    )
    wait_for(lambda: daemon.collectors()["web"].get("spec_error"), message="error seen")
    outputs = [
        daemon.cli("status").stdout,
        daemon.cli("status", "web").stdout,
        daemon.cli("status", "--json").stdout,
        daemon.cli("events").stdout,
        daemon.stderr_path.read_text(),
    ]
    assert "env.NUMBER: must be a string (got a number, value not shown)" in outputs[-1]
    for output in outputs:
        assert SECRET not in output and "271828" not in output
