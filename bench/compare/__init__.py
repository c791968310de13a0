"""Helpers of ``bench/compare_bench.py``: the supervisors compared and how their children are seen.

Not part of the ``reconciler`` package and never imported by it.
"""
