"""What one more collector costs the daemon in memory, and where it goes.

Run: ``.venv/bin/python bench/collector_memory.py [--collectors 1000] [--top 25] [--scrapes 1]``.

Runs ``reconciler run`` (in a child interpreter, as ``reconciler run`` imports) twice, with 1
collector and with ``--collectors`` collectors (``/bin/sleep`` specs in a temporary
directory), each size twice: plain, for RSS and pymalloc's own figures, and with
``tracemalloc`` on from the start (it holds memory of its own, and hides pymalloc's). Once
every collector runs (its ``sleep`` is a child of the daemon in ``/proc``) and two seconds have
passed, and after ``--scrapes`` requests of ``/metrics`` and two more seconds, the child reads
its own figures and
stops with SIGTERM, as an operator would stop it (the daemon stops its collectors). Prints,
per added collector:

- RSS (``VmRSS``) and the Python heap: bytes ``tracemalloc`` traces now, and at its peak
  since the start (the transient objects of reading, parsing and starting every spec, and of
  the scrapes);
- pymalloc's arenas (``sys._debugmallocstats``): bytes in use, and free blocks and pools that
  arenas still hold, which is what the start's peak leaves behind in RSS;
- the source lines whose objects grew most between the two runs, in bytes per collector.

Nothing the measuring does is in the figures: the child learns that the collectors run from
``/proc`` (a ``status`` body decoded in the daemon's process was ~4.5 KiB per collector of
them, before 2026-12-03) and scrapes through a bare socket. With ``--scrapes 0`` (the default)
the exposition's per-collector cache, made at the first scrape, is not in them; with
``--scrapes 1`` it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

SPEC = 'type = "sleep"\nbinary_path = "/bin/sleep"\nargs = ["3600"]\n'
START_TIMEOUT_SECONDS = 120.0
SETTLE_SECONDS = 2.0
MALLOC_FIGURES = {
    "# bytes in allocated blocks": "pymalloc_used",
    "# bytes in available blocks": "pymalloc_free_blocks",
    "unused pools": "pymalloc_free_pools",
    "# arenas allocated current": "arenas",
}

CHILD = r"""
import os, signal, socket, sys, threading, time, tracemalloc, json
count, work, out, port, traced, timeout, settle, scrapes = sys.argv[1:9]
count, traced, timeout, settle = int(count), traced == "traced", float(timeout), float(settle)
port, scrapes = int(port), int(scrapes)
if traced:
    tracemalloc.start(1)
from reconciler.cli import main
sock = f"{work}/api.sock"

def running() -> bool:
    # From /proc, not by asking the daemon: a status body decoded in this process
    # would be counted as the daemon's (~4.5 KiB per collector, and what it leaves free).
    me, found = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)
            except OSError:
                continue
            found += fields[0].endswith("(sleep") and int(fields[1].split()[1]) == me
    return found == count

def scrape() -> None:
    # A bare socket: urllib would load http.client and email into the daemon's process.
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while connection.recv(65536):
            pass

def measure() -> None:
    deadline = time.monotonic() + timeout
    while not running():
        if time.monotonic() > deadline:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.5)
    time.sleep(settle)
    for _ in range(scrapes):
        scrape()
    if scrapes:
        time.sleep(settle)
    if traced:
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        snapshot.dump(out + ".snapshot")
        with open(out, "w") as figures:
            json.dump({"traced": current, "traced_peak": peak}, figures)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    with open(out + ".malloc", "w") as stats:  # pymalloc's figures: only with tracemalloc off
        saved = os.dup(2)
        os.dup2(stats.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
    with open(out, "w") as figures:
        json.dump({"rss": rss}, figures)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=measure, daemon=True).start()
sys.exit(main(["run", "--specs", f"{work}/specs", "--state-dir", f"{work}/state",
               "--socket", sock, "--metrics-address", f"127.0.0.1:{port}",
               "--log-level", "WARNING"]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_child(count: int, work: Path, *, traced: bool, scrapes: int) -> Path:
    """One ``reconciler run`` with ``count`` collectors; the path of the figures it wrote."""
    specs = work / "specs"
    specs.mkdir(parents=True)
    for n in range(count):
        (specs / f"c{n:04d}.toml").write_text(SPEC)
    out = work / "figures.json"
    mode = "traced" if traced else "plain"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(count), str(work), str(out), str(free_port()), mode,
         str(START_TIMEOUT_SECONDS), str(SETTLE_SECONDS), str(scrapes)]
    )  # fmt: skip
    try:
        child.wait(timeout=START_TIMEOUT_SECONDS + 60)
    finally:
        if child.poll() is None:  # SIGTERM first: the daemon stops its collectors
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    if not out.exists():
        raise SystemExit(f"the daemon with {count} collectors did not get them all running")
    return out


def run_daemon(
    count: int, work: Path, *, scrapes: int
) -> tuple[dict[str, float], tracemalloc.Snapshot]:
    """RSS and pymalloc's figures from a plain run; the Python heap from a traced one."""
    plain = run_child(count, work / "plain", traced=False, scrapes=scrapes)
    figures: dict[str, float] = json.loads(plain.read_text())
    for line in Path(f"{plain}.malloc").read_text().splitlines():
        for prefix, key in MALLOC_FIGURES.items():
            if prefix in line:
                figures[key] = float(line.rsplit("=", 1)[1].replace(",", ""))
    traced = run_child(count, work / "traced", traced=True, scrapes=scrapes)
    figures.update(json.loads(traced.read_text()))
    return figures, tracemalloc.Snapshot.load(f"{traced}.snapshot")


def short(filename: str) -> str:
    """A file name without the venv's or the interpreter's directories."""
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1]
    if "/reconciler/" in filename:
        return "reconciler/" + filename.rsplit("/reconciler/", 1)[1]
    found = re.search(r"/lib/python3\.\d+/(.+)$", filename)
    return found.group(1) if found else filename


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--collectors", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--scrapes", type=int, default=0,
                        help="GET /metrics this many times before measuring (default 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="collector-memory-") as temporary:
        one, one_snapshot = run_daemon(1, Path(temporary) / "one", scrapes=args.scrapes)
        many, many_snapshot = run_daemon(
            args.collectors, Path(temporary) / "many", scrapes=args.scrapes
        )
    added = args.collectors - 1

    def per(key: str) -> str:
        return f"{(many.get(key, 0) - one.get(key, 0)) / added / 1024:.1f}"

    scraped = f", after {args.scrapes} scrape(s) of /metrics" if args.scrapes else ", no scrape"
    print(f"reconciler run, 1 and {args.collectors} `/bin/sleep` collectors{scraped}\n")
    print("| figure | 1 collector, MiB | "
          f"{args.collectors} collectors, MiB | per added collector, KiB |")
    print("|---|---|---|---|")
    rows = (
        ("RSS", "rss"),
        ("Python heap traced now", "traced"),
        ("Python heap traced, peak since the start", "traced_peak"),
        ("pymalloc blocks in use", "pymalloc_used"),
        ("pymalloc free blocks in used pools", "pymalloc_free_blocks"),
        ("pymalloc free pools in arenas", "pymalloc_free_pools"),
    )
    for label, key in rows:
        print(f"| {label} | {one.get(key, 0) / 2**20:.1f} | {many.get(key, 0) / 2**20:.1f} "
              f"| {per(key)} |")
    grown = many_snapshot.compare_to(one_snapshot, "lineno")
    print(f"\nThe lines whose objects grew most, per added collector (of "
          f"{sum(d.size_diff for d in grown) / added:.0f} bytes traced):\n")
    print("| bytes | objects | line |")
    print("|---|---|---|")
    for diff in grown[: args.top]:
        frame = diff.traceback[0]
        print(f"| {diff.size_diff / added:.0f} | {diff.count_diff / added:.1f} "
              f"| `{short(frame.filename)}:{frame.lineno}` |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
