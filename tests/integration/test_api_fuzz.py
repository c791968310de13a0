"""Schemathesis against a real ``reconciler run``, over its unix socket.

The package's OpenAPI document — the one the daemon serves at
``GET /api/v1/openapi.json``, checked equal below — drives the generation
(positive and negative, examples, coverage and fuzzing phases): every operation,
and every method a path does not have, gets valid and invalid parameters and bodies, and
every answer must be what the document promises — no 5xx, a documented status,
``application/json``, a body matching its schema (the DESIGN §5 error body for
each 4xx). The collectors behind the API are real but cheap (``/bin/sleep``),
so that pause, resume and restart really happen.

Bounded and reproducible: a fixed number of examples per operation,
derandomised generation, no example database, a timeout on every request (a
pause that could not take effect would fail the test, not hang it) and the
default one on each test. Requests go over the unix socket (a ``requests``
transport adapter), so the peer-credential check is the real one too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import urllib3
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

from reconciler.api.openapi import document
from tests.support import MARK_ENV, SESSION_MARK, pids_with_env, start_daemon, wait_for

FUZZ_ENV = "RECONCILER_FUZZ_DAEMON"
"""Tags the fuzzed daemon's collectors, so that the finaliser can find any it left."""
SECRET = "fuzz-secret-token"
"""An env value of every collector: no answer may carry it."""
BASE_URL = "http://reconciler"
REQUEST_TIMEOUT_SECONDS = 20.0
"""Longer than any answer may take (a restart stops a sleep in well under a second)."""
MAX_EXAMPLES = 30
"""Per operation and phase: enough to reach every branch, small enough for < 60 s in all."""

COLLECTORS = {
    "web": "",  # running: pause, resume and restart all work on it
    "idle": 'state = "stopped"',  # 409 for every action
    "bad": "argz = 1",  # no valid spec: 409 for every action, shown with its error
}


# -- HTTP over the unix socket, for requests ------------------------------------------------


class _UnixConnection(urllib3.connection.HTTPConnection):
    socket_path = ""

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, int | float):
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock


class UnixAdapter(HTTPAdapter):
    """Sends every request of a ``requests.Session`` to one unix socket, whatever its host."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__()
        connection = type("Connection", (_UnixConnection,), {"socket_path": str(socket_path)})
        self._pool = urllib3.HTTPConnectionPool("reconciler", maxsize=2)
        self._pool.ConnectionCls = connection

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def unix_session(socket_path: Path) -> requests.Session:
    session = requests.Session()
    session.mount(BASE_URL + "/", UnixAdapter(socket_path))
    return session


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    """``reconciler run`` with a few sleepers, and a requests session on its socket."""

    def __init__(self, tmp_path: Path) -> None:
        self.specs = tmp_path / "specs"
        self.specs.mkdir()
        self.state = tmp_path / "state"
        self.socket = self.state / "api.sock"
        self.stderr_path = tmp_path / "reconciler.stderr"
        self.tag = f"{os.getpid()}-{time.monotonic_ns()}"
        env = f'{MARK_ENV} = "{SESSION_MARK}", {FUZZ_ENV} = "{self.tag}", TOKEN = "{SECRET}"'
        for collector_id, extra in COLLECTORS.items():
            (self.specs / f"{collector_id}.toml").write_text(
                'type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["300"]\nlog = "null"\n'
                f"graceful_timeout_seconds = 2\nenv = {{ {env} }}\n{extra}\n"
            )
        self.process: subprocess.Popen[bytes] = start_daemon(
            specs=self.specs, state=self.state, stderr_path=self.stderr_path
        )
        self.session = unix_session(self.socket)

    def get(self, path: str) -> Any:
        response = self.session.get(BASE_URL + path, timeout=REQUEST_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.json()

    def converged(self) -> bool:
        with contextlib.suppress(OSError, requests.RequestException):
            collectors = self.get("/api/v1/collectors")["collectors"]
            return {c["id"] for c in collectors if c["converged"]} >= {"web", "idle"}
        return False

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (the daemon stops its collectors), SIGKILL if that takes too long."""
        self.session.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def leftovers(self) -> list[int]:
        """Kill whatever of this daemon's collectors is still alive; return their pids."""
        pids = pids_with_env(FUZZ_ENV, self.tag)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = Daemon(tmp_path_factory.mktemp("fuzz"))
    try:
        try:
            wait_for(running.converged, timeout=20, message="the daemon runs its sleepers")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{running.stderr()}") from None
        yield running
    finally:
        code = running.stop()
        assert not running.leftovers(), "the daemon left collectors behind"
    assert code == 0, f"the daemon's exit on SIGTERM: {code}\n{running.stderr()}"


# -- schemathesis -----------------------------------------------------------------------------


CONFIG = {
    "base-url": BASE_URL,
    "request-timeout": REQUEST_TIMEOUT_SECONDS,
    "seed": 20261201,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "response_headers_conformance": {"enabled": True},
        "positive_data_acceptance": {"enabled": True},
        "negative_data_rejection": {"enabled": True},
        "unsupported_method": {"enabled": True},
        "allow_header_conformance": {"enabled": True},
    },
    "operations": [
        {
            # The schema can say a file is text, not that the text is a valid spec:
            # 422 INVALID_SPEC is a right answer to a schema-valid plan.
            "include-path": "/api/v1/plan",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 404, 409, 422]}},
        }
    ],
}

DOCUMENT = document("fuzz")
"""The package's own document: the one the daemon serves (checked below). Loaded at import,
not from the daemon in a fixture: schemathesis' ``from_fixture`` (4.32) sets
``request.node._nodeid``, which pytest 9.2 no longer has."""
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict(CONFIG))

ANSWERS: list[tuple[str, str, str | None, int]] = []
"""(method, path template, collector id, status) of every fuzzed request, in order."""


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    # A random id finds no collector: half of the ids are real ones.
    del context
    if not path_parameters or "id" not in path_parameters:
        return st.just(path_parameters)
    real = st.sampled_from(list(COLLECTORS)).map(lambda i: {**path_parameters, "id": i})
    return st.one_of(real, st.just(path_parameters))


def test_the_daemon_serves_the_fuzzed_document(daemon: Daemon) -> None:
    served = daemon.get("/api/v1/openapi.json")
    assert {**served, "info": {}} == {**DOCUMENT, "info": {}}


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_answer_is_what_the_document_promises(case, daemon: Daemon) -> None:
    response = case.call(session=daemon.session, timeout=REQUEST_TIMEOUT_SECONDS)
    collector_id = (case.path_parameters or {}).get("id")
    ANSWERS.append((case.method, case.path, collector_id, response.status_code))
    case.validate_response(response)
    assert SECRET not in response.text and SESSION_MARK not in response.text, "env values"


def test_the_fuzz_reached_every_operation_and_real_collectors(daemon: Daemon) -> None:
    """Runs after the fuzz (same module): it was no fuzz of 404s alone."""
    assert ANSWERS, "run with the fuzz test above"
    ok = {(method, path) for method, path, _, status in ANSWERS if status == 200}
    operations = {(m.upper(), p) for p, item in DOCUMENT["paths"].items() for m in item}
    assert ok == operations, f"never a 200: {operations - ok}"
    acted = {
        path.rsplit("/", 1)[1] for m, path, i, status in ANSWERS if i == "web" and status == 200
    }
    assert acted >= {"{id}", "pause", "resume", "restart"}, acted
    refusals = {status for *_, status in ANSWERS if status >= 400}
    assert refusals >= {400, 404, 405, 409, 422}, refusals
    assert max(status for *_, status in ANSWERS) < 500
    print(f"{len(ANSWERS)} requests; statuses: {sorted(refusals | {200})}")


def test_the_fuzzed_daemon_logged_no_traceback(daemon: Daemon) -> None:
    """A 500 is logged with its traceback: none happened, and the daemon still serves."""
    assert daemon.process.poll() is None, daemon.stderr()
    assert "Traceback" not in daemon.stderr(), daemon.stderr()
    assert [c["id"] for c in daemon.get("/api/v1/collectors")["collectors"]] == sorted(COLLECTORS)
