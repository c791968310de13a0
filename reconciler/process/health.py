"""Liveness probes beyond "the process exists": exec, HTTP or TCP.

Run by the real driver every ``interval_seconds`` while a collector runs. An exec
probe is a child like any other: its exit is seen through the same pidfd
watcher, and a probe that overruns its timeout is killed with its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping

import aiohttp

from reconciler.process.driver import ProbeResult
from reconciler.process.exits import ExitWatcher
from reconciler.spec.models import Probe


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _exec_probe(
    argv: list[str],
    *,
    timeout_seconds: float,
    env: Mapping[str, str],
    cwd: str | None,
    watcher: ExitWatcher,
) -> ProbeResult:
    program = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
    if program is None:
        return ProbeResult(False, f"probe command {argv[0]!r} not found on PATH")
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int | None] = loop.create_future()
    try:
        popen = subprocess.Popen(
            [program, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        return ProbeResult(False, f"probe command {program} failed to start: {exc.strerror}")
    watcher.watch(popen, exited.set_result)
    try:
        code = await asyncio.wait_for(asyncio.shield(exited), timeout_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        await exited
        return ProbeResult(False, f"probe command timed out after {timeout_seconds:g} s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        await asyncio.shield(exited)
        raise
    if code == 0:
        return ProbeResult(True, "probe command exited 0")
    return ProbeResult(False, f"probe command exited with code {code}")


async def _http_probe(url: str, *, timeout_seconds: float) -> ProbeResult:
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status < 400:
                return ProbeResult(True, f"GET {url}: HTTP {response.status}")
            return ProbeResult(False, f"GET {url}: HTTP {response.status}")
    except TimeoutError:
        return ProbeResult(False, f"GET {url}: timed out after {timeout_seconds:g} s")
    except aiohttp.ClientError as exc:
        return ProbeResult(False, f"GET {url}: {exc}")


async def _tcp_probe(address: str, *, timeout_seconds: float) -> ProbeResult:
    host, port = _split_host_port(address)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    except TimeoutError:
        return ProbeResult(False, f"connect {address}: timed out after {timeout_seconds:g} s")
    except OSError as exc:
        return ProbeResult(False, f"connect {address}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, f"connect {address}: ok")


async def run_probe(
    check: Probe, *, env: Mapping[str, str], cwd: str | None, watcher: ExitWatcher
) -> ProbeResult:
    """Run ``check`` once and say whether it passed, and why."""
    if check.exec is not None:
        return await _exec_probe(
            check.exec, timeout_seconds=check.timeout_seconds, env=env, cwd=cwd, watcher=watcher
        )
    if check.http is not None:
        return await _http_probe(check.http, timeout_seconds=check.timeout_seconds)
    assert check.tcp is not None  # the model guarantees exactly one probe
    return await _tcp_probe(check.tcp, timeout_seconds=check.timeout_seconds)
