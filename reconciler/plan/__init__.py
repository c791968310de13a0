"""The decision layer: pure functions from desired and observed state to actions.

No clock, no I/O, no logging: every policy here is unit-tested without a process.
"""

from reconciler.plan.policy import (
    GiveUp,
    NoRestart,
    RestartAfter,
    RestartDecision,
    RestartPolicy,
    backoff_delay_seconds,
    decide_restart,
)

__all__ = [
    "GiveUp",
    "NoRestart",
    "RestartAfter",
    "RestartDecision",
    "RestartPolicy",
    "backoff_delay_seconds",
    "decide_restart",
]
