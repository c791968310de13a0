"""Starting one collector process: environment, identity, limits, output, exec.

Every collector gets its own session (and so its own process group), stdin
from /dev/null, a minimal inherited environment plus its spec's, its working
directory, its run-as user and group, and its rlimits — and never a shell.
Called by the manager; the child-side setup is a pre-computed closure that
only makes system calls, because it runs between fork and exec.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SpawnFailed
from reconciler.spec.models import CollectorConfig, ResourceLimits

INHERITED_ENV_KEYS = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOME", "USER", "LOGNAME")
"""What a collector inherits from the reconciler's environment (plus ``LC_*``)."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COLLECTOR_ID_ENV = "RECONCILER_COLLECTOR_ID"
ETXTBSY_RETRIES = 20


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
) -> dict[str, str]:
    """A minimal inherited base, the run-as user's identity, then the spec's env on top."""
    env = {key: parent_env[key] for key in INHERITED_ENV_KEYS if key in parent_env}
    env.update({key: value for key, value in parent_env.items() if key.startswith("LC_")})
    env.setdefault("PATH", DEFAULT_PATH)
    if identity is not None:
        env.update(HOME=identity.home, USER=identity.name, LOGNAME=identity.name)
    env[COLLECTOR_ID_ENV] = collector_id
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
    return wanted


def _child_setup(
    *, cgroup_fd: int | None, rlimits: list[tuple[int, int]], identity: Identity | None
) -> Callable[[], None] | None:
    """The code run in the child between fork and exec, or ``None`` when there is none.

    Without it, subprocess can use vfork, which is faster; with it, only system
    calls on values computed here run in the child (no imports, no allocation
    of note), which is what makes a pre-exec hook safe in a threaded parent.
    """
    if cgroup_fd is None and not rlimits and identity is None:
        return None

    def setup() -> None:
        # Join the cgroup first, while still root: escapees can never leave it.
        if cgroup_fd is not None:
            os.write(cgroup_fd, b"0")
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))
        if identity is not None:
            os.setgroups(list(identity.groups))
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)

    return setup


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything needed to exec one collector."""

    collector_id: str
    argv: list[str]
    env: dict[str, str]
    working_dir: str | None
    identity: Identity | None
    rlimits: list[tuple[int, int]]
    cgroup_fd: int | None
    log_mode: str
    log_path: Path | None


def _open_output(request: LaunchRequest) -> int:
    if request.log_mode == "file" and request.log_path is not None:
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
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
    output = _open_output(request)
    stdout = None if output == -1 else output
    try:
        return subprocess.Popen(
            request.argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stdout,
            env=request.env,
            cwd=request.working_dir,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_child_setup(
                cgroup_fd=request.cgroup_fd, rlimits=request.rlimits, identity=request.identity
            ),
        )
    except OSError as exc:
        if exc.errno == errno.ETXTBSY:
            return None
        raise SpawnFailed(f"cannot start {request.argv[0]}: {exc.strerror or exc}") from exc
    except subprocess.SubprocessError as exc:
        raise SpawnFailed(
            f"cannot start {request.argv[0]}: setting up the child failed "
            f"(cgroup, resource limits or user switch): {exc}"
        ) from exc
    finally:
        if output >= 0:
            os.close(output)
