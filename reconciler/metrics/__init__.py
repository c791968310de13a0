"""Prometheus exporter and the metrics listener: ``/metrics``, ``/healthz``, ``/readyz``.

``ReconcilerCollector`` turns one consistent snapshot of a ``Reconciler`` —
its views (``exported()``: what ``views()`` says, as the exporter needs
it), the spec snapshot and the process trees, read together in the
event-loop thread at scrape time — into the metric families of DESIGN §9,
exactly those names, labels and types. Nothing is polled between scrapes:
the series follow the views of each scrape (so a removed collector's series
disappear and a failed one keeps its own). What is kept between scrapes
only saves work or keeps counters monotonic: each collector's lines of text
until its values change (``blocks``), the spec families until the snapshot
changes, the ``/proc`` and cgroup files read on every scrape (open, and
each tree's last reads, so an unchanged tree is two reads and compares), each
family's compressed text until it changes (``exposition``), and
what the loop reports through its listeners (pass durations, actions).

``MetricsServer`` serves the registry on the read-only TCP listener of
DESIGN §8 (``reconciler.http``). ``reconciler.daemon`` starts it next to the loop;
embedders and tests may too. A scrape runs in the event-loop thread, with no
process-wide side effect (the garbage collector is left as it is); at 1000
collectors it has ~23 000 samples, too many for ``generate_latest``, so the
families this package makes (``TextFamily``) write their own text — the same
bytes, tested — and anything else in the registry goes through
``generate_latest``. Serving imports no prometheus_client (``Registry``, not
its ``CollectorRegistry``: 2.4 MiB of the daemon's memory); the families
still read as its ``Metric``, so ``ReconcilerCollector`` may be registered in
an embedder's ``CollectorRegistry``.

Choices the contract leaves open:

- ``reconciler_collector_uptime_seconds`` is 0 without a process (as DESIGN
  says); ``reconciler_collector_start_time_seconds`` and
  ``reconciler_collector_last_exit_code`` are omitted while they have no value
  (Prometheus convention: a made-up 0 would turn ``time() - start_time`` into
  fifty years).
- ``reconciler_collector_cpu_seconds_total`` is monotonic for the life of a
  collector id, across restarts and children that come and go (``_TreeCpu``).
- ``reconciler_spec_valid{file="."}`` is the specs directory itself: always
  present, 0 while it is missing, unreadable or unsafe.
- ``reconciler_actions_total`` counts the six actions DESIGN names: the loop's
  start/stop/restart/pause/resume, the manager's automatic and operator
  restarts, and ``kill`` for a stop that had to end in SIGKILL. The loop's
  ``update`` (applied in place) and ``forget`` (bookkeeping) are no process
  actions and are not counted; the event record shows them.
"""

from reconciler.metrics.collector import ReconcilerCollector
from reconciler.metrics.constants import ACTIONS, RESULTS
from reconciler.metrics.families import (
    SPEC_VALID,
    STATE,
    HistogramFamily,
    OneHotFamily,
    Registry,
    SeriesFamily,
    TextFamily,
    WrittenFamily,
    encode,
)
from reconciler.metrics.server import MetricsServer, accepts_gzip, parse_address

__all__ = [
    "ACTIONS",
    "RESULTS",
    "SPEC_VALID",
    "STATE",
    "HistogramFamily",
    "MetricsServer",
    "OneHotFamily",
    "ReconcilerCollector",
    "Registry",
    "SeriesFamily",
    "TextFamily",
    "WrittenFamily",
    "accepts_gzip",
    "encode",
    "parse_address",
]
