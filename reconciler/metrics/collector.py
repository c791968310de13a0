"""``ReconcilerCollector``: one consistent snapshot of a ``Reconciler`` into the families."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from reconciler.loop import CollectorView, Reconciler
from reconciler.metrics.constants import ACTIONS, DURATION_BUCKETS_SECONDS, RESULTS
from reconciler.metrics.families import (
    ACTIONS_TOTAL,
    APPLIED_SPEC,
    BACKOFF,
    BUILD_INFO,
    CPU,
    DESIRED_STATE,
    HEALTH,
    LAST_EXIT_CODE,
    MEMORY,
    READY,
    RECONCILE_DURATION,
    RESTARTS,
    ROLLOUT_HELD,
    SPEC_INFO,
    SPEC_REJECTED,
    SPEC_VALID,
    SPECS,
    START_TIME,
    STATE,
    STATE_FILE_ERRORS,
    UP,
    UPTIME,
    OneHotFamily,
    SeriesFamily,
)
from reconciler.metrics.samples import DurationHistogram, Monotonic, TreeCpu, read_stat
from reconciler.process import ManagerEvent
from reconciler.source import DIRECTORY_KEY, SpecSnapshot
from reconciler.state import CollectorState, DesiredState, HealthStatus

# -- the collector ------------------------------------------------------------------


def _health(view: CollectorView) -> HealthStatus:
    """The manager's health; DESIGN §4 for a collector the manager never ran."""
    if view.status is not None:
        return view.status.health
    # Actual is "stopped": healthy when that is what is wanted, else on its way.
    return HealthStatus.HEALTHY if view.desired == DesiredState.STOPPED else HealthStatus.DEGRADED


def _version() -> str:
    try:
        return importlib.metadata.version("reconciler")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_STATES = tuple(state.value for state in CollectorState)
_DESIRED = tuple(state.value for state in DesiredState)
_HEALTHS = tuple(health.value for health in HealthStatus)


class ReconcilerCollector(Collector):
    """The metric families of DESIGN §9, built from the reconciler at scrape time.

    Registers itself as a pass, action and manager-event listener of
    ``reconciler``; ``collect()`` must run in the reconciler's event-loop
    thread (it reads the loop's state without locks).
    """

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.version = _version()
        self._durations = DurationHistogram(DURATION_BUCKETS_SECONDS)
        self._actions = {(action, result): 0 for action in ACTIONS for result in RESULTS}
        self._cpu: dict[str, TreeCpu] = {}
        self._restarts: dict[str, Monotonic] = {}
        reconciler.pass_listeners.append(self._durations.observe)
        reconciler.action_listeners.append(self._on_action)
        reconciler.manager.add_listener(self._on_manager_event)

    def _on_action(self, action: str, result: str) -> None:
        if (action, result) in self._actions:
            self._actions[action, result] += 1

    def _on_manager_event(self, event: ManagerEvent) -> None:
        # Every start and restart, the restart policy's included, is an action
        # of the controller and reaches us through ``_on_action``; a SIGKILL
        # inside a stop only as a manager event.
        if event.kind == "stopped" and event.forced:
            self._actions["kill", "success"] += 1
        elif event.kind == "failed" and event.forced:
            self._actions["kill", "error"] += 1

    def describe(self) -> list[Metric]:
        # Nothing to check for clashes in a registry of our own; and without
        # describe() a registry with auto_describe would scrape to find out.
        return []

    def collect(self) -> list[Metric]:
        reconciler = self.reconciler
        # Read in one go, not lazily between families: in the loop thread and
        # with no await in between, the views, the spec snapshot and the
        # process trees all show the same moment.
        snapshot = reconciler.snapshot
        views = reconciler.views()
        tree_pids = reconciler.manager.all_tree_pids()
        families = [
            *self._collector_families(views, tree_pids),
            *self._spec_families(snapshot),
            *self._rollout_families(views, held=reconciler.rollout_held),
        ]
        families.append(
            self._durations.family(RECONCILE_DURATION, "Duration of one pass of the loop.")
        )
        actions = SeriesFamily(ACTIONS_TOTAL)
        for (action, result), count in self._actions.items():
            actions.add((action, result), count)
        state_errors = SeriesFamily(STATE_FILE_ERRORS)
        state_errors.add((), reconciler.state_file_errors)
        build = SeriesFamily(BUILD_INFO)
        build.add((self.version,), 1)
        return [*families, actions, state_errors, build]

    def _collector_families(
        self, views: list[CollectorView], tree_pids: Mapping[str, list[int]]
    ) -> Iterator[Metric]:
        state = OneHotFamily(STATE, _STATES)
        desired = OneHotFamily(DESIRED_STATE, _DESIRED)
        health = OneHotFamily(HEALTH, _HEALTHS)
        up, uptime, start_time = SeriesFamily(UP), SeriesFamily(UPTIME), SeriesFamily(START_TIME)
        restarts, exit_code = SeriesFamily(RESTARTS), SeriesFamily(LAST_EXIT_CODE)
        backoff, cpu, memory = SeriesFamily(BACKOFF), SeriesFamily(CPU), SeriesFamily(MEMORY)
        applied, ready = SeriesFamily(APPLIED_SPEC), SeriesFamily(READY)
        known = {view.collector_id for view in views}
        for gone in self._cpu.keys() - known:
            del self._cpu[gone]
        for gone in self._restarts.keys() - known:
            del self._restarts[gone]

        running = CollectorState.RUNNING
        for view in views:
            cid, ctype = key = (view.collector_id, view.collector_type)
            current, status = view.state, view.status
            state.add_hot(key, current.value)
            desired.add_hot(key, view.desired.value)
            health.add_hot(key, _health(view).value)
            up.add(key, 1 if current == running else 0)
            count = 0
            if status is None:
                uptime.add(key, 0.0)
                backoff.add(key, 0.0)
            else:
                uptime.add(key, status.uptime_seconds)
                backoff.add(key, status.backoff_seconds)
                count = status.restart_count
                if status.start_time is not None:
                    start_time.add(key, status.start_time)
                if status.last_exit_code is not None:
                    exit_code.add(key, status.last_exit_code)
            restarts.add(key, self._restarts.setdefault(cid, Monotonic()).update(count))
            cpu_seconds, rss_bytes = self._tree_usage(cid, tree_pids.get(cid, ()))
            cpu.add(key, cpu_seconds)
            memory.add(key, rss_bytes)
            if view.applied_spec_hash is not None:
                applied.add((cid, ctype, view.applied_spec_hash), 1)
            ready.add(key, 1 if view.ready else 0)
        yield from (state, desired, up, health, uptime, start_time, restarts, exit_code)
        yield from (backoff, cpu, memory, applied, ready)

    def _tree_usage(self, collector_id: str, pids: Iterable[int]) -> tuple[float, int]:
        """CPU seconds (monotonic) and resident bytes of one collector's process tree."""
        samples = {}
        for pid in pids:
            sample = read_stat(pid)
            if sample is not None:
                samples[pid] = sample
        cpu_seconds = self._cpu.setdefault(collector_id, TreeCpu()).update(samples)
        return cpu_seconds, sum(sample.rss_bytes for sample in samples.values())

    def _spec_families(self, snapshot: SpecSnapshot) -> Iterator[Metric]:
        valid, info, specs = SeriesFamily(SPEC_VALID), SeriesFamily(SPEC_INFO), SeriesFamily(SPECS)
        problems = snapshot.problems
        valid.add((DIRECTORY_KEY,), 0 if DIRECTORY_KEY in problems else 1)
        files = set()
        for loaded in snapshot.specs.values():
            name = loaded.path.name
            files.add(name)
            valid.add((name,), 0 if name in problems else 1)
            # The same spec_hash the loop records as applied: equal once converged.
            info.add((name, loaded.spec_hash), 1)
        for name in sorted(problems.keys() - files - {DIRECTORY_KEY}):
            valid.add((name,), 0)
        specs.add((), len(snapshot.specs))
        yield from (valid, info, specs)

    def _rollout_families(self, views: list[CollectorView], *, held: bool) -> Iterator[Metric]:
        rejected, rollout_held = SeriesFamily(SPEC_REJECTED), SeriesFamily(ROLLOUT_HELD)
        for view in views:
            if view.rejected is not None:
                # The file's name as reconciler_spec_info labels it; a rejected
                # content is valid, so its file is loaded and the name is known.
                name = view.spec_file or f"{view.collector_id}.toml"
                rejected.add((name, view.rejected.spec_hash), 1)
        rollout_held.add((), 1 if held else 0)
        yield from (rejected, rollout_held)
