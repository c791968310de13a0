"""A fleet simulated on one machine: three reconcilers, one Prometheus, one rollout.

Three ``reconciler run`` daemons (host-a, host-b, host-c), each with its own
specs dir, state dir, control socket and metrics port, run one collector each
(``sleeper``, a ``/bin/sleep``). One real ``prometheus`` scrapes all three
through ``file_sd_configs``; every target carries its host name as both the
``instance`` and the ``host`` label, so the rules and the dashboard name hosts.

The story, as an operator sees it:

1. the fleet converges on the first commit of ``sleeper.toml``;
2. a commit changes the collector's args and is pushed to every host: host-a
   and host-b apply it within seconds, host-c does not, because its running
   collector ignores SIGTERM and has a long ``graceful_timeout_seconds`` (a
   slow graceful stop, what RolloutStuck's description points at). With the
   production rules a host is "behind" when its file's valid hash is not what
   its collector runs, so the recording rule ``reconciler:specs_pending:count``
   and the dashboard's "Hosts still behind" query name host-c, and RolloutStuck
   goes pending, then firing for host-c after its ``for:``;
3. host-c gets the change: the operator ends the stuck old process (by its
   pid, from ``reconciler status sleeper --json``); the reconciler starts the
   new spec, the query is empty and the alert resolves.

The recording rules and the dashboard queries are the production ones
(metrics/rules/reconciler.rules.yml, metrics/grafana/reconciler-dashboard.json).
Only RolloutStuck's ``for:`` (15m in production) is shortened, in a copy of the
rule file written to the run's temporary directory (``shortened_rules``).

Run ``python bench/fleet_demo.py`` (``make fleet-demo``); tests/e2e/test_fleet.py
asserts the same story. Everything started is ended by pid, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ is on sys.path, not the repository
    sys.path.insert(0, str(ROOT))

from tests.integration.test_prometheus_live import _end, free_port, http_get_json  # noqa: E402
from tests.integration.test_prometheus_rules import (  # noqa: E402
    RULES,
    dashboard_panels,
    grafana_to_promql,
    load_dashboard,
)
from tests.support import (  # noqa: E402
    MARK_ENV,
    RECONCILER,
    pids_with_env,
    start_daemon,
    wait_for,
)

HOSTS = ("host-a", "host-b", "host-c")
SLOW_HOST = "host-c"
COLLECTOR = "sleeper"
ALERT = "RolloutStuck"
ALERT_FOR = "4s"
INTERVAL = "1s"
# Panels of the dashboard the demo reads (the rollout row).
ROLLOUT_PANEL = "Rollout: has my commit reached every host?"
BEHIND_PANEL = "Hosts still behind"


def spec_text(host: str, *, commit: int, mark: str) -> str:
    """sleeper.toml on ``host`` at ``commit`` 1 or 2 (the change is the args).

    Commit 2 is the same file on every host, so the rollout panel shows one
    hash reaching 2 of 3 hosts, then 3. On host-c, commit 1 is a local variant
    whose process ignores SIGTERM (an ignored signal stays ignored across
    exec): with graceful_timeout_seconds = 600, applying commit 2 there waits on
    the old process, as a collector slow to stop would make it.
    """
    seconds = 3600 + commit
    env = f"env = {{ {MARK_ENV} = {json.dumps(mark)} }}\n"
    if host == SLOW_HOST and commit == 1:
        argv = (
            f'binary_path = "/bin/sh"\nargs = ["-c", "trap \'\' TERM; exec /bin/sleep {seconds}"]\n'
        )
    else:
        argv = f'binary_path = "/bin/sleep"\nargs = ["{seconds}"]\n'
    return f'type = "sleeper"\n{argv}graceful_timeout_seconds = 600\nlog = "null"\n{env}'


def shortened_rules(destination: Path, *, alert: str = ALERT, for_: str = ALERT_FOR) -> Path:
    """A copy of the production rules with only ``alert``'s ``for:`` set to ``for_``.

    The production ``for: 15m`` would make the story last a quarter of an hour;
    every other rule (all recording rules included) is copied unchanged.
    """
    document = yaml.safe_load(RULES.read_text())
    found = 0
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["for"] = for_
                found += 1
    if found != 1:
        raise RuntimeError(f"{RULES}: expected one alert {alert}, found {found}")
    destination.write_text(yaml.safe_dump(document, sort_keys=False))
    return destination


def panel_exprs(title: str) -> list[str]:
    """The PromQL of a dashboard panel's targets, Grafana variables set to "All"."""
    for panel in dashboard_panels(load_dashboard()):
        if panel["title"] == title:
            return [grafana_to_promql(t["expr"]) for t in panel.get("targets", [])]
    raise RuntimeError(f"dashboard has no panel {title!r}")


@dataclass
class Host:
    name: str
    specs: Path
    state: Path
    metrics_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.state / "api.sock"


@dataclass
class Fleet:
    """Three reconcilers and a Prometheus under ``root``; use as a context manager."""

    root: Path
    mark: str
    prometheus_binary: str
    hosts: dict[str, Host] = field(default_factory=dict)
    prometheus: subprocess.Popen[bytes] | None = None
    prometheus_port: int = 0
    prometheus_log: Path = Path()

    # --- start and stop ----------------------------------------------------

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for name in HOSTS:
            host = Host(
                name=name,
                specs=self.root / name / "specs",
                state=self.root / name / "state",
                metrics_port=free_port(),
                log=self.root / name / "reconciler.stderr",
            )
            host.specs.mkdir(parents=True)
            host.state.mkdir(parents=True)
            self.hosts[name] = host
            self.push(name, commit=1)
            host.process = start_daemon(
                specs=host.specs,
                state=host.state,
                stderr_path=host.log,
                metrics_address=f"127.0.0.1:{host.metrics_port}",
            )
        self._start_prometheus()

    def _start_prometheus(self) -> None:
        targets = [
            {
                "targets": [f"127.0.0.1:{host.metrics_port}"],
                "labels": {"instance": host.name, "host": host.name},
            }
            for host in self.hosts.values()
        ]
        (self.root / "targets.json").write_text(json.dumps(targets, indent=2))
        config = {
            "global": {
                "scrape_interval": INTERVAL,
                "scrape_timeout": "900ms",
                "evaluation_interval": INTERVAL,
            },
            "rule_files": [str(shortened_rules(self.root / "reconciler.rules.yml"))],
            "scrape_configs": [
                {
                    "job_name": "reconciler",
                    "file_sd_configs": [{"files": [str(self.root / "targets.json")]}],
                }
            ],
        }
        config_path = self.root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.prometheus_port = free_port()
        self.prometheus_log = self.root / "prometheus.stderr"
        with self.prometheus_log.open("wb") as stderr:
            self.prometheus = subprocess.Popen(
                [
                    self.prometheus_binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def collector_pids(self) -> list[int]:
        return pids_with_env(MARK_ENV, self.mark)

    def _kill_collectors(self) -> None:
        for pid in self.collector_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """End Prometheus, the reconcilers and every collector, by pid."""
        _end(self.prometheus, grace_seconds=10)
        running = [h.process for h in self.hosts.values() if h.process and h.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            # host-c's collector would hold its reconciler for graceful_timeout_seconds.
            self._kill_collectors()
            with contextlib.suppress(subprocess.TimeoutExpired):
                running[0].wait(timeout=0.1)
        for process in running:
            _end(process, grace_seconds=0)
        self._kill_collectors()

    # --- what the operator does ----------------------------------------------

    def push(self, name: str, *, commit: int) -> None:
        """Deploy ``commit`` of sleeper.toml to one host (what the Ansible play does)."""
        host = self.hosts[name]
        path = host.specs / f"{COLLECTOR}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec_text(name, commit=commit, mark=self.mark))
        tmp.chmod(0o644)
        tmp.rename(path)

    def status(self, name: str) -> dict[str, Any]:
        """``reconciler status sleeper --json`` on one host."""
        out = subprocess.run(
            [RECONCILER, "status", COLLECTOR, "--json", "--socket", str(self.hosts[name].socket)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return cast(dict[str, Any], json.loads(out))

    def end_stuck_collector(self, name: str) -> int:
        """Kill the old process the host waits on (by the pid its reconciler reports)."""
        pid = int(self.status(name)["pid"])
        os.kill(pid, signal.SIGKILL)
        return pid

    # --- what the operator sees ----------------------------------------------

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = http_get_json(f"{self.prometheus_url}/api/v1/{path}{query}")
        if body["status"] != "success":
            raise RuntimeError(body)
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.api("query", query=promql)["result"])

    def ready(self) -> bool:
        """Prometheus answers and every host's target is up."""
        if self.prometheus is not None and self.prometheus.poll() is not None:
            raise RuntimeError(f"prometheus exited\n{self.logs()}")
        for host in self.hosts.values():
            if host.process is not None and host.process.poll() is not None:
                raise RuntimeError(f"{host.name}'s reconciler exited\n{self.logs()}")
        try:
            targets = self.api("targets")["activeTargets"]
        except (urllib.error.URLError, OSError):
            return False
        up = {t["labels"].get("instance") for t in targets if t["health"] == "up"}
        return up >= set(HOSTS)

    def specs_pending(self) -> dict[str, float]:
        """reconciler:specs_pending:count per host (the recording rule)."""
        return {
            s["metric"]["instance"]: float(s["value"][1])
            for s in self.query("reconciler:specs_pending:count")
        }

    def rollout(self) -> dict[str, dict[str, float]]:
        """The rollout panel: per hash of sleeper, hosts desired / applied / pending."""
        rows: dict[str, dict[str, float]] = {}
        for kind, expr in zip(
            ("desired", "applied", "pending"), panel_exprs(ROLLOUT_PANEL), strict=True
        ):
            for sample in self.query(expr):
                if sample["metric"].get("id") == COLLECTOR:
                    rows.setdefault(sample["metric"]["hash"], {})[kind] = float(sample["value"][1])
        return rows

    def behind(self) -> list[dict[str, str]]:
        """The dashboard's "Hosts still behind" rows (instance, id, wanted, applied)."""
        (expr,) = panel_exprs(BEHIND_PANEL)
        return [s["metric"] for s in self.query(expr)]

    def alerts(self, alertname: str = ALERT) -> dict[str, str]:
        """State (pending / firing) of ``alertname`` per host; absent when resolved."""
        return {
            a["labels"].get("instance", ""): a["state"]
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == alertname
        }

    def spec_hash(self, name: str) -> str | None:
        """The valid hash of sleeper.toml on one host, as Prometheus last saw it."""
        result = self.query(f'reconciler_spec_info{{instance="{name}", file="{COLLECTOR}.toml"}}')
        return result[0]["metric"]["hash"] if result else None

    def converged(self, commit_hash: dict[str, str | None]) -> bool:
        """Every host's file has its expected hash, and no host is behind."""
        return (
            all(self.spec_hash(n) == h for n, h in commit_hash.items())
            and self.specs_pending() == dict.fromkeys(HOSTS, 0.0)
            and all(r.get("pending") == 0 for r in self.rollout().values())
            and not self.behind()
        )

    def logs(self) -> str:
        parts = [
            f"--- {h.name} reconciler stderr ---\n{h.log.read_text(errors='replace')[-3000:]}"
            for h in self.hosts.values()
            if h.log.exists()
        ]
        if self.prometheus_log.exists():
            parts.append(
                "--- prometheus stderr ---\n"
                f"{self.prometheus_log.read_text(errors='replace')[-3000:]}"
            )
        return "\n".join(parts)


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


# --- the story ---------------------------------------------------------------


def story(
    fleet: Fleet, say: Callable[[str], None] = print, *, timeout: float = 40
) -> dict[str, Any]:
    """Play the rollout; return what was seen at each step (the test asserts on it)."""
    seen: dict[str, Any] = {}

    def show(step: str) -> None:
        say(f"\n== {step}")
        say(f"   reconciler:specs_pending:count  {fleet.specs_pending()}")
        say(f"   rollout panel (hash: desired/applied/pending)  {fleet.rollout()}")
        say(f"   hosts still behind  {fleet.behind()}")
        say(f"   {ALERT}  {fleet.alerts() or 'inactive'}")

    wait_for(fleet.ready, timeout=timeout, interval=0.2, message="prometheus up, 3 targets up")
    first = wait_for(
        lambda: (
            fleet.specs_pending() == dict.fromkeys(HOSTS, 0.0)
            and (h := [fleet.spec_hash(n) for n in HOSTS])
            and all(h)
            and len(fleet.rollout()) == 2
            and not fleet.behind()
            and h
        ),
        timeout=timeout,
        interval=0.2,
        message="every host runs commit 1",
    )
    seen["commit1"] = dict(zip(HOSTS, first, strict=True))
    show("1. the fleet runs commit 1")

    for name in HOSTS:
        fleet.push(name, commit=2)
    say("\n-- commit 2 (args 3601 -> 3602) pushed to host-a, host-b, host-c")
    wait_for(
        lambda: (
            fleet.specs_pending().get(SLOW_HOST) == 1
            and fleet.specs_pending().get("host-a") == 0
            and fleet.specs_pending().get("host-b") == 0
            and all(fleet.spec_hash(n) != seen["commit1"][n] for n in HOSTS)
            and [r.get("applied") for r in fleet.rollout().values()] == [2]
            and len(fleet.behind()) == 1
        ),
        timeout=timeout,
        interval=0.2,
        message="host-a and host-b applied commit 2, host-c pending",
    )
    seen["commit2"] = {n: fleet.spec_hash(n) for n in HOSTS}
    seen["pending"] = fleet.specs_pending()
    seen["rollout"] = fleet.rollout()
    seen["behind"] = fleet.behind()
    seen["alert_first"] = fleet.alerts()
    show("2. host-a and host-b applied commit 2; host-c still runs commit 1")

    seen["alert_pending"] = wait_for(
        lambda: (a := fleet.alerts()).get(SLOW_HOST) == "pending" and a,
        timeout=timeout,
        interval=0.2,
        message=f"{ALERT} pending for host-c",
    )
    show(f"3. {ALERT} pending for host-c: waiting out its for: ({ALERT_FOR} here)")
    seen["alert_firing"] = wait_for(
        lambda: (a := fleet.alerts()).get(SLOW_HOST) == "firing" and a,
        timeout=timeout,
        interval=0.2,
        message=f"{ALERT} firing for host-c after its for: {ALERT_FOR}",
    )
    show(f"4. {ALERT} fires for host-c after its for: ({ALERT_FOR} here, 15m in production)")

    pid = fleet.end_stuck_collector(SLOW_HOST)
    say(f"\n-- host-c gets the change: its old collector (pid {pid}, ignoring SIGTERM) is killed")
    wait_for(
        lambda: fleet.converged(seen["commit2"]) and not fleet.alerts(),
        timeout=timeout,
        interval=0.2,
        message="host-c applied commit 2, nothing behind, alert resolved",
    )
    seen["final_pending"] = fleet.specs_pending()
    seen["final_rollout"] = fleet.rollout()
    seen["final_behind"] = fleet.behind()
    seen["final_alerts"] = fleet.alerts()
    show("5. every host runs commit 2: nothing behind, the alert resolved")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    prometheus = find_prometheus()
    if prometheus is None:
        print("prometheus not found: run metrics/install-prometheus.sh", file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM end the demo through the finally blocks (SIGINT too when
    # started in the background, where a shell leaves it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="reconciler-fleet-"))
    mark = f"reconciler-fleet-demo-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    try:
        with Fleet(root=root, mark=mark, prometheus_binary=prometheus) as fleet:
            print(f"fleet under {root}; prometheus at {fleet.prometheus_url}")
            for host in fleet.hosts.values():
                print(f"  {host.name}: metrics 127.0.0.1:{host.metrics_port}, socket {host.socket}")
            try:
                story(fleet)
            except AssertionError as error:
                print(f"\nFAILED: {error}\n{fleet.logs()}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was ended", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ndone in {time.monotonic() - started:.1f} s; everything started was ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
