"""Test helpers: waiting for conditions with a deadline, and finding leftovers.

Tests never synchronise with a bare sleep: they wait for what they expect to
become true, and fail with a clear message when it does not in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler import CollectorProcessManager, ProcessManagerConfig
from reconciler.loop import Reconciler
from reconciler.source import SpecSource

SESSION_MARK = f"reconciler-test-{uuid.uuid4().hex[:12]}"
"""Put in every test collector's environment, so any survivor can be found."""
MARK_ENV = "RECONCILER_TEST_SESSION"


async def eventually(
    predicate: Callable[[], object | Awaitable[object]],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str = "",
) -> object:
    """Wait until ``predicate()`` is truthy; return its value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {message or predicate} ({last!r})")
        await asyncio.sleep(interval)


def pids_with_env(key: str, value: str) -> list[int]:
    """Live (non-zombie) processes whose environment has ``key=value``."""
    found = []
    needle = f"{key}={value}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and stat[stat.rindex(b")") + 2 :][:1] not in b"ZX":
            found.append(int(entry))
    return found


def marked_pids(mark: str = SESSION_MARK) -> list[int]:
    """Live processes carrying this test session's (or ``mark``'s) leak-check tag."""
    return pids_with_env(MARK_ENV, mark)


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """``eventually`` for synchronous tests: poll until truthy, fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {message} (last: {value!r})")
        time.sleep(interval)


RECONCILER = str(Path(sys.executable).with_name("reconciler"))
"""The console script, as a user runs it."""


DAEMON_TREES: set[str] = set()
"""cgroup trees of the daemons this test session started (``reconciler-<hash of state dir>``)."""


def daemon_tree_name(state: Path) -> str:
    """The cgroup tree a daemon on this state dir uses (as ``reconciler.daemon`` names it)."""
    return "reconciler-" + hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]


def start_daemon(
    *,
    specs: Path,
    state: Path,
    stderr_path: Path,
    metrics_address: str = "127.0.0.1:0",
    extra: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``reconciler run`` on its own spec dir, state dir and socket; stderr to a file; ``env``
    instead of this process's environment when given."""
    DAEMON_TREES.add(daemon_tree_name(state))
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [
                RECONCILER,
                "run",
                "--specs",
                str(specs),
                "--state-dir",
                str(state),
                "--metrics-address",
                metrics_address,
                "--socket",
                str(state / "api.sock"),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )


def end_daemon(daemon: subprocess.Popen[bytes], mark: str) -> None:
    """Whatever a test left: SIGKILL the daemon if it still runs, then the collectors that
    carry ``mark``."""
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
    for pid in marked_pids(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> list[str]:
    """The arguments of process ``pid``, from ``/proc``."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def kernel_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :][:1].decode()


def alive(pid: int) -> bool:
    return kernel_state(pid) not in (None, "Z", "X")


def new_reconciler(tmp_path: Path) -> Reconciler:
    """A reconciler over ``tmp_path/specs`` with short timeouts, not yet running."""
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    manager = CollectorProcessManager(
        ProcessManagerConfig(
            default_graceful_timeout_seconds=2, restart_backoff_initial_seconds=0.2
        ),
        log_dir=tmp_path / "logs",
    )
    return Reconciler(source=SpecSource(specs, rescan_interval_seconds=30), manager=manager)


@contextlib.asynccontextmanager
async def reconciling(reconciler: Reconciler) -> AsyncIterator[Reconciler]:
    """Run the loop until the block ends, then stop it and every collector."""
    task = asyncio.create_task(reconciler.run())
    try:
        await asyncio.wait_for(reconciler.ready.wait(), 10)
        yield reconciler
    finally:
        await reconciler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await reconciler.manager.shutdown_all()


def make_certificates(where: Path) -> Path:
    """In ``where``: a CA (``ca.pem``) and a certificate it signed for 127.0.0.1 (``leaf.pem``,
    ``leaf.key``). Skips the test where there is no ``openssl`` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate with")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (where / "leaf.ext").write_text(
        "subjectAltName = IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    ca = ["-subj", "/CN=reconciler test CA", "-addext", "basicConstraints=critical,CA:TRUE"]
    ca_usage = ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    signed = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "leaf.ext"]
    commands = [
        [openssl, "req", "-x509", *ec, *ca, *ca_usage, "-keyout", "ca.key", "-out", "ca.pem"],
        [openssl, "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=probe"],
        [openssl, "x509", "-req", "-in", "leaf.csr", *signed, "-out", "leaf.pem", "-days", "2"],
    ]
    for command in commands:
        subprocess.run(command, cwd=where, check=True, capture_output=True, timeout=30)
    return where


def tls_server_context(certificates: Path) -> ssl.SSLContext:
    """A server's context with ``make_certificates``' leaf certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    return context
