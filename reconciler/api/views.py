"""Collectors, specs and events as the API's JSON: never an env value or a password."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.api.constants import HTTP_ERRORS
from reconciler.loop import CollectorView, Event
from reconciler.spec.models import CollectorSpec, url_without_password
from reconciler.state import HealthStatus

# -- JSON ----------------------------------------------------------------------------------


def iso_time(unix_time: float) -> str:
    """``2026-11-26T03:40:01.123Z``."""
    stamp = datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def spec_to_json(spec: CollectorSpec) -> dict[str, Any]:
    """The spec as JSON, less its secrets: env values (keys only) and URL passwords."""
    data = spec.model_dump(mode="json", exclude={"env"})
    data["env_keys"] = sorted(spec.env)
    for probe in ("health_check", "ready_check"):
        check = data.get(probe)
        if isinstance(check, dict) and isinstance(check.get("http"), str):
            check["http"] = url_without_password(check["http"])
    return data


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
        "log_file": view.log_file,
        "last_crash": dict(view.last_crash) if view.last_crash is not None else None,
        "ready": view.ready,
        "rejected": (
            {
                "hash": view.rejected.spec_hash,
                "reason": view.rejected.reason,
                "time": view.rejected.wall_time,
            }
            if view.rejected is not None
            else None
        ),
        "held": (
            {"cause": view.held_cause, "reason": view.held} if view.held is not None else None
        ),
    }


def event_to_json(event: Event) -> dict[str, Any]:
    return {
        "time": iso_time(event.wall_time),
        "unix_time": event.wall_time,
        "id": event.collector_id,
        "kind": event.kind,
        "message": event.message,
    }


def error_body(code: str, category: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "category": category, "message": message}}


def http_error_body(status: int, message: str) -> dict[str, Any]:
    """The §5 body of an HTTP-level error: its own code where §5 has one, else any other
    client error is a bad request (413, say) and any other server error internal."""
    fallback = ("BAD_REQUEST", "Configuration") if status < 500 else ("INTERNAL", "Internal")
    code, category = HTTP_ERRORS.get(status, fallback)
    return error_body(code, category, message)
