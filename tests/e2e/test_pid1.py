"""``reconciler run`` as PID 1, as the container image runs it.

The image's ENTRYPOINT (deploy/container/Containerfile) is the reconciler
itself in exec form: no shell, no tini. These tests run that same command as
PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``, as root)
and signal it from outside, as ``docker stop`` or the kubelet does. PID 1 is
special in two ways, both tested here:

- The kernel drops every signal PID 1 has no handler for, from inside the
  namespace and from outside alike (SIGKILL from outside excepted). So each
  signal DESIGN gives a meaning to must have a handler, from the very start:
  SIGTERM and SIGINT stop every collector gracefully and exit 0, SIGHUP
  re-reads the config file.
- Every orphan of the namespace becomes PID 1's child: a collector's
  double-forked grandchild that exits must be reaped, or zombies pile up.

Each daemon runs in its own session, so teardown kills the ``unshare`` process
group by pid; killing the namespace's PID 1 takes every process in it along.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import (
    DAEMON_TREES,
    MARK_ENV,
    RECONCILER,
    SESSION_MARK,
    daemon_tree_name,
    kernel_state,
    pids_with_env,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
TEST_ENV = "RECONCILER_PID1_TEST"
"""Tags this module's collectors (next to the session's leak-check mark)."""
STOP_TIMEOUT_SECONDS = 30


def _containerfile_instruction(name: str) -> list[str]:
    """The exec (JSON) form of a top-level instruction; fails on the shell form."""
    logical = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    (line,) = [line for line in logical.splitlines() if line.startswith(f"{name} ")]
    value = json.loads(line.removeprefix(f"{name} "))
    assert isinstance(value, list), f"{name} is not in exec form: {line}"
    return [str(part) for part in value]


def _unshare_refusal() -> str | None:
    """Why a PID namespace cannot be made here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "needs root to make a PID namespace (unshare --pid)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed"
    result = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        return f"unshare --pid --fork --mount-proc is not permitted here: {result.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def pid_namespaces() -> None:
    reason = _unshare_refusal()
    if reason is not None:
        pytest.skip(reason)


def _toml_list(*items: str) -> str:
    return json.dumps(list(items))  # a JSON string list is a TOML array of basic strings


class Pid1Daemon:
    """The image's ENTRYPOINT as PID 1 of a fresh PID namespace, on a private tmp tree."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.root = tmp_path
        self.specs = tmp_path / "specs"
        self.specs.mkdir(mode=0o755, exist_ok=True)
        self.state = tmp_path / "state"
        self.state.mkdir(mode=0o700, exist_ok=True)
        self.stderr_path = tmp_path / "reconciler.stderr"
        self.tag = f"pid1-{os.getpid()}-{time.monotonic_ns()}"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        entrypoint = _containerfile_instruction("ENTRYPOINT")
        DAEMON_TREES.add(daemon_tree_name(self.state))
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    RECONCILER,  # this checkout's, standing in for the image's
                    *entrypoint[1:],
                    "--specs",
                    str(self.specs),
                    "--state-dir",
                    str(self.state),
                    "--metrics-address",
                    "127.0.0.1:0",
                    "--socket",
                    str(self.state / "api.sock"),
                    *self.extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    @property
    def unshare(self) -> subprocess.Popen[bytes]:
        assert self.process is not None, "not started"
        return self.process

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def init_pid(self) -> int:
        """The host pid of the namespace's PID 1: the child ``unshare --fork`` made."""

        def find() -> int | None:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(self.unshare.pid).children():
                    return child.pid
            return None

        pid: int = wait_for(find, message="unshare forked the namespace's PID 1")
        nspid = _status_field(pid, "NSpid")
        assert nspid is not None and nspid.split()[-1] == "1", f"NSpid: {nspid}"
        return pid

    def namespace_processes(self) -> list[psutil.Process]:
        """Every process below PID 1, zombies included."""
        try:
            return psutil.Process(self.init_pid()).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def collector_pids(self) -> list[int]:
        return pids_with_env(TEST_ENV, self.tag)

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.init_pid(), signum)

    def wait_exit(self) -> int:
        try:
            return self.unshare.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"PID 1 still runs {STOP_TIMEOUT_SECONDS} s after the signal (was it dropped?)."
                f"\n{self.stderr}"
            ) from None

    def wait_started(self) -> None:
        wait_for(lambda: "watching" in self.stderr, message="daemon started")

    def write_spec(self, collector_id: str, script: str) -> None:
        """A ``/bin/sh -c SCRIPT`` collector, tagged for this test and the session's leak check."""
        (self.specs / f"{collector_id}.toml").write_text(
            'type = "script"\nbinary_path = "/bin/sh"\n'
            f"args = {_toml_list('-c', script)}\n"
            'log = "null"\ngraceful_timeout_seconds = 10\n'
            f'env = {{ {MARK_ENV} = "{SESSION_MARK}", {TEST_ENV} = "{self.tag}" }}\n'
        )

    def write_graceful_spec(self, collector_id: str) -> None:
        """A collector that records its stop signal: proof that the reconciler stopped it,
        not the kernel tearing the namespace down (which kills with SIGKILL)."""
        stopped, ready = self.root / f"{collector_id}.stopped", self.root / f"{collector_id}.ready"
        self.write_spec(
            collector_id,
            f"trap 'echo TERM > {stopped}; exit 0' TERM; : > {ready}; sleep 300 & wait $!",
        )

    def graceful_ready(self, collector_id: str) -> bool:
        return (self.root / f"{collector_id}.ready").exists()

    def stopped_gracefully(self, collector_id: str) -> bool:
        path = self.root / f"{collector_id}.stopped"
        return path.exists() and path.read_text().strip() == "TERM"

    def kill(self) -> None:
        """Teardown: SIGKILL the unshare process group (PID 1 with it, and so the namespace)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        for pid in self.collector_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.collector_pids(), message="nothing of the namespace is left")


def _status_field(pid: int, field: str) -> str | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return value.strip()
    return None


@pytest.fixture
def pid1(tmp_path: Path, pid_namespaces: None) -> Iterator[Pid1Daemon]:
    daemon = Pid1Daemon(tmp_path)
    try:
        yield daemon
    finally:
        daemon.kill()


@pytest.fixture
def pid1_with_config(tmp_path: Path, pid_namespaces: None) -> Iterator[Pid1Daemon]:
    config = tmp_path / "reconciler.toml"
    config.write_text("[process_manager]\ndefault_graceful_timeout_seconds = 10\n")
    daemon = Pid1Daemon(tmp_path, "--config", str(config))
    try:
        yield daemon
    finally:
        daemon.kill()


# --- the image ---------------------------------------------------------------------------


def test_image_entrypoint_is_the_reconciler_itself() -> None:
    """What these tests run as PID 1 is what the image runs: no shell or init in between."""
    entrypoint = _containerfile_instruction("ENTRYPOINT")
    assert entrypoint == ["reconciler", "run"]
    text = CONTAINERFILE.read_text(encoding="utf-8")
    # The signal a runtime sends on `docker stop` is the one tested below.
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)


# --- signals -----------------------------------------------------------------------------


def test_sigterm_from_outside_stops_every_collector_and_exits_0(pid1: Pid1Daemon) -> None:
    for collector_id in ("a", "b"):
        pid1.write_graceful_spec(collector_id)
    pid1.start()
    wait_for(
        lambda: pid1.graceful_ready("a") and pid1.graceful_ready("b"),
        message="both collectors running, their TERM traps set",
    )
    before = pid1.collector_pids()

    pid1.signal(signal.SIGTERM)

    assert pid1.wait_exit() == 0, pid1.stderr
    assert pid1.stopped_gracefully("a") and pid1.stopped_gracefully("b"), pid1.stderr
    assert "SIGTERM received: stopping" in pid1.stderr
    assert pid1.collector_pids() == []
    assert all(kernel_state(pid) is None for pid in before)


def test_sighup_reloads_the_config_and_sigint_stops(pid1_with_config: Pid1Daemon) -> None:
    pid1 = pid1_with_config
    config = pid1.root / "reconciler.toml"
    pid1.write_graceful_spec("a")
    pid1.start()
    wait_for(lambda: pid1.graceful_ready("a"), message="collector running")
    collectors = sorted(pid1.collector_pids())

    config.write_text("[process_manager]\nbogus = 1\n")
    pid1.signal(signal.SIGHUP)
    wait_for(lambda: "config reload refused" in pid1.stderr, message="bad config refused")
    assert "bogus: unknown key" in pid1.stderr

    config.write_text("[process_manager]\ndefault_graceful_timeout_seconds = 5\n")
    pid1.signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in pid1.stderr, message="config reloaded")
    # A reload is no restart: not of the daemon, not of its collectors.
    assert pid1.unshare.poll() is None
    assert sorted(pid1.collector_pids()) == collectors

    pid1.signal(signal.SIGINT)

    assert pid1.wait_exit() == 0, pid1.stderr
    assert "SIGINT received: stopping" in pid1.stderr
    assert pid1.stopped_gracefully("a")


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_signal_during_start_up_is_not_lost(pid1: Pid1Daemon, signum: signal.Signals) -> None:
    """A signal that arrives before the daemon is up is acted on, not dropped by the kernel.

    The state file is a FIFO, so start-up (after the servers, before adoption)
    blocks reading it until the test writes: a fixed point inside start-up.
    Without handlers installed first, the kernel drops SIGTERM and SIGHUP here
    and SIGINT raises KeyboardInterrupt (exit 130). Should the state file ever
    be opened without blocking, ``open_writer`` stops finding the reader and
    this test needs another fixed point.
    """
    fifo = pid1.state / "state.toml"
    os.mkfifo(fifo, 0o600)
    pid1.start()

    def open_writer() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet: not that far in start-up
                return None
            raise

    writer: int = wait_for(open_writer, message="the daemon reads its state file")
    try:
        pid1.signal(signum)
    finally:
        os.close(writer)  # an empty state file: start-up goes on

    if signum == signal.SIGHUP:
        wait_for(lambda: "config reloaded" in pid1.stderr, message="reloaded")
        pid1.wait_started()
        assert pid1.unshare.poll() is None
        pid1.signal(signal.SIGTERM)
    assert pid1.wait_exit() == 0, pid1.stderr
    name = signal.SIGTERM.name if signum == signal.SIGHUP else signum.name
    assert f"{name} received: stopping" in pid1.stderr


# --- reaping -------------------------------------------------------------------------------


def test_orphaned_grandchild_is_reaped(pid1: Pid1Daemon) -> None:
    """A collector double-forks a grandchild (``( cat FIFO & )``) that exits later:
    it becomes PID 1's child, and PID 1 reaps it: no zombie stays in the namespace."""
    release = pid1.root / "release"
    os.mkfifo(release, 0o600)
    pid1.write_spec("forker", f"( cat {release} & ); exec sleep 300")
    pid1.start()
    init = pid1.init_pid()

    def grandchild() -> int | None:
        for pid in pid1.collector_pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                if process.name() == "cat" and process.ppid() == init:
                    return pid
        return None

    orphan: int = wait_for(grandchild, message="the grandchild, reparented to PID 1")

    def open_writer() -> int | None:
        try:
            return os.open(release, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # cat has not opened the FIFO yet
                return None
            raise

    writer: int = wait_for(open_writer, message="the grandchild waits on its FIFO")
    os.write(writer, b"done\n")
    os.close(writer)  # cat reads, sees the end, exits: a zombie until PID 1 reaps it

    wait_for(lambda: kernel_state(orphan) is None, message=f"grandchild {orphan} reaped")
    zombies = [p.pid for p in pid1.namespace_processes() if _is_zombie(p)]
    assert zombies == [], f"zombies in the namespace: {zombies}"
    # The collector itself runs on, untouched.
    assert any(psutil.Process(p).name() == "sleep" for p in pid1.collector_pids())

    pid1.signal(signal.SIGTERM)
    assert pid1.wait_exit() == 0, pid1.stderr


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
