"""Example collectors shipped with the reconciler: small standalone programs.

``procmond`` (process table), ``netmond`` (network counters and TCP states) and
``diskmond`` (filesystem usage) each write one JSON object per sample to stdout,
one per line, until SIGTERM or SIGINT. They are what the example specs in
``specs/`` run (as the ``reconciler-<name>`` console scripts), and something to
copy when writing a collector of one's own.

They are programs the reconciler supervises, not part of it: they import only
psutil and the standard library, never the reconciler's layers, so they behave
the same under any supervisor (or none). The shared parts (arguments, the
sampling loop, signals, output, the health file) live in
``reconciler.collectors.runner``.
"""
