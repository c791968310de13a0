"""``reconciler status`` as the console script runs it: a correct HTTP/1.1 request, the table,
and a start-up that imports nothing a status request does not need.

Most of a status round trip is the interpreter's start and the CLI's imports
(``bench/status_cost.py``), so what the command imports is part of its behaviour: the daemon's
world (pydantic, aiohttp, asyncio, the spec and loop layers) and the stdlib modules it was cut
down by (typing, socket.py, shutil, http.client) must not come back. The daemon here is a
one-connection HTTP server on a unix socket in a thread: what the client sent is checked too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CONSOLE_SCRIPT = Path(sys.executable).with_name("reconciler")
NOT_FOR_A_STATUS = (
    "pydantic",
    "aiohttp",
    "asyncio",
    "jsonschema",
    "psutil",
    "reconciler.errors",
    "reconciler.spec",
    "reconciler.loop",
    "reconciler.api",
    "reconciler.process",
    "typing",
    "socket",
    "shutil",
    "http.client",
    "urllib.parse",
    "importlib.util",
)


def _view(collector_id: str, pid: int) -> dict[str, object]:
    """One collector as ``GET /api/v1/collectors`` has it (the keys the table reads)."""
    return {
        "id": collector_id, "type": "bench", "desired": "running", "state": "running",
        "health": "healthy", "pid": pid, "uptime_seconds": 75.0, "start_time": 1.0e9,
        "restart_count": 1, "consecutive_restarts": 0, "last_exit_code": None,
        "last_error": None, "last_error_code": None, "backoff_seconds": 0.0,
        "probe_failures": 0, "spec_file": f"{collector_id}.toml", "spec_hash": "abc",
        "applied_spec_hash": "abc", "converged": True, "spec_error": None, "override": None,
        "spec": None, "log_file": None, "last_crash": None, "ready": True, "rejected": None,
        "held": None,
    }


class OneAnswer:
    """Accepts one connection on ``path``, keeps the request, answers ``body`` and closes."""

    def __init__(self, path: Path, body: bytes) -> None:
        self.request = b""
        self._body = body
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._listener.settimeout(20)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(20)
            while b"\r\n\r\n" not in self.request:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                self.request += chunk
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(self._body)}\r\nConnection: close\r\n\r\n"
            )
            connection.sendall(head.encode() + self._body)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(timeout=20)


def _imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.fixture
def daemon(tmp_path: Path):
    body = json.dumps(
        {"collectors": [_view("b-second", 4242), _view("a-first", 4141)], "ready": True,
         "rollout_held": None}
    ).encode()
    server = OneAnswer(tmp_path / "api.sock", body)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.timeout(40)
def test_status_sends_http_1_1_prints_the_table_and_imports_none_of_the_daemon(
    daemon: OneAnswer, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "COLUMNS": "120"}
    env.pop("PYTHONPATH", None)
    # The console script, as users run it; importtime lists every module it imported.
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "status", "--socket", str(tmp_path / "api.sock")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30, check=False,
    )
    # What a bare interpreter imports (site, an editable install's finder) is not ours.
    bare = subprocess.run(
        [sys.executable, "-c", "pass"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30, check=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "TYPE", "DESIRED", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "ERROR"
    ]
    assert [line.split()[:6] for line in lines[1:]] == [
        ["a-first", "bench", "running", "running", "healthy", "4141"],
        ["b-second", "bench", "running", "running", "healthy", "4242"],
    ]
    request_line, *headers = daemon.request.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert request_line == b"GET /api/v1/collectors HTTP/1.1"
    names = {header.split(b":")[0].strip().lower() for header in headers}
    assert b"host" in names  # required by HTTP/1.1
    imported = _imported(result.stderr)
    assert "reconciler.cli.status" in imported  # the probe sees the command's own imports
    heavy = sorted(
        name
        for name in imported - _imported(bare.stderr)
        if any(name == root or name.startswith(root + ".") for root in NOT_FOR_A_STATUS)
    )
    assert heavy == []
