"""Spawning without Python between fork and exec: the set-up steps, seen from /proc.

Popen gets no ``preexec_fn``; the cgroup join, rlimits and user switch are
steps the child execs on its way in (reconciler/process/spawn.py). These
tests check that each step lands, that a spawn returns only once the
collector itself is exec'd, that a failed step is SPAWN_FAILED, and that
busy threads in the parent cannot hang a start.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import resource
import subprocess
import threading
from pathlib import Path

import pytest

from reconciler import CollectorProcessManager, ResourceLimits, SpawnFailed
from reconciler.process import spawn
from reconciler.process.cgroup import _unified_mount
from tests.conftest import collector, sh
from tests.support import eventually


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _limits(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {row[:26].strip(): row[26:47].strip() for row in rows}


def _cgroup(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip().rsplit(":", 1)[-1]


@pytest.fixture
def popen_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Every Popen the spawn code makes, with its keyword arguments."""
    calls: list[dict[str, object]] = []
    real = subprocess.Popen

    def recording(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        calls.append(dict(kwargs, argv=args[0]))
        return real(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(spawn.subprocess, "Popen", recording)
    return calls


async def test_no_python_runs_in_the_child_and_every_step_lands(
    manager: CollectorProcessManager, popen_calls: list[dict[str, object]]
) -> None:
    limits = ResourceLimits(open_files=77, core_dump=True)
    pid = await manager.start_collector(
        "a", "sleep", collector("/bin/sleep", "300", resource_limits=limits)
    )
    assert [call.get("preexec_fn") for call in popen_calls] == [None]
    # The spawn returned once the collector itself runs, not a set-up step.
    assert _cmdline(pid) == ["/bin/sleep", "300"]
    seen = _limits(pid)
    assert seen["Max open files"] == "77"
    assert seen["Max core file size"] == "unlimited"
    assert _limits(os.getpid())["Max open files"] != "77", "the manager's own limits changed"
    if manager.cgroup_tracking:
        assert _cgroup(pid) != _cgroup(os.getpid()), "the collector did not join its own cgroup"


@pytest.mark.skipif(os.geteuid() != 0, reason="run-as user needs root")
async def test_user_switch_comes_after_the_cgroup_join(
    manager: CollectorProcessManager, popen_calls: list[dict[str, object]]
) -> None:
    nobody = pwd.getpwnam("nobody")
    pid = await manager.start_collector(
        "a", "sh", sh("sleep 300 & exec sleep 301", user="nobody", group="nogroup")
    )
    assert [call.get("preexec_fn") for call in popen_calls] == [None]
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status if line.startswith("Gid:")).split()[1:]
    assert set(uids) == {str(nobody.pw_uid)}
    assert set(gids) == {str(grp.getgrnam("nogroup").gr_gid)}
    if not manager.cgroup_tracking:
        pytest.skip("no cgroup tracking here: the join cannot be seen")
    mount = _unified_mount()
    assert mount is not None
    procs = Path(mount) / _cgroup(pid).lstrip("/") / "cgroup.procs"
    # The background child was forked by the collector itself: it is inside too.
    await eventually(lambda: len(procs.read_text().split()) == 2)
    assert str(pid) in procs.read_text().split()


async def test_a_failed_set_up_step_is_spawn_failed(tmp_path: Path) -> None:
    request = spawn.LaunchRequest(
        collector_id="a",
        argv=["/bin/sleep", "300"],
        env={"PATH": spawn.DEFAULT_PATH},
        working_dir=None,
        identity=None,
        rlimits=[],
        cgroup_procs=str(tmp_path / "gone" / "cgroup.procs"),
        log_mode="file",
        log_path=tmp_path / "a.log",
    )
    with pytest.raises(SpawnFailed, match="setting up the child failed") as failed:
        await asyncio.to_thread(spawn.try_spawn, request)
    assert failed.value.code == "SPAWN_FAILED"
    assert "cannot join control group" in (tmp_path / "a.log").read_text()


def _join_request(procs: Path, argv: list[str], log: Path) -> spawn.LaunchRequest:
    return spawn.LaunchRequest(
        collector_id="a",
        argv=argv,
        env={"PATH": spawn.DEFAULT_PATH},
        working_dir=None,
        identity=None,
        rlimits=[],
        cgroup_procs=str(procs),
        log_mode="file",
        log_path=log,
    )


async def test_the_cgroup_step_hands_over_on_its_stdin_and_leaves_nothing_open(
    tmp_path: Path,
) -> None:
    """The shell step's end is EOF on a pipe (its stdin): the spawn returns at the exec.

    A plain file stands in for cgroup.procs: the step writes it as it would the
    real one. The pipe's ends are gone from the parent, and the collector's
    stdin is /dev/null, as without the step.
    """
    procs = tmp_path / "cgroup.procs"
    procs.touch()
    fds_before = set(os.listdir("/proc/self/fd"))
    popen = await asyncio.to_thread(
        spawn.try_spawn, _join_request(procs, ["/bin/sleep", "300"], tmp_path / "a.log")
    )
    assert popen is not None
    try:
        assert _cmdline(popen.pid) == ["/bin/sleep", "300"]
        assert os.readlink(f"/proc/{popen.pid}/fd/0") == "/dev/null"
        assert procs.read_text() == "0\n"
        assert set(os.listdir("/proc/self/fd")) <= fds_before
    finally:
        popen.kill()
        popen.wait()


async def test_the_cgroup_step_hands_over_past_descriptor_1024(tmp_path: Path) -> None:
    """A thousand collectors hold more than 1,024 descriptors (pidfds, logs): the step's
    pipe then lands past select's FD_SETSIZE, and a start must still work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}: cannot hold 1,100 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while len(held) < 1100 and (not held or held[-1] < 1100):
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        procs = tmp_path / "cgroup.procs"
        procs.touch()
        popen = await asyncio.to_thread(
            spawn.try_spawn, _join_request(procs, ["/bin/sleep", "300"], tmp_path / "a.log")
        )
        assert popen is not None
        try:
            assert _cmdline(popen.pid) == ["/bin/sleep", "300"]
        finally:
            popen.kill()
            popen.wait()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_start_that_breaks_after_the_fork_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forked: list[int] = []

    def broken(popen: subprocess.Popen[bytes], *_: object) -> None:
        forked.append(popen.pid)
        raise RuntimeError("broken after the fork")

    monkeypatch.setattr(spawn, "_await_exec", broken)
    procs = tmp_path / "cgroup.procs"
    procs.touch()
    with pytest.raises(RuntimeError, match="broken after the fork"):
        spawn.try_spawn(_join_request(procs, ["/bin/sleep", "300"], tmp_path / "a.log"))
    [pid] = forked
    assert not Path(f"/proc/{pid}").exists(), "the child was left running (or a zombie)"


async def test_a_collector_binary_the_cgroup_step_cannot_exec_is_spawn_failed(
    tmp_path: Path,
) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.touch()
    request = _join_request(procs, [str(tmp_path / "missing"), "1"], tmp_path / "a.log")
    with pytest.raises(SpawnFailed, match="setting up the child failed in sh"):
        await asyncio.to_thread(spawn.try_spawn, request)


@pytest.mark.parametrize("script", ["exit 3", "exec false"])
async def test_a_collector_that_exits_at_once_is_started_not_spawn_failed(
    manager: CollectorProcessManager, script: str
) -> None:
    """Its exit may come before the spawn sees its exec: it is still the collector's exit."""
    limits = ResourceLimits(open_files=64)
    await manager.start_collector(
        "a", "sh", sh(script, resource_limits=limits, auto_restart=False)
    )
    await eventually(lambda: manager.status("a").state.value in ("stopped", "failed"))
    status = manager.status("a")
    assert "setting up the child failed" not in str(status.last_error)
    assert status.last_exit_code == (3 if script == "exit 3" else 1)


async def test_each_run_starts_a_fresh_log_and_keeps_the_previous_one(
    manager: CollectorProcessManager,
) -> None:
    assert manager.log_dir is not None
    log = manager.log_dir / "a.log"
    config = sh('echo "run $$"; exec sleep 300', log="file")
    first = await manager.start_collector("a", "sh", config)
    await eventually(lambda: log.exists() and log.read_text().strip())
    second = await manager.restart_collector("a")
    await eventually(lambda: log.exists() and log.read_text().strip())
    assert log.read_text().split() == ["run", str(second)]
    assert spawn.previous_log(log).read_text().split() == ["run", str(first)]


@pytest.mark.timeout(120)
async def test_starts_never_hang_while_other_threads_hold_locks(
    manager: CollectorProcessManager,
) -> None:
    """The deadlock preexec_fn invites: another thread holds a lock (here the
    logging module's and the allocator's, busily) at the moment of fork.
    With no Python in the child, every start reaches its exec."""
    stop = threading.Event()
    logger = logging.getLogger("reconciler.test.churn")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False

    def churn() -> None:
        while not stop.is_set():
            logger.warning("churn %s", [object() for _ in range(200)])

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    limits = ResourceLimits(open_files=64)
    try:
        for round_ in range(3):
            ids = [f"c{round_}-{i}" for i in range(15)]
            pids = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        manager.start_collector(
                            i, "sleep", collector("/bin/sleep", "300", resource_limits=limits)
                        )
                        for i in ids
                    )
                ),
                timeout=60,
            )
            assert all(_cmdline(pid) == ["/bin/sleep", "300"] for pid in pids)
            await asyncio.gather(*(manager.stop_collector(i) for i in ids))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
