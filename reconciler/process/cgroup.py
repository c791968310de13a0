"""One cgroup v2 per collector run: exact membership, whole-tree kill, limits.

A process that leaves its process group (setsid, double fork) cannot leave its
cgroup, so the cgroup is how the manager finds and kills every descendant of a
collector. Used by ``reconciler.process.manager``; where no writable cgroup v2
hierarchy exists (``CgroupTree.detect()`` returns ``None``), the manager falls
back to process groups, sessions and the descendant tree.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
"""What per-collector limits use: memory.max, pids.max, cpu.max."""
LEAF = "supervisor"
"""Where a delegating daemon moves itself, so its own cgroup holds no process."""
_counter = itertools.count(1)
CPU_PERIOD_MICROSECONDS = 100_000


def _unified_mount() -> Path | None:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return Path(fields[1])
    except OSError:
        return None
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as own:
            for line in own:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


def _delegate(own: Path, *, wanted: tuple[str, ...], is_root: bool) -> None:
    """Enable ``wanted`` controllers for the children of our own cgroup, if it has them."""
    try:
        offered = set((own / "cgroup.controllers").read_text().split())
        enabled = set((own / "cgroup.subtree_control").read_text().split())
    except OSError:
        return
    missing = [c for c in wanted if c in offered and c not in enabled]
    if not missing:
        return
    if not is_root:  # the root cgroup is exempt from "no internal processes"
        leaf = own / LEAF
        try:
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            log.warning("cannot move into %s (%s); limits fall back to rlimits", leaf, exc)
            return
    for controller in missing:
        try:
            (own / "cgroup.subtree_control").write_text(f"+{controller}")
        except OSError as exc:
            # EBUSY: another process shares our cgroup (not started as a service).
            log.warning(
                "cannot enable the %s controller in %s (%s); that limit falls back to rlimits",
                controller,
                own,
                exc.strerror,
            )


@dataclass
class CgroupTree:
    """The manager's own cgroup directory, under which each run gets a child."""

    path: Path
    controllers: frozenset[str]

    @classmethod
    def detect(
        cls,
        name: str | None = None,
        *,
        controllers: tuple[str, ...] = CONTROLLERS,
        move_self_to_leaf: bool = False,
    ) -> CgroupTree | None:
        """Create (or reuse) this manager's cgroup directory; ``None`` where impossible.

        ``name`` makes the directory stable across reconciler restarts, so a new
        manager finds the cgroups of the runs it adopts, and stale ones.

        ``move_self_to_leaf`` is for a daemon that owns its cgroup (systemd's
        ``Delegate=yes``): cgroup v2 lets a cgroup hand controllers to its
        children only while it holds no process itself, so the daemon first
        moves into ``<own>/supervisor``, then enables the ``controllers`` its
        cgroup was given. Without it, limits fall back to rlimits there.
        """
        mount, own = _unified_mount(), _own_cgroup()
        if mount is None or own is None:
            return None
        parent = mount / own.lstrip("/")
        path = parent / (name or f"reconciler-{os.getpid()}-{next(_counter)}")
        try:
            path.mkdir(exist_ok=name is not None)
        except OSError as exc:
            log.debug("no cgroup tracking (cannot create %s: %s)", path, exc)
            return None
        if not (path / "cgroup.kill").exists():
            # Without cgroup.kill (Linux < 5.14) killing still works pid by pid.
            log.debug("cgroup.kill not available; killing cgroup members one by one")
        if move_self_to_leaf:
            _delegate(parent, wanted=controllers, is_root=own == "/")
        available = set((path / "cgroup.controllers").read_text().split())
        enabled: set[str] = set()
        for controller in controllers:
            if controller not in available:
                continue
            try:
                (path / "cgroup.subtree_control").write_text(f"+{controller}")
                enabled.add(controller)
            except OSError:
                pass
        return cls(path=path, controllers=frozenset(enabled))

    def create(self, name: str) -> RunCgroup:
        path = self.path / f"{name}-{os.getpid()}-{next(_counter)}"
        try:
            path.mkdir()
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create cgroup {path}: {exc.strerror}") from exc
        return RunCgroup(path=path, controllers=self.controllers)

    def children(self) -> list[RunCgroup]:
        try:
            return [
                RunCgroup(path=child, controllers=self.controllers)
                for child in self.path.iterdir()
                if child.is_dir()
            ]
        except OSError:
            return []

    def remove(self) -> None:
        """Remove the empty run cgroups, then the tree itself if nothing is left."""
        for child in self.children():
            child.remove()
        with contextlib.suppress(OSError):
            self.path.rmdir()


@dataclass
class RunCgroup:
    """The cgroup of one collector run."""

    path: Path
    controllers: frozenset[str]
    _procs: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A str made once: a Path join per read cost more than the read (1,000 a scrape).
        self._procs = os.path.join(self.path, "cgroup.procs")

    def apply_limits(
        self, *, memory_max_bytes: int | None, processes: int | None, cpu_max_percent: float | None
    ) -> set[str]:
        """Write the limits this cgroup can enforce; return the names it enforced."""
        enforced: set[str] = set()
        if memory_max_bytes is not None and "memory" in self.controllers:
            (self.path / "memory.max").write_text(str(memory_max_bytes))
            enforced.add("memory_max_bytes")
        if processes is not None and "pids" in self.controllers:
            (self.path / "pids.max").write_text(str(processes))
            enforced.add("processes")
        if cpu_max_percent is not None and "cpu" in self.controllers:
            quota = max(1000, int(CPU_PERIOD_MICROSECONDS * cpu_max_percent / 100))
            (self.path / "cpu.max").write_text(f"{quota} {CPU_PERIOD_MICROSECONDS}")
            enforced.add("cpu_max_percent")
        return enforced

    def pids(self) -> list[int]:
        # Raw os.read: this runs for every collector on every metrics scrape.
        try:
            fd = os.open(self._procs, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return []
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError:
            return []
        finally:
            os.close(fd)
        return [int(pid) for pid in b"".join(chunks).split()]

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, escapees included."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise
            self.signal_all(signal.SIGKILL)

    def remove(self) -> bool:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
