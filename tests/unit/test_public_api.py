"""The package's public surface: exported names and stable error codes."""

from __future__ import annotations

from types import ModuleType

import pytest

import reconciler
from reconciler import errors


def test_all_matches_what_is_exported() -> None:
    for name in reconciler.__all__:
        assert getattr(reconciler, name) is not None, name
    # Every class the package root offers (eagerly or lazily) is in __all__.
    offered = {
        name
        for name in dir(reconciler)
        if not name.startswith("_")
        and not isinstance(getattr(reconciler, name), ModuleType)
        and getattr(getattr(reconciler, name), "__module__", "").startswith("reconciler.")
    }
    assert offered == set(reconciler.__all__) - {"__version__"}


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        reconciler.Nope  # noqa: B018


def test_design_section_6_names_are_exported() -> None:
    required = {
        "CollectorProcessManager",
        "CollectorConfig",
        "ProcessManagerConfig",
        "CollectorState",
        "CollectorStatus",
        "HealthStatus",
        "ResourceLimits",
        "ProcessManagerError",
    }
    assert required <= set(reconciler.__all__)
    manager_methods = {
        "start_collector",
        "stop_collector",
        "restart_collector",
        "pause_collector",
        "resume_collector",
        "check_collector_health",
        "get_collector_status",
        "shutdown_all",
    }
    assert manager_methods <= set(dir(reconciler.CollectorProcessManager))


def test_seven_states() -> None:
    assert [s.value for s in reconciler.CollectorState] == [
        "starting",
        "running",
        "paused",
        "stopping",
        "stopped",
        "backoff",
        "failed",
    ]


@pytest.mark.parametrize(
    ("error", "code", "category", "status"),
    [
        (errors.ProcessNotFound, "PROCESS_NOT_FOUND", "Resource", 404),
        (errors.AlreadyRunning, "ALREADY_RUNNING", "Resource", 409),
        (errors.SpawnFailed, "SPAWN_FAILED", "Internal", 500),
        (errors.TerminateFailed, "TERMINATE_FAILED", "Internal", 500),
        (errors.InvalidState, "INVALID_STATE", "Configuration", 409),
        (errors.PlatformNotSupported, "PLATFORM_NOT_SUPPORTED", "Configuration", 501),
        (errors.Timeout, "TIMEOUT", "Timeout", 504),
        (errors.Io, "IO_ERROR", "Internal", 500),
        (errors.InvalidSpec, "INVALID_SPEC", "Configuration", 422),
    ],
)
def test_error_codes_are_stable(
    error: type[errors.ReconcilerError], code, category, status
) -> None:
    exc = error("boom")
    assert exc.to_dict() == {"code": code, "category": category, "message": "boom"}
    assert exc.http_status == status
    if error is not errors.InvalidSpec:
        assert isinstance(exc, errors.ProcessManagerError)
