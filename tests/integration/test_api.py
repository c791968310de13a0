"""The control API over a real unix socket, in front of a real reconcile loop.

Real spec files, real processes, real HTTP (aiohttp's client on a
``UnixConnector``): every route, every DESIGN §5 error the API produces, the
socket's mode and ownership rules, and that env values never leave the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reconciler import CollectorState
from reconciler.api import ApiServer
from reconciler.api.constants import PLAN_BODY_MAX_BYTES
from reconciler.errors import AlreadyRunning, InvalidSpec, Io, ProcessNotFound
from reconciler.loop import CollectorView, Reconciler
from tests.support import (
    MARK_ENV,
    SESSION_MARK,
    alive,
    eventually,
    kernel_state,
    new_reconciler,
    reconciling,
)

SECRET = "hunter2-s3cr3t-value"
"""An env value that must never appear in any API answer."""

SPEC = """\
type = "sleeper"
binary_path = "{binary}"
args = [{args}]
log = "null"
graceful_timeout_seconds = 2
env = {{ {mark} = "{session}", API_TOKEN = "{secret}" }}
{extra}
"""


def spec_text(
    *, binary: str = "/bin/sleep", args: tuple[str, ...] = ("300",), extra: str = ""
) -> str:
    return SPEC.format(
        binary=binary,
        args=", ".join(json.dumps(arg) for arg in args),
        mark=MARK_ENV,
        session=SESSION_MARK,
        secret=SECRET,
        extra=extra,
    )


class Api:
    """HTTP on the control socket; keeps every body it saw, for the secrets check."""

    def __init__(self, session: aiohttp.ClientSession, server: ApiServer, specs: Path) -> None:
        self.session = session
        self.server = server
        self.reconciler = server.reconciler
        self.specs = specs
        self.bodies: list[str] = []

    async def call(
        self, method: str, path: str, *, expect: int = 200, **params: str
    ) -> dict[str, Any]:
        async with self.session.request(method, path, params=params or None) as response:
            text = await response.text()
            self.bodies.append(text)
            assert response.status == expect, (response.status, text)
            assert response.content_type == "application/json", response.content_type
            body: dict[str, Any] = json.loads(text)
            return body

    async def get(self, path: str, *, expect: int = 200, **params: str) -> dict[str, Any]:
        return await self.call("GET", path, expect=expect, **params)

    async def post(self, path: str, *, expect: int = 200, body: object = None) -> dict[str, Any]:
        if body is None:
            return await self.call("POST", path, expect=expect)
        async with self.session.post(path, json=body) as response:
            text = await response.text()
            self.bodies.append(text)
            assert response.status == expect, (response.status, text)
            answer: dict[str, Any] = json.loads(text)
            return answer

    async def error(self, method: str, path: str, *, expect: int, code: str, **params: str) -> str:
        body = await self.call(method, path, expect=expect, **params)
        error = body["error"]
        assert error["code"] == code, body
        assert set(error) >= {"code", "category", "message"}
        return str(error["message"])

    def write(self, collector_id: str, text: str) -> None:
        (self.specs / f"{collector_id}.toml").write_text(text)

    def view(self, collector_id: str) -> CollectorView | None:
        """The collector as the loop sees it; ``None`` until its spec file is seen."""
        try:
            return self.reconciler.view(collector_id)
        except ProcessNotFound:
            return None

    def converged(self, collector_id: str) -> bool:
        view = self.view(collector_id)
        return view is not None and view.converged

    def spec_error(self, collector_id: str) -> str | None:
        view = self.view(collector_id)
        return view.spec_error if view is not None else None

    def state(self, collector_id: str) -> CollectorState | None:
        manager = self.reconciler.manager
        if collector_id not in manager.collector_ids():
            return None
        return manager.status(collector_id).state

    async def running(self, collector_id: str) -> int:
        def check() -> int | None:
            if self.state(collector_id) != CollectorState.RUNNING:
                return None
            return self.reconciler.manager.status(collector_id).pid

        pid = await eventually(check, message=f"{collector_id} running")
        assert isinstance(pid, int)
        return pid


@pytest.fixture
async def reconciler(tmp_path: Path) -> AsyncIterator[Reconciler]:
    async with reconciling(new_reconciler(tmp_path)) as running:
        yield running


class Reloads:
    """The daemon's reload callback, as a test double: counts calls, may refuse."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


@pytest.fixture
def reloads() -> Reloads:
    return Reloads()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "api.sock"


@pytest.fixture
async def api(reconciler: Reconciler, socket_path: Path, reloads: Reloads) -> AsyncIterator[Api]:
    server = ApiServer(
        reconciler, socket_path=socket_path, reload=reloads, action_timeout_seconds=10
    )
    await server.start()
    try:
        async with aiohttp.ClientSession(
            "http://reconciler", connector=aiohttp.UnixConnector(path=str(socket_path))
        ) as session:
            yield Api(session, server, reconciler.source.specs_dir)
    finally:
        await server.stop()


async def answers(socket_path: Path) -> bool:
    async with (
        aiohttp.ClientSession(
            "http://reconciler", connector=aiohttp.UnixConnector(path=str(socket_path))
        ) as session,
        session.get("/api/v1/collectors") as response,
    ):
        return response.status == 200


# -- reading ----------------------------------------------------------------------------------


async def test_list_and_get_a_collector(api: Api) -> None:
    api.write("web", spec_text(args=("300",)))
    pid = await api.running("web")
    await eventually(lambda: api.converged("web"))
    listing = await api.get("/api/v1/collectors")
    assert listing["ready"] is True
    assert [c["id"] for c in listing["collectors"]] == ["web"]
    web = await api.get("/api/v1/collectors/web")
    assert web == listing["collectors"][0] | {"uptime_seconds": web["uptime_seconds"]}
    assert web["type"] == "sleeper" and web["pid"] == pid
    assert (web["desired"], web["state"], web["health"]) == ("running", "running", "healthy")
    assert web["converged"] is True and web["override"] is None and web["spec_error"] is None
    assert web["spec_file"] == "web.toml" and web["spec_hash"] == web["applied_spec_hash"]
    assert web["restart_count"] == 0 and web["consecutive_restarts"] == 0
    assert web["last_exit_code"] is None and web["backoff_seconds"] == 0
    assert web["uptime_seconds"] >= 0 and web["start_time"] > 0 and web["probe_failures"] == 0
    assert web["spec"]["args"] == ["300"] and web["spec"]["binary_path"] == "/bin/sleep"
    assert web["spec"]["env_keys"] == sorted([MARK_ENV, "API_TOKEN"])
    assert "env" not in web["spec"]


async def test_a_spec_stopped_from_the_start_is_listed(api: Api) -> None:
    api.write("idle", spec_text(extra='state = "stopped"'))
    await eventually(lambda: api.converged("idle"), message="idle converged")
    idle = await api.get("/api/v1/collectors/idle")
    assert (idle["desired"], idle["state"], idle["pid"]) == ("stopped", "stopped", None)
    assert idle["converged"] is True and idle["uptime_seconds"] == 0


async def test_a_spec_error_is_shown_with_the_last_known_good_spec(api: Api) -> None:
    api.write("web", spec_text())
    pid = await api.running("web")
    api.write("web", spec_text() + "argz = 1\n")
    await eventually(lambda: api.spec_error("web"))
    web = await api.get("/api/v1/collectors/web")
    assert "web.toml" in web["spec_error"] and "argz" in web["spec_error"]
    assert web["pid"] == pid and web["spec"]["args"] == ["300"]


async def test_health_check_url_password_is_hidden(api: Api) -> None:
    probe = '[health_check]\nhttp = "http://probe:pa55word@127.0.0.1:9/healthz"\n'
    api.write("web", spec_text(extra=probe))
    await api.running("web")
    web = await api.get("/api/v1/collectors/web")
    assert web["spec"]["health_check"]["http"] == "http://probe:***@127.0.0.1:9/healthz"
    assert "pa55word" not in api.bodies[-1]


async def test_rescan_sees_a_spec_written_just_before(api: Api) -> None:
    api.write("fresh", spec_text())
    listing = await api.get("/api/v1/collectors", rescan="true")
    assert "fresh" in [c["id"] for c in listing["collectors"]]


# -- operator actions -------------------------------------------------------------------------


async def test_pause_and_resume_show_in_status_and_events(api: Api) -> None:
    api.write("web", spec_text())
    pid = await api.running("web")
    paused = await api.post("/api/v1/collectors/web/pause")
    assert paused["state"] == "paused" and paused["desired"] == "paused"
    assert paused["override"] == {"action": "paused", "reason": "paused by operator"}
    assert kernel_state(pid) == "T"
    assert (await api.get("/api/v1/collectors/web"))["override"]["action"] == "paused"
    again = await api.post("/api/v1/collectors/web/pause")
    assert again["state"] == "paused", "pause is idempotent"
    resumed = await api.post("/api/v1/collectors/web/resume")
    assert resumed["state"] == "running" and resumed["pid"] == pid, "resume must not restart"
    assert resumed["override"] is None, "a resume that only undoes a pause leaves no override"
    assert kernel_state(pid) in ("S", "R")
    events = (await api.get("/api/v1/events", id="web"))["events"]
    kinds = [(e["kind"], e["message"]) for e in events]
    assert ("override", "paused by operator") in kinds
    ended = ("override", "operator override ended: resumed by operator")
    assert ended in kinds
    assert kinds.index(("override", "paused by operator")) < kinds.index(ended)


async def test_restart_gives_a_new_pid(api: Api) -> None:
    api.write("web", spec_text())
    pid = await api.running("web")
    restarted = await api.post("/api/v1/collectors/web/restart")
    assert restarted["pid"] != pid and isinstance(restarted["pid"], int)
    assert restarted["id"] == "web" and restarted["restart_count"] == 1
    assert not alive(pid)
    web = await api.get("/api/v1/collectors/web")
    assert web["pid"] == restarted["pid"] and web["restart_count"] == 1
    events = (await api.get("/api/v1/events", id="web"))["events"]
    assert ("restart", "restarted by operator") in [(e["kind"], e["message"]) for e in events]


async def test_a_failed_collector_cannot_be_paused_and_its_restart_reports_why(
    api: Api,
) -> None:
    api.write("broken", spec_text(binary="/nonexistent/bin"))
    await eventually(lambda: api.state("broken") == CollectorState.FAILED)
    for action in ("pause", "resume"):
        message = await api.error(
            "POST", f"/api/v1/collectors/broken/{action}", expect=409, code="INVALID_STATE"
        )
        assert "failed" in message and "reconciler restart broken" in message
    # restart is how an operator retries a failed collector; this one fails again.
    message = await api.error(
        "POST", "/api/v1/collectors/broken/restart", expect=500, code="SPAWN_FAILED"
    )
    assert "/nonexistent/bin" in message
    assert (await api.get("/api/v1/collectors/broken"))["state"] == "failed"


@pytest.mark.parametrize("action", ["pause", "resume", "restart"])
async def test_actions_on_a_collector_its_spec_stops_are_invalid_state(
    api: Api, action: str
) -> None:
    api.write("idle", spec_text(extra='state = "stopped"'))
    await eventually(lambda: api.converged("idle"))
    message = await api.error(
        "POST", f"/api/v1/collectors/idle/{action}", expect=409, code="INVALID_STATE"
    )
    assert "stopped" in message
    assert api.reconciler.view("idle").override is None
    assert api.state("idle") is None, "nothing was started"


async def test_actions_on_a_collector_without_a_valid_spec_are_invalid_state(api: Api) -> None:
    api.write("bad", spec_text() + "argz = 1\n")
    await eventually(lambda: api.spec_error("bad"))
    for action in ("pause", "resume", "restart"):
        message = await api.error(
            "POST", f"/api/v1/collectors/bad/{action}", expect=409, code="INVALID_STATE"
        )
        assert "no valid spec" in message and "argz" in message


async def test_pause_that_cannot_take_effect_in_time_is_a_timeout(api: Api) -> None:
    crashing = spec_text(
        binary="/bin/sh",
        args=("-c", "exit 3"),
        extra="restart_backoff_initial_seconds = 30\nmax_restarts = 5",
    )
    api.write("crashy", crashing)
    await eventually(lambda: api.state("crashy") == CollectorState.BACKOFF, message="backoff")
    api.server.action_timeout_seconds = 0.2
    message = await api.error("POST", "/api/v1/collectors/crashy/pause", expect=504, code="TIMEOUT")
    assert "backoff" in message and "stays in effect" in message
    crashy = await api.get("/api/v1/collectors/crashy")
    assert crashy["override"]["action"] == "paused" and crashy["state"] == "backoff"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/api/v1/collectors/nope", id="get"),
        pytest.param("POST", "/api/v1/collectors/nope/restart", id="restart"),
        pytest.param("POST", "/api/v1/collectors/nope/pause", id="pause"),
        pytest.param("POST", "/api/v1/collectors/nope/resume", id="resume"),
    ],
)
async def test_unknown_collector_is_process_not_found(api: Api, method: str, path: str) -> None:
    body = await api.call(method, path, expect=404)
    assert body["error"]["code"] == "PROCESS_NOT_FOUND"
    assert body["error"]["category"] == "Resource"
    assert "nope" in body["error"]["message"]


async def test_unknown_route_and_wrong_method_are_json_errors(api: Api) -> None:
    body = await api.call("GET", "/api/v1/nothing-here", expect=404)
    assert body["error"]["code"] == "NOT_FOUND" and body["error"]["category"] == "Resource"
    assert "/api/v1/nothing-here" in body["error"]["message"]
    body = await api.call("DELETE", "/api/v1/collectors", expect=405)
    assert body["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_bad_query_parameters_are_bad_request(api: Api) -> None:
    # What the OpenAPI document says, no more: an integer >= 1, a boolean.
    for limit in ("0", "-1", "ten", "", "+5", " 5", "1_0", "\u0663", "1e3"):
        await api.error("GET", "/api/v1/events", expect=400, code="BAD_REQUEST", limit=limit)
    for flag in ("maybe", "", "yes", "1", "0", "no"):
        await api.error("GET", "/api/v1/collectors", expect=400, code="BAD_REQUEST", rescan=flag)
    for flag in ("true", "True", "false", "FALSE"):
        assert (await api.get("/api/v1/collectors", rescan=flag))["collectors"] == []
    assert (await api.get("/api/v1/events", limit="007"))["events"] == []
    assert (await api.get("/api/v1/events", limit="9" * 5000))["events"] == [], "all of them"


# -- events and reload ------------------------------------------------------------------------


async def test_events_are_oldest_first_filtered_and_limited(api: Api) -> None:
    api.write("a", spec_text())
    api.write("b", spec_text())
    await api.running("a")
    await api.running("b")
    await api.post("/api/v1/collectors/a/restart")
    events = (await api.get("/api/v1/events"))["events"]
    assert {"a", "b"} <= {e["id"] for e in events}
    times = [e["unix_time"] for e in events]
    assert times == sorted(times)
    assert all(e["time"].endswith("Z") and e["time"][:4].isdigit() for e in events)
    assert set(events[0]) == {"time", "unix_time", "id", "kind", "message"}
    only_a = (await api.get("/api/v1/events", id="a"))["events"]
    assert only_a and {e["id"] for e in only_a} == {"a"}
    last_two = (await api.get("/api/v1/events", limit="2"))["events"]
    assert last_two == events[-2:]
    assert (await api.get("/api/v1/events", id="nobody"))["events"] == []


async def test_reload_calls_the_reload_callback(api: Api, reloads: Reloads) -> None:
    assert await api.post("/api/v1/reload") == {"reloaded": True}
    assert reloads.calls == 1


async def test_a_refused_config_reload_is_invalid_spec(api: Api, reloads: Reloads) -> None:
    reloads.error = InvalidSpec(
        "reconciler.toml: process_manager.bogus: unknown key",
        problems=["reconciler.toml: process_manager.bogus: unknown key"],
    )
    body = await api.call("POST", "/api/v1/reload", expect=422)
    assert body["error"]["code"] == "INVALID_SPEC"
    assert body["error"]["category"] == "Configuration"
    assert body["error"]["problems"] == ["reconciler.toml: process_manager.bogus: unknown key"]


async def test_an_unexpected_exception_is_a_logged_500(
    api: Api, reloads: Reloads, caplog: pytest.LogCaptureFixture
) -> None:
    reloads.error = RuntimeError("boom")
    with caplog.at_level(logging.ERROR, logger="reconciler.api"):
        body = await api.call("POST", "/api/v1/reload", expect=500)
    assert body["error"]["code"] == "INTERNAL" and body["error"]["category"] == "Internal"
    assert "RuntimeError" in body["error"]["message"] and "boom" not in body["error"]["message"]
    assert any("POST /api/v1/reload" in r.getMessage() and r.exc_info for r in caplog.records)


# -- secrets ------------------------------------------------------------------------------------


async def test_env_values_never_appear_in_any_answer(api: Api) -> None:
    api.write("web", spec_text())
    api.write("idle", spec_text(extra='state = "stopped"'))
    api.write("bad", spec_text() + "argz = 1\n")
    await api.running("web")
    await eventually(lambda: api.spec_error("bad"))
    await api.get("/api/v1/collectors")
    await api.get("/api/v1/collectors", rescan="true")
    for collector_id in ("web", "idle", "bad"):
        await api.get(f"/api/v1/collectors/{collector_id}")
    await api.call("GET", "/api/v1/collectors/nope", expect=404)
    await api.post("/api/v1/collectors/web/pause")
    await api.post("/api/v1/collectors/web/resume")
    await api.post("/api/v1/collectors/web/restart")
    await api.call("POST", "/api/v1/collectors/idle/pause", expect=409)
    await api.call("POST", "/api/v1/collectors/bad/restart", expect=409)
    await api.get("/api/v1/events")
    await api.get("/api/v1/events", id="web")
    await api.post("/api/v1/reload")
    await api.call("GET", "/api/v1/nowhere", expect=404)
    assert len(api.bodies) >= 15
    leaks = [body for body in api.bodies if SECRET in body or SESSION_MARK in body]
    assert not leaks, leaks


# -- the socket ---------------------------------------------------------------------------------


async def test_socket_is_0600_in_a_0700_directory_and_removed_on_stop(
    reconciler: Reconciler, tmp_path: Path
) -> None:
    path = tmp_path / "fresh" / "api.sock"
    server = ApiServer(reconciler, socket_path=path)
    await server.start()
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert await answers(path)
        assert sorted(p.name for p in path.parent.iterdir()) == ["api.sock", "api.sock.lock"]
    finally:
        await server.stop()
    assert not path.exists()


async def test_an_existing_directory_keeps_its_mode(reconciler: Reconciler, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    server = ApiServer(reconciler, socket_path=run / "api.sock")
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o755
        assert stat.S_IMODE(os.stat(run / "api.sock").st_mode) == 0o600
    finally:
        await server.stop()


async def test_a_stale_socket_is_replaced(reconciler: Reconciler, socket_path: Path) -> None:
    socket_path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    server = ApiServer(reconciler, socket_path=socket_path)
    await server.start()
    try:
        assert await answers(socket_path)
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    finally:
        await server.stop()


async def test_a_live_reconciler_is_not_robbed_of_its_socket(api: Api, socket_path: Path) -> None:
    second = ApiServer(api.reconciler, socket_path=socket_path)
    with pytest.raises(AlreadyRunning, match="another reconciler is serving"):
        await second.start()
    await second.stop()
    assert await answers(socket_path), "the first server must still answer"
    assert (await api.get("/api/v1/collectors"))["collectors"] == []


async def test_a_socket_someone_else_listens_on_is_not_taken(
    reconciler: Reconciler, socket_path: Path
) -> None:
    socket_path.parent.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen()
    try:
        inode = os.stat(socket_path).st_ino
        with pytest.raises(AlreadyRunning, match="in use"):
            await ApiServer(reconciler, socket_path=socket_path).start()
        assert os.stat(socket_path).st_ino == inode
    finally:
        listener.close()


async def test_a_file_that_is_not_a_socket_is_left_alone(
    reconciler: Reconciler, socket_path: Path
) -> None:
    socket_path.parent.mkdir()
    socket_path.write_text("precious")
    with pytest.raises(Io, match="not a socket"):
        await ApiServer(reconciler, socket_path=socket_path).start()
    assert socket_path.read_text() == "precious"


async def test_stop_leaves_a_newer_servers_socket_alone(
    reconciler: Reconciler, socket_path: Path
) -> None:
    server = ApiServer(reconciler, socket_path=socket_path)
    await server.start()
    socket_path.unlink()
    socket_path.write_text("someone else's now")
    await server.stop()
    assert socket_path.read_text() == "someone else's now"


# -- POST /api/v1/plan (reconciler diff) ------------------------------------------------------


async def test_plan_answers_with_the_lines_plan_would_carry_out(api: Api) -> None:
    api.write("web", spec_text())
    await api.running("web")
    await eventually(lambda: api.converged("web"))
    answer = await api.post("/api/v1/plan", body={"files": {"web.toml": spec_text(args=("1",))}})
    assert answer["differences"] == 1
    [line] = answer["actions"]
    assert line["id"] == "web" and line["action"] == "restart"
    assert line["line"] == "restart web (spec changed: args)"
    unchanged = await api.post("/api/v1/plan", body={"files": {"web.toml": spec_text()}})
    assert unchanged == {"differences": 0, "actions": []}
    assert (await api.post("/api/v1/plan", body={}))["differences"] == 0, "its own directory"
    gone = await api.post("/api/v1/plan", body={"files": {}})
    assert [a["line"] for a in gone["actions"]] == ["stop web (spec file removed)"]
    assert api.reconciler.manager.status("web").state == CollectorState.RUNNING, "only a plan"


async def test_plan_refuses_invalid_specs_and_bodies(api: Api) -> None:
    answer = await api.post(
        "/api/v1/plan", body={"files": {"web.toml": 'type = "x"\nargz = 1\n'}}, expect=422
    )
    assert answer["error"]["code"] == "INVALID_SPEC"
    assert "web.toml: argz: unknown key" in answer["error"]["message"]
    answer = await api.post("/api/v1/plan", body={"files": ["web.toml"]}, expect=400)
    assert answer["error"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../web.toml", id="dotdot"),
        pytest.param("../../etc/web.toml", id="escape"),
        pytest.param("/etc/web.toml", id="absolute"),
        pytest.param("sub/web.toml", id="subdirectory"),
        pytest.param("web\x00.toml", id="nul"),
    ],
)
async def test_plan_refuses_file_names_that_are_not_in_the_directory(api: Api, name: str) -> None:
    """A spec tree is the files directly in one directory: "../web.toml" is not web's file
    (nor may "a/web.toml" and "b/web.toml" both silently be web)."""
    answer = await api.post("/api/v1/plan", body={"files": {name: spec_text()}}, expect=422)
    assert answer["error"]["code"] == "INVALID_SPEC"
    assert answer["error"]["problems"] == [
        f"{name}: file name: not a file directly in the specs directory"
    ]


# -- hostile requests -----------------------------------------------------------------------------

CATEGORY = {
    "BAD_REQUEST": "Configuration",
    "NOT_FOUND": "Resource",
    "METHOD_NOT_ALLOWED": "Resource",
    "PROCESS_NOT_FOUND": "Resource",
}
"""DESIGN §5: the category of each code a hostile request may get."""


def refused(status: int, content_type: str, text: str, *, expect: int, code: str) -> dict[str, Any]:
    """Check a DESIGN §5 error answer; return its ``error``."""
    assert status == expect, text
    assert content_type == "application/json", (content_type, text)
    body = json.loads(text)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "category", "message"}
    error: dict[str, Any] = body["error"]
    assert (error["code"], error["category"]) == (code, CATEGORY[code]), text
    assert isinstance(error["message"], str) and error["message"].strip()
    assert "Traceback" not in text and 'File "' not in text
    return error


async def raw_exchange(socket_path: Path, request: bytes) -> tuple[int, str, str]:
    """Send bytes as they are (no client tidies them up); status, content type and body."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(request)
        await writer.drain()
        # The answer, not the end of the connection: the server may linger on a body
        # it never reads, as it should.
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
            body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    content_type = headers.get("content-type", "").split(";")[0]
    return int(lines[0].split()[1]), content_type, body.decode()


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", "/api/v1/collectors/..%2Fx", 404, "PROCESS_NOT_FOUND", id="dotdot"),
        # The router normalises "%2e%2e" away: no collector route matches at all.
        pytest.param("GET", "/api/v1/collectors/%2e%2e", 404, "NOT_FOUND", id="dots"),
        pytest.param("GET", "/api/v1/collectors/%2F", 404, "PROCESS_NOT_FOUND", id="slash"),
        pytest.param(
            "GET", "/api/v1/collectors/" + "a" * 5000, 404, "PROCESS_NOT_FOUND", id="long"
        ),
        # Past MAX_REQUEST_LINE_BYTES: refused by the HTTP parser, still in JSON.
        pytest.param(
            "GET", "/api/v1/collectors/" + "a" * 10_000, 400, "BAD_REQUEST", id="10000-chars"
        ),
        pytest.param(
            "POST",
            "/api/v1/collectors/" + "a" * 10_000 + "/pause",
            400,
            "BAD_REQUEST",
            id="10000-chars-pause",
        ),
        pytest.param("GET", "/api/v1/collectors/%00", 404, "PROCESS_NOT_FOUND", id="nul"),
        pytest.param("GET", "/api/v1/collectors/web%00", 404, "PROCESS_NOT_FOUND", id="nul-in"),
        pytest.param("GET", "/api/v1/collectors/wéb", 404, "PROCESS_NOT_FOUND", id="unicode"),
        pytest.param("GET", "/api/v1/collectors/日本", 404, "PROCESS_NOT_FOUND", id="cjk"),
        pytest.param("GET", "/api/v1/collectors/\U0001f980", 404, "PROCESS_NOT_FOUND", id="emoji"),
        pytest.param("GET", "/api/v1/collectors/%ff%fe", 404, "PROCESS_NOT_FOUND", id="not-utf8"),
        pytest.param("POST", "/api/v1/collectors/%2e%2e/pause", 404, "NOT_FOUND", id="pause"),
        pytest.param("GET", "/api/v1/nothing-here", 404, "NOT_FOUND", id="unknown-route"),
        pytest.param("GET", "/", 404, "NOT_FOUND", id="root"),
        pytest.param("GET", "/api/v2/collectors", 404, "NOT_FOUND", id="other-version"),
        pytest.param("POST", "/api/v1/collectors/web/kill", 404, "NOT_FOUND", id="unknown-verb"),
        pytest.param("DELETE", "/api/v1/collectors", 405, "METHOD_NOT_ALLOWED", id="method"),
        pytest.param("PUT", "/api/v1/collectors/web", 405, "METHOD_NOT_ALLOWED", id="put"),
        pytest.param("GET", "/api/v1/reload", 405, "METHOD_NOT_ALLOWED", id="get-a-post"),
        pytest.param("PATCH", "/api/v1/plan", 405, "METHOD_NOT_ALLOWED", id="patch"),
        pytest.param("GET", "/api/v1/events?limit=-1", 400, "BAD_REQUEST", id="limit"),
        pytest.param("GET", "/api/v1/collectors?rescan=maybe", 400, "BAD_REQUEST", id="flag"),
    ],
)
async def test_hostile_requests_get_a_4xx_with_the_error_body(
    api: Api, method: str, path: str, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with api.session.request(method, path) as response:
        text = await response.text()
    refused(response.status, response.content_type, text, expect=status, code=code)
    if status == 405:
        assert response.headers["Allow"]
    assert not [r for r in caplog.records if r.exc_info], "refused without a traceback"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        # What a client library would tidy up (or refuse to send) before it reached the API.
        pytest.param(b"GET /api/v1/collectors/../x HTTP/1.1", 404, "NOT_FOUND", id="dotdot"),
        pytest.param(b"GET /api/v1/../../etc/passwd HTTP/1.1", 404, "NOT_FOUND", id="escape"),
        pytest.param(
            "GET /api/v1/collectors/wéb HTTP/1.1".encode(), 400, "BAD_REQUEST", id="raw-utf8"
        ),
        pytest.param(b"GET /api/v1/collectors/a\x00b HTTP/1.1", 400, "BAD_REQUEST", id="raw-nul"),
        pytest.param(b"G@T /api/v1/collectors HTTP/1.1", 400, "BAD_REQUEST", id="bad-method"),
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, "BAD_REQUEST", id="tls"),
        pytest.param(
            b"GET /api/v1/collectors HTTP/1.1\r\nX-Big: " + b"a" * 9000,
            400,
            "BAD_REQUEST",
            id="long-header",
        ),
        pytest.param(
            b"GET /api/v1/collectors HTTP/1.1" + b"".join(b"\r\nX-%d: 1" % i for i in range(200)),
            400,
            "BAD_REQUEST",
            id="many-headers",
        ),
        pytest.param(
            b"POST /api/v1/plan HTTP/1.1\r\nContent-Length: ten", 400, "BAD_REQUEST", id="length"
        ),
        pytest.param(
            # A whole line: an unended one is waited for (until the idle timeout).
            b"POST /api/v1/plan HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            "BAD_REQUEST",
            id="chunk-size",
        ),
    ],
)
async def test_malformed_http_gets_the_error_body(
    api: Api,
    socket_path: Path,
    request_bytes: bytes,
    status: int,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    head = request_bytes if b"\r\n\r\n" in request_bytes else request_bytes + b"\r\n"
    request = head.replace(b"\r\n", b"\r\nHost: reconciler\r\nConnection: close\r\n", 1)
    if b"\r\n\r\n" not in request:
        request += b"\r\n"
    with caplog.at_level(logging.INFO, logger="reconciler.api"):
        answer = await raw_exchange(socket_path, request)
    refused(*answer, expect=status, code=code)
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake: no traceback"
    assert (await api.get("/api/v1/collectors"))["collectors"] == [], "still serving"


DEEP = b'{"files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
"""Nested deeper than any JSON parser recurses."""


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        pytest.param(b"{not json", {}, id="invalid-json"),
        pytest.param(b"[1, 2]", {}, id="a-list"),
        pytest.param(b'{"files": {"x.toml": 1}}', {}, id="not-text"),
        pytest.param(b"\xff\xfe", {}, id="not-utf8"),
        # Neither may mean "the specs directory": a typo must not pass silently.
        pytest.param(b'{"files": null}', {}, id="files-null"),
        pytest.param(b'{"file": {"web.toml": ""}}', {}, id="unknown-key"),
        # JSON may escape a lone surrogate; no UTF-8 text holds one.
        pytest.param(b'{"files": {"web.toml": "x = \\"\\ud800\\""}}', {}, id="surrogate"),
        pytest.param(DEEP, {}, id="nested-too-deep"),
        pytest.param(b"not gzip", {"Content-Encoding": "gzip"}, id="bad-gzip"),
        pytest.param(gzip.compress(b"{}"), {"Content-Encoding": "gzip"}, id="compressed"),
        pytest.param(b"{}", {"Content-Encoding": "br, zstd"}, id="unknown-encoding"),
    ],
)
async def test_a_malformed_plan_body_is_bad_request(
    api: Api, data: bytes, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Content-Type": "application/json", **headers}
    async with api.session.post("/api/v1/plan", data=data, headers=headers) as response:
        text = await response.text()
    error = refused(response.status, response.content_type, text, expect=400, code="BAD_REQUEST")
    assert error["message"].startswith(("body", "files")), error
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake: no traceback"


async def test_a_plan_body_is_utf8_whatever_charset_it_claims(api: Api) -> None:
    """JSON is UTF-8 (RFC 8259); a charset parameter, even one Python does not know,
    changes nothing."""
    body = json.dumps({"files": {"wéb.toml": 'type = "x"\n'}}).encode()
    for charset in ("no-such-charset", "latin-1"):
        headers = {"Content-Type": f"application/json; charset={charset}"}
        async with api.session.post("/api/v1/plan", data=body, headers=headers) as response:
            text = await response.text()
        error = json.loads(text)["error"]
        assert (response.status, error["code"]) == (422, "INVALID_SPEC"), text
        assert "wéb" in error["message"], "read as UTF-8"


async def test_a_plan_body_that_breaks_off_is_bad_request(
    api: Api, socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    request = (
        b"POST /api/v1/plan HTTP/1.1\r\nHost: reconciler\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'6\r\n{"file\r\nzz\r\n'
    )
    with caplog.at_level(logging.INFO, logger="reconciler.api"):
        answer = await raw_exchange(socket_path, request)
    refused(*answer, expect=400, code="BAD_REQUEST")
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake: no traceback"


async def test_an_oversized_body_is_refused_with_413(api: Api) -> None:
    size = PLAN_BODY_MAX_BYTES + 1
    big = io.BytesIO(b'{"files": {"x.toml": "' + b"a" * (size - 24) + b'"}}')
    async with api.session.post("/api/v1/plan", data=big) as response:
        text = await response.text()
    error = refused(response.status, response.content_type, text, expect=413, code="BAD_REQUEST")
    assert str(PLAN_BODY_MAX_BYTES) in error["message"]


async def test_a_body_announced_too_large_is_refused_before_it_is_sent(
    api: Api, socket_path: Path
) -> None:
    """No 16 MiB read (or wait for them) only to refuse them: the Content-Length says."""
    request = (
        b"POST /api/v1/plan HTTP/1.1\r\nHost: reconciler\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{" % (PLAN_BODY_MAX_BYTES + 1)
    )
    error = refused(*await raw_exchange(socket_path, request), expect=413, code="BAD_REQUEST")
    assert str(PLAN_BODY_MAX_BYTES) in error["message"]


async def test_a_client_that_hangs_up_mid_body_is_no_internal_error(
    api: Api, socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.api")
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(
        b"POST /api/v1/plan HTTP/1.1\r\nHost: reconciler\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"files": '
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader

    def hung_up() -> bool:
        return any("hung up" in r.getMessage() for r in caplog.records)

    await eventually(hung_up, message="the hang-up is logged")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert (await api.get("/api/v1/collectors"))["collectors"] == [], "still serving"
