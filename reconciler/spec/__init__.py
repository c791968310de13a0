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

from reconciler.spec.identity import PROCESS_IDENTITY_KEYS, process_hash, spec_hash, spec_hashes
from reconciler.spec.load import (
    SPEC_SUFFIX,
    collector_id_from_filename,
    is_ignored_filename,
    is_spec_filename,
    parse_manager_config,
    parse_spec,
    starter_spec,
)
from reconciler.spec.schema import json_schema

__all__ += [
    "PROCESS_IDENTITY_KEYS",
    "SPEC_SUFFIX",
    "collector_id_from_filename",
    "is_ignored_filename",
    "is_spec_filename",
    "json_schema",
    "parse_manager_config",
    "parse_spec",
    "process_hash",
    "spec_hash",
    "spec_hashes",
    "starter_spec",
]
