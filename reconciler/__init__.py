"""reconciler: a declarative, operator-style supervisor for collector processes.

The public API is exported here (``__all__``). Names are imported on first use
(PEP 562), so ``import reconciler`` — which every collector, probe and CLI call
pays — does not load the process manager and its dependencies until asked.
"""

from __future__ import annotations

import sys

# Not ``typing.TYPE_CHECKING``: importing typing (~4 ms) is more than a ``reconciler status``
# may spend on start-up, and every client command imports this package first. Type checkers
# take a module-level name TYPE_CHECKING as true whatever its value (as typing's own is).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from reconciler.errors import (
        AlreadyRunning,
        ErrorCategory,
        InvalidSpec,
        InvalidState,
        Io,
        PlatformNotSupported,
        ProcessManagerError,
        ProcessNotFound,
        ReconcilerError,
        SpawnFailed,
        TerminateFailed,
        Timeout,
    )
    from reconciler.process import CollectorProcessManager, ManagerEvent
    from reconciler.spec import (
        CollectorConfig,
        CollectorSpec,
        HealthCheck,
        ProcessManagerConfig,
        ResourceLimits,
    )
    from reconciler.state import CollectorState, CollectorStatus, DesiredState, HealthStatus

__version__ = "0.1.0"

_ERRORS = (
    "AlreadyRunning",
    "ErrorCategory",
    "InvalidSpec",
    "InvalidState",
    "Io",
    "PlatformNotSupported",
    "ProcessManagerError",
    "ProcessNotFound",
    "ReconcilerError",
    "SpawnFailed",
    "TerminateFailed",
    "Timeout",
)

_LAZY = {
    **dict.fromkeys(_ERRORS, "reconciler.errors"),
    "CollectorProcessManager": "reconciler.process",
    "ManagerEvent": "reconciler.process",
    "CollectorConfig": "reconciler.spec",
    "CollectorSpec": "reconciler.spec",
    "HealthCheck": "reconciler.spec",
    "ProcessManagerConfig": "reconciler.spec",
    "ResourceLimits": "reconciler.spec",
    "CollectorState": "reconciler.state",
    "CollectorStatus": "reconciler.state",
    "DesiredState": "reconciler.state",
    "HealthStatus": "reconciler.state",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reconciler' has no attribute {name!r}")
    # __import__, not importlib.import_module: the importlib package is one import more.
    __import__(module)
    value = getattr(sys.modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted((set(globals()) - {"TYPE_CHECKING"}) | set(_LAZY))


__all__ = [
    "AlreadyRunning",
    "CollectorConfig",
    "CollectorProcessManager",
    "CollectorSpec",
    "CollectorState",
    "CollectorStatus",
    "DesiredState",
    "ErrorCategory",
    "HealthCheck",
    "HealthStatus",
    "InvalidSpec",
    "InvalidState",
    "Io",
    "ManagerEvent",
    "PlatformNotSupported",
    "ProcessManagerConfig",
    "ProcessManagerError",
    "ProcessNotFound",
    "ReconcilerError",
    "ResourceLimits",
    "SpawnFailed",
    "TerminateFailed",
    "Timeout",
    "__version__",
]
