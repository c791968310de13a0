"""Frozen pydantic models of spec files and the manager config.

Everything inside the reconciler sees only these validated, typed models; the
TOML bytes become models in ``reconciler.spec.load`` and nowhere else. No I/O.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from reconciler.state import DesiredState

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""A collector id: the spec file's stem."""

CollectorId = Annotated[str, Field(pattern=ID_PATTERN)]
CollectorType = Annotated[str, Field(pattern=ID_PATTERN)]
LogMode = Literal["file", "inherit", "null"]
UNLIMITED = "unlimited"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ResourceLimits(_Frozen):
    """Limits enforced on a collector (cgroup where available, else rlimits)."""

    memory_max_bytes: PositiveInt | None = None
    """cgroup ``memory.max`` where available, else ``RLIMIT_AS``."""
    open_files: PositiveInt | None = None
    """``RLIMIT_NOFILE``."""
    processes: PositiveInt | None = None
    """cgroup ``pids.max`` where available, else ``RLIMIT_NPROC``."""
    cpu_max_percent: Annotated[float, Field(gt=0, le=100_000)] | None = None
    """cgroup ``cpu.max`` only; a warning where unavailable. 100 = one core."""


class HealthCheck(_Frozen):
    """A liveness probe beyond "the process exists": exactly one of exec, http, tcp."""

    exec: Annotated[list[str], Field(min_length=1)] | None = None
    http: Annotated[str, Field(pattern=r"^https?://")] | None = None
    tcp: Annotated[str, Field(pattern=r"^\[?[^\s\]]+\]?:\d{1,5}$")] | None = None
    interval_seconds: PositiveFloat | None = None
    """Default: the manager's ``health_check_interval_seconds``."""
    timeout_seconds: PositiveFloat = 5.0
    failure_threshold: PositiveInt = 3

    @model_validator(mode="after")
    def _exactly_one_probe(self) -> HealthCheck:
        given = [name for name in ("exec", "http", "tcp") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of exec, http or tcp"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


def _normalise_signal(value: str) -> str:
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(f"{value!r} is not a signal name (e.g. SIGTERM, SIGINT, SIGQUIT)")
    return name


class CollectorConfig(_Frozen):
    """How to run one collector: the library's ``start_collector`` argument.

    ``None`` means "the manager's default" for every optional policy key.
    """

    binary_path: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    group: str | None = None
    auto_restart: bool | None = None
    max_restarts: NonNegativeInt | Literal["unlimited"] = 3
    graceful_timeout_seconds: NonNegativeFloat | None = None
    force_timeout_seconds: PositiveFloat | None = None
    stop_signal: str = "SIGTERM"
    log: LogMode = "file"
    resource_limits: ResourceLimits | None = None
    health_check: HealthCheck | None = None
    restart_backoff_initial_seconds: PositiveFloat | None = None
    restart_backoff_max_seconds: PositiveFloat | None = None
    restart_reset_seconds: PositiveFloat | None = None

    @field_validator("stop_signal")
    @classmethod
    def _signal_name(cls, value: str) -> str:
        return _normalise_signal(value)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value


class CollectorSpec(CollectorConfig):
    """One spec file: a collector's config plus its type and desired state."""

    type: CollectorType
    state: DesiredState = DesiredState.RUNNING
    id: CollectorId | None = None

    def collector_config(self) -> CollectorConfig:
        """The part of the spec the process manager needs."""
        return CollectorConfig.model_validate(
            self.model_dump(exclude={"type", "state", "id"}, exclude_unset=True)
        )


class ProcessManagerConfig(_Frozen):
    """The ``[process_manager]`` table (DaemonEye keys plus the three backoff keys)."""

    enable_auto_restart: bool = True
    default_graceful_timeout_seconds: NonNegativeFloat = 30.0
    default_force_timeout_seconds: PositiveFloat = 5.0
    health_check_interval_seconds: PositiveFloat = 60.0
    collector_binaries: dict[str, str] = Field(default_factory=dict)
    restart_backoff_initial_seconds: PositiveFloat = 1.0
    restart_backoff_max_seconds: PositiveFloat = 60.0
    restart_reset_seconds: PositiveFloat = 60.0


class ReconcilerSettings(_Frozen):
    """The ``[reconciler]`` table."""

    specs_dir: Path = Path("/etc/reconciler/specs")
    state_dir: Path = Path("/var/lib/reconciler")
    metrics_address: str = "127.0.0.1:9184"
    socket_path: Path = Path("/run/reconciler/api.sock")
    on_exit: Literal["stop", "keep"] = "stop"
    log_max_bytes: PositiveInt = 10 * 1024 * 1024
    log_backups: NonNegativeInt = 5


class ManagerConfigFile(_Frozen):
    """A whole ``reconciler run --config`` file; every key has a default."""

    process_manager: ProcessManagerConfig = Field(default_factory=ProcessManagerConfig)
    reconciler: ReconcilerSettings = Field(default_factory=ReconcilerSettings)
