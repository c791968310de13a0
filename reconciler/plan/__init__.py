"""The decision layer: pure functions from desired and observed state to actions.

No clock, no I/O, no logging: every policy here is unit-tested without a process.
``plan()`` is the one decider, used by the reconcile loop, the library façade
and ``reconciler diff`` alike.
"""

from reconciler.plan.actions import (
    Action,
    Forget,
    GiveUp,
    Pause,
    Restart,
    Resume,
    Start,
    Stop,
    Update,
    Wait,
    describe,
)
from reconciler.plan.planner import Desired, Exit, Observed, Override, converged, plan
from reconciler.plan.policy import (
    NoRestart,
    RestartAfter,
    RestartDecision,
    RestartPolicy,
    backoff_delay_seconds,
    decide_restart,
)

__all__ = [
    "Action",
    "Desired",
    "Exit",
    "Forget",
    "GiveUp",
    "NoRestart",
    "Observed",
    "Override",
    "Pause",
    "Restart",
    "RestartAfter",
    "RestartDecision",
    "RestartPolicy",
    "Resume",
    "Start",
    "Stop",
    "Update",
    "Wait",
    "backoff_delay_seconds",
    "converged",
    "decide_restart",
    "describe",
    "plan",
]
