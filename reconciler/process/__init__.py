"""The process layer: spawn, signal, watch and restart collector processes."""

from reconciler.process.manager import CollectorProcessManager, ManagerEvent, describe_exit

__all__ = ["CollectorProcessManager", "ManagerEvent", "describe_exit"]
