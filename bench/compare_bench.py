"""Side-by-side benchmark: the reconciler, supervisord and circus supervising the same workload.

Run: ``.venv/bin/python bench/compare_bench.py`` (every row of the cost issue, all three tools,
2 rounds: about 15 minutes on 2 cores). ``--rows fleet,apply`` runs a subset, ``--tools
reconciler`` one tool, ``--quick`` small sizes and short windows (a smoke test, ~20 s for the
reconciler alone), ``--rows all`` adds the stop and grandchild-leak rows. ``--help`` for the rest.

Each tool runs as its real command (``reconciler run``, ``supervisord -n``, ``circusd``) in a
temp dir, on the same programs; supervisord and circus come from ``.bench/peers-venv``
(``bench/compare/setup-peers.sh``, created on first use; never a project dependency). Rows are
measured one group after the other, and within a group round by round with the tools in rotating
order, so that drift of the machine hits all tools alike. The reconciler measured is, by default,
a regular ``pip install`` of the working tree in ``.bench/reconciler-venv`` (what users install;
``--reconciler-install dev``: the venv running the benchmark, the editable install; ``--quick``
defaults to that, so the smoke test needs no install). The results' header says which. The
groups (``compare/rows.py``):

- ``cold``: daemon spawned -> all ``--small`` programs exec'd;
- ``fleet`` (``--fleet`` programs): cold start; idle CPU (the daemon's own /proc ticks, and
  schedstat ns), wake-ups, RSS/USS, threads; the no-op control command (``reconciler status``,
  ``supervisorctl status``, ``circusctl status``); crash -> replacement exec'd;
- ``large`` (``--large``): cold start; for the reconciler /metrics scrape latency and CPU;
- ``storm``: programs exiting after 0.1 s: CPU, restarts, CPU per restart;
- ``apply``: one new program added to a running fleet (config file -> exec);
- ``ctl`` (not in the default set: ``fleet`` has its row): only the control command, on a
  settled ``--fleet`` (``compare/ctl_rows.py``), in a fraction of ``fleet``'s time.

Processes are seen through the kernel's process events (``compare/observe.py``: exec times to
the microsecond, nothing polls). Prints the Markdown table (and ``--json``), and writes it to
``bench/compare/RESULTS.md`` unless ``--no-write``; the method is in ``bench/compare/README.md``.
Every process started is stopped and reaped even on failure or SIGTERM. Not part of
``make test`` (``tests/unit/test_bench_smoke.py`` runs ``--quick`` for the reconciler).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from compare import report
from compare.ctl_rows import measure_ctl
from compare.observe import Observer, open_observer
from compare.rows import (
    QUICK,
    Figures,
    Settings,
    measure_apply,
    measure_cold,
    measure_fleet,
    measure_large,
    measure_storm,
)
from compare.session import BenchError, become_subreaper, raise_open_files_limit, reap_orphans
from compare.stop_rows import measure_leak, measure_stop_all
from compare.tools import (
    PEERS_VENV,
    RECONCILER_VENV,
    Circus,
    Reconciler,
    Supervisord,
    Tool,
    reconciler_venv,
    tools_venv,
    versions,
)

HERE = Path(__file__).resolve().parent
RESULTS_PATH = HERE / "compare" / "RESULTS.md"
KEPT_SECTION = "## Rows not won"
"""Written by hand after a run: kept when the script rewrites RESULTS.md."""
TOOL_NAMES = ("reconciler", "supervisord", "circus")
ISSUE_GROUPS = ("cold", "fleet", "large", "storm", "apply")
ALL_GROUPS = (*ISSUE_GROUPS, "stop", "leak", "ctl")
INSTALLS = ("wheel", "dev")
MARK_ENV = "RECONCILER_TEST_SESSION"


def measured(figures: Figures, tool: Tool, group: str, run, **kwargs) -> None:
    """Run one measurement; a failure is recorded in the table, and the run goes on."""
    started = time.monotonic()
    try:
        run(tool, figures=figures, **kwargs)
    except (BenchError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        figures.errors[tool.name][group] = f"{type(exc).__name__}: {exc}"
        print(f"  {tool.name} {group}: FAILED: {exc}", file=sys.stderr)
    print(f"  {tool.name} {group}: {time.monotonic() - started:.1f} s", file=sys.stderr)


SIMPLE_GROUPS = {"large": measure_large, "storm": measure_storm, "ctl": measure_ctl}
"""Groups measured by one call per tool and round, with no other argument."""


def run_group(group: str, *, tools: list[Tool], args, settings: Settings, observer: Observer,
              figures: Figures, rng: random.Random) -> None:
    rounds = 1 if group in ("stop", "leak") else args.rounds
    for round_index in range(rounds):
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"{group}: round {round_index + 1}/{rounds} (load {load})", file=sys.stderr)
        figures.loads.append(f"{group} round {round_index + 1}: {load}")
        # Rotate the order so that no tool always runs first (or after the same neighbour).
        shift = round_index % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            common = {"observer": observer, "settings": settings}
            if group in SIMPLE_GROUPS:
                measured(figures, tool, group, SIMPLE_GROUPS[group], **common)
            elif group == "cold":
                measured(figures, tool, group, measure_cold, count=settings.small, **common)
            elif group in ("fleet", "apply"):
                run = measure_fleet if group == "fleet" else measure_apply
                measured(figures, tool, group, run, rng=rng, round_index=round_index, **common)
            elif group == "stop":
                measured(figures, tool, group, measure_stop_all, **common)
                if isinstance(tool, Supervisord):
                    grouped = Supervisord(tool.venv, one_group=True)
                    measured(figures, grouped, group, measure_stop_all,
                             metric="stop_all_grouped", **common)
            elif group == "leak":
                for group_signals in (False, True):
                    measured(figures, tool, group, measure_leak, group_signals=group_signals,
                             **common)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    return f"nproc {usable}, {model}, Linux {platform.release()} ({platform.machine()})"


def code_under_test() -> str:
    """The commit measured, and any uncommitted change to the package (others edit it too)."""
    root = HERE.parent

    def git(*argv: str) -> str:
        result = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True,
                                timeout=30, check=False)
        return result.stdout.rstrip()

    dirty = git("status", "--porcelain", "--", "reconciler").splitlines()
    changed = ", ".join(line[3:] for line in dirty)
    return git("rev-parse", "--short", "HEAD") + (f" + uncommitted: {changed}" if dirty else "")


def install_line(args: argparse.Namespace) -> str:
    """Which reconciler was measured, for the results' header."""
    if args.reconciler_install == "dev":
        return (f"the venv running the benchmark ({Path(sys.executable).parent.parent}: the "
                "developer's editable install)")
    return f"`pip install` of the working tree (not editable) in {args.reconciler_venv}"


def write_results(text: str, *, args, settings: Settings, observer, tool_versions,
                  notes: list[str]) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    listed = ", ".join(f"{name} {version}" for name, version in tool_versions.items())
    command = shlex.join([".venv/bin/python", "bench/compare_bench.py", *sys.argv[1:]])
    sizes = ", ".join(f"{key} {value}" for key, value in dataclasses.asdict(settings).items()
                      if key != "env")
    header = ["# reconciler vs supervisord vs circus", ""]
    if args.preliminary:
        header += [
            "**Preliminary.** Measured on a 2-core machine shared with other work (test suites "
            "of other engineers were running: see the load averages below); the figures to "
            "judge the targets by come from the same command on a quiet machine.",
            "",
        ]
    header += [
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- Python {platform.python_version()}; {listed}",
        f"- reconciler code: {code_under_test()}",
        f"- reconciler install measured: {install_line(args)}",
        f"- command: `{command}`",
        f"- sizes and windows: {sizes}; {args.rounds} rounds",
        f"- observed with: {observer.name}",
        "- programs: `/bin/sleep 3600.NNNN` (unique argv each); crash storm `/bin/sleep 0.1NNNN`",
        "- cells: one value per round -> median (range); latencies -> all samples of all rounds "
        "pooled, median (n) and p99 (nearest rank). \"met\": the issue's target for the "
        "reconciler; \"best\": lowest of the three",
        "",
    ]
    kept: list[str] = []
    if RESULTS_PATH.exists():
        old = RESULTS_PATH.read_text().splitlines()
        if KEPT_SECTION in old:
            kept = ["", *old[old.index(KEPT_SECTION):]]
    body = "\n".join([*header, text, "", "Notes from this run:", "", *notes, *kept, ""])
    RESULTS_PATH.write_text(body)


def settings_from(args: argparse.Namespace) -> Settings:
    base = Settings(**QUICK) if args.quick else Settings()
    overrides = {
        name: getattr(args, name)
        for name in (field.name for field in dataclasses.fields(Settings))
        if getattr(args, name, None) is not None
    }
    if MARK_ENV in os.environ:  # run by the test suite: its leak check finds our programs
        overrides["env"] = ((MARK_ENV, os.environ[MARK_ENV]),)
    return dataclasses.replace(base, **overrides)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default=",".join(TOOL_NAMES), help="comma-separated subset")
    parser.add_argument(
        "--rows", default=",".join(ISSUE_GROUPS),
        help=f"comma-separated groups of rows, of {', '.join(ALL_GROUPS)}; 'all' for every one",
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 2, quick 1")
    parser.add_argument("--quick", action="store_true", help="small sizes, short windows")
    for field in dataclasses.fields(Settings):
        if field.name != "env":
            flag = "--" + field.name.replace("_", "-")
            parser.add_argument(flag, type=type(field.default), default=None,
                                help=f"default {field.default}, quick {QUICK.get(field.name)}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--peers-venv", type=Path, default=PEERS_VENV,
                        help="venv of supervisor and circus (created if missing)")
    parser.add_argument(
        "--reconciler-install", choices=INSTALLS, default=None,
        help="wheel: pip install of the working tree into --reconciler-venv (default); dev: the "
        "venv running this script (the editable install; the default with --quick)",
    )
    parser.add_argument("--reconciler-venv", type=Path, default=RECONCILER_VENV,
                        help="where --reconciler-install wheel installs it (made if missing)")
    parser.add_argument("--polling", action="store_true", help="psutil polling, not kernel events")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    parser.add_argument("--preliminary", action="store_true",
                        help="mark RESULTS.md as a run on a busy machine")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.reconciler_install is None:
        args.reconciler_install = "dev" if args.quick else "wheel"
    args.groups = ALL_GROUPS if args.rows == "all" else tuple(args.rows.split(","))
    unknown = set(args.groups) - set(ALL_GROUPS) | set(args.tools.split(",")) - set(TOOL_NAMES)
    if unknown:
        parser.error(f"unknown rows or tools: {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    settings = settings_from(args)
    # A SIGTERM to the benchmark unwinds like Ctrl-C: every supervisor is still shut down.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    raise_open_files_limit()
    subreaper = become_subreaper()
    names = args.tools.split(",")
    peers = [name for name in names if name != "reconciler"]
    venv = tools_venv(args.peers_venv) if peers else None
    ours = None
    if "reconciler" in names and args.reconciler_install == "wheel":
        ours = reconciler_venv(args.reconciler_venv)
    executable = (ours / "bin" if ours is not None else Path(sys.executable).parent) / "reconciler"
    everyone: list[Tool] = [Reconciler(executable)]
    if venv is not None:
        everyone += [Supervisord(venv), Circus(venv)]
    tools = [tool for tool in everyone if tool.name in names]
    observer = open_observer(polling=args.polling)
    print(f"observing with {observer.name}", file=sys.stderr)
    me = psutil.Process()
    started, cpu_before = time.monotonic(), me.cpu_times()
    load_before = os.getloadavg()
    figures = Figures()
    rng = random.Random(args.seed)
    try:
        for group in args.groups:
            run_group(group, tools=tools, args=args, settings=settings, observer=observer,
                      figures=figures, rng=rng)
    finally:
        observer.close()
        reap_orphans()
    cpu_after = me.cpu_times()
    own_cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    elapsed = time.monotonic() - started

    rows = [row for row in report.issue_rows(settings) if row.group in args.groups]
    rows += [row for row in report.stop_rows() if row.group in args.groups]
    if "ctl" in args.groups and "fleet" not in args.groups:
        rows += [dataclasses.replace(row, group="ctl") for row in report.issue_rows(settings)
                 if row.metric == "ctl_ms"]
    lines = report.evaluate(figures, rows, names)
    text = report.markdown(lines)
    print(text)
    notes = [
        f"- wall time {elapsed:.0f} s; the benchmark's own CPU {own_cpu:.1f} s "
        f"({own_cpu / elapsed * 100:.1f} % of one core: the event reader, the CLIs it times, "
        "its scrapes)",
        "- load average (1, 5, 15 min) at start "
        + ", ".join(f"{value:.2f}" for value in load_before)
        + ", at end "
        + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        f"- kernel event overflows (resynchronised from /proc): {observer.overflows}",
        f"- benchmark is a child subreaper: {subreaper}",
        f"- reconciler install measured: {install_line(args)}",
        *(f"- load average at the start of {load}" for load in figures.loads),
    ]
    for name, errors in figures.errors.items():
        notes += [f"- {name} {group}: {error}" for group, error in errors.items()]
    notes += ["", "Values per round (the inputs of the medians):", "",
              *report.per_round(figures, rows, names)]
    print("\n".join(["", *notes]))
    if args.json:
        args.json.write_text(json.dumps(
            {"settings": dataclasses.asdict(settings), "tools": names,
             "rows": report.as_json(lines), "errors": figures.errors}, indent=2))
    if not args.no_write:
        tool_versions = versions(venv, ours)
        write_results(text, args=args, settings=settings, observer=observer,
                      tool_versions=tool_versions, notes=notes)
        print(f"\nwritten to {RESULTS_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
