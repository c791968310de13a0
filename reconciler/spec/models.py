"""Frozen pydantic models of spec files and the manager config.

Everything inside the reconciler sees only these validated, typed models; the
TOML bytes become models in ``reconciler.spec.load`` and nowhere else. No I/O.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

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
    # Attribute docstrings become field descriptions in the JSON Schema, which
    # editors show on hover (``reconciler schema``).
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False
    )


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
    core_dump: bool = False
    """``True``: ``RLIMIT_CORE`` unlimited, so a crash may leave a core file."""


def url_without_password(url: str) -> str:
    """A probe URL as an answer or a message may show it: its password as ``***``; in a URL
    that does not parse (an unclosed ``[``), the whole user part."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        _, at, host = authority.rpartition("@")
        return f"{scheme}://{'***@' if at else ''}{host}{slash}{path}"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class Probe(_Frozen):
    """A probe: exactly one of exec, http, tcp (``[health_check]``, ``[ready_check]``)."""

    exec: Annotated[list[str], Field(min_length=1)] | None = None
    """Probe command (no shell); it passes when it exits 0."""
    http: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Probe URL (http:// or https://)."""
    tcp: Annotated[str, Field(pattern=r"^\[?[^\s\]]+\]?:\d{1,5}$")] | None = None
    """Probe address HOST:PORT; it passes when a connection opens."""
    timeout_seconds: PositiveFloat = 5.0
    """A probe that takes longer has failed."""

    @model_validator(mode="after")
    def _exactly_one_probe(self) -> Probe:
        given = [name for name in ("exec", "http", "tcp") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of exec, http or tcp"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class HealthCheck(Probe):
    """A liveness probe beyond "the process exists": exactly one of exec, http, tcp."""

    interval_seconds: PositiveFloat | None = None
    """Default: the manager's ``health_check_interval_seconds``."""
    failure_threshold: PositiveInt = 3
    """Consecutive failures that make the collector unhealthy (restarted when auto_restart)."""


class ReadyCheck(Probe):
    """A readiness probe: run until it passes once for each new process (§4 readiness)."""

    interval_seconds: PositiveFloat = 1.0
    """Between attempts until it passes."""


def _normalise_signal(value: str) -> str:
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(
            f'must be a signal name such as "SIGTERM", "SIGINT" or "SIGQUIT" (got "{value}")'
        )
    return name


class CollectorConfig(_Frozen):
    """How to run one collector: the library's ``start_collector`` argument.

    ``None`` means "the manager's default" for every optional policy key.
    """

    binary_path: str | None = None
    """Absolute, relative to the spec directory, or a bare name found on PATH.
    Default: the manager's ``collector_binaries[type]``, then ``/usr/local/bin/<type>``."""
    args: tuple[str, ...] = ()
    """Command-line arguments (no shell)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Added to a minimal inherited environment."""
    working_dir: str | None = None
    """Working directory of the collector."""
    user: str | None = None
    """Run as this user; only when the reconciler runs as root."""
    group: str | None = None
    """Run as this group; only when the reconciler runs as root."""
    auto_restart: bool | None = None
    """Restart after a crash. Default: the manager's ``enable_auto_restart``."""
    max_restarts: NonNegativeInt | Literal["unlimited"] = 3
    """Consecutive automatic restarts before ``failed``; "unlimited" never gives up."""
    graceful_timeout_seconds: NonNegativeFloat | None = None
    """Wait after ``stop_signal`` before SIGKILL. Default: the manager's."""
    force_timeout_seconds: PositiveFloat | None = None
    """Wait after SIGKILL before giving up (TERMINATE_FAILED). Default: the manager's."""
    stop_signal: str = "SIGTERM"
    """Sent to the collector's process group to stop it."""
    log: LogMode = "file"
    """Where output goes. "file": <state_dir>/logs/<id>.log, rotated by size; "inherit": the
    reconciler's stdout/stderr; "null": discarded."""
    resource_limits: ResourceLimits | None = None
    """Enforced limits (cgroup where available, else rlimits)."""
    health_check: HealthCheck | None = None
    """A liveness probe: exactly one of exec, http or tcp."""
    ready_check: ReadyCheck | None = None
    """A readiness probe (exactly one of exec, http or tcp): the process is ready once it passed."""
    min_ready_seconds: NonNegativeFloat = 0.0
    """A new process is ready once it has run this long (and its ready_check passed)."""
    restart_backoff_initial_seconds: PositiveFloat | None = None
    """First delay of a crash series; doubles each crash. Default: the manager's."""
    restart_backoff_max_seconds: PositiveFloat | None = None
    """Cap of the backoff delay. Default: the manager's."""
    restart_reset_seconds: PositiveFloat | None = None
    """A run this long ends the crash series. Default: the manager's."""

    @field_validator("stop_signal")
    @classmethod
    def _signal_name(cls, value: str) -> str:
        return _normalise_signal(value)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise ValueError(
                    f'"{key}" is not an environment variable name (empty, or has "=" or NUL)'
                )
        if any("\0" in item for item in value.values()):
            raise ValueError("environment values cannot contain NUL characters")
        return value

    @field_validator("args")
    @classmethod
    def _no_nul_in_args(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A NUL cannot be passed to exec: refuse it here, not as SPAWN_FAILED later.
        if any("\0" in item for item in value):
            raise ValueError("arguments cannot contain NUL characters")
        return value


class CollectorSpec(CollectorConfig):
    """One spec file: a collector's config plus its type and desired state."""

    type: CollectorType
    """Collector type: the binary lookup key and the ``type`` metric label."""
    state: DesiredState = DesiredState.RUNNING
    """Desired state."""
    id: CollectorId | None = None
    """Optional; must equal the file name without ``.toml`` (the file name is the id)."""
    after: tuple[CollectorId, ...] = ()
    """Start only once these collectors are ready; stop before them."""
    rollout_timeout_seconds: PositiveFloat = 120.0
    """A start for a spec change not ready within this is a failed rollout."""
    rollback: bool | None = None
    """On a failed rollout, run the last ready spec again. Default: the manager config's."""

    @field_validator("after")
    @classmethod
    def _after_once_each(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({item for item in value if value.count(item) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(repeated)} more than once")
        return value


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
    control_group: Annotated[str, Field(min_length=1)] | None = None
    """Members of this group may use the control API (socket 0660 for it); else root and
    the daemon's own user only (0600)."""
    max_unavailable: NonNegativeInt = 0
    """At most this many collectors restarting for spec changes at once (0: no limit)."""
    rollback: bool = False
    """Default of the per-spec ``rollback`` key."""


class ManagerConfigFile(_Frozen):
    """A whole ``reconciler run --config`` file; every key has a default."""

    process_manager: ProcessManagerConfig = Field(default_factory=ProcessManagerConfig)
    reconciler: ReconcilerSettings = Field(default_factory=ReconcilerSettings)
