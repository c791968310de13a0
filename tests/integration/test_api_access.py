"""Who may use the control API: the socket's mode, and the peer's credentials on every request.

A real ``ApiServer`` on a real socket; the clients are real processes running
as ``nobody`` (the tests need root to switch to it, as CI has).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reconciler.api import ApiServer
from reconciler.errors import InvalidSpec
from reconciler.loop import Reconciler
from tests.support import new_reconciler, reconciling

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")

SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"
"""The client needs only the standard library; the project's venv is not readable by nobody."""

CLIENT = """\
import http.client, json, socket, sys
connection = http.client.HTTPConnection("reconciler", timeout=10)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.strerror})); sys.exit(0)
connection.sock = sock
connection.request("GET", "/api/v1/collectors")
response = connection.getresponse()
print(json.dumps({"status": response.status, "body": json.loads(response.read())}))
"""


def as_nobody(socket_path: Path) -> dict[str, object]:
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", CLIENT, str(socket_path)],
        user="nobody",
        group="nogroup",
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A socket directory others may traverse (a test's tmp_path is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="reconciler-api-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


@pytest.fixture
async def reconciler(tmp_path: Path) -> AsyncIterator[Reconciler]:
    async with reconciling(new_reconciler(tmp_path)) as running:
        yield running


async def serving(reconciler: Reconciler, path: Path, group: str | None) -> ApiServer:
    server = ApiServer(reconciler, socket_path=path, control_group=group)
    await server.start()
    return server


async def test_a_loosened_socket_still_refuses_other_users(
    reconciler: Reconciler, run_dir: Path
) -> None:
    path = run_dir / "api.sock"
    server = await serving(reconciler, path, None)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert as_nobody(path) == {"connect": "Permission denied"}, "the mode is the first gate"
        path.chmod(0o666)  # loosened by hand
        answer = await asyncio.to_thread(as_nobody, path)
        assert answer["status"] == 403
        error = answer["body"]["error"]  # type: ignore[index]
        assert error["code"] == "FORBIDDEN"
        assert "user nobody (uid 65534) may not use the control API" in error["message"]
        assert "control_group" in error["message"], "it says how to admit a group"
    finally:
        await server.stop()


async def test_members_of_the_control_group_may_act(reconciler: Reconciler, run_dir: Path) -> None:
    path = run_dir / "api.sock"
    server = await serving(reconciler, path, "nogroup")
    try:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 65534
        answer = await asyncio.to_thread(as_nobody, path)
        assert answer["status"] == 200 and "collectors" in answer["body"]  # type: ignore[operator]
    finally:
        await server.stop()


async def test_an_unknown_control_group_is_refused(reconciler: Reconciler, run_dir: Path) -> None:
    with pytest.raises(InvalidSpec, match="no group named 'no-such-group-here'"):
        ApiServer(reconciler, socket_path=run_dir / "api.sock", control_group="no-such-group-here")
