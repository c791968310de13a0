"""The reconcile loop end to end: real spec files in, real processes out.

One test per row of DESIGN §2's "what a change does" table, invalid input on
running collectors, editor and ConfigMap write patterns, and bursts.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler import CollectorState, DesiredState
from reconciler.loop import Reconciler
from tests.support import (
    MARK_ENV,
    SESSION_MARK,
    alive,
    eventually,
    kernel_state,
    new_reconciler,
    reconciling,
)

SPEC = """\
type = "sleeper"
binary_path = "/bin/sleep"
args = ["{arg}"]
log = "null"
graceful_timeout_seconds = 2
env = {{ {mark} = "{session}"{extra_env} }}
{extra}
"""


def spec_text(arg: str = "300", *, extra: str = "", extra_env: str = "") -> str:
    return SPEC.format(
        arg=arg, extra=extra, extra_env=extra_env, mark=MARK_ENV, session=SESSION_MARK
    )


def write(path: Path, text: str) -> None:
    """An in-place save, as `echo > file` does."""
    path.write_text(text)


def write_atomically(path: Path, text: str) -> None:
    """Write-temp-then-rename, as vim, Ansible and git do."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.rename(temp, path)


class Harness:
    def __init__(self, specs: Path, reconciler: Reconciler) -> None:
        self.specs = specs
        self.reconciler = reconciler
        self.manager = reconciler.manager

    def pid(self, collector_id: str) -> int | None:
        if collector_id not in self.manager.collector_ids():
            return None
        return self.manager.status(collector_id).pid

    def state(self, collector_id: str) -> CollectorState | None:
        if collector_id not in self.manager.collector_ids():
            return None
        return self.manager.status(collector_id).state

    async def running(self, collector_id: str, *, other_than: int | None = None) -> int:
        def check() -> int | None:
            pid = self.pid(collector_id)
            ok = self.state(collector_id) == CollectorState.RUNNING and pid not in (
                None,
                other_than,
            )
            return pid if ok else None

        result = await eventually(check, message=f"{collector_id} running")
        assert isinstance(result, int)
        return result

    async def settled(self, *expected: str) -> None:
        """Wait until the ``expected`` collectors are known, every collector has
        converged (or failed, or has a spec error) and nothing is in flight."""

        def done() -> bool:
            views = self.reconciler.views()
            return (
                set(expected) <= {v.collector_id for v in views}
                and all(
                    v.converged or v.spec_error or v.state == CollectorState.FAILED for v in views
                )
                and not self.reconciler.controller.busy
            )

        await eventually(done, message="converged")

    def restarts(self, collector_id: str) -> int:
        return self.manager.status(collector_id).restart_count


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    reconciler = new_reconciler(tmp_path)
    async with reconciling(reconciler):
        yield Harness(reconciler.source.specs_dir, reconciler)


async def test_new_file_starts_a_collector(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec_text())
    pid = await harness.running("a")
    assert os.readlink(f"/proc/{pid}/exe").endswith("sleep")
    # Converged once ready: the pass after its start records that.
    await eventually(lambda: harness.reconciler.view("a").converged, message="converged")
    assert harness.reconciler.view("a").ready


@pytest.mark.parametrize(
    ("change", "key"),
    [
        pytest.param({"arg": "301"}, "args", id="args"),
        pytest.param({"extra_env": ', FOO = "bar"'}, "env", id="env"),
        pytest.param({"extra": 'working_dir = "/tmp"'}, "working_dir", id="working_dir"),
        pytest.param(
            {"extra": "[resource_limits]\nopen_files = 512"},
            "resource_limits",
            id="resource_limits",
        ),
    ],
)
async def test_identity_change_restarts_gracefully(harness: Harness, change, key) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text())
    old = await harness.running("a")
    write(path, spec_text(**change))
    await harness.running("a", other_than=old)
    assert not alive(old)
    assert harness.restarts("a") == 1
    reasons = [e.message for e in harness.reconciler.events if e.kind == "restart"]
    assert any(key in reason for reason in reasons), reasons


async def test_binary_change_restarts(harness: Harness, tmp_path: Path) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text())
    old = await harness.running("a")
    write(path, spec_text().replace('"/bin/sleep"', '"/usr/bin/sleep"'))
    new = await harness.running("a", other_than=old)
    assert os.readlink(f"/proc/{new}/exe").endswith("sleep")


async def test_relative_binary_path_is_relative_to_the_spec_dir(harness: Harness) -> None:
    (harness.specs / "bin").mkdir()
    os.symlink("/bin/sleep", harness.specs / "bin" / "napper")
    write(harness.specs / "a.toml", spec_text().replace('"/bin/sleep"', '"bin/napper"'))
    await harness.running("a")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param("paused", CollectorState.PAUSED, id="paused"),
        pytest.param("stopped", CollectorState.STOPPED, id="stopped"),
    ],
)
async def test_state_change_needs_no_restart(harness: Harness, state, expected) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text())
    pid = await harness.running("a")
    write(path, spec_text(extra=f'state = "{state}"'))
    await eventually(lambda: harness.state("a") == expected)
    if expected == CollectorState.PAUSED:
        assert kernel_state(pid) == "T" and harness.pid("a") == pid
        write(path, spec_text(extra='state = "running"'))
        await eventually(lambda: harness.state("a") == CollectorState.RUNNING)
        assert harness.pid("a") == pid, "resume must not restart"
    else:
        assert not alive(pid)
    assert harness.restarts("a") == 0


async def test_policy_change_is_applied_in_place(harness: Harness) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text())
    pid = await harness.running("a")
    write(
        path,
        spec_text(
            extra="max_restarts = 9\ngraceful_timeout_seconds = 1".replace(
                "graceful_timeout_seconds = 1", "force_timeout_seconds = 1"
            )
        ),
    )
    await eventually(lambda: harness.manager.config_of("a").max_restarts == 9)
    assert harness.manager.config_of("a").force_timeout_seconds == 1
    assert harness.pid("a") == pid and harness.restarts("a") == 0


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        pytest.param('type = "sleeper"\nargs = [', "invalid TOML", id="invalid-toml"),
        pytest.param(spec_text() + "argz = []\n", "argz", id="unknown-key"),
        pytest.param(spec_text() + 'max_restarts = "lots"\n', "max_restarts", id="wrong-type"),
        pytest.param("", "type", id="empty-file"),
    ],
)
async def test_invalid_edit_keeps_the_running_collector(harness: Harness, bad, problem) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text())
    pid = await harness.running("a")
    write(path, bad)
    await eventually(lambda: harness.reconciler.view("a").spec_error)
    error = harness.reconciler.view("a").spec_error or ""
    assert "a.toml" in error and problem in error
    assert harness.pid("a") == pid and alive(pid)
    write(path, spec_text())
    await eventually(lambda: harness.reconciler.view("a").spec_error is None)
    assert harness.pid("a") == pid, "fixing the file back must not restart"


async def test_invalid_first_version_starts_nothing(harness: Harness) -> None:
    write(harness.specs / "good.toml", spec_text())
    write(harness.specs / "bad.toml", spec_text() + "argz = 1\n")
    await harness.running("good")
    await eventually(lambda: harness.reconciler.view("bad").spec_error)
    assert "bad" not in harness.manager.collector_ids()
    write(harness.specs / "bad.toml", spec_text())
    await harness.running("bad")


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
async def test_delete_stops_and_forgets(harness: Harness, paused: bool) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text(extra='state = "paused"' if paused else ""))
    if paused:
        await eventually(lambda: harness.state("a") == CollectorState.PAUSED)
    else:
        await harness.running("a")
    pid = harness.pid("a")
    assert pid is not None
    path.unlink()
    await eventually(lambda: "a" not in harness.manager.collector_ids())
    assert not alive(pid)
    assert [v.collector_id for v in harness.reconciler.views()] == []


async def test_write_temp_then_rename_restarts_once(harness: Harness) -> None:
    path = harness.specs / "a.toml"
    write_atomically(path, spec_text())
    old = await harness.running("a")
    write_atomically(path, spec_text("301"))
    await harness.running("a", other_than=old)
    await harness.settled()
    assert harness.restarts("a") == 1
    assert harness.manager.collector_ids() == ["a"]


async def test_editor_leftovers_are_ignored(harness: Harness) -> None:
    for name in (".a.toml.swp", "a.toml~", "#a.toml#", ".hidden.toml", "notes.txt"):
        write(harness.specs / name, spec_text())
    write(harness.specs / "real.toml", spec_text())
    await harness.running("real")
    await harness.settled()
    assert harness.manager.collector_ids() == ["real"]


async def test_configmap_symlink_swap_is_applied_exactly_once(harness: Harness) -> None:
    specs = harness.specs

    def publish(version: str, files: dict[str, str]) -> None:
        data = specs / f"..2026_11_26_{version}"
        data.mkdir()
        for name, text in files.items():
            (data / name).write_text(text)
        os.symlink(data.name, specs / "..data_tmp")
        os.rename(specs / "..data_tmp", specs / "..data")
        for name in files:
            if not (specs / name).is_symlink():
                os.symlink(f"..data/{name}", specs / name)

    publish("v1", {"a.toml": spec_text("300"), "b.toml": spec_text("300")})
    old_a, old_b = await harness.running("a"), await harness.running("b")
    publish("v2", {"a.toml": spec_text("301"), "b.toml": spec_text("301")})
    await harness.running("a", other_than=old_a)
    await harness.running("b", other_than=old_b)
    await harness.settled()
    assert harness.restarts("a") == 1 and harness.restarts("b") == 1
    starts = [e for e in harness.reconciler.events if e.kind in ("start", "restart")]
    assert len(starts) == 4, [(e.collector_id, e.kind, e.message) for e in starts]


async def test_burst_of_rewrites_ends_with_one_process_on_the_final_spec(
    harness: Harness,
) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text("300"))
    first = await harness.running("a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(30):
        write_atomically(path, spec_text(str(1000 + i)))
        await asyncio.sleep(max(0.0, started + (i + 1) / 30 - loop.time()))

    def runs_final_spec() -> bool:
        pid = harness.pid("a")
        try:
            # The pid may be replaced (and gone) between the lookup and the read.
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        # An exiting process (a zombie) reads as an empty cmdline: not the final spec.
        return pid is not None and len(argv) > 1 and argv[1] == b"1029"

    await eventually(runs_final_spec, timeout=15)
    await harness.settled()
    tree = harness.manager.tree_pids("a")
    assert len(tree) == 1 and not alive(first)
    restarts = harness.restarts("a")
    assert 1 <= restarts <= 10, f"{restarts} restarts for a burst of 30 edits"


async def test_missing_binary_fails_only_that_collector(harness: Harness) -> None:
    write(harness.specs / "ok.toml", spec_text())
    write(harness.specs / "broken.toml", spec_text().replace("/bin/sleep", "/nonexistent/bin"))
    await harness.running("ok")
    await eventually(lambda: harness.state("broken") == CollectorState.FAILED)
    view = harness.reconciler.view("broken")
    assert view.status is not None and "/nonexistent/bin" in (view.status.last_error or "")
    # It stays failed, with no retry storm, while later passes run for others.
    write(harness.specs / "other.toml", spec_text())
    await harness.running("other")
    await harness.settled()
    assert harness.state("broken") == CollectorState.FAILED
    attempts = [e for e in harness.reconciler.events if e.collector_id == "broken"]
    assert [e.kind for e in attempts].count("start") == 1, attempts
    write(harness.specs / "broken.toml", spec_text())
    await harness.running("broken")


async def test_spec_state_stopped_from_the_start(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec_text(extra='state = "stopped"'))
    await harness.settled("a")
    view = harness.reconciler.view("a")
    assert view.desired == DesiredState.STOPPED and view.state == CollectorState.STOPPED
    write(harness.specs / "a.toml", spec_text())
    await harness.running("a")


async def test_operator_pause_holds_until_the_spec_changes(harness: Harness) -> None:
    path = harness.specs / "a.toml"
    write(path, spec_text())
    pid = await harness.running("a")
    await harness.reconciler.operator_override("a", DesiredState.PAUSED)
    await eventually(lambda: harness.state("a") == CollectorState.PAUSED)
    assert harness.reconciler.view("a").override is not None
    write(path, spec_text("301"))
    await harness.running("a", other_than=pid)
    assert harness.reconciler.view("a").override is None


async def test_operator_restart(harness: Harness) -> None:
    write(harness.specs / "a.toml", spec_text())
    pid = await harness.running("a")
    new = await harness.reconciler.operator_restart("a")
    assert new != pid and harness.restarts("a") == 1
    await harness.settled()
    assert harness.pid("a") == new


async def test_slow_stop_does_not_delay_another_collector(harness: Harness) -> None:
    stubborn = (
        spec_text()
        .replace(
            'binary_path = "/bin/sleep"\nargs = ["300"]',
            'binary_path = "/bin/sh"\nargs = ["-c", "trap \'\' TERM; sleep 300 & wait"]',
        )
        .replace("graceful_timeout_seconds = 2", "graceful_timeout_seconds = 5")
    )
    write(harness.specs / "slow.toml", stubborn)
    await harness.running("slow")
    await eventually(lambda: len(harness.manager.tree_pids("slow")) == 2)
    (harness.specs / "slow.toml").unlink()
    await eventually(lambda: harness.state("slow") == CollectorState.STOPPING)
    loop = asyncio.get_running_loop()
    started = loop.time()
    write(harness.specs / "fast.toml", spec_text())
    await harness.running("fast")
    assert loop.time() - started < 2.0, "a slow graceful stop delayed another collector's start"
    await harness.manager.stop_collector("slow", graceful=False)  # no need to wait out 5 s
    await eventually(lambda: "slow" not in harness.manager.collector_ids())


PORT_HOLDER = """\
import signal, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as exc:
    sys.exit(f"port {sys.argv[1]}: {exc}")
s.listen()
def bye(*_):
    time.sleep(0.3)  # a graceful stop takes a moment; the port is held until the end
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
while True:
    signal.pause()
"""


def port_holder_spec(port: int, name: str) -> str:
    return (
        f'type = "{name}"\n'
        f'binary_path = "{sys.executable}"\n'
        f'args = ["-c", {json.dumps(PORT_HOLDER)}, "{port}"]\n'
        'log = "null"\n'
        "graceful_timeout_seconds = 5\n"
        "max_restarts = 0\n"
        f'env = {{ {MARK_ENV} = "{SESSION_MARK}" }}\n'
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_replacing_a_spec_by_one_on_the_same_port_hands_over_on_the_first_try(
    harness: Harness,
) -> None:
    """Stop before start, as carried out: b starts only once a has let go of the port."""
    port = free_port()
    write(harness.specs / "a.toml", port_holder_spec(port, "holder"))
    old = await harness.running("a")
    # One rename: a single snapshot in which a.toml is gone and b.toml is new.
    os.rename(harness.specs / "a.toml", harness.specs / "b.toml")
    new = await harness.running("b")
    await harness.settled("b")
    assert not alive(old) and new != old
    status = harness.manager.status("b")
    assert status.restart_count == 0 and status.last_exit_code is None, status
    assert harness.manager.collector_ids() == ["b"]
    kinds = [e.kind for e in harness.reconciler.events if e.collector_id == "b"]
    assert "exited" not in kinds and "failed" not in kinds, kinds
