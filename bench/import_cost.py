"""Where the daemon's import-time memory and start-up time go: RSS after each major import.

Run: ``.venv/bin/python bench/import_cost.py [--repeat 3]``. Four tables, all but the third
importing as ``reconciler run`` does: ssl, _hashlib, bz2 and lzma withheld, importlib.metadata
deferred and pydantic's plugins off (``reconciler.imports.for_the_daemon``):

1. one fresh interpreter importing asyncio, psutil, pydantic, inotify_simple,
   h11 (the HTTP parser of both listeners), then the reconciler's own modules (whose own
   cost is mostly building the pydantic models of ``reconciler.spec``): RSS, USS and modules
   loaded after each, and what that step added (a step's cost excludes what earlier steps loaded);
   under ``-OO`` where that bytecode is here, as ``reconciler run`` starts again
   (``reconciler.imports.optimised_command``), then the daemon's imports with plain bytecode
   and with ``-OO``: what leaving docstrings out saves;
2. the floor: the same for the declared dependencies alone (asyncio, psutil, pydantic and the
   spec models, with no HTTP server, metrics or process code);
3. what ``reconciler run`` does not load: OpenSSL (``ssl``, ``_hashlib``), shutil's archive
   codecs (``bz2``, ``lzma``) and ``importlib.metadata``;
4. each module alone in a fresh interpreter: what it costs by itself (its share of a shared
   dependency included, so these do not add up).

Memory is read from ``/proc/self/status`` (VmRSS) and ``/proc/self/smaps_rollup`` (private
pages: USS) inside the child, so nothing else is imported to measure it. Tables 2-4 use plain
bytecode. Times are the median
of ``--repeat`` runs (the first run also warms the page cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from reconciler.imports import optimised_command

STEPS = (
    "asyncio",
    "psutil",
    "pydantic",
    "pydantic.main",  # ``pydantic`` alone is lazy: BaseModel's machinery and pydantic_core
    "inotify_simple",
    "h11",
    "reconciler.spec",
    "reconciler.process",
    "reconciler.loop",
    "reconciler.http",
    "reconciler.metrics",
    "reconciler.api",
    "reconciler.daemon",
    "reconciler.cli",
)

FLOOR_STEPS = ("asyncio", "psutil", "pydantic.main", "reconciler.spec")
"""What the declared dependencies cost with no HTTP server, metrics or process code: the
interpreter, asyncio, psutil, pydantic and the spec models. Any daemon built on them holds
at least this much before it does anything."""

UNLOADED_STEPS = ("ssl", "_hashlib", "bz2", "lzma", "importlib.metadata")
"""What ``reconciler run`` does not load: OpenSSL, through ``ssl`` (asyncio imports it) and
``_hashlib`` (hashlib and hmac import it; pydantic imports hmac), the archive codecs ``bz2`` and
``lzma`` (shutil imports them), and ``importlib.metadata``
(pydantic imports it to look for plugins when it builds its first model)."""

PROBE = r"""
import contextlib, json, sys, time, importlib

def memory():
    rss = uss = 0
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            uss += int(line.split()[1])
    return rss / 1024, uss / 1024

names = sys.argv[1:]
as_run = names[:1] == ["--as-run"]
if as_run:  # as ``reconciler run`` imports the daemon
    from reconciler.imports import for_the_daemon
    names = names[1:]
steps = []
rss, uss = memory()
steps.append({"module": "(interpreter)", "rss": rss, "uss": uss, "seconds": 0.0,
              "modules": len(sys.modules)})
with for_the_daemon() if as_run else contextlib.nullcontext():
    for name in names:
        started = time.perf_counter()
        importlib.import_module(name)
        seconds = time.perf_counter() - started
        rss, uss = memory()
        steps.append({"module": name, "rss": rss, "uss": uss, "seconds": seconds,
                      "modules": len(sys.modules)})
print(json.dumps(steps))
"""


def probe(
    modules: tuple[str, ...], *, as_run: bool = True, optimise: bool = False
) -> list[dict[str, float | str]]:
    """The steps of importing ``modules`` in a fresh interpreter; by default as ``reconciler
    run`` imports (``reconciler.imports.for_the_daemon``); ``optimise``: under ``-OO``."""
    flag = ["--as-run"] if as_run else []
    options = ["-OO"] if optimise else []
    result = subprocess.run(
        [sys.executable, *options, "-X", "frozen_modules=on", "-c", PROBE, *flag, *modules],
        capture_output=True, text=True, check=True, timeout=120,
    )
    return json.loads(result.stdout)


def medians(runs: list[list[dict]]) -> list[dict]:
    merged = []
    for index, step in enumerate(runs[0]):
        merged.append({
            **step,
            **{key: statistics.median(run[index][key] for run in runs)
               for key in ("rss", "uss", "seconds")},
        })
    return merged


def chain_table(
    title: str, modules: tuple[str, ...], repeat: int, *, as_run: bool = True,
    optimise: bool = False,
) -> None:
    steps = medians([probe(modules, as_run=as_run, optimise=optimise) for _ in range(repeat)])
    print(f"{title}\n")
    print("| after importing | RSS, MiB | +RSS | USS, MiB | +USS | import, ms | modules |")
    print("|---|---|---|---|---|---|---|")
    previous = None
    for step in steps:
        added_rss = step["rss"] - previous["rss"] if previous else 0.0
        added_uss = step["uss"] - previous["uss"] if previous else 0.0
        print(f"| {step['module']} | {step['rss']:.1f} | {added_rss:+.1f} | {step['uss']:.1f} | "
              f"{added_uss:+.1f} | {step['seconds'] * 1000:.0f} | {step['modules']} |")
        previous = step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    # As ``reconciler run`` runs: under -OO where that bytecode is here (it starts again so).
    optimise = optimised_command() is not None
    bytecode = "under -OO" if optimise else "plain bytecode (no -OO bytecode here)"
    chain_table(f"In the daemon's order, one interpreter, {bytecode} (each step: what it "
                "added):", STEPS, args.repeat, optimise=optimise)
    print()
    if optimise:
        print("What -OO saves (no docstrings), the daemon's imports:\n")
        print("| bytecode | RSS, MiB | USS, MiB | import, ms |")
        print("|---|---|---|---|")
        for label, flag in (("plain", False), ("-OO", True)):
            last = medians([probe(("reconciler.daemon",), optimise=flag)
                            for _ in range(args.repeat)])[-1]
            print(f"| {label} | {last['rss']:.1f} | {last['uss']:.1f} | "
                  f"{last['seconds'] * 1000:.0f} |")
        print()
    chain_table("The floor of the declared dependencies (no HTTP server, metrics or "
                "process code):", FLOOR_STEPS, args.repeat)
    print()
    chain_table("What `reconciler run` does not load (OpenSSL, through the first two; any "
                "other import of asyncio, hashlib or pydantic loads them; shutil loads the "
                "next two):", UNLOADED_STEPS, args.repeat, as_run=False)

    print("\nEach alone, in a fresh interpreter:\n")
    print("| module | +RSS, MiB | +USS, MiB | import, ms | modules added |")
    print("|---|---|---|---|---|")
    for module in STEPS:
        alone = medians([probe((module,)) for _ in range(args.repeat)])
        base, after = alone
        print(f"| {module} | {after['rss'] - base['rss']:+.1f} | "
              f"{after['uss'] - base['uss']:+.1f} | {after['seconds'] * 1000:.0f} | "
              f"{after['modules'] - base['modules']} |")


if __name__ == "__main__":
    main()
