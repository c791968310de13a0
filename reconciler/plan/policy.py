"""The restart policy: what to do when a collector exits without being asked to.

Pure: no clock, no I/O, no randomness. The caller passes in how long the run
lasted and how many automatic restarts the current crash series already had;
jitter is derived from the collector id and the attempt number, so it is
reproducible and still spreads many collectors apart. Called by the planner
(``plan()``) for every exit nobody asked for; nothing else decides restarts.

DESIGN §4: the first crash of a series restarts at once; each further
consecutive crash waits ``initial * 2**(n-1)`` seconds, capped at ``max``, less
up to 10 % jitter; a run that lasted ``reset_seconds`` ends the series; more
than ``max_restarts`` consecutive automatic restarts gives up (``failed``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from reconciler.spec.models import UNLIMITED, CollectorConfig, ProcessManagerConfig

JITTER_FRACTION = 0.10


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Restart settings with every manager default already applied."""

    auto_restart: bool
    max_restarts: int | None
    """``None``: never give up."""
    backoff_initial_seconds: float
    backoff_max_seconds: float
    reset_seconds: float

    @classmethod
    def resolve(cls, config: CollectorConfig, defaults: ProcessManagerConfig) -> RestartPolicy:
        def pick(own: float | None, default: float) -> float:
            return default if own is None else own

        return cls(
            auto_restart=(
                defaults.enable_auto_restart if config.auto_restart is None else config.auto_restart
            ),
            max_restarts=None if config.max_restarts == UNLIMITED else int(config.max_restarts),
            backoff_initial_seconds=pick(
                config.restart_backoff_initial_seconds, defaults.restart_backoff_initial_seconds
            ),
            backoff_max_seconds=pick(
                config.restart_backoff_max_seconds, defaults.restart_backoff_max_seconds
            ),
            reset_seconds=pick(config.restart_reset_seconds, defaults.restart_reset_seconds),
        )


@dataclass(frozen=True, slots=True)
class NoRestart:
    """Auto-restart is off: the collector stays down."""

    reason: str


@dataclass(frozen=True, slots=True)
class TooManyRestarts:
    """Too many consecutive restarts: the collector becomes ``failed``."""

    reason: str


@dataclass(frozen=True, slots=True)
class RestartAfter:
    """Restart after ``delay_seconds`` (0: at once); this is restart ``attempt`` of the series."""

    delay_seconds: float
    attempt: int


RestartDecision = NoRestart | TooManyRestarts | RestartAfter


def backoff_delay_seconds(policy: RestartPolicy, *, attempt: int, jitter_key: str) -> float:
    """Delay before automatic restart number ``attempt`` (1-based) of a crash series."""
    if attempt <= 1:
        return 0.0
    base = min(policy.backoff_initial_seconds * 2.0 ** (attempt - 2), policy.backoff_max_seconds)
    # Jitter shortens rather than lengthens, so the cap stays a cap and capped
    # collectors still do not restart in lockstep.
    spread = zlib.crc32(f"{jitter_key}:{attempt}".encode()) / 0xFFFFFFFF
    return base * (1.0 - JITTER_FRACTION * spread)


def series_after_run(
    policy: RestartPolicy, *, consecutive_restarts: int, run_seconds: float
) -> int:
    """Restarts still counted in the series once a run of ``run_seconds`` has ended."""
    return 0 if run_seconds >= policy.reset_seconds else consecutive_restarts


def decide_restart(
    policy: RestartPolicy,
    *,
    consecutive_restarts: int,
    run_seconds: float,
    exit_description: str,
    jitter_key: str,
) -> RestartDecision:
    """Decide what follows an exit nobody asked for.

    ``consecutive_restarts`` is how many automatic restarts the series had
    before this exit; ``run_seconds`` how long the run that just ended lasted.
    """
    if not policy.auto_restart:
        return NoRestart(f"{exit_description}; auto-restart is off")
    done = series_after_run(
        policy, consecutive_restarts=consecutive_restarts, run_seconds=run_seconds
    )
    if policy.max_restarts is not None and done >= policy.max_restarts:
        return TooManyRestarts(
            f"{exit_description}; gave up after {done} consecutive restart"
            f"{'' if done == 1 else 's'} (max_restarts = {policy.max_restarts})"
        )
    attempt = done + 1
    return RestartAfter(
        delay_seconds=backoff_delay_seconds(policy, attempt=attempt, jitter_key=jitter_key),
        attempt=attempt,
    )
