"""Promises a restart of the reconciler must keep: nothing lost, nothing duplicated.

Each test is one way these promises used to break (issue "nothing lost, nothing
duplicated"): an invalid file across a restart, a pause acknowledged just
before a SIGKILL, a resume that left an override behind, a state file that is
not UTF-8.
"""

from __future__ import annotations

# ruff: noqa: F811 - `daemons` is the fixture imported below, taken as an argument
import contextlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_adoption import (
    _cli,
    _start,
    daemons,  # noqa: F401 - the fixture
)
from tests.e2e.test_run import Daemon, spec
from tests.support import (
    DAEMON_TREES,
    MARK_ENV,
    RECONCILER,
    daemon_tree_name,
    kernel_state,
    marked_pids,
    wait_for,
)


def _post(socket_path: Path, path: str) -> tuple[int, str]:
    """One request on the control socket, as fast as a client can be."""
    connection = http.client.HTTPConnection("reconciler", timeout=30)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    connection.sock = sock
    try:
        connection.request("POST", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _status(daemon: Daemon, collector_id: str) -> dict[str, object]:
    result = _cli(daemon, "status", collector_id, "--json")
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


@pytest.mark.parametrize("how", ["SIGKILL", "keep"])
def test_an_invalid_file_keeps_its_collector_across_a_restart(
    tmp_path: Path, daemons: list[Daemon], how: str
) -> None:
    extra: tuple[str, ...] = ()
    if how == "keep":
        config = tmp_path / "reconciler.toml"
        config.write_text('[reconciler]\non_exit = "keep"\n')
        extra = ("--config", str(config))
    first = _start(tmp_path, daemons, *extra)
    path = first.specs / "a.toml"
    path.write_text(spec(first.mark))
    [pid] = wait_for(lambda: first.collectors(), message="running")
    wait_for(
        lambda: (
            (first.state / "state.toml").exists()
            and "a" in tomllib.loads((first.state / "state.toml").read_text())["collectors"]
        ),
        message="state file written",
    )
    path.write_text(spec(first.mark) + "typo_key = 1\n")
    wait_for(lambda: "typo_key" in first.stderr, message="the typo is reported")
    if how == "SIGKILL":
        first.process.kill()
        first.process.wait()
    else:
        assert first.stop() == 0
    second = _start(tmp_path, daemons, *extra, mark=first.mark)
    wait_for(lambda: "a: adopted running process" in second.stderr, message="adopted")
    wait_for(lambda: "typo_key" in second.stderr, message="the typo is reported again")
    assert second.collectors() == [pid], "the collector must keep running on its last good spec"
    assert "spec file removed" not in second.stderr
    status = _status(second, "a")
    assert status["pid"] == pid and status["state"] == "running"
    assert "typo_key" in str(status["spec_error"])


def test_an_acknowledged_pause_survives_a_sigkill_right_after(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    first = _start(tmp_path, daemons)
    (first.specs / "a.toml").write_text(spec(first.mark))
    wait_for(lambda: first.collectors(), message="running")
    status, body = _post(first.state / "api.sock", "/api/v1/collectors/a/pause")
    assert status == 200, body
    first.process.kill()  # the moment the answer is in: no time for a delayed write
    first.process.wait()
    saved = tomllib.loads((first.state / "state.toml").read_text())
    assert saved["overrides"]["a"]["action"] == "paused", "acknowledged, so already on disk"
    second = _start(tmp_path, daemons, mark=first.mark)
    [pid] = wait_for(lambda: second.collectors(), message="adopted")
    wait_for(lambda: "a: adopted running process" in second.stderr, message="adopted")
    assert kernel_state(pid) == "T"
    assert "resume (spec state is running)" not in second.stderr


def test_an_acknowledged_restart_is_on_disk_with_its_new_pid(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    first = _start(tmp_path, daemons)
    (first.specs / "a.toml").write_text(spec(first.mark))
    [old] = wait_for(lambda: first.collectors(), message="running")
    status, body = _post(first.state / "api.sock", "/api/v1/collectors/a/restart")
    assert status == 200, body
    new = json.loads(body)["pid"]
    first.process.kill()  # the moment the answer is in
    first.process.wait()
    saved = tomllib.loads((first.state / "state.toml").read_text())
    assert saved["collectors"]["a"]["pid"] == new != old, "acknowledged, so already on disk"
    second = _start(tmp_path, daemons, mark=first.mark)
    wait_for(lambda: "a: adopted running process" in second.stderr, message="adopted")
    assert second.collectors() == [new]


def test_resume_after_pause_leaves_no_override(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = _start(tmp_path, daemons)
    (daemon.specs / "a.toml").write_text(spec(daemon.mark))
    wait_for(lambda: daemon.collectors(), message="running")
    assert _cli(daemon, "pause", "a").returncode == 0
    assert _cli(daemon, "resume", "a").returncode == 0
    assert _status(daemon, "a")["override"] is None
    saved = tomllib.loads((daemon.state / "state.toml").read_text())
    assert saved.get("overrides", {}) == {}


def test_a_state_file_that_is_not_utf8_is_moved_aside(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.toml").write_bytes(b"version = 1\n\xff\xfe garbage \x00\n")
    daemon = _start(tmp_path, daemons)
    (daemon.specs / "a.toml").write_text(spec(daemon.mark))
    wait_for(lambda: daemon.collectors(), message="started despite the state file")
    assert (state / "state.toml.corrupt").read_bytes().startswith(b"version = 1\n\xff")
    assert "unusable" in daemon.stderr
    port = int(re.search(r"metrics on http://127.0.0.1:(\d+)", daemon.stderr).group(1))  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "\nreconciler_state_file_errors_total 1.0\n" in metrics or (
        "\nreconciler_state_file_errors_total 1\n" in metrics
    ), metrics[-2000:]


def test_status_carries_the_error_code(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = _start(tmp_path, daemons)
    (daemon.specs / "a.toml").write_text(
        spec(daemon.mark).replace('binary_path = "/bin/sleep"', 'binary_path = "/nonexistent/x"')
    )
    wait_for(lambda: _cli(daemon, "status", "a").returncode == 0, message="known")
    wait_for(lambda: _status(daemon, "a")["state"] == "failed", message="failed")
    status = _status(daemon, "a")
    assert status["last_error_code"] == "SPAWN_FAILED"
    table = _cli(daemon, "status")
    assert "SPAWN_FAILED" in table.stdout, table.stdout


KILLER = """#!/bin/sh
# The first run SIGKILLs the reconciler the moment it has started us: a crash
# during a start, before the start can be recorded anywhere.
if [ ! -e "$1" ]; then : > "$1"; kill -KILL "$PPID"; fi
exec sleep 300
"""


@pytest.mark.parametrize(
    "as_user",
    [
        pytest.param(None, id="root-with-cgroups"),
        pytest.param("nobody", id="unprivileged-without-cgroups"),
    ],
)
@pytest.mark.timeout(90)
def test_a_sigkill_during_a_start_never_yields_a_second_process(
    tmp_path: Path, as_user: str | None
) -> None:
    if as_user is not None and os.geteuid() != 0:
        pytest.skip("needs root to run the reconciler as another user")
    # A directory the unprivileged reconciler can use (tmp_path's parents are 0700).
    root = Path(tempfile.mkdtemp(prefix="reconciler-kill-"))
    daemons: list[subprocess.Popen[bytes]] = []
    mark = f"kill-during-start-{os.getpid()}-{time.monotonic_ns()}"
    try:
        specs, state = root / "specs", root / "state"
        specs.mkdir()
        script = root / "collector.sh"
        script.write_text(KILLER)
        script.chmod(0o755)
        (specs / "a.toml").write_text(
            f'type = "killer"\nbinary_path = "{script}"\nargs = ["{root / "started-once"}"]\n'
            f'env = {{ {MARK_ENV} = "{mark}" }}\n'
        )
        if as_user is not None:
            entry = pwd.getpwnam(as_user)
            for path in (root, specs, specs / "a.toml", script):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            root.chmod(0o755)
        prefix = (
            []
            if as_user is None
            else ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
        )

        def launch(n: int) -> subprocess.Popen[bytes]:
            stderr = (root / f"reconciler-{n}.stderr").open("wb")
            DAEMON_TREES.add(daemon_tree_name(state))
            daemon = subprocess.Popen(
                [*prefix, RECONCILER, "run", "--specs", str(specs), "--state-dir", str(state),
                 "--metrics-address", "127.0.0.1:0", "--socket", str(state / "api.sock")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )
            stderr.close()
            daemons.append(daemon)
            return daemon

        first = launch(1)
        assert first.wait(timeout=30) == -signal.SIGKILL, "the collector's kill reached it"
        wait_for(lambda: marked_pids(mark), message="the first collector outlived its reconciler")
        launch(2)
        stderr = root / "reconciler-2.stderr"
        wait_for(lambda: "a: pid" in stderr.read_text(), message="the second reconciler started a")
        # Exactly one process for the collector, and it stays one.
        [pid] = wait_for(lambda: len(marked_pids(mark)) == 1 and marked_pids(mark),
                         message="one process for a")
        assert "killed 1 processes left by collectors that died unwatched" in stderr.read_text()
        assert marked_pids(mark) == [pid]
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.terminate()
                daemon.wait(timeout=30)
        for pid in marked_pids(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
