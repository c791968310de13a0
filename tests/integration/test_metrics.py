"""The Prometheus exporter end to end: real spec files, real processes, the real listener.

Every test scrapes ``GET /metrics`` over HTTP and parses the exposition as
Prometheus would, following collectors through their lifecycle (start,
crash, backoff, failed, invalid spec, removal, rollout), and checks the
contract of DESIGN §9: names, types, label sets, and what must never show
(env values).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import os
import signal
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from reconciler import CollectorProcessManager, CollectorState, ProcessManagerConfig
from reconciler.errors import InvalidSpec, Io
from reconciler.loop import CollectorView, ExportedCollector, Reconciler
from reconciler.metrics import (
    SPEC_VALID,
    STATE,
    MetricsServer,
    OneHotFamily,
    SeriesFamily,
    TextFamily,
    WrittenFamily,
)
from reconciler.plan.rollout import Rejected
from reconciler.source import SpecSource
from reconciler.state import DesiredState
from tests.support import MARK_ENV, SESSION_MARK, eventually, marked_pids, new_reconciler

STATES = {"starting", "running", "paused", "stopping", "stopped", "backoff", "failed"}
DESIRED = {"running", "paused", "stopped"}
HEALTHS = {"healthy", "degraded", "unhealthy", "unknown"}
ACTIONS = {"start", "stop", "restart", "pause", "resume", "kill"}
WAIT_SECONDS = 15.0
"""Generous: these tests must hold on a loaded two-core machine."""

# DESIGN §9, as the exposition names them: name -> (type, label names).
CONTRACT = {
    "reconciler_collector_state": ("gauge", {"id", "type", "state"}),
    "reconciler_collector_desired_state": ("gauge", {"id", "type", "state"}),
    "reconciler_collector_up": ("gauge", {"id", "type"}),
    "reconciler_collector_health": ("gauge", {"id", "type", "health"}),
    "reconciler_collector_uptime_seconds": ("gauge", {"id", "type"}),
    "reconciler_collector_start_time_seconds": ("gauge", {"id", "type"}),
    "reconciler_collector_restarts_total": ("counter", {"id", "type"}),
    "reconciler_collector_last_exit_code": ("gauge", {"id", "type"}),
    "reconciler_collector_backoff_seconds": ("gauge", {"id", "type"}),
    "reconciler_collector_cpu_seconds_total": ("counter", {"id", "type"}),
    "reconciler_collector_resident_memory_bytes": ("gauge", {"id", "type"}),
    "reconciler_collector_applied_spec_info": ("gauge", {"id", "type", "hash"}),
    "reconciler_collector_ready": ("gauge", {"id", "type"}),
    "reconciler_spec_valid": ("gauge", {"file"}),
    "reconciler_spec_info": ("gauge", {"file", "hash"}),
    "reconciler_spec_rejected": ("gauge", {"file", "hash"}),
    "reconciler_rollout_held": ("gauge", set()),
    "reconciler_specs": ("gauge", set()),
    "reconciler_reconcile_duration_seconds": ("histogram", set()),
    "reconciler_actions_total": ("counter", {"action", "result"}),
    "reconciler_build_info": ("gauge", {"version"}),
    "reconciler_state_file_errors_total": ("counter", set()),
}

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def spec(*argv: str, env: dict[str, str] | None = None, **keys: Any) -> str:
    """A spec file running ``argv``; marked for leak checks, output discarded."""
    document: dict[str, Any] = {
        "type": "sleeper",
        "binary_path": argv[0],
        "args": list(argv[1:]),
        "log": "null",
        "graceful_timeout_seconds": 2,
        "env": {MARK_ENV: SESSION_MARK, **(env or {})},
    }
    document.update(keys)
    return tomli_w.dumps(document)


def write(path: Path, text: str) -> None:
    """Write-temp-then-rename, so the watcher never reads half a file."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.rename(temp, path)


class Scrape:
    """One parsed exposition."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [sample for family in self.families for sample in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample ``name{labels}`` (labels: a subset), or ``None``."""
        found = [
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0] if found else None

    def labelled(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``{value of label: sample value}`` of the samples ``name{labels}``."""
        return {
            sample.labels[label]: sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        }

    def one_hot(self, name: str, label: str, **labels: str) -> str:
        """The label value whose sample is 1, checking every other one is 0."""
        values = self.labelled(name, label, **labels)
        hot = [key for key, value in values.items() if value == 1]
        assert len(hot) == 1 and all(v in (0, 1) for v in values.values()), values
        return hot[0]

    def samples_named(self, name: str) -> list[Any]:
        return [sample for sample in self.samples if sample.name == name]

    def ids(self) -> set[str]:
        return {sample.labels["id"] for sample in self.samples if "id" in sample.labels}

    def spec_hash(self, file: str) -> str | None:
        hashes = self.labelled("reconciler_spec_info", "hash", file=file)
        assert len(hashes) <= 1
        return next(iter(hashes), None)

    def applied_hash(self, collector_id: str) -> str | None:
        hashes = self.labelled("reconciler_collector_applied_spec_info", "hash", id=collector_id)
        assert len(hashes) <= 1
        return next(iter(hashes), None)


class Harness:
    def __init__(
        self,
        *,
        specs: Path,
        reconciler: Reconciler,
        server: MetricsServer,
        session: aiohttp.ClientSession,
        base_url: str,
    ) -> None:
        self.specs = specs
        self.reconciler = reconciler
        self.manager = reconciler.manager
        self.server = server
        self.session = session
        self.base_url = base_url
        self.task: asyncio.Task[None] | None = None

    async def start_loop(self) -> None:
        self.task = asyncio.create_task(self.reconciler.run(), name="reconcile loop")
        await asyncio.wait_for(self.reconciler.ready.wait(), WAIT_SECONDS)

    async def stop_loop(self) -> None:
        if self.task is None:
            return
        await self.reconciler.stop()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def get(self, path: str) -> tuple[int, str, Mapping[str, str]]:
        async with self.session.get(self.base_url + path) as response:
            return response.status, await response.text(), response.headers

    async def scrape(self) -> Scrape:
        status, text, headers = await self.get("/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=")
        return Scrape(text)

    async def until(self, predicate: Callable[[Scrape], object], message: str = "") -> Scrape:
        """Scrape until ``predicate`` holds for a scrape; return that scrape."""

        async def check() -> Scrape | None:
            scrape = await self.scrape()
            return scrape if predicate(scrape) else None

        result = await eventually(check, timeout=WAIT_SECONDS, interval=0.02, message=message)
        assert isinstance(result, Scrape)
        return result

    def pid(self, collector_id: str) -> int:
        pid = self.manager.status(collector_id).pid
        assert pid is not None, f"{collector_id} has no process"
        return pid


@pytest.fixture
async def unstarted(tmp_path: Path) -> AsyncIterator[Harness]:
    """Listener up, reconcile loop not yet running."""
    reconciler = new_reconciler(tmp_path)
    specs, manager = reconciler.source.specs_dir, reconciler.manager
    server = MetricsServer(reconciler, address="127.0.0.1:0")
    host, port = await server.start()
    session = aiohttp.ClientSession()
    harness = Harness(
        specs=specs,
        reconciler=reconciler,
        server=server,
        session=session,
        base_url=f"http://{host}:{port}",
    )
    try:
        yield harness
    finally:
        try:
            await harness.stop_loop()
            await manager.shutdown_all()
        finally:
            await session.close()
            await server.stop()
            leaked = marked_pids()
            for pid in leaked:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert not leaked, f"processes left behind by this test: {leaked}"


@pytest.fixture
async def harness(unstarted: Harness) -> Harness:
    await unstarted.start_loop()
    return unstarted


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process, straight from /proc."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rindex(b")") + 2 :].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


# -- the listener ---------------------------------------------------------------------


async def test_readyz_waits_for_the_first_reconcile_and_healthz_follows_the_loop(
    unstarted: Harness,
) -> None:
    (unstarted.specs / "a.toml").write_text(spec("/bin/sleep", "300"))
    status, _, _ = await unstarted.get("/readyz")
    assert status == 503
    status, _, _ = await unstarted.get("/healthz")
    assert status == 503, "no reconcile loop runs yet"
    # Metrics are served before the loop runs: the spec files are not read yet.
    scrape = await unstarted.scrape()
    assert scrape.value("reconciler_specs") == 0

    await unstarted.start_loop()
    status, text, _ = await unstarted.get("/readyz")
    assert (status, text) == (200, "ready\n")
    status, text, _ = await unstarted.get("/healthz")
    assert (status, text) == (200, "ok\n")

    # Idle is alive: the loop waits to be woken, and that is no reason to fail a probe.
    passes = unstarted.reconciler.passes
    status, _, _ = await unstarted.get("/healthz")
    assert status == 200 and unstarted.reconciler.passes == passes

    await unstarted.stop_loop()
    status, _, _ = await unstarted.get("/healthz")
    assert status == 503


async def test_address_picks_a_port_and_bad_addresses_are_refused(harness: Harness) -> None:
    with pytest.raises(InvalidSpec):
        MetricsServer(harness.reconciler, address="localhost")
    with pytest.raises(InvalidSpec):
        MetricsServer(harness.reconciler, address="127.0.0.1:http")
    taken = harness.base_url.rsplit(":", 1)[1]
    clash = MetricsServer(harness.reconciler, address=f"127.0.0.1:{taken}")
    with pytest.raises(Io):
        await clash.start()
    other = MetricsServer(harness.reconciler, address="127.0.0.1:0")
    host, port = await other.start()
    try:
        assert host == "127.0.0.1" and port > 0 and str(port) != taken
    finally:
        await other.stop()


# -- the contract ---------------------------------------------------------------------


async def test_names_types_and_label_sets_are_exactly_design_9(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec("/bin/sleep", "300"))
    (harness.specs / "broken.toml").write_text("type = \n")
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="a") == 1
            and s.value("reconciler_spec_valid", file="broken.toml") == 0
        )
    )
    # Crash once so that every family has a sample (last_exit_code needs an exit).
    os.kill(harness.pid("a"), signal.SIGKILL)
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_last_exit_code", id="a") == -9
            and s.value("reconciler_collector_up", id="a") == 1
        )
    )
    types = {
        line.split()[2]: line.split()[3]
        for line in scrape.text.splitlines()
        if line.startswith("# TYPE ")
    }
    assert types == {name: kind for name, (kind, _) in CONTRACT.items()}
    helps = [line.split()[2] for line in scrape.text.splitlines() if line.startswith("# HELP ")]
    assert sorted(helps) == sorted(CONTRACT)

    for sample in scrape.samples:
        base = sample.name
        if base.startswith("reconciler_reconcile_duration_seconds"):
            expected = {"le"} if base.endswith("_bucket") else set()
            assert set(sample.labels) == expected, sample
            continue
        assert base in CONTRACT, f"{base} is not in DESIGN §9"
        assert set(sample.labels) == CONTRACT[base][1], sample

    # Every state, desired state and health is present for every collector.
    for collector_id in ("a", "broken"):
        assert set(scrape.labelled("reconciler_collector_state", "state", id=collector_id)) == (
            STATES
        )
        assert set(
            scrape.labelled("reconciler_collector_desired_state", "state", id=collector_id)
        ) == (DESIRED)
        assert set(scrape.labelled("reconciler_collector_health", "health", id=collector_id)) == (
            HEALTHS
        )
    actions = {
        (s.labels["action"], s.labels["result"])
        for s in scrape.samples
        if s.name == "reconciler_actions_total"
    }
    assert actions == {(a, r) for a in ACTIONS for r in ("success", "error")}
    version = scrape.labelled("reconciler_build_info", "version")
    assert list(version.values()) == [1] and next(iter(version)) != ""
    durations = scrape.value("reconciler_reconcile_duration_seconds_count")
    assert durations is not None and durations >= 1


async def test_served_bytes_are_what_generate_latest_writes(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec("/bin/sh", "-c", "sleep 300 & wait"))
    (harness.specs / 'odd "name".toml').write_text("x")
    await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="a") == 1
            and s.value("reconciler_spec_valid", file='odd "name".toml') == 0
        )
    )
    # Twice: the second time most lines come from what the first one kept.
    for _ in range(2):
        families = list(harness.server.registry.collect())
        assert any(isinstance(family, WrittenFamily) for family in families)
        assert any(isinstance(family, SeriesFamily) for family in families)
        fast = "".join(
            family.text() if isinstance(family, TextFamily) else generate_latest_of(family)
            for family in families
        )
        assert fast.encode() == generate_latest(Collected(families))


async def test_an_embedders_registry_takes_the_collector_and_ours_takes_theirs(
    harness: Harness,
) -> None:
    """The families are no prometheus_client objects, but read as ones: an embedder
    registers ``ReconcilerCollector`` in a ``CollectorRegistry`` of their own, and a
    ``Collector`` of theirs in the server's registry is written by ``generate_latest``."""
    write(harness.specs / "a.toml", spec("/bin/sleep", "300"))
    await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    theirs = CollectorRegistry()
    theirs.register(harness.server.collector)
    parsed = {
        family.name: family
        for family in text_string_to_metric_families(generate_latest(theirs).decode())
    }
    up = [sample for sample in parsed["reconciler_collector_up"].samples]
    assert [(sample.labels["id"], sample.value) for sample in up] == [("a", 1)]
    durations = parsed["reconciler_reconcile_duration_seconds"]
    assert durations.type == "histogram"
    buckets = [s for s in durations.samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels == {"le": "+Inf"} and buckets[-1].value >= 1
    assert parsed["reconciler_actions"].type == "counter"

    class Extra(Collector):
        def collect(self) -> list[Metric]:
            return [GaugeMetricFamily("embedder_extra", "An embedder's own.", value=7)]

    harness.server.registry.register(Extra())
    scrape = await harness.scrape()
    assert scrape.value("embedder_extra") == 7
    assert scrape.value("reconciler_collector_up", id="a") == 1


class Collected(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def test_gzip_when_asked_and_the_same_text_as_plain(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec("/bin/sleep", "300"))
    await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    url = harness.base_url + "/metrics"

    async def get(accept: str) -> tuple[str | None, bytes]:
        headers = {"Accept-Encoding": accept}
        async with harness.session.get(url, headers=headers, auto_decompress=False) as response:
            assert response.status == 200
            assert response.headers["Vary"] == "Accept-Encoding"
            return response.headers.get("Content-Encoding"), await response.read()

    bodies = []
    for _ in range(3):  # the later ones reuse what the first one compressed
        encoding, body = await get("gzip, deflate")
        assert encoding == "gzip"
        bodies.append(body)
        # One gzip member, as a single-member reader (zlib's) reads it.
        reader = zlib.decompressobj(wbits=31)
        text = reader.decompress(body) + reader.flush()
        assert reader.eof and reader.unused_data == b""
        assert text == gzip.decompress(body)
        scrape = Scrape(text.decode())
        assert scrape.value("reconciler_collector_up", id="a") == 1
    encoding, plain = await get("identity")
    assert encoding is None
    # Scrapes differ only in values that change with time (uptime, CPU, durations).
    assert _shape(plain.decode()) == _shape(gzip.decompress(bodies[-1]).decode())
    assert (await get("gzip;q=0"))[0] is None
    assert (await get("*"))[0] == "gzip"


def _shape(text: str) -> list[str]:
    """The exposition's lines without their values."""
    return [
        line.rpartition(" ")[0] if not line.startswith("#") else line for line in text.splitlines()
    ]


def test_label_values_are_escaped_as_generate_latest_does() -> None:
    """Spec-valid ids and types never need escaping; file names and versions might."""
    odd = ('a"b', "back\\slash", "new\nline", "plain")
    one_hot = OneHotFamily(STATE, tuple(state.value for state in CollectorState))
    series = SeriesFamily(SPEC_VALID)
    for value in odd:
        one_hot.add_hot((value, value), "running")
        series.add((value,), 0.5)
    for family in (one_hot, series):
        assert family.text() == generate_latest_of(family)


def generate_latest_of(family: Metric) -> str:
    class One(Collector):
        def collect(self) -> list[Metric]:
            return [family]

    return generate_latest(One()).decode()


async def test_a_scrape_leaves_the_garbage_collector_as_the_process_has_it(
    harness: Harness,
) -> None:
    """No process-wide side effect for embedders: the collector stays on during a
    scrape, its thresholds stay, and a process that turned it off sees no collection."""
    write(harness.specs / "a.toml", spec("/bin/sleep", "300"))
    await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    seen_during: list[bool] = []

    class Probe(Collector):
        def collect(self) -> list[Metric]:
            seen_during.append(gc.isenabled())
            return []

    harness.server.registry.register(Probe())
    thresholds = gc.get_threshold()
    assert gc.isenabled()
    await harness.scrape()
    assert seen_during == [True], "the collector was turned off during the scrape"
    assert gc.isenabled() and gc.get_threshold() == thresholds

    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.disable()
    gc.callbacks.append(count)
    try:
        await harness.scrape()
        assert collections == [] and not gc.isenabled()
        assert seen_during == [True, False]
    finally:
        gc.callbacks.remove(count)
        gc.enable()


async def test_env_values_never_show(harness: Harness) -> None:
    secret = "s3cr3t-token-value-42"
    write(
        harness.specs / "a.toml",
        spec("/bin/sleep", "300", env={"API_TOKEN": secret}),
    )
    scrape = await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    assert secret not in scrape.text
    assert "API_TOKEN" not in scrape.text


# -- a collector's lifecycle -------------------------------------------------------------


async def test_start_then_crash(harness: Harness) -> None:
    before = time.time()
    write(harness.specs / "a.toml", spec("/bin/sleep", "300"))
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="a") == 1
            and (s.value("reconciler_collector_uptime_seconds", id="a") or 0) > 0
        )
    )
    assert scrape.one_hot("reconciler_collector_state", "state", id="a") == "running"
    assert scrape.one_hot("reconciler_collector_desired_state", "state", id="a") == "running"
    assert scrape.one_hot("reconciler_collector_health", "health", id="a") == "healthy"
    start_time = scrape.value("reconciler_collector_start_time_seconds", id="a")
    assert start_time is not None and before - 1 <= start_time <= time.time()
    assert scrape.value("reconciler_collector_restarts_total", id="a") == 0
    assert scrape.value("reconciler_collector_last_exit_code", id="a") is None
    assert scrape.value("reconciler_collector_backoff_seconds", id="a") == 0
    assert (scrape.value("reconciler_collector_resident_memory_bytes", id="a") or 0) > 0
    assert scrape.value("reconciler_actions_total", action="start", result="success") == 1
    assert scrape.labelled("reconciler_collector_up", "type") == {"sleeper": 1}
    # Converged: the file's hash has reached the process.
    assert scrape.applied_hash("a") == scrape.spec_hash("a.toml") is not None

    old = harness.pid("a")
    os.kill(old, signal.SIGKILL)
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_restarts_total", id="a") == 1
            and s.value("reconciler_collector_up", id="a") == 1
        )
    )
    assert harness.pid("a") != old
    assert scrape.value("reconciler_collector_last_exit_code", id="a") == -signal.SIGKILL
    # The manager restarted it on its own: still an action, as DESIGN §9 counts them.
    assert scrape.value("reconciler_actions_total", action="restart", result="success") == 1
    assert scrape.value("reconciler_actions_total", action="start", result="success") == 1


async def test_backoff(harness: Harness) -> None:
    # The first crash of a series restarts at once; the second waits in backoff.
    write(
        harness.specs / "a.toml",
        spec("/bin/sh", "-c", "exit 1", restart_backoff_initial_seconds=5),
    )
    scrape = await harness.until(
        lambda s: s.value("reconciler_collector_state", id="a", state="backoff") == 1
    )
    assert scrape.one_hot("reconciler_collector_state", "state", id="a") == "backoff"
    assert scrape.one_hot("reconciler_collector_health", "health", id="a") == "degraded"
    backoff = scrape.value("reconciler_collector_backoff_seconds", id="a")
    assert backoff is not None and 0 < backoff <= 5.5
    assert scrape.value("reconciler_collector_up", id="a") == 0
    assert scrape.value("reconciler_collector_uptime_seconds", id="a") == 0
    assert scrape.value("reconciler_collector_start_time_seconds", id="a") is None
    assert scrape.value("reconciler_collector_last_exit_code", id="a") == 1
    assert scrape.value("reconciler_collector_restarts_total", id="a") == 1


async def test_failed_collector_keeps_its_series(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec("/bin/sh", "-c", "exit 3", max_restarts=0))
    write(harness.specs / "gone.toml", spec("/nonexistent/collector"))
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_state", id="a", state="failed") == 1
            and s.value("reconciler_collector_state", id="gone", state="failed") == 1
        )
    )
    for collector_id in ("a", "gone"):
        assert scrape.one_hot("reconciler_collector_health", "health", id=collector_id) == (
            "unhealthy"
        )
        assert scrape.value("reconciler_collector_up", id=collector_id) == 0
        assert scrape.one_hot("reconciler_collector_desired_state", "state", id=collector_id) == (
            "running"
        )
    assert scrape.value("reconciler_collector_last_exit_code", id="a") == 3
    assert scrape.value("reconciler_collector_last_exit_code", id="gone") is None
    assert scrape.value("reconciler_actions_total", action="start", result="error") == 1
    # Failed stays failed, and visible, scrape after scrape.
    scrape = await harness.scrape()
    assert scrape.value("reconciler_collector_state", id="a", state="failed") == 1
    assert scrape.ids() == {"a", "gone"}


async def test_invalid_spec_then_fixed(harness: Harness) -> None:
    path = harness.specs / "a.toml"
    write(path, spec("/bin/sleep", "300"))
    scrape = await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    good_hash = scrape.spec_hash("a.toml")
    assert scrape.value("reconciler_spec_valid", file="a.toml") == 1
    assert scrape.value("reconciler_spec_valid", file=".") == 1

    write(path, 'type = "sleeper"\nargs = [unclosed\n')
    scrape = await harness.until(lambda s: s.value("reconciler_spec_valid", file="a.toml") == 0)
    # Nothing happens to the process; it keeps its last-known-good spec.
    assert scrape.value("reconciler_collector_up", id="a") == 1
    assert scrape.spec_hash("a.toml") == good_hash == scrape.applied_hash("a")
    assert scrape.value("reconciler_specs") == 1

    write(path, spec("/bin/sleep", "300"))
    scrape = await harness.until(lambda s: s.value("reconciler_spec_valid", file="a.toml") == 1)
    assert scrape.value("reconciler_collector_up", id="a") == 1


async def test_removed_collector_series_disappear(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec("/bin/sleep", "300"))
    write(harness.specs / "b.toml", spec("/bin/sleep", "300"))
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="a") == 1
            and s.value("reconciler_collector_up", id="b") == 1
        )
    )
    assert scrape.value("reconciler_specs") == 2
    (harness.specs / "b.toml").unlink()
    scrape = await harness.until(lambda s: "b" not in s.ids())
    assert not [sample for sample in scrape.samples if "b.toml" in sample.labels.values()]
    assert scrape.value("reconciler_specs") == 1
    assert scrape.value("reconciler_collector_up", id="a") == 1
    assert scrape.value("reconciler_actions_total", action="stop", result="success") == 1


async def test_pause_and_resume_by_spec(harness: Harness) -> None:
    path = harness.specs / "a.toml"
    write(path, spec("/bin/sleep", "300"))
    await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    write(path, spec("/bin/sleep", "300", state="paused"))
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_state", id="a", state="paused") == 1
            and s.applied_hash("a") == s.spec_hash("a.toml")
        )
    )
    assert scrape.one_hot("reconciler_collector_desired_state", "state", id="a") == "paused"
    assert scrape.value("reconciler_collector_up", id="a") == 0
    assert scrape.value("reconciler_actions_total", action="pause", result="success") == 1
    write(path, spec("/bin/sleep", "300"))
    scrape = await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    assert scrape.value("reconciler_actions_total", action="resume", result="success") == 1
    assert scrape.value("reconciler_collector_restarts_total", id="a") == 0


async def test_spec_hash_differs_from_applied_until_converged(harness: Harness) -> None:
    """The fleet-wide rollout check: spec_info vs applied_spec_info.

    To hold the two apart long enough to see, the collector ignores SIGTERM
    and its graceful stop is long: while that stop is under way the loop
    cannot apply the next edit of the file.
    """
    path = harness.specs / "a.toml"
    stubborn = ("/bin/sh", "-c", 'trap "" TERM; sleep 300')
    write(path, spec(*stubborn, graceful_timeout_seconds=60))
    scrape = await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    first = scrape.spec_hash("a.toml")
    assert scrape.applied_hash("a") == first

    write(path, spec(*stubborn, graceful_timeout_seconds=60, state="stopped"))
    scrape = await harness.until(
        lambda s: s.value("reconciler_collector_state", id="a", state="stopping") == 1
    )
    write(path, spec("/bin/sleep", "300"))
    scrape = await harness.until(lambda s: s.spec_hash("a.toml") not in (None, first))
    assert scrape.value("reconciler_collector_state", id="a", state="stopping") == 1
    assert scrape.applied_hash("a") != scrape.spec_hash("a.toml")

    # Cut the graceful stop short: a stop that ends in SIGKILL is a "kill".
    await harness.manager.stop_collector("a", graceful=False)
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="a") == 1
            and s.applied_hash("a") == s.spec_hash("a.toml")
        )
    )
    assert scrape.value("reconciler_actions_total", action="kill", result="success") == 1


# -- readiness and rollouts -----------------------------------------------------------------


async def test_ready_rejected_and_held_follow_the_views(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three rollout gauges read what the views and ``rollout_held`` say.

    The test makes the exporter's views (``Reconciler.exported``) say a
    collector is ready or rejected; the series must follow, and go again
    when the views stop.
    """
    write(harness.specs / "a.toml", spec("/bin/sleep", "300"))
    write(harness.specs / "b.toml", spec("/bin/sleep", "300"))
    write(harness.specs / "c.toml", spec("/bin/sh", "-c", "exit 3", max_restarts=0))
    scrape = await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="a") == 1
            and s.value("reconciler_collector_up", id="b") == 1
            and s.value("reconciler_collector_state", id="c", state="failed") == 1
        )
    )
    # Every known collector has the series, a failed one included, and it says
    # what the views say (a running one with no readiness keys is ready once
    # readiness is computed: end-to-end checks of that belong with rollouts).
    ready = scrape.labelled("reconciler_collector_ready", "id")
    views = {view.collector_id: view for view in harness.reconciler.views()}
    assert ready == {cid: float(view.ready) for cid, view in views.items()}
    assert set(ready) == {"a", "b", "c"} and ready["c"] == 0
    assert {s.labels["type"] for s in scrape.samples_named("reconciler_collector_ready")} == {
        "sleeper"
    }
    assert "# TYPE reconciler_spec_rejected gauge" in scrape.text
    assert scrape.samples_named("reconciler_spec_rejected") == []
    assert scrape.value("reconciler_rollout_held") == 0

    a_hash = scrape.spec_hash("a.toml")
    assert a_hash is not None
    real_exported = harness.reconciler.exported

    def patched_exported() -> list[Any]:
        result = []
        for view in real_exported():
            if view.collector_id == "a":
                view = view._replace(ready=True, rejected_hash=a_hash)
            elif view.collector_id == "b":
                # No file name known: the label is still the file the id comes from.
                view = view._replace(ready=False, spec_file=None, rejected_hash="0123abcd")
            result.append(view)
        return result

    monkeypatch.setattr(harness.reconciler, "exported", patched_exported)
    monkeypatch.setattr(Reconciler, "rollout_held", property(lambda self: True))
    scrape = await harness.scrape()
    assert scrape.labelled("reconciler_collector_ready", "id") == {"a": 1, "b": 0, "c": 0}
    rejected = {
        (sample.labels["file"], sample.labels["hash"]): sample.value
        for sample in scrape.samples_named("reconciler_spec_rejected")
    }
    # The same hash reconciler_spec_info shows for the file's content.
    assert rejected == {("a.toml", a_hash): 1, ("b.toml", "0123abcd"): 1}
    assert scrape.value("reconciler_rollout_held") == 1
    # The reason is for status and the API, not a label.
    assert "not ready in 120 s" not in scrape.text

    monkeypatch.undo()
    scrape = await harness.scrape()
    assert scrape.samples_named("reconciler_spec_rejected") == []
    assert scrape.value("reconciler_rollout_held") == 0
    assert scrape.labelled("reconciler_collector_ready", "id") == ready


def _exported_of(view: CollectorView) -> ExportedCollector:
    """What ``Reconciler.exported`` must say of the collector ``view`` shows."""
    status = view.status
    return ExportedCollector(
        collector_id=view.collector_id,
        collector_type=view.collector_type,
        state=view.state,
        desired=view.desired,
        health=status.health if status is not None else None,
        start_time=status.start_time if status is not None else None,
        restart_count=status.restart_count if status is not None else 0,
        last_exit_code=status.last_exit_code if status is not None else None,
        uptime_seconds=status.uptime_seconds if status is not None else 0.0,
        backoff_seconds=status.backoff_seconds if status is not None else 0.0,
        applied_spec_hash=view.applied_spec_hash,
        ready=view.ready,
        rejected_hash=view.rejected.spec_hash if view.rejected is not None else None,
        spec_file=view.spec_file,
    )


async def test_the_exporters_views_say_what_the_views_say(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Reconciler.exported`` (read at each scrape instead of ``views()``) gives, for
    every collector in every kind of state, the values ``views()`` gives."""
    reconciler = harness.reconciler
    write(harness.specs / "run.toml", spec("/bin/sleep", "300"))
    write(harness.specs / "paused.toml", spec("/bin/sleep", "300", state="paused"))
    write(harness.specs / "off.toml", spec("/bin/sleep", "300", state="stopped"))
    write(harness.specs / "failed.toml", spec("/bin/sh", "-c", "exit 3", max_restarts=0))
    write(
        harness.specs / "backoff.toml",
        spec("/bin/sh", "-c", "exit 1", restart_backoff_initial_seconds=30),
    )
    write(harness.specs / "kept.toml", spec("/bin/sleep", "300"))
    write(harness.specs / "override.toml", spec("/bin/sleep", "300"))
    (harness.specs / "bad.toml").write_text("type = \n")
    await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="run") == 1
            and s.value("reconciler_collector_up", id="kept") == 1
            and s.value("reconciler_collector_up", id="override") == 1
            and s.value("reconciler_collector_state", id="paused", state="paused") == 1
            and s.value("reconciler_collector_state", id="failed", state="failed") == 1
            and s.value("reconciler_collector_state", id="backoff", state="backoff") == 1
        )
    )
    (harness.specs / "kept.toml").write_text("type = \n")  # last-known-good spec, and a problem
    await reconciler.operator_override("override", DesiredState.PAUSED)
    await reconciler.rescan()
    await harness.until(
        lambda s: s.value("reconciler_collector_state", id="override", state="paused") == 1
    )
    run = reconciler.manager.executor.records["run"]
    run_hash = reconciler.snapshot.specs["run"].spec_hash
    monkeypatch.setattr(run, "rejected", Rejected(run_hash, "not ready", time.time()))
    paused = reconciler.manager.executor.records["paused"]
    monkeypatch.setattr(paused, "rejected", Rejected("0123abcd", "an older content", time.time()))
    # The same instant for both, or the uptimes and backoffs differ.
    now = reconciler.controller.clock.now()
    monkeypatch.setattr(reconciler.controller.clock, "now", lambda: now)

    expected = [_exported_of(view) for view in reconciler.views()]
    assert reconciler.exported() == expected
    by_id = {view.collector_id: view for view in expected}
    assert set(by_id) == {
        "run", "paused", "off", "failed", "backoff", "kept", "override", "bad"
    }  # fmt: skip
    # The cases are what they were meant to be.
    assert by_id["run"].rejected_hash == run_hash and by_id["paused"].rejected_hash is None
    assert by_id["bad"].health is None and by_id["bad"].spec_file == "bad.toml"
    assert by_id["kept"].state == CollectorState.RUNNING
    assert "kept.toml" in reconciler.snapshot.problems
    assert by_id["override"].desired == DesiredState.PAUSED
    assert by_id["backoff"].backoff_seconds > 0 and by_id["run"].uptime_seconds > 0


# -- process tree CPU and memory ------------------------------------------------------------


async def test_tree_memory_and_cpu_of_a_collector_with_children(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec("/bin/sh", "-c", "sleep 300 & sleep 300 & wait"))
    await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    await eventually(
        lambda: len(harness.manager.tree_pids("a")) == 3, timeout=WAIT_SECONDS, message="3 pids"
    )
    scrape = await harness.scrape()
    rss = scrape.value("reconciler_collector_resident_memory_bytes", id="a")
    main_pid = harness.pid("a")
    main_rss = int(Path(f"/proc/{main_pid}/statm").read_text().split()[1]) * os.sysconf(
        "SC_PAGE_SIZE"
    )
    assert rss is not None and rss > main_rss > 0, "the children's memory counts too"
    cpu = [await harness.scrape() for _ in range(3)]
    values = [s.value("reconciler_collector_cpu_seconds_total", id="a") for s in cpu]
    assert all(v is not None for v in values)
    assert values == sorted(values)  # type: ignore[type-var]


async def test_files_read_each_scrape_follow_the_processes_and_close_with_the_server(
    harness: Harness,
) -> None:
    """The ``/proc`` and cgroup files a scrape reads stay open between scrapes: as many
    as there are processes (and cgroups) now, however many have come and gone."""
    write(harness.specs / "a.toml", spec("/bin/sh", "-c", "sleep 300 & sleep 300 & wait"))
    write(harness.specs / "b.toml", spec("/bin/sleep", "300"))
    await harness.until(
        lambda s: (
            s.value("reconciler_collector_up", id="a") == 1
            and s.value("reconciler_collector_up", id="b") == 1
        )
    )
    files = harness.server.collector.trees.files
    per_run = 1 if harness.manager.cgroup_tracking else 0

    async def settled() -> int:
        await eventually(
            lambda: len(harness.manager.tree_pids("a")) == 3, timeout=WAIT_SECONDS, message="3"
        )
        await harness.scrape()
        return len(files)

    assert await settled() == 3 + 1 + 2 * per_run
    for restarts in (1, 2, 3):
        os.kill(harness.pid("a"), signal.SIGKILL)
        await harness.until(
            lambda s, n=restarts: (
                s.value("reconciler_collector_restarts_total", id="a") == n
                and s.value("reconciler_collector_up", id="a") == 1
            )
        )
        # The killed shell's children are gone with its cgroup, or linger as orphans
        # outside it: either way they are not the collector's any more.
        assert await settled() == 3 + 1 + 2 * per_run
    kept = list(files.kept.values())
    links = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in kept}
    assert all(link.endswith("/stat") or "cgroup" in link for link in links.values()), links
    await harness.server.stop()
    assert len(files) == 0
    for fd, link in links.items():
        with contextlib.suppress(FileNotFoundError):
            assert os.readlink(f"/proc/self/fd/{fd}") != link, "kept file not closed"


async def test_tree_memory_without_cgroups(tmp_path: Path) -> None:
    """Without a cgroup per run the trees are the process groups the driver finds."""
    specs = tmp_path / "specs"
    specs.mkdir()
    manager = CollectorProcessManager(
        ProcessManagerConfig(default_graceful_timeout_seconds=2),
        log_dir=tmp_path / "logs",
        cgroups=False,
    )
    reconciler = Reconciler(source=SpecSource(specs), manager=manager)
    server = MetricsServer(reconciler, address="127.0.0.1:0")
    host, port = await server.start()
    session = aiohttp.ClientSession()
    harness = Harness(
        specs=specs,
        reconciler=reconciler,
        server=server,
        session=session,
        base_url=f"http://{host}:{port}",
    )
    try:
        await harness.start_loop()
        write(specs / "a.toml", spec("/bin/sh", "-c", "sleep 300 & sleep 300 & wait"))
        await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
        assert not manager.cgroup_tracking
        await eventually(
            lambda: len(manager.tree_pids("a")) == 3, timeout=WAIT_SECONDS, message="3 pids"
        )
        scrape = await harness.scrape()
        rss = scrape.value("reconciler_collector_resident_memory_bytes", id="a")
        main_rss = int(Path(f"/proc/{harness.pid('a')}/statm").read_text().split()[1])
        assert rss is not None and rss > main_rss * os.sysconf("SC_PAGE_SIZE") > 0
        assert len(server.collector.trees.files) == 3
    finally:
        try:
            await harness.stop_loop()
            await manager.shutdown_all()
        finally:
            await session.close()
            await server.stop()


async def test_cpu_counter_counts_exited_children_once_and_survives_a_restart(
    harness: Harness,
) -> None:
    # A child burns CPU and exits (reaped by its parent, inside the tree);
    # then the main process becomes a sleeper.
    burn = 'sh -c "i=0; while [ \\$i -lt 400000 ]; do i=\\$((i+1)); done"; exec sleep 300'
    write(harness.specs / "a.toml", spec("/bin/sh", "-c", burn))
    await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    main_pid = harness.pid("a")

    seen: list[float] = []

    async def burned() -> bool:
        scrape = await harness.scrape()
        value = scrape.value("reconciler_collector_cpu_seconds_total", id="a")
        assert value is not None
        seen.append(value)
        return Path(f"/proc/{main_pid}/comm").read_text().strip() == "sleep"

    await eventually(burned, timeout=WAIT_SECONDS * 2, interval=0.02, message="child done")
    assert seen == sorted(seen), "the CPU counter went down"
    assert any(0 < value for value in seen[:-1]), "the burning child was seen"
    scrape = await harness.scrape()
    counted = scrape.value("reconciler_collector_cpu_seconds_total", id="a")
    assert counted is not None
    actual = _proc_cpu_seconds(main_pid)
    assert actual >= 0.1, "the child burned CPU"
    # Counted once: the child's CPU is in its parent's cutime, not added again.
    assert counted == pytest.approx(actual, abs=2 / CLOCK_TICKS)

    # The main process dies: what it used stays in the counter, and the next
    # run's CPU adds to it.
    os.kill(main_pid, signal.SIGKILL)
    await harness.until(
        lambda s: (
            s.value("reconciler_collector_restarts_total", id="a") == 1
            and s.value("reconciler_collector_up", id="a") == 1
        )
    )
    new_pid = harness.pid("a")
    assert new_pid != main_pid
    seen.clear()
    main_pid = new_pid
    await eventually(burned, timeout=WAIT_SECONDS * 2, interval=0.02, message="child done")
    assert seen == sorted(seen) and seen[0] >= counted, "the CPU counter went down"
    scrape = await harness.scrape()
    total = scrape.value("reconciler_collector_cpu_seconds_total", id="a")
    assert total == pytest.approx(counted + _proc_cpu_seconds(new_pid), abs=3 / CLOCK_TICKS)


async def test_a_working_process_and_a_new_child_are_seen_at_each_scrape(
    harness: Harness,
) -> None:
    """A scrape reads each kept file again (``TreeReader``): the CPU of a process that
    works with the same pids grows from scrape to scrape, and a child forked later
    counts from the first scrape after it appears."""
    flag = harness.specs.parent / "stop-working"
    work = (
        f'while [ ! -e "{flag}" ]; do :; done; '
        'sh -c "exec sleep 301" & sh -c "exec sleep 302" & wait'
    )
    write(harness.specs / "a.toml", spec("/bin/sh", "-c", work))
    await harness.until(lambda s: s.value("reconciler_collector_up", id="a") == 1)
    main_pid = harness.pid("a")
    seen: list[float] = []

    async def grew() -> bool:
        scrape = await harness.scrape()
        value = scrape.value("reconciler_collector_cpu_seconds_total", id="a")
        assert value is not None
        seen.append(value)
        return len(set(seen)) >= 3

    await eventually(grew, timeout=WAIT_SECONDS, interval=0.05, message="CPU grows")
    assert seen == sorted(seen), "the CPU counter went down"
    assert harness.manager.tree_pids("a") == [main_pid], "the same pids all along"
    scrape = await harness.scrape()
    counted = scrape.value("reconciler_collector_cpu_seconds_total", id="a")
    assert counted == pytest.approx(_proc_cpu_seconds(main_pid), abs=0.5)
    one = scrape.value("reconciler_collector_resident_memory_bytes", id="a")
    assert one is not None and one > 0

    flag.touch()
    await eventually(
        lambda: len(harness.manager.tree_pids("a")) == 3, timeout=WAIT_SECONDS, message="3"
    )
    scrape = await harness.scrape()
    three = scrape.value("reconciler_collector_resident_memory_bytes", id="a")
    pids = harness.manager.tree_pids("a")
    rss = sum(
        int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        for pid in pids
    )
    assert three == pytest.approx(rss, rel=0.2) and three is not None and three > one
