"""The spec source: the specs directory as snapshots of last-known-good specs and problems.

The adapter between spec files on disk and the reconcile loop (DESIGN §1, §2):
``SpecSource.scan()`` reads the directory, ``SpecSource.watch()`` yields a new
``SpecSnapshot`` whenever its content changed. Imports ``spec``, never
``process`` or ``loop``.
"""

from reconciler.source.snapshot import DIRECTORY_KEY, LoadedSpec, SpecProblem, SpecSnapshot
from reconciler.source.spec_source import SpecSource

__all__ = ["DIRECTORY_KEY", "LoadedSpec", "SpecProblem", "SpecSnapshot", "SpecSource"]
