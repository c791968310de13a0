"""The control API: JSON over HTTP on a unix socket (DESIGN §8), served with aiohttp.

Routes::

    GET  /api/v1/collectors[?rescan=true]   {"collectors": [collector...], "ready": bool}
    GET  /api/v1/collectors/{id}            collector
    POST /api/v1/collectors/{id}/restart    {"pid": new pid, **collector}
    POST /api/v1/collectors/{id}/pause      collector, once paused
    POST /api/v1/collectors/{id}/resume     collector, once running
    GET  /api/v1/events[?id=ID&limit=N]     {"events": [event...]}, oldest first
    POST /api/v1/reload                     {"reloaded": true}

A collector is ``CollectorView`` as JSON, with the spec in it — but never an
``env`` value (``spec.env_keys`` lists the names only), nor the password of an
HTTP health-check URL. ``rescan=true`` reads the specs directory before
answering, so that ``reconciler wait`` right after a push sees what was pushed.

Errors have the body ``{"error": {"code", "category", "message"}}``: every
``ReconcilerError`` with its own code and HTTP status (DESIGN §5); besides
those, protocol errors that name no collector — ``NOT_FOUND`` (404, Resource)
for an unknown route, ``METHOD_NOT_ALLOWED`` (405, Resource), ``BAD_REQUEST``
(400, Configuration) for a bad query parameter — and ``INTERNAL`` (500,
Internal) for a bug, which is logged with its traceback.

Pause, resume and restart are operator overrides (DESIGN §7) carried out by the
reconcile loop; these handlers set them and wait, bounded, until they have
taken effect, so that a client's "web paused" is true when it is printed.

``reconciler.daemon`` starts an ``ApiServer`` next to the loop; the CLI's
client commands (``status``, ``pause``, ``wait`` ...) are its users.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from reconciler.errors import (
    AlreadyRunning,
    InvalidSpec,
    InvalidState,
    Io,
    ReconcilerError,
    Timeout,
)
from reconciler.loop import CollectorView, Event, Reconciler
from reconciler.spec.models import CollectorSpec
from reconciler.state import CollectorState, DesiredState, HealthStatus

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
ACTION_TIMEOUT_SECONDS = 30.0
"""How long pause and resume wait for the collector to get there (else 504 TIMEOUT)."""
_RECHECK_SECONDS = 0.25
"""Re-read a collector's state at least this often while waiting, between loop passes."""
_SHUTDOWN_TIMEOUT_SECONDS = 2.0
"""On stop, requests still waiting (a pause under way) get this long before being cancelled."""

_RECONCILER_KEY = web.AppKey("reconciler", Reconciler)
_SERVER_KEY: web.AppKey[ApiServer] = web.AppKey("server")

# Protocol errors: no ReconcilerError stands for them, as they name no collector.
_HTTP_ERRORS = {
    400: ("BAD_REQUEST", "Configuration"),
    404: ("NOT_FOUND", "Resource"),
    405: ("METHOD_NOT_ALLOWED", "Resource"),
}


# -- JSON ----------------------------------------------------------------------------------


def iso_time(unix_time: float) -> str:
    """``2026-11-26T03:40:01.123Z``."""
    stamp = datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def spec_to_json(spec: CollectorSpec) -> dict[str, Any]:
    """The spec as JSON, less its secrets: env values (keys only) and URL passwords."""
    data = spec.model_dump(mode="json", exclude={"env"})
    data["env_keys"] = sorted(spec.env)
    health = data.get("health_check")
    if isinstance(health, dict) and isinstance(health.get("http"), str):
        health["http"] = _without_password(health["http"])
    return data


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def view_to_json(view: CollectorView) -> dict[str, Any]:
    """One collector as the API returns it."""
    status = view.status
    if status is not None:
        health = status.health
    else:
        # Never run: nothing to probe. "Healthy" only when that is what was asked.
        health = HealthStatus.HEALTHY if view.converged else HealthStatus.UNKNOWN
    override = view.override
    return {
        "id": view.collector_id,
        "type": view.collector_type,
        "desired": str(view.desired),
        "state": str(view.state),
        "health": str(health),
        "pid": status.pid if status else None,
        "uptime_seconds": round(status.uptime_seconds, 3) if status else 0.0,
        "start_time": status.start_time if status else None,
        "restart_count": status.restart_count if status else 0,
        "consecutive_restarts": status.consecutive_restarts if status else 0,
        "last_exit_code": status.last_exit_code if status else None,
        "last_error": status.last_error if status else None,
        "last_error_code": status.last_error_code if status else None,
        "backoff_seconds": round(status.backoff_seconds, 3) if status else 0.0,
        "probe_failures": status.probe_failures if status else 0,
        "spec_file": view.spec_file,
        "spec_hash": view.spec_hash,
        "applied_spec_hash": view.applied_spec_hash,
        "converged": view.converged,
        "spec_error": view.spec_error,
        "override": (
            {"action": str(override.action), "reason": override.reason}
            if override is not None
            else None
        ),
        "spec": spec_to_json(view.spec) if view.spec is not None else None,
    }


def event_to_json(event: Event) -> dict[str, Any]:
    return {
        "time": iso_time(event.wall_time),
        "unix_time": event.wall_time,
        "id": event.collector_id,
        "kind": event.kind,
        "message": event.message,
    }


def _error_body(code: str, category: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "category": category, "message": message}}


# -- errors -----------------------------------------------------------------------------------


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes the JSON error body of DESIGN §5, never aiohttp's HTML page."""
    try:
        return await handler(request)
    except ReconcilerError as exc:
        body: dict[str, Any] = {"error": exc.to_dict()}
        if isinstance(exc, InvalidSpec):
            body["error"]["problems"] = exc.problems
        return web.json_response(body, status=exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, category = _HTTP_ERRORS.get(exc.status, (f"HTTP_{exc.status}", "Resource"))
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
        message = message or f"{request.method} {request.path}: {exc.reason}"
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response(
            _error_body(code, category, message), status=exc.status, headers=allow
        )
    except Exception as exc:
        log.exception("control API: %s %s failed", request.method, request.path)
        # The exception's text stays in the log: it could quote anything, secrets included.
        internal = ReconcilerError(
            f"internal error ({type(exc).__name__}); the reconciler's log has the details"
        )
        return web.json_response({"error": internal.to_dict()}, status=internal.http_status)


# -- handlers ----------------------------------------------------------------------------------


def _reconciler(request: web.Request) -> Reconciler:
    return request.app[_RECONCILER_KEY]


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise web.HTTPBadRequest(text=f"{name}: must be true or false (got {value!r})")


async def _list_collectors(request: web.Request) -> web.Response:
    reconciler = _reconciler(request)
    if _flag(request, "rescan"):
        await _rescan(reconciler)
    return web.json_response(
        {
            "collectors": [view_to_json(view) for view in reconciler.views()],
            "ready": reconciler.ready.is_set(),
        }
    )


async def _get_collector(request: web.Request) -> web.Response:
    view = _reconciler(request).view(request.match_info["id"])
    return web.json_response(view_to_json(view))


async def _restart(request: web.Request) -> web.Response:
    reconciler = _reconciler(request)
    collector_id = request.match_info["id"]
    view = reconciler.view(collector_id)
    _require_spec(view, "restart")
    if view.desired == DesiredState.STOPPED:
        raise InvalidState(
            f"cannot restart {collector_id!r}: it is meant to be stopped "
            '(its spec says state = "stopped"; change the spec to start it)'
        )
    if view.status is None:
        raise InvalidState(f"cannot restart {collector_id!r}: it has not been started yet")
    pid = await reconciler.operator_restart(collector_id)
    # "pid" is the restart's own result, even if that process has already gone again.
    return web.json_response({**view_to_json(reconciler.view(collector_id)), "pid": pid})


async def _pause(request: web.Request) -> web.Response:
    return await _override(request, DesiredState.PAUSED)


async def _resume(request: web.Request) -> web.Response:
    return await _override(request, DesiredState.RUNNING)


def _require_spec(view: CollectorView, verb: str) -> CollectorSpec:
    if view.spec is None:
        why = f"no valid spec ({view.spec_error})" if view.spec_error else "its spec file is gone"
        raise InvalidState(f"cannot {verb} {view.collector_id!r}: {why}")
    return view.spec


async def _override(request: web.Request, action: DesiredState) -> web.Response:
    """Set a pause or resume override, then wait until the collector is there.

    Refused (INVALID_STATE) where the override could never take effect: a
    collector its spec stops (resume is the opposite of pause, not a start)
    or one that has failed (that takes ``restart`` or a spec change).
    """
    reconciler = _reconciler(request)
    server = request.app[_SERVER_KEY]
    collector_id = request.match_info["id"]
    verb = "pause" if action == DesiredState.PAUSED else "resume"
    view = reconciler.view(collector_id)
    spec = _require_spec(view, verb)
    if spec.state == DesiredState.STOPPED:
        raise InvalidState(
            f'cannot {verb} {collector_id!r}: its spec says state = "stopped" '
            "(change the spec to run it)"
        )
    if view.state == CollectorState.FAILED:
        raise InvalidState(
            f"cannot {verb} {collector_id!r}: it has failed ({_last_error(view)}); "
            f"`reconciler restart {collector_id}` or fix its spec"
        )
    # Nothing to override when the spec already asks for it and no override holds.
    if view.override is not None or spec.state != action:
        await reconciler.operator_override(collector_id, action)
    want = CollectorState.PAUSED if action == DesiredState.PAUSED else CollectorState.RUNNING

    def arrived() -> bool:
        current = reconciler.view(collector_id)
        if current.state == want:
            return True
        if current.state == CollectorState.FAILED:
            raise InvalidState(
                f"{collector_id!r} failed before it could be {verb}d: {_last_error(current)}"
            )
        if current.override is not None and current.override.action != action:
            raise InvalidState(f"the {verb} of {collector_id!r} was overridden meanwhile")
        if current.override is None and current.desired != action:
            raise InvalidState(
                f"the {verb} of {collector_id!r} ended before it took effect: its spec changed"
            )
        return False

    if not await _until(reconciler, arrived, timeout_seconds=server.action_timeout_seconds):
        current = reconciler.view(collector_id)
        raise Timeout(
            f"{collector_id!r} is still {current.state} after "
            f"{server.action_timeout_seconds:g} s; the {verb} stays in effect "
            "and is carried out when it can be"
        )
    return web.json_response(view_to_json(reconciler.view(collector_id)))


def _last_error(view: CollectorView) -> str:
    return (view.status.last_error if view.status else None) or "no error recorded"


async def _until(
    reconciler: Reconciler, predicate: Callable[[], bool], *, timeout_seconds: float
) -> bool:
    """Wait until ``predicate()``; False after the timeout.

    Re-checked after every loop pass (every change of state wakes the loop),
    and every ``_RECHECK_SECONDS`` in case a change needs no pass.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    changed = asyncio.Event()

    def on_pass(duration_seconds: float) -> None:
        del duration_seconds
        changed.set()

    reconciler.pass_listeners.append(on_pass)
    try:
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, _RECHECK_SECONDS))
        return True
    finally:
        reconciler.pass_listeners.remove(on_pass)


async def _events(request: web.Request) -> web.Response:
    reconciler = _reconciler(request)
    collector_id = request.query.get("id")
    limit_text = request.query.get("limit")
    limit: int | None = None
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            limit = 0
        if limit < 1:
            raise web.HTTPBadRequest(text=f"limit: must be a positive integer (got {limit_text!r})")
    # A forgotten collector's events are still of interest: an unknown id is no error.
    events = [
        e for e in reconciler.events if collector_id is None or e.collector_id == collector_id
    ]
    if limit is not None:
        events = events[-limit:]
    return web.json_response({"events": [event_to_json(e) for e in events]})


async def _reload(request: web.Request) -> web.Response:
    reconciler = _reconciler(request)
    reload = request.app[_SERVER_KEY].reload
    if reload is not None:
        reload()  # raises InvalidSpec (422) if the config file is refused
    await _rescan(reconciler)
    return web.json_response({"reloaded": True})


MAX_PLAN_FILES = 10_000
PLAN_BODY_MAX_BYTES = 16 * 1024 * 1024


async def _plan(request: web.Request) -> web.Response:
    """``reconciler diff``: spec files in (``{"files": {name: toml}}``; none: the specs
    directory), the lines ``plan()`` would carry out against this daemon's state out."""
    reconciler = _reconciler(request)
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body: not JSON ({exc})") from exc
    files = body.get("files") if isinstance(body, dict) else None
    if files is None:
        await _rescan(reconciler)
        lines = reconciler.diff()
    else:
        if (
            not isinstance(files, dict)
            or len(files) > MAX_PLAN_FILES
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        ):
            raise web.HTTPBadRequest(text="files: must map file names to TOML text")
        lines = reconciler.diff({name: text.encode() for name, text in files.items()})
    return web.json_response(
        {
            "differences": sum(line.difference for line in lines),
            "actions": [line.to_json() for line in lines],
        }
    )


async def _rescan(reconciler: Reconciler) -> None:
    """Read the specs directory now, where the reconciler can; else just look again."""
    rescan: Callable[[], Awaitable[None]] | None = getattr(reconciler, "rescan", None)
    if rescan is not None:
        await rescan()
    reconciler.wake()


# -- the server -------------------------------------------------------------------------------


class ApiServer:
    """The control API on a unix socket: ``await start()``, later ``await stop()``.

    ``reload`` is called by ``POST /api/v1/reload`` (the daemon's config reload);
    it may raise ``InvalidSpec`` to report a refused config file.

    ``start`` raises ``AlreadyRunning`` when another reconciler serves the
    socket (it is never taken from a live daemon) and ``Io`` when the socket
    cannot be created; a socket file left by a dead daemon is replaced.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        *,
        socket_path: Path,
        reload: Callable[[], None] | None = None,
        action_timeout_seconds: float = ACTION_TIMEOUT_SECONDS,
    ) -> None:
        self.reconciler = reconciler
        self.socket_path = Path(socket_path)
        self.reload = reload
        self.action_timeout_seconds = action_timeout_seconds
        self._runner: web.AppRunner | None = None
        self._lock_fd: int | None = None
        self._socket_identity: tuple[int, int] | None = None

    @property
    def lock_path(self) -> Path:
        """Held (flock) while serving, so that two daemons never race for one socket."""
        return self.socket_path.with_name(self.socket_path.name + ".lock")

    def _application(self) -> web.Application:
        # A whole spec tree for `reconciler diff` fits; each spec file is far smaller.
        app = web.Application(middlewares=[_errors], client_max_size=PLAN_BODY_MAX_BYTES)
        app[_RECONCILER_KEY] = self.reconciler
        app[_SERVER_KEY] = self
        collector = API_PREFIX + "/collectors/{id}"
        app.router.add_get(API_PREFIX + "/collectors", _list_collectors)
        app.router.add_get(collector, _get_collector)
        app.router.add_post(collector + "/restart", _restart)
        app.router.add_post(collector + "/pause", _pause)
        app.router.add_post(collector + "/resume", _resume)
        app.router.add_get(API_PREFIX + "/events", _events)
        app.router.add_post(API_PREFIX + "/reload", _reload)
        app.router.add_post(API_PREFIX + "/plan", _plan)
        return app

    async def start(self) -> None:
        path = self.socket_path
        try:
            # 0700: only for a directory made here; an existing one is the admin's.
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise Io(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
        self._lock_fd = _lock(self.lock_path, socket_path=path)
        try:
            _refuse_live_socket(path)
            runner = web.AppRunner(
                self._application(),
                handle_signals=False,
                shutdown_timeout=_SHUTDOWN_TIMEOUT_SECONDS,
            )
            await runner.setup()
            self._runner = runner
            await _serve_privately(runner, path)
            st = os.stat(path)
            self._socket_identity = (st.st_dev, st.st_ino)
        except BaseException:
            await self.stop()
            raise
        log.info("control API on %s", path)

    async def stop(self) -> None:
        """Stop serving and remove the socket (if it is still ours)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        identity, self._socket_identity = self._socket_identity, None
        if identity is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.socket_path)
                # A reconciler started since may own the path now: leave its socket alone.
                if (st.st_dev, st.st_ino) == identity:
                    self.socket_path.unlink()
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            # The lock file stays: unlinking it would race a daemon that just opened it.
            os.close(lock_fd)


def _lock(lock_path: Path, *, socket_path: Path) -> int:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise Io(f"cannot open {lock_path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(
            f"another reconciler is serving {socket_path} (it holds {lock_path}); "
            "stop it first, or give this one another --socket"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise Io(f"cannot lock {lock_path}: {exc.strerror or exc}") from exc
    return fd


def _refuse_live_socket(path: Path) -> None:
    """Raise unless ``path`` is free or a dead daemon's socket (which is then replaced)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise Io(f"cannot check {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise Io(f"{path} exists and is not a socket; remove it or choose another --socket")
    # The lock is ours, so a daemon of this version cannot be there; but one that
    # does not lock (an older one, or another program) may still answer.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("replacing stale socket %s (no one answers on it)", path)
        return
    except FileNotFoundError:
        return
    except TimeoutError:
        pass  # a full backlog: someone is listening
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise Io(f"cannot check whether {path} is in use: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise AlreadyRunning(
        f"{path} is in use: something answers on it; stop it first, or choose another --socket"
    )


async def _serve_privately(runner: web.AppRunner, path: Path) -> None:
    """Listen on ``path`` with mode 0600, leaving no moment at which it is more open.

    A new socket file gets 0777 less the umask; chmod after bind would leave a
    moment at which anyone may connect, and changing the umask around bind
    would change it for the whole process (a collector spawned meanwhile by
    another thread would inherit it). So the socket is bound in a fresh 0700
    directory no one else can enter, made 0600 there, then renamed into place
    in one step — which also replaces a stale socket without a gap.
    """
    try:
        private = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
    except OSError as exc:
        raise Io(f"cannot create a socket in {path.parent}: {exc.strerror or exc}") from exc
    try:
        temporary = private / "s"
        site = web.UnixSite(runner, str(temporary))
        try:
            await site.start()
        except OSError as exc:
            raise Io(f"cannot listen on {path}: {exc.strerror or exc}") from exc
        try:
            os.chmod(temporary, 0o600)
            os.rename(temporary, path)
        except OSError as exc:
            raise Io(f"cannot create {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)
