"""``reconciler diff`` as reviewers and operators run it: each line kind, both modes, exits."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_cli_client import Daemon, daemon  # noqa: F401 - the fixture
from tests.support import RECONCILER, wait_for

SPEC = 'type = "{type}"\nbinary_path = "/bin/sleep"\nargs = ["{arg}"]\n{extra}'


def write(directory: Path, collector_id: str, *, arg: str = "300", extra: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{collector_id}.toml").write_text(
        SPEC.format(type=collector_id, arg=arg, extra=extra)
    )


def diff(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILER, "diff", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """main and a pull request against it: one of each kind of change."""
    old, new = tmp_path / "main", tmp_path / "pr"
    for tree in (old, new):
        write(tree, "same")
    write(old, "web")
    write(new, "web", arg="301")  # what the process is: restart
    write(old, "netmond", extra="graceful_timeout_seconds = 5\n")
    write(new, "netmond", extra="graceful_timeout_seconds = 9\n")  # in place
    write(old, "gone")  # removed: stop
    write(new, "new-one")  # added: start
    write(old, "idle")
    write(new, "idle", extra='state = "paused"\n')  # state: pause, no restart
    return old, new


def test_offline_diff_prints_one_line_per_changed_collector(trees: tuple[Path, Path]) -> None:
    old, new = trees
    result = diff("--from", old, new)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "stop gone (spec file removed)",
        "pause idle (spec state is paused)",
        "update netmond in place (graceful_timeout_seconds)",
        "start new-one (new spec)",
        "restart web (spec changed: args)",
    ]
    assert "5 collectors would change" in result.stderr


def test_offline_diff_json_and_no_difference(trees: tuple[Path, Path]) -> None:
    old, new = trees
    result = diff("--from", old, new, "--json")
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert answer["differences"] == 5
    by_id = {line["id"]: line for line in answer["actions"]}
    assert by_id["web"]["action"] == "restart" and by_id["web"]["reason"] == "spec changed: args"
    assert by_id["new-one"]["action"] == "start" and by_id["gone"]["action"] == "stop"
    assert "same" not in by_id
    same = diff("--from", new, new)
    assert same.returncode == 0 and same.stdout == "", same
    assert "no difference" in same.stderr


def test_offline_diff_of_an_invalid_tree_exits_2_naming_file_key_and_reason(
    trees: tuple[Path, Path],
) -> None:
    old, new = trees
    (new / "bad.toml").write_text('type = "bad"\nargz = ["1"]\n')
    result = diff("--from", old, new)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f'{new}/bad.toml: argz: unknown key (did you mean "args"?)'
    ]


def test_from_needs_the_tree_to_compare() -> None:
    result = diff("--from", "/tmp")
    assert result.returncode == 2 and "needs DIR" in result.stderr


def test_live_diff_plans_against_the_running_daemon(daemon: Daemon, tmp_path: Path) -> None:  # noqa: F811
    daemon.spec("web")
    daemon.spec("failed-one", binary="/nonexistent/collector")
    assert daemon.cli("wait", "web", "--timeout", "20").returncode == 0
    wait_for(lambda: daemon.state_of("failed-one") == "failed", message="failed-one failed")
    # Against the daemon's own directory: nothing would change; the failed one is kept.
    result = daemon.cli("diff")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["keep failed-one (failed; a spec change restarts it)"]

    proposed = tmp_path / "proposed"
    shutil.copytree(daemon.specs, proposed)
    text = (proposed / "web.toml").read_text()
    (proposed / "web.toml").write_text(text.replace('args = ["300"]', 'args = ["301"]'))
    write(proposed, "new-one")
    result = daemon.cli("diff", str(proposed))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "keep failed-one (failed; a spec change restarts it)",
        "start new-one (new spec)",
        "restart web (spec changed: args)",
    ]
    assert daemon.state_of("new-one") is None, "diff only tells; it applies nothing"

    (proposed / "web.toml").write_text("type = \n")
    result = daemon.cli("diff", str(proposed))
    assert result.returncode == 2
    assert f"{proposed}/web.toml:" in result.stderr and "line 1" in result.stderr


def test_live_diff_without_a_daemon_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [RECONCILER, "diff", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "cannot reach the reconciler" in result.stderr
