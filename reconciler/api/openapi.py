"""The control API described in OpenAPI 3.1, served at ``GET /api/v1/openapi.json``.

Built here as data, next to the handlers it describes; a test checks that
every route of the application is described (and nothing else), that the
document is valid OpenAPI 3.1, and that real answers match their schemas.
"""

from __future__ import annotations

from typing import Any

from reconciler.api.constants import (
    API_PREFIX,
    HTTP_ERRORS,
    MAX_PLAN_FILES,
    MAX_REQUEST_LINE_BYTES,
    PLAN_BODY_MAX_BYTES,
)
from reconciler.errors import (
    AlreadyRunning,
    InvalidSpec,
    InvalidState,
    Io,
    PlatformNotSupported,
    ProcessNotFound,
    ReconcilerError,
    SpawnFailed,
    TerminateFailed,
    Timeout,
)

_LIBRARY_ERRORS: list[type[ReconcilerError]] = [
    ProcessNotFound,
    AlreadyRunning,
    SpawnFailed,
    TerminateFailed,
    InvalidState,
    PlatformNotSupported,
    Timeout,
    Io,
    InvalidSpec,
]
CATEGORIES: dict[str, str] = {
    **{error.code: str(error.category) for error in _LIBRARY_ERRORS},
    **{code: category for code, category in HTTP_ERRORS.values()},
    ReconcilerError.code: str(ReconcilerError.category),  # INTERNAL: a bug, logged
}
"""DESIGN §5: every code the API answers with, and its category."""
ERROR_CODES = list(CATEGORIES)
STATES = ["starting", "running", "paused", "stopping", "stopped", "backoff", "failed"]

_WHY = {
    400: "malformed request: a bad query parameter or body, or a request line or header "
    f"longer than {MAX_REQUEST_LINE_BYTES} bytes",
    403: "this user may not use the API",
    404: "no such collector (PROCESS_NOT_FOUND), or the path names none (NOT_FOUND)",
    409: "not possible in the collector's state",
    413: f"request body larger than {PLAN_BODY_MAX_BYTES} bytes",
    422: "invalid spec or config file: problems lists each, naming file, key and reason",
    500: "the action failed (or a bug: INTERNAL, logged with its details)",
    501: "not possible on this platform",
    504: "not there in time; the action stays in effect",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(*codes: str) -> dict[str, Any]:
    """The §5 error body with one of these codes, each with its own category."""
    pairs = [
        {
            "properties": {"code": {"const": code}, "category": {"const": CATEGORIES[code]}},
            # Only INVALID_SPEC lists its problems (one per file, key and reason).
            **({"required": ["problems"]} if code == InvalidSpec.code else {}),
        }
        for code in codes
    ]
    return {"allOf": [_ref("Error"), {"properties": {"error": {"oneOf": pairs}}}]}


_ERRORS_BY_STATUS: dict[int, tuple[str, ...]] = {
    400: ("BAD_REQUEST",),
    403: ("FORBIDDEN",),
    404: ("PROCESS_NOT_FOUND", "NOT_FOUND"),
    409: ("INVALID_STATE", "ALREADY_RUNNING"),
    413: ("BAD_REQUEST",),
    422: ("INVALID_SPEC",),
    500: ("SPAWN_FAILED", "TERMINATE_FAILED", "IO_ERROR", "INTERNAL"),
    501: ("PLATFORM_NOT_SUPPORTED",),
    504: ("TIMEOUT",),
}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error responses: 400 and 403 for every route (any request may be malformed, any
    user refused), and ``statuses``."""
    return {
        str(status): _json(_error(*_ERRORS_BY_STATUS[status]), _WHY[status])
        for status in sorted({400, 403, *statuses})
    }


_ID = "[a-z0-9][a-z0-9_.-]{0,62}"
"""DESIGN §2: a collector id, its spec file's stem."""
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}

_COLLECTOR: dict[str, Any] = {
    "id": {"type": "string"},
    "type": {"type": "string"},
    "desired": {"type": "string", "enum": ["running", "paused", "stopped"]},
    "state": {"type": "string", "enum": STATES},
    "health": {"type": "string", "enum": ["healthy", "degraded", "unhealthy", "unknown"]},
    "pid": _NULLABLE_INT,
    "uptime_seconds": {"type": "number"},
    "start_time": {"type": ["number", "null"]},
    "restart_count": {"type": "integer"},
    "consecutive_restarts": {"type": "integer"},
    "last_exit_code": _NULLABLE_INT,
    "last_error": _NULLABLE_STRING,
    "last_error_code": _NULLABLE_STRING,
    "backoff_seconds": {"type": "number"},
    "probe_failures": {"type": "integer"},
    "spec_file": _NULLABLE_STRING,
    "spec_hash": _NULLABLE_STRING,
    "applied_spec_hash": _NULLABLE_STRING,
    "converged": {"type": "boolean"},
    "spec_error": _NULLABLE_STRING,
    "override": _ref("Override"),
    "spec": {
        "type": ["object", "null"],
        "description": "The spec file's keys; env values are replaced by env_keys.",
    },
    "log_file": {
        **_NULLABLE_STRING,
        "description": 'The current log file (log = "file"), read by reconciler logs.',
    },
    "last_crash": {
        "type": ["object", "null"],
        "description": "The newest crash record (reconciler crashes): exit it made, when, "
        "after how long, the last lines of its log, its core file.",
        "required": ["time", "exit_code", "signal", "description", "run_seconds", "log_tail"],
        "properties": {
            "time": {"type": "number"},
            "exit_code": _NULLABLE_INT,
            "signal": _NULLABLE_STRING,
            "description": {"type": "string"},
            "run_seconds": {"type": "number"},
            "log_tail": {"type": "array", "items": {"type": "string"}},
            "core_file": _NULLABLE_STRING,
            "file": {"type": "string"},
        },
    },
    "ready": {
        "type": "boolean",
        "description": "Its process ran min_ready_seconds and its ready_check passed.",
    },
    "rejected": {
        "type": ["object", "null"],
        "description": "Its file's content, rolled back after a failed rollout: not tried "
        "again until the file changes.",
        "required": ["hash", "reason", "time"],
        "additionalProperties": False,
        "properties": {
            "hash": {"type": "string"},
            "reason": {"type": "string"},
            "time": {"type": "number"},
        },
    },
    "held": {
        "type": ["object", "null"],
        "description": "A start or restart it needs waits: for after (a dependency not ready, "
        "a dependent not yet stopped), its wave (max_unavailable), or a failed rollout that "
        "holds the waves.",
        "required": ["cause", "reason"],
        "additionalProperties": False,
        "properties": {
            "cause": {"type": "string", "enum": ["after", "wave", "held"]},
            "reason": {"type": "string"},
        },
    },
}
"""Every key of ``view_to_json``: each is always there."""

COMPONENTS: dict[str, Any] = {
    "Error": {
        "description": "DESIGN §5: every error, whatever the route or the reason.",
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "category", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": ERROR_CODES},
                    "category": {
                        "type": "string",
                        "enum": ["Resource", "Internal", "Configuration", "Timeout"],
                    },
                    "message": {"type": "string"},
                    "problems": {"type": "array", "items": {"type": "string"}},
                },
            }
        },
    },
    "Override": {
        "type": ["object", "null"],
        "required": ["action", "reason"],
        "properties": {
            "action": {"type": "string", "enum": ["running", "paused"]},
            "reason": {"type": "string"},
        },
    },
    "Collector": {
        "type": "object",
        "required": list(_COLLECTOR),
        "properties": _COLLECTOR,
    },
    "Event": {
        "type": "object",
        "required": ["time", "unix_time", "id", "kind", "message"],
        "properties": {
            "time": {"type": "string"},
            "unix_time": {"type": "number"},
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "DiffLine": {
        "type": "object",
        "required": ["id", "action", "reason", "line", "difference", "wave", "held"],
        "properties": {
            "id": {"type": "string"},
            "action": {"type": "string"},
            "reason": {"type": "string"},
            "line": {"type": "string"},
            "difference": {"type": "boolean"},
            "wave": {
                "type": "integer",
                "description": "With max_unavailable: the wave of a restart (1: at once); 0 "
                "without.",
            },
            "held": {
                **_NULLABLE_STRING,
                "description": "Why it would wait for other collectors (after, a held rollout).",
            },
        },
    },
}

_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the collector's id, its spec file's stem; any other string is 404",
    "schema": {"type": "string", "pattern": f"^{_ID}$"},
}
_ACTION_ERRORS = (404, 409, 500, 501, 504)
"""What an operator action may meet: no such collector, a state that refuses it, a process
that would not start or stop, a platform without job control, a deadline."""


def _action(summary: str, *, pid: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = _ref("Collector")
    if pid:
        body = {"allOf": [_ref("Collector"), {"properties": {"pid": {"type": "integer"}}}]}
    return {
        "post": {
            "summary": summary,
            "parameters": [_ID_PARAMETER],
            "responses": {
                "200": _json(body, "the collector afterwards"),
                **_errors(*_ACTION_ERRORS),
            },
        }
    }


def _object(description: str, **properties: dict[str, Any]) -> dict[str, Any]:
    """A 200 body: an object with exactly these keys."""
    schema = {"type": "object", "required": list(properties), "properties": properties}
    return _json(schema, description)


_PLAN_BODY = {
    "description": f"at most {PLAN_BODY_MAX_BYTES} bytes (larger: 413), plain JSON "
    "(no Content-Encoding); no body at all: the daemon's specs directory",
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "files": {
                        "type": "object",
                        "maxProperties": MAX_PLAN_FILES,
                        # <id>.toml; any other name is 422 INVALID_SPEC, as is TOML no spec.
                        "propertyNames": {"pattern": f"^{_ID}\\.toml$"},
                        "additionalProperties": {"type": "string"},
                        "description": "spec file name -> its TOML text, as a whole specs "
                        "directory; absent: the daemon's specs directory",
                    }
                },
            }
        }
    },
}


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API."""
    p = API_PREFIX
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "reconciler control API",
            "version": version,
            "description": "JSON over HTTP on the reconciler's unix socket (DESIGN §8). "
            "Every error, on every route, is DESIGN §5's body "
            '(`{"error": {"code", "category", "message"}}`); an unknown path is 404 '
            "NOT_FOUND, a method a path does not have 405 METHOD_NOT_ALLOWED (with Allow), "
            f"a request line or header over {MAX_REQUEST_LINE_BYTES} bytes 400 BAD_REQUEST, "
            f"a body over {PLAN_BODY_MAX_BYTES} bytes 413.",
        },
        "paths": {
            f"{p}/collectors": {
                "get": {
                    "summary": "every collector known",
                    "parameters": [
                        {
                            "name": "rescan",
                            "in": "query",
                            "schema": {"type": "boolean"},
                            "description": "true: read the specs directory first "
                            "(true or false, in any case; anything else is 400)",
                        }
                    ],
                    "responses": {
                        "200": _object(
                            "the collectors, whether the first reconcile is done, and "
                            "whether waves of a push are held after a failed rollout",
                            collectors={"type": "array", "items": _ref("Collector")},
                            ready={"type": "boolean"},
                            rollout_held={"type": "boolean"},
                        ),
                        **_errors(),
                    },
                }
            },
            f"{p}/collectors/{{id}}": {
                "get": {
                    "summary": "one collector",
                    "parameters": [_ID_PARAMETER],
                    "responses": {"200": _json(_ref("Collector"), "the collector"), **_errors(404)},
                }
            },
            f"{p}/collectors/{{id}}/restart": _action("graceful restart now", pid=True),
            f"{p}/collectors/{{id}}/pause": _action("pause until resumed or the spec changes"),
            f"{p}/collectors/{{id}}/resume": _action("resume a paused collector"),
            f"{p}/events": {
                "get": {
                    "summary": "recent events, oldest first",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "only this collector's (a forgotten one's too)",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                            "description": "only the last N",
                        },
                    ],
                    "responses": {
                        "200": _object(
                            "the events", events={"type": "array", "items": _ref("Event")}
                        ),
                        **_errors(),
                    },
                }
            },
            f"{p}/reload": {
                "post": {
                    "summary": "re-read the config file and rescan the specs",
                    "responses": {
                        "200": _object("reloaded", reloaded={"const": True}),
                        **_errors(422, 500),
                    },
                }
            },
            f"{p}/plan": {
                "post": {
                    "summary": "what applying these spec files would do (reconciler diff)",
                    "requestBody": _PLAN_BODY,
                    "responses": {
                        "200": _object(
                            "one line per collector that would change",
                            differences={"type": "integer", "minimum": 0},
                            actions={"type": "array", "items": _ref("DiffLine")},
                        ),
                        **_errors(413, 422),
                    },
                }
            },
            f"{p}/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {
                        "200": _object(
                            "OpenAPI 3.1",
                            openapi={"const": "3.1.0"},
                            info={"type": "object"},
                            paths={"type": "object"},
                            components={"type": "object"},
                        ),
                        **_errors(),
                    },
                }
            },
        },
        "components": {"schemas": COMPONENTS},
    }
