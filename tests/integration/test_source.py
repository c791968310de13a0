"""The spec source against real directories: real writes, renames, symlink swaps, modes.

Synchronisation is always "wait for a snapshot that satisfies a condition, with
a deadline" (``Watching.until``); the only timed waits are the short windows in
which a test asserts that *no further* snapshot arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from reconciler.source import DIRECTORY_KEY, SpecSnapshot, SpecSource
from reconciler.source import scan as scan_module
from reconciler.spec import parse_spec, process_hash, spec_hash

DEADLINE_SECONDS = 5.0
QUIET_SECONDS = 0.5
"""How long a test watches for snapshots that must not come."""

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown, setfsuid")


def spec_text(*args: str, kind: str = "procmond") -> str:
    return f'type = "{kind}"\nargs = {json.dumps(list(args))}\n'


def write(path: Path, text: str | bytes, *, mode: int = 0o644) -> Path:
    """Write in place, as a person with an editor that does not rename does."""
    data = text.encode() if isinstance(text, str) else text
    with open(path, "wb") as file:
        file.write(data)
    path.chmod(mode)
    return path


def write_atomically(path: Path, text: str, *, temp_name: str | None = None) -> None:
    """Write a temporary file next to ``path`` and rename it over (vim, ansible, git)."""
    temp = path.with_name(temp_name or f".{path.name}.tmp")
    write(temp, text)
    os.rename(temp, path)


def args_of(snapshot: SpecSnapshot, collector_id: str) -> tuple[str, ...] | None:
    loaded = snapshot.specs.get(collector_id)
    return None if loaded is None else loaded.spec.args


class Watching:
    """Runs ``SpecSource.watch()`` in a task and queues what it yields."""

    def __init__(self, source: SpecSource) -> None:
        self.source = source
        self.seen: list[SpecSnapshot] = []
        self._queue: asyncio.Queue[SpecSnapshot] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with contextlib.aclosing(self.source.watch(stop_event=self._stop)) as stream:
            async for snapshot in stream:
                self.seen.append(snapshot)
                self._queue.put_nowait(snapshot)

    async def next(self, *, timeout: float = DEADLINE_SECONDS) -> SpecSnapshot:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def until(
        self, predicate: Callable[[SpecSnapshot], bool], *, timeout: float = DEADLINE_SECONDS
    ) -> SpecSnapshot:
        """The next yielded snapshot satisfying ``predicate``; fails after ``timeout``."""

        async def find() -> SpecSnapshot:
            while True:
                snapshot = await self._queue.get()
                if predicate(snapshot):
                    return snapshot

        return await asyncio.wait_for(find(), timeout)

    async def quiet(self, seconds: float = QUIET_SECONDS) -> list[SpecSnapshot]:
        """Every snapshot yielded within the next ``seconds`` (expected: none)."""
        extra: list[SpecSnapshot] = []
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                extra.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return extra

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, DEADLINE_SECONDS)


@pytest.fixture
async def watching() -> AsyncIterator[Callable[[SpecSource], Watching]]:
    started: list[Watching] = []

    def start(source: SpecSource) -> Watching:
        started.append(Watching(source))
        return started[-1]

    yield start
    for watch in started:
        await watch.stop()


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    directory = tmp_path / "specs"
    directory.mkdir(mode=0o755)
    return directory


# --- scanning -------------------------------------------------------------------------


def test_initial_scan_loads_every_spec_with_its_hashes(specs: Path) -> None:
    write(specs / "web.toml", spec_text("--port", "80"))
    write(specs / "db.toml", spec_text(kind="dbmond"))

    snapshot = SpecSource(specs).scan()

    assert set(snapshot.specs) == {"web", "db"}
    assert dict(snapshot.problems) == {}
    web = snapshot.specs["web"]
    expected = parse_spec(
        (specs / "web.toml").read_bytes(), filename="web.toml", collector_id="web"
    )
    assert web.collector_id == "web"
    assert web.path == specs / "web.toml"
    assert web.spec == expected
    assert web.spec_hash == spec_hash(expected)
    assert web.process_hash == process_hash(expected)
    assert snapshot.valid("web")
    assert snapshot.generation == 1


def test_scan_catches_changes_without_watching(specs: Path) -> None:
    source = SpecSource(specs)
    write(specs / "web.toml", spec_text("one"))
    first = source.scan()

    write(specs / "web.toml", spec_text("two"))
    write(specs / "db.toml", spec_text())
    second = source.scan()
    (specs / "web.toml").unlink()
    third = source.scan()

    assert args_of(first, "web") == ("one",)
    assert args_of(second, "web") == ("two",) and "db" in second.specs
    assert set(third.specs) == {"db"}
    assert first.generation < second.generation < third.generation
    assert source.snapshot is third


def test_scan_reparses_nothing_when_nothing_changed(
    specs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []

    def counting_parse_spec(data: bytes, *, filename: str, collector_id: str):  # type: ignore[no-untyped-def]
        parsed.append(filename)
        return parse_spec(data, filename=filename, collector_id=collector_id)

    monkeypatch.setattr(scan_module, "parse_spec", counting_parse_spec)
    for name in ("a", "b", "c"):
        write(specs / f"{name}.toml", spec_text(name))
    write(specs / "bad.toml", "nonsense = ")
    source = SpecSource(specs)

    first = source.scan()
    assert sorted(parsed) == ["a.toml", "b.toml", "bad.toml", "c.toml"]
    second = source.scan()
    assert sorted(parsed) == ["a.toml", "b.toml", "bad.toml", "c.toml"]
    assert second is first

    write(specs / "b.toml", spec_text("changed"))
    third = source.scan()
    assert sorted(parsed) == ["a.toml", "b.toml", "b.toml", "bad.toml", "c.toml"]
    assert args_of(third, "b") == ("changed",)


def test_scan_reads_nothing_for_files_older_than_the_racy_window(
    specs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files written just now are re-read (not re-parsed) on every scan, because
    # an in-place rewrite within one timestamp tick is invisible to stat. Once
    # they are older than the racy window, an unchanged stat means no read.
    monkeypatch.setattr(scan_module, "_RACY_NS", 0)
    reads: list[str] = []
    real_read = scan_module.Scanner._read

    def counting_read(self, name, collector_id, cached):  # type: ignore[no-untyped-def]
        reads.append(name)
        return real_read(self, name, collector_id, cached)

    monkeypatch.setattr(scan_module.Scanner, "_read", counting_read)
    write(specs / "a.toml", spec_text())
    source = SpecSource(specs)
    source.scan()
    source.scan()
    source.scan()
    assert reads == ["a.toml"]


def test_same_size_rewrite_is_seen_where_timestamps_are_coarse(
    specs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a file system with coarse timestamps, an in-place rewrite of the same
    # size within one tick leaves stat unchanged. Simulate it by blinding the
    # stat key to time: a file this fresh must be read again anyway.
    monkeypatch.setattr(scan_module, "_key", lambda st: (st.st_dev, st.st_ino, st.st_size, 0, 0))
    write(specs / "web.toml", spec_text("one"))
    source = SpecSource(specs)
    source.scan()

    write(specs / "web.toml", spec_text("two"))

    assert args_of(source.scan(), "web") == ("two",)


def test_a_swap_during_a_scan_is_never_published_half_done(
    specs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubelet_write(specs, {"a.toml": spec_text("a1"), "b.toml": spec_text("b1")})
    source = SpecSource(specs)
    assert {k: v.spec.args for k, v in source.scan().specs.items()} == {
        "a": ("a1",),
        "b": ("b1",),
    }
    real_load = scan_module.Scanner._load
    swaps = []

    def load_then_swap(self, name, *rest):  # type: ignore[no-untyped-def]
        loaded = real_load(self, name, *rest)
        if not swaps:  # right after a.toml was read, before b.toml is
            swaps.append(name)
            kubelet_write(specs, {"a.toml": spec_text("a2"), "b.toml": spec_text("b2")})
        return loaded

    monkeypatch.setattr(scan_module.Scanner, "_load", load_then_swap)
    snapshot = source.scan()

    assert swaps == ["a.toml"]
    assert {k: v.spec.args for k, v in snapshot.specs.items()} == {"a": ("a2",), "b": ("b2",)}
    assert dict(snapshot.problems) == {}


def test_ignored_names_are_neither_specs_nor_problems(specs: Path) -> None:
    write(specs / "web.toml", spec_text())
    for name in (
        ".web.toml.swp",
        "web.toml~",
        ".hidden.toml",
        "#web.toml#",
        "web.toml.tmp",
        "notes.txt",
        "README",
    ):
        write(specs / name, "not toml at all = = =")
    (specs / "subdir").mkdir()

    snapshot = SpecSource(specs).scan()

    assert set(snapshot.specs) == {"web"}
    assert dict(snapshot.problems) == {}


def test_bad_file_name_is_a_problem_without_an_id(specs: Path) -> None:
    write(specs / "Web.toml", spec_text())

    snapshot = SpecSource(specs).scan()

    assert dict(snapshot.specs) == {}
    problem = snapshot.problems["Web.toml"]
    assert problem.collector_id is None
    assert problem.message.startswith("Web.toml: file name:")


def test_invalid_first_version_gives_a_problem_and_nothing_to_run(specs: Path) -> None:
    write(specs / "web.toml", 'type = "procmond"\nargz = []\n')

    snapshot = SpecSource(specs).scan()

    assert "web" not in snapshot.specs
    problem = snapshot.problems["web.toml"]
    assert problem.collector_id == "web"
    assert problem.file == "web.toml"
    assert problem.message.startswith("web.toml: ")
    assert "argz" in problem.message
    assert problem.message == "; ".join(problem.problems)
    assert snapshot.problem_for("web") is problem
    assert not snapshot.valid("web")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _broken_symlink(path: Path) -> None:
    path.symlink_to("nowhere.conf")


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)


def _not_utf8(path: Path) -> None:
    write(path, b'type = "procmond"\nargs = ["\xff\xfe"]\n')


def _nested_too_deep(path: Path) -> None:
    write(path, spec_text() + "deep = " + "[" * 100_000 + "]" * 100_000 + "\n")


def _too_large(path: Path) -> None:
    write(path, spec_text() + "# " + "x" * scan_module.MAX_SPEC_BYTES + "\n")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(_directory, "not a regular file (a directory)", id="directory"),
        pytest.param(_fifo, "not a regular file (a special file)", id="fifo"),
        pytest.param(_broken_symlink, "broken symlink to nowhere.conf", id="broken-symlink"),
        pytest.param(_symlink_loop, "cannot read: Too many levels of symbolic links", id="loop"),
        pytest.param(_not_utf8, "not UTF-8", id="not-utf8"),
        pytest.param(_too_large, "larger than", id="too-large"),
        pytest.param(_nested_too_deep, "odd.toml: ", id="nested-too-deep"),
    ],
)
def test_files_that_cannot_be_read_are_problems_not_crashes(
    specs: Path, make: Callable[[Path], None], reason: str
) -> None:
    write(specs / "good.toml", spec_text())
    make(specs / "odd.toml")

    snapshot = SpecSource(specs).scan()

    assert set(snapshot.specs) == {"good"}
    assert set(snapshot.problems) == {"odd.toml"}
    assert reason in snapshot.problems["odd.toml"].message
    assert snapshot.problems["odd.toml"].message.startswith("odd.toml: ")


def _with_fs_uid(uid: int, function: Callable[[], SpecSnapshot]) -> SpecSnapshot:
    """Run ``function`` in a thread whose file-system uid is ``uid``.

    Root reads anything; setfsuid(2) is per thread and drops the thread's
    permission-bypassing capabilities, so the kernel really says EACCES.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    outcome: list[SpecSnapshot | BaseException] = []

    def run() -> None:
        libc.setfsgid(uid)
        libc.setfsuid(uid)
        try:
            outcome.append(function())
        except BaseException as exc:
            outcome.append(exc)
        finally:
            libc.setfsuid(0)
            libc.setfsgid(0)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@root_only
def test_unreadable_file_is_a_problem() -> None:
    # not under tmp_path: pytest keeps that private to root, and nobody must reach the dir
    directory = Path(tempfile.mkdtemp(prefix="reconciler-source-"))
    try:
        directory.chmod(0o755)
        write(directory / "web.toml", spec_text())
        write(directory / "secret.toml", spec_text(), mode=0o600)
        source = SpecSource(directory, require_safe_permissions=False)

        snapshot = _with_fs_uid(65534, source.scan)
    finally:
        shutil.rmtree(directory)

    assert set(snapshot.specs) == {"web"}
    assert {k: p.message for k, p in snapshot.problems.items()} == {
        "secret.toml": "secret.toml: cannot read: Permission denied"
    }


# --- StrictModes ----------------------------------------------------------------------


def _chmod_file(specs: Path, other: Path) -> str:
    (specs / "web.toml").chmod(0o666)
    return (
        "web.toml: file is writable by group and others (mode 0666);"
        " refusing it while running as root"
    )


def _chmod_file_group(specs: Path, other: Path) -> str:
    (specs / "web.toml").chmod(0o664)
    return "web.toml: file is writable by group (mode 0664); refusing it while running as root"


def _chown_file(specs: Path, other: Path) -> str:
    os.chown(specs / "web.toml", 65534, 65534)
    return "web.toml: file is owned by uid 65534, not root; refusing it while running as root"


def _symlink_into_unsafe_directory(specs: Path, other: Path) -> str:
    write(other / "web.toml", (specs / "web.toml").read_text())
    os.replace(_new_symlink(specs, other / "web.toml"), specs / "web.toml")
    other.chmod(0o777)
    return f"web.toml: directory {other} is writable by group and others (mode 0777)"


def _symlink_to_foreign_file(specs: Path, other: Path) -> str:
    write(other / "web.toml", (specs / "web.toml").read_text())
    os.chown(other / "web.toml", 65534, 65534)
    os.replace(_new_symlink(specs, other / "web.toml"), specs / "web.toml")
    return "web.toml: file is owned by uid 65534, not root"


def _new_symlink(specs: Path, target: Path) -> Path:
    link = specs / ".web.toml.link"
    link.symlink_to(target)
    return link


@root_only
@pytest.mark.parametrize(
    "make_unsafe",
    [
        pytest.param(_chmod_file, id="world-writable"),
        pytest.param(_chmod_file_group, id="group-writable"),
        pytest.param(_chown_file, id="owned-by-nobody"),
        pytest.param(_symlink_into_unsafe_directory, id="symlink-target-dir-writable"),
        pytest.param(_symlink_to_foreign_file, id="symlink-target-owned-by-nobody"),
    ],
)
def test_unsafe_spec_file_is_refused_keeping_last_known_good(
    specs: Path, tmp_path: Path, make_unsafe: Callable[[Path, Path], str]
) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir(mode=0o755)
    write(specs / "web.toml", spec_text("good"))
    source = SpecSource(specs)
    good = source.scan()

    expected = make_unsafe(specs, other)
    # what an attacker would have written, had they been able to
    target = (specs / "web.toml").resolve()
    with open(target, "w") as file:
        file.write(spec_text("evil"))
    refused = source.scan()

    assert refused.specs["web"] == good.specs["web"]
    assert expected in refused.problems["web.toml"].message
    assert not refused.valid("web")


@root_only
def test_unsafe_first_version_is_never_loaded_and_fixing_it_clears_the_problem(
    specs: Path,
) -> None:
    write(specs / "web.toml", spec_text("x"), mode=0o646)
    source = SpecSource(specs)

    refused = source.scan()
    assert "web" not in refused.specs
    assert "writable by others (mode 0646)" in refused.problems["web.toml"].message

    (specs / "web.toml").chmod(0o644)
    fixed = source.scan()
    assert args_of(fixed, "web") == ("x",)
    assert dict(fixed.problems) == {}


@root_only
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(lambda d: d.chmod(0o777), "writable by group and others", id="mode-0777"),
        pytest.param(lambda d: d.chmod(0o1777), "writable by group and others", id="sticky"),
        pytest.param(lambda d: os.chown(d, 65534, 65534), "owned by uid 65534", id="owner"),
    ],
)
def test_unsafe_specs_directory_freezes_every_spec(
    specs: Path, change: Callable[[Path], None], reason: str
) -> None:
    write(specs / "web.toml", spec_text("good"))
    source = SpecSource(specs)
    good = source.scan()

    change(specs)
    write(specs / "web.toml", spec_text("evil"))
    write(specs / "new.toml", spec_text("evil"))
    refused = source.scan()

    assert dict(refused.specs) == dict(good.specs)
    problem = refused.problems[DIRECTORY_KEY]
    assert problem.message.startswith(f"{specs}: the specs directory is ")
    assert reason in problem.message
    assert not refused.valid("web")


@root_only
def test_safe_permissions_can_be_switched_off(specs: Path) -> None:
    write(specs / "web.toml", spec_text(), mode=0o666)
    os.chown(specs / "web.toml", 65534, 65534)

    snapshot = SpecSource(specs, require_safe_permissions=False).scan()

    assert "web" in snapshot.specs
    assert dict(snapshot.problems) == {}


# --- watching -------------------------------------------------------------------------


async def test_watch_yields_the_current_snapshot_first(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    write(specs / "web.toml", spec_text())
    watch = watching(SpecSource(specs))

    first = await watch.next()

    assert set(first.specs) == {"web"}
    assert await watch.quiet() == []


async def test_edit_is_seen(specs: Path, watching: Callable[[SpecSource], Watching]) -> None:
    write(specs / "web.toml", spec_text("old"))
    watch = watching(SpecSource(specs))
    await watch.until(lambda s: args_of(s, "web") == ("old",))

    write(specs / "web.toml", spec_text("new"))

    seen = await watch.until(lambda s: args_of(s, "web") == ("new",) and not s.problems)
    assert seen.valid("web")


async def test_new_file_and_delete_are_seen(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    write(specs / "web.toml", spec_text())
    watch = watching(SpecSource(specs))
    await watch.until(lambda s: "web" in s.specs)

    write_atomically(specs / "db.toml", spec_text())
    await watch.until(lambda s: set(s.specs) == {"web", "db"})
    (specs / "web.toml").unlink()

    gone = await watch.until(lambda s: set(s.specs) == {"db"})
    assert dict(gone.problems) == {}


@pytest.mark.parametrize(
    "temp_name",
    [
        pytest.param(".web.toml.tmp", id="hidden-temp"),
        pytest.param("web.toml.4913~", id="tilde-temp"),
        pytest.param(".web.toml.swp", id="swap-name"),
    ],
)
async def test_write_temp_then_rename_is_one_change(
    specs: Path, watching: Callable[[SpecSource], Watching], temp_name: str
) -> None:
    write(specs / "web.toml", spec_text("old"))
    watch = watching(SpecSource(specs))
    first = await watch.next()

    write_atomically(specs / "web.toml", spec_text("new"), temp_name=temp_name)

    changed = await watch.next()
    assert args_of(changed, "web") == ("new",)
    assert dict(changed.problems) == {}
    assert changed.generation == first.generation + 1
    assert await watch.quiet() == []


async def test_ignored_names_do_not_make_snapshots(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    write(specs / "web.toml", spec_text())
    watch = watching(SpecSource(specs))
    await watch.next()

    for name in (".web.toml.swp", "web.toml~", ".#web.toml", "#web.toml#", "notes.txt"):
        write(specs / name, "garbage = = =")
    write_atomically(specs / "db.toml", spec_text())

    # the first snapshot after the initial one is the one with db: the junk changed nothing
    after = await watch.next()
    assert set(after.specs) == {"web", "db"}
    assert dict(after.problems) == {}


async def test_invalid_edit_keeps_last_known_good_until_fixed(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    write(specs / "web.toml", spec_text("good"))
    watch = watching(SpecSource(specs))
    good = await watch.until(lambda s: "web" in s.specs)
    before = time.time()

    write_atomically(specs / "web.toml", 'type = "procmond"\nargs = "not a list"\n')
    broken = await watch.until(lambda s: "web.toml" in s.problems)

    assert broken.specs["web"] == good.specs["web"]
    problem = broken.problems["web.toml"]
    assert problem.message.startswith("web.toml: args")
    assert before <= problem.since <= time.time()

    # another bad edit: a new message, but the file has been in trouble since the first
    write_atomically(specs / "web.toml", 'type = "procmond"\nbogus = 1\n')
    still = await watch.until(lambda s: "bogus" in s.problems["web.toml"].message)
    assert still.problems["web.toml"].since == problem.since
    assert still.specs["web"] == good.specs["web"]

    write_atomically(specs / "web.toml", spec_text("fixed"))
    fixed = await watch.until(lambda s: "web.toml" not in s.problems)
    assert args_of(fixed, "web") == ("fixed",)
    assert fixed.valid("web")


async def test_deleting_a_broken_file_forgets_it(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    write(specs / "web.toml", spec_text())
    watch = watching(SpecSource(specs))
    await watch.until(lambda s: "web" in s.specs)
    write_atomically(specs / "web.toml", "type = ")
    await watch.until(lambda s: "web.toml" in s.problems and "web" in s.specs)

    (specs / "web.toml").unlink()

    gone = await watch.until(lambda s: "web" not in s.specs)
    assert dict(gone.problems) == {}


async def test_burst_of_rewrites_coalesces_to_the_final_content(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    write(specs / "web.toml", spec_text("00"))
    watch = watching(SpecSource(specs))
    await watch.next()

    for i in range(1, 31):
        # in place and same size: only stat's timestamps (or nothing) tell them apart
        write(specs / "web.toml", spec_text(f"{i:02d}"))
        await asyncio.sleep(1 / 30)  # the writer's pace, not synchronisation

    final = await watch.until(lambda s: args_of(s, "web") == ("30",) and not s.problems)
    during = watch.seen[1:]
    assert len(during) <= 10, [args_of(s, "web") for s in during]
    assert during[-1] is final
    assert await watch.quiet() == []


# --- symlinks and ConfigMaps ----------------------------------------------------------


def kubelet_write(
    directory: Path,
    payload: dict[str, str],
    *,
    pause_seconds: float = 0.0,
    link_pause_seconds: float = 0.0,
) -> None:
    """Project ``payload`` into ``directory`` as the kubelet's AtomicWriter does.

    New timestamped directory with the files; ``..data_tmp`` symlink to it,
    renamed over ``..data``; user-visible ``name -> ..data/name`` symlinks for
    new names; stale ones removed; old timestamped directory removed.
    """
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    timestamped = Path(
        tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S."), dir=directory)
    )
    timestamped.chmod(0o755)
    for name, text in payload.items():
        write(timestamped / name, text)
    if pause_seconds:
        time.sleep(pause_seconds)  # a slow kubelet: the new directory sits there, unlinked
    (directory / "..data_tmp").symlink_to(timestamped.name)
    os.rename(directory / "..data_tmp", data)
    if link_pause_seconds:
        time.sleep(link_pause_seconds)  # a slow kubelet: ..data swapped, new names unlinked
    for name in payload:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if old is not None:
        for name in os.listdir(directory / old):
            if name not in payload:
                (directory / name).unlink()
        shutil.rmtree(directory / old)


@pytest.mark.parametrize(
    ("new_args", "pause_seconds", "link_pause_seconds"),
    [
        pytest.param({"a": "a2", "b": "b2"}, 0.0, 0.0, id="contents"),
        pytest.param({"a": "a2", "b": "b2"}, 0.1, 0.0, id="slow-kubelet"),
        pytest.param({"a": "a2", "c": "c2"}, 0.0, 0.0, id="add-and-remove"),
        # The scan between the swap and the new name's link: c must not come later.
        pytest.param({"a": "a2", "c": "c2"}, 0.0, 0.1, id="add-and-remove-slow-links"),
    ],
)
async def test_configmap_swap_is_exactly_one_change(
    specs: Path,
    watching: Callable[[SpecSource], Watching],
    new_args: dict[str, str],
    pause_seconds: float,
    link_pause_seconds: float,
) -> None:
    kubelet_write(specs, {"a.toml": spec_text("a1"), "b.toml": spec_text("b1")})
    watch = watching(SpecSource(specs))
    first = await watch.next()
    assert {k: v.spec.args for k, v in first.specs.items()} == {"a": ("a1",), "b": ("b1",)}

    payload = {f"{cid}.toml": spec_text(arg) for cid, arg in new_args.items()}
    await asyncio.to_thread(
        kubelet_write,
        specs,
        payload,
        pause_seconds=pause_seconds,
        link_pause_seconds=link_pause_seconds,
    )

    changed = await watch.next()
    assert {k: v.spec.args for k, v in changed.specs.items()} == {
        cid: (arg,) for cid, arg in new_args.items()
    }
    assert dict(changed.problems) == {}
    assert all(v.path == specs / f"{k}.toml" for k, v in changed.specs.items())
    assert await watch.quiet() == []


async def test_edit_behind_a_symlink_to_another_directory_is_seen(
    specs: Path, tmp_path: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir(mode=0o755)
    write(checkout / "web.toml", spec_text("old"))
    (specs / "web.toml").symlink_to(checkout / "web.toml")
    watch = watching(SpecSource(specs))
    first = await watch.next()
    assert first.specs["web"].path == specs / "web.toml"

    write_atomically(checkout / "web.toml", spec_text("new"))  # as `git pull` does

    await watch.until(lambda s: args_of(s, "web") == ("new",))


async def test_periodic_rescan_catches_what_no_watch_sees(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    # Symlink targets below the specs directory are not watched (that is the
    # ConfigMap's timestamped directory); an in-place edit there is found by the
    # periodic rescan alone.
    (specs / "sub").mkdir(mode=0o755)
    write(specs / "sub" / "web.toml", spec_text("old"))
    (specs / "web.toml").symlink_to("sub/web.toml")
    watch = watching(SpecSource(specs, rescan_interval_seconds=0.2))
    await watch.until(lambda s: args_of(s, "web") == ("old",))

    write(specs / "sub" / "web.toml", spec_text("new"))

    await watch.until(lambda s: args_of(s, "web") == ("new",))


# --- the directory itself -------------------------------------------------------------


async def test_missing_directory_is_a_problem_until_it_appears(
    tmp_path: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    specs = tmp_path / "etc" / "reconciler" / "specs"
    watch = watching(SpecSource(specs))

    missing = await watch.next()
    assert dict(missing.specs) == {}
    assert missing.problems[DIRECTORY_KEY].message == f"{specs}: specs directory does not exist"

    specs.mkdir(parents=True)
    write_atomically(specs / "web.toml", spec_text())

    found = await watch.until(lambda s: "web" in s.specs)
    assert dict(found.problems) == {}


async def test_vanished_directory_keeps_last_known_good_and_comes_back(
    specs: Path, watching: Callable[[SpecSource], Watching]
) -> None:
    write(specs / "web.toml", spec_text("one"))
    watch = watching(SpecSource(specs))
    good = await watch.until(lambda s: "web" in s.specs)

    shutil.rmtree(specs)
    vanished = await watch.until(lambda s: DIRECTORY_KEY in s.problems)
    assert dict(vanished.specs) == dict(good.specs)

    replacement = specs.with_name("specs.new")
    replacement.mkdir(mode=0o755)
    write(replacement / "web.toml", spec_text("two"))
    os.rename(replacement, specs)

    back = await watch.until(lambda s: args_of(s, "web") == ("two",) and not s.problems)
    assert back.valid("web")


async def test_stop_event_ends_the_watch(specs: Path) -> None:
    stop = asyncio.Event()
    first = asyncio.Event()
    source = SpecSource(specs)

    async def consume() -> None:
        async for _snapshot in source.watch(stop_event=stop):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), DEADLINE_SECONDS)
    stop.set()
    await asyncio.wait_for(task, DEADLINE_SECONDS)


@root_only
def test_a_read_only_mount_is_trusted_whatever_its_modes(tmp_path: Path) -> None:
    """A ConfigMap volume: world-writable modes on a read-only mount nobody can write."""
    backing, mount = tmp_path / "backing", tmp_path / "mount"
    backing.mkdir(mode=0o777)
    backing.chmod(0o777)
    mount.mkdir()
    write(backing / "web.toml", spec_text("good"), mode=0o666)
    os.chown(backing / "web.toml", 65534, 65534)
    subprocess.run(["mount", "--bind", str(backing), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        snapshot = SpecSource(mount).scan()
        assert set(snapshot.specs) == {"web"}, snapshot.problems
        assert not snapshot.problems
        # The same files on the writable side stay refused.
        refused = SpecSource(backing).scan()
        assert "." in refused.problems and not refused.specs
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_quick_rescan_reads_nothing_when_nothing_changed_and_sees_any_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.toml", spec_text("--one"))
    scanner = scan_module.Scanner(tmp_path, require_safe_permissions=False)
    first = scanner.scan()
    assert args_of(first, "a") == ("--one",)

    reads: list[str] = []
    real_pass = scanner._read_pass

    def counting_pass() -> object:
        reads.append("pass")
        return real_pass()

    monkeypatch.setattr(scanner, "_read_pass", counting_pass)
    assert scanner.scan(quick=True) is first
    assert reads == [], "nothing changed: stat only, no read pass"

    write_atomically(tmp_path / "a.toml", spec_text("--two"))  # a new inode
    assert args_of(scanner.scan(quick=True), "a") == ("--two",)
    write(tmp_path / "b.toml", spec_text("--b"))
    assert args_of(scanner.scan(quick=True), "b") == ("--b",)
    (tmp_path / "b.toml").unlink()
    assert "b" not in scanner.scan(quick=True).specs
    assert reads == ["pass"] * 3


# -- after across files ------------------------------------------------------------------


def after_text(*after: str, arg: str = "1") -> str:
    return spec_text(arg) + f"after = {json.dumps(list(after))}\n"


def test_an_unknown_id_in_after_keeps_the_last_known_good_and_names_it(specs: Path) -> None:
    write(specs / "a.toml", spec_text())
    write(specs / "b.toml", after_text("a"))
    source = SpecSource(specs)
    first = source.scan()
    assert first.specs["b"].spec.after == ("a",) and not first.problems
    write_atomically(specs / "b.toml", after_text("a", "zz", arg="2"))
    second = source.scan()
    assert second.problems["b.toml"].message == 'b.toml: after: no spec file for "zz"'
    assert args_of(second, "b") == ("1",), "the last-known-good spec stays"
    # A brand-new file with an unknown id has nothing to keep.
    write(specs / "c.toml", after_text("nope"))
    third = source.scan()
    assert "c" not in third.specs and "nope" in third.problems["c.toml"].message
    # An id whose file exists but is invalid is known: it has a spec (or will have).
    write(specs / "d.toml", "type = \n")
    write_atomically(specs / "c.toml", after_text("d"))
    fourth = source.scan()
    assert "c.toml" not in fourth.problems and fourth.specs["c"].spec.after == ("d",)


def test_a_cycle_is_a_problem_of_each_file_on_it(specs: Path) -> None:
    write(specs / "a.toml", after_text("c"))
    write(specs / "b.toml", after_text("a"))
    write(specs / "c.toml", after_text())
    write(specs / "free.toml", after_text("a"))
    source = SpecSource(specs)
    assert not source.scan().problems
    write_atomically(specs / "c.toml", after_text("b", arg="2"))
    snapshot = source.scan()
    cycle = "cycle a -> c -> b -> a"
    assert {name: p.message for name, p in snapshot.problems.items()} == {
        "a.toml": f"a.toml: after: {cycle}",
        "b.toml": f"b.toml: after: {cycle}",
        "c.toml": f"c.toml: after: {cycle}",
    }
    # Only c changed: a and b keep their (same) specs, c its last-known-good.
    assert args_of(snapshot, "c") == ("1",) and snapshot.specs["c"].spec.after == ()
    assert set(snapshot.specs) == {"a", "b", "c", "free"}
    write_atomically(specs / "c.toml", after_text(arg="3"))
    fixed = source.scan()
    assert not fixed.problems and args_of(fixed, "c") == ("3",)


def test_a_self_reference_is_refused_by_the_file_alone(specs: Path) -> None:
    write(specs / "a.toml", after_text("a"))
    snapshot = SpecSource(specs).scan()
    assert snapshot.problems["a.toml"].message == 'a.toml: after: "a" cannot start after itself'


def test_a_key_gone_from_a_configmap_is_gone_before_its_link_is(specs: Path) -> None:
    """Between the kubelet's ``..data`` swap and its removal of stale links, a removed key's
    link dangles: that is the key gone, not a broken file (a scan may fall in between)."""
    kubelet_write(specs, {"a.toml": spec_text("a1"), "b.toml": spec_text("b1")})
    source = SpecSource(specs)
    assert set(source.scan().specs) == {"a", "b"}
    data = specs / "..data"
    old = os.readlink(data)
    fresh = specs / "..fresh"
    fresh.mkdir()
    write(fresh / "a.toml", spec_text("a1"))
    (specs / "..data_tmp").symlink_to(fresh.name)
    os.rename(specs / "..data_tmp", data)  # b.toml -> ..data/b.toml now dangles
    snapshot = source.scan()
    assert set(snapshot.specs) == {"a"} and not snapshot.problems
    shutil.rmtree(specs / old)
    # Any other dangling link is still a problem that keeps the last-known-good.
    (specs / "c.toml").symlink_to("elsewhere/c.toml")
    assert "c.toml: broken symlink to elsewhere/c.toml" in source.scan().problems["c.toml"].message


def test_the_watch_set_before_the_first_scan_is_the_one_after_it(specs: Path) -> None:
    # The watch starts before the first scan (nothing written meanwhile is missed); a
    # scan whose targets differed would cost a second watch and a second full scan.
    write(specs / "web.toml", spec_text("1"))
    outside = specs.parent / "elsewhere"
    outside.mkdir()
    scanner = scan_module.Scanner(specs, require_safe_permissions=False)
    before = scanner.watch_targets
    scanner.scan()
    assert before == scanner.watch_targets
    assert [target[0] for target in before] == [os.path.realpath(specs)]
    # A symlink to a file outside is a target of its own, after the scan that saw it.
    write(outside / "db.toml", spec_text("2"))
    (specs / "db.toml").symlink_to(outside / "db.toml")
    scanner.scan()
    assert [target[0] for target in scanner.watch_targets] == [
        os.path.realpath(specs),
        os.path.realpath(outside),
    ]
