"""Run ``reconciler run`` as a plain background process, where there is no systemd.

The Ansible role runs this with the virtualenv's Python when
``reconciler_service_manager`` is "background" (tasks/service.yml, handlers):

    start     start the daemon, unless the pid file names one that runs
    restart   stop it (if it runs), then start it
    reload    SIGHUP: the daemon re-reads its config file (DESIGN §3)

Prints what it did on one line ("started PID", "running PID", "reloaded PID",
"not running"), which the role takes as changed or not. "Runs" means: the pid
file names a live process that is ``reconciler run --config CONFIG`` of this
config file, so neither a stale pid file nor a reused pid is mistaken for it.

A start returns once the control socket answers, or fails (exit 1, with the
end of the log) if the daemon exits first. A stop is SIGTERM, then waiting
until the process is gone (with on_exit = "stop" it stops its collectors
first), then SIGKILL after --stop-timeout-seconds, as systemd's TimeoutStopSec.
Standard library only; Python 3.11.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05
LOG_LINES_ON_FAILURE = 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "restart", "reload"])
    parser.add_argument("--reconciler", required=True, help="the reconciler command")
    parser.add_argument("--config", required=True)
    parser.add_argument("--pid-file", type=Path, required=True)
    parser.add_argument("--log-file", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--stop-timeout-seconds", type=float, default=90.0)
    args = parser.parse_args()
    pid = running_pid(args.pid_file, args.config)
    if args.action == "reload":
        if pid is None:
            print("not running")
        else:
            os.kill(pid, signal.SIGHUP)
            print(f"reloaded {pid}")
        return 0
    if args.action == "restart" and pid is not None:
        stop(pid, timeout_seconds=args.stop_timeout_seconds)
        pid = None
    if pid is not None:
        print(f"running {pid}")
        return 0
    return start(args)


def running_pid(pid_file: Path, config: str) -> int | None:
    """The pid in the pid file if that process is a live ``reconciler run`` of ``config``."""
    try:
        pid = int(pid_file.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # python .../bin/reconciler run --config FILE (a console script's cmdline).
    words = [word.decode(errors="replace") for word in argv]
    try:
        at = words.index("run")
    except ValueError:
        return None
    if words[at + 1 : at + 3] != ["--config", config] or not alive(pid):
        return None
    return pid


def alive(pid: int) -> bool:
    """Exists and is not a zombie (an exited daemon whose new parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] not in b"ZX"


def stop(pid: int, *, timeout_seconds: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout_seconds):
        print(
            f"reconciler {pid} still runs {timeout_seconds:g} s after SIGTERM: SIGKILL",
            file=sys.stderr,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 10.0)


def wait_gone(pid: int, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def start(args: argparse.Namespace) -> int:
    args.log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_fd = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        # A session of its own: no terminal, and nothing of the caller's (the
        # Ansible task ending, a Ctrl-C) reaches it. Its output goes to the log
        # only, never to the caller's pipes, which Ansible waits on.
        daemon = subprocess.Popen(
            [args.reconciler, "run", "--config", args.config],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            cwd="/",
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    write_pid_file(args.pid_file, daemon.pid)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not answers(args.socket):
        if daemon.poll() is not None or time.monotonic() >= deadline:
            if daemon.poll() is None:
                stop(daemon.pid, timeout_seconds=args.stop_timeout_seconds)
            with contextlib.suppress(FileNotFoundError):
                args.pid_file.unlink()
            print(
                f"reconciler did not start (exit code {daemon.returncode}); "
                f"the end of {args.log_file}:",
                file=sys.stderr,
            )
            sys.stderr.writelines(tail(args.log_file, LOG_LINES_ON_FAILURE))
            return 1
        time.sleep(POLL_SECONDS)
    print(f"started {daemon.pid}")
    return 0


def write_pid_file(path: Path, pid: int) -> None:
    """Atomically: a reader sees the old pid file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(f"{pid}\n")
    temporary.chmod(0o644)
    os.replace(temporary, path)


def answers(path: Path) -> bool:
    """Whether the control socket accepts a connection (a stale socket file does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


def tail(path: Path, count: int) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines(keepends=True)
    except OSError:
        return []
    return lines[-count:]


if __name__ == "__main__":
    sys.exit(main())
