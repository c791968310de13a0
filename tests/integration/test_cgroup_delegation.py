"""A daemon that owns its cgroup moves into a leaf so limits can be enforced by cgroup.

Under systemd (``Delegate=yes``) the reconciler starts inside its service's
cgroup, and cgroup v2 only lets a cgroup with no process of its own hand
controllers to children. ``hugetlb``, the controller this machine's cgroup v2
offers, stands in for memory, pids and cpu: the mechanism is the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.process.cgroup import LEAF, _unified_mount

MOUNT = _unified_mount()
CHILD = """
import json, sys
from reconciler.process.cgroup import CgroupTree
tree = CgroupTree.detect("tree", controllers=("hugetlb",), move_self_to_leaf=sys.argv[1] == "1")
print(json.dumps({
    "controllers": sorted(tree.controllers) if tree else None,
    "own": next(line for line in open("/proc/self/cgroup") if line.startswith("0::")).strip(),
}))
"""


def _offers_hugetlb() -> bool:
    if MOUNT is None or os.geteuid() != 0:
        return False
    return "hugetlb" in (MOUNT / "cgroup.controllers").read_text().split()


pytestmark = pytest.mark.skipif(
    not _offers_hugetlb(), reason="needs root and a cgroup v2 offering hugetlb"
)


@pytest.fixture
def service_cgroup() -> Iterator[Path]:
    """A non-root cgroup offering hugetlb, as systemd gives a delegated service."""
    assert MOUNT is not None
    root_control = MOUNT / "cgroup.subtree_control"
    enabled_by_us = "hugetlb" not in root_control.read_text().split()
    if enabled_by_us:
        root_control.write_text("+hugetlb")
    base = MOUNT / f"reconciler-test-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    try:
        yield base
    finally:
        for leaf in (base / "tree", base / LEAF, base):
            with contextlib.suppress(FileNotFoundError):
                leaf.rmdir()
        if enabled_by_us:
            root_control.write_text("-hugetlb")


def _detect_inside(cgroup: Path, *, move_self: bool) -> dict[str, object]:
    procs = os.open(cgroup / "cgroup.procs", os.O_WRONLY)
    try:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, "1" if move_self else "0"],
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=lambda: os.write(procs, b"0"),
        )
    finally:
        os.close(procs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_delegated_daemon_enables_controllers_for_its_collectors(service_cgroup: Path) -> None:
    seen = _detect_inside(service_cgroup, move_self=True)
    assert seen["controllers"] == ["hugetlb"]
    assert seen["own"] == f"0::/{service_cgroup.name}/{LEAF}"
    assert "hugetlb" in (service_cgroup / "cgroup.subtree_control").read_text().split()
    assert "hugetlb" in (service_cgroup / "tree" / "cgroup.subtree_control").read_text().split()


def test_without_delegation_the_controllers_stay_out_of_reach(service_cgroup: Path) -> None:
    seen = _detect_inside(service_cgroup, move_self=False)
    assert seen["controllers"] == []
    assert seen["own"] == f"0::/{service_cgroup.name}"
