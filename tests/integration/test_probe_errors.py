"""A probe that cannot run fails in one line; it never raises into the probe loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping

import pytest

from reconciler.process.exits import ExitWatcher
from reconciler.process.health import run_probe
from reconciler.spec.models import Probe


async def test_an_exec_probe_with_a_nul_in_an_argument_fails_without_raising() -> None:
    # A TOML string may hold "\u0000"; no exec takes it.
    check = Probe(exec=["/bin/echo", "a\x00b"], timeout_seconds=5)
    watcher = ExitWatcher(asyncio.get_running_loop())
    result = await run_probe(check, env={"PATH": "/bin:/usr/bin"}, cwd=None, watcher=watcher)
    assert not result.ok
    assert result.detail == "probe command /bin/echo cannot be run: embedded null byte"


class _Unreadable(Mapping[str, str]):
    """An environment whose every read fails: a fault no probe path expects."""

    def __getitem__(self, key: str) -> str:
        raise RuntimeError("unreadable")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("unreadable")

    def __len__(self) -> int:
        return 1


async def test_an_unexpected_fault_is_a_failed_probe_with_the_traceback_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = Probe(exec=["true"], timeout_seconds=5)
    watcher = ExitWatcher(asyncio.get_running_loop())
    with caplog.at_level(logging.ERROR, logger="reconciler.process"):
        result = await run_probe(check, env=_Unreadable(), cwd=None, watcher=watcher)
    assert not result.ok
    assert result.detail == "probe failed (RuntimeError); the reconciler's log has the details"
    assert any(r.exc_info and "unreadable" in str(r.exc_info[1]) for r in caplog.records)
