"""Every error the reconciler raises, with its stable code, category and HTTP status.

The library, the control API and the command line use these identically: the
API turns one into ``{"error": {"code", "category", "message"}}`` with its
``http_status``; the CLI prints ``CODE: message`` and exits 1.

Hierarchy::

    ReconcilerError
    ├── ProcessManagerError          (DaemonEye CollectorProcessManager errors)
    │   ├── ProcessNotFound          PROCESS_NOT_FOUND       Resource       404
    │   ├── AlreadyRunning           ALREADY_RUNNING         Resource       409
    │   ├── SpawnFailed              SPAWN_FAILED            Internal       500
    │   ├── TerminateFailed          TERMINATE_FAILED        Internal       500
    │   ├── InvalidState             INVALID_STATE           Configuration  409
    │   ├── PlatformNotSupported     PLATFORM_NOT_SUPPORTED  Configuration  501
    │   ├── Timeout                  TIMEOUT                 Timeout        504
    │   └── Io                       IO_ERROR                Internal       500
    └── InvalidSpec                  INVALID_SPEC            Configuration  422
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorCategory(StrEnum):
    RESOURCE = "Resource"
    INTERNAL = "Internal"
    CONFIGURATION = "Configuration"
    TIMEOUT = "Timeout"


class ReconcilerError(Exception):
    """Base of every error the reconciler raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    category: ClassVar[ErrorCategory] = ErrorCategory.INTERNAL
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "category": str(self.category), "message": self.message}


class ProcessManagerError(ReconcilerError):
    """Errors of the process manager (DaemonEye ``ProcessManagerError``)."""


class ProcessNotFound(ProcessManagerError):
    code = "PROCESS_NOT_FOUND"
    category = ErrorCategory.RESOURCE
    http_status = 404


class AlreadyRunning(ProcessManagerError):
    code = "ALREADY_RUNNING"
    category = ErrorCategory.RESOURCE
    http_status = 409


class SpawnFailed(ProcessManagerError):
    code = "SPAWN_FAILED"
    category = ErrorCategory.INTERNAL
    http_status = 500


class TerminateFailed(ProcessManagerError):
    code = "TERMINATE_FAILED"
    category = ErrorCategory.INTERNAL
    http_status = 500


class InvalidState(ProcessManagerError):
    code = "INVALID_STATE"
    category = ErrorCategory.CONFIGURATION
    http_status = 409


class PlatformNotSupported(ProcessManagerError):
    code = "PLATFORM_NOT_SUPPORTED"
    category = ErrorCategory.CONFIGURATION
    http_status = 501


class Timeout(ProcessManagerError):
    code = "TIMEOUT"
    category = ErrorCategory.TIMEOUT
    http_status = 504


class Io(ProcessManagerError):
    code = "IO_ERROR"
    category = ErrorCategory.INTERNAL
    http_status = 500


class InvalidSpec(ReconcilerError):
    """A spec or config file that does not parse or validate.

    ``problems`` lists every problem found, each naming file, key and reason.
    """

    code = "INVALID_SPEC"
    category = ErrorCategory.CONFIGURATION
    http_status = 422

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]
