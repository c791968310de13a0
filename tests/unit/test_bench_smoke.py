"""The benchmarks still run: ``bench/compare_bench.py`` and ``bench/scaling.py`` in ``--quick``.

Only the reconciler (supervisord and circus are not in the project's venv, on purpose), tiny
fleets and windows of a second: this checks the harness, not the figures. Each script runs as a
user runs it; its programs carry the session's leak mark, so the session-end check finds any it
failed to stop.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import MARK_ENV, SESSION_MARK

BENCH = Path(__file__).resolve().parents[2] / "bench"
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="restart counts come from kernel process events (root)"
)


def run_bench(script: str, *args: str, timeout: float) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--no-write", *args],
        env={**os.environ, MARK_ENV: SESSION_MARK},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of the first Markdown table printed, as lists of cells."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in stdout.splitlines()
        if line.startswith("| ")
    ]
    return rows[1:]  # past the header (the |---| line does not start with "| ")


@pytest.mark.timeout(90)
def test_compare_bench_prints_every_row_with_a_figure_for_the_reconciler(tmp_path: Path) -> None:
    stdout = run_bench(
        "compare_bench.py", "--tools", "reconciler", "--json", str(tmp_path / "rows.json"),
        timeout=80,
    )
    report = json.loads((tmp_path / "rows.json").read_text())
    assert report["errors"].get("reconciler", {}) == {}
    rows = {row["metric"] + ":" + row["stat"]: row for row in report["rows"]}
    issue = [
        "idle_cpu:scalar", "idle_cpu_ns:scalar", "rss:scalar", "uss:scalar", "threads:scalar",
        "cold_5:scalar", "cold_10:scalar", "cold_20:scalar", "storm_cpu:scalar",
        "storm_cpu_per_restart_ms:scalar", "ctl_ms:median", "ctl_ms:p99", "apply_ms:median",
        "apply_ms:p99", "crash_ms:median", "crash_ms:p99", "scrape_ms_20:median",
        "scrape_ms_20:p99", "scrape_cpu_15s_20:scalar",
    ]
    missing = [key for key in issue if key not in rows]
    assert not missing, f"rows not in the report: {missing}"
    for key, row in rows.items():
        value = row["values"].get("reconciler")
        assert value is not None and math.isfinite(value) and value >= 0, (key, row)
        assert row["cells"]["supervisord"] == row["cells"]["circus"] == "not run", row
    # What a user would see being wrong: a start that took no time, no memory, no thread.
    assert 0 < rows["cold_5:scalar"]["values"]["reconciler"] < 60
    assert rows["rss:scalar"]["values"]["reconciler"] > 5
    assert rows["threads:scalar"]["values"]["reconciler"] >= 1
    assert rows["crash_ms:median"]["values"]["reconciler"] > 0
    assert rows["storm_restarts:scalar"]["values"]["reconciler"] >= 1
    printed = table_rows(stdout)
    assert [cells[0] for cells in printed] == [row["label"] for row in report["rows"]]
    for cells in printed:
        assert NUMBER.match(cells[3]), f"no figure for the reconciler: {cells}"


@pytest.mark.timeout(60)
def test_scaling_prints_a_line_per_size_with_every_cost(tmp_path: Path) -> None:
    stdout = run_bench("scaling.py", "--json", str(tmp_path / "scaling.json"), timeout=50)
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert report["errors"] == {}
    assert sorted(report["sizes"]) == ["10", "20"]
    printed = table_rows(stdout)
    assert [cells[0] for cells in printed] == ["10", "20", "per +100 collectors"]
    columns = len(printed[0])
    for cells in printed[:2]:
        assert len(cells) == columns
        assert all(NUMBER.fullmatch(cell) for cell in cells), cells
    assert report["sizes"]["20"]["RSS, MiB"] > 5
    assert 0 < report["sizes"]["20"]["cold start, s"] < 60
