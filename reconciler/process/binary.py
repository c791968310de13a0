"""Where a collector's executable is: DESIGN §2's resolution order.

The spec's ``binary_path`` (absolute, relative, or a bare name on PATH), then
the manager's ``collector_binaries[type]``, then ``/usr/local/bin/<type>``,
``/usr/bin/<type>``, ``./target/release/<type>``. Called by the manager before
every spawn, so a binary installed later is found on the next attempt.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from reconciler.errors import SpawnFailed

FALLBACK_DIRS = ("/usr/local/bin", "/usr/bin", "./target/release")


def _why_not(path: str) -> str | None:
    """``None`` when ``path`` is an executable file, else the reason it is not."""
    if not os.path.exists(path):
        return "not found"
    if not os.path.isfile(path):
        return "not a regular file"
    if not os.access(path, os.X_OK):
        return "not executable"
    return None


def _lookup(name: str, search_path: str | None) -> tuple[str | None, str]:
    if os.sep in name:
        path = os.path.abspath(name)
        reason = _why_not(path)
        return (path, path) if reason is None else (None, f"{path} ({reason})")
    found = shutil.which(name, path=search_path)
    if found is not None:
        return os.path.abspath(found), found
    return None, f"{name} (not found on PATH)"


def resolve_binary(
    *,
    collector_type: str,
    binary_path: str | None,
    collector_binaries: Mapping[str, str],
    search_path: str | None = None,
) -> str:
    """Return the absolute path of the executable to run, or raise ``SpawnFailed``."""
    named = binary_path if binary_path is not None else collector_binaries.get(collector_type)
    if named is not None:
        found, tried = _lookup(named, search_path)
        if found is None:
            raise SpawnFailed(f"binary for collector type {collector_type!r}: {tried}")
        return found
    tried_all = []
    for directory in FALLBACK_DIRS:
        candidate = os.path.abspath(os.path.join(directory, collector_type))
        reason = _why_not(candidate)
        if reason is None:
            return candidate
        tried_all.append(f"{candidate} ({reason})")
    raise SpawnFailed(
        f"no binary for collector type {collector_type!r}: set binary_path in the spec or "
        f"collector_binaries in the config; tried {', '.join(tried_all)}"
    )
