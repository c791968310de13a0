"""The control API's routes: one handler each, and the middleware that makes every
failure DESIGN §5's JSON error body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from reconciler import __version__
from reconciler.api.constants import MAX_PLAN_FILES, RECHECK_SECONDS
from reconciler.api.peers import peer_of
from reconciler.api.views import event_to_json, view_to_json
from reconciler.errors import (
    InvalidSpec,
    InvalidState,
    ReconcilerError,
    Timeout,
)
from reconciler.http import HttpError, Request, Response, Router, json_response
from reconciler.loop import CollectorView, Reconciler
from reconciler.spec.models import CollectorSpec
from reconciler.state import CollectorState, DesiredState

if TYPE_CHECKING:
    from reconciler.api.server import ApiServer

log = logging.getLogger("reconciler.api")

# -- errors -----------------------------------------------------------------------------------


async def answer(api: ApiServer, request: Request, router: Router) -> Response:
    """Admit (``Admission``), route, and make every failure the JSON error body of DESIGN §5:
    a ``ReconcilerError`` its own, a bug INTERNAL; an ``HttpError`` (403, 404, 405, 400, 413)
    is left to the server, whose ``refusal`` answers it (``ApiServer``'s ``_refusal``)."""
    refusal = api.admission.refusal(peer_of(request.peer))
    if refusal is not None:
        raise HttpError(403, refusal)
    try:
        handler = router.resolve(request)
        return await handler(request)
    except ReconcilerError as exc:
        body: dict[str, Any] = {"error": exc.to_dict()}
        if isinstance(exc, InvalidSpec):
            body["error"]["problems"] = exc.problems
        return json_response(body, status=exc.http_status)
    except HttpError:
        raise  # answered by the server's refusal: the same JSON body
    except Exception as exc:
        log.exception("control API: %s %s failed", request.method, request.path)
        # The exception's text stays in the log: it could quote anything, secrets included.
        internal = ReconcilerError(
            f"internal error ({type(exc).__name__}); the reconciler's log has the details"
        )
        return json_response({"error": internal.to_dict()}, status=internal.http_status)


# -- handlers ----------------------------------------------------------------------------------


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter, as the OpenAPI document has it: true or false (any case)."""
    value = request.query.get(name, "false")
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise HttpError(400, f"{name}: must be true or false (got {value!r})")


async def list_collectors(api: ApiServer, request: Request) -> Response:
    reconciler = api.reconciler
    if _flag(request, "rescan"):
        await _rescan(reconciler)
    return json_response(
        {
            "collectors": [view_to_json(view) for view in reconciler.views()],
            "ready": reconciler.ready.is_set(),
            "rollout_held": reconciler.rollout_held,
        }
    )


async def get_collector(api: ApiServer, request: Request) -> Response:
    view = api.reconciler.view(request.match_info["id"])
    return json_response(view_to_json(view))


async def restart(api: ApiServer, request: Request) -> Response:
    reconciler = api.reconciler
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
    return json_response({**view_to_json(reconciler.view(collector_id)), "pid": pid})


async def pause(api: ApiServer, request: Request) -> Response:
    return await _override(api, request, DesiredState.PAUSED)


async def resume(api: ApiServer, request: Request) -> Response:
    return await _override(api, request, DesiredState.RUNNING)


def _require_spec(view: CollectorView, verb: str) -> CollectorSpec:
    if view.spec is None:
        why = f"no valid spec ({view.spec_error})" if view.spec_error else "its spec file is gone"
        raise InvalidState(f"cannot {verb} {view.collector_id!r}: {why}")
    return view.spec


async def _override(api: ApiServer, request: Request, action: DesiredState) -> Response:
    """Set a pause or resume override, then wait until the collector is there.

    Refused (INVALID_STATE) where the override could never take effect: a
    collector its spec stops (resume is the opposite of pause, not a start)
    or one that has failed (that takes ``restart`` or a spec change).
    """
    reconciler = api.reconciler
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

    if not await _until(reconciler, arrived, timeout_seconds=api.action_timeout_seconds):
        current = reconciler.view(collector_id)
        raise Timeout(
            f"{collector_id!r} is still {current.state} after "
            f"{api.action_timeout_seconds:g} s; the {verb} stays in effect "
            "and is carried out when it can be"
        )
    # The override was saved when it was set; the paused (or resumed) process
    # may have started since: it is on disk too before the answer.
    reconciler.persist()
    return json_response(view_to_json(reconciler.view(collector_id)))


def _last_error(view: CollectorView) -> str:
    return (view.status.last_error if view.status else None) or "no error recorded"


async def _until(
    reconciler: Reconciler, predicate: Callable[[], bool], *, timeout_seconds: float
) -> bool:
    """Wait until ``predicate()``; False after the timeout.

    Re-checked after every loop pass (every change of state wakes the loop),
    and every ``RECHECK_SECONDS`` in case a change needs no pass.
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
                await asyncio.wait_for(changed.wait(), min(remaining, RECHECK_SECONDS))
        return True
    finally:
        reconciler.pass_listeners.remove(on_pass)


async def events(api: ApiServer, request: Request) -> Response:
    reconciler = api.reconciler
    collector_id = request.query.get("id")
    limit_text = request.query.get("limit")
    limit: int | None = None
    if limit_text is not None:
        # Digits only: int() would also take " 5", "+5", "1_0" and non-ASCII digits.
        significant = limit_text.lstrip("0")
        if not (limit_text.isascii() and limit_text.isdigit() and significant):
            raise HttpError(400, f"limit: must be a positive integer (got {limit_text!r})")
        # More than any event log holds (and than int() parses, past 4300 digits): all.
        limit = int(significant) if len(significant) <= 18 else None
    # A forgotten collector's events are still of interest: an unknown id is no error.
    events = [
        e for e in reconciler.events if collector_id is None or e.collector_id == collector_id
    ]
    if limit is not None:
        events = events[-limit:]
    return json_response({"events": [event_to_json(e) for e in events]})


async def reload(api: ApiServer, request: Request) -> Response:
    reconciler = api.reconciler
    reload = api.reload
    if reload is not None:
        reload()  # raises InvalidSpec (422) if the config file is refused
    await _rescan(reconciler)
    return json_response({"reloaded": True})


async def plan(api: ApiServer, request: Request) -> Response:
    """``reconciler diff``: spec files in (``{"files": {name: toml}}``; none: the specs
    directory), the lines ``plan()`` would carry out against this daemon's state out."""
    reconciler = api.reconciler
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise HttpError(400, 'body: must be a JSON object, e.g. {"files": {...}}')
    unknown = sorted(set(body) - {"files"})
    if unknown:
        raise HttpError(400, f'body: unknown key {unknown[0]!r} (only "files")')
    files = body.get("files")
    if "files" not in body:
        await _rescan(reconciler)
        lines = reconciler.diff()
    else:
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise HttpError(400, "files: must map file names to TOML text")
        if len(files) > MAX_PLAN_FILES:
            raise HttpError(400, f"files: at most {MAX_PLAN_FILES} (got {len(files)})")
        _refuse_paths(files)
        lines = reconciler.diff(_utf8(files))
    return json_response(
        {
            "differences": sum(line.difference for line in lines),
            "actions": [line.to_json() for line in lines],
        }
    )


def _refuse_paths(files: dict[str, str]) -> None:
    """INVALID_SPEC for a name that is no file directly in a directory: "../web.toml" is
    not web's spec file, and "a/web.toml" with "b/web.toml" must not both be web."""
    problems = [
        f"{name}: file name: not a file directly in the specs directory"
        for name in sorted(files)
        if "/" in name or "\0" in name
    ]
    if problems:
        raise InvalidSpec("; ".join(problems), problems=problems)


def _utf8(files: dict[str, str]) -> dict[str, bytes]:
    """Each file's text as the bytes a spec file would hold; 400 for text no file holds
    (JSON may escape a lone surrogate, which UTF-8 cannot encode)."""
    encoded = {}
    for name, text in files.items():
        try:
            encoded[name] = text.encode()
        except UnicodeEncodeError as exc:
            raise HttpError(
                400, f"files: {name!r}: not Unicode text (a lone surrogate at {exc.start})"
            ) from None
    return encoded


async def _json_body(request: Request) -> object:
    """The request's JSON body (``{}`` when there is none); any body that is not plain
    JSON is 400.

    Read as bytes and parsed as UTF-8 whatever charset the Content-Type claims (JSON is
    UTF-8, RFC 8259; and an unknown charset must not become a 500). Never decompressed:
    a Content-Encoding is refused, so that no body grows past the size limit once read.
    ``read()`` refuses a body past the limit (413; one announced larger before a byte of
    it is read), a malformed chunk, and a client that hangs up mid-body (400, logged).
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise HttpError(
            400, f"body: Content-Encoding {encoding!r} is not accepted; send plain JSON"
        )
    if not request.can_read_body:
        return {}
    data = await request.read()
    try:
        return json.loads(data) if data else {}
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HttpError(400, f"body: not JSON ({reason})") from None


async def _rescan(reconciler: Reconciler) -> None:
    """Read the specs directory now, where the reconciler can; else just look again."""
    rescan: Callable[[], Awaitable[None]] | None = getattr(reconciler, "rescan", None)
    if rescan is not None:
        await rescan()
    reconciler.wake()


async def openapi(api: ApiServer, request: Request) -> Response:
    """The API described in OpenAPI 3.1."""
    # Its schemas are built at import: loaded when first asked for, not by every daemon.
    from reconciler.api.openapi import document

    return json_response(document(__version__))
