"""Starting one collector process: environment, identity, limits, output, exec.

Every collector gets its own session (and so its own process group), stdin
from /dev/null, a minimal inherited environment plus its spec's, its working
directory, its run-as user and group, and its rlimits — and never a shell.
Called by the manager.

No Python runs between fork and exec: CPython documents ``preexec_fn`` as
unsafe in a threaded parent (the child can deadlock on a lock another thread
held at fork). Popen's own C code sets the session, working directory and,
when nothing else is needed, the run-as user. What Popen cannot do is done by
small programs the child execs on its way to the collector, each a fixed
``argv`` with no shell parsing of spec values (:func:`exec_chain`):

1. ``/bin/sh -c 'echo 0 >"$1" ... exec "$@"'`` joins the run's cgroup, first
   and as root, so that nothing the collector forks can start outside it;
2. ``prlimit --nofile=N:N ... --`` sets the rlimits (util-linux);
3. ``setpriv --reuid --regid --groups --`` switches user last (util-linux),
   after the steps that need root.

Each step replaces the process (the pid is the collector's from the fork on).
A step that fails exits with :data:`SETUP_FAILED_EXIT` and says why on the
collector's output.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import grp
import os
import pwd
import resource
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SpawnFailed
from reconciler.spec.models import CollectorConfig, ResourceLimits

INHERITED_ENV_KEYS = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOME", "USER", "LOGNAME")
"""What a collector inherits from the reconciler's environment (plus ``LC_*``)."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COLLECTOR_ID_ENV = "RECONCILER_COLLECTOR_ID"
INSTANCE_ENV = "RECONCILER_INSTANCE"
"""Names the reconciler (its state dir's tree) a process was started by: found in
``/proc`` after a crash of the reconciler when there are no cgroups to look in."""
ETXTBSY_RETRIES = 20
SETUP_FAILED_EXIT = 125
"""Exit status of a set-up step that failed before the collector was exec'd."""
SHELL = "/bin/sh"
JOIN_CGROUP = (
    'echo 0 >"$1" || { echo "reconciler: cannot join control group ${1%/*}" >&2; exit 125; }; '
    'shift; exec "$@" </dev/null'
)
"""The whole shell program of step 1: builtins only; spec values arrive as arguments.

Its stdin is the write end of a pipe the spawning thread reads: replacing it
with /dev/null as it execs the next program is the end of the step, seen as
EOF without polling (:func:`_await_exec`)."""
RLIMIT_NAMES = {
    resource.RLIMIT_NOFILE: "nofile",
    resource.RLIMIT_AS: "as",
    resource.RLIMIT_NPROC: "nproc",
    resource.RLIMIT_CORE: "core",
}
UNLIMITED = resource.RLIM_INFINITY
EXEC_WAIT_SECONDS = 5.0
"""How long a spawn waits for its set-up steps to reach the collector's exec."""
EXEC_POLL_SECONDS = 0.0002


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the child runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    shell: str


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """Look up the run-as user and group; ``None`` means "as the reconciler"."""
    if user is None and group is None:
        return None
    if os.geteuid() != 0:
        which = "user" if user is not None else "group"
        raise SpawnFailed(f"{which} is set, but the reconciler is not running as root")
    try:
        entry = pwd.getpwnam(user) if user is not None else pwd.getpwuid(os.getuid())
    except KeyError:
        raise SpawnFailed(f"user {user!r} does not exist") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise SpawnFailed(f"group {group!r} does not exist") from None
    groups = tuple(os.getgrouplist(entry.pw_name, gid)) if user is not None else (gid,)
    return Identity(
        uid=entry.pw_uid,
        gid=gid,
        groups=groups,
        name=entry.pw_name,
        home=entry.pw_dir,
        shell=entry.pw_shell,
    )


def build_env(
    *,
    collector_id: str,
    spec_env: Mapping[str, str],
    identity: Identity | None,
    parent_env: Mapping[str, str],
    instance: str | None = None,
) -> dict[str, str]:
    """A minimal inherited base, the run-as user's identity, then the spec's env on top."""
    # Interned: ``os.environ`` decodes each value it yields anew, and a run keeps its env,
    # so a thousand runs kept a thousand copies of PATH (0.3 KiB a collector in all).
    env = {key: sys.intern(parent_env[key]) for key in INHERITED_ENV_KEYS if key in parent_env}
    # Keys first: ``os.environ`` decodes each value it yields.
    env.update(
        {key: sys.intern(parent_env[key]) for key in parent_env if key.startswith("LC_")}
    )
    env.setdefault("PATH", DEFAULT_PATH)
    if identity is not None:
        env.update(HOME=identity.home, USER=identity.name, LOGNAME=identity.name)
    env[COLLECTOR_ID_ENV] = collector_id
    if instance is not None:
        env[INSTANCE_ENV] = instance
    env.update(spec_env)
    return env


def rlimits_for(
    limits: ResourceLimits | None, *, enforced_by_cgroup: set[str]
) -> list[tuple[int, int]]:
    """(resource, value) pairs to set in the child: soft and hard alike."""
    if limits is None:
        return []
    wanted: list[tuple[int, int]] = []
    if limits.open_files is not None:
        wanted.append((resource.RLIMIT_NOFILE, limits.open_files))
    if limits.memory_max_bytes is not None and "memory_max_bytes" not in enforced_by_cgroup:
        wanted.append((resource.RLIMIT_AS, limits.memory_max_bytes))
    if limits.processes is not None and "processes" not in enforced_by_cgroup:
        wanted.append((resource.RLIMIT_NPROC, limits.processes))
    if limits.core_dump:
        wanted.append((resource.RLIMIT_CORE, UNLIMITED))
    return wanted


@functools.cache
def _tool(name: str) -> str:
    """The absolute path of a set-up program (util-linux), found once."""
    found = shutil.which(name, path=DEFAULT_PATH)
    if found is None:
        raise SpawnFailed(f"{name} (util-linux) is needed for this spec and is not installed")
    return found


def _limit_arg(which: int, value: int) -> str:
    shown = "unlimited" if value == UNLIMITED else str(value)
    return f"--{RLIMIT_NAMES[which]}={shown}:{shown}"


@dataclass(frozen=True, slots=True)
class ExecPlan:
    """What Popen runs, and the identity Popen itself switches to (if any)."""

    argv: list[str]
    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None


def exec_chain(
    argv: list[str],
    *,
    cgroup_procs: str | None,
    rlimits: list[tuple[int, int]],
    identity: Identity | None,
) -> ExecPlan:
    """The argv that sets the child up and ends in ``argv``: see the module docstring.

    With neither a cgroup nor rlimits, ``argv`` runs directly and Popen
    switches the user in C: no step at all.
    """
    chained = cgroup_procs is not None or bool(rlimits)
    tail = list(argv)
    if identity is not None and not chained:
        return ExecPlan(
            argv=tail, user=identity.uid, group=identity.gid, extra_groups=list(identity.groups)
        )
    if identity is not None:
        groups = (
            "--groups=" + ",".join(str(g) for g in identity.groups)
            if identity.groups
            else "--clear-groups"
        )
        tail = [
            _tool("setpriv"),
            f"--reuid={identity.uid}",
            f"--regid={identity.gid}",
            groups,
            "--",
            *tail,
        ]
    if rlimits:
        tail = [_tool("prlimit"), *(_limit_arg(w, v) for w, v in rlimits), "--", *tail]
    if cgroup_procs is not None:
        tail = [SHELL, "-c", JOIN_CGROUP, "reconciler-join", cgroup_procs, *tail]
    return ExecPlan(argv=tail)


def held_open_for_writing(path: str) -> bool:
    """True when some process has ``path`` open for writing, so exec would fail ETXTBSY.

    A set-up step execs the collector itself, where Popen cannot see the
    error; asked here first, a binary still being written is retried as
    before. A read lease is refused (EAGAIN) exactly while a writer exists.
    Where leases are not allowed (not the owner, no CAP_LEASE, some
    filesystems), the answer is "no" and a busy binary is an early exit.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything needed to exec one collector."""

    collector_id: str
    argv: list[str]
    env: dict[str, str]
    working_dir: str | None
    identity: Identity | None
    rlimits: list[tuple[int, int]]
    cgroup_procs: str | None
    log_mode: str
    log_path: Path | None


def previous_log(log_path: Path) -> Path:
    """Where the output of the run before the current one is kept."""
    return log_path.with_name(log_path.name.removesuffix(".log") + ".previous.log")


def _open_output(request: LaunchRequest) -> int:
    if request.log_mode == "file" and request.log_path is not None:
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Like a container's previous log: each run starts a fresh file.
        try:
            if request.log_path.stat().st_size > 0:
                os.replace(request.log_path, previous_log(request.log_path))
        except FileNotFoundError:
            pass
        return os.open(
            request.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
    if request.log_mode == "inherit" or request.log_mode == "file":
        return -1
    return subprocess.DEVNULL


def check_launchable(config: CollectorConfig) -> None:
    """Fail early, with a clear message, on what would fail inside the child."""
    if config.working_dir is not None and not os.path.isdir(config.working_dir):
        raise SpawnFailed(f"working_dir {config.working_dir!r} is not a directory")


def try_spawn(request: LaunchRequest) -> subprocess.Popen[bytes] | None:
    """Fork and exec once. ``None`` means "text file busy": try again shortly.

    ETXTBSY happens when the binary was just written (a deploy racing the
    start); it clears as soon as the writer closes the file.
    """
    plan = exec_chain(
        request.argv,
        cgroup_procs=request.cgroup_procs,
        rlimits=request.rlimits,
        identity=request.identity,
    )
    if plan.argv[0] != request.argv[0] and held_open_for_writing(request.argv[0]):
        return None
    output = _open_output(request)
    stdout = None if output == -1 else output
    step_done, step_stdin = os.pipe() if plan.argv[0] == SHELL else (-1, subprocess.DEVNULL)
    try:
        popen = subprocess.Popen(
            plan.argv,
            stdin=step_stdin,
            stdout=stdout,
            stderr=stdout,
            env=request.env,
            cwd=request.working_dir,
            start_new_session=True,
            close_fds=True,
            user=plan.user,
            group=plan.group,
            extra_groups=plan.extra_groups,
        )
    except OSError as exc:
        _close(step_done)
        if exc.errno == errno.ETXTBSY:
            return None
        raise SpawnFailed(f"cannot start {request.argv[0]}: {exc.strerror or exc}") from exc
    except subprocess.SubprocessError as exc:
        _close(step_done)
        raise SpawnFailed(f"cannot start {request.argv[0]}: {exc}") from exc
    finally:
        if output >= 0:
            os.close(output)
        if step_done >= 0:
            os.close(step_stdin)
    if plan.argv == request.argv:
        return popen
    try:
        return _await_exec(popen, plan.argv, request.argv, step_done)
    except SpawnFailed:
        raise  # the failed step was reaped
    except BaseException:
        popen.kill()  # nobody would watch it: no start may leave a process behind
        popen.wait()
        raise


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _await_exec(
    popen: subprocess.Popen[bytes], chain: list[str], argv: list[str], step_done: int = -1
) -> subprocess.Popen[bytes] | None:
    """Wait until the set-up steps have exec'd the collector, as Popen does for one exec.

    With the cgroup step, its end is first awaited on ``step_done`` (EOF once
    the shell hands its stdin over, or exits): a blocking read, no polling
    while the shell starts. Then, the steps' command lines being known
    (suffixes of ``chain``), the collector runs once ``/proc/<pid>/cmdline``
    is none of them (a script's interpreter rewrites it, so equality with
    ``argv`` is not required). A process that exits first is looked at as a
    zombie (not reaped): its ``comm`` names the program that exited, a set-up
    step or the collector.
    """
    steps = {tuple(chain[i:]) for i in range(len(chain) - len(argv))}
    deadline = time.monotonic() + EXEC_WAIT_SECONDS
    if step_done >= 0:
        try:
            # poll, not select: a daemon with a thousand collectors holds descriptors
            # (pidfds, logs) past select's FD_SETSIZE of 1024.
            waiting = select.poll()
            waiting.register(step_done, select.POLLIN)
            waiting.poll(EXEC_WAIT_SECONDS * 1000)
        finally:
            os.close(step_done)
    cmdline_path = f"/proc/{popen.pid}/cmdline"
    while time.monotonic() < deadline:
        try:
            exited = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            exited = None
        if exited is not None:
            return _exited_early(popen, chain, argv, exited.si_status)
        try:
            with open(cmdline_path, "rb") as handle:
                parts = handle.read().split(b"\0")[:-1]
            seen = tuple(part.decode(errors="replace") for part in parts)
        except OSError:
            seen = ()
        if seen and seen not in steps:
            return popen
        time.sleep(EXEC_POLL_SECONDS)
    return popen


TASK_COMM_LEN = 15
STEP_PROGRAMS = frozenset({os.path.basename(SHELL), "prlimit", "setpriv"})


def _exited_early(
    popen: subprocess.Popen[bytes], chain: list[str], argv: list[str], code: int
) -> subprocess.Popen[bytes] | None:
    """The child exited before its exec was seen: a failed step, or a quick collector.

    A quick collector is returned as started (its exit is a normal exit). A
    step that failed is reaped here and raised as ``SpawnFailed``.
    """
    try:
        with open(f"/proc/{popen.pid}/comm", "rb") as handle:
            comm = handle.read().strip().decode(errors="replace")
    except OSError:
        return popen
    collector = os.path.basename(argv[0])[:TASK_COMM_LEN]
    step_names = {
        name
        for name in (os.path.basename(part) for part in chain[: len(chain) - len(argv)])
        if name in STEP_PROGRAMS
    }
    if comm not in step_names:
        return popen
    if comm == collector and code != SETUP_FAILED_EXIT:
        return popen  # e.g. a collector that is itself /bin/sh and exited at once
    code = popen.wait()
    if code == 126 and held_open_for_writing(argv[0]):
        return None
    raise SpawnFailed(
        f"cannot start {argv[0]}: setting up the child failed in {comm} (exit {code}: "
        "control group, resource limits or user switch; its output says which)"
    )
