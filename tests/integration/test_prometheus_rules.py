"""The monitoring content in metrics/: rules pass promtool, the dashboard is sound,
and both use only the metrics DESIGN.md §9 makes public (or our recording rules).

Runs ``promtool`` (from the Debian package ``prometheus``; ``metrics/install-prometheus.sh``
installs it). Without it the promtool tests skip, unless ``CI`` or
``RECONCILER_REQUIRE_PROMETHEUS`` is set in the environment: then they fail, so
CI cannot pass by skipping. The helpers here are also used by
``test_prometheus_live.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
METRICS_DIR = ROOT / "metrics"
RULES = METRICS_DIR / "rules" / "reconciler.rules.yml"
RULE_TESTS = METRICS_DIR / "rules" / "reconciler.rules.test.yml"
DASHBOARD = METRICS_DIR / "grafana" / "reconciler-dashboard.json"

# DESIGN.md §9, the public contract: the only metrics the content may use.
CONTRACT_METRICS = frozenset(
    {
        "reconciler_collector_state",
        "reconciler_collector_desired_state",
        "reconciler_collector_up",
        "reconciler_collector_health",
        "reconciler_collector_uptime_seconds",
        "reconciler_collector_start_time_seconds",
        "reconciler_collector_restarts_total",
        "reconciler_collector_last_exit_code",
        "reconciler_collector_backoff_seconds",
        "reconciler_collector_cpu_seconds_total",
        "reconciler_collector_resident_memory_bytes",
        "reconciler_collector_applied_spec_info",
        "reconciler_spec_valid",
        "reconciler_spec_info",
        "reconciler_specs",
        "reconciler_actions_total",
        "reconciler_build_info",
        "reconciler_collector_ready",
        "reconciler_spec_rejected",
        "reconciler_rollout_held",
    }
)
CONTRACT_HISTOGRAMS = frozenset({"reconciler_reconcile_duration_seconds"})
# Prometheus' own scrape health series: only ReconcilerDown may use it.
SCRAPE_METRICS = frozenset({"up"})

# Identifiers that are PromQL (or Grafana variable-query) vocabulary, not metrics.
PROMQL_WORDS = frozenset(
    """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    by without on ignoring group_left group_right bool and or unless offset atan2
    abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_count
    histogram_sum histogram_fraction histogram_quantile holt_winters hour idelta
    increase irate label_join label_replace ln log2 log10 minute month
    predict_linear rate resets round scalar sgn sort sort_desc sqrt time timestamp
    vector year avg_over_time min_over_time max_over_time sum_over_time
    count_over_time quantile_over_time stddev_over_time stdvar_over_time
    last_over_time present_over_time acos acosh asin asinh atan atanh cos cosh
    sin sinh tan tanh deg pi rad inf nan
    label_values label_names metrics query_result
    """.split()
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects.

    Not a parser, but exact for expressions of the shapes used in metrics/:
    strings, Grafana variables, label matchers, range/subquery brackets and
    grouping label lists are removed first; every identifier left that is not
    PromQL vocabulary names a metric.
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"#[^\n]*", " ", text)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in PROMQL_WORDS}


def variable_query_expr(query: str) -> str:
    """The PromQL inside a Grafana variable query (``label_values(EXPR, label)``)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
    return match.group(1) if match else query


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "record" in rule]


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def load_dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD.read_text()))


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel with queries: rows are containers (also when collapsed), not panels."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable."""
    queries = [
        (f"panel {panel['title']!r} target {target['refId']}", target.get("expr", ""))
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            queries.append((f"variable {variable['name']!r}", variable_query_expr(text)))
    return queries


def allowed_metrics(*, scrape: bool) -> set[str]:
    allowed = set(CONTRACT_METRICS) | {rule["record"] for rule in recording_rules()}
    for histogram in CONTRACT_HISTOGRAMS:
        allowed |= {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"}
    if scrape:
        allowed |= SCRAPE_METRICS
    return allowed


def require_tool(name: str) -> str:
    """Path of a Prometheus tool; skip without it, but fail where it must be present."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (run metrics/install-prometheus.sh as root)"
    if os.environ.get("CI") or os.environ.get("RECONCILER_REQUIRE_PROMETHEUS"):
        pytest.fail(f"{reason}; CI / RECONCILER_REQUIRE_PROMETHEUS is set, so it is required")
    pytest.skip(reason)


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


# --- promtool -----------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query, Grafana variables given sample values."""
    rules = [
        {"record": f"dashboard:query_{n}:check", "expr": grafana_to_promql(expr)}
        for n, (_, expr) in enumerate(dashboard_queries(load_dashboard()))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it with every variable set to "All"."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    return re.sub(r"\$\{?(instance|type|id)\}?", ".*", expr)


# --- coverage of the rule unit tests ----------------------------------------


def _rule_test_cases() -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], yaml.safe_load(RULE_TESTS.read_text())["tests"])


@pytest.mark.parametrize("alert", [r["alert"] for r in alerting_rules()])
def test_every_alert_is_unit_tested_firing_and_quiet(alert: str) -> None:
    cases = [
        check
        for test in _rule_test_cases()
        for check in test.get("alert_rule_test", [])
        if check["alertname"] == alert
    ]
    assert any(case["exp_alerts"] for case in cases), f"no test where {alert} fires"
    assert any(not case["exp_alerts"] for case in cases), f"no test where {alert} stays quiet"


@pytest.mark.parametrize("record", [r["record"] for r in recording_rules()])
def test_every_recording_rule_is_unit_tested(record: str) -> None:
    tested = {
        check["expr"].strip()
        for test in _rule_test_cases()
        for check in test.get("promql_expr_test", [])
        if check["exp_samples"]
    }
    assert record in tested


# --- rule content ---------------------------------------------------------------


def test_rules_use_only_contract_metrics_and_recording_rules() -> None:
    allowed = allowed_metrics(scrape=False)
    for rule in load_rules():
        name = rule.get("record") or rule["alert"]
        extra = SCRAPE_METRICS if rule.get("alert") == "ReconcilerDown" else set()
        unknown = metric_names(rule["expr"]) - allowed - extra
        assert not unknown, f"{name} uses metrics outside DESIGN §9: {sorted(unknown)}"


def test_recording_rules_are_in_the_reconciler_namespace() -> None:
    for rule in recording_rules():
        assert re.fullmatch(r"reconciler:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: r["alert"])
def test_alerts_have_severity_and_say_what_to_do(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert {"summary", "description"} <= rule["annotations"].keys()
    annotations = rule["annotations"]["summary"] + rule["annotations"]["description"]
    assert "$labels.instance" in annotations, "an alert names the host"
    if "id" in _alert_labels(rule):
        assert "$labels.id" in annotations and "reconciler " in annotations


def _alert_labels(rule: dict[str, Any]) -> set[str]:
    match = re.search(r"by \(([^)]*)\)", rule["expr"])
    return {label.strip() for label in match.group(1).split(",")} if match else set()


# --- dashboard ---------------------------------------------------------------------


def test_dashboard_template_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "type", "id"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert variables["id"]["multi"] is True


def test_every_panel_has_a_datasource_and_queries() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    panels = list(dashboard_panels(dashboard))
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids are unique"
    # Tests (and operators) name panels by title.
    assert len({panel["title"] for panel in panels}) == len(panels), "panel titles are unique"
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel.get("targets"), f"{title}: no targets"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{title} {target['refId']}: empty expr"
            assert target["datasource"]["uid"] == "${datasource}", title
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{title}: wider than the dashboard"


def test_dashboard_uses_only_contract_metrics_and_recording_rules() -> None:
    allowed = allowed_metrics(scrape=False)
    for where, expr in dashboard_queries(load_dashboard()):
        names = metric_names(expr)
        assert names, f"{where}: selects no metric"
        assert not names - allowed, f"{where} uses metrics outside DESIGN §9: {names - allowed}"


def test_dashboard_has_the_panels_operators_need() -> None:
    exprs = "\n".join(expr for _, expr in dashboard_queries(load_dashboard()))
    for needed in (
        "reconciler_collector_state",
        "reconciler_collector_restarts_total",
        "reconciler_collector_uptime_seconds",
        "rate(reconciler_collector_cpu_seconds_total",
        "reconciler_collector_resident_memory_bytes",
        "reconciler_spec_valid",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "reconciler_reconcile_duration_seconds_bucket",
        "reconciler_actions_total",
        "reconciler:spec_hash_hosts:desired",
        "reconciler:spec_hash_hosts:applied",
        "reconciler_collector_ready",
        "reconciler_spec_rejected",
        "reconciler_rollout_held",
    ):
        assert needed in exprs, needed


def test_panels_do_not_overlap() -> None:
    """Grafana lays out gridPos as given: two panels on one cell hide each other."""
    # Rows are 1-high bars of their own, laid out with the panels (a collapsed
    # row would hold its panels inside it, placed only when it is expanded).
    laid_out = [(panel["title"], panel["gridPos"]) for panel in load_dashboard()["panels"]]
    for i, (title, a) in enumerate(laid_out):
        assert a["w"] > 0 and a["h"] > 0 and a["x"] >= 0 and a["y"] >= 0, title
        for other, b in laid_out[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{title!r} {a} overlaps {other!r} {b}"


def test_rollouts_row_shows_readiness_rejections_and_holds() -> None:
    panels = load_dashboard()["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Rollouts")
    end = next(
        (i for i, p in enumerate(panels[start + 1 :], start + 1) if p["type"] == "row"),
        len(panels),
    )
    exprs = {
        panel["title"]: "\n".join(target["expr"] for target in panel["targets"])
        for panel in panels[start + 1 : end]
    }
    rejected = next(expr for title, expr in exprs.items() if title == "Rejected spec contents")
    assert "by (instance, file, hash)" in rejected, "the table names host, file and content"
    assert any("reconciler_collector_ready" in expr for expr in exprs.values())
    assert any("reconciler_rollout_held" in expr for expr in exprs.values())


def test_collectors_table_puts_problems_first() -> None:
    table = next(
        p for p in dashboard_panels(load_dashboard()) if p["title"].startswith("Collectors (")
    )
    problem = next(t for t in table["targets"] if t["refId"] == "A")["expr"]
    assert 'state="failed"' in problem and "reconciler:collector_crashlooping:bool" in problem
    assert table["options"]["sortBy"] == [{"displayName": "Problem", "desc": True}]


# --- the metric-name extractor itself -----------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        pytest.param("up", {"up"}, id="bare"),
        pytest.param('rate(a_total{x="y(z)"}[5m] offset 1h)', {"a_total"}, id="string-parens"),
        pytest.param(
            "sum by (job, instance) (a) / on (job) group_left (le) b:rec:sum",
            {"a", "b:rec:sum"},
            id="grouping-and-recording",
        ),
        pytest.param(
            'histogram_quantile(0.99, sum by (le) (rate(h_bucket{i=~"$i"}[$__rate_interval])))',
            {"h_bucket"},
            id="grafana-variables",
        ),
        pytest.param(
            'label_replace(a == 1, "id", "$1", "file", "(.+)[.]toml") unless on (id) b == bool 1e3',
            {"a", "b"},
            id="label-replace-and-numbers",
        ),
        pytest.param("absent(up{job='reconciler'}) or vector(0)", {"up"}, id="functions"),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected
