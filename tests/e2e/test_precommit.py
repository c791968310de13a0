"""The ``reconciler-validate`` pre-commit hook, as a GitOps repository of specs uses it.

``pre-commit try-repo`` runs the hook of this repository (``.pre-commit-hooks.yaml``
at its committed HEAD, with any uncommitted changes of tracked files) on a
temporary git repository of spec files: it installs this package into an
environment of its own, from the local checkout, with nothing but the package
registry for the dependencies. One repository holds a good and a bad spec and
must fail, naming the bad file and its key; one holds only the good spec and
must pass. The two run at once: each installs its own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRE_COMMIT = Path(sys.executable).with_name("pre-commit")
GOOD = 'type = "procmond"\nbinary_path = "/bin/sleep"\nargs = ["60"]\n'
BAD = 'type = "procmond"\nbinary_path = "/bin/sleep"\nmax_restart = 3\n'  # max_restarts


def committed_hooks_file() -> bool:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", "HEAD:.pre-commit-hooks.yaml"],
        capture_output=True,
        timeout=30,
    )
    return result.returncode == 0


def spec_repository(path: Path, specs: dict[str, str], env: dict[str, str]) -> Path:
    (path / "specs").mkdir(parents=True)
    for name, text in specs.items():
        (path / "specs" / name).write_text(text)
    for command in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "specs"]):
        subprocess.run(command, cwd=path, env=env, check=True, capture_output=True, timeout=30)
    return path


@pytest.mark.timeout(300)
def test_the_hook_rejects_a_bad_spec_and_passes_a_good_one(tmp_path: Path) -> None:
    if not PRE_COMMIT.exists():
        pytest.skip(f"pre-commit is not installed beside {sys.executable}")
    if not committed_hooks_file():
        pytest.skip(f"{ROOT} has no committed .pre-commit-hooks.yaml for try-repo to use")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "TMPDIR": str(scratch),  # try-repo's own store and clone
        "GIT_AUTHOR_NAME": "specs",
        "GIT_AUTHOR_EMAIL": "specs@example.invalid",
        "GIT_COMMITTER_NAME": "specs",
        "GIT_COMMITTER_EMAIL": "specs@example.invalid",
    }
    mixed = spec_repository(tmp_path / "mixed", {"good.toml": GOOD, "bad.toml": BAD}, env)
    clean = spec_repository(tmp_path / "clean", {"good.toml": GOOD}, env)
    command = [
        str(PRE_COMMIT), "try-repo", str(ROOT), "reconciler-validate", "--all-files",
        "--color", "never",
    ]  # fmt: skip
    runs = {
        repo: subprocess.Popen(
            command,
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for repo in (mixed, clean)
    }
    try:
        outputs = {repo: run.communicate(timeout=280)[0] for repo, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()

    failed = outputs[mixed]
    assert runs[mixed].returncode == 1, failed
    assert "reconciler validate" in failed and "Failed" in failed
    assert "specs/bad.toml: max_restart: unknown key" in failed, failed
    assert 'did you mean "max_restarts"' in failed
    assert "specs/good.toml:" not in failed, "the good spec is not blamed"

    passed = outputs[clean]
    assert runs[clean].returncode == 0, passed
    assert "reconciler validate" in passed and "Passed" in passed
