"""What the kernel says about processes: identity, state letter, group and session members.

Read from ``/proc`` and with single syscalls, without psutil's per-process objects:
one field is all that is needed. Used by the real driver (tracking without cgroups,
adoption, pause confirmation) and by ``process_start_ticks`` callers.
"""

from __future__ import annotations

import os


def _stat(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks since boot.

    With the pid it identifies one process for the life of the machine, so a
    recycled pid is never mistaken for the collector that once had it.
    """
    data = _stat(pid)
    if data is None:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def kernel_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (R, S, D, T, Z, ...), ``None`` if gone."""
    data = _stat(pid)
    if data is None:
        return None
    # The command name may contain spaces and parentheses: the state follows the last ')'.
    end = data.rindex(b")")
    return data[end + 2 : end + 3].decode()


def pids_with_env(entry: bytes) -> list[int]:
    """Live processes whose initial environment holds ``entry`` (``KEY=value``), exactly."""
    wanted = entry + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                data = b"\0" + environ.read()
        except OSError:
            continue
        if b"\0" + wanted in data or data.endswith(b"\0" + entry):
            found.append(int(name))
    return sorted(found)


def session_and_group(pid: int) -> tuple[int, ...]:
    """The session and process group ids of ``pid``; empty if it is gone."""
    try:
        return (os.getsid(pid), os.getpgid(pid))
    except OSError:
        return ()


def group_members(leader: int) -> list[int]:
    """Live processes whose session or process group is ``leader``'s (no cgroups)."""
    return members_by_leader({leader})[leader]


def members_by_leader(leaders: set[int]) -> dict[int, list[int]]:
    """``group_members`` of many leaders in one scan of the process table.

    One ``getsid`` (and at most one ``getpgid``) per process, with no file read: only a
    member's state is read, to leave zombies out. This runs at every exit of a collector
    tracked without cgroups, so it costs what the host's process count makes it cost, and
    as little per process as the kernel allows (psutil's objects cost eight times more).
    """
    by_leader: dict[int, list[int]] = {leader: [] for leader in leaders}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            leader = os.getsid(pid)
            if leader not in by_leader:
                leader = os.getpgid(pid)
                if leader not in by_leader:
                    continue
        except OSError:
            continue  # gone meanwhile
        if kernel_state(pid) not in (None, "Z"):
            by_leader[leader].append(pid)
    return {leader: sorted(pids) for leader, pids in by_leader.items()}
