"""The example collectors run for real, and the example specs in specs/ that run them.

Each collector is started as ``python -m reconciler.collectors.<name>`` (what
the ``reconciler-<name>`` console scripts run), with the session mark in its
environment so that a survivor is found by the leak check in conftest.py.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.spec import CollectorSpec, parse_spec
from tests.support import MARK_ENV, SESSION_MARK

COLLECTORS = ("procmond", "netmond", "diskmond")
SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
START_TIMEOUT_SECONDS = 20.0
"""Generous: a loaded CI machine may take seconds to start Python."""
STOP_TIMEOUT_SECONDS = 5.0


def command(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"reconciler.collectors.{name}", *args]


def command_for_binary(binary: str, *args: str) -> list[str]:
    """The command a spec's ``reconciler-<name>`` console script stands for."""
    assert binary.startswith("reconciler-"), binary
    return command(binary.removeprefix("reconciler-"), *args)


class Collector:
    """A running collector and what it has written so far."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.stdout = b""

    def lines(self, count: int, *, timeout: float = START_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
        """The first ``count`` JSON lines, waiting for them up to ``timeout``."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while self.stdout.count(b"\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {count} lines within {timeout} s: {self.stdout!r}")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"stdout closed after {self.stdout!r}")
                self.stdout += chunk
        return [json.loads(line) for line in self.stdout.splitlines()[:count]]

    def finish(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> tuple[int, bytes, bytes]:
        """Wait for the exit: (exit code, all of stdout, stderr)."""
        rest, stderr = self.popen.communicate(timeout=timeout)
        self.stdout += rest
        return self.popen.returncode, self.stdout, stderr


@contextlib.contextmanager
def started(argv: Sequence[str], **kwargs: Any) -> Iterator[Collector]:
    """Start ``argv``; kill and reap it on the way out, whatever happened."""
    env = {**os.environ, **kwargs.pop("env", {}), MARK_ENV: SESSION_MARK}
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kwargs
    )
    try:
        yield Collector(popen)
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.communicate()


def run_once(argv: Sequence[str], **kwargs: Any) -> tuple[int, bytes, bytes]:
    with started(argv, **kwargs) as collector:
        return collector.finish(timeout=START_TIMEOUT_SECONDS)


def until(predicate: Callable[[], object], *, timeout: float = 10.0, message: str = "") -> None:
    """Wait for ``predicate()`` to be truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {message}")
        select.select([], [], [], 0.02)


def only_line(stdout: bytes) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    assert stdout.endswith(b"\n")
    record: dict[str, Any] = json.loads(lines[0])
    return record


def assert_envelope(record: dict[str, Any], name: str) -> None:
    assert list(record)[:2] == ["ts", "collector"]
    assert record["collector"] == name
    assert record["ts"].endswith("Z")
    ts = datetime.datetime.fromisoformat(record["ts"])
    assert ts.utcoffset() == datetime.timedelta(0)
    age = datetime.datetime.now(datetime.UTC) - ts
    assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(seconds=60)


# --- One sample: --once -------------------------------------------------------------------


def test_procmond_once_lists_the_process_table_with_itself_in_it() -> None:
    with started(command("procmond", "--once", "--interval-seconds", "0.2", "--top", "10000")) as c:
        code, stdout, stderr = c.finish(timeout=START_TIMEOUT_SECONDS)
        pid = c.popen.pid

    assert (code, stderr) == (0, b"")
    record = only_line(stdout)
    assert_envelope(record, "procmond")
    assert record["processes"] >= 2
    assert sum(record["by_state"].values()) == record["processes"]
    assert len(record["top_rss"]) == len(record["top_cpu"]) == record["processes"]
    me = next(row for row in record["top_rss"] if row["pid"] == pid)
    assert set(me) == {"pid", "name", "user", "cpu_percent", "rss_bytes"}
    assert me["rss_bytes"] > 1024 * 1024
    rss = [row["rss_bytes"] or 0 for row in record["top_rss"]]
    assert rss == sorted(rss, reverse=True)
    cpu = [row["cpu_percent"] for row in record["top_cpu"]]
    assert cpu == sorted(cpu, reverse=True)


def test_procmond_top_limits_the_lists() -> None:
    code, stdout, stderr = run_once(
        command("procmond", "--once", "--interval-seconds", "0.1", "--top", "2")
    )

    assert (code, stderr) == (0, b"")
    record = only_line(stdout)
    assert len(record["top_cpu"]) == len(record["top_rss"]) == 2


def test_netmond_once_counts_loopback_traffic_and_a_listening_socket() -> None:
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        sender = stack.enter_context(socket.create_connection(listener.getsockname()))
        receiver = stack.enter_context(listener.accept()[0])
        receiver.setblocking(False)
        collector = stack.enter_context(
            started(command("netmond", "--once", "--interval-seconds", "0.5", "--interface", "lo"))
        )
        # Keep loopback busy until the sample is out, so that its window sees traffic.
        assert collector.popen.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not select.select([collector.popen.stdout], [], [], 0.01)[0]:
            assert time.monotonic() < deadline, "netmond wrote nothing"
            sender.sendall(b"x" * 1024)
            with contextlib.suppress(BlockingIOError):
                receiver.recv(65536)
        code, stdout, stderr = collector.finish(timeout=START_TIMEOUT_SECONDS)

    assert (code, stderr) == (0, b"")
    record = only_line(stdout)
    assert_envelope(record, "netmond")
    assert 0.4 < record["elapsed_seconds"] < 10
    assert list(record["interfaces"]) == ["lo"]
    loopback = record["interfaces"]["lo"]
    assert loopback["bytes_sent"] >= 1024
    assert loopback["packets_recv"] >= 1
    assert {"errin", "errout", "dropin", "dropout"} <= set(loopback)
    if record["tcp"] is None:
        assert record["tcp_note"]
    else:
        assert record["tcp"]["by_state"].get("listen", 0) >= 1
        assert record["tcp"]["by_state"].get("established", 0) >= 2
        assert sum(record["tcp"]["by_state"].values()) == record["tcp"]["total"]


def test_diskmond_once_reports_the_filesystem_holding_a_path(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"d" * 4096)
    missing = tmp_path / "missing"

    code, stdout, stderr = run_once(
        command("diskmond", "--once", "--path", str(tmp_path), "--path", str(missing))
    )

    assert (code, stderr) == (0, b"")
    record = only_line(stdout)
    assert_envelope(record, "diskmond")
    here, gone = record["filesystems"]
    assert here["path"] == str(tmp_path)
    assert here["mountpoint"] and here["fstype"]
    assert here["total_bytes"] > 0
    assert here["used_bytes"] + here["free_bytes"] <= here["total_bytes"]
    assert 0 <= here["used_percent"] <= 100
    assert gone["path"] == str(missing)
    assert gone["error"]


def test_diskmond_once_without_paths_reports_each_mount_once() -> None:
    code, stdout, stderr = run_once(command("diskmond", "--once"))

    assert (code, stderr) == (0, b"")
    record = only_line(stdout)
    mounts = [fs["mountpoint"] for fs in record["filesystems"]]
    assert len(mounts) == len(set(mounts))
    for fs in record["filesystems"]:
        assert "error" in fs or fs["total_bytes"] >= fs["used_bytes"]


# --- Running and stopping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "signum"),
    [
        pytest.param("procmond", signal.SIGTERM, id="procmond-sigterm"),
        pytest.param("netmond", signal.SIGTERM, id="netmond-sigterm"),
        pytest.param("diskmond", signal.SIGTERM, id="diskmond-sigterm"),
        pytest.param("procmond", signal.SIGINT, id="procmond-sigint"),
    ],
)
def test_samples_every_interval_and_stops_cleanly_on_a_signal(
    name: str, signum: signal.Signals
) -> None:
    with started(command(name, "--interval-seconds", "0.2")) as collector:
        first, second = collector.lines(2)
        collector.popen.send_signal(signum)
        code, stdout, stderr = collector.finish()

    assert code == 0
    assert stderr == b"", stderr.decode()
    assert_envelope(first, name)
    assert first["ts"] < second["ts"]
    # Whatever was written after the two lines is whole lines too: none cut short.
    assert stdout.endswith(b"\n")
    for line in stdout.splitlines():
        assert json.loads(line)["collector"] == name


def test_a_stop_signal_ends_the_wait_between_samples_at_once() -> None:
    with started(command("netmond", "--interval-seconds", "3600")) as collector:
        collector.lines(1)
        collector.popen.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        code, _, stderr = collector.finish(timeout=STOP_TIMEOUT_SECONDS)

    assert (code, stderr) == (0, b"")
    assert time.monotonic() - stopped_at < 2.0


def test_health_file_is_touched_while_sampling_and_removed_at_exit(tmp_path: Path) -> None:
    health = tmp_path / "health" / "procmond"
    health.parent.mkdir()
    health.write_bytes(b"")  # a leftover of an earlier run must not vouch for this one
    os.utime(health, (1, 1))
    probe = command("procmond", "--check-health-file", str(health), "--max-age-seconds", "10")

    with started(
        command("procmond", "--interval-seconds", "0.2", "--health-file", str(health))
    ) as c:
        c.lines(1)
        until(lambda: health.exists() and health.stat().st_mtime > 1, message="health file")
        first_touch = health.stat().st_mtime_ns
        until(lambda: health.stat().st_mtime_ns > first_touch, message="touched again")
        assert run_once(probe) == (0, b"", b"")
        c.popen.send_signal(signal.SIGTERM)
        code, _, stderr = c.finish()

    assert (code, stderr) == (0, b"")
    assert not health.exists()
    code, _, stderr = run_once(probe)
    assert code == 1
    assert stderr.count(b"\n") == 1 and b"does not exist" in stderr


def test_health_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    health = tmp_path / "procmond.health"
    health.write_bytes(b"")
    stale = time.time() - 120
    os.utime(health, (stale, stale))

    code, stdout, stderr = run_once(
        command("procmond", "--check-health-file", str(health), "--interval-seconds", "5")
    )

    assert code == 1
    assert stdout == b""
    assert stderr.count(b"\n") == 1 and b"15 s" in stderr  # default: 3 intervals


# --- Bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args"),
    [
        pytest.param("procmond", ["--interval-seconds", "0"], id="zero-interval"),
        pytest.param("netmond", ["--interval-seconds", "soon"], id="interval-not-a-number"),
        pytest.param("procmond", ["--top", "-1"], id="negative-top"),
        pytest.param("diskmond", ["--no-such-option"], id="unknown-option"),
        pytest.param("netmond", ["extra"], id="positional"),
        pytest.param("procmond", ["--max-age-seconds", "3"], id="max-age-without-check"),
        pytest.param("diskmond", ["--check-health-file", "x", "--once"], id="check-and-once"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(name: str, args: list[str]) -> None:
    code, stdout, stderr = run_once(command(name, *args))

    assert code == 2
    assert stdout == b""
    assert stderr.count(b"\n") == 1, stderr.decode()
    assert stderr.startswith(f"reconciler-{name}: error: ".encode())
    assert b"Traceback" not in stderr


def test_help_describes_the_options() -> None:
    code, stdout, stderr = run_once(command("diskmond", "--help"))

    assert (code, stderr) == (0, b"")
    assert b"--interval-seconds" in stdout and b"--path" in stdout


# --- The example specs ---------------------------------------------------------------------


def example_specs() -> list[tuple[str, CollectorSpec]]:
    return [
        (path.stem, parse_spec(path.read_bytes(), filename=str(path), collector_id=path.stem))
        for path in sorted(SPECS_DIR.glob("*.toml"))
    ]


def test_example_specs_parse() -> None:
    specs = dict(example_specs())

    assert set(specs) == set(COLLECTORS)
    for collector_id, spec in specs.items():
        assert spec.type == collector_id
        assert spec.binary_path == f"reconciler-{spec.type}"


def _limits(spec: CollectorSpec) -> Callable[[], None]:
    # The rlimit fallback of the process manager: the strictest way the limits apply.
    def apply() -> None:
        limits = spec.resource_limits
        if limits is not None and limits.memory_max_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_max_bytes,) * 2)
        if limits is not None and limits.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)

    return apply


@pytest.mark.parametrize("collector_id", COLLECTORS)
def test_example_spec_runs_its_collector_within_its_limits(
    collector_id: str, tmp_path: Path
) -> None:
    spec = dict(example_specs())[collector_id]
    assert spec.binary_path is not None

    code, stdout, stderr = run_once(
        command_for_binary(spec.binary_path, *spec.args, "--once"),
        cwd=tmp_path,
        env=spec.env,
        preexec_fn=_limits(spec),
    )

    assert (code, stderr) == (0, b"")
    assert only_line(stdout)["collector"] == spec.type


def test_example_health_check_passes_against_its_running_collector(tmp_path: Path) -> None:
    [(_, spec)] = [(i, s) for i, s in example_specs() if s.health_check is not None]
    assert spec.binary_path is not None and spec.health_check is not None
    assert spec.health_check.exec is not None
    health_file = tmp_path / spec.args[spec.args.index("--health-file") + 1]
    probe = command_for_binary(spec.health_check.exec[0], *spec.health_check.exec[1:])

    with started(
        command_for_binary(spec.binary_path, *spec.args), cwd=tmp_path, env=spec.env
    ) as collector:
        collector.lines(1)
        until(health_file.exists, message=f"{health_file} written")
        assert run_once(probe, cwd=tmp_path, env=spec.env) == (0, b"", b"")
        collector.popen.send_signal(signal.SIGTERM)
        code, _, stderr = collector.finish(timeout=(spec.graceful_timeout_seconds or 10))

    assert (code, stderr) == (0, b"")
