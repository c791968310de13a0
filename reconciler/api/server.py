"""``ApiServer``: the control API on a unix socket — bound privately, never taken from
a live daemon."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from reconciler.api.constants import (
    ACTION_TIMEOUT_SECONDS,
    API_PREFIX,
    MAX_REQUEST_LINE_BYTES,
    PLAN_BODY_MAX_BYTES,
    SHUTDOWN_TIMEOUT_SECONDS,
)
from reconciler.api.handlers import (
    answer,
    events,
    get_collector,
    list_collectors,
    openapi,
    pause,
    plan,
    reload,
    restart,
    resume,
)
from reconciler.api.peers import Admission
from reconciler.api.views import http_error_body
from reconciler.errors import (
    AlreadyRunning,
    Io,
)
from reconciler.http import HttpServer, Request, Response, Router, json_response
from reconciler.loop import Reconciler

log = logging.getLogger("reconciler.api")

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
        control_group: str | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.admission = Admission(control_group)
        """``control_group``: the socket is 0660 for it, and its members are admitted."""
        self.socket_path = Path(socket_path)
        self.reload = reload
        self.action_timeout_seconds = action_timeout_seconds
        self._http: HttpServer | None = None
        self._lock_fd: int | None = None
        self._socket_identity: tuple[int, int] | None = None

    @property
    def lock_path(self) -> Path:
        """Held (flock) while serving, so that two daemons never race for one socket."""
        return self.socket_path.with_name(self.socket_path.name + ".lock")

    def _router(self) -> Router:
        router = Router()
        collector = API_PREFIX + "/collectors/{id}"
        for method, path, handler in (
            ("GET", API_PREFIX + "/collectors", list_collectors),
            ("GET", collector, get_collector),
            ("POST", collector + "/restart", restart),
            ("POST", collector + "/pause", pause),
            ("POST", collector + "/resume", resume),
            ("GET", API_PREFIX + "/events", events),
            ("POST", API_PREFIX + "/reload", reload),
            ("POST", API_PREFIX + "/plan", plan),
            ("GET", API_PREFIX + "/openapi.json", openapi),
        ):
            router.add(method, path, functools.partial(handler, self))
        return router

    def _http_server(self) -> HttpServer:
        router = self._router()

        async def handle(request: Request) -> Response:
            return await answer(self, request, router)

        return HttpServer(
            handle,
            refusal=_refusal,
            log=log,
            label="control API",
            # A whole spec tree for `reconciler diff` fits; each spec file is far smaller.
            max_body_bytes=PLAN_BODY_MAX_BYTES,
            max_line_bytes=MAX_REQUEST_LINE_BYTES,
            shutdown_seconds=SHUTDOWN_TIMEOUT_SECONDS,
        )

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
            self._http = self._http_server()
            await _serve_privately(self._http, path, group=self.admission.gid)
            st = os.stat(path)
            self._socket_identity = (st.st_dev, st.st_ino)
        except BaseException:
            await self.stop()
            raise
        log.info("control API on %s", path)

    async def stop(self) -> None:
        """Stop serving and remove the socket (if it is still ours)."""
        http, self._http = self._http, None
        if http is not None:
            await http.close()  # closes the connections, waits for their requests
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


def _refusal(status: int, message: str) -> Response:
    """A request the HTTP layer refused, as DESIGN §5's JSON error body."""
    return json_response(http_error_body(status, message), status=status)


async def _serve_privately(http: HttpServer, path: Path, *, group: int | None) -> None:
    """Listen on ``path`` with mode 0600 (0660 for ``group``), never more open for a moment.

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
        try:
            listener = await http.serve_unix(str(temporary))
        except OSError as exc:
            raise Io(f"cannot listen on {path}: {exc.strerror or exc}") from exc
        try:
            if group is not None:
                os.chown(temporary, -1, group)
            os.chmod(temporary, 0o600 if group is None else 0o660)
            os.rename(temporary, path)
        except OSError as exc:
            listener.close()
            raise Io(f"cannot create {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)
