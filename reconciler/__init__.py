"""reconciler: a declarative, operator-style supervisor for collector processes."""

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
