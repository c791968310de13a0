"""The control API described in OpenAPI 3.1, served at ``GET /api/v1/openapi.json``.

Built here as data, next to the handlers it describes; a test checks that
every route of the application is described (and nothing else), that the
document is valid OpenAPI 3.1, and that real answers match their schemas.
"""

from __future__ import annotations

from typing import Any

from reconciler.api.constants import API_PREFIX

ERROR_CODES = [
    "PROCESS_NOT_FOUND",
    "ALREADY_RUNNING",
    "SPAWN_FAILED",
    "TERMINATE_FAILED",
    "INVALID_STATE",
    "PLATFORM_NOT_SUPPORTED",
    "TIMEOUT",
    "IO_ERROR",
    "INVALID_SPEC",
    "BAD_REQUEST",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "INTERNAL",
]
STATES = ["starting", "running", "paused", "stopping", "stopped", "backoff", "failed"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    words = {
        400: "malformed request",
        403: "this user may not use the API",
        404: "no such collector",
        409: "not possible in the collector's state",
        413: "request body too large",
        422: "invalid spec or config file",
        500: "the action failed",
        504: "not there in time",
    }
    return {str(status): _json(_ref("Error"), words[status]) for status in (403, *statuses)}


_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}

COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "category", "message"],
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
        "required": ["id", "type", "desired", "state", "health", "pid", "converged"],
        "properties": {
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
        },
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
        "required": ["id", "action", "reason", "line", "difference"],
        "properties": {
            "id": {"type": "string"},
            "action": {"type": "string"},
            "reason": {"type": "string"},
            "line": {"type": "string"},
            "difference": {"type": "boolean"},
        },
    },
}

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _action(summary: str, *errors: int, pid: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = _ref("Collector")
    if pid:
        body = {"allOf": [_ref("Collector"), {"properties": {"pid": {"type": "integer"}}}]}
    return {
        "post": {
            "summary": summary,
            "parameters": [_ID],
            "responses": {"200": _json(body, "the collector afterwards"), **_errors(*errors)},
        }
    }


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API."""
    p = API_PREFIX
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "reconciler control API",
            "version": version,
            "description": "JSON over HTTP on the reconciler's unix socket (DESIGN §8).",
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
                            "description": "read the specs directory first",
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["collectors", "ready"],
                                "properties": {
                                    "collectors": {"type": "array", "items": _ref("Collector")},
                                    "ready": {"type": "boolean"},
                                },
                            },
                            "the collectors, and whether the first reconcile is done",
                        ),
                        **_errors(400),
                    },
                }
            },
            f"{p}/collectors/{{id}}": {
                "get": {
                    "summary": "one collector",
                    "parameters": [_ID],
                    "responses": {"200": _json(_ref("Collector"), "the collector"), **_errors(404)},
                }
            },
            f"{p}/collectors/{{id}}/restart": _action(
                "graceful restart now", 404, 409, 500, pid=True
            ),
            f"{p}/collectors/{{id}}/pause": _action(
                "pause until resumed or the spec changes", 404, 409, 504
            ),
            f"{p}/collectors/{{id}}/resume": _action("resume a paused collector", 404, 409, 504),
            f"{p}/events": {
                "get": {
                    "summary": "recent events, oldest first",
                    "parameters": [
                        {"name": "id", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["events"],
                                "properties": {"events": {"type": "array", "items": _ref("Event")}},
                            },
                            "the events",
                        ),
                        **_errors(400),
                    },
                }
            },
            f"{p}/reload": {
                "post": {
                    "summary": "re-read the config file and rescan the specs",
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"reloaded": {"type": "boolean"}}},
                            "reloaded",
                        ),
                        **_errors(422),
                    },
                }
            },
            f"{p}/plan": {
                "post": {
                    "summary": "what applying these spec files would do (reconciler diff)",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "files": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                            "description": "file name -> TOML; absent: the "
                                            "daemon's specs directory",
                                        }
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["differences", "actions"],
                                "properties": {
                                    "differences": {"type": "integer"},
                                    "actions": {"type": "array", "items": _ref("DiffLine")},
                                },
                            },
                            "one line per collector that would change",
                        ),
                        **_errors(400, 413, 422),
                    },
                }
            },
            f"{p}/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {"schemas": COMPONENTS},
    }
