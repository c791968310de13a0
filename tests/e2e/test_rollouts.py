"""Rollouts with real processes under a real ``reconciler run`` (DESIGN §4 readiness and rollouts).

A bad args change is rolled back and the last ready spec keeps running, as an
operator sees it (status, events, wait, the metric); ``after`` orders real
starts behind a readiness probe, and stops in reverse; ``max_unavailable = 1``
over ten changed specs never has more than one collector down, checked from
``/proc`` while the waves run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.process.spawn import JOIN_CGROUP
from tests.e2e.test_run import Daemon
from tests.support import MARK_ENV, RECONCILER, cmdline, wait_for

COLLECTOR = '''
import os, signal, socket, sys, time
mode, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def note(what):
    with open(log, "a") as f:
        f.write(f"{os.environ['ID']} {what} {time.time():.6f}\\n")
def term(*_):
    note("term")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
note("start")
if mode == "crash":
    sys.exit(3)
if mode.startswith("slow"):
    time.sleep(1.0)
if mode != "bad" and port:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    note("listening")
while True:
    signal.pause()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rollouts(Daemon):
    def __init__(self, tmp_path: Path, config: str) -> None:
        self.script = tmp_path / "collector.py"
        self.script.write_text(COLLECTOR)
        self.notes = tmp_path / "notes.log"
        self.notes.touch()
        config_path = tmp_path / "reconciler.toml"
        config_path.write_text(
            "[process_manager]\ndefault_graceful_timeout_seconds = 5\n"
            "restart_backoff_initial_seconds = 0.2\n" + config
        )
        super().__init__(tmp_path, "--config", str(config_path))
        self.socket = str(self.state / "api.sock")

    def spec(self, cid: str, mode: str, port: int = 0, extra: str = "", **keys: object) -> str:
        top = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
        args = json.dumps([str(self.script), mode, str(port), str(self.notes)])
        return (
            f'type = "roller"\n{top}binary_path = {json.dumps(sys.executable)}\nargs = {args}\n'
            f'env = {{ {MARK_ENV} = "{self.mark}", ID = "{cid}" }}\n{extra}'
        )

    def write(self, cid: str, text: str) -> None:
        path = self.specs / f"{cid}.toml"
        temporary = path.with_name(f".{cid}.toml.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RECONCILER, *args, "--socket", self.socket],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def view(self, cid: str) -> dict[str, object]:
        shown = self.cli("status", "--json")
        assert shown.returncode == 0, shown.stderr
        data = json.loads(shown.stdout)
        collectors = data["collectors"] if isinstance(data, dict) else data
        return next(c for c in collectors if c["id"] == cid)

    def metrics(self) -> str:
        found = re.search(r"metrics on http://127.0.0.1:(\d+)", self.stderr)
        assert found, self.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def noted(self, what: str) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        for line in self.notes.read_text().splitlines():
            cid, kind, at = line.split()
            if kind == what:
                times.setdefault(cid, []).append(float(at))
        return times

    def ids_alive(self) -> dict[str, int]:
        """Collector id -> pid of each marked collector process, from /proc.

        A process still in its set-up step (the shell joining a control group,
        before it execs the collector) is not counted yet: it carries the
        collector's environment but not its command line."""
        found = {}
        for pid in self.collectors():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                argv = cmdline(pid)
            except OSError:
                continue
            if state in (b"Z", b"X") or argv[1:3] == ["-c", JOIN_CGROUP]:
                continue
            for item in environ:
                if item.startswith(b"ID="):
                    found[item[3:].decode()] = pid
        return found

    def start_ticks(self, pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])

    def running_as(self, cid: str, mode: str) -> int | None:
        """The pid of collector ``cid`` once it runs the collector in ``mode``, else None."""
        pid = self.ids_alive().get(cid)
        try:
            return pid if pid and cmdline(pid)[2:3] == [mode] else None
        except OSError:
            return None


def restarted(daemon: Rollouts, tmp_path: Path, config: str) -> None:
    """A new ``reconciler run`` on the same directories, in place of the (killed) one."""
    mark = daemon.mark
    Rollouts.__init__(daemon, tmp_path, config)
    daemon.mark = mark
    wait_for(lambda: "watching" in daemon.stderr, timeout=30, message="daemon restarted")


@contextlib.contextmanager
def running(tmp_path: Path, config: str = "") -> Iterator[Rollouts]:
    daemon = Rollouts(tmp_path, config)
    try:
        wait_for(
            lambda: "watching" in daemon.stderr or daemon.process.poll() is not None,
            timeout=30,
            message="daemon started",
        )
        assert "watching" in daemon.stderr, daemon.stderr
        yield daemon
    finally:
        daemon.end()


@pytest.mark.timeout(90)
def test_a_bad_args_change_is_rolled_back_and_the_good_one_after_it_rolls_out(
    tmp_path: Path,
) -> None:
    port = free_port()
    probe = f'[ready_check]\ntcp = "127.0.0.1:{port}"\ninterval_seconds = 0.2\n'
    with running(tmp_path, "[reconciler]\nrollback = true\n") as daemon:
        daemon.write("web", daemon.spec("web", "good", port, probe, rollout_timeout_seconds=3))
        assert daemon.cli("wait", "--timeout", "30").returncode == 0
        assert daemon.view("web")["ready"] is True
        daemon.write("web", daemon.spec("web", "bad", port, probe, rollout_timeout_seconds=3))
        bad_hash = wait_for(
            lambda: (v := daemon.view("web"))["rejected"] and v["rejected"]["hash"],
            timeout=30, message="the bad content rejected",
        )  # fmt: skip
        # The last ready spec runs again, and is ready.
        pid = wait_for(lambda: daemon.running_as("web", "good"), message="web running good")
        wait_for(lambda: daemon.view("web")["ready"], message="ready again")
        view = daemon.view("web")
        assert view["spec_hash"] == bad_hash and view["applied_spec_hash"] != bad_hash
        assert "not ready within rollout_timeout_seconds = 3" in view["rejected"]["reason"]
        status = daemon.cli("status", "web")
        assert "rejected:" in status.stdout and bad_hash in status.stdout, status.stdout
        events = daemon.cli("events", "web").stdout
        assert "rollback" in events and "back to the last ready spec" in events, events
        assert f'reconciler_spec_rejected{{file="web.toml",hash="{bad_hash}"}} 1.0' in (
            daemon.metrics()
        )
        waited = daemon.cli("wait", "--timeout", "5")
        assert waited.returncode == 1 and "web: rejected" in waited.stderr, waited.stderr
        # Not tried again while the file says the same: the planner has nothing to do.
        planned = daemon.cli("diff", str(daemon.specs))
        assert planned.returncode == 0, planned.stdout + planned.stderr
        assert daemon.ids_alive().get("web") == pid
        # Nor by the next reconciler: the rejection is in the state file.
        daemon.process.kill()
        daemon.process.wait()
        restarted(daemon, tmp_path, "[reconciler]\nrollback = true\n")
        wait_for(lambda: daemon.view("web")["ready"], message="adopted and ready")
        assert daemon.view("web")["rejected"]["hash"] == bad_hash
        assert daemon.ids_alive().get("web") == pid, "adopted, not restarted"
        assert daemon.cli("wait", "--timeout", "5").returncode == 1
        # A fixed spec rolls out, and the rejection ends with the file change.
        fixed = daemon.spec("web", "good-v2", port, probe, rollout_timeout_seconds=3)
        daemon.write("web", fixed)
        assert daemon.cli("wait", "--timeout", "30").returncode == 0
        new_pid = daemon.ids_alive()["web"]
        assert new_pid != pid and cmdline(new_pid)[2] == "good-v2"
        assert daemon.view("web")["rejected"] is None
        assert "reconciler_spec_rejected{" not in daemon.metrics()
        assert daemon.stop() == 0


@pytest.mark.timeout(90)
def test_after_starts_behind_the_readiness_probe_and_stops_in_reverse(tmp_path: Path) -> None:
    port = free_port()
    probe = f'[ready_check]\ntcp = "127.0.0.1:{port}"\ninterval_seconds = 0.1\n'
    with running(tmp_path) as daemon:
        # b and c start after a, which listens (is ready) a second after it starts; d is free.
        daemon.write("b", daemon.spec("b", "plain", after=["a"]))
        daemon.write("c", daemon.spec("c", "plain", after=["a"]))
        daemon.write("d", daemon.spec("d", "plain"))
        daemon.write("a", daemon.spec("a", "slow", port, probe))
        assert daemon.cli("wait", "--timeout", "30").returncode == 0
        # A process runs once exec'd; its own note comes once Python is up.
        wait_for(lambda: len(daemon.noted("start")) == 4, message="every collector noted")
        started, listening = daemon.noted("start"), daemon.noted("listening")
        assert started["b"][0] >= listening["a"][0] and started["c"][0] >= listening["a"][0]
        assert started["d"][0] < listening["a"][0], "an independent collector does not wait"
        assert daemon.stop() == 0
        terms = daemon.noted("term")
        assert max(terms["b"][0], terms["c"][0]) < terms["a"][0], terms
        assert abs(terms["b"][0] - terms["c"][0]) < 1.0, "independent stops run at once"


@pytest.mark.timeout(120)
def test_max_unavailable_1_over_ten_changed_specs_never_has_two_down(tmp_path: Path) -> None:
    ids = [f"c{n}" for n in range(10)]
    with running(tmp_path, "[reconciler]\nmax_unavailable = 1\n") as daemon:
        for cid in ids:
            daemon.write(cid, daemon.spec(cid, "v1", min_ready_seconds=0.3))
        assert daemon.cli("wait", "--timeout", "30").returncode == 0
        before = daemon.ids_alive()
        assert sorted(before) == ids
        most_down, samples, stop = [0], [0], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                down = len(ids) - len(daemon.ids_alive())
                most_down[0] = max(most_down[0], down)
                samples[0] += 1

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for cid in ids:
                daemon.write(cid, daemon.spec(cid, "v2", min_ready_seconds=0.3))
            assert daemon.cli("wait", "--timeout", "60").returncode == 0
        finally:
            stop.set()
            watcher.join()
        after = daemon.ids_alive()
        assert all(cmdline(after[cid])[2] == "v2" for cid in ids)
        assert all(after[cid] != before[cid] for cid in ids)
        assert samples[0] > 50, "the /proc check looked often enough to see a restart"
        assert most_down[0] == 1, f"at most one collector down at any instant: {most_down[0]}"
        # The kernel's start times (clock ticks): each wave waits for the last to be ready.
        ticks = os.sysconf("SC_CLK_TCK")
        starts = sorted(daemon.start_ticks(after[cid]) / ticks for cid in ids)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert min(gaps) >= 0.3 - 2 / ticks, f"a wave began before the last was ready: {gaps}"
        assert daemon.stop() == 0


@pytest.mark.timeout(90)
def test_a_failed_rollout_holds_the_next_waves_until_its_file_changes(tmp_path: Path) -> None:
    ids = ["c0", "c1", "c2"]
    # min_ready_seconds: a run must last a second to be ready, so an exit at once never is.
    keys = {"max_restarts": 1, "rollout_timeout_seconds": 30, "min_ready_seconds": 1}
    with running(tmp_path, "[reconciler]\nmax_unavailable = 1\n") as daemon:
        for cid in ids:
            daemon.write(cid, daemon.spec(cid, "v1", **keys))
        assert daemon.cli("wait", "--timeout", "30").returncode == 0
        before = daemon.ids_alive()
        for cid in ids:
            daemon.write(cid, daemon.spec(cid, "crash", **keys))
        # c0 goes first, crash-loops into failed: a failed rollout (rollback is off).
        # c1 and c2 stay on their old spec.
        wait_for(lambda: "reconciler_rollout_held 1.0" in daemon.metrics(), message="held")
        waited = daemon.cli("wait", "--timeout", "5")
        assert waited.returncode == 1
        assert "c1: held: rollout held: c0 failed" in waited.stderr, waited.stderr
        assert "c0: failed on its current spec" in waited.stderr, waited.stderr
        alive = daemon.ids_alive()
        assert alive["c1"] == before["c1"] and alive["c2"] == before["c2"]
        assert "rollout_failed" in daemon.cli("events", "c0").stdout
        assert re.search(r"held: +rollout held: c0 failed", daemon.cli("status", "c2").stdout)
        # Reverting the push ends the hold: c0 back on v1, c1 and c2 never changed. (c0
        # last: once its file changes, the hold is over for whatever the others say then.)
        for cid in reversed(ids):
            daemon.write(cid, daemon.spec(cid, "v1", **keys))
        assert daemon.cli("wait", "--timeout", "30").returncode == 0
        assert "reconciler_rollout_held 0.0" in daemon.metrics()
        after = daemon.ids_alive()
        assert after["c1"] == before["c1"] and after["c2"] == before["c2"]
        assert daemon.stop() == 0
