"""The process manager against real processes and real signals.

Covers every category of DaemonEye's CollectorProcessManager suite (start,
graceful and force stop, restart, pause/resume, already running, not found,
invalid binary, health, status, auto-restart, max restarts, concurrency,
stubborn processes, shutdown_all) plus what DaemonEye lacked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from reconciler import (
    AlreadyRunning,
    CollectorProcessManager,
    CollectorState,
    HealthStatus,
    InvalidState,
    ProcessManagerConfig,
    ProcessNotFound,
    SpawnFailed,
)
from tests.conftest import collector, sh
from tests.support import alive, eventually, kernel_state

SLEEPER = ("/bin/sleep", "300")
STUBBORN = "trap '' TERM; while :; do sleep 0.05; done"


async def settled(manager: CollectorProcessManager, collector_id: str, processes: int = 2) -> None:
    """Wait until the shell has forked its child: by then its traps are set."""
    await eventually(lambda: len(manager.tree_pids(collector_id)) >= processes)


async def test_start_reports_a_running_process(manager: CollectorProcessManager) -> None:
    pid = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    status = await manager.get_collector_status("a")
    assert status.pid == pid and alive(pid)
    assert status.state == CollectorState.RUNNING
    assert status.restart_count == 0
    assert status.uptime_seconds >= 0
    assert status.start_time is not None and abs(status.start_time - time.time()) < 5


async def test_each_collector_gets_its_own_session_and_null_stdin(
    manager: CollectorProcessManager,
) -> None:
    pid = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"


async def test_graceful_stop_returns_the_exit_code(manager: CollectorProcessManager) -> None:
    pid = await manager.start_collector("a", "sh", sh("trap 'exit 7' TERM; sleep 300 & wait"))
    await settled(manager, "a")
    code = await manager.stop_collector("a", graceful=True)
    assert code == 7
    assert not alive(pid)
    status = await manager.get_collector_status("a")
    assert status.state == CollectorState.STOPPED and status.pid is None
    assert status.last_exit_code == 7


async def test_stop_uses_the_spec_stop_signal(manager: CollectorProcessManager) -> None:
    await manager.start_collector(
        "a", "sh", sh("trap 'exit 3' INT; trap '' TERM; sleep 300 & wait", stop_signal="SIGINT")
    )
    await settled(manager, "a")
    assert await manager.stop_collector("a") == 3


async def test_force_stop_kills_at_once(manager: CollectorProcessManager) -> None:
    pid = await manager.start_collector("a", "sh", sh(STUBBORN, graceful_timeout_seconds=30))
    await settled(manager, "a")
    started = time.monotonic()
    code = await manager.stop_collector("a", graceful=False)
    assert code == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert not alive(pid)


async def test_stubborn_collector_is_killed_after_the_graceful_timeout(
    manager: CollectorProcessManager,
) -> None:
    await manager.start_collector("a", "sh", sh(STUBBORN))
    await settled(manager, "a")
    started = time.monotonic()
    code = await manager.stop_collector("a", graceful=True, timeout=0.3)
    elapsed = time.monotonic() - started
    assert code == -signal.SIGKILL
    assert 0.3 <= elapsed < 3
    assert manager.recorder.kinds("a")[-1] == "stopped"  # type: ignore[attr-defined]


async def test_forced_stop_escalates_a_graceful_stop_under_way(
    manager: CollectorProcessManager,
) -> None:
    await manager.start_collector("a", "sh", sh(STUBBORN, graceful_timeout_seconds=30))
    await settled(manager, "a")
    graceful = asyncio.create_task(manager.stop_collector("a", graceful=True))
    await eventually(lambda: manager.status("a").state == CollectorState.STOPPING)
    started = time.monotonic()
    forced = await manager.stop_collector("a", graceful=False)
    assert time.monotonic() - started < 5, "the forced stop waited for the graceful one"
    assert await graceful == -signal.SIGKILL
    assert forced is None or forced == -signal.SIGKILL
    assert manager.status("a").state == CollectorState.STOPPED


async def test_restart_gives_a_new_pid_and_counts(manager: CollectorProcessManager) -> None:
    old = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    new = await manager.restart_collector("a")
    assert new != old and alive(new) and not alive(old)
    status = await manager.get_collector_status("a")
    assert status.restart_count == 1 and status.pid == new
    assert status.state == CollectorState.RUNNING


async def test_pause_and_resume_are_confirmed_by_the_kernel(
    manager: CollectorProcessManager,
) -> None:
    pid = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    await manager.pause_collector("a")
    assert kernel_state(pid) == "T"
    assert manager.status("a").state == CollectorState.PAUSED
    assert await manager.check_collector_health("a") == HealthStatus.HEALTHY
    await manager.resume_collector("a")
    assert kernel_state(pid) in ("S", "R")
    assert manager.status("a").state == CollectorState.RUNNING


async def test_pause_stops_the_whole_tree(manager: CollectorProcessManager) -> None:
    await manager.start_collector("a", "sh", sh("sleep 300 & sleep 300 & wait"))
    await eventually(lambda: len(manager.tree_pids("a")) == 3)
    await manager.pause_collector("a")
    assert all(kernel_state(pid) == "T" for pid in manager.tree_pids("a"))
    await manager.resume_collector("a")
    assert all(kernel_state(pid) != "T" for pid in manager.tree_pids("a"))


async def test_pause_and_resume_where_they_do_not_apply(
    manager: CollectorProcessManager,
) -> None:
    await manager.start_collector("a", "sleep", collector(*SLEEPER))
    await manager.stop_collector("a")
    for operation in (manager.pause_collector, manager.resume_collector):
        with pytest.raises(InvalidState) as exc:
            await operation("a")
        assert exc.value.code == "INVALID_STATE" and "it is stopped" in exc.value.message


async def test_pause_of_a_paused_and_resume_of_a_running_collector_are_invalid(
    manager: CollectorProcessManager,
) -> None:
    """The seed's own example of INVALID_STATE: "resume when not paused"."""
    pid = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    with pytest.raises(InvalidState, match="cannot resume collector 'a': it is running"):
        await manager.resume_collector("a")
    await manager.pause_collector("a")
    with pytest.raises(InvalidState, match="cannot pause collector 'a': it is paused"):
        await manager.pause_collector("a")
    assert kernel_state(pid) == "T"


async def test_stop_of_a_paused_collector_lets_it_act_on_the_signal(
    manager: CollectorProcessManager,
) -> None:
    pid = await manager.start_collector("a", "sh", sh("trap 'exit 5' TERM; sleep 300 & wait"))
    await settled(manager, "a")
    await manager.pause_collector("a")
    started = time.monotonic()
    assert await manager.stop_collector("a") == 5, "it was killed, not stopped gracefully"
    assert time.monotonic() - started < 2
    assert not alive(pid)


async def test_start_twice_is_already_running(manager: CollectorProcessManager) -> None:
    await manager.start_collector("a", "sleep", collector(*SLEEPER))
    with pytest.raises(AlreadyRunning) as exc:
        await manager.start_collector("a", "sleep", collector(*SLEEPER))
    assert exc.value.code == "ALREADY_RUNNING" and exc.value.http_status == 409


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda m: m.stop_collector("nope"), id="stop"),
        pytest.param(lambda m: m.restart_collector("nope"), id="restart"),
        pytest.param(lambda m: m.pause_collector("nope"), id="pause"),
        pytest.param(lambda m: m.resume_collector("nope"), id="resume"),
        pytest.param(lambda m: m.get_collector_status("nope"), id="status"),
        pytest.param(lambda m: m.check_collector_health("nope"), id="health"),
    ],
)
async def test_unknown_collector_is_not_found(manager: CollectorProcessManager, operation) -> None:
    with pytest.raises(ProcessNotFound) as exc:
        await operation(manager)
    assert exc.value.code == "PROCESS_NOT_FOUND" and "nope" in exc.value.message


@pytest.mark.parametrize(
    ("binary", "reason"),
    [
        pytest.param("/nonexistent/collector", "not found", id="missing"),
        pytest.param("PLAIN_FILE", "not executable", id="not-executable"),
        pytest.param("/etc", "not a regular file", id="directory"),
        pytest.param("no-such-collector-binary", "not found on PATH", id="bare-name"),
    ],
)
async def test_invalid_binary_fails_that_collector_only(
    manager: CollectorProcessManager, binary: str, reason: str, tmp_path
) -> None:
    if binary == "PLAIN_FILE":
        binary = str(tmp_path / "plain")
        (tmp_path / "plain").write_text("#!/bin/sh\n")
        os.chmod(binary, 0o644)
    other = await manager.start_collector("ok", "sleep", collector(*SLEEPER))
    with pytest.raises(SpawnFailed) as exc:
        await manager.start_collector("bad", "x", collector(binary))
    assert exc.value.code == "SPAWN_FAILED"
    assert reason in exc.value.message and binary.lstrip("/").split("/")[-1] in exc.value.message
    # Retried under the restart policy (initial 0.2 s, max_restarts 3), then failed.
    await eventually(lambda: manager.status("bad").state == CollectorState.FAILED, timeout=10)
    status = manager.status("bad")
    assert reason in (status.last_error or "") and "max_restarts = 3" in (status.last_error or "")
    assert status.restart_count == 3 and status.pid is None
    assert await manager.check_collector_health("bad") == HealthStatus.UNHEALTHY
    assert manager.status("ok").pid == other and alive(other)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"max_restarts": 0}, id="max-restarts-0"),
        pytest.param({"auto_restart": False}, id="auto-restart-off"),
    ],
)
async def test_a_failed_first_start_without_retries_fails_at_once(
    manager: CollectorProcessManager, overrides
) -> None:
    with pytest.raises(SpawnFailed):
        await manager.start_collector("bad", "x", collector("/nonexistent/bin", **overrides))
    status = manager.status("bad")
    assert status.state == CollectorState.FAILED and status.restart_count == 0


async def test_a_binary_deployed_after_its_spec_starts_on_a_retry(
    manager: CollectorProcessManager, tmp_path
) -> None:
    """An Ansible play that pushes the spec before the package lands."""
    binary = tmp_path / "late-collector"
    with pytest.raises(SpawnFailed, match="not found"):
        await manager.start_collector(
            "late", "x", collector(str(binary), "300", restart_backoff_initial_seconds=0.5)
        )
    assert manager.status("late").state == CollectorState.BACKOFF
    assert manager.status("late").health == HealthStatus.DEGRADED
    os.symlink("/bin/sleep", binary)
    await eventually(lambda: manager.status("late").state == CollectorState.RUNNING, timeout=10)
    assert alive(manager.status("late").pid or 0)


async def test_binary_resolution_uses_the_configured_binaries(
    pm_config: ProcessManagerConfig, tmp_path
) -> None:
    config = pm_config.model_copy(update={"collector_binaries": {"napper": "/bin/sleep"}})
    manager = CollectorProcessManager(config)
    try:
        pid = await manager.start_collector(
            "a", "napper", collector("x").model_copy(update={"binary_path": None, "args": ("300",)})
        )
        assert os.readlink(f"/proc/{pid}/exe").endswith("sleep")
    finally:
        await manager.shutdown_all()


async def test_working_dir_that_does_not_exist_is_spawn_failed(
    manager: CollectorProcessManager,
) -> None:
    with pytest.raises(SpawnFailed, match="working_dir"):
        await manager.start_collector("a", "sleep", collector(*SLEEPER, working_dir="/nope/x"))


async def test_crash_restarts_at_once(manager: CollectorProcessManager) -> None:
    pid = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: manager.status("a").pid not in (None, pid))
    status = manager.status("a")
    assert status.state == CollectorState.RUNNING
    assert status.restart_count == 1 and status.consecutive_restarts == 1
    assert status.last_exit_code == -signal.SIGKILL
    assert status.last_error == "killed by SIGKILL"


async def test_exit_code_is_recorded(manager: CollectorProcessManager) -> None:
    await manager.start_collector("a", "sh", sh("exit 42", auto_restart=False))
    await eventually(lambda: manager.status("a").state == CollectorState.FAILED)
    status = manager.status("a")
    assert status.last_exit_code == 42 and status.last_error == "exited with code 42"


async def test_auto_restart_disabled_leaves_it_down(manager: CollectorProcessManager) -> None:
    pid = await manager.start_collector("a", "sleep", collector(*SLEEPER, auto_restart=False))
    os.kill(pid, signal.SIGTERM)
    await eventually(lambda: manager.status("a").state == CollectorState.FAILED)
    status = manager.status("a")
    assert status.pid is None and status.restart_count == 0
    assert status.last_exit_code == -signal.SIGTERM


async def test_clean_exit_without_auto_restart_is_stopped(manager: CollectorProcessManager) -> None:
    await manager.start_collector("a", "true", collector("/bin/true", auto_restart=False))
    await eventually(lambda: manager.status("a").state == CollectorState.STOPPED)
    assert manager.status("a").last_exit_code == 0


async def test_backoff_state_is_visible_with_its_delay(manager: CollectorProcessManager) -> None:
    await manager.start_collector(
        "a", "sh", sh("exit 1", restart_backoff_initial_seconds=5, restart_backoff_max_seconds=10)
    )
    await eventually(lambda: manager.status("a").state == CollectorState.BACKOFF)
    status = manager.status("a")
    assert 4.0 < status.backoff_seconds <= 5.0
    assert status.health == HealthStatus.DEGRADED
    assert await manager.stop_collector("a") is None
    assert manager.status("a").state == CollectorState.STOPPED
    assert manager.status("a").backoff_seconds == 0


async def test_max_restarts_reached_is_failed_and_stays_visible(
    manager: CollectorProcessManager,
) -> None:
    await manager.start_collector("a", "sh", sh("exit 3", max_restarts=2))
    await eventually(lambda: manager.status("a").state == CollectorState.FAILED, timeout=10)
    status = manager.status("a")
    assert status.restart_count == 2 and status.pid is None
    assert status.last_exit_code == 3
    assert "max_restarts = 2" in (status.last_error or "")
    assert "a" in manager.collector_ids()
    assert await manager.check_collector_health("a") == HealthStatus.UNHEALTHY
    # An operator restart brings it back and starts a new series.
    pid = await manager.restart_collector("a")
    assert pid > 0 and manager.status("a").restart_count == 3


async def test_stable_run_ends_the_crash_series(
    pm_config: ProcessManagerConfig,
) -> None:
    manager = CollectorProcessManager(pm_config.model_copy(update={"restart_reset_seconds": 0.3}))
    try:
        pid = await manager.start_collector("a", "sleep", collector(*SLEEPER, max_restarts=1))
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: manager.status("a").pid not in (None, pid))
        second = manager.status("a").pid
        assert second is not None
        await eventually(lambda: manager.status("a").uptime_seconds > 0.35)
        os.kill(second, signal.SIGKILL)
        await eventually(lambda: manager.status("a").pid not in (None, second))
        status = manager.status("a")
        assert status.state == CollectorState.RUNNING, "the stable run should reset the series"
        assert status.restart_count == 2 and status.consecutive_restarts == 1
    finally:
        await manager.shutdown_all()


async def test_unlimited_restarts_never_give_up(manager: CollectorProcessManager) -> None:
    await manager.start_collector(
        "a",
        "sh",
        sh(
            "exit 1",
            max_restarts="unlimited",
            restart_backoff_max_seconds=0.05,
            restart_backoff_initial_seconds=0.01,
        ),
    )
    await eventually(lambda: manager.status("a").restart_count >= 8, timeout=10)
    assert manager.status("a").state != CollectorState.FAILED


async def test_grandchildren_do_not_outlive_their_collector(
    manager: CollectorProcessManager, tmp_path
) -> None:
    pidfile = tmp_path / "escapee.pid"
    script = (
        "sleep 300 & "
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' & "
        "(sh -c 'sleep 300' &) ; "
        "trap '' TERM; wait"
    )
    await manager.start_collector("a", "sh", sh(script))
    await eventually(lambda: pidfile.exists() and pidfile.read_text().strip())
    escapee = int(pidfile.read_text())
    assert os.getsid(escapee) == escapee, "the escapee left the collector's session"
    await eventually(lambda: len(manager.tree_pids("a")) >= 4)
    tree = manager.tree_pids("a")
    await manager.stop_collector("a", timeout=0.2)
    for pid in [*tree, escapee]:
        await eventually(lambda pid=pid: not alive(pid), message=f"pid {pid} survived")


async def test_grandchildren_of_a_crashed_collector_are_killed(
    manager: CollectorProcessManager,
) -> None:
    await manager.start_collector("a", "sh", sh("sleep 300 & exec sleep 301", auto_restart=False))
    await eventually(lambda: len(manager.tree_pids("a")) == 2)
    child, main = manager.tree_pids("a")[0], manager.status("a").pid
    assert main is not None
    os.kill(main, signal.SIGKILL)
    await eventually(lambda: manager.status("a").state == CollectorState.FAILED)
    await eventually(lambda: not alive(child), message="the crashed collector's child survived")


async def test_concurrent_starts_start_exactly_one(manager: CollectorProcessManager) -> None:
    results = await asyncio.gather(
        *(manager.start_collector("a", "sleep", collector(*SLEEPER)) for _ in range(10)),
        return_exceptions=True,
    )
    pids = [r for r in results if isinstance(r, int)]
    assert len(pids) == 1
    assert all(isinstance(r, AlreadyRunning) for r in results if not isinstance(r, int))
    assert manager.tree_pids("a") == pids


async def test_concurrent_start_and_stop_end_consistent(manager: CollectorProcessManager) -> None:
    for _ in range(5):
        start = asyncio.create_task(manager.start_collector("a", "sleep", collector(*SLEEPER)))
        stop = (
            asyncio.create_task(manager.stop_collector("a"))
            if "a" in manager.collector_ids()
            else None
        )
        await start
        if stop is not None:
            await stop
        status = manager.status("a")
        if status.state == CollectorState.RUNNING:
            assert status.pid is not None and alive(status.pid)
            await manager.stop_collector("a")
        assert manager.status("a").state == CollectorState.STOPPED
        assert manager.tree_pids("a") == []


async def test_concurrent_restarts_are_serialised(manager: CollectorProcessManager) -> None:
    first = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    pids = await asyncio.gather(*(manager.restart_collector("a") for _ in range(5)))
    assert len(set(pids)) == 5 and first not in pids
    status = manager.status("a")
    assert (status.restart_count == 5 and status.pid == pids[-1]) or status.pid in pids
    assert [p for p in [first, *pids] if alive(p)] == [status.pid]


async def test_operations_on_different_collectors_run_concurrently(
    manager: CollectorProcessManager,
) -> None:
    await manager.start_collector("slow", "sh", sh(STUBBORN, graceful_timeout_seconds=3))
    await settled(manager, "slow")
    slow_stop = asyncio.create_task(manager.stop_collector("slow"))
    await eventually(lambda: manager.status("slow").state == CollectorState.STOPPING)
    started = time.monotonic()
    await manager.start_collector("fast", "sleep", collector(*SLEEPER))
    await manager.restart_collector("fast")
    assert time.monotonic() - started < 1.5, "another collector's slow stop held this one up"
    await manager.stop_collector("slow", graceful=False)
    await slow_stop


async def test_shutdown_all_stops_stubborn_collectors_concurrently(
    pm_config: ProcessManagerConfig,
) -> None:
    manager = CollectorProcessManager(
        pm_config.model_copy(update={"default_graceful_timeout_seconds": 1.0})
    )
    pids = [await manager.start_collector(f"c{i}", "sh", sh(STUBBORN)) for i in range(20)]
    for i in range(20):
        await settled(manager, f"c{i}")
    started = time.monotonic()
    await manager.shutdown_all()
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4.0, (
        f"20 stubborn collectors took {elapsed:.1f} s (serial would be 20 s)"
    )
    assert not any(alive(pid) for pid in pids)
    assert all(manager.status(f"c{i}").state == CollectorState.STOPPED for i in range(20))


async def test_start_after_stop_reuses_the_record(manager: CollectorProcessManager) -> None:
    await manager.start_collector("a", "sleep", collector(*SLEEPER))
    await manager.stop_collector("a")
    pid = await manager.start_collector("a", "sleep", collector(*SLEEPER))
    assert manager.status("a").pid == pid and manager.status("a").restart_count == 0


async def test_forget_drops_a_stopped_collector(manager: CollectorProcessManager) -> None:
    await manager.start_collector("a", "sleep", collector(*SLEEPER))
    with pytest.raises(InvalidState):
        await manager.forget_collector("a")
    await manager.stop_collector("a")
    await manager.forget_collector("a")
    with pytest.raises(ProcessNotFound):
        manager.status("a")


async def test_log_file_receives_stdout_and_stderr(manager: CollectorProcessManager) -> None:
    await manager.start_collector(
        "a", "sh", sh("echo out; echo err >&2; exec sleep 300", log="file")
    )
    log_file = manager.log_dir / "a.log"  # type: ignore[operator]
    await eventually(lambda: log_file.exists() and "err" in log_file.read_text())
    assert log_file.read_text().split() == ["out", "err"]


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroups", "process-groups"])
async def test_all_tree_pids_matches_tree_pids(pm_config: ProcessManagerConfig, cgroups) -> None:
    manager = CollectorProcessManager(pm_config, cgroups=cgroups)
    try:
        await manager.start_collector("a", "sh", sh("sleep 300 & sleep 300 & wait"))
        await manager.start_collector("b", "sleep", collector(*SLEEPER))
        await eventually(lambda: len(manager.tree_pids("a")) == 3)
        assert manager.all_tree_pids() == {cid: manager.tree_pids(cid) for cid in ("a", "b")}
    finally:
        await manager.shutdown_all()
