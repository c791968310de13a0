"""The process layer: a driver seam for effects, the executor and controller, the §6 façade.

``ProcessDriver`` (``driver``) is every effect on processes; ``PosixDriver``
(``posix``) the real one and ``FakeDriver`` (``fake``) a scripted one for
tests, imported when first named (the daemon does not load it). The executor
carries out ``reconciler.plan``'s actions through a driver; the controller
runs plan -> execute; ``CollectorProcessManager`` is the library API over both.
No restart policy lives in this layer.
"""

from typing import TYPE_CHECKING, Any

from reconciler.process.clock import Clock, ManualClock, settle
from reconciler.process.driver import Launch, ProbeResult, ProcessDriver, Run, RunIdentity
from reconciler.process.events import ManagerEvent, describe_exit
from reconciler.process.manager import CollectorProcessManager
from reconciler.process.posix import PosixDriver
from reconciler.process.records import Applied
from reconciler.process.tree import process_start_ticks

if TYPE_CHECKING:
    from reconciler.process.fake import FakeDriver

__all__ = [
    "Applied",
    "Clock",
    "CollectorProcessManager",
    "FakeDriver",
    "Launch",
    "ManagerEvent",
    "ManualClock",
    "PosixDriver",
    "ProbeResult",
    "ProcessDriver",
    "Run",
    "RunIdentity",
    "describe_exit",
    "process_start_ticks",
    "settle",
]


def __getattr__(name: str) -> Any:
    if name == "FakeDriver":
        from reconciler.process.fake import FakeDriver

        return FakeDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
