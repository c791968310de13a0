"""The dashboard and the rules against a real Prometheus scraping a real reconciler.

``reconciler run`` supervises a small fleet arranged so that every panel has
something to show: two sleepers, a paused one, one that can never start
(failed), one that crashes in a loop, and an invalid spec file. A
``prometheus`` server (loopback, random port, temporary storage, 1 s scrape and
rule evaluation) scrapes it with metrics/rules/reconciler.rules.yml loaded.
Then every recording rule and every dashboard query must return data through
the HTTP API, the rules evaluate without errors, the alerts that should be
pending are, and a spec change shows up in the rollout rules. Last, a spec
change that is never ready is rolled back: the Rollouts panels show the
rejected content, SpecRejected is pending and RolloutStuck is not, and a
revert of the file clears both.

Needs ``prometheus`` (metrics/install-prometheus.sh); skips without it unless
CI / RECONCILER_REQUIRE_PROMETHEUS is set (see test_prometheus_rules.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests.integration.test_prometheus_rules import (
    RULES,
    dashboard_queries,
    grafana_to_promql,
    load_dashboard,
    load_rules,
    recording_rules,
    require_tool,
)
from tests.support import MARK_ENV, SESSION_MARK, marked_pids, start_daemon, wait_for

SCRAPE_INTERVAL = "1s"

# Dashboard queries allowed to be empty even in the arranged fleet, and why.
MAY_BE_EMPTY = {
    # Lists only collectors not yet on their file's spec: empty once converged,
    # and whether a never-started collector counts depends on the daemon.
    "panel 'Hosts still behind' target A": "empty when every collector is converged",
    # No reconciler_spec_rejected series while nothing is rejected (DESIGN §9);
    # test_a_rolled_back_spec_pages_once checks these with a rejected content.
    "panel 'Specs rolled back' target A": "empty while nothing is rejected",
    "panel 'Rejected spec contents' target A": "empty while nothing is rejected",
}

MARK = f"env = {{ {MARK_ENV} = {json.dumps(SESSION_MARK)} }}\n"
FLEET = {
    "sleeper-a.toml": f'type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["3600"]\n{MARK}',
    "sleeper-b.toml": f'type = "napper"\nbinary_path = "/bin/sleep"\nargs = ["3601"]\n{MARK}',
    "paused.toml": (
        f'type = "sleeper"\nstate = "paused"\nbinary_path = "/bin/sleep"\nargs = ["3602"]\n{MARK}'
    ),
    # Never starts (SPAWN_FAILED) and is not retried: failed.
    "broken.toml": (
        'type = "ghost"\nbinary_path = "/nonexistent/reconciler-test-collector"\n'
        f"max_restarts = 0\n{MARK}"
    ),
    # Exits at once, restarted for ever with a short backoff: crash-looping.
    "crashloop.toml": (
        'type = "crasher"\nbinary_path = "/bin/sh"\nargs = ["-c", "exit 3"]\n'
        'max_restarts = "unlimited"\nrestart_backoff_initial_seconds = 0.2\n'
        f"restart_backoff_max_seconds = 0.5\n{MARK}"
    ),
    # Unknown key: reconciler_spec_valid{file="invalid.toml"} == 0.
    "invalid.toml": f'type = "sleeper"\nbinary_path = "/bin/sleep"\nargz = ["1"]\n{MARK}',
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@dataclass
class Stack:
    specs: Path
    metrics_port: int
    prometheus_url: str
    reconciler: subprocess.Popen[bytes]
    prometheus: subprocess.Popen[bytes]
    reconciler_log: Path
    prometheus_log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = http_get_json(f"{self.prometheus_url}/api/v1/{path}{query}")
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return cast(list[dict[str, Any]], data["result"])

    def value(self, promql: str) -> float | None:
        """The single sample of an instant query, or None when it has none."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql}: more than one series: {result}"
        return float(result[0]["value"][1]) if result else None

    def logs(self) -> str:
        return (
            f"--- reconciler stderr ---\n{self.reconciler_log.read_text(errors='replace')[-4000:]}"
            f"\n--- prometheus stderr ---\n"
            f"{self.prometheus_log.read_text(errors='replace')[-4000:]}"
        )


def _start_reconciler(tmp_path: Path, specs: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return start_daemon(
        specs=specs,
        state=tmp_path / "state",
        stderr_path=log,
        metrics_address=f"127.0.0.1:{port}",
    )


def _start_prometheus(
    prometheus: str, tmp_path: Path, *, target_port: int, port: int, log: Path
) -> subprocess.Popen[bytes]:
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": "900ms",
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(RULES)],
        "scrape_configs": [
            # The job name the rules assume (ReconcilerDown).
            {
                "job_name": "reconciler",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [
                prometheus,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _end(process: subprocess.Popen[bytes] | None, *, grace_seconds: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One reconciler and one Prometheus for the module; the tests only read,
    except the last, which changes a spec."""
    prometheus_binary = require_tool("prometheus")
    tmp_path = tmp_path_factory.mktemp("live")
    specs = tmp_path / "specs"
    specs.mkdir()
    for name, text in FLEET.items():
        (specs / name).write_text(text)
    metrics_port, prometheus_port = free_port(), free_port()
    reconciler_log, prometheus_log = tmp_path / "reconciler.stderr", tmp_path / "prometheus.stderr"
    reconciler = prometheus = None
    try:
        reconciler = _start_reconciler(tmp_path, specs, metrics_port, reconciler_log)
        prometheus = _start_prometheus(
            prometheus_binary,
            tmp_path,
            target_port=metrics_port,
            port=prometheus_port,
            log=prometheus_log,
        )
        yield Stack(
            specs=specs,
            metrics_port=metrics_port,
            prometheus_url=f"http://127.0.0.1:{prometheus_port}",
            reconciler=reconciler,
            prometheus=prometheus,
            reconciler_log=reconciler_log,
            prometheus_log=prometheus_log,
        )
    finally:
        _end(prometheus, grace_seconds=10)
        _end(reconciler, grace_seconds=30)
        for pid in marked_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _serving_metrics(stack: Stack) -> bool:
    assert stack.reconciler.poll() is None, f"reconciler exited\n{stack.logs()}"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _prometheus_ready(stack: Stack) -> bool:
    assert stack.prometheus.poll() is None, f"prometheus exited\n{stack.logs()}"
    try:
        with urllib.request.urlopen(f"{stack.prometheus_url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _target_up(stack: Stack) -> bool:
    targets = stack.api("targets")["activeTargets"]
    return any(t["labels"]["job"] == "reconciler" and t["health"] == "up" for t in targets)


def _has_data(stack: Stack, promql: str) -> bool:
    return bool(stack.query(promql))


@pytest.mark.timeout(180)
def test_every_rule_and_dashboard_query_returns_data(stack: Stack) -> None:
    wait_for(
        lambda: _serving_metrics(stack),
        timeout=20,
        message=(
            f"`reconciler run --metrics-address 127.0.0.1:{stack.metrics_port}` serving /metrics "
            "(DESIGN §8: is the metrics server wired into the daemon?)"
        ),
    )
    wait_for(lambda: _prometheus_ready(stack), timeout=30, message="prometheus ready")
    wait_for(lambda: _target_up(stack), timeout=20, message="reconciler target up")
    # Every range query needs two samples in its window; a few more give the
    # crash-looping collector time to restart more than 3 times.
    wait_for(
        lambda: (stack.value("count_over_time(reconciler_build_info[5m])") or 0) >= 5,
        timeout=30,
        message="five scrapes",
    )

    # The rules load and evaluate without errors.
    groups = stack.api("rules")["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert len(loaded) == len(load_rules()), [rule["name"] for rule in loaded]
    for rule in loaded:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

    for rule in recording_rules():
        name: str = rule["record"]
        wait_for(partial(_has_data, stack, name), timeout=15, message=f"{name} has data")

    for where, expr in dashboard_queries(load_dashboard()):
        if where in MAY_BE_EMPTY:
            stack.query(grafana_to_promql(expr))  # must still evaluate
            continue
        promql = grafana_to_promql(expr)
        wait_for(
            partial(_has_data, stack, promql),
            timeout=15,
            message=f"{where} returns data: {promql}",
        )


@pytest.mark.timeout(180)
def test_rules_see_the_fleet_as_it_is(stack: Stack) -> None:
    wait_for(lambda: _serving_metrics(stack), timeout=20, message="reconciler serving /metrics")
    wait_for(lambda: _prometheus_ready(stack), timeout=30, message="prometheus ready")
    wait_for(lambda: _target_up(stack), timeout=20, message="reconciler target up")

    def by_state(state: str) -> float | None:
        return stack.value(f'reconciler:collectors_by_state:sum{{state="{state}"}}')

    wait_for(lambda: by_state("failed") == 1, timeout=30, message="one failed collector")
    wait_for(lambda: by_state("paused") == 1, timeout=30, message="one paused collector")
    wait_for(
        lambda: stack.value('reconciler:collector_crashlooping:bool{id="crashloop"}') == 1,
        timeout=30,
        message="crashloop is crash-looping",
    )
    for calm in ("sleeper-a", "sleeper-b", "paused", "broken"):
        assert stack.value(f'reconciler:collector_crashlooping:bool{{id="{calm}"}}') == 0, calm
    assert stack.value("reconciler:collectors_crashlooping:sum") == 1

    # Alerts: pending (their `for` is minutes), with the labels the
    # annotations use; the reconciler itself is not down.
    def active_alerts() -> set[tuple[str, str]]:
        alerts = stack.api("alerts")["alerts"]
        return {
            (a["labels"]["alertname"], a["labels"].get("id") or a["labels"].get("file", ""))
            for a in alerts
        }

    expected = {
        ("SpecInvalid", "invalid.toml"),
        ("CollectorFailed", "broken"),
        ("CollectorCrashLooping", "crashloop"),
    }
    wait_for(lambda: expected <= active_alerts(), timeout=30, message=f"alerts pending: {expected}")
    assert "ReconcilerDown" not in {name for name, _ in active_alerts()}

    # Rollout: the sleepers converge; a spec change appears as a new hash that
    # the single host first desires, then applies.
    def rollout(id_: str) -> dict[str, dict[str, float]]:
        rows: dict[str, dict[str, float]] = {}
        for kind in ("desired", "applied", "pending"):
            for sample in stack.query(f'reconciler:spec_hash_hosts:{kind}{{id="{id_}"}}'):
                rows.setdefault(sample["metric"]["hash"], {})[kind] = float(sample["value"][1])
        return rows

    def converged(id_: str) -> str | None:
        rows = rollout(id_)
        done = [h for h, r in rows.items() if r == {"desired": 1, "applied": 1, "pending": 0}]
        return done[0] if len(rows) == 1 and done else None

    before = wait_for(lambda: converged("sleeper-a"), timeout=30, message="sleeper-a converged")
    (stack.specs / "sleeper-a.toml").write_text(FLEET["sleeper-a.toml"].replace("3600", "3700"))
    after = wait_for(
        lambda: (h := converged("sleeper-a")) and h != before and h,
        timeout=30,
        message="sleeper-a's new spec hash desired and applied",
    )
    assert after != before
    assert stack.value('reconciler:specs_pending:count{job="reconciler"}') is not None


ROLLOUT_KEYS = "rollback = true\nrollout_timeout_seconds = 2\n"
ROLLOUT_GOOD = (
    f'{ROLLOUT_KEYS}type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["3604"]\n{MARK}'
)
# Exits at once, so it never runs min_ready_seconds: not ready within
# rollout_timeout_seconds, a failed rollout, rolled back to ROLLOUT_GOOD.
ROLLOUT_BAD = (
    f'{ROLLOUT_KEYS}min_ready_seconds = 1\ntype = "sleeper"\nbinary_path = "/bin/sh"\n'
    'args = ["-c", "exit 3"]\nrestart_backoff_initial_seconds = 0.2\n'
    f"restart_backoff_max_seconds = 0.5\n{MARK}"
)


def _panel_queries(title: str) -> list[str]:
    return [
        grafana_to_promql(expr)
        for where, expr in dashboard_queries(load_dashboard())
        if where.startswith(f"panel {title!r} ")
    ]


def _alerts_for(stack: Stack, collector_id: str) -> set[str]:
    """Names of the alerts pending or firing for one collector."""
    return {
        alert["labels"]["alertname"]
        for alert in stack.api("alerts")["alerts"]
        if alert["labels"].get("id") == collector_id
    }


def _hashes(stack: Stack, promql: str) -> set[str]:
    return {sample["metric"]["hash"] for sample in stack.query(promql)}


@pytest.mark.timeout(120)
def test_a_rolled_back_spec_pages_once(stack: Stack) -> None:
    """A never-ready change is rejected: SpecRejected names it, RolloutStuck does not."""
    wait_for(lambda: _serving_metrics(stack), timeout=20, message="reconciler serving /metrics")
    wait_for(lambda: _prometheus_ready(stack), timeout=30, message="prometheus ready")
    wait_for(lambda: _target_up(stack), timeout=20, message="reconciler target up")
    spec = stack.specs / "rollout.toml"
    spec.write_text(ROLLOUT_GOOD)
    wait_for(
        lambda: stack.value('reconciler_collector_ready{id="rollout"}') == 1,
        timeout=30,
        message="rollout ready on its first spec",
    )
    good = wait_for(
        lambda: _hashes(stack, 'reconciler_collector_applied_spec_info{id="rollout"}'),
        timeout=10,
        message="rollout's applied hash",
    )

    spec.write_text(ROLLOUT_BAD)
    bad = wait_for(
        lambda: (
            (hashes := _hashes(stack, 'reconciler_spec_info{file="rollout.toml"}')) != good
            and hashes
        ),
        timeout=15,
        message="the new content's hash in reconciler_spec_info",
    )
    # Rolled back: the same hash as reconciler_spec_info's (what RolloutStuck's
    # exclusion joins on), and the collector runs its first spec again.
    wait_for(
        lambda: _hashes(stack, 'reconciler_spec_rejected{file="rollout.toml"} == 1') == bad,
        timeout=30,
        message=f'reconciler_spec_rejected{{file="rollout.toml",hash={bad}}} 1',
    )
    wait_for(
        lambda: _hashes(stack, 'reconciler_collector_applied_spec_info{id="rollout"}') == good,
        timeout=15,
        message="rollout back on its first spec",
    )
    (count,) = _panel_queries("Specs rolled back")
    assert stack.value(count) == 1, count
    (table,) = _panel_queries("Rejected spec contents")
    rows = [(row["metric"]["file"], row["metric"]["hash"]) for row in stack.query(table)]
    assert rows == [("rollout.toml", *bad)], table
    # One cause, one page: SpecRejected, not RolloutStuck (pending once the
    # new hash was seen unapplied, gone once it is rejected).
    wait_for(
        lambda: (
            (alerts := _alerts_for(stack, "rollout")) >= {"SpecRejected"}
            and "RolloutStuck" not in alerts
        ),
        timeout=15,
        message="SpecRejected pending for rollout, RolloutStuck not",
    )
    # This daemon has no max_unavailable, so no waves: the rejection holds no
    # other collector, and RolloutHeld does not page for it as well.
    assert stack.value("reconciler_rollout_held") == 0
    assert "RolloutHeld" not in {a["labels"]["alertname"] for a in stack.api("alerts")["alerts"]}

    # A revert is a change of the file: nothing rejected, no alert.
    spec.write_text(ROLLOUT_GOOD)
    wait_for(
        lambda: not stack.query('reconciler_spec_rejected{file="rollout.toml"}'),
        timeout=15,
        message="reconciler_spec_rejected gone after the revert",
    )
    wait_for(
        lambda: not _alerts_for(stack, "rollout") & {"SpecRejected", "RolloutStuck"},
        timeout=15,
        message="no rollout alert for rollout after the revert",
    )
    assert _hashes(stack, 'reconciler_collector_applied_spec_info{id="rollout"}') == good
