"""``after`` across spec files: the problems of the graph, and the order of stops. Pure.

A spec file names the collectors it starts after; the whole directory must
make a graph without cycles whose every name is a spec file there. What is
wrong is reported per file (``b.toml: after: cycle b -> a -> b``), as every
other spec problem: that file keeps its last-known-good spec.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from reconciler.spec.load import SPEC_SUFFIX
from reconciler.spec.messages import show


def after_problems(after: Mapping[str, Sequence[str]], *, known: Collection[str]) -> dict[str, str]:
    """Collector id -> the problem of its ``after``: unknown ids, or a cycle it is on.

    ``after`` maps each valid spec's id to its ``after`` list; ``known`` is
    every id with a file in the directory (valid or not: a dependency whose
    file is invalid still exists, with its last-known-good spec).
    """
    problems: dict[str, str] = {}
    for cid, names in sorted(after.items()):
        missing = [name for name in names if name not in known]
        if missing:
            problems[cid] = f"{cid}{SPEC_SUFFIX}: after: no spec file for " + ", ".join(
                show(name) for name in missing
            )
    for cycle in _cycles(after):
        path = " -> ".join((*cycle, cycle[0]))
        for cid in cycle:
            problems.setdefault(cid, f"{cid}{SPEC_SUFFIX}: after: cycle {path}")
    return problems


def _cycles(after: Mapping[str, Sequence[str]]) -> list[tuple[str, ...]]:
    """Every cycle's members once, each starting at its smallest id (iterative DFS)."""
    colour: dict[str, int] = {}  # 1: on the current path, 2: done
    found: dict[frozenset[str], tuple[str, ...]] = {}
    for root in sorted(after):
        if root in colour:
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                colour[node] = 1
                path.append(node)
            children = [c for c in after.get(node, ()) if c in after]
            if index < len(children):
                stack.append((node, index + 1))
                child = children[index]
                if colour.get(child) == 1:
                    cycle = tuple(path[path.index(child) :])
                    start = cycle.index(min(cycle))
                    found.setdefault(frozenset(cycle), cycle[start:] + cycle[:start])
                elif child not in colour:
                    stack.append((child, 0))
                continue
            colour[node] = 2
            path.pop()
    return sorted(found.values())


def dependents(after: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Collector id -> the ids that start after it (and so are stopped before it)."""
    result: dict[str, list[str]] = {}
    for cid, names in sorted(after.items()):
        for name in names:
            result.setdefault(name, []).append(cid)
    return result
