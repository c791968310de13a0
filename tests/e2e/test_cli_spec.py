"""The spec commands as an operator or a CI job runs them: ``validate``, ``schema``, ``new``.

Runs the installed ``reconciler`` console script in a subprocess and checks
exit codes, stdout and stderr, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.spec import parse_spec

RECONCILER = shutil.which("reconciler", path=os.path.dirname(sys.executable))


@pytest.fixture(scope="module")
def reconciler() -> str:
    if RECONCILER is None:
        pytest.fail("the reconciler console script is not installed next to this Python")
    return RECONCILER


def run(reconciler: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [reconciler, *args], capture_output=True, text=True, cwd=cwd, timeout=30, check=False
    )


GOOD = 'type = "procmond"\nargs = ["--config", "/etc/procmond.conf"]\n'


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    directory = tmp_path / "specs"
    directory.mkdir()
    return directory


# --- validate ---------------------------------------------------------------------


def test_validate_a_good_file(reconciler: str, specs: Path) -> None:
    (specs / "procmond.toml").write_text(GOOD)
    result = run(reconciler, "validate", "specs/procmond.toml", cwd=specs.parent)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok specs/procmond.toml\n", "")


def test_validate_a_directory_lists_every_problem_of_every_file(
    reconciler: str, specs: Path
) -> None:
    (specs / "good.toml").write_text(GOOD)
    (specs / "web.toml").write_text(
        'type = "web"\nmax_restarts = -1\nargz = []\ngraceful_timeout_seconds = "ten"\n'
    )
    (specs / "api.toml").write_text('type = "api"\n[health_check]\ninterval_seconds = 5\n')
    (specs / "broken.toml").write_text('type = "x"\nargs = [\n')
    (specs / "Bad Name.toml").write_text(GOOD)
    # Editor leftovers and hidden files are not specs: not reported at all.
    for ignored in ("web.toml~", ".web.toml.swp", "#web.toml#", ".hidden.toml", "notes.txt"):
        (specs / ignored).write_text("this is not TOML")
    (specs / "subdir").mkdir()

    result = run(reconciler, "validate", "specs", cwd=specs.parent)

    assert result.returncode == 1
    assert result.stdout == "ok specs/good.toml\n"
    assert result.stderr.splitlines() == [
        'specs/Bad Name.toml: file name: "Bad Name" is not a valid collector id: '
        'must match [a-z0-9][a-z0-9_.-]{0,62} (try "bad-name.toml")',
        "specs/api.toml: health_check: give exactly one of exec, http or tcp",
        "specs/broken.toml: end of file: invalid TOML: invalid value "
        "(is a [ or a quote left open?)",
        'specs/web.toml: max_restarts: must be a whole number >= 0 or "unlimited" (got -1)',
        'specs/web.toml: argz: unknown key (did you mean "args"?)',
        'specs/web.toml: graceful_timeout_seconds: must be a number (got "ten")',
        "INVALID_SPEC: 6 problems in 4 of 5 files",
    ]


def test_validate_checks_the_id_key_against_the_file_name(reconciler: str, specs: Path) -> None:
    (specs / "web.toml").write_text('id = "api"\ntype = "web"\n')
    result = run(reconciler, "validate", str(specs / "web.toml"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f'{specs}/web.toml: id: must be "web", the file name without .toml (got "api")'
    )


def test_validate_several_paths_quietly(reconciler: str, specs: Path, tmp_path: Path) -> None:
    (specs / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD)
    result = run(reconciler, "validate", "-q", "specs", "b.toml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param(
            "missing.toml", "missing.toml: cannot read: No such file or directory", id="missing"
        ),
        pytest.param(
            "web.toml~",
            "web.toml~: file name: not a spec file, the reconciler ignores it "
            '(spec files are named <id>.toml and do not start with ".")',
            id="ignored-name-given-explicitly",
        ),
    ],
)
def test_validate_a_path_that_is_not_a_spec(
    reconciler: str, tmp_path: Path, path: str, message: str
) -> None:
    (tmp_path / "web.toml~").write_text(GOOD)
    result = run(reconciler, "validate", path, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [message, "INVALID_SPEC: 1 problem in 1 of 1 file"]


def test_validate_a_spec_name_that_cannot_be_read(reconciler: str, specs: Path) -> None:
    (specs / "web.toml").mkdir()
    result = run(reconciler, "validate", "specs", cwd=specs.parent)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "specs/web.toml: cannot read: Is a directory",
        "INVALID_SPEC: 1 problem in 1 of 1 file",
    ]


def test_validate_an_empty_directory_says_so(reconciler: str, specs: Path) -> None:
    result = run(reconciler, "validate", "specs", cwd=specs.parent)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == "specs: no *.toml spec files here\n"


def test_validate_needs_a_path_or_a_config(reconciler: str) -> None:
    result = run(reconciler, "validate")
    assert result.returncode == 2
    assert result.stderr == "reconciler validate: give PATH... and/or --config FILE\n"


# --- schema ------------------------------------------------------------------------


def test_schema_prints_json_schema(reconciler: str) -> None:
    result = run(reconciler, "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["type"]
    assert schema["additionalProperties"] is False
    assert "max_restarts" in schema["properties"]


def test_schema_into_a_closed_pipe_is_quiet(reconciler: str) -> None:
    # `reconciler schema | head -1`: no traceback when the reader leaves early.
    result = subprocess.run(
        f"'{reconciler}' schema | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == "{"
    assert "Traceback" not in result.stderr


# --- new ---------------------------------------------------------------------------


def test_new_prints_a_spec_that_validates(reconciler: str, specs: Path) -> None:
    result = run(
        reconciler, "new", "web", "--type", "procmond", "--binary", "/usr/bin/procmond",
        "--", "--config", "/etc/web.conf", "--type", "--",
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    spec = parse_spec(result.stdout.encode(), filename="web.toml", collector_id="web")
    assert spec.type == "procmond"
    assert spec.binary_path == "/usr/bin/procmond"
    assert spec.args == ("--config", "/etc/web.conf", "--type", "--")
    for line in (
        'state = "running"',
        "auto_restart = true",
        "max_restarts = 3",
        "graceful_timeout_seconds = 30",
        'log = "file"',
    ):
        assert line in result.stdout.splitlines()

    (specs / "web.toml").write_text(result.stdout)
    assert run(reconciler, "validate", str(specs / "web.toml")).returncode == 0


def test_new_type_defaults_to_the_id(reconciler: str) -> None:
    result = run(reconciler, "new", "procmond")
    spec = parse_spec(result.stdout.encode(), filename="procmond.toml", collector_id="procmond")
    assert (spec.type, spec.args) == ("procmond", ())


def test_new_writes_a_file_and_refuses_to_overwrite_it(reconciler: str, specs: Path) -> None:
    target = specs / "web.toml"
    first = run(reconciler, "new", "web", "-o", str(target))
    assert (first.returncode, first.stdout, first.stderr) == (0, "", f"wrote {target}\n")
    assert run(reconciler, "validate", str(target)).returncode == 0
    written = target.read_text()

    again = run(reconciler, "new", "web", "--type", "other", "-o", str(target))
    assert again.returncode == 1
    assert again.stderr == f"{target}: already exists (use --force to overwrite it)\n"
    assert target.read_text() == written

    forced = run(reconciler, "new", "web", "--type", "other", "-o", str(target), "--force")
    assert forced.returncode == 0
    assert 'type = "other"' in target.read_text()
    # Nothing left behind: the temporary file is renamed into place.
    assert sorted(path.name for path in specs.iterdir()) == ["web.toml"]


def test_new_into_a_directory_names_the_file_after_the_id(reconciler: str, specs: Path) -> None:
    result = run(reconciler, "new", "web", "-o", str(specs))
    assert result.returncode == 0
    assert (specs / "web.toml").is_file()


def test_new_refuses_a_file_name_that_is_another_id(reconciler: str, specs: Path) -> None:
    result = run(reconciler, "new", "web", "-o", str(specs / "api.toml"))
    assert result.returncode == 1
    assert result.stderr == (
        f"{specs}/api.toml: file name: must be web.toml, since the file name is the collector "
        'id (this name would define "api", not "web")\n'
    )
    assert not (specs / "api.toml").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["Web"],
            '"Web" is not a valid collector id: must match [a-z0-9][a-z0-9_.-]{0,62} (try "web")',
            id="bad-id",
        ),
        pytest.param(
            ["web", "--type", "Proc Mon"],
            '"Proc Mon" is not a valid collector type: must match [a-z0-9][a-z0-9_.-]{0,62} '
            '(try "proc-mon")',
            id="bad-type",
        ),
    ],
)
def test_new_refuses_bad_names(reconciler: str, args: list[str], message: str) -> None:
    result = run(reconciler, "new", *args)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", message + "\n")


def test_new_into_a_missing_directory(reconciler: str, tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "web.toml"
    result = run(reconciler, "new", "web", "-o", str(target))
    assert result.returncode == 1
    assert result.stderr == f"{target}: cannot write: No such file or directory\n"


# --- usage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["new"], id="new-without-id"),
        pytest.param(["new", "web", "--verbose"], id="arguments-need-a-double-dash"),
    ],
)
def test_usage_errors_exit_2(reconciler: str, args: list[str]) -> None:
    result = run(reconciler, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: reconciler")


def test_help_lists_the_commands(reconciler: str) -> None:
    result = run(reconciler, "--help")
    assert result.returncode == 0
    for command in ("validate", "schema", "new"):
        assert command in result.stdout


def test_validate_checks_after_across_the_directory(reconciler: str, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    base = 'type = "procmond"\n'
    (specs / "a.toml").write_text(base + 'after = ["b"]\n')
    (specs / "b.toml").write_text(base + 'after = ["a"]\n')
    (specs / "c.toml").write_text(base + 'after = ["a", "gone"]\n')
    (specs / "d.toml").write_text(base + 'after = ["c"]\n')
    result = run(reconciler, "validate", str(specs))
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert f"{specs}/a.toml: after: cycle a -> b -> a" in problems
    assert f"{specs}/b.toml: after: cycle a -> b -> a" in problems
    assert f'{specs}/c.toml: after: no spec file for "gone"' in problems
    assert f"ok {specs}/d.toml" in result.stdout
    # One file on its own is checked against the spec files beside it.
    alone = run(reconciler, "validate", str(specs / "c.toml"))
    assert alone.returncode == 1
    assert f'{specs}/c.toml: after: no spec file for "gone"' in alone.stderr
    assert run(reconciler, "validate", str(specs / "d.toml")).returncode == 0
