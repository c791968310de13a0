"""Chaos soak: random faults against a real ``reconciler run``, invariants checked from /proc.

    .venv/bin/python bench/soak.py --seconds 1800 --seed 7

Faults: SIGKILL of collectors and of their children; valid and invalid edits
saved every way editors and tools save (write-temp-then-rename, in place,
vim's backup dance, ``sed -i``, Ansible's temp file); deletes and re-creates;
``state`` changes; ``reconciler pause``/``resume``/``restart``; SIGHUP; SIGKILL
and SIGTERM of the reconciler followed by a new one, with ``on_exit = "keep"``
and ``"stop"``.

Invariants, read from /proc and never from the product's own view:
- never two collector processes (session leaders) for one id;
- no process for an id whose file is gone, past its stop timeouts;
- no zombie child of the reconciler for more than a moment;
- the reconciler never exits by itself;
- after the last fault, every collector converges to its file within 10 s
  (and ``/metrics`` agrees with /proc on which are up);
- the reconciler's fds and RSS do not grow;
- after the final SIGTERM (``on_exit = "stop"``) nothing is left.

``make test`` runs a short version (``tests/e2e/test_soak.py``); the exit code
is 0 with no violation, 1 otherwise, and the summary says what was done.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RECONCILER = str(Path(sys.executable).with_name("reconciler"))
KINDS = ("sleeper", "stubborn", "family")
GRACEFUL_SECONDS = 1.0
FORCE_SECONDS = 2.0
STOP_GRACE_SECONDS = GRACEFUL_SECONDS + FORCE_SECONDS + 4.0
"""How long a process may outlive its file: the stop timeouts, plus a loaded machine."""
CONVERGE_SECONDS = 10.0


def collector_spec(kind: str, *, tag: str, cid: str, arg: int, state: str, valid: bool) -> str:
    if kind == "sleeper":
        program, args = "/bin/sleep", [str(1000 + arg)]
    elif kind == "stubborn":
        program, args = "/bin/sh", ["-c", f"trap '' TERM; sleep {1000 + arg} & wait"]
    else:
        program, args = "/bin/sh", ["-c", f"sleep {1000 + arg} & sleep {2000 + arg} & wait"]
    lines = [
        f'type = "{kind}"',
        f'binary_path = "{program}"',
        f"args = {json.dumps(args)}",
        f'state = "{state}"',
        'log = "null"',
        f"graceful_timeout_seconds = {GRACEFUL_SECONDS}",
        f"force_timeout_seconds = {FORCE_SECONDS}",
        'max_restarts = "unlimited"',
        "restart_backoff_initial_seconds = 0.2",
        "restart_backoff_max_seconds = 1",
        f'env = {{ SOAK_TAG = "{tag}", SOAK_ID = "{cid}", SOAK_ARG = "{arg}" }}',
    ]
    if not valid:
        lines.append("typo_key = 1")
    return "\n".join(lines) + "\n"


# -- /proc -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    env: dict[str, str]


def processes(tag: str) -> list[Proc]:
    """Every live process carrying this soak's tag."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if f"SOAK_TAG={tag}".encode() not in environ.split(b"\0"):
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        env = dict(
            item.decode(errors="replace").split("=", 1)
            for item in environ.split(b"\0")
            if item.startswith(b"SOAK_")
        )
        found.append(
            Proc(
                pid=int(entry),
                state=fields[0].decode(),
                ppid=int(fields[1]),
                pgid=int(fields[2]),
                sid=int(fields[3]),
                env=env,
            )
        )
    return found


def leaders(procs: list[Proc]) -> dict[str, list[Proc]]:
    """Collector main processes by id: the leaders of their own sessions, not zombies."""
    by_id: dict[str, list[Proc]] = collections.defaultdict(list)
    for proc in procs:
        if proc.sid == proc.pid and proc.state not in "ZX":
            by_id[proc.env.get("SOAK_ID", "?")].append(proc)
    return by_id


def zombie_children(pid: int) -> list[int]:
    zombies = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{child}/stat").read_bytes()
                if stat[stat.rindex(b")") + 2 :][:1] == b"Z":
                    zombies.append(int(child))
    return zombies


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- the soak ----------------------------------------------------------------------------------


@dataclass
class Desired:
    kind: str
    arg: int = 0
    state: str = "running"
    valid: bool = True
    present: bool = True
    last_valid_arg: int | None = None
    last_valid_state: str | None = None
    gone_since: float | None = None


@dataclass
class Soak:
    root: Path
    seed: int
    collectors: int
    rng: random.Random = field(init=False)
    tag: str = field(init=False)
    daemon: subprocess.Popen[bytes] | None = None
    daemon_started: float = 0.0
    on_exit: str = "stop"
    desired: dict[str, Desired] = field(default_factory=dict)
    actions: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    metrics_port: int | None = None
    baseline: tuple[int, int] | None = None
    zombie_seen: dict[int, float] = field(default_factory=dict)
    generation: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.tag = f"soak-{os.getpid()}-{self.seed}-{time.monotonic_ns()}"
        self.specs = self.root / "specs"
        self.state = self.root / "state"
        self.specs.mkdir(parents=True)
        self.config = self.root / "reconciler.toml"
        self.write_config()

    # -- the daemon -------------------------------------------------------------------------

    def write_config(self) -> None:
        self.config.write_text(f'[reconciler]\non_exit = "{self.on_exit}"\n')

    def start_daemon(self) -> None:
        self.generation += 1
        stderr = (self.root / f"reconciler-{self.generation}.stderr").open("wb")
        self.daemon = subprocess.Popen(
            [
                RECONCILER,
                "run",
                "--config",
                str(self.config),
                "--specs",
                str(self.specs),
                "--state-dir",
                str(self.state),
                "--socket",
                str(self.state / "api.sock"),
                "--metrics-address",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        stderr.close()
        self.daemon_started = time.monotonic()
        self.baseline = None
        deadline = time.monotonic() + 20
        path = self.root / f"reconciler-{self.generation}.stderr"
        while time.monotonic() < deadline:
            match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)", path.read_text())
            if match:
                self.metrics_port = int(match.group(1))
                return
            if self.daemon.poll() is not None:
                break
            time.sleep(0.05)
        self.violation(f"reconciler generation {self.generation} did not start")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RECONCILER, *args, "--socket", str(self.state / "api.sock")],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    # -- faults -----------------------------------------------------------------------------

    def write_spec(self, cid: str, pattern: str) -> None:
        d = self.desired[cid]
        text = collector_spec(
            d.kind, tag=self.tag, cid=cid, arg=d.arg, state=d.state, valid=d.valid
        )
        path = self.specs / f"{cid}.toml"
        if pattern == "in-place" or not path.exists():
            path.write_text(text)
        elif pattern == "vim":
            backup = self.specs / f"{cid}.toml~"
            swap = self.specs / f".{cid}.toml.swp"
            swap.write_text("swap")
            os.rename(path, backup)
            path.write_text(text)
            backup.unlink()
            swap.unlink()
        elif pattern == "sed":
            temporary = self.specs / f"sed{self.rng.randrange(10**6)}"
            temporary.write_text(text)
            os.rename(temporary, path)
        elif pattern == "ansible":
            temporary = self.specs / f".ansible_tmp{self.rng.randrange(10**6)}{cid}.toml"
            temporary.write_text(text)
            os.rename(temporary, path)
        else:  # write-temp-then-rename
            temporary = self.specs / f".{cid}.toml.tmp"
            temporary.write_text(text)
            os.rename(temporary, path)
        d.present = True
        d.gone_since = None
        if d.valid:
            d.last_valid_arg, d.last_valid_state = d.arg, d.state

    FAULTS = (
        ("kill-collector", 4),
        ("kill-child", 2),
        ("edit", 5),
        ("invalid-edit", 2),
        ("delete", 2),
        ("recreate", 2),
        ("state", 3),
        ("cli", 3),
        ("sighup", 1),
        ("kill-reconciler", 1),
        ("term-reconciler", 1),
    )

    def fault(self) -> None:
        names = [name for name, _ in self.FAULTS]
        name = self.rng.choices(names, weights=[weight for _, weight in self.FAULTS])[0]
        cid = self.rng.choice(sorted(self.desired))
        done = getattr(self, "_" + name.replace("-", "_"))(cid)
        if done:
            self.actions[done if isinstance(done, str) else name] += 1

    def _kill(self, cid: str, *, leader: bool) -> bool:
        procs = processes(self.tag)
        mine = [p for p in procs if p.env.get("SOAK_ID") == cid and p.state not in "ZX"]
        targets = [p for p in mine if (p.sid == p.pid) == leader]
        if not targets:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.rng.choice(targets).pid, signal.SIGKILL)
        return True

    def _kill_collector(self, cid: str) -> bool:
        return self._kill(cid, leader=True)

    def _kill_child(self, cid: str) -> bool:
        return self._kill(cid, leader=False)

    def _edit_with(self, cid: str, *, valid: bool) -> bool:
        d = self.desired[cid]
        if not d.present:
            return False
        d.arg, d.valid = self.rng.randrange(1, 50), valid
        self.write_spec(cid, self.rng.choice(["rename", "in-place", "vim", "sed", "ansible"]))
        return True

    def _edit(self, cid: str) -> bool:
        return self._edit_with(cid, valid=True)

    def _invalid_edit(self, cid: str) -> bool:
        return self._edit_with(cid, valid=False)

    def _delete(self, cid: str) -> bool:
        d = self.desired[cid]
        if not d.present:
            return False
        (self.specs / f"{cid}.toml").unlink()
        d.present, d.gone_since = False, time.monotonic()
        d.last_valid_arg = d.last_valid_state = None
        return True

    def _recreate(self, cid: str) -> bool:
        d = self.desired[cid]
        if d.present:
            return False
        d.valid, d.state = True, "running"
        self.write_spec(cid, "rename")
        return True

    def _state(self, cid: str) -> bool:
        d = self.desired[cid]
        if not d.present:
            return False
        d.state, d.valid = self.rng.choice(["running", "paused", "stopped"]), True
        self.write_spec(cid, "rename")
        return True

    def _cli(self, cid: str) -> str:
        verb = self.rng.choice(["pause", "resume", "restart"])
        self.cli(verb, cid)  # refusals (e.g. resume of a stopped one) are fine
        return f"cli-{verb}"

    def _sighup(self, cid: str) -> bool:
        assert self.daemon is not None
        self.on_exit = self.rng.choice(["stop", "keep"])
        self.write_config()
        self.daemon.send_signal(signal.SIGHUP)
        return True

    def _replace_reconciler(self, signum: int) -> bool:
        assert self.daemon is not None
        self.daemon.send_signal(signum)
        code = self.daemon.wait(timeout=60)
        if signum == signal.SIGTERM and code != 0:
            self.violation(f"SIGTERM: the reconciler exited {code}")
        self.on_exit = self.rng.choice(["stop", "keep"])
        self.write_config()
        self.start_daemon()
        return True

    def _kill_reconciler(self, cid: str) -> bool:
        return self._replace_reconciler(signal.SIGKILL)

    def _term_reconciler(self, cid: str) -> bool:
        return self._replace_reconciler(signal.SIGTERM)

    # -- invariants -------------------------------------------------------------------------

    def violation(self, message: str) -> None:
        stamp = f"{time.monotonic() - self.t0:7.2f}s" if hasattr(self, "t0") else "start"
        self.violations.append(f"[{stamp}] {message}")
        print(f"VIOLATION {self.violations[-1]}", file=sys.stderr, flush=True)

    def check(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            self.violation(f"the reconciler exited by itself ({self.daemon.returncode})")
            self.start_daemon()
            return
        self._check_collectors(time.monotonic())
        if self.daemon is not None:
            self._check_daemon(self.daemon.pid, time.monotonic())

    def _check_collectors(self, now: float) -> None:
        for cid, procs in leaders(processes(self.tag)).items():
            if len(procs) > 1:
                self.violation(f"{cid}: {len(procs)} processes at once: {[p.pid for p in procs]}")
            d = self.desired.get(cid)
            if d is not None and not d.present and d.gone_since is not None:
                since = max(d.gone_since, self.daemon_started)
                if now - since > STOP_GRACE_SECONDS:
                    self.violation(f"{cid}: still running {now - since:.1f} s after its file went")

    def _check_daemon(self, pid: int, now: float) -> None:
        for zombie in zombie_children(pid):
            first = self.zombie_seen.setdefault(zombie, now)
            if now - first > 2.0:
                self.violation(f"zombie child {zombie} of the reconciler for {now - first:.1f} s")
        if now - self.daemon_started <= 5:
            return
        with contextlib.suppress(OSError):  # it may be exiting right now
            sample = (fd_count(pid), rss_bytes(pid))
            if self.baseline is None:
                self.baseline = sample
            elif sample[0] > self.baseline[0] + 40:
                self.violation(f"fds grew from {self.baseline[0]} to {sample[0]}")
            elif sample[1] > self.baseline[1] + 40 * 1024 * 1024:
                self.violation(f"RSS grew from {self.baseline[1]} to {sample[1]} bytes")

    def converged(self) -> list[str]:
        """What is not yet as the files say; empty once converged."""
        pending = []
        by_id = leaders(processes(self.tag))
        for cid, d in self.desired.items():
            procs = by_id.get(cid, [])
            want = d.last_valid_state if d.present else None
            if want in (None, "stopped"):
                if procs:
                    pending.append(f"{cid}: should not run")
                continue
            if len(procs) != 1:
                pending.append(f"{cid}: {len(procs)} processes, want 1")
                continue
            proc = procs[0]
            if proc.env.get("SOAK_ARG") != str(d.last_valid_arg):
                pending.append(
                    f"{cid}: runs arg {proc.env.get('SOAK_ARG')}, want {d.last_valid_arg}"
                )
            paused = proc.state in "Tt"
            if paused != (want == "paused"):
                pending.append(f"{cid}: kernel state {proc.state}, want {want}")
        return pending

    def metrics_agree(self) -> list[str]:
        assert self.metrics_port is not None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        up = {
            match.group(1): float(match.group(2))
            for match in re.finditer(
                r'^reconciler_collector_up\{id="([^"]+)",type="[^"]*"\} (\S+)$', text, re.M
            )
        }
        by_id = leaders(processes(self.tag))
        problems = []
        for cid in self.desired:
            running = bool(by_id.get(cid)) and by_id[cid][0].state not in "Tt"
            if running != (up.get(cid, 0.0) == 1.0):
                problems.append(f"{cid}: /proc says running={running}, metrics up={up.get(cid)}")
        return problems

    # -- the run ----------------------------------------------------------------------------

    def run(self, seconds: float) -> int:
        for index in range(self.collectors):
            cid = f"c{index:02d}"
            self.desired[cid] = Desired(kind=KINDS[index % len(KINDS)])
            self.write_spec(cid, "rename")
        self.start_daemon()
        self.t0 = time.monotonic()
        try:
            while time.monotonic() - self.t0 < seconds:
                self.fault()
                pause_until = time.monotonic() + self.rng.uniform(0.05, 0.6)
                while time.monotonic() < pause_until:
                    self.check()
                    time.sleep(0.05)
            # One last valid edit of every file (which also ends operator
            # overrides), then the system must settle on its own.
            for cid, d in self.desired.items():
                if d.present:
                    d.valid, d.arg = True, d.arg + 100
                    self.write_spec(cid, "rename")
            deadline = time.monotonic() + CONVERGE_SECONDS
            pending = self.converged()
            while pending and time.monotonic() < deadline:
                self.check()
                time.sleep(0.1)
                pending = self.converged()
            for line in pending:
                self.violation(f"not converged {CONVERGE_SECONDS:g} s after the last fault: {line}")
            if not pending:
                for line in self.metrics_agree():
                    self.violation(f"metrics disagree with /proc: {line}")
            self.check()
        finally:
            self.finish()
        return 1 if self.violations else 0

    def finish(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.on_exit = "stop"
            self.write_config()
            self.daemon.send_signal(signal.SIGHUP)
            time.sleep(0.5)  # the reload is read between signals: give it its turn
            self.daemon.send_signal(signal.SIGTERM)
            try:
                code = self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.violation("the final SIGTERM did not stop the reconciler within 60 s")
                self.daemon.kill()
                code = self.daemon.wait()
            if code != 0:
                self.violation(f"the final SIGTERM: exit code {code}")
        deadline = time.monotonic() + 5
        while (left := processes(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            self.violation(f"left after the final SIGTERM: {[p.pid for p in left]}")
            for proc in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)

    def summary(self, seconds: float) -> str:
        lines = [
            f"soak: seed {self.seed}, {seconds:g} s, {self.collectors} collectors, "
            f"{self.generation} reconciler runs",
            "actions: " + ", ".join(f"{k} {v}" for k, v in sorted(self.actions.items())),
            f"violations: {len(self.violations)}",
            *self.violations,
        ]
        return "\n".join(lines)


def soak(seconds: float, *, seed: int, collectors: int = 12, keep: Path | None = None) -> Soak:
    root = Path(tempfile.mkdtemp(prefix="reconciler-soak-"))
    runner = Soak(root, seed, collectors)
    try:
        runner.run(seconds)
    finally:
        if keep is None and not runner.violations:
            shutil.rmtree(root, ignore_errors=True)
    return runner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--collectors", type=int, default=12)
    args = parser.parse_args()
    runner = soak(args.seconds, seed=args.seed, collectors=args.collectors)
    print(runner.summary(args.seconds))
    if runner.violations:
        print(f"logs kept in {runner.root}")
    return 1 if runner.violations else 0


if __name__ == "__main__":
    sys.exit(main())
