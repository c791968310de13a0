"""Spec files and the manager config: models, TOML loading, JSON Schema. Pure."""

from reconciler.spec.models import (
    ID_PATTERN,
    UNLIMITED,
    CollectorConfig,
    CollectorSpec,
    HealthCheck,
    ManagerConfigFile,
    ProcessManagerConfig,
    ReconcilerSettings,
    ResourceLimits,
)

__all__ = [
    "ID_PATTERN",
    "UNLIMITED",
    "CollectorConfig",
    "CollectorSpec",
    "HealthCheck",
    "ManagerConfigFile",
    "ProcessManagerConfig",
    "ReconcilerSettings",
    "ResourceLimits",
]

from reconciler.spec.load import (  # noqa: E402
    PROCESS_IDENTITY_KEYS,
    parse_manager_config,
    parse_spec,
    process_hash,
    spec_hash,
)

__all__ += [
    "PROCESS_IDENTITY_KEYS",
    "parse_manager_config",
    "parse_spec",
    "process_hash",
    "spec_hash",
]
