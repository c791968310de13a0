"""diskmond: space and inodes of mounted filesystems.

An example collector (console script ``reconciler-diskmond``, run by
``specs/diskmond.toml``). Each line::

    {"ts": "...", "collector": "diskmond", "host": "...",
     "filesystems": [{"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4",
                      "total_bytes": 0, "used_bytes": 0, "free_bytes": 0, "used_percent": 41.2,
                      "inodes_total": 0, "inodes_used": 0, "inodes_used_percent": 3.1}, ...]}

By default every mounted physical filesystem (each mount point once). With
``--path`` (repeatable), the filesystems holding those paths instead, each
entry with its ``path``. ``free_bytes`` and ``used_percent`` are as ``df``
shows them: what an unprivileged user may still use. A filesystem that cannot
be read this time is listed with an ``error`` rather than failing the sample.
"""

from __future__ import annotations

import argparse
import os

import psutil

from reconciler.collectors.runner import Collector, Record, run


def _usage(path: str) -> Record:
    usage = psutil.disk_usage(path)
    inodes = os.statvfs(path)
    inodes_used = inodes.f_files - inodes.f_ffree
    return {
        "total_bytes": usage.total,
        "used_bytes": usage.used,
        "free_bytes": usage.free,
        "used_percent": usage.percent,
        # Some filesystems (btrfs, overlay on some kernels) report no inode table: 0 of 0.
        "inodes_total": inodes.f_files,
        "inodes_used": inodes_used,
        "inodes_used_percent": (
            round(100 * inodes_used / inodes.f_files, 1) if inodes.f_files else None
        ),
    }


def _mounts(*, every: bool) -> list[Record]:
    """The mount table, each mount point once (the last mount over it wins, as in df)."""
    mounts: dict[str, Record] = {}
    for partition in psutil.disk_partitions(all=every):
        mounts[partition.mountpoint] = {
            "mountpoint": partition.mountpoint,
            "device": partition.device,
            "fstype": partition.fstype,
        }
    return list(mounts.values())


def _mount_holding(path: str, mounts: list[Record]) -> Record:
    # The longest mount point that contains the path is the filesystem holding it.
    real = os.path.realpath(path)
    holding = [
        mount
        for mount in mounts
        if real == mount["mountpoint"]
        or real.startswith(str(mount["mountpoint"]).rstrip("/") + "/")
    ]
    return max(holding, key=lambda mount: len(str(mount["mountpoint"])), default={})


def _with_usage(path: str, about: Record) -> Record:
    entry = dict(about)
    try:
        entry.update(_usage(path))
    except OSError as exc:
        entry["error"] = exc.strerror or str(exc)
    return entry


class DiskSampler:
    """Reads the mount table anew each sample: mounts come and go."""

    def __init__(self, *, paths: list[str]) -> None:
        self.paths = paths

    def sample(self) -> Record:
        if not self.paths:
            mounts = _mounts(every=False)
            return {"filesystems": [_with_usage(str(m["mountpoint"]), m) for m in mounts]}
        mounts = _mounts(every=True)
        return {
            "filesystems": [
                _with_usage(path, {"path": path, **_mount_holding(path, mounts)})
                for path in self.paths
            ]
        }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="PATH",
        help="report the filesystem holding PATH (repeatable; default: every mounted one)",
    )


def _create_sampler(options: argparse.Namespace) -> DiskSampler:
    # Absolute, so that the mount lookup and the output do not depend on the working dir.
    return DiskSampler(paths=[os.path.abspath(path) for path in options.path])


COLLECTOR = Collector(
    name="diskmond",
    description=__doc__ or "",
    create_sampler=_create_sampler,
    add_arguments=_add_arguments,
    needs_baseline=False,
)


def main(argv: list[str] | None = None) -> int:
    """Console script ``reconciler-diskmond``."""
    return run(COLLECTOR, argv)


if __name__ == "__main__":
    raise SystemExit(main())
