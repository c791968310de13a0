"""What the spec source hands the reconcile loop: immutable snapshots of the specs directory.

A ``SpecSnapshot`` is the whole desired state as far as files go: the
last-known-good spec of every spec file present, and the current problem of
every file that could not be taken as it is now. The loop plans from
``specs``; status, logs and metrics show ``problems``. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from reconciler.spec import CollectorSpec

DIRECTORY_KEY = "."
"""``problems`` key of a problem with the specs directory itself (missing, unreadable, unsafe)."""


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    """One spec file that parsed and validated, with the hashes the planner compares."""

    collector_id: str
    path: Path
    """Path in the specs directory (not the resolved symlink target)."""
    spec: CollectorSpec
    spec_hash: str
    """``reconciler.spec.spec_hash(spec)``: differs whenever the spec means something else."""
    process_hash: str
    """``reconciler.spec.process_hash(spec)``: differs exactly when a change needs a restart."""


@dataclass(frozen=True, slots=True)
class SpecProblem:
    """Why a file in the specs directory (or the directory itself) is not taken as it is."""

    file: str
    """File name as in the directory, e.g. ``web.toml``; ``DIRECTORY_KEY`` for the directory."""
    collector_id: str | None
    """The id the file stands for; ``None`` for a bad file name or the directory."""
    message: str
    """Every problem joined by ``"; "``, each naming the file, e.g. ``web.toml: args: ...``."""
    problems: tuple[str, ...]
    since: float
    """Wall time (``time.time()``) the file was first seen in trouble; kept while it stays so."""


def _no_specs() -> Mapping[str, LoadedSpec]:
    return MappingProxyType({})


def _no_problems() -> Mapping[str, SpecProblem]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SpecSnapshot:
    """The specs directory as last read; ``generation`` counts the changes."""

    specs: Mapping[str, LoadedSpec] = field(default_factory=_no_specs)
    """Collector id -> last-known-good spec, for every spec file present."""
    problems: Mapping[str, SpecProblem] = field(default_factory=_no_problems)
    """File name (or ``DIRECTORY_KEY``) -> its current problem."""
    generation: int = 0
    """Increments whenever ``specs`` or ``problems`` changed."""

    def problem_for(self, collector_id: str) -> SpecProblem | None:
        """The current problem of ``<collector_id>.toml``, if any."""
        return self.problems.get(f"{collector_id}.toml")

    def valid(self, collector_id: str) -> bool:
        """Whether ``specs[collector_id]`` is what its file says right now.

        False when the file is missing, or is in trouble (its entry in ``specs``,
        if any, is then the last-known-good), or the directory itself is.
        """
        return (
            collector_id in self.specs
            and self.problem_for(collector_id) is None
            and DIRECTORY_KEY not in self.problems
        )
