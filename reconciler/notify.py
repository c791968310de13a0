"""systemd readiness notification (sd_notify), without libsystemd.

``reconciler run`` under ``Type=notify`` tells systemd when the first full
reconcile is done (``READY=1``), when it reloads and when it stops. Outside
systemd (no ``$NOTIFY_SOCKET``) every call does nothing. Called by the daemon.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def sd_notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines to ``$NOTIFY_SOCKET``; ``False`` when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)
        return False
    return True
