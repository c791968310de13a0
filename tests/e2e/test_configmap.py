"""A ConfigMap volume handed to ``reconciler run`` as the kubelet hands it over.

The kubelet's AtomicWriter (``kubelet_write``, shared with the spec source's
integration tests) projects a ConfigMap into a timestamped directory
(``..2026_12_01_10_00_00.123``), points a ``..data_tmp`` symlink at it, renames
that over ``..data``, adds a ``<key> -> ..data/<key>`` symlink for each new key,
removes the links of keys that are gone, then the old directory. What is
already tested elsewhere: that the spec source sees such a swap as exactly one
snapshot (tests/integration/test_source.py, incl. a key added and one removed)
and that the loop restarts changed collectors once (tests/integration/
test_loop.py, contents only). What these add: the whole daemon, as a pod runs
it, on one swap that removes a key, adds one, changes one and leaves one
alone; and the manager config read through the same links on SIGHUP.

As root, the spec volume is laid out as in a pod: the kubelet writes into a
world-writable directory (an emptyDir), and the daemon reads a read-only bind
mount of it (the container's ``readOnly: true`` volumeMount), which its
StrictModes check must accept. Without root (or where mounting is refused) the
daemon reads the kubelet's directory itself, at mode 0755.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_adoption import _cli
from tests.e2e.test_run import Daemon, spec
from tests.integration.test_source import kubelet_write
from tests.support import alive, wait_for


def _collectors(daemon: Daemon) -> dict[str, dict[str, Any]]:
    result = _cli(daemon, "status", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["id"]: entry for entry in json.loads(result.stdout)["collectors"]}


def _settled(daemon: Daemon, expected: set[str]) -> dict[str, dict[str, Any]] | None:
    """The status once exactly ``expected`` run their current specs, else ``None``."""
    collectors = _collectors(daemon)
    if set(collectors) != expected:
        return None
    if not all(
        c["converged"] and c["state"] == "running" and c["pid"] for c in collectors.values()
    ):
        return None
    return collectors


def _mount_read_only(source: Path, target: Path) -> bool:
    """Bind-mount ``source`` read-only at ``target``; ``False`` where that is not allowed."""
    if os.geteuid() != 0:
        return False
    bind = subprocess.run(
        ["mount", "--bind", str(source), str(target)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if bind.returncode != 0:
        return False
    remount = subprocess.run(
        ["mount", "-o", "remount,bind,ro", str(target)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if remount.returncode != 0:
        _unmount(target)
        return False
    return True


def _unmount(target: Path) -> None:
    # Lazy: detached even if a process still has a file open below it.
    subprocess.run(["umount", "--lazy", str(target)], capture_output=True, timeout=30, check=True)


@pytest.fixture
def spec_volume(tmp_path: Path) -> Iterator[Path]:
    """The directory the kubelet writes; the daemon reads ``tmp_path / "specs"``."""
    specs = tmp_path / "specs"
    specs.mkdir(mode=0o755)
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)  # as an emptyDir is
    if _mount_read_only(volume, specs):
        try:
            yield volume
        finally:
            _unmount(specs)
    else:
        specs.rmdir()
        volume.chmod(0o755)
        volume.rename(specs)
        yield specs


@contextlib.contextmanager
def _running(daemon: Daemon) -> Iterator[Daemon]:
    try:
        yield daemon
    finally:
        daemon.end()


def _log_problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"\b(WARNING|ERROR)\b", line)]


def test_one_swap_removes_adds_changes_and_keeps(tmp_path: Path, spec_volume: Path) -> None:
    mark = f"configmap-{os.getpid()}-{tmp_path.name}"
    kubelet_write(
        spec_volume,
        {"keep.toml": spec(mark), "change.toml": spec(mark), "remove.toml": spec(mark)},
    )
    with _running(Daemon(tmp_path)) as daemon:
        daemon.mark = mark
        wait_for(lambda: "watching" in daemon.stderr, message="started")
        before = wait_for(
            lambda: _settled(daemon, {"keep", "change", "remove"}),
            message="the first projection runs",
        )
        log_before = len(daemon.stderr)

        kubelet_write(
            spec_volume,
            {"keep.toml": spec(mark), "change.toml": spec(mark, "301"), "add.toml": spec(mark)},
        )

        after = wait_for(
            lambda: _settled(daemon, {"keep", "change", "add"}),
            timeout=15,
            message="the second projection runs",
        )
        # The kubelet's own work is done as it does it: only the new keys' links remain.
        entries = sorted(os.listdir(daemon.specs))
        assert [e for e in entries if not e.startswith("..")] == [
            f"{c}.toml" for c in sorted(after)
        ]
        assert os.readlink(daemon.specs / "change.toml") == "..data/change.toml"

        swap_log = daemon.stderr[log_before:]
        assert after["keep"]["pid"] == before["keep"]["pid"], "an unchanged key is left alone"
        assert after["keep"]["restart_count"] == before["keep"]["restart_count"]
        assert after["change"]["pid"] != before["change"]["pid"]
        assert after["change"]["spec"]["args"] == ["301"]
        assert swap_log.count("change: restart (spec changed: args)") == 1, swap_log
        assert swap_log.count("remove: stop (spec file removed)") == 1, swap_log
        assert not alive(before["remove"]["pid"])
        assert swap_log.count("add: start (new spec)") == 1, swap_log
        assert "keep:" not in swap_log
        # No half-swapped picture was ever taken for a broken or invalid file.
        assert _log_problems(swap_log) == []
        assert all(c["spec_error"] is None for c in after.values())
        assert sorted(daemon.collectors()) == sorted(c["pid"] for c in after.values())

        assert daemon.stop() == 0, daemon.stderr
        assert daemon.collectors() == []


def test_config_is_read_through_the_swapped_links_on_reload(tmp_path: Path) -> None:
    """The reconciler-config ConfigMap: an edit reaches the pod, applied by a reload
    (``reconciler reload``, as configmap-config.yaml says, or SIGHUP)."""
    volume = tmp_path / "config"
    volume.mkdir(mode=0o755)
    kubelet_write(volume, {"reconciler.toml": "[process_manager]\nenable_auto_restart = true\n"})
    config = volume / "reconciler.toml"
    with _running(Daemon(tmp_path, "--config", str(config))) as daemon:
        wait_for(lambda: "watching" in daemon.stderr, message="started")

        kubelet_write(volume, {"reconciler.toml": "[process_manager]\nauto_restrat = true\n"})
        refused = _cli(daemon, "reload")  # `kubectl exec POD -- reconciler reload`
        assert refused.returncode == 1, refused
        assert "auto_restrat: unknown key" in refused.stdout + refused.stderr

        kubelet_write(volume, {"reconciler.toml": "[process_manager]\nenable_auto_restrt = 1\n"})
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reload refused" in daemon.stderr, message="refused")
        assert "enable_auto_restrt: unknown key" in daemon.stderr

        kubelet_write(
            volume, {"reconciler.toml": "[process_manager]\nenable_auto_restart = false\n"}
        )
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in daemon.stderr, message="reloaded")
        assert daemon.stop() == 0, daemon.stderr
