"""The process layer: spawn, signal, watch and restart collector processes."""

from reconciler.process.manager import (
    CollectorProcessManager,
    ManagerEvent,
    RunIdentity,
    describe_exit,
    process_start_ticks,
)

__all__ = [
    "CollectorProcessManager",
    "ManagerEvent",
    "RunIdentity",
    "describe_exit",
    "process_start_ticks",
]
