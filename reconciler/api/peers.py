"""Who may use the control API: checked on every request from the peer's credentials.

The socket's mode is the first gate (0600, or 0660 for ``control_group``); a
mode loosened by hand must not open the API to everyone, so each request is
also checked against the kernel's word on who is at the other end
(``SO_PEERCRED``): root, the daemon's own uid, and members of
``control_group`` (primary or supplementary group, read from
``/proc/<pid>/status``) may act; anyone else gets 403 ``FORBIDDEN``, told who
would be allowed.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from reconciler.errors import InvalidSpec

_CREDENTIALS = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket | None) -> Peer | None:
    """The process at the other end of a unix socket (``None`` if it cannot be known)."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    except OSError:
        return None
    pid, uid, gid = _CREDENTIALS.unpack(data)
    return Peer(pid, uid, gid)


def _groups_of(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(gid) for gid in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _name_of_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class Admission:
    """Decides, per peer, whether it may use the API (see the module docstring)."""

    def __init__(self, control_group: str | None) -> None:
        self.uid = os.geteuid()
        self.control_group = control_group
        self.gid: int | None = None
        if control_group is not None:
            try:
                self.gid = grp.getgrnam(control_group).gr_gid
            except KeyError:
                raise InvalidSpec(
                    f"reconciler.control_group: no group named {control_group!r} on this host"
                ) from None

    def refusal(self, peer: Peer | None) -> str | None:
        """``None`` to admit; else the message a refused client reads."""
        if peer is None:
            return "cannot tell who is asking (no peer credentials on this connection)"
        if peer.uid in (0, self.uid):
            return None
        if self.gid is not None and (peer.gid == self.gid or self.gid in _groups_of(peer.pid)):
            return None
        allowed = f"root or {_name_of_user(self.uid)}"
        if self.control_group is not None:
            allowed += f", or members of group {self.control_group!r}"
        else:
            allowed += ' (set [reconciler] control_group = "GROUP" to admit a group)'
        who = f"user {_name_of_user(peer.uid)} (uid {peer.uid})"
        return f"{who} may not use the control API: only {allowed}"
