"""Process manager features beyond DaemonEye's suite: limits, environment,
identity, health probes, subreaping, tracking without cgroups, busy binaries."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
from pathlib import Path

import pytest
from aiohttp import web

from reconciler import (
    CollectorProcessManager,
    CollectorState,
    HealthCheck,
    HealthStatus,
    ProcessManagerConfig,
    ResourceLimits,
    SpawnFailed,
)
from tests.conftest import collector, sh
from tests.support import alive, eventually


def _limits(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {row[:26].strip(): row[26:47].strip() for row in rows}


async def test_rlimits_are_seen_by_the_child(manager: CollectorProcessManager) -> None:
    limits = ResourceLimits(open_files=123, memory_max_bytes=512 * 1024 * 1024, processes=77)
    pid = await manager.start_collector(
        "a", "sleep", collector("/bin/sleep", "300", resource_limits=limits)
    )
    seen = _limits(pid)
    assert seen["Max open files"] == "123"
    if manager.cgroup_tracking and "memory" in manager.driver._tree.controllers:  # type: ignore[attr-defined]
        pytest.fail("this machine enforces memory by cgroup; check memory.max instead")
    assert seen["Max address space"] == str(512 * 1024 * 1024)
    assert seen["Max processes"] == "77"
    assert _limits(os.getpid())["Max open files"] != "123", "the manager's own limits changed"


async def test_open_files_limit_is_enforced(manager: CollectorProcessManager) -> None:
    assert manager.log_dir is not None
    out = manager.log_dir / "a.log"
    await manager.start_collector(
        "a",
        "sh",
        sh(
            # A failed redirection on `exec` ends the shell: try it in a subshell.
            "(exec 3</dev/null 4</dev/null 5</dev/null 6</dev/null) 2>/dev/null"
            # Report on stdout: a redirection to a file would need a sixth fd.
            " && echo opened || echo refused",
            log="file",
            resource_limits=ResourceLimits(open_files=5),
            auto_restart=False,
        ),
    )
    await eventually(lambda: out.exists() and out.read_text().strip())
    assert out.read_text().strip() == "refused"


async def test_environment_is_minimal_base_plus_spec(
    manager: CollectorProcessManager, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_OF_THE_RECONCILER", "do-not-leak")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "UTC")
    out = tmp_path / "env"
    await manager.start_collector(
        "a",
        "sh",
        sh(f"env > {out}; exec sleep 300", env={"RUST_LOG": "info", "TZ": "Europe/Berlin"}),
    )
    await eventually(lambda: out.exists() and "RUST_LOG" in out.read_text())
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["RUST_LOG"] == "info"
    assert env["TZ"] == "Europe/Berlin", "the spec's env wins over the inherited base"
    assert env["LC_TIME"] == "C"
    assert env["RECONCILER_COLLECTOR_ID"] == "a"
    assert "PATH" in env
    assert "SECRET_OF_THE_RECONCILER" not in env
    assert "PYTEST_CURRENT_TEST" not in env


@pytest.mark.skipif(os.geteuid() != 0, reason="run-as user needs root")
async def test_run_as_user_and_group(manager: CollectorProcessManager, tmp_path) -> None:
    nobody = pwd.getpwnam("nobody")
    log_dir = manager.log_dir
    assert log_dir is not None
    pid = await manager.start_collector(
        "a", "sleep", collector("/bin/sleep", "300", user="nobody", group="nogroup", log="file")
    )
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
    assert set(uids) == {str(nobody.pw_uid)}
    assert set(gids) == {str(nobody.pw_gid)}
    # The log file is opened by the manager, so the unprivileged child can write it.
    out = log_dir / "b.log"
    await manager.start_collector(
        "b", "sh", sh("echo $HOME $USER; exec sleep 300", user="nobody", log="file")
    )
    await eventually(lambda: out.exists() and out.read_text().strip())
    assert out.read_text().split() == [nobody.pw_dir, "nobody"]


@pytest.mark.skipif(os.geteuid() != 0, reason="run-as user needs root")
async def test_unknown_user_is_spawn_failed(manager: CollectorProcessManager) -> None:
    with pytest.raises(SpawnFailed, match="user 'no-such-user' does not exist"):
        await manager.start_collector(
            "a", "sleep", collector("/bin/sleep", "1", user="no-such-user")
        )


async def test_exec_probe_failures_make_it_unhealthy_and_restart(
    manager: CollectorProcessManager, tmp_path
) -> None:
    flag = tmp_path / "healthy"
    flag.touch()
    check = HealthCheck(exec=["test", "-e", str(flag)], interval_seconds=0.05, failure_threshold=2)
    first = await manager.start_collector(
        "a", "sleep", collector("/bin/sleep", "300", health_check=check)
    )
    assert await manager.check_collector_health("a") == HealthStatus.UNKNOWN
    await eventually(lambda: manager.status("a").health == HealthStatus.HEALTHY)
    flag.unlink()
    await eventually(lambda: manager.status("a").pid not in (None, first), timeout=10)
    status = manager.status("a")
    assert status.restart_count == 1
    assert status.last_error is not None and status.last_error.startswith("unhealthy")
    assert not alive(first)
    flag.touch()
    await eventually(lambda: manager.status("a").health == HealthStatus.HEALTHY)


async def test_probe_below_threshold_is_degraded(manager: CollectorProcessManager) -> None:
    check = HealthCheck(exec=["false"], interval_seconds=0.05, failure_threshold=1000)
    await manager.start_collector("a", "sleep", collector("/bin/sleep", "300", health_check=check))
    await eventually(lambda: manager.status("a").probe_failures >= 1)
    assert await manager.check_collector_health("a") == HealthStatus.DEGRADED


async def test_probe_reaching_threshold_without_auto_restart_is_unhealthy(
    manager: CollectorProcessManager,
) -> None:
    check = HealthCheck(exec=["false"], interval_seconds=0.05, failure_threshold=2)
    pid = await manager.start_collector(
        "a", "sleep", collector("/bin/sleep", "300", health_check=check, auto_restart=False)
    )
    await eventually(lambda: manager.status("a").health == HealthStatus.UNHEALTHY)
    assert manager.status("a").pid == pid and alive(pid)


async def test_exec_probe_timeout_kills_the_probe(manager: CollectorProcessManager) -> None:
    check = HealthCheck(
        exec=["sleep", "300"], interval_seconds=0.05, timeout_seconds=0.1, failure_threshold=100
    )
    await manager.start_collector("a", "sleep", collector("/bin/sleep", "300", health_check=check))
    await eventually(lambda: manager.status("a").probe_failures >= 2)
    messages = [e.message for e in manager.recorder.events if e.kind == "probe"]  # type: ignore[attr-defined]
    assert any("timed out after 0.1 s" in m for m in messages)


async def test_tcp_probe(manager: CollectorProcessManager) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    check = HealthCheck(tcp=f"127.0.0.1:{port}", interval_seconds=0.05, failure_threshold=100)
    try:
        await manager.start_collector(
            "a", "sleep", collector("/bin/sleep", "300", health_check=check)
        )
        await eventually(lambda: manager.status("a").health == HealthStatus.HEALTHY)
    finally:
        listener.close()
    await eventually(lambda: manager.status("a").probe_failures >= 1)
    assert manager.status("a").health == HealthStatus.DEGRADED


async def test_http_probe(manager: CollectorProcessManager) -> None:
    status_code = {"value": 200}

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(status=status_code["value"])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    check = HealthCheck(
        http=f"http://127.0.0.1:{port}/healthz", interval_seconds=0.05, failure_threshold=100
    )
    try:
        await manager.start_collector(
            "a", "sleep", collector("/bin/sleep", "300", health_check=check)
        )
        await eventually(lambda: manager.status("a").health == HealthStatus.HEALTHY)
        status_code["value"] = 503
        await eventually(lambda: manager.status("a").health == HealthStatus.DEGRADED)
        messages = [e.message for e in manager.recorder.events if e.kind == "probe"]  # type: ignore[attr-defined]
        assert any("HTTP 503" in m for m in messages)
    finally:
        await manager.stop_collector("a")
        await runner.cleanup()


async def test_without_cgroups_the_group_and_session_are_still_killed(
    pm_config: ProcessManagerConfig,
) -> None:
    manager = CollectorProcessManager(pm_config, cgroups=False)
    try:
        await manager.start_collector(
            "a", "sh", sh("sleep 300 & (sh -c 'sleep 300' &); trap '' TERM; wait")
        )
        assert not manager.cgroup_tracking
        await eventually(lambda: len(manager.tree_pids("a")) >= 3)
        tree = manager.tree_pids("a")
        await manager.stop_collector("a", timeout=0.2)
        for pid in tree:
            await eventually(lambda pid=pid: not alive(pid), message=f"pid {pid} survived")
    finally:
        await manager.shutdown_all()


async def _start_with_an_orphan(manager: CollectorProcessManager, pidfile: Path) -> int:
    """Start collector "a", which leaves a background child behind: that child's pid."""
    await manager.start_collector(
        "a", "sh", sh(f"(sh -c 'echo $$ > {pidfile}; exec sleep 300' &); exec sleep 300")
    )
    await eventually(lambda: pidfile.exists() and pidfile.read_text().strip())
    return int(pidfile.read_text())


async def test_subreaper_reaps_orphaned_descendants(
    pm_config: ProcessManagerConfig, tmp_path
) -> None:
    manager = CollectorProcessManager(pm_config, child_subreaper=True)
    try:
        orphan = await _start_with_an_orphan(manager, tmp_path / "orphan.pid")
        # Its parent subshell exited at once: the orphan is now ours, not init's.
        await eventually(
            lambda: (
                Path(f"/proc/{orphan}/stat").read_text().split(")")[1].split()[1]
                == str(os.getpid())
            )
        )
        os.kill(orphan, signal.SIGKILL)
        await eventually(
            lambda: not Path(f"/proc/{orphan}").exists(),
            message="the orphan was not reaped (zombie left behind)",
        )
        assert manager.status("a").state == CollectorState.RUNNING
    finally:
        await manager.shutdown_all()


async def test_a_flood_of_sigchld_prints_no_wakeup_fd_warnings_and_reaping_goes_on(
    pm_config: ProcessManagerConfig, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of SIGCHLD while the loop is busy (a fleet stopped at once) fill the
    loop's wakeup fd: no "Exception ignored ... signal wakeup fd" per signal, and the
    next SIGCHLD still reaps an orphan."""
    reported: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)
    manager = CollectorProcessManager(pm_config, child_subreaper=True)
    try:
        orphan = await _start_with_an_orphan(manager, tmp_path / "orphan.pid")
        for _ in range(5000):  # the loop does not run between these: its buffer fills
            os.kill(os.getpid(), signal.SIGCHLD)
        await asyncio.sleep(0)
        assert reported == []
        os.kill(orphan, signal.SIGKILL)
        await eventually(
            lambda: not Path(f"/proc/{orphan}").exists(),
            message="the orphan was not reaped (zombie left behind)",
        )
    finally:
        await manager.shutdown_all()


async def test_busy_binary_is_retried(manager: CollectorProcessManager, tmp_path) -> None:
    binary = tmp_path / "collector"
    shutil.copy("/bin/sleep", binary)
    writer = open(binary, "r+b")
    try:
        start = asyncio.create_task(
            manager.start_collector("a", "x", collector(str(binary), "300"))
        )
        await eventually(
            lambda: (
                manager.status("a").state == CollectorState.STARTING
                if "a" in manager.collector_ids()
                else False
            )
        )
    finally:
        writer.close()
    pid = await start
    assert alive(pid)
