"""A fleet on one machine: three reconcilers, one Prometheus, a rollout that lags on one host.

bench/fleet_demo.py (``make fleet-demo``) starts the fleet and plays the story;
this test plays the same story and asserts what an operator sees: with
commit 2 pushed to every host, host-a and host-b apply it and host-c does not
(its old collector ignores SIGTERM), so the production recording rule
``reconciler:specs_pending:count``, the production dashboard's rollout panel and
its "Hosts still behind" query name host-c, and RolloutStuck goes pending, then
firing for host-c alone. Once host-c has applied the change, nothing is behind
and the alert resolves.

RolloutStuck's ``for:`` is 15m in metrics/rules/reconciler.rules.yml; the fleet
loads a copy of that file written to the test's temporary directory where only
that alert's ``for:`` is 4s (``fleet_demo.shortened_rules``), evaluated every
1 s. The production file is not changed.

Needs ``prometheus`` (metrics/install-prometheus.sh); skips without it unless
CI / RECONCILER_REQUIRE_PROMETHEUS is set, as test_prometheus_live.py does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.fleet_demo import ALERT, ALERT_FOR, HOSTS, SLOW_HOST, Fleet, shortened_rules, story
from tests.integration.test_prometheus_rules import RULES, require_tool
from tests.support import SESSION_MARK, marked_pids


def test_the_rules_copy_shortens_only_the_one_alert(tmp_path: Path) -> None:
    production = yaml.safe_load(RULES.read_text())
    copy = yaml.safe_load(shortened_rules(tmp_path / "rules.yml").read_text())
    changed = [
        (old.get("alert") or old.get("record"), old.get("for"), new.get("for"))
        for old_group, new_group in zip(production["groups"], copy["groups"], strict=True)
        for old, new in zip(old_group["rules"], new_group["rules"], strict=True)
        if old != new
    ]
    assert changed == [(ALERT, "15m", ALERT_FOR)]


@pytest.mark.timeout(180)
def test_a_rollout_behind_on_one_host_is_named_alerted_and_resolved(tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    lines: list[str] = []
    fleet = Fleet(root=tmp_path, mark=SESSION_MARK, prometheus_binary=prometheus)
    with fleet:
        try:
            seen = story(fleet, lines.append, timeout=40)
            targets = fleet.api("targets")["activeTargets"]
        except AssertionError as error:
            raise AssertionError(f"{error}\n{chr(10).join(lines)}\n{fleet.logs()}") from None
    story_told = "\n".join(lines)

    # One scrape job, three targets found through file_sd, each named by its host.
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(HOSTS)
    for target in targets:
        assert target["labels"]["job"] == "reconciler"
        assert target["labels"]["host"] == target["labels"]["instance"]
        assert target["discoveredLabels"]["__meta_filepath"] == str(tmp_path / "targets.json")
        assert target["health"] == "up"

    # Commit 1: every host converged (host-c runs its own variant of the file).
    commit1 = seen["commit1"]
    assert commit1["host-a"] == commit1["host-b"] != commit1["host-c"]

    # Commit 2 everywhere: one hash, applied on host-a and host-b only.
    commit2 = seen["commit2"]
    assert len(set(commit2.values())) == 1, commit2
    new = commit2["host-a"]
    assert new not in commit1.values()
    assert seen["pending"] == {"host-a": 0, "host-b": 0, SLOW_HOST: 1}, story_told
    assert seen["rollout"] == {new: {"desired": 3, "applied": 2, "pending": 1}}, story_told
    assert seen["behind"] == [
        {"instance": SLOW_HOST, "id": "sleeper", "wanted": new, "applied": commit1[SLOW_HOST]}
    ], story_told
    # The alert is for host-c alone: pending first, firing after its for:.
    assert seen["alert_first"] in ({}, {SLOW_HOST: "pending"}), story_told
    assert seen["alert_pending"] == {SLOW_HOST: "pending"}, story_told
    assert seen["alert_firing"] == {SLOW_HOST: "firing"}, story_told

    # host-c applied it: nothing behind, alert resolved.
    assert seen["final_pending"] == dict.fromkeys(HOSTS, 0), story_told
    assert seen["final_rollout"] == {new: {"desired": 3, "applied": 3, "pending": 0}}, story_told
    assert seen["final_behind"] == [], story_told
    assert seen["final_alerts"] == {}, story_told

    # The fleet ended everything it started.
    processes = [h.process for h in fleet.hosts.values()] + [fleet.prometheus]
    assert all(p is not None and p.poll() is not None for p in processes)
    assert not marked_pids()
