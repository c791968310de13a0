"""One full, synchronous read of the specs directory into a ``SpecSnapshot``.

``Scanner.scan()`` is the level-triggered core of the spec source: whatever
woke it (a file event, the periodic rescan, a direct call), it lists the whole
directory and decides every file afresh. ``SpecSource`` calls it, from a worker
thread while watching.

What it guarantees:

- Cheap when nothing changed: a file is re-read only when the ``stat`` of its
  resolved target differs from the last read, and re-parsed only when its
  bytes differ.
- Never a torn picture: after reading, it stats everything again; if anything
  moved in the meantime (a ConfigMap ``..data`` swap half-way through, a
  rename), it reads again, so one snapshot never mixes old and new files.
- Last-known-good: a file that cannot be taken now (invalid, unreadable,
  unsafe, a broken symlink) keeps the spec it last had, plus a problem entry.
  A removed file is forgotten.
- StrictModes: when required (by default: when running as root) a spec file,
  the directory holding its resolved target, or the specs directory that is
  owned by another user or writable by group/others is refused.

If the specs directory itself is missing, unreadable or unsafe, every spec is
kept at its last-known-good (none at all at start-up) with one problem under
``DIRECTORY_KEY``: a vanished volume or a botched deploy must not stop the
whole fleet. To stop everything, empty the directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from reconciler.errors import InvalidSpec
from reconciler.source.snapshot import DIRECTORY_KEY, LoadedSpec, SpecProblem, SpecSnapshot
from reconciler.spec import (
    collector_id_from_filename,
    is_ignored_filename,
    parse_spec,
    spec_hashes,
)
from reconciler.spec.order import after_problems

logger = logging.getLogger(__name__)

MAX_SPEC_BYTES = 1024 * 1024
"""A spec file is a few hundred bytes; anything this large is a mistake, not a spec."""

_RACY_NS = 2_000_000_000
"""A file changed this close to the moment we read it may have changed again
without its ``stat`` changing (coarse timestamps, same size): it is re-read on
every scan until it is older than this (git's "racily clean" rule). Two seconds
also covers file servers whose clocks run a little ahead."""

_MAX_ATTEMPTS = 4
"""Reads of the directory before a scan settles for what it saw while it kept changing."""
_LINKING_WAIT_SECONDS = 0.5  # for the kubelet to link the names of a new ``..data`` (scan)

StatKey = tuple[int, int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of a resolved file."""

WatchTarget = tuple[str, int, int]
"""A directory to watch, with its (st_dev, st_ino): a watch follows an inode, not a path."""


def _spec_id(name: str) -> str | None:
    """The collector id a directory entry stands for; ``None`` when it is no spec file.

    The rules are ``reconciler.spec``'s, shared with ``reconciler validate``.
    Raises ``InvalidSpec`` for a ``.toml`` whose stem is not a valid id: a
    misnamed spec must be reported, not silently skipped.
    """
    if is_ignored_filename(name):
        return None
    return collector_id_from_filename(_display(name))


def _display(name: str) -> str:
    """``name`` safe to print: undecodable bytes from ``os.listdir`` shown as escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _projection_leftover(path: Path) -> bool:
    """A ``name -> ..data/name`` link whose key left the ConfigMap: the kubelet swapped
    ``..data`` and removes such links next. The key is gone; the link is not a problem."""
    try:
        target = os.readlink(path)
    except OSError:
        return False
    return target == f"..data/{path.name}"


def _broken_link(path: Path) -> str:
    try:
        return f"broken symlink to {os.readlink(path)}"
    except OSError:
        return "broken symlink"


@dataclass(frozen=True, slots=True)
class _Failure:
    """A file that cannot be taken as it is now."""

    problems: tuple[str, ...]


_Outcome = LoadedSpec | _Failure


@dataclass(frozen=True, slots=True)
class _Read:
    """What we made of a file's bytes, and the ``stat`` they were read under."""

    key: StatKey
    digest: bytes
    outcome: _Outcome
    trusted: bool
    """The file was older than ``_RACY_NS`` when read: an equal ``key`` means equal bytes."""


@dataclass(frozen=True, slots=True)
class _Entry:
    collector_id: str | None
    outcome: _Outcome


@dataclass(slots=True)
class _Pass:
    """One read of the directory, not yet published."""

    directory_problem: str | None
    entries: dict[str, _Entry]
    fingerprints: dict[str, tuple[object, ...]]
    """Per candidate name, what ``stat`` said when it was read: compared after the pass."""
    watch_targets: tuple[WatchTarget, ...]


def _read_only(path: str | int) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class _Trust:
    """The StrictModes rule: who may have written what we are about to run as root."""

    def __init__(self, *, required: bool) -> None:
        self.required = required
        self._euid = os.geteuid()
        self._trusted_uids = {0, self._euid}
        self._refusing = (
            "refusing it while running as root"
            if self._euid == 0
            else "refusing it (safe permissions are required)"
        )

    def refusal(self, st: os.stat_result, *, what: str, path: str | int) -> str | None:
        """Why ``st`` may not be trusted, as ``"<what> is ...; refusing it ..."``; or ``None``.

        ``path`` (or an open fd) locates it: on a read-only mount nobody can
        write it, whatever its owner and mode say. A Kubernetes ConfigMap volume
        is such a mount, with directories the kubelet makes world-writable.
        """
        if not self.required or _read_only(path):
            return None
        if st.st_uid not in self._trusted_uids:
            owners = "root" if self._euid == 0 else f"root or uid {self._euid}"
            return f"{what} is owned by uid {st.st_uid}, not {owners}; {self._refusing}"
        writable = [
            who
            for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
            if st.st_mode & bit
        ]
        if writable:
            mode = stat.S_IMODE(st.st_mode)
            return (
                f"{what} is writable by {' and '.join(writable)} (mode {mode:04o}); "
                f"{self._refusing}"
            )
        return None


class Scanner:
    """Reads one specs directory; keeps the read cache and the last published snapshot.

    Thread-safe: ``scan`` runs under a lock, so a direct call and the watcher's
    scans never interleave.
    """

    def __init__(self, specs_dir: Path, *, require_safe_permissions: bool) -> None:
        self.specs_dir = specs_dir
        self._trust = _Trust(required=require_safe_permissions)
        self._lock = threading.Lock()
        self._cache: dict[str, _Read] = {}
        self._snapshot = SpecSnapshot()
        self._last_look: tuple[str | None, dict[str, tuple[object, ...]]] | None = None
        self._watch_targets: tuple[WatchTarget, ...] = ()
        self._waited_for: frozenset[str] = frozenset()

    @property
    def snapshot(self) -> SpecSnapshot:
        return self._snapshot

    @property
    def watch_targets(self) -> tuple[WatchTarget, ...]:
        """Directories whose events may change the next scan, as of the last scan.

        Before any scan: the specs directory (or, while it is missing, its nearest
        existing ancestor), so that a watch can be in place before the first scan.
        """
        if self._last_look is None:
            root = os.path.realpath(self.specs_dir)
            return self._targets(root, {}) or self._nearest_existing_ancestor()
        return self._watch_targets

    def scan(self, *, quick: bool = False) -> SpecSnapshot:
        """Read the whole directory; publish and return a new snapshot if anything differs.

        ``quick``: first a ``stat`` of each name only; when every one matches the
        last pass (and the directory's own problem is the same), nothing is read
        and the last snapshot stands. For the periodic safety-net rescan, where
        nearly always nothing changed: a full pass costs a ``realpath`` and
        several ``stat`` calls per file.
        """
        with self._lock:
            if quick and self._last_look is not None and self._observe() == self._last_look:
                return self._snapshot
            current = self._settled_pass()
            # The kubelet swaps ``..data``, then links the names it added: wait for those
            # links, or a new key comes as a second change (one wait per set of names).
            unlinked, waited = self._unlinked_keys(), self._waited_for
            self._waited_for = unlinked
            if unlinked and unlinked != waited:
                deadline = time.monotonic() + _LINKING_WAIT_SECONDS
                while self._unlinked_keys() and time.monotonic() < deadline:
                    time.sleep(0.002)  # the kubelet links right after the swap
                current = self._settled_pass()
            self._watch_targets = current.watch_targets
            self._last_look = (current.directory_problem, current.fingerprints)
            return self._publish(current)

    def _settled_pass(self) -> _Pass:
        current = self._read_pass()
        for _attempt in range(1, _MAX_ATTEMPTS):
            # Something moved while we read (a ConfigMap swap, a rename, a
            # delete): read again rather than publish a mix of old and new.
            if self._observe() == (current.directory_problem, current.fingerprints):
                break
            current = self._read_pass()
        return current

    def _unlinked_keys(self) -> frozenset[str]:
        """Spec names in a ConfigMap's ``..data`` that have no link beside it yet."""
        try:
            if not os.path.islink(self.specs_dir / "..data"):
                return frozenset()
            keys, present = os.listdir(self.specs_dir / "..data"), os.listdir(self.specs_dir)
        except OSError:
            return frozenset()
        unlinked = sorted(set(keys).difference(present))
        return frozenset(k for k, c in self._candidates(unlinked).items() if isinstance(c, str))

    # -- reading --------------------------------------------------------------------------

    def _list(self) -> tuple[str | None, list[str]]:
        """(problem with the directory, names in it)."""
        where = str(self.specs_dir)
        try:
            st = os.stat(self.specs_dir)
        except FileNotFoundError:
            return f"{where}: specs directory does not exist", []
        except OSError as exc:
            return f"{where}: cannot access the specs directory: {_reason(exc)}", []
        if not stat.S_ISDIR(st.st_mode):
            return f"{where}: is not a directory", []
        refusal = self._trust.refusal(st, what="the specs directory", path=str(self.specs_dir))
        if refusal is not None:
            return f"{where}: {refusal}; every spec in it keeps its last-known-good", []
        try:
            return None, sorted(os.listdir(self.specs_dir))
        except OSError as exc:
            return f"{where}: cannot list the specs directory: {_reason(exc)}", []

    def _candidates(self, names: list[str]) -> dict[str, str | InvalidSpec]:
        """Name -> collector id (or why the name is bad) for every name that is meant as a spec."""
        candidates: dict[str, str | InvalidSpec] = {}
        for name in names:
            try:
                collector_id = _spec_id(name)
            except InvalidSpec as exc:
                candidates[name] = exc
                continue
            if collector_id is not None:
                candidates[name] = collector_id
        return candidates

    def _fingerprint(self, name: str) -> tuple[object, ...]:
        path = self.specs_dir / name
        try:
            return ("file", *_key(os.stat(path)))
        except OSError as exc:
            try:
                return ("unresolved", exc.errno, *_key(os.lstat(path)))
            except OSError as lexc:
                return ("gone", lexc.errno)

    def _observe(self) -> tuple[str | None, dict[str, tuple[object, ...]]]:
        """A cheap second look (``stat`` only) to check that a pass saw one consistent state."""
        directory_problem, names = self._list()
        return directory_problem, {
            name: self._fingerprint(name) if isinstance(cid, str) else ("bad-name",)
            for name, cid in self._candidates(names).items()
        }

    def _read_pass(self) -> _Pass:
        directory_problem, names = self._list()
        if directory_problem is not None:
            return _Pass(directory_problem, {}, {}, self._nearest_existing_ancestor())
        entries: dict[str, _Entry] = {}
        fingerprints: dict[str, tuple[object, ...]] = {}
        target_dirs: dict[str, None] = {}
        checked_dirs: dict[str, str | None] = {}
        # Where a plain file's target is, whatever its name: one realpath per pass.
        real_dir = os.path.realpath(self.specs_dir)
        for name, cid in self._candidates(names).items():
            if isinstance(cid, InvalidSpec):
                entries[name] = _Entry(None, _Failure(tuple(cid.problems)))
                fingerprints[name] = ("bad-name",)
                continue
            outcome, fingerprints[name], target_dir = self._load(
                name, cid, checked_dirs, real_dir
            )
            if outcome is not None:
                entries[name] = _Entry(cid, outcome)
            if target_dir is not None:
                target_dirs[target_dir] = None
        # forget what we read of files that are gone, or a re-created file could match by stat
        self._cache = {name: read for name, read in self._cache.items() if name in entries}
        return _Pass(None, entries, fingerprints, self._targets(real_dir, target_dirs))

    def _load(
        self, name: str, collector_id: str, checked_dirs: dict[str, str | None], real_dir: str
    ) -> tuple[_Outcome | None, tuple[object, ...], str | None]:
        """(outcome, fingerprint, directory holding the resolved target) of one spec file.

        The outcome is ``None`` when the file vanished under us: it is absent,
        and the pass's second look notices the change. ``real_dir`` is the
        specs directory resolved: where an entry that is no symlink is.
        """
        path = os.path.join(self.specs_dir, name)
        shown = _display(name)
        try:
            st = os.lstat(path)
            linked = stat.S_ISLNK(st.st_mode)
            if linked:
                st = os.stat(path)
        except OSError as exc:
            fingerprint = self._fingerprint(name)
            if fingerprint[0] == "gone" or _projection_leftover(Path(path)):
                return None, fingerprint, None
            if isinstance(exc, FileNotFoundError):
                return _Failure((f"{shown}: {_broken_link(Path(path))}",)), fingerprint, None
            return _Failure((f"{shown}: cannot read: {_reason(exc)}",)), fingerprint, None
        fingerprint = ("file", *_key(st))
        target_dir = os.path.dirname(os.path.realpath(path)) if linked else real_dir
        refusal = self._refusal(shown, st, target_dir, checked_dirs)
        if refusal is not None:
            return _Failure((refusal,)), fingerprint, target_dir
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a special file"
            return _Failure((f"{shown}: not a regular file ({kind})",)), fingerprint, target_dir
        cached = self._cache.get(name)
        if cached is not None and cached.trusted and cached.key == _key(st):
            return cached.outcome, fingerprint, target_dir
        outcome, read_key = self._read(name, collector_id, cached)
        return outcome, ("file", *read_key) if read_key else fingerprint, target_dir

    def _refusal(
        self, shown: str, st: os.stat_result, target_dir: str, checked_dirs: dict[str, str | None]
    ) -> str | None:
        """StrictModes for one file: the resolved file, then the directory holding it."""
        refusal = self._trust.refusal(st, what="file", path=target_dir)
        if refusal is not None:
            return f"{shown}: {refusal}"
        if not self._trust.required:
            return None
        if target_dir not in checked_dirs:
            try:
                dir_st = os.stat(target_dir)
            except OSError as exc:
                checked_dirs[target_dir] = f"cannot check directory {target_dir}: {_reason(exc)}"
            else:
                checked_dirs[target_dir] = self._trust.refusal(
                    dir_st, what=f"directory {target_dir}", path=target_dir
                )
        dir_refusal = checked_dirs[target_dir]
        return None if dir_refusal is None else f"{shown}: {dir_refusal}"

    def _read(
        self, name: str, collector_id: str, cached: _Read | None
    ) -> tuple[_Outcome, StatKey | None]:
        """Read and (if the bytes changed) parse one file; cache the result."""
        shown = _display(name)
        path = os.path.join(self.specs_dir, name)
        read_at_ns = time.time_ns()
        try:
            # O_NONBLOCK: a FIFO swapped in after the stat must not hang the scan
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as file:
                st = os.fstat(file.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return _Failure((f"{shown}: not a regular file",)), None
                refusal = self._trust.refusal(st, what="file", path=file.fileno())
                if refusal is not None:
                    return _Failure((f"{shown}: {refusal}",)), None
                data = file.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            return _Failure((f"{shown}: cannot read: {_reason(exc)}",)), None
        if len(data) > MAX_SPEC_BYTES:
            too_large = f"{shown}: larger than {MAX_SPEC_BYTES} bytes; not a spec file"
            return _Failure((too_large,)), None
        digest = hashlib.sha256(data).digest()
        if cached is not None and cached.digest == digest:
            outcome = cached.outcome
        else:
            outcome = self._parse(data, name=name, collector_id=collector_id)
        key = _key(st)
        trusted = max(st.st_mtime_ns, st.st_ctime_ns) < read_at_ns - _RACY_NS
        self._cache[name] = _Read(key, digest, outcome, trusted)
        return outcome, key

    def _parse(self, data: bytes, *, name: str, collector_id: str) -> _Outcome:
        try:
            spec = parse_spec(data, filename=_display(name), collector_id=collector_id)
        except InvalidSpec as exc:
            return _Failure(tuple(exc.problems))
        except (RecursionError, ValueError) as exc:
            # parse_spec should only raise InvalidSpec, but one hostile file
            # (e.g. arrays nested 100 000 deep) must not take the source down
            return _Failure((f"{_display(name)}: cannot parse: {type(exc).__name__}: {exc}",))
        hashes = spec_hashes(spec)
        return LoadedSpec(
            collector_id=collector_id,
            path=self.specs_dir / name,
            spec=spec,
            spec_hash=hashes[0],
            process_hash=hashes[1],
        )

    # -- what to watch --------------------------------------------------------------------

    def _targets(self, root: str, target_dirs: Mapping[str, None]) -> tuple[WatchTarget, ...]:
        """The specs directory (``root``: resolved), plus every directory outside it
        holding a symlink's target.

        Targets below the specs directory are not watched: that is the
        ConfigMap's ``..<timestamp>`` directory, replaced as a whole by a swap
        that shows up as events in the specs directory itself.
        """
        targets: list[WatchTarget] = []
        for index, directory in enumerate((root, *target_dirs)):
            if index > 0 and Path(directory).is_relative_to(root):
                continue  # the specs directory itself (listed first), or below it
            try:
                st = os.stat(directory)
            except OSError:
                continue
            targets.append((directory, st.st_dev, st.st_ino))
        return tuple(targets)

    def _nearest_existing_ancestor(self) -> tuple[WatchTarget, ...]:
        """While the specs directory is missing, watch the closest ancestor that exists:
        its creation (or that of the next directory down) is an event there."""
        path = Path(os.path.abspath(self.specs_dir))
        for candidate in (path, *path.parents):
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                return ((str(candidate), st.st_dev, st.st_ino),)
        return ()

    # -- publishing -----------------------------------------------------------------------

    def _publish(self, current: _Pass) -> SpecSnapshot:
        old = self._snapshot
        now = time.time()
        specs: dict[str, LoadedSpec] = {}
        problems: dict[str, SpecProblem] = {}
        if current.directory_problem is not None:
            specs = dict(old.specs)
            problems = {name: p for name, p in old.problems.items() if name != DIRECTORY_KEY}
            problems[DIRECTORY_KEY] = _problem(
                old, DIRECTORY_KEY, None, (current.directory_problem,), now=now
            )
        for name, entry in current.entries.items():
            if isinstance(entry.outcome, LoadedSpec):
                specs[entry.outcome.collector_id] = entry.outcome
                continue
            problems[name] = _problem(
                old, name, entry.collector_id, entry.outcome.problems, now=now
            )
            if entry.collector_id is not None and entry.collector_id in old.specs:
                specs[entry.collector_id] = old.specs[entry.collector_id]
        self._check_after(current, old, specs, problems, now=now)
        if specs == old.specs and problems == old.problems:
            return old
        new = SpecSnapshot(
            specs=MappingProxyType(specs),
            problems=MappingProxyType(problems),
            generation=old.generation + 1,
        )
        _log_changes(old, new)
        self._snapshot = new
        return new


    def _check_after(
        self,
        current: _Pass,
        old: SpecSnapshot,
        specs: dict[str, LoadedSpec],
        problems: dict[str, SpecProblem],
        *,
        now: float,
    ) -> None:
        """A file whose ``after`` names no spec file or closes a cycle keeps its last good spec."""
        fresh = {
            entry.outcome.collector_id: name
            for name, entry in current.entries.items()
            if isinstance(entry.outcome, LoadedSpec) and entry.outcome.spec.after
        }
        if not fresh:
            return
        known = {entry.collector_id for entry in current.entries.values() if entry.collector_id}
        # Going back to a last-known-good spec can make another problem: look until none is new.
        while fresh:
            found = after_problems(
                {cid: loaded.spec.after for cid, loaded in specs.items()}, known=known
            )
            bad = {cid: found[cid] for cid in fresh.keys() & found.keys()}
            if not bad:
                return
            for cid, message in bad.items():
                name = fresh.pop(cid)
                shown = _display(name) + message[message.index(":") :]
                problems[name] = _problem(old, name, cid, (shown,), now=now)
                if cid in old.specs:
                    specs[cid] = old.specs[cid]
                else:
                    del specs[cid]


def _problem(
    old: SpecSnapshot,
    name: str,
    collector_id: str | None,
    problems: tuple[str, ...],
    *,
    now: float,
) -> SpecProblem:
    previous = old.problems.get(name)
    return SpecProblem(
        file=_display(name),
        collector_id=collector_id,
        message="; ".join(problems),
        problems=problems,
        since=previous.since if previous is not None else now,
    )


def _log_changes(old: SpecSnapshot, new: SpecSnapshot) -> None:
    for name, problem in new.problems.items():
        previous = old.problems.get(name)
        if previous is None or previous.message != problem.message:
            kept = problem.collector_id in new.specs
            logger.warning(
                "%s%s", problem.message, " (keeping the last-known-good spec)" if kept else ""
            )
    for name in old.problems.keys() - new.problems.keys():
        logger.info("%s: problem cleared", name)
