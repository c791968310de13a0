"""Summary statistics the benchmarks report (imported by the bench/ scripts)."""

from __future__ import annotations


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: ``fraction`` 0.99 is p99 (no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
