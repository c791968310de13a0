"""Fixtures shared by every test: a process manager that always cleans up,
and a session-wide check that the run leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import CollectorConfig, CollectorProcessManager, ManagerEvent, ProcessManagerConfig
from reconciler.process.cgroup import _unified_mount
from tests.support import DAEMON_TREES, MARK_ENV, SESSION_MARK, marked_pids


def collector(*argv: str, **overrides: Any) -> CollectorConfig:
    """A collector config for tests: argv[0] is the binary; marked for leak checks."""
    env = {MARK_ENV: SESSION_MARK, **overrides.pop("env", {})}
    return CollectorConfig(
        binary_path=argv[0],
        args=tuple(argv[1:]),
        env=env,
        log=overrides.pop("log", "null"),
        **overrides,
    )


def sh(script: str, **overrides: Any) -> CollectorConfig:
    return collector("/bin/sh", "-c", script, **overrides)


class Recorder:
    """Collects manager events, for assertions on what happened and in which order."""

    def __init__(self) -> None:
        self.events: list[ManagerEvent] = []

    def __call__(self, event: ManagerEvent) -> None:
        self.events.append(event)

    def kinds(self, collector_id: str) -> list[str]:
        return [e.kind for e in self.events if e.collector_id == collector_id]


def _kill_marked() -> list[int]:
    pids = marked_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@pytest.fixture
def pm_config() -> ProcessManagerConfig:
    return ProcessManagerConfig(
        default_graceful_timeout_seconds=2.0,
        default_force_timeout_seconds=2.0,
        restart_backoff_initial_seconds=0.2,
        restart_backoff_max_seconds=1.0,
    )


@pytest.fixture
async def manager(
    pm_config: ProcessManagerConfig, tmp_path: Path
) -> AsyncIterator[CollectorProcessManager]:
    pm = CollectorProcessManager(pm_config, log_dir=tmp_path / "logs")
    recorder = Recorder()
    pm.add_listener(recorder)
    pm.recorder = recorder  # type: ignore[attr-defined]
    try:
        yield pm
    finally:
        with contextlib.suppress(Exception):
            await pm.shutdown_all()
        leaked = _kill_marked()
        assert not leaked, f"processes left behind by this test: {leaked}"


def _cgroup_trees() -> set[Path]:
    """Trees this session's managers and daemons may leave: never another session's.

    Two test sessions on one machine (or a real reconciler) must not clean
    each other's trees up while they are in use.
    """
    mount = _unified_mount()
    if mount is None:
        return set()
    ours = re.compile(rf"reconciler-{os.getpid()}-\d+")
    return {
        path
        for path in mount.glob("reconciler-*")
        if path.is_dir() and (ours.fullmatch(path.name) or path.name in DAEMON_TREES)
    }


def _remove_tree(tree: Path) -> list[int]:
    """Remove a cgroup tree a test left (a killed daemon's); return pids still in it."""
    populated = []
    for run in [*(p for p in tree.iterdir() if p.is_dir()), tree]:
        populated += [int(pid) for pid in (run / "cgroup.procs").read_text().split()]
        with contextlib.suppress(OSError):
            run.rmdir()
    return populated


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    trees_before = _cgroup_trees()
    yield
    leaked = _kill_marked()
    children = [p for p in _children() if p != os.getpid()]
    # Daemons killed by tests (or keeping their collectors) leave their stable
    # per-state-dir cgroup tree for a successor that never comes: remove it.
    in_cgroups = [pid for tree in _cgroup_trees() - trees_before for pid in _remove_tree(tree)]
    assert not leaked, f"the test run left processes behind: {leaked}"
    assert not children, f"the test run left child processes behind: {children}"
    assert not in_cgroups, f"the test run left processes in cgroups: {in_cgroups}"


def _children() -> list[int]:
    import psutil

    return [
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.status() != psutil.STATUS_ZOMBIE
    ]
